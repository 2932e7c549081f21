//! Syncs from real third-party API servers instead of the fake API: Django
//! REST Framework, FastAPI with fastapi-pagination, Datasette, json-server 0.17
//! and 1.x, each with the page shapes, size caps and end-of-collection answers its
//! users meet. They hold apisync to guarantee 7 (complete, or loud) where the
//! fake API would only echo our own idea of an API.
//!
//! Each test starts its own server (see `servers`), so changes made through
//! the server's API between runs stay in that test. The servers must be
//! installed by `scripts/real-servers/setup.sh` (scripts/test.sh runs it);
//! without it these tests fail, saying so, rather than skip.
//!
//! Every server gets the same three scenarios (an exact archive, a re-sync
//! that writes nothing, changes applied exactly) and tests of its own shapes.

mod datasette;
mod drf;
mod fastapi;
mod init_guesses;
mod json_server_0_17;
mod json_server_1;
mod oauth;
mod servers;

use std::collections::BTreeMap;

use apisync::run::RunStatus;
use apisync::sync::{Job, RunReport};
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Backend, JobToml, TestEnv};
use servers::{Everything, RealServer};

/// The table the harness's jobs write.
const TABLE: &str = "products";

/// A key as the table's key column holds it: a string as is, a number as its
/// digits (json-server 1.x sends `"7"` where 0.17 sends `7`).
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `key → record` of `records`, keyed on `id` as the table is.
fn by_key(records: &[Value]) -> BTreeMap<String, Value> {
    records
        .iter()
        .map(|r| (key_text(&r["id"]), r.clone()))
        .collect()
}

/// The whole collection as the server itself returns it, apart from apisync:
/// what the table must equal. A shared server's never changes, so it is read
/// once for all the tests that use it.
async fn source(server: &RealServer) -> BTreeMap<String, Value> {
    match server.unchanging() {
        Some(collection) => collection.get_or_init(|| read_source(server)).await.clone(),
        None => read_source(server).await,
    }
}

async fn read_source(server: &RealServer) -> BTreeMap<String, Value> {
    match server.everything {
        Everything::Array(path) => {
            let body = server.get_json(path).await;
            let records = body
                .as_array()
                .unwrap_or_else(|| panic!("{path} answers an array, not {body}"));
            by_key(records)
        }
        Everything::DatasetteRows(path) => {
            let mut records = Vec::new();
            let mut next = Some(format!("{path}&_size=1000"));
            while let Some(url) = next {
                let page = server.get_json(url.trim_start_matches(&server.url)).await;
                records.extend(page["rows"].as_array().expect("rows").iter().cloned());
                next = page["next_url"].as_str().map(str::to_owned);
            }
            by_key(&records)
        }
    }
}

/// The table equals the server's collection, record for record.
async fn assert_table_is_source(env: &TestEnv, server: &RealServer) {
    assert_table_is(env, &source(server).await).await;
}

/// The table equals `expected` (the server's collection, read once where the
/// server does not change: a Python server takes a while to list it all).
async fn assert_table_is(env: &TestEnv, expected: &BTreeMap<String, Value>) {
    let rows = env.rows(TABLE).await;
    if rows != *expected {
        let missing: Vec<_> = expected.keys().filter(|k| !rows.contains_key(*k)).collect();
        let extra: Vec<_> = rows.keys().filter(|k| !expected.contains_key(*k)).collect();
        let differ: Vec<_> = rows
            .iter()
            .filter(|(k, v)| expected.get(*k).is_some_and(|e| e != *v))
            .map(|(k, _)| k)
            .collect();
        panic!(
            "the table ({} rows) is not the source ({} records): {} missing (first {:?}), \
             {} not in the source (first {:?}), {} differ (first {:?})",
            rows.len(),
            expected.len(),
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            extra.len(),
            extra.iter().take(5).collect::<Vec<_>>(),
            differ.len(),
            differ.iter().take(5).collect::<Vec<_>>(),
        );
    }
}

/// A job built from TOML lines that name the server as `{api}`.
fn job(env: &TestEnv, server: &RealServer, body: &str) -> Job {
    env.job(JobToml::lines(body).api(&server.url))
}

