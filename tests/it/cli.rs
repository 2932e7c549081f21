//! The real binary: exit codes, the `sync` summary, `check`, `migrate` and
//! `runs`, with the configuration found the ways users find it.

use std::path::Path;

use sqlx::PgPool;

use crate::binary::{database_url, run as apisync, scratch, stderr, stdout};

use crate::helpers::{JobToml, TestEnv, products};

#[sqlx::test(migrations = false)]
async fn sync_prints_a_summary_per_job_and_exits_by_outcome(pool: PgPool) {
    // Arrange: a good job and one whose API answers 500 every time.
    let env = TestEnv::start(pool, products(250)).await;
    let dir = scratch("sync");
    let config = env.config_file(JobToml::paged(100))
        + &format!(
            "\n[[jobs]]\nname = \"broken\"\nschedule = \"* * * * *\"\ntable = \"broken\"\nkey = [\"id\"]\n\
             [jobs.request]\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer ${{BROKEN_TOKEN}}\" }}\n\
             [jobs.retry]\nmax_attempts = 2\ninitial_backoff = \"10ms\"\n",
            env.api.url("/status/500")
        );
    std::fs::write(dir.join("apisync.toml"), &config).unwrap();

    // Act: ./apisync.toml is found without --config. The broken API echoes
    // the token in its 500 body, which is logged on the retry and stored as
    // the run's error: both must be masked.
    let token = "tok-7f3a9c-never-print";
    let vars = [("BROKEN_TOKEN", token)];
    let first = apisync(&dir, &["sync", "products"], &vars).await;
    let second = apisync(&dir, &["sync", "products"], &vars).await;
    let failed = apisync(&dir, &["sync", "--all"], &vars).await;
    let unknown = apisync(&dir, &["sync", "nope"], &vars).await;

    // Assert
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(
        stdout(&first).starts_with(
            "products succeeded fetched=250 inserted=250 updated=0 unchanged=0 duplicate=0 \
             rejected=0 deleted=0 pages=4 seconds="
        ),
        "{}",
        stdout(&first)
    );
    assert!(
        stdout(&second).contains("inserted=0 updated=0 unchanged=250"),
        "{}",
        stdout(&second)
    );
    assert_eq!(failed.status.code(), Some(1));
    let lines: Vec<String> = stdout(&failed).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "one line per job: {lines:?}");
    assert!(lines[1].starts_with("broken failed fetched=0"), "{lines:?}");
    assert!(
        lines[1].contains(
            "fetching failed after 2 attempt(s): the API answered 500 Internal Server Error"
        ),
        "{lines:?}"
    );
    assert!(
        stderr(&failed).contains("Retrying a failed request")
            && stderr(&failed).contains("[redacted]"),
        "the retry was logged with the echo masked: {}",
        stderr(&failed)
    );
    for text in [stdout(&failed), stderr(&failed)] {
        assert!(!text.contains(token), "{text}");
    }
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no job named nope; configured jobs: products, broken"));

    // `runs` shows the four runs, newest first, as a table and as JSON.
    let runs = apisync(&dir, &["runs"], &vars).await;
    assert_eq!(runs.status.code(), Some(0), "{}", stderr(&runs));
    let table = stdout(&runs);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.lines().nth(1).unwrap().contains("broken"), "{table}");
    let json = apisync(&dir, &["runs", "products", "--json", "--limit", "1"], &vars).await;
    let run: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["unchanged"], 250);
    // The table cuts errors at 80 characters, before the echo: the whole
    // error, and its redaction, show in the JSON.
    let broken = apisync(&dir, &["runs", "broken", "--json"], &vars).await;
    let run: serde_json::Value = serde_json::from_str(stdout(&broken).trim()).unwrap();
    let error = run["error"].as_str().expect("the failed run has an error");
    assert!(
        error.contains("the API answered 500") && error.contains("[redacted]"),
        "{error}"
    );
    for text in [stdout(&runs), stdout(&broken)] {
        assert!(!text.contains(token), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn migrate_creates_the_internal_schema(pool: PgPool) {
    // Arrange
    let dir = scratch("migrate");
    let config = JobToml::to("http://127.0.0.1:9/x")
        .database("postgres://ignored@127.0.0.1/ignored")
        .config();
    std::fs::write(dir.join("conf.toml"), config).unwrap();

    // Act: the config comes from APISYNC_CONFIG, the URL from DATABASE_URL.
    let output = apisync(
        &dir,
        &["migrate"],
        &[
            ("APISYNC_CONFIG", "conf.toml"),
            ("DATABASE_URL", &database_url(&pool)),
        ],
    )
    .await;

    // Assert
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'apisync' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tables, ["_sqlx_migrations", "job_state", "rejects", "runs"]);
}

#[tokio::test]
async fn check_accepts_the_example_configuration() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let output = apisync(
        &scratch("example"),
        &["check", "--config", example.to_str().unwrap()],
        // Part 1 works as it is: no variable to set.
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("1 job(s): posts"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn check_rejects_bad_configurations_naming_job_and_key() {
    // A configuration test: each case edits the text a user would write.
    let good = r#"
[database]
url = "postgres://unused@127.0.0.1/unused"

[[jobs]]
name = "products"
schedule = "*/15 * * * *"
table = "products"
key = ["id"]
[jobs.request]
url = "https://api.example.com/p"
"#;
    let cases = [
        (
            "unknown key",
            good.replace("key = [\"id\"]", "key = [\"id\"]\ncolour = \"red\""),
            "job \"products\", key \"colour\": unknown field `colour`",
        ),
        (
            "injected table name",
            good.replace("table = \"products\"", "table = \"x; drop table y\""),
            "job \"products\", key \"table\": `x; drop table y` is not a valid table name",
        ),
        (
            "duplicate job names",
            format!(
                "{good}\n[[jobs]]{}",
                good.split("[[jobs]]")
                    .nth(1)
                    .unwrap()
                    .replace("table = \"products\"", "table = \"other\"")
            ),
            "job \"products\", key \"name\": the name is used by more than one job",
        ),
        (
            "invalid JSON pointer",
            good.replace("key = [\"id\"]", "key = [\"id\"]\nrecords = \"data/items\""),
            "job \"products\", key \"records\": `data/items` is not a JSON pointer",
        ),
        (
            "unknown pagination kind",
            format!("{good}[jobs.pagination]\nkind = \"pages\"\n"),
            "job \"products\", key \"pagination.kind\": unknown variant `pages`",
        ),
        (
            "unknown time zone",
            good.replace(
                "key = [\"id\"]",
                "key = [\"id\"]\ntimezone = \"Mars/Olympus\"",
            ),
            "job \"products\", key \"timezone\": `Mars/Olympus` is not an IANA time zone",
        ),
        (
            "out-of-range cron field",
            good.replace("schedule = \"*/15 * * * *\"", "schedule = \"0 25 * * *\""),
            "job \"products\", key \"schedule\": `0 25 * * *` is not a valid cron line",
        ),
        (
            "malformed cron line",
            good.replace("schedule = \"*/15 * * * *\"", "schedule = \"*/15 * * *\""),
            "job \"products\", key \"schedule\": `*/15 * * *` is not a cron line",
        ),
    ];
    let dir = scratch("check");
    for (case, config, expected) in cases {
        std::fs::write(dir.join("bad.toml"), &config).unwrap();
        // --config after the subcommand, as users write it.
        let output = apisync(&dir, &["check", "--config", "bad.toml"], &[]).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "case {case}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "case {case}: expected {expected:?} in\n{}",
            stderr(&output)
        );
    }
}

#[tokio::test]
async fn a_missing_configuration_file_is_a_configuration_error() {
    let output = apisync(&scratch("missing"), &["check"], &[]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("apisync.toml")
            && stderr(&output).contains("cannot read the file"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn the_demo_runs_twice_and_the_second_run_writes_nothing() {
    // No database server is involved: the environment is empty and the demo
    // brings its own API and SQLite file.
    let dir = scratch("demo");
    let output = apisync(&dir, &["demo", "--runs", "2", "--interval", "100ms"], &[]).await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        !text.contains("\\n"),
        "newlines are printed, not escaped: {text}"
    );
    let second = text.split("run 2:").nth(1).expect("a second run");
    assert!(second.contains("unchanged 240"), "{text}");
    assert!(second.contains("rows written: 0"), "{text}");
    assert!(text.contains("inserted 240"), "{text}");
    assert!(dir.join("apisync-demo.db").exists());
}

#[tokio::test]
async fn with_no_database_configured_sync_uses_a_sqlite_file_in_the_working_directory() {
    // Arrange: a multi-page API and a configuration without [database].
    let api = crate::fake_api::FakeApi::start(products(230)).await;
    let dir = scratch("no-database");
    let config = format!(
        "[[jobs]]\nname = \"products\"\nschedule = \"*/15 * * * *\"\ntable = \"products\"\n\
         key = [\"id\"]\nrecords = \"/data\"\n[jobs.request]\nurl = \"{}\"\n\
         [jobs.pagination]\nkind = \"page\"\nsize = 50\n",
        api.url("/page")
    );
    std::fs::write(dir.join("apisync.toml"), config).unwrap();
    let open = async || {
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&format!("sqlite://{}", dir.join("apisync.db").display()))
            .await
            .expect("the SQLite file exists")
    };
    let versions = async |db: &sqlx::SqlitePool| -> Vec<(String, String, i64)> {
        sqlx::query_as("SELECT id, changed_at, run_id FROM products ORDER BY id")
            .fetch_all(db)
            .await
            .unwrap()
    };

    // Act + Assert: the first run creates the file and copies everything.
    let first = apisync(&dir, &["sync", "products"], &[]).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(
        stderr(&first).contains(&format!(
            "store=SQLite ({})",
            dir.join("apisync.db").display()
        )),
        "{}",
        stderr(&first)
    );
    let db = open().await;
    let stored: std::collections::BTreeMap<String, serde_json::Value> =
        sqlx::query_as::<_, (String, String)>("SELECT id, record FROM products")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, record)| (id, serde_json::from_str(&record).unwrap()))
            .collect();
    assert_eq!(stored, crate::helpers::expected_rows(&api.records()));

    // A second run changes no row.
    let before = versions(&db).await;
    let second = apisync(&dir, &["sync", "products"], &[]).await;
    assert!(
        stdout(&second).contains("inserted=0 updated=0 unchanged=230"),
        "{}",
        stdout(&second)
    );
    assert_eq!(versions(&db).await, before, "no changed_at or run id moved");

    // K changes update exactly K rows.
    let mut records = api.records();
    for i in [0, 99, 229] {
        records[i]["name"] = serde_json::json!("changed");
    }
    api.set_records(records);
    let third = apisync(&dir, &["sync", "products"], &[]).await;
    assert!(
        stdout(&third).contains("inserted=0 updated=3 unchanged=227"),
        "{}",
        stdout(&third)
    );
    let after = versions(&db).await;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(moved, 3);
}

#[tokio::test]
async fn processes_share_one_sqlite_file_safely() {
    // Arrange: two slow jobs in one SQLite file, a new one.
    let api = crate::fake_api::FakeApi::start(products(200)).await;
    api.set_delay(std::time::Duration::from_millis(20));
    let dir = scratch("sqlite-shared");
    let job = |name: &str| {
        format!(
            "[[jobs]]\nname = \"{name}\"\nschedule = \"*/15 * * * *\"\ntable = \"{name}\"\n\
             key = [\"id\"]\nrecords = \"/data\"\n[jobs.request]\nurl = \"{}\"\n\
             [jobs.pagination]\nkind = \"page\"\nsize = 10\n",
            api.url("/page")
        )
    };
    std::fs::write(dir.join("apisync.toml"), job("alpha") + &job("beta")).unwrap();

    // Act: three processes migrate the new file at once, then two write
    // their jobs into it at the same time.
    let (m1, m2, m3) = tokio::join!(
        apisync(&dir, &["migrate"], &[]),
        apisync(&dir, &["migrate"], &[]),
        apisync(&dir, &["migrate"], &[])
    );
    let (a, b) = tokio::join!(
        apisync(&dir, &["sync", "alpha"], &[]),
        apisync(&dir, &["sync", "beta"], &[])
    );

    // Assert
    for output in [&m1, &m2, &m3] {
        assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    }
    for output in [&a, &b] {
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}{}",
            stdout(output),
            stderr(output)
        );
        assert!(
            stdout(output).contains("inserted=200"),
            "{}",
            stdout(output)
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_run_with_too_many_rejects_says_why_and_apisync_rejects_lists_them(pool: PgPool) {
    // Arrange: a key typo (`ID` for `id`), and a job whose API states a total.
    let env = TestEnv::start(pool, products(30)).await;
    let dir = scratch("rejects");
    let config = env.config_file(
        JobToml::paged(10)
            .with("pagination.total_path", "/total")
            .keyed(&["ID"]),
    );
    std::fs::write(dir.join("apisync.toml"), &config).unwrap();

    // Act
    let sync = apisync(&dir, &["sync", "products"], &[]).await;
    let again = apisync(&dir, &["sync", "products"], &[]).await;
    let listed = apisync(&dir, &["rejects", "products", "--limit", "2"], &[]).await;
    let as_json = apisync(&dir, &["rejects", "--json", "--run", "1"], &[]).await;
    let second_run = apisync(&dir, &["rejects", "products", "--run", "2"], &[]).await;
    let runs = apisync(&dir, &["runs", "products", "--json"], &[]).await;
    let nosuch = apisync(&dir, &["rejects", "nosuch"], &[]).await;

    // Assert: exit 1, the reason and where to look on the summary line…
    assert_eq!(sync.status.code(), Some(1), "{}", stderr(&sync));
    let line = stdout(&sync);
    assert!(
        line.starts_with("products failed fetched=30 inserted=0") && line.contains("expected=30"),
        "{line}"
    );
    assert!(
        line.contains("first reject: key field `ID` is missing (all: apisync rejects products)"),
        "{line}"
    );
    assert!(
        line.contains("30 of 30 records were rejected, more than max_rejected = 10%"),
        "{line}"
    );
    assert!(
        stderr(&sync).contains("reason=\"rejects\""),
        "the run's log line names the reason: {}",
        stderr(&sync)
    );
    assert_eq!(again.status.code(), Some(1));
    // …`apisync rejects` shows them, newest first, stored once…
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    let text = stdout(&listed);
    assert_eq!(
        text.matches("key field `ID` is missing").count(),
        2,
        "{text}"
    );
    assert!(text.contains("products run 1 #30"), "{text}");
    let rows: Vec<serde_json::Value> = stdout(&as_json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 20, "the default limit");
    assert_eq!(rows[0]["reason"], "key field `ID` is missing");
    assert_eq!(rows[0]["run_id"], 1);
    assert!(rows[0]["record"].as_str().unwrap().contains("\"id\":30"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM apisync.rejects")
        .fetch_one(env.pg())
        .await
        .unwrap();
    assert_eq!(stored, 30, "the second run stored none again");
    // …and `runs --json` has the stated total.
    let last: serde_json::Value =
        serde_json::from_str(stdout(&runs).lines().next().unwrap()).unwrap();
    assert_eq!(last["expected"], 30);
    assert_eq!(last["status"], "failed");
    assert!(
        stdout(&second_run).contains("no rejects stored by run 2 (a reject is stored once"),
        "{}",
        stdout(&second_run)
    );
    assert_eq!(nosuch.status.code(), Some(2));
    assert!(stderr(&nosuch).contains("no job named nosuch; configured jobs: products"));
}

#[sqlx::test(migrations = false)]
async fn check_connect_fails_on_a_pagination_pointer_that_finds_nothing(pool: PgPool) {
    // Arrange: a cursor API, configured with a pointer it does not have.
    let env = TestEnv::start(pool, products(300)).await;
    let dir = scratch("check-pointer");
    let config = env.config_file(
        JobToml::get("/cursor", "/data")
            .with("pagination.kind", "cursor")
            .with("pagination.cursor_path", "/meta/next"),
    );
    std::fs::write(dir.join("apisync.toml"), &config).unwrap();

    // Act
    let check = apisync(&dir, &["check", "--connect"], &[]).await;

    // Assert
    assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
    let text = stdout(&check);
    assert!(
        text.contains("job products: page 1 (http://127.0.0.1:")
            && text.contains(
                "cursor_path `/meta/next` finds nothing on a first page that holds records; the \
             response has the top-level keys \"data\", \"next_cursor\""
            ),
        "{text}"
    );
}

/// A job synced by hand: no schedule, no daemon.
const HAND_SYNCED: &str = r#"
[database]
url = "sqlite://unused.db"

[[jobs]]
name = "products"
table = "products"
key = ["id"]
[jobs.request]
url = "http://127.0.0.1:9/p"

[[jobs]]
name = "orders"
table = "orders"
key = ["id"]
[jobs.request]
url = "http://127.0.0.1:9/o"
"#;

#[tokio::test]
async fn the_cli_gaps_of_the_first_hour_are_closed() {
    // Arrange: jobs without a schedule, every unknown key of a file at
    // once, a log level that is none.
    let dir = scratch("cli-gaps");
    std::fs::write(dir.join("apisync.toml"), HAND_SYNCED).unwrap();
    let typos = scratch("cli-gaps-typos");
    let with_typos = HAND_SYNCED
        .replace("[database]", "colour = 1\n[database]\nflavour = 2")
        .replace("key = [\"id\"]\n[jobs.request]\nurl = \"http://127.0.0.1:9/o\"",
            "key = [\"id\"]\nsched = \"@daily\"\n[jobs.request]\nurl = \"http://127.0.0.1:9/o\"\nverb = \"GET\"");
    std::fs::write(typos.join("apisync.toml"), with_typos).unwrap();
    let loud = scratch("cli-gaps-level");
    std::fs::write(
        loud.join("apisync.toml"),
        format!("[log]\nlevel = \"verbose\"\n{HAND_SYNCED}"),
    )
    .unwrap();

    // Act
    let check = apisync(&dir, &["check"], &[]).await;
    let bare_sync = apisync(&dir, &["sync"], &[]).await;
    let runs_unknown = apisync(&dir, &["runs", "nosuch"], &[]).await;
    let daemon = apisync(&dir, &["run"], &[]).await;
    let unknown_keys = apisync(&typos, &["check"], &[]).await;
    let level = apisync(&loud, &["check"], &[]).await;
    let help = apisync(&dir, &["--help"], &[]).await;
    let check_help = apisync(&dir, &["check", "--help"], &[]).await;

    // Assert
    assert_eq!(
        check.status.code(),
        Some(0),
        "a schedule is optional: {}",
        stderr(&check)
    );
    let bare = stderr(&bare_sync);
    assert_eq!(bare_sync.status.code(), Some(2), "{bare}");
    assert!(
        bare.contains("--all") && bare.contains("products, orders"),
        "{bare}"
    );
    let runs = stderr(&runs_unknown);
    assert_eq!(runs_unknown.status.code(), Some(2), "{runs}");
    assert!(
        runs.contains("no job named nosuch; configured jobs: products, orders"),
        "{runs}"
    );
    let refused = stderr(&daemon);
    assert_ne!(daemon.status.code(), Some(0), "{refused}");
    assert!(
        refused.contains("job \"products\" has no schedule"),
        "{refused}"
    );
    let keys = stderr(&unknown_keys);
    assert_eq!(unknown_keys.status.code(), Some(2), "{keys}");
    for expected in [
        "key \"colour\": unknown field `colour`, expected one of `max_concurrent_jobs`",
        "key \"database.flavour\": unknown field `flavour`, expected one of `url`",
        "job \"orders\", key \"sched\": unknown field `sched`, expected one of `name`, `schedule`",
        "job \"orders\", key \"request.verb\": unknown field `verb`, expected one of `url`",
    ] {
        assert!(keys.contains(expected), "{expected}\n{keys}");
    }
    let level = stderr(&level);
    assert!(level.contains("`verbose` is not a log level"), "{level}");
    let help = stdout(&help);
    assert!(help.contains("SQLite file, ./apisync.db"), "{help}");
    let check_help = stdout(&check_help);
    assert!(
        check_help.contains("exit 1 when the database or an API cannot be reached"),
        "{check_help}"
    );
}

#[tokio::test]
async fn the_demo_with_a_run_count_does_not_say_ctrl_c_stops_it() {
    let dir = scratch("demo-count");
    let output = apisync(&dir, &["demo", "--runs", "1", "--interval", "100ms"], &[]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!text.contains("Ctrl-C"), "{text}");
    assert!(text.contains("1 run(s) in all"), "{text}");
}

#[tokio::test]
async fn config_schema_prints_the_checked_in_schema() {
    let dir = scratch("config-schema");
    let output = apisync(&dir, &["config-schema"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let checked_in = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/apisync.schema.json"),
    )
    .unwrap();
    assert!(
        stdout(&output) == checked_in,
        "config/apisync.schema.json differs from `apisync config-schema`; refresh it with \
         `cargo run -q -- config-schema > config/apisync.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&checked_in).unwrap();
    let job = &schema["$defs"]["JobSettings"];
    assert_eq!(job["additionalProperties"], false);
    assert!(
        job["properties"]["schedule"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("@hourly")),
        "each key has its doc text: {job}"
    );
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml"))
            .unwrap();
    assert!(example.starts_with("#:schema ./apisync.schema.json\n"));
}

#[sqlx::test(migrations = false)]
async fn try_sh_says_on_a_second_tour_that_the_rows_were_there(pool: PgPool) {
    // Arrange: the tour on the test's own database, with the binaries this
    // test run built (`cargo test --all-targets` builds the example).
    let bin = Path::new(env!("CARGO_BIN_EXE_apisync")).parent().unwrap();
    assert!(
        bin.join("examples/sample_api").exists(),
        "target/debug/examples/sample_api is missing: build it first with \
         `cargo build --examples` (scripts/test.sh does)"
    );
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let server = std::env::var("DATABASE_URL").unwrap();
    let port = crate::binary::free_port().to_string();
    let tour = || {
        let mut command = std::process::Command::new("bash");
        command
            .arg("scripts/try.sh")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DATABASE_URL", &server)
            .env("APISYNC_TRY_DATABASE", &database)
            .env("APISYNC_TRY_BINARIES", bin)
            .env("SAMPLE_API_PORT", &port);
        command
    };

    // Act
    let first = tokio::task::spawn_blocking({
        let mut command = tour();
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let second = tokio::task::spawn_blocking({
        let mut command = tour();
        move || command.output().unwrap()
    })
    .await
    .unwrap();

    // Assert
    let (first, second) = (stdout(&first), stdout(&second));
    assert!(
        first.contains("# first run: every record is new"),
        "{first}"
    );
    assert!(
        second.contains("from an earlier tour, so they are unchanged"),
        "{second}"
    );
    assert!(!second.contains("every record is new"), "{second}");
}
