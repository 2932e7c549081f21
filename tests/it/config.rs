//! The configuration file: the shipped example parses, and layering works
//! end to end through `load`.

use std::collections::HashMap;
use std::path::Path;

use secrecy::ExposeSecret;

use apisync::config;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `config/example.toml`: part 1 as it stands, and part 1 with part 2 (the
/// reference, commented out) uncommented: `# ` lines are settings, `##`
/// lines their explanations.
fn example_parts() -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let marker = "# Part 2: the full reference.";
    let at = text.find(marker).expect("the example has a part 2");
    let reference: String = text[at..]
        .lines()
        .skip(2)
        .filter(|line| !line.starts_with("##"))
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    (text.clone(), format!("{text}\n{reference}"))
}

#[test]
fn the_example_works_as_it_is_and_its_reference_validates() {
    // Part 1 alone: no variable to set, one minimal job, the default store.
    let (minimal, full) = example_parts();
    let settings = config::load_str(&minimal, Path::new("example.toml"), &env(&[]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.jobs.len(), 1);
    let posts = settings.job("posts").expect("the minimal job");
    assert!(posts.auth.is_none() && posts.incremental.is_none() && posts.rate_limit.is_none());
    assert_eq!(posts.timezone, None, "UTC");
    assert!(settings.database.url.is_none(), "the default SQLite file");

    // The reference, uncommented, is a valid configuration too.
    let settings = config::load_str(
        &full,
        Path::new("example.toml"),
        &env(&[("EXAMPLE_TOKEN", "t0ken-value")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.jobs.len(), 3);
    let products = settings
        .job("products")
        .expect("the reference has a products job");
    match &products.auth {
        Some(config::AuthSettings::Bearer { token }) => {
            assert_eq!(token.expose_secret(), "t0ken-value")
        }
        other => panic!("the reference's products job uses a bearer token: {other:?}"),
    }
    assert_eq!(settings.redactor.redact("t0ken-value"), "[redacted]");
}

#[test]
fn the_example_reference_needs_its_variables() {
    let (_, full) = example_parts();
    let error = config::load_str(&full, Path::new("example.toml"), &env(&[])).unwrap_err();
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.contains("environment variable EXAMPLE_TOKEN is not set")),
        "{error}"
    );
}

const MINIMAL: &str = r#"
[database]
url = "postgres://file@127.0.0.1/file"

[[jobs]]
name = "orders"
schedule = "0 * * * *"
table = "orders"
key = ["id"]
[jobs.request]
url = "https://api.example.com/orders"
query = { pageSize = 100, status = "all" }
"#;

#[test]
fn environment_overrides_beat_the_file() {
    let settings = config::load_str(
        MINIMAL,
        Path::new("t.toml"),
        &env(&[
            ("DATABASE_URL", "postgres://generic@127.0.0.1/db"),
            (
                "APISYNC__DATABASE__URL",
                "postgres://apisync:pw-secret@127.0.0.1/db",
            ),
            ("APISYNC__DATABASE__MAX_CONNECTIONS", "12"),
            ("APISYNC__LOG__FORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(
        settings.database.url.as_ref().unwrap().expose_secret(),
        "postgres://apisync:pw-secret@127.0.0.1/db"
    );
    assert_eq!(settings.database.max_connections, 12);
    assert_eq!(settings.log.format, config::LogFormat::Json);
    assert_eq!(
        settings.redactor.redact("password pw-secret"),
        "password [redacted]",
        "the database password is a secret"
    );
}

#[test]
fn credentials_written_in_the_file_are_secrets_in_every_form_they_travel() {
    // Arrange: a Basic header written literally, a token as a URL's user,
    // and a database password that must be percent-encoded in its URL.
    let text = MINIMAL
        .replace(
            "postgres://file@127.0.0.1/file",
            "postgres://apisync:db%40pass%2Fword@127.0.0.1/db",
        )
        .replace(
            "url = \"https://api.example.com/orders\"",
            // base64("svc:basic-pass") is c3ZjOmJhc2ljLXBhc3M=
            "url = \"https://urltoken123@api.example.com/orders\"\n\
             headers = { Authorization = \"Basic c3ZjOmJhc2ljLXBhc3M=\" }",
        );

    // Act
    let settings = config::load_str(&text, Path::new("t.toml"), &env(&[])).unwrap();

    // Assert
    let cases = [
        ("c3ZjOmJhc2ljLXBhc3M=", "the Basic credential"),
        ("svc:basic-pass", "what it decodes to"),
        ("basic-pass", "its password"),
        ("urltoken123", "a URL's user without a password: a token"),
        // base64("urltoken123:"), as reqwest sends it.
        ("dXJsdG9rZW4xMjM6", "the token as it travels"),
        ("db@pass/word", "the database password, decoded"),
        ("db%40pass%2Fword", "the database password, as written"),
    ];
    for (text, what) in cases {
        assert_eq!(
            settings.redactor.redact(&format!("echo {text} end")),
            "echo [redacted] end",
            "{what}"
        );
    }
}

#[test]
fn without_a_database_url_the_store_is_a_local_sqlite_file() {
    let text = MINIMAL.replace("[database]\nurl = \"postgres://file@127.0.0.1/file\"\n", "");
    let settings = config::load_str(&text, Path::new("t.toml"), &env(&[])).unwrap();
    assert!(settings.database.url.is_none());
    assert_eq!(
        settings.database.url().expose_secret(),
        "sqlite://apisync.db"
    );
}

#[test]
fn query_keys_keep_their_case() {
    let settings = config::load_str(MINIMAL, Path::new("t.toml"), &env(&[])).unwrap();
    let query = &settings.jobs[0].request.query;
    assert_eq!(query["pageSize"].0, "100");
    assert_eq!(query["status"].0, "all");
}

/// `(description, configuration, expected fragments of one problem)`.
fn invalid_cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let with = |extra: &str| MINIMAL.replace("key = [\"id\"]", &format!("key = [\"id\"]\n{extra}"));
    let auth = |lines: &str| format!("{MINIMAL}[jobs.auth]\n{lines}\n");
    vec![
        (
            "unknown auth kind",
            auth("kind = \"kerberos\""),
            vec![
                "job \"orders\", key \"auth",
                "unknown variant `kerberos`",
                "oauth2_client_credentials",
            ],
        ),
        (
            "auth key of another kind",
            auth("kind = \"bearer\"\ntoken = \"t\"\nclient_id = \"x\""),
            vec!["job \"orders\", key \"auth", "unknown field `client_id`"],
        ),
        (
            "auth without its secret",
            auth(
                "kind = \"oauth2_client_credentials\"\ntoken_url = \"https://a.test/t\"\nclient_id = \"x\"",
            ),
            vec![
                "job \"orders\", key \"auth",
                "missing field `client_secret`",
            ],
        ),
        (
            "token url that is not http",
            auth(
                "kind = \"oauth2_client_credentials\"\ntoken_url = \"ftp://a.test/t\"\nclient_id = \"x\"\nclient_secret = \"s\"",
            ),
            vec![
                "job \"orders\", key \"auth.token_url\"",
                "http:// or https://",
            ],
        ),
        (
            "two Authorization headers",
            auth("kind = \"bearer\"\ntoken = \"t\"").replace(
                "query = {",
                "headers = { Authorization = \"Bearer x\" }\nquery = {",
            ),
            vec![
                "job \"orders\", key \"request.headers\"",
                "sets Authorization, and so does [jobs.auth]",
            ],
        ),
        (
            "a login call with a body and a form",
            auth(
                "kind = \"token_request\"\nurl = \"https://a.test/login\"\nbody = { a = \"b\" }\nform = { a = \"b\" }",
            ),
            vec!["job \"orders\", key \"auth.body\"", "not both"],
        ),
        (
            "unknown job key",
            with("colour = \"red\""),
            vec!["job \"orders\"", "unknown field `colour`"],
        ),
        (
            "unknown request key",
            MINIMAL.replace("[jobs.request]", "[jobs.request]\nverb = \"GET\""),
            vec!["job \"orders\", key \"request", "unknown field `verb`"],
        ),
        (
            "unknown top-level key",
            format!("colour = 1\n{MINIMAL}"),
            vec!["unknown field `colour`"],
        ),
        (
            "injected table name",
            MINIMAL.replace("table = \"orders\"", "table = \"x; drop table y\""),
            vec![
                "job \"orders\", key \"table\"",
                "`x; drop table y` is not a valid table name",
            ],
        ),
        (
            "duplicate job names",
            format!(
                "{MINIMAL}\n{}",
                MINIMAL
                    .split("[[jobs]]")
                    .nth(1)
                    .map(|job| format!(
                        "[[jobs]]{}",
                        job.replace("table = \"orders\"", "table = \"orders2\"")
                    ))
                    .unwrap()
            ),
            vec!["job \"orders\", key \"name\"", "used by more than one job"],
        ),
        (
            "invalid records pointer",
            with("records = \"data\""),
            vec![
                "job \"orders\", key \"records\"",
                "`data` is not a JSON pointer",
            ],
        ),
        (
            "invalid hash_exclude pointer",
            with("hash_exclude = [\"/a~2\"]"),
            vec![
                "job \"orders\", key \"hash_exclude\"",
                "`~` must be followed by 0 or 1",
            ],
        ),
        (
            "unknown pagination kind",
            format!("{MINIMAL}[jobs.pagination]\nkind = \"pages\"\n"),
            vec![
                "job \"orders\", key \"pagination.kind\"",
                "unknown variant `pages`",
            ],
        ),
        (
            "knob of another pagination kind",
            format!("{MINIMAL}[jobs.pagination]\nkind = \"cursor\"\nsize = 10\n"),
            vec![
                "job \"orders\", key \"pagination\"",
                "`size` is not a setting of kind = \"cursor\" (its settings: cursor_param",
            ],
        ),
        (
            "pagination pointer inside the records",
            format!(
                "{}[jobs.pagination]\nkind = \"cursor\"\ncursor_path = \"/data/49/id\"\n",
                with("records = \"/data\"")
            ),
            vec![
                "job \"orders\", key \"pagination.cursor_path\"",
                "`/data/49/id` lies inside the records array at records = \"/data\"",
            ],
        ),
        (
            "pagination pointer when the body is the records",
            format!("{MINIMAL}[jobs.pagination]\nkind = \"next_url\"\nnext_path = \"/next\"\n"),
            vec![
                "job \"orders\", key \"pagination.next_path\"",
                "(\"\": the whole body is the array)",
            ],
        ),
        (
            "knob without a pagination kind",
            format!("{MINIMAL}[jobs.pagination]\nkind = \"none\"\nsize = 10\n"),
            vec![
                "job \"orders\", key \"pagination\"",
                "`size` is not a setting of kind = \"none\"",
            ],
        ),
        (
            "a total read from two places",
            format!(
                "{MINIMAL}[jobs.pagination]\nkind = \"page\"\ntotal_path = \"/count\"\n\
                 total_header = \"X-Total-Count\"\n"
            ),
            vec![
                "job \"orders\", key \"pagination\"",
                "set total_path or total_header, not both",
            ],
        ),
        (
            "a server error as the end of the pages",
            format!("{MINIMAL}[jobs.pagination]\nkind = \"page\"\nend_on_status = [404, 503]\n"),
            vec![
                "job \"orders\", key \"pagination.end_on_status\"",
                "503 cannot mean \"past the end\"",
            ],
        ),
        (
            "a HEAD request for a total in the body",
            format!(
                "{MINIMAL}[jobs.pagination]\nkind = \"offset\"\ntotal_path = \"/count\"\n\
                 total_method = \"HEAD\"\n"
            ),
            vec![
                "job \"orders\", key \"pagination.total_method\"",
                "set total_header",
            ],
        ),
        (
            "a header name that is not one",
            format!("{MINIMAL}[jobs.pagination]\nkind = \"page\"\ntotal_header = \"X Total\"\n"),
            vec![
                "job \"orders\", key \"pagination.total_header\"",
                "`X Total` is not a valid header name",
            ],
        ),
        (
            "a share of rejects over 100%",
            with("max_rejected = \"150%\""),
            vec![
                "job \"orders\", key \"max_rejected\"",
                "not a share between 0% and 100%",
            ],
        ),
        (
            "an incremental format that is not strftime",
            format!(
                "{MINIMAL}[jobs.incremental]\nfield = \"updated_at\"\nparam = \"since\"\n\
                 format = \"%Y-%m-%d %Q\"\n"
            ),
            vec![
                "job \"orders\", key \"incremental.format\"",
                "is not a strftime pattern",
            ],
        ),
        (
            "an incremental time zone that does not exist",
            format!(
                "{MINIMAL}[jobs.incremental]\nfield = \"updated_at\"\nparam = \"since\"\n\
                 timezone = \"Mars/Olympus\"\n"
            ),
            vec!["job \"orders\", key \"incremental.timezone\""],
        ),
        (
            "malformed cron line",
            MINIMAL.replace("schedule = \"0 * * * *\"", "schedule = \"every hour\""),
            vec![
                "job \"orders\", key \"schedule\"",
                "`every hour` is not a cron line",
            ],
        ),
        (
            "schedule that never comes due",
            MINIMAL.replace("schedule = \"0 * * * *\"", "schedule = \"0 0 30 2 *\""),
            vec!["job \"orders\", key \"schedule\"", "never comes due"],
        ),
        (
            "shutdown_timeout too short",
            format!("shutdown_timeout = \"100ms\"\n{MINIMAL}"),
            vec!["key \"shutdown_timeout\": `100ms` is outside the allowed range, 1s to 1h"],
        ),
        (
            "out-of-range cron field",
            MINIMAL.replace("schedule = \"0 * * * *\"", "schedule = \"61 * * * *\""),
            vec!["job \"orders\", key \"schedule\"", "not a valid cron line"],
        ),
        (
            "reserved key column",
            MINIMAL.replace("key = [\"id\"]", "key = [\"record\"]"),
            vec![
                "job \"orders\", key \"key\"",
                "apisync uses that column itself",
            ],
        ),
        (
            "URL without scheme",
            MINIMAL.replace("https://api.example.com/orders", "api.example.com/orders"),
            vec!["job \"orders\", key \"request.url\"", "not a valid URL"],
        ),
        (
            "wrong type",
            MINIMAL.replace("key = [\"id\"]", "key = \"id\""),
            vec!["job \"orders\", key \"key\"", "invalid type"],
        ),
        (
            "bad duration",
            MINIMAL.replace("[jobs.request]", "[jobs.request]\ntimeout = \"soon\""),
            vec!["job \"orders\", key \"request.timeout\""],
        ),
        (
            "missing variable",
            MINIMAL.replace(
                "https://api.example.com/orders",
                "https://${API_HOST}/orders",
            ),
            vec![
                "job \"orders\", key \"request.url\"",
                "environment variable API_HOST is not set",
            ],
        ),
        (
            "a float for a count",
            format!("max_concurrent_jobs = 4.5\n{MINIMAL}"),
            vec![
                "key \"max_concurrent_jobs\": invalid type: floating point `4.5`, \
                 expected a non-negative whole number (allowed: 1 to 1024)",
            ],
        ),
        (
            "a boolean for a threshold",
            with("max_rejected = true"),
            vec![
                "job \"orders\", key \"max_rejected\": invalid type: boolean `true`, \
                 expected a count such as 50 or a share such as \"10%\"",
            ],
        ),
        (
            "a negative size",
            with("max_body_bytes = -1"),
            vec![
                "job \"orders\", key \"max_body_bytes\": invalid value: integer `-1`",
                "(allowed: 1KiB to 4GiB)",
            ],
        ),
        (
            "an array for a query value",
            MINIMAL.replace("status = \"all\"", "status = [\"all\"]"),
            vec![
                "job \"orders\", key \"request.query.status\": invalid type: sequence, \
                 expected a string, a number or a boolean",
            ],
        ),
        (
            "in-memory SQLite",
            MINIMAL.replace("postgres://file@127.0.0.1/file", "sqlite::memory:"),
            vec!["key \"database.url\": an in-memory SQLite database keeps nothing"],
        ),
        (
            "database URL of an unknown kind",
            MINIMAL.replace(
                "postgres://file@127.0.0.1/file",
                "mysql://file@127.0.0.1/file",
            ),
            vec!["key \"database.url\": must be a postgres://, postgresql:// or sqlite:// URL"],
        ),
    ]
}

#[test]
fn invalid_configurations_name_the_job_and_key() {
    for (case, text, fragments) in invalid_cases() {
        let error = match config::load_str(&text, Path::new("t.toml"), &env(&[])) {
            Ok(_) => panic!("case {case:?} should be refused"),
            Err(error) => error,
        };
        let found = error
            .problems
            .iter()
            .any(|problem| fragments.iter().all(|f| problem.contains(f)));
        assert!(
            found,
            "case {case:?}: expected {fragments:?} in {:?}",
            error.problems
        );
    }
}

#[test]
fn a_bad_key_from_the_environment_names_the_variable_not_the_file() {
    let cases = [
        (
            "APISYNC__DATABSE__URL",
            "x",
            "environment variable APISYNC__DATABSE__URL (key \"databse\"): unknown field `databse`",
        ),
        (
            "APISYNC__DATABASE__MAX_CONNECTIONS",
            "-3",
            "environment variable APISYNC__DATABASE__MAX_CONNECTIONS \
             (key \"database.max_connections\"): `-3` is not a non-negative whole number \
             (allowed: 1 to 1000)",
        ),
        (
            "APISYNC__DATABASE__ACQUIRE_TIMEOUT",
            "0s",
            "environment variable APISYNC__DATABASE__ACQUIRE_TIMEOUT \
             (key \"database.acquire_timeout\"): `0s` is outside the allowed range, 1ms to 1h",
        ),
        (
            "DATABASE_URL",
            "mysql://u@h/d",
            "environment variable DATABASE_URL (key \"database.url\"): must be a postgres://",
        ),
    ];
    for (name, value, expected) in cases {
        let error = match config::load_str(MINIMAL, Path::new("t.toml"), &env(&[(name, value)])) {
            Ok(_) => panic!("{name}={value} should be refused"),
            Err(error) => error,
        };
        assert!(
            error.problems.iter().any(|p| p.contains(expected)),
            "{name}: expected {expected:?} in {:?}",
            error.problems
        );
    }
    // The same mistake in the file is still the file's.
    let error = config::load_str(
        &format!("[databse]\nurl = \"x\"\n{MINIMAL}"),
        Path::new("t.toml"),
        &env(&[]),
    )
    .map(drop)
    .unwrap_err();
    assert!(
        error.problems[0].starts_with("key \"databse\": unknown field"),
        "{error}"
    );
}

/// The problems `check` reports for `job_lines` added to the minimal job.
fn problems_with(job_lines: &str) -> Vec<String> {
    let text = MINIMAL.replacen("[jobs.request]", &format!("{job_lines}\n[jobs.request]"), 1);
    match config::load_str(&text, Path::new("apisync.toml"), &env(&[])) {
        Ok(_) => Vec::new(),
        Err(error) => error.problems,
    }
}

#[test]
fn deletion_settings_that_cannot_work_are_refused_by_check() {
    let incremental = "[jobs.incremental]\nfield = \"/updated_at\"\nparam = \"since\"";
    let cases = [
        // An incremental job reads only changes: it sees deletions only in
        // a periodic full run, or as tombstones.
        (
            format!("deletions = \"mark\"\n{incremental}"),
            "key \"full_refresh\": deletions = \"mark\" on an incremental job needs full_refresh",
        ),
        (
            "full_refresh = \"24h\"".to_owned(),
            "key \"full_refresh\": only incremental jobs",
        ),
        (
            "tombstone = \"/deleted\"".to_owned(),
            "key \"tombstone\": a tombstone deletes its key as `deletions` says, but deletions = \"ignore\"",
        ),
        (
            "deletions = \"delete\"\ntombstone = \"\"".to_owned(),
            "key \"tombstone\": must name the field",
        ),
        ("deletions = \"erase\"".to_owned(), "deletions"),
        ("max_deleted = \"150%\"".to_owned(), "max_deleted"),
        (
            format!("full_refresh = \"0s\"\n{incremental}"),
            "key \"full_refresh\"",
        ),
    ];
    for (lines, expected) in cases {
        let problems = problems_with(&lines);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{lines:?}: expected {expected:?} in {problems:?}"
        );
    }
    // What does work.
    for lines in [
        format!("deletions = \"mark\"\nfull_refresh = \"24h\"\n{incremental}"),
        format!("deletions = \"delete\"\ntombstone = \"/deleted\"\n{incremental}"),
        "deletions = \"mark\"\nmax_deleted = 500\nhistory = true".to_owned(),
    ] {
        assert_eq!(problems_with(&lines), Vec::<String>::new(), "{lines:?}");
    }
}

#[test]
fn a_history_table_name_too_long_for_an_identifier_is_refused() {
    let text = MINIMAL.replace(
        "table = \"orders\"",
        &format!("table = \"{}\"\nhistory = true", "o".repeat(60)),
    );
    let error = config::load_str(&text, Path::new("apisync.toml"), &env(&[])).unwrap_err();
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.contains("key \"history\"") && p.contains("_history")),
        "{error}"
    );
}
