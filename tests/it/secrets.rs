//! Secrets and terminal controls on every path out of the real binary:
//! stdout, stderr, `apisync.runs.error`, `runs` and `runs --json`, and the
//! validation errors of `check`.

use sqlx::PgPool;

use crate::binary::{database_url, run as apisync, scratch, stderr, stdout};
use crate::helpers::{TestEnv, products};

/// A job of the configuration below: `name`, then the TOML of its request
/// and pagination.
fn job(name: &str, rest: &str) -> String {
    format!(
        "\n[[jobs]]\nname = \"{name}\"\nschedule = \"* * * * *\"\ntable = \"{name}\"\n\
         key = [\"id\"]\n{rest}\n[jobs.retry]\nmax_attempts = 1\n"
    )
}

const LITERAL: &str = "literal-header-secret/9876+Zz==";
const REGION: &str = "q7";
/// Characters a URL's userinfo percent-encodes (`%5E`, `%20`, `%C3%B6`),
/// which neither a query's nor a path's encoding would produce.
const PASSWORD: &str = "s3cr^pa55 wörd";
const CUT_TOKEN: &str = "cut-token-0123456789-abcdef";
const LINK_KEY: &str = "Zq9LinkKeyXv0123456789";

#[sqlx::test(migrations = false)]
async fn secrets_echoed_by_an_api_stay_out_of_every_output(pool: PgPool) {
    // Arrange: APIs that answer 401 and echo the request, PHP-style (`/` as
    // `\/`): a literal header value, a short `${VAR}` value, the password
    // of the URL's userinfo (which travels as `Authorization: Basic`), a
    // token just where the 200-character body excerpt is cut, and a key in
    // a garbled `Link` header just where its 40-character excerpt is cut.
    let env = TestEnv::start(pool, products(3)).await;
    let api = env.api.url("");
    let authority = api.trim_start_matches("http://").trim_end_matches('/');
    let dir = scratch("secrets-echo");
    let mut config = format!("[database]\nurl = \"{}\"\n", database_url(env.pg()));
    config += &job(
        "literal",
        &format!(
            "[jobs.request]\nurl = \"{api}/echo/401\"\n\
             headers = {{ A-Api-Key = \"{LITERAL}\", A-Region = \"${{REGION}}\" }}"
        ),
    );
    config += &job(
        "userinfo",
        &format!("[jobs.request]\nurl = \"http://apiuser:${{PASS}}@{authority}/echo/401\""),
    );
    config += &job(
        "cut",
        &format!("[jobs.request]\nurl = \"{api}/echo/401?pad=145&token=${{CUT_TOKEN}}\""),
    );
    config += &job(
        "link",
        &format!(
            "[jobs.request]\nurl = \"{api}/badlink?pad=aaaaaaaaaaaaaaaa&key=${{LINK_KEY}}\"\n\
             [jobs.pagination]\nkind = \"link_header\""
        ),
    );
    std::fs::write(dir.join("apisync.toml"), &config).unwrap();
    let vars = [
        ("REGION", REGION),
        ("PASS", PASSWORD),
        ("CUT_TOKEN", CUT_TOKEN),
        ("LINK_KEY", LINK_KEY),
    ];

    // Act
    let sync = apisync(&dir, &["sync", "--all"], &vars).await;
    let table = apisync(&dir, &["runs"], &vars).await;
    let json = apisync(&dir, &["runs", "--json"], &vars).await;
    let check = apisync(&dir, &["check", "--connect"], &vars).await;
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT job, error FROM apisync.runs ORDER BY id")
            .fetch_all(env.pg())
            .await
            .unwrap();

    // Assert: no secret, nor a prefix of one, in any output.
    let stored_errors: String = stored
        .iter()
        .filter_map(|(_, error)| error.clone())
        .collect::<Vec<_>>()
        .join("\n");
    // base64("apiuser:s3cr^pa55 wörd"), as `Authorization: Basic` carries it.
    let basic = "YXBpdXNlcjpzM2NyXnBhNTUgd8O2cmQ=".to_owned();
    let escaped = |s: &str| s.replace('/', "\\/");
    let leaks = [
        // Whole, escaped, and a prefix left by a cut.
        LITERAL.to_owned(),
        escaped(LITERAL),
        "literal-header".to_owned(),
        REGION.to_owned(),
        PASSWORD.to_owned(),
        "s3cr".to_owned(),
        "%5Epa55".to_owned(),
        basic,
        "cut-token".to_owned(),
        "Zq9Li".to_owned(),
    ];
    let outputs = [
        ("sync stdout", stdout(&sync)),
        ("sync stderr", stderr(&sync)),
        ("runs", stdout(&table)),
        ("runs --json", stdout(&json)),
        ("check --connect", stdout(&check)),
        ("check --connect stderr", stderr(&check)),
        ("apisync.runs.error", stored_errors),
    ];
    // All leaks at once, so that a failure lists every one.
    let shown: Vec<String> = outputs
        .iter()
        .flat_map(|(what, text)| {
            leaks
                .iter()
                .filter(|leak| text.contains(leak.as_str()))
                .map(move |leak| format!("{what} shows {leak}"))
        })
        .collect();
    assert!(shown.is_empty(), "{shown:#?}\n{outputs:#?}");
    // …every run failed, for the reason expected, with the echo masked…
    assert_eq!(sync.status.code(), Some(1), "{}", stderr(&sync));
    let summary = stdout(&sync);
    for name in ["literal", "userinfo", "cut"] {
        assert!(
            summary.contains(&format!("{name} failed")) && summary.contains("answered 401"),
            "{summary}"
        );
    }
    assert!(
        summary.contains("cannot parse the Link header: no closing `>` in `</badlink?pad="),
        "{summary}"
    );
    // URLs are shown without userinfo and with query values masked.
    assert!(
        summary.contains(&format!("(http://{authority}/echo/401)")),
        "{summary}"
    );
    assert!(summary.contains("/echo/401?pad=*&token=*)"), "{summary}");
    let errors: Vec<&str> = stored
        .iter()
        .map(|(job, error)| {
            error
                .as_deref()
                .unwrap_or_else(|| panic!("run of {job} has an error"))
        })
        .collect();
    assert_eq!(errors.len(), 4, "{stored:?}");
    for error in &errors {
        assert!(error.contains("[redacted]"), "the echo is masked: {error}");
    }
    let json_out = stdout(&json);
    let json_errors: Vec<String> = json_out
        .lines()
        .map(|line| {
            let run: serde_json::Value = serde_json::from_str(line).unwrap();
            run["error"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(json_errors.len(), 4, "{json_out}");
    for error in &json_errors {
        assert!(error.contains("[redacted]"), "{error}");
    }
    assert!(
        stdout(&check).matches("[redacted]").count() >= 4,
        "check shows each job's echo, masked: {}",
        stdout(&check)
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn control_characters_from_an_api_are_escaped_in_every_output(pool: PgPool) {
    // Arrange: a next URL holding ESC (clear screen, red), BEL and CR.
    let env = TestEnv::start(pool, products(3)).await;
    let dir = scratch("secrets-control");
    let config = format!(
        "[database]\nurl = \"{}\"\n{}",
        database_url(env.pg()),
        job(
            "control",
            &format!(
                "records = \"/results\"\n[jobs.request]\nurl = \"{}\"\n\
                 [jobs.pagination]\nkind = \"next_url\"",
                env.api.url("/ctl")
            )
        )
    );
    std::fs::write(dir.join("apisync.toml"), &config).unwrap();

    // Act: in text and in JSON logs.
    let sync = apisync(&dir, &["sync", "control"], &[]).await;
    let sync_json = apisync(
        &dir,
        &["sync", "control"],
        &[("APISYNC__LOG__FORMAT", "json")],
    )
    .await;
    let table = apisync(&dir, &["runs"], &[]).await;
    let json = apisync(&dir, &["runs", "--json"], &[]).await;

    // Assert: the error is there, escaped, and nothing raw reaches a terminal.
    assert_eq!(sync.status.code(), Some(1), "{}", stderr(&sync));
    assert!(
        stdout(&sync).contains("the next URL `http://\\x1b[2J\\x1b[31mevil\\x07\\r:99999/x`"),
        "{}",
        stdout(&sync)
    );
    // Cut at 80 characters, after it was escaped.
    assert!(
        stdout(&table).contains("the next URL `http://\\x1"),
        "{}",
        stdout(&table)
    );
    for line in stderr(&sync_json).lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a JSON log line: {e}: {line}"));
    }
    let outputs = [
        ("sync stdout", stdout(&sync)),
        ("sync stderr", stderr(&sync)),
        ("sync stderr (JSON)", stderr(&sync_json)),
        ("runs", stdout(&table)),
        ("runs --json", stdout(&json)),
    ];
    for (what, text) in &outputs {
        assert!(
            !text.is_empty() || what.starts_with("sync stderr"),
            "{what}"
        );
        let raw: Vec<char> = text
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(raw.is_empty(), "{what} has raw {raw:?}: {text:?}");
    }
    assert!(stderr(&sync).contains("Run failed"), "{}", stderr(&sync));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn validation_errors_do_not_echo_variable_values() {
    // Arrange: values from `${VAR}` that fail validation, one of them short.
    let dir = scratch("secrets-validation");
    let config = "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n\
                  [server]\nlisten = \"${LISTEN}\"\n\
                  [[jobs]]\nname = \"products\"\nschedule = \"${SCHEDULE}\"\n\
                  table = \"${TABLE}\"\nkey = [\"id\"]\n\
                  [jobs.request]\nurl = \"https://api.example.com/p\"\n";
    std::fs::write(dir.join("apisync.toml"), config).unwrap();
    let vars = [
        // Short: masked where it stands as a token, as in `Xq`.
        ("LISTEN", "Xq"),
        ("SCHEDULE", "schedule-secret-value"),
        ("TABLE", "Table-Secret-Value!"),
    ];

    // Act
    let check = apisync(&dir, &["check"], &vars).await;

    // Assert: each key is named, no value is shown.
    assert_eq!(check.status.code(), Some(2), "{}", stdout(&check));
    let text = stderr(&check);
    for key in ["server.listen", "schedule", "table"] {
        assert!(text.contains(&format!("key \"{key}\"")), "{key}: {text}");
    }
    for (_, value) in vars {
        assert!(!text.contains(value), "{value}: {text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_toml_error_does_not_echo_the_line_it_is_on() {
    // Arrange: an unclosed inline table on the line of a literal header value.
    let dir = scratch("secrets-toml");
    let config = "[[jobs]]\nname = \"x\"\n[jobs.request]\n\
                  headers = { Authorization = \"Bearer literal-secret-123\" \n";
    std::fs::write(dir.join("apisync.toml"), config).unwrap();

    // Act
    let check = apisync(&dir, &["check"], &[]).await;

    // Assert: where and why, not the line.
    assert_eq!(check.status.code(), Some(2));
    let text = stderr(&check);
    assert!(
        text.contains("not valid TOML at line 4, column 56: unclosed inline table"),
        "{text}"
    );
    assert!(!text.contains("literal-secret"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
