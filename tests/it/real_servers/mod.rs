//! Syncs from real third-party API servers instead of the fake API: Django
//! REST Framework, FastAPI with fastapi-pagination, json-server 0.17 and 1.x,
//! each with the page shapes, size caps and end-of-collection answers its
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

mod drf;
mod fastapi;
mod json_server_0_17;
mod json_server_1;
mod servers;

use std::collections::BTreeMap;

use apisync::run::RunStatus;
use apisync::sync::{Job, RunReport};
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Backend, TestEnv};
use servers::RealServer;

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

/// The whole collection as the server itself returns it at `all_path`, in
/// one unpaginated response: what the table must equal.
async fn source(server: &RealServer, all_path: &str) -> BTreeMap<String, Value> {
    let body = server.get_json(all_path).await;
    let records = body
        .as_array()
        .unwrap_or_else(|| panic!("{all_path} answers an array, not {body}"));
    by_key(records)
}

/// The table equals the server's collection, record for record.
async fn assert_table_is_source(env: &TestEnv, server: &RealServer, all_path: &str) {
    let expected = source(server, all_path).await;
    let rows = env.rows(TABLE).await;
    if rows != expected {
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

/// A job built from TOML lines that name the server as `{server}`.
fn job(env: &TestEnv, server: &RealServer, body: &str) -> Job {
    env.job(&body.replace("{server}", &server.url))
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
async fn assert_complete_or_loud(
    env: &TestEnv,
    server: &RealServer,
    report: &RunReport,
    all_path: &str,
) {
    match report.status {
        RunStatus::Succeeded => assert_table_is_source(env, server, all_path).await,
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
async fn assert_archive_is_exact(
    backend: Backend,
    server: &RealServer,
    body: &str,
    all_path: &str,
) -> RunReport {
    // Arrange
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = job(&env, server, body);
    let n = source(server, all_path).await.len() as u64;

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
    assert_table_is_source(&env, server, all_path).await;
    report
}

/// A second run over the unchanged server writes no row.
async fn assert_resync_writes_nothing(
    backend: Backend,
    server: &RealServer,
    body: &str,
    all_path: &str,
) {
    // Arrange
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = job(&env, server, body);
    let n = source(server, all_path).await.len() as u64;
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
    assert_table_is_source(&env, server, all_path).await;
}

/// Edits made through a server's own API between two runs.
struct Changes {
    /// `(path, partial record)` for PATCH, each to a different record and
    /// each changing its content.
    patches: Vec<(String, Value)>,
    /// Where new records are POSTed.
    post_path: String,
    /// The new records, without ids: the server assigns them.
    posts: Vec<Value>,
}

/// Three records changed and two added through the server's API: the next
/// run updates exactly those three and inserts exactly those two.
async fn assert_changes_applied_exactly(
    backend: Backend,
    server: &RealServer,
    body: &str,
    all_path: &str,
    changes: Changes,
) {
    // Arrange
    let env = TestEnv::start_on(backend, Vec::new()).await;
    let job = job(&env, server, body);
    let n = source(server, all_path).await.len() as u64;
    assert_succeeded(&env.run(&job).await);
    for (path, patch) in &changes.patches {
        server.send(Method::PATCH, path, patch).await;
    }
    for record in &changes.posts {
        server.send(Method::POST, &changes.post_path, record).await;
    }
    let (patched, posted) = (changes.patches.len() as u64, changes.posts.len() as u64);
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
    assert_table_is_source(&env, server, all_path).await;
}