/// One run of `body` against `server`, into a fresh store.
async fn run_job(backend: Backend, server: &RealServer, body: &str) -> (TestEnv, RunReport) {
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = job(&env, server, body);
    let report = env.run(&job).await;
    (env, report)
}

fn assert_succeeded(report: &RunReport) {
    assert_eq!(
        (report.status, report.error.as_deref()),
        (RunStatus::Succeeded, None),
        "the run should succeed; counts {:?}",
        report.counts
    );
}

/// The run failed, the runs table says so with the same error, and the
/// error contains `expected`.
async fn assert_failed_with(env: &TestEnv, report: &RunReport, expected: &str) {
    let error = report
        .error
        .clone()
        .unwrap_or_else(|| panic!("the run should fail; it {:?}", report.status));
    assert_eq!(report.status, RunStatus::Failed);
    assert!(
        error.contains(expected),
        "error {error:?} should contain {expected:?}"
    );
    let (status, stored) = env.run_row(report.run_id).await;
    assert_eq!(
        (status.as_str(), stored.as_deref()),
        ("failed", Some(error.as_str()))
    );
}

/// Guarantee 7 where the API makes paging easy to get wrong: a run that
/// succeeds holds the whole source; otherwise it failed and said why.
async fn assert_complete_or_loud(env: &TestEnv, server: &RealServer, report: &RunReport) {
    match report.status {
        RunStatus::Succeeded => assert_table_is_source(env, server).await,
        RunStatus::Failed => {
            let error = report.error.as_deref().unwrap_or_default();
            assert!(!error.is_empty(), "a failed run names its cause");
            let (status, _) = env.run_row(report.run_id).await;
            assert_eq!(status, "failed");
        }
        other => panic!("the run ended {other:?}"),
    }
}

/// One run of `body` from a fresh server; the table must equal the source.
async fn assert_archive_is_exact(backend: Backend, server: &RealServer, body: &str) -> RunReport {
    // Arrange
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = job(&env, server, body);
    let expected = source(server).await;
    let n = expected.len() as u64;

    // Act
    let report = env.run(&job).await;

    // Assert
    assert_succeeded(&report);
    assert_eq!(
        (
            report.counts.fetched,
            report.counts.inserted,
            report.counts.duplicate
        ),
        (n, n, 0),
        "every record read once"
    );
    assert_table_is(&env, &expected).await;
    report
}

/// A second run over the unchanged server writes no row.
async fn assert_resync_writes_nothing(backend: Backend, server: &RealServer, body: &str) {
    // Arrange
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = job(&env, server, body);
    let expected = source(server).await;
    let n = expected.len() as u64;
    assert_succeeded(&env.run(&job).await);
    env.count_writes(TABLE).await;

    // Act
    let second = env.run(&job).await;

    // Assert
    assert_succeeded(&second);
    assert_eq!(
        (
            second.counts.inserted,
            second.counts.updated,
            second.counts.unchanged
        ),
        (0, 0, n)
    );
    assert_eq!(env.writes().await, 0, "no row written by the re-sync");
    assert_table_is(&env, &expected).await;
}

