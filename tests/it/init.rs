//! `apisync init URL` against every pagination kind of the fake API: what it
//! prints passes `check --connect`, and a sync with it archives the source
//! exactly. The real servers are in `real_servers::init_guesses`.

use std::collections::HashMap;
use std::path::Path;

use apisync::sync::Job;
use sqlx::PgPool;

use crate::binary::{run as apisync, scratch, stderr, stdout};
use crate::helpers::{TestEnv, expected_rows, products};

/// What `init` prints for `url`, and the job it describes.
pub async fn guessed(url: &str, name: &str) -> (String, Job) {
    let toml = apisync::init::init(&apisync::init::Request {
        url: url.to_owned(),
        name: name.to_owned(),
        headers: Vec::new(),
        database: None,
    })
    .await
    .unwrap_or_else(|e| panic!("init {url}: {e}"));
    let settings = apisync::config::load_str(&toml, Path::new("init.toml"), &HashMap::new())
        .unwrap_or_else(|e| panic!("init printed an invalid configuration: {e}\n{toml}"));
    let job = Job::from_settings(&settings.jobs[0]).unwrap();
    (toml, job)
}

#[sqlx::test(migrations = false)]
async fn init_guesses_every_pagination_kind_of_the_fake_api(pool: PgPool) {
    let env = TestEnv::start(pool, products(250)).await;
    let cases = [
        ("/none", "kind = \"none\"", 250),
        ("/page", "kind = \"page\"", 250),
        ("/offset", "kind = \"offset\"", 250),
        ("/cursor", "kind = \"cursor\"", 250),
        ("/link", "kind = \"link_header\"", 250),
        ("/next", "kind = \"next_url\"", 250),
    ];
    for (path, kind, _) in cases {
        // Act
        let name = format!("init_{}", path.trim_start_matches('/'));
        let (toml, job) = guessed(&env.api.url(path), &name).await;
        let dir = scratch(&format!("init-{name}"));
        std::fs::write(
            dir.join("apisync.toml"),
            format!("[database]\nurl = \"{}\"\n{toml}", env.database_url),
        )
        .unwrap();
        let check = apisync(&dir, &["check", "--connect"], &[]).await;
        let report = env.run(&job).await;

        // Assert
        assert!(toml.contains(kind), "{path}: expected {kind}:\n{toml}");
        assert!(toml.contains("key = [\"id\"]"), "{path}:\n{toml}");
        assert!(!toml.contains("could not walk"), "{path}:\n{toml}");
        assert_eq!(
            check.status.code(),
            Some(0),
            "{path}: {}\n{toml}",
            stdout(&check)
        );
        assert_eq!(
            report.status.as_str(),
            "succeeded",
            "{path}: {:?}\n{toml}",
            report.error
        );
        let sql = format!("SELECT id, CAST(record AS TEXT) FROM \"{name}\"");
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(env.pg())
            .await
            .unwrap();
        let rows: std::collections::BTreeMap<String, serde_json::Value> = rows
            .into_iter()
            .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
            .collect();
        if path == "/none" {
            // One page, as the API answers it.
            assert!(!rows.is_empty(), "{path}");
        } else {
            assert_eq!(rows, expected_rows(&env.api.records()), "{path}:\n{toml}");
        }
    }
}

#[sqlx::test(migrations = false)]
async fn init_prints_only_toml_on_stdout_and_check_connect_passes_on_it(pool: PgPool) {
    // Arrange: volatile request ids in the records.
    let env = TestEnv::start(pool, products(40)).await;
    env.api.set_volatile_field(true);
    let dir = scratch("init-cli");

    // Act
    let init = apisync(
        &dir,
        &[
            "init",
            &env.api.url("/cursor"),
            "--name",
            "things",
            "--database",
            &env.database_url,
        ],
        &[],
    )
    .await;
    let toml = stdout(&init);
    std::fs::write(dir.join("apisync.toml"), &toml).unwrap();
    let check = apisync(&dir, &["check", "--connect"], &[]).await;
    let sync = apisync(&dir, &["sync", "things"], &[]).await;

    // Assert
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    assert!(
        toml.contains("hash_exclude = [\"/meta/request_id\"]"),
        "{toml}"
    );
    assert!(toml.contains("[database]"), "{toml}");
    assert_eq!(check.status.code(), Some(0), "{}\n{toml}", stdout(&check));
    assert_eq!(sync.status.code(), Some(0), "{}\n{toml}", stdout(&sync));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM things")
        .fetch_one(env.pg())
        .await
        .unwrap();
    assert_eq!(rows, 40);
}

#[tokio::test]
async fn init_says_what_it_cannot_use() {
    let dir = scratch("init-bad");
    let output = apisync(&dir, &["init", "http://127.0.0.1:9/nothing"], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).is_empty());
    assert!(
        stderr(&output).contains("apisync init: GET http://127.0.0.1:9/nothing"),
        "{}",
        stderr(&output)
    );
    let named = apisync(&dir, &["init", "http://x.test", "--name", "Bad-Name"], &[]).await;
    assert_eq!(named.status.code(), Some(2));
}
