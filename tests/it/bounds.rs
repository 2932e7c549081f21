//! Numbers and durations beyond their allowed range are refused when the
//! configuration is loaded (exit 2, naming the job, the key and the range),
//! through the real binary: each case here once panicked a command. And a
//! problem with a value from the environment names its variable.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::json;

use crate::binary::{run as apisync, scratch, stderr};
use crate::helpers::*;

/// A one-job configuration storing into `database`, against `api`, with
/// `top` lines before the job and `job` lines inside it.
fn config(database: &str, api: &str, top: &str, job: &str) -> String {
    format!(
        r#"{top}
[database]
url = "{database}"

[[jobs]]
name = "products"
schedule = "*/15 * * * *"
table = "products"
key = ["id"]
records = "/data"
{job}
[jobs.request]
url = "{api}/page"
[jobs.pagination]
kind = "page"
size = 5
"#
    )
}

/// Writes `text` as `apisync.toml` in `dir` and runs `apisync ARGS` there.
async fn with_config(dir: &Path, text: &str, args: &[&str]) -> Output {
    std::fs::write(dir.join("apisync.toml"), text).unwrap();
    apisync(dir, args, &[]).await
}

/// Exit code 2, with one problem line holding every one of `fragments`.
fn assert_refused(output: &Output, fragments: &[&str]) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|line| fragments.iter().all(|f| line.contains(f))),
        "expected {fragments:?} on one line of\n{stderr}"
    );
}

#[tokio::test]
async fn durations_and_counts_beyond_their_range_exit_2_naming_key_and_range() {
    let dir = scratch("bounds");
    let database = format!("sqlite://{}", dir.join("apisync.db").display());
    // Each of these panicked: acquire_timeout and rate_limit with "overflow
    // when adding duration to instant" (sync), max_concurrent_jobs with
    // "a semaphore may not have more than MAX_PERMITS permits" (run).
    let cases = [
        (
            "sync",
            config(
                &database,
                "http://127.0.0.1:9",
                "",
                "rate_limit = \"1/300000000000y\"",
            ),
            vec![
                "job \"products\", key \"rate_limit\"",
                "the period",
                "1ms to 1d",
            ],
        ),
        (
            "sync",
            config(&database, "http://127.0.0.1:9", "", "").replace(
                "[database]\n",
                "[database]\nacquire_timeout = \"300000000000y\"\n",
            ),
            vec![
                "key \"database.acquire_timeout\"",
                "is outside the allowed range, 1ms to 1h",
            ],
        ),
        (
            "run",
            config(
                &database,
                "http://127.0.0.1:9",
                "max_concurrent_jobs = 9223372036854775807",
                "",
            ),
            vec![
                "key \"max_concurrent_jobs\"",
                "`9223372036854775807` is outside the allowed range, 1 to 1024",
            ],
        ),
        (
            "run",
            config(
                &database,
                "http://127.0.0.1:9",
                "max_concurrent_jobs = -1",
                "",
            ),
            vec!["key \"max_concurrent_jobs\"", "(allowed: 1 to 1024)"],
        ),
        (
            "check",
            config(
                &database,
                "http://127.0.0.1:9",
                "",
                "[jobs.retry]\nmax_attempts = 4294967296",
            ),
            vec![
                "job \"products\", key \"retry.max_attempts\"",
                "(allowed: 1 to 10000)",
            ],
        ),
    ];
    for (command, text, fragments) in cases {
        let args: Vec<&str> = match command {
            "sync" => vec!["sync", "products"],
            other => vec![other],
        };
        let output = with_config(&dir, &text, &args).await;
        assert_refused(&output, &fragments);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

store_tests! {
    /// `lookback = "1000000y"` was reported to panic once a watermark
    /// exists, leaving the run `running`: now the configuration is refused
    /// before any run starts, and the stored watermark stays as it was.
    async fn a_lookback_beyond_its_range_is_refused_with_a_watermark_stored(backend: Backend) {
        // Arrange: a first run through the binary stores a watermark.
        let mut records = products(10);
        for (i, record) in records.iter_mut().enumerate() {
            record["updated_at"] = json!(format!("2026-01-01T00:{i:02}:00Z"));
        }
        let env = TestEnv::start_on(backend, records).await;
        let dir = scratch(&format!("lookback-{}", env.store_name));
        let incremental = |lookback: &str| {
            config(
                &env.database_url,
                &env.api.url(""),
                "",
                &format!(
                    "[jobs.incremental]\nfield = \"updated_at\"\nparam = \"updated_since\"\n\
                     lookback = \"{lookback}\"\n"
                ),
            )
        };
        let first = with_config(&dir, &incremental("5m"), &["sync", "products"]).await;
        assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
        let watermark = env.ctx.store.watermark("products").await.unwrap();
        assert_eq!(watermark, Some(json!("2026-01-01T00:09:00Z")));

        // Act
        let output = with_config(&dir, &incremental("1000000y"), &["sync", "products"]).await;

        // Assert: refused, naming job, key and range; no run started or left
        // running; the watermark untouched.
        assert_refused(
            &output,
            &[
                "job \"products\", key \"incremental.lookback\"",
                "is outside the allowed range, 0s to 3650d",
            ],
        );
        assert_eq!(env.query_i64("SELECT COUNT(*) FROM apisync.runs").await, 1);
        assert_eq!(
            env.query_i64("SELECT COUNT(*) FROM apisync.runs WHERE status = 'running'")
                .await,
            0
        );
        assert_eq!(env.ctx.store.watermark("products").await.unwrap(), watermark);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A pool given a wait too long for an `Instant` (a bound forgotten some
/// day) saturates it instead of panicking in sqlx on first use.
#[tokio::test]
async fn a_store_given_an_endless_acquire_timeout_does_not_panic() {
    let dir = scratch("endless-acquire");
    let url = format!("sqlite://{}", dir.join("apisync.db").display());
    let store = apisync::store::SqliteStore::connect_lazy(&url, Duration::MAX).unwrap();
    let store = apisync::store::Store::Sqlite(store);
    store.migrate().await.expect("migrations apply");
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A misspelt variable is reported as the environment's, not the file's.
#[tokio::test]
async fn a_bad_key_from_the_environment_is_reported_under_its_variable() {
    let dir = scratch("bounds-env");
    let database = format!("sqlite://{}", dir.join("apisync.db").display());
    std::fs::write(
        dir.join("apisync.toml"),
        config(&database, "http://127.0.0.1:9", "", ""),
    )
    .unwrap();
    let output = apisync(&dir, &["check"], &[("APISYNC__DATABSE__URL", "x")]).await;
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("apisync: invalid configuration in apisync.toml and the environment:"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "environment variable APISYNC__DATABSE__URL (key \"databse\"): unknown field `databse`"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