/// Edits made between two runs: three records changed and two added.
enum Changes {
    /// Through the server's own API.
    Http {
        /// `(path, partial record)` for PATCH, each to a different record
        /// and each changing its content.
        patches: Vec<(String, Value)>,
        /// Where new records are POSTed.
        post_path: String,
        /// The new records, without ids: the server assigns them.
        posts: Vec<Value>,
    },
    /// Straight into the server's SQLite file, for a read-only API: three
    /// `UPDATE`s of one row each, then two `INSERT`s of one row each.
    Sql(Vec<&'static str>),
}

impl Changes {
    /// Applies the changes; returns `(updated, inserted)`.
    async fn apply(&self, server: &RealServer) -> (u64, u64) {
        match self {
            Changes::Http {
                patches,
                post_path,
                posts,
            } => {
                for (path, patch) in patches {
                    server.send(Method::PATCH, path, patch).await;
                }
                for record in posts {
                    server.send(Method::POST, post_path, record).await;
                }
                (patches.len() as u64, posts.len() as u64)
            }
            Changes::Sql(statements) => {
                let url = format!("sqlite://{}", server.data_file().display());
                let db = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .expect("open the server's SQLite file");
                let (mut updated, mut inserted) = (0, 0);
                for sql in statements {
                    let done = sqlx::query(*sql)
                        .execute(&db)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                    assert_eq!(done.rows_affected(), 1, "{sql} changes one row");
                    if sql.starts_with("UPDATE") {
                        updated += 1;
                    } else {
                        inserted += 1;
                    }
                }
                db.close().await;
                (updated, inserted)
            }
        }
    }
}

/// Three records changed and two added through the server's API: the next
/// run updates exactly those three and inserts exactly those two.
async fn assert_changes_applied_exactly(
    backend: Backend,
    server: &RealServer,
    body: &str,
    changes: Changes,
) {
    // Arrange
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = job(&env, server, body);
    let n = source(server).await.len() as u64;
    assert_succeeded(&env.run(&job).await);
    let (patched, posted) = changes.apply(server).await;
    env.count_writes(TABLE).await;

    // Act
    let second = env.run(&job).await;

    // Assert
    assert_succeeded(&second);
    assert_eq!(
        (
            second.counts.updated,
            second.counts.inserted,
            second.counts.unchanged
        ),
        (patched, posted, n - patched),
    );
    assert_eq!(env.writes().await, (patched + posted) as i64);
    assert_table_is_source(&env, server).await;
}

/// Records deleted through the server's own API (`DELETE` of each path in
/// `deletes`) between two runs of `body` with `deletions = "mark"` and
/// history: the second run marks exactly those keys, their history ends
/// with a `delete` version, every other row is untouched, and `verify`
/// then agrees.
async fn assert_deletions_marked_exactly(
    backend: Backend,
    server: &RealServer,
    body: &str,
    deletes: &[&str],
) {
    // Arrange
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = env.job(
        JobToml::lines(body)
            .api(&server.url)
            .with("deletions", "mark")
            .with("history", true),
    );
    let before = source(server).await;
    assert_succeeded(&env.run(&job).await);
    for path in deletes {
        server.delete(path).await;
    }
    let after = source(server).await;
    let gone: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert_eq!(gone.len(), deletes.len(), "the server deleted the records");
    let versions = env.row_versions(TABLE).await;
    env.count_writes(TABLE).await;

    // Act
    let second = env.run(&job).await;

    // Assert
    assert_succeeded(&second);
    assert_eq!(second.counts.deleted, deletes.len() as u64);
    assert_eq!(
        env.writes().await,
        deletes.len() as i64,
        "one write per mark"
    );
    let mut marked: Vec<String> = env
        .db
        .fetch_all::<(String,)>(&format!(
            "SELECT id FROM {TABLE} WHERE deleted_at IS NOT NULL"
        ))
        .await
        .into_iter()
        .map(|(id,)| id)
        .collect();
    marked.sort();
    let mut gone: Vec<String> = gone.into_iter().cloned().collect();
    gone.sort();
    assert_eq!(marked, gone);
    let live: BTreeMap<String, Value> = env
        .rows(TABLE)
        .await
        .into_iter()
        .filter(|(id, _)| !marked.contains(id))
        .collect();
    assert_eq!(live, after, "the live rows are the source");
    let after_versions = env.row_versions(TABLE).await;
    for (id, version) in &versions {
        if !marked.contains(id) {
            assert_eq!(&after_versions[id], version, "row {id} untouched");
        }
    }
    for id in &marked {
        let ops: Vec<(String,)> = env
            .db
            .fetch_all(&format!(
                "SELECT op FROM {TABLE}_history WHERE id = '{id}' ORDER BY valid_from"
            ))
            .await;
        assert_eq!(
            ops,
            [("insert".to_owned(),), ("delete".to_owned(),)],
            "{id}"
        );
    }
    let mut lock = env
        .ctx
        .store
        .try_lock_job(&job.name)
        .await
        .unwrap()
        .unwrap();
    let comparison = apisync::sync::verify(&job, &env.ctx, &mut lock)
        .await
        .unwrap();
    lock.release().await;
    assert!(comparison.agrees(), "{comparison:?}");
}
