//! Guarantee 8: deletions (`deletions = "mark" | "delete"`, the
//! `max_deleted` guard, `full_refresh`, `--full`) and history
//! (`history = true`), on both stores.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_api::faults::Fault;
use crate::helpers::*;

/// Ten pages of ten.
const N: usize = 100;

fn marking(job: JobToml) -> JobToml {
    job.with("deletions", "mark")
}

/// The fake API's records without the ids `gone`.
fn without(records: &[Value], gone: &[usize]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| !gone.contains(&(r["id"].as_u64().unwrap() as usize)))
        .cloned()
        .collect()
}

/// The ids of `sql`'s first column, as numbers, sorted.
async fn ids(env: &TestEnv, sql: &str) -> Vec<usize> {
    let mut ids: Vec<usize> = env
        .db
        .fetch_all::<(String,)>(sql)
        .await
        .into_iter()
        .map(|(id,)| id.parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

async fn marked(env: &TestEnv) -> Vec<usize> {
    ids(env, "SELECT id FROM products WHERE deleted_at IS NOT NULL").await
}

/// `deleted` of a run's row.
async fn run_deleted(env: &TestEnv, run_id: Option<i64>) -> i64 {
    let sql = format!(
        "SELECT deleted FROM apisync.runs WHERE id = {}",
        run_id.unwrap()
    );
    env.query_i64(&sql).await
}

/// `(op, open)` of each version of `id`, oldest first, and whether each
/// closed version's `valid_to` is the next one's `valid_from`.
async fn versions(env: &TestEnv, id: usize) -> (Vec<(String, bool)>, bool) {
    let sql = format!(
        "SELECT op, CAST(valid_from AS TEXT), CAST(valid_to AS TEXT) FROM products_history \
         WHERE id = '{id}' ORDER BY valid_from"
    );
    let rows: Vec<(String, String, Option<String>)> = env.db.fetch_all(&sql).await;
    let meet = rows
        .windows(2)
        .all(|pair| pair[0].2.as_deref() == Some(pair[1].1.as_str()));
    (
        rows.into_iter()
            .map(|(op, _, to)| (op, to.is_none()))
            .collect(),
        meet,
    )
}

/// `(id, op, valid_from, valid_to, content_hash)` of a history row.
type Version = (String, String, String, Option<String>, Vec<u8>);

/// Keys with other than exactly one open version.
async fn keys_without_one_open_version(env: &TestEnv) -> i64 {
    env.query_i64(
        "SELECT count(*) FROM (SELECT id FROM products_history GROUP BY id \
         HAVING sum(CASE WHEN valid_to IS NULL THEN 1 ELSE 0 END) <> 1) AS bad",
    )
    .await
}

store_tests! {
    async fn keys_deleted_upstream_are_marked_and_come_back_restored(backend: Backend) {
        // Arrange: a full load, then five records deleted upstream.
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(marking(JobToml::paged(10)));
        let first = env.run(&job).await;
        assert_eq!(first.counts.inserted, N as u64, "{:?}", first.error);
        let before = env.row_versions("products").await;
        let gone = [3, 17, 42, 77, 100];
        env.api.set_records(without(&products(N), &gone));
        env.count_writes("products").await;

        // Act
        let second = env.run(&job).await;

        // Assert: exactly those five marked, counted as deleted (in the
        // report and the runs table), and no other row touched.
        assert_eq!(second.status.as_str(), "succeeded", "{:?}", second.error);
        assert_eq!(
            (second.counts.deleted, second.counts.unchanged, second.counts.updated),
            (5, 95, 0)
        );
        assert_eq!(run_deleted(&env, second.run_id).await, 5);
        assert_eq!(marked(&env).await, gone);
        assert_eq!(env.writes().await, 5, "one write per mark, none else");
        let after = env.row_versions("products").await;
        for (id, version) in &before {
            if !gone.contains(&id.parse().unwrap()) {
                assert_eq!(&after[id], version, "row {id} untouched");
            }
        }
        assert_eq!(env.rows("products").await.len(), N, "marked rows stay");

        // A run that finds the same keys still gone marks nothing again.
        let third = env.run(&job).await;
        assert_eq!((third.counts.deleted, env.writes().await), (0, 5));

        // Two come back, one of them changed: both restored, as updated.
        let mut back = without(&products(N), &[3, 42, 100]);
        let mut changed = product(77);
        changed["name"] = json!("back, renamed");
        back.retain(|r| r["id"] != 77);
        back.push(changed.clone());
        env.api.set_records(back);
        let fourth = env.run(&job).await;
        assert_eq!(fourth.status.as_str(), "succeeded", "{:?}", fourth.error);
        assert_eq!((fourth.counts.updated, fourth.counts.deleted), (2, 0));
        assert_eq!(marked(&env).await, [3, 42, 100]);
        assert_eq!(env.rows("products").await["77"], changed);
    }

    async fn deletions_delete_removes_the_rows_of_keys_gone_upstream(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(JobToml::paged(10).with("deletions", "delete"));
        env.run(&job).await;
        let before = env.row_versions("products").await;
        env.api.set_records(without(&products(N), &[5, 6]));

        // Act
        let report = env.run(&job).await;

        // Assert: the rows are gone, the others untouched; the table has no
        // deleted_at.
        assert_eq!(report.status.as_str(), "succeeded", "{:?}", report.error);
        assert_eq!(report.counts.deleted, 2);
        let rows = env.rows("products").await;
        assert_eq!(rows.len(), N - 2);
        assert!(!rows.contains_key("5") && !rows.contains_key("6"));
        let mut kept = before.clone();
        kept.retain(|id, _| id != "5" && id != "6");
        assert_eq!(env.row_versions("products").await, kept, "no other row touched");
        // Back again: inserted anew.
        env.api.set_records(products(N));
        let back = env.run(&job).await;
        assert_eq!((back.counts.inserted, back.counts.deleted), (2, 0));
    }

    async fn the_guard_refuses_a_run_that_would_remove_half_the_table_and_changes_nothing(backend: Backend) {
        // Arrange: half the records vanish upstream (an API answering short).
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(marking(JobToml::paged(10)));
        env.run(&job).await;
        let before = env.row_versions("products").await;
        let mut short = products(N / 2);
        short[0]["name"] = json!("renamed");
        env.api.set_records(short.clone());

        // Act
        let report = env.run(&job).await;

        // Assert: failed with reason deletions, naming the count, the live
        // rows and the setting; nothing marked; the pages read were
        // committed (the change they carried is stored) and counted.
        assert_eq!(report.status.as_str(), "failed");
        assert_eq!(report.failure.map(|r| r.as_str()), Some("deletions"));
        let error = report.error.unwrap_or_default();
        for part in ["50 of the 100 stored keys", "max_deleted = 10% allows (10)"] {
            assert!(error.contains(part), "{part:?} in {error}");
        }
        assert_eq!((report.counts.unchanged, report.counts.updated), (49, 1), "the pages read are committed");
        assert_eq!(report.counts.deleted, 0);
        assert!(marked(&env).await.is_empty());
        assert_eq!(env.rows("products").await["1"], short[0]);
        let mut others = env.row_versions("products").await;
        others.remove("1");
        let mut before_others = before.clone();
        before_others.remove("1");
        assert_eq!(others, before_others);
        let (status, recorded) = env.run_row(report.run_id).await;
        assert_eq!((status.as_str(), recorded.as_deref()), ("failed", Some(error.as_str())));

        // An API that suddenly answers an empty list never empties the archive.
        env.api.set_records(Vec::new());
        let empty = env.run(&job).await;
        assert_eq!(empty.failure.map(|r| r.as_str()), Some("deletions"));
        assert!(marked(&env).await.is_empty());
    }

    async fn max_deleted_fails_a_run_only_when_it_would_remove_more(backend: Backend) {
        // Arrange: a count of 3, and then a share of 4%.
        let env = TestEnv::start_on(backend, products(N)).await;
        let by_count = env.job(marking(JobToml::paged(10)).with("max_deleted", 3));
        env.run(&by_count).await;

        // Act / Assert: three gone is allowed; four more are not.
        env.api.set_records(without(&products(N), &[1, 2, 3]));
        let three = env.run(&by_count).await;
        assert_eq!((three.status.as_str(), three.counts.deleted), ("succeeded", 3));
        env.api.set_records(without(&products(N), &[1, 2, 3, 4, 5, 6, 7]));
        let four = env.run(&by_count).await;
        assert_eq!(four.failure.map(|r| r.as_str()), Some("deletions"));
        assert!(four.error.unwrap().contains("4 of the 97 stored keys were not in it: more than max_deleted = 3 allows (3)"));
        // 4% of the 97 live rows is 3.88: four are more.
        let by_share = env.job(marking(JobToml::paged(10)).with("max_deleted", "4%"));
        assert_eq!(env.run(&by_share).await.failure.map(|r| r.as_str()), Some("deletions"));
        let by_share = env.job(marking(JobToml::paged(10)).with("max_deleted", "5%"));
        let allowed = env.run(&by_share).await;
        assert_eq!((allowed.status.as_str(), allowed.counts.deleted), ("succeeded", 4));
        assert_eq!(marked(&env).await, [1, 2, 3, 4, 5, 6, 7]);
    }

    async fn a_failed_or_partial_run_marks_nothing(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(marking(JobToml::paged(10)));
        env.run(&job).await;
        env.api.set_records(without(&products(N), &[99]));

        // Act / Assert: a fetch that fails for good on page 3.
        env.api
            .queue_faults([Fault::Slow(Duration::ZERO), Fault::Slow(Duration::ZERO)]);
        env.api.set_fault(Some(Fault::Status(404)));
        let failed = env.run(&job).await;
        env.api.set_fault(None);
        assert_eq!(failed.status.as_str(), "failed");
        assert!(marked(&env).await.is_empty(), "a failed run marks nothing");

        // A run that reads fewer keys than the API states.
        env.api.state_totals(Some(N), None);
        let job_with_total = env.job(marking(JobToml::paged(10).with("pagination.total_path", "/total")));
        let partial = env.run(&job_with_total).await;
        assert_eq!(partial.failure.map(|r| r.as_str()), Some("incomplete"), "{:?}", partial.error);
        assert!(marked(&env).await.is_empty(), "an incomplete run marks nothing");
        env.api.state_totals(None, None);

        // Too many rejects (a key typo, into the same column).
        let mut typo_key = toml::Table::new();
        typo_key.insert("field".into(), "/idd".into());
        typo_key.insert("column".into(), "id".into());
        let typo = env.job(
            marking(JobToml::paged(10)).with("key", toml::Value::Array(vec![typo_key.into()])),
        );
        let rejected = env.run(&typo).await;
        assert_eq!(rejected.failure.map(|r| r.as_str()), Some("rejects"));
        assert!(marked(&env).await.is_empty(), "a run over rejects marks nothing");

        // The control: the same change, read whole, is marked.
        let complete = env.run(&job).await;
        assert_eq!((complete.status.as_str(), complete.counts.deleted), ("succeeded", 1));
        assert_eq!(marked(&env).await, [99]);
    }

    async fn an_interrupted_run_marks_nothing(backend: Backend) {
        // Arrange: pages that take a while, and a record gone upstream.
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(marking(JobToml::paged(10)));
        env.run(&job).await;
        env.api.set_records(without(&products(N), &[1]));
        env.api.set_delay(Duration::from_millis(100));

        // Act: shutdown once two pages are committed.
        let run = {
            let ctx = env.ctx.clone();
            let job = job.clone();
            tokio::spawn(async move { apisync::sync::run_once(&job, &ctx).await.unwrap() })
        };
        wait_until("two pages are committed", async || {
            env.query_i64("SELECT COALESCE(max(pages), 0) FROM apisync.runs").await >= 2
                && env.query_i64("SELECT count(*) FROM apisync.runs").await == 2
        })
        .await;
        env.ctx.cancel.cancel();
        let report = run.await.unwrap();

        // Assert
        assert_eq!(report.status.as_str(), "interrupted");
        assert!(marked(&env).await.is_empty());
    }

    async fn an_incremental_run_marks_nothing_and_a_full_one_does(backend: Backend) {
        // Arrange: an incremental job with deletions, its first (full) run.
        let records: Vec<Value> = products(N)
            .into_iter()
            .map(|mut r| {
                r["updated_at"] = json!("2026-01-01T00:00:00Z");
                r
            })
            .collect();
        let env = TestEnv::start_on(backend, records.clone()).await;
        let incremental = marking(JobToml::paged(10))
            .with("incremental.field", "updated_at")
            .with("incremental.param", "updated_since")
            .with("full_refresh", "24h");
        let mut job = env.job(incremental);
        let first = env.run(&job).await;
        assert_eq!(first.counts.inserted, N as u64, "{:?}", first.error);
        env.api.set_records(without(&records, &[10, 20]));

        // Act / Assert: the next run reads changes only (the full run was
        // less than 24 h ago): nothing marked.
        let changes = env.run(&job).await;
        assert_eq!(changes.status.as_str(), "succeeded", "{:?}", changes.error);
        assert!(env.api.requests().last().unwrap().contains("updated_since="));
        assert_eq!(changes.counts.deleted, 0);
        assert!(marked(&env).await.is_empty());

        // `sync --full` reads everything and marks the two.
        job.full = true;
        let full = env.run(&job).await;
        assert!(!env.api.requests().last().unwrap().contains("updated_since="));
        assert_eq!((full.status.as_str(), full.counts.deleted), ("succeeded", 2));
        assert_eq!(marked(&env).await, [10, 20]);

        // A full run falls due once full_refresh has passed since the last.
        job.full = false;
        env.api.set_records(without(&records, &[10, 20, 30]));
        let old = "2020-01-01T00:00:00Z";
        match env.db {
            TestDb::Postgres(_) => env.execute(&format!(
                "UPDATE apisync.job_state SET state = jsonb_set(state, '{{full_run_at}}', '\"{old}\"')"
            )).await,
            TestDb::Sqlite(_) => env.execute(&format!(
                "UPDATE apisync.job_state SET state = json_set(state, '$.full_run_at', '{old}')"
            )).await,
        }
        let due = env.run(&job).await;
        assert_eq!((due.status.as_str(), due.counts.deleted), ("succeeded", 1));
        assert_eq!(marked(&env).await, [10, 20, 30]);
        // …and the next is incremental again.
        env.api.set_records(without(&records, &[10, 20, 30, 40]));
        assert_eq!(env.run(&job).await.counts.deleted, 0);
    }

    async fn a_table_made_before_deletions_were_turned_on_gets_its_column(backend: Backend) {
        // Arrange: a table filled without deletions.
        let env = TestEnv::start_on(backend, products(N)).await;
        env.run(&env.job(JobToml::paged(10))).await;
        env.api.set_records(without(&products(N), &[8]));

        // Act
        let report = env.run(&env.job(marking(JobToml::paged(10)))).await;

        // Assert
        assert_eq!((report.status.as_str(), report.counts.deleted), ("succeeded", 1), "{:?}", report.error);
        assert_eq!(marked(&env).await, [8]);
    }

    async fn history_keeps_every_version_with_one_open_per_key(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(marking(JobToml::paged(10)).with("history", true));

        // Act: a first load; two changes; one deletion; its return.
        let first = env.run(&job).await;
        assert_eq!(first.status.as_str(), "succeeded", "{:?}", first.error);
        let mut records = products(N);
        records[0]["name"] = json!("one, renamed");
        records[1]["name"] = json!("two, renamed");
        env.api.set_records(records.clone());
        env.run(&job).await;
        env.api.set_records(without(&records, &[3]));
        let deleting = env.run(&job).await;
        assert_eq!(deleting.counts.deleted, 1);
        env.api.set_records(records.clone());
        let restoring = env.run(&job).await;
        assert_eq!(restoring.counts.updated, 1);

        // Assert: the ops in order, versions that meet exactly, one open
        // version per key.
        assert_eq!(env.query_i64("SELECT count(*) FROM products_history").await, N as i64 + 4);
        let open = |op: &str| (op.to_owned(), true);
        let closed = |op: &str| (op.to_owned(), false);
        assert_eq!(versions(&env, 1).await, (vec![closed("insert"), open("update")], true));
        assert_eq!(versions(&env, 4).await, (vec![open("insert")], true));
        assert_eq!(
            versions(&env, 3).await,
            (vec![closed("insert"), closed("delete"), open("restore")], true)
        );
        assert_eq!(keys_without_one_open_version(&env).await, 0);
        // The delete version holds the record as last seen.
        let last_seen: (String,) = env
            .db
            .fetch_one("SELECT CAST(record AS TEXT) FROM products_history WHERE id = '3' AND op = 'delete'")
            .await;
        assert_eq!(serde_json::from_str::<Value>(&last_seen.0).unwrap(), product(3));

        // An unchanged re-sync writes nothing to either table.
        env.count_writes_to(&["products", "products_history"]).await;
        let unchanged = env.run(&job).await;
        assert_eq!(unchanged.counts.unchanged, N as u64);
        assert_eq!(env.writes().await, 0);
    }

    async fn history_with_deletions_delete_keeps_the_delete_version(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(JobToml::paged(10).with("deletions", "delete").with("history", true));
        env.run(&job).await;
        env.api.set_records(without(&products(N), &[9]));

        // Act
        env.run(&job).await;
        env.api.set_records(products(N));
        let back = env.run(&job).await;

        // Assert: removed from the table, kept in history; back as an insert.
        assert_eq!(back.counts.inserted, 1);
        assert_eq!(
            versions(&env, 9).await,
            (
                vec![
                    ("insert".to_owned(), false),
                    ("delete".to_owned(), false),
                    ("insert".to_owned(), true)
                ],
                true
            )
        );
        assert_eq!(keys_without_one_open_version(&env).await, 0);
    }

    async fn history_turned_on_for_a_filled_table_starts_with_each_current_row(backend: Backend) {
        // Arrange: a table filled without history.
        let env = TestEnv::start_on(backend, products(N)).await;
        env.run(&env.job(JobToml::paged(10))).await;

        // Act
        let job = env.job(JobToml::paged(10).with("history", true));
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.counts.unchanged, N as u64, "{:?}", report.error);
        assert_eq!(
            env.query_i64("SELECT count(*) FROM products_history WHERE op = 'insert' AND valid_to IS NULL").await,
            N as i64
        );
        assert_eq!(keys_without_one_open_version(&env).await, 0);
    }
}

/// `apisync verify products --json` in `dir`: the exit code and the
/// comparison.
async fn verify(dir: &std::path::Path) -> (Option<i32>, Value) {
    let output = crate::binary::run(dir, &["verify", "products", "--json"], &[]).await;
    let text = crate::binary::stdout(&output);
    let comparison = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    (output.status.code(), comparison)
}

/// The keys of one kind in a comparison, as numbers, sorted.
fn keys_of(comparison: &Value, kind: &str) -> (u64, Vec<usize>) {
    let mut keys: Vec<usize> = comparison[kind]["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("{kind} in {comparison}"))
        .iter()
        .map(|key| key[0].as_str().unwrap().parse().unwrap())
        .collect();
    keys.sort_unstable();
    (comparison[kind]["count"].as_u64().unwrap(), keys)
}

store_tests! {
    async fn verify_names_the_keys_that_differ_and_agrees_after_a_sync(backend: Backend) {
        // Arrange: a synced table, then upstream one record deleted, one
        // changed and one added.
        let env = TestEnv::start_on(backend, products(N)).await;
        let dir = crate::binary::scratch(&format!("verify-{}", env.store_name));
        let job = marking(JobToml::paged(10));
        std::fs::write(dir.join("apisync.toml"), env.config_file(job.clone())).unwrap();
        let synced = crate::binary::run(&dir, &["sync", "products"], &[]).await;
        assert_eq!(synced.status.code(), Some(0), "{}", crate::binary::stderr(&synced));
        assert_eq!(verify(&dir).await.0, Some(0), "a fresh sync agrees");
        let mut records = without(&products(N), &[7]);
        records[0]["name"] = json!("renamed");
        records.push(product(101));
        env.api.set_records(records);
        let versions = env.row_versions("products").await;
        let runs = env.query_i64("SELECT count(*) FROM apisync.runs").await;

        // Act
        let (code, comparison) = verify(&dir).await;

        // Assert: exit 1, each kind with its key; nothing written.
        assert_eq!(code, Some(1), "{comparison}");
        assert_eq!(keys_of(&comparison, "missing"), (1, vec![101]));
        assert_eq!(keys_of(&comparison, "gone"), (1, vec![7]));
        assert_eq!(keys_of(&comparison, "differ"), (1, vec![1]));
        assert_eq!(comparison["read"], N);
        assert_eq!(env.row_versions("products").await, versions, "verify writes no row");
        assert_eq!(env.query_i64("SELECT count(*) FROM apisync.runs").await, runs);

        // After a sync (which marks 7) they agree: a marked row the API does
        // not return agrees.
        let synced = crate::binary::run(&dir, &["sync", "products"], &[]).await;
        assert!(crate::binary::stdout(&synced).contains("deleted=1"), "{}", crate::binary::stdout(&synced));
        let (code, comparison) = verify(&dir).await;
        assert_eq!(code, Some(0), "{comparison}");

        // With deletions = "ignore", a key gone upstream stays a difference.
        std::fs::write(dir.join("apisync.toml"), env.config_file(JobToml::paged(10))).unwrap();
        let (code, comparison) = verify(&dir).await;
        assert_eq!(code, Some(1));
        assert_eq!(keys_of(&comparison, "gone"), (1, vec![7]));
    }

    async fn verify_counts_a_tombstone_for_a_stored_key_as_gone_and_only_true_is_one(backend: Backend) {
        // Arrange: a full job whose source also sends deletions as records,
        // synced; then upstream 5 becomes a tombstone and 8 is gone, and 3
        // and 4 gain a `deleted` that is not the JSON `true`.
        let env = TestEnv::start_on(backend, products(N)).await;
        let dir = crate::binary::scratch(&format!("verify-tomb-{}", env.store_name));
        let job = marking(JobToml::paged(10)).with("tombstone", "/deleted");
        std::fs::write(dir.join("apisync.toml"), env.config_file(job)).unwrap();
        let synced = crate::binary::run(&dir, &["sync", "products"], &[]).await;
        assert_eq!(synced.status.code(), Some(0), "{}", crate::binary::stderr(&synced));
        let mut records = without(&products(N), &[8]);
        records[2]["deleted"] = json!("true");
        records[3]["deleted"] = json!(false);
        records[4] = json!({"id": 5, "deleted": true});
        env.api.set_records(records);

        // Act
        let (code, comparison) = verify(&dir).await;

        // Assert: both gone keys are named, the tombstoned one too; the
        // other two are content that differs, not deletions.
        assert_eq!(code, Some(1), "{comparison}");
        assert_eq!(keys_of(&comparison, "gone"), (2, vec![5, 8]), "{comparison}");
        assert_eq!(keys_of(&comparison, "differ"), (2, vec![3, 4]), "{comparison}");
        assert_eq!(keys_of(&comparison, "missing"), (0, vec![]));
    }

    async fn verify_waits_for_the_run_holding_the_job_lock_and_lists_at_most_1000_keys(backend: Backend) {
        // Arrange: a table of 10 synced rows, a source of 1,210, and the
        // job's lock held as a run in progress holds it.
        let env = TestEnv::start_on(backend, products(10)).await;
        let dir = crate::binary::scratch(&format!("verify-lock-{}", env.store_name));
        std::fs::write(dir.join("apisync.toml"), env.config_file(JobToml::paged(100))).unwrap();
        let synced = crate::binary::run(&dir, &["sync", "products"], &[]).await;
        assert_eq!(synced.status.code(), Some(0), "{}", crate::binary::stderr(&synced));
        env.api.set_records(products(1_210));
        let lock = env.ctx.store.try_lock_job("products").await.unwrap().expect("the lock is free");
        let requests = env.api.requests().len();

        // Act: verify starts while the lock is held, and the lock is let go
        // once it says it waits.
        let mut child = crate::binary::spawn(&dir, &["verify", "products", "--json"], &[]);
        wait_until("verify says it waits for the run", async || {
            std::fs::read_to_string(dir.join("stderr"))
                .unwrap_or_default()
                .contains("products is being synced by another process; waiting for it")
        })
        .await;
        let read_while_locked = env.api.requests().len() - requests;
        lock.release().await;
        let status = crate::binary::wait_exit(&mut child, Duration::from_secs(60)).await;

        // Assert: nothing was read while the lock was held; then the whole
        // source was, and 1,200 missing keys are counted, 1,000 listed.
        assert_eq!(read_while_locked, 0, "verify never races a run");
        let text = std::fs::read_to_string(dir.join("stdout")).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{text}");
        let comparison: Value = serde_json::from_str(text.trim()).unwrap();
        let (count, keys) = keys_of(&comparison, "missing");
        assert_eq!((count, keys.len()), (1_200, 1_000));
        assert_eq!(comparison["read"], 1_210);
    }

    async fn verify_exits_3_when_the_source_cannot_be_read_and_2_on_a_bad_job(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(N)).await;
        let dir = crate::binary::scratch(&format!("verify-bad-{}", env.store_name));
        std::fs::write(dir.join("apisync.toml"), env.config_file(JobToml::paged(10))).unwrap();
        crate::binary::run(&dir, &["sync", "products"], &[]).await;
        env.api.set_fault(Some(Fault::Status(404)));

        // Act
        let unreadable = crate::binary::run(&dir, &["verify", "products"], &[]).await;
        let unknown = crate::binary::run(&dir, &["verify", "nosuch"], &[]).await;
        let typo = env.config_file(JobToml::paged(10).with("deletion", "mark"));
        std::fs::write(dir.join("apisync.toml"), typo).unwrap();
        let invalid = crate::binary::run(&dir, &["verify", "products"], &[]).await;

        // Assert
        assert_eq!(unreadable.status.code(), Some(3), "{}", crate::binary::stderr(&unreadable));
        assert!(crate::binary::stderr(&unreadable).contains("could not be read completely"));
        assert_eq!(unknown.status.code(), Some(2));
        assert!(crate::binary::stderr(&unknown).contains("no job named nosuch"));
        assert_eq!(invalid.status.code(), Some(2), "{}", crate::binary::stderr(&invalid));
        assert!(crate::binary::stderr(&invalid).contains("deletion"), "{}", crate::binary::stderr(&invalid));
    }
}

/// Products with an `updated_at` a minute apart from 2026-01-01.
fn timed(n: usize) -> Vec<Value> {
    (1..=n)
        .map(|id| {
            let mut record = product(id);
            record["updated_at"] = json!(format!("2026-01-01T{:02}:{:02}:00Z", id / 60, id % 60));
            record
        })
        .collect()
}

store_tests! {
    async fn tombstones_in_an_incremental_feed_delete_their_keys_in_the_page(backend: Backend) {
        for (mode, history) in [("mark", true), ("delete", false)] {
            // Arrange: an incremental feed whose deletions come as records.
            let env = TestEnv::start_on(match (&backend, mode) {
                (Backend::Postgres(pool), _) => Backend::Postgres(pool.clone()),
                (Backend::Sqlite, _) => Backend::Sqlite,
            }, timed(N)).await;
            let table = format!("tomb_{mode}");
            let job = env.job(
                JobToml::paged(10)
                    .named(&table)
                    .with("table", table.as_str())
                    .with("deletions", mode)
                    .with("history", history)
                    .with("tombstone", "/deleted")
                    .with("incremental.field", "updated_at")
                    .with("incremental.param", "updated_since")
                    .with("incremental.lookback", "0s"),
            );
            let first = env.run(&job).await;
            assert_eq!(first.counts.inserted, N as u64, "{:?}", first.error);
            let mut records = timed(N);
            records[4] = json!({"id": 5, "deleted": true, "updated_at": "2026-02-01T00:00:00Z"});
            records.push(json!({"id": 999, "deleted": true, "updated_at": "2026-02-01T00:00:00Z"}));
            env.api.set_records(records);

            // Act
            let report = env.run(&job).await;

            // Assert: the run read changes only (and the record at the
            // watermark again); the known key is deleted (not stored as
            // content), the unknown one changes nothing.
            assert_eq!(report.status.as_str(), "succeeded", "{mode}: {:?}", report.error);
            assert!(env.api.requests().last().unwrap().contains("updated_since="));
            assert_eq!(
                (report.counts.fetched, report.counts.deleted, report.counts.unchanged, report.counts.inserted),
                (3, 1, 2, 0),
                "{mode}"
            );
            let rows = ids(&env, &format!("SELECT id FROM {table}")).await;
            assert!(!rows.contains(&999), "{mode}: a tombstone is never stored");
            match mode {
                "mark" => {
                    assert_eq!(
                        ids(&env, &format!("SELECT id FROM {table} WHERE deleted_at IS NOT NULL")).await,
                        [5]
                    );
                    let kept: (String,) = env
                        .db
                        .fetch_one(&format!("SELECT CAST(record AS TEXT) FROM {table} WHERE id = '5'"))
                        .await;
                    assert_eq!(serde_json::from_str::<Value>(&kept.0).unwrap(), timed(N)[4], "the content as last seen");
                    let ops: Vec<(String,)> = env
                        .db
                        .fetch_all(&format!("SELECT op FROM {table}_history WHERE id = '5' ORDER BY valid_from"))
                        .await;
                    assert_eq!(ops, [("insert".to_owned(),), ("delete".to_owned(),)]);
                }
                _ => assert_eq!(rows.len(), N - 1, "{mode}: the row is removed"),
            }
            // Served again (lookback), the tombstone changes nothing more.
            let again = env.run(&job).await;
            assert_eq!(again.counts.deleted, 0, "{mode}");
        }
    }
}

store_tests! {
    async fn kill_9_during_runs_with_deletions_and_history_converges_exactly(backend: Backend) {
        // Arrange: runs of about 1.5 s (40 pages), deletions marked, every
        // version kept, and a source that changes, loses and regains records
        // between kills.
        let env = TestEnv::start_on(backend, products(1_000)).await;
        env.api.set_delay(Duration::from_millis(30));
        let dir = crate::binary::scratch(&format!("kill9-history-{}", env.store_name));
        let job = marking(JobToml::paged(25))
            .with("history", true)
            .with("max_deleted", "100%");
        std::fs::write(dir.join("apisync.toml"), env.config_file(job)).unwrap();
        let mut rng = fastrand::Rng::with_seed(15);
        let mut next_id = 1_001;
        let mut gone: Vec<Value> = Vec::new();

        // Act: 12 runs, each killed with SIGKILL after a random time; some
        // complete (and mark), most are killed mid-run.
        for round in 0..12 {
            let mut child = crate::binary::spawn(&dir, &["sync", "products"], &[]);
            tokio::time::sleep(Duration::from_millis(rng.u64(100..2_000))).await;
            crate::binary::signal(&child, libc::SIGKILL);
            child.wait().unwrap();
            let mut records = env.api.records();
            for _ in 0..5 {
                let i = rng.usize(..records.len());
                records[i]["price"]["amount"] = json!(round * 1_000 + rng.u32(..1_000));
            }
            for _ in 0..3 {
                gone.push(records.remove(rng.usize(..records.len())));
            }
            for _ in 0..2.min(gone.len()) {
                records.push(gone.remove(rng.usize(..gone.len())));
            }
            records.push(product(next_id));
            next_id += 1;
            env.api.set_records(records);
        }
        env.api.set_delay(Duration::ZERO);
        // A killed process's session may hold the job's lock for a moment more.
        let mut last = crate::binary::run(&dir, &["sync", "products"], &[]).await;
        for _ in 0..50 {
            if !crate::binary::stdout(&last).contains("skipped") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = crate::binary::run(&dir, &["sync", "products"], &[]).await;
        }

        // Assert: the live rows are the source, exactly; every other key
        // ever stored is marked.
        assert_eq!(last.status.code(), Some(0), "{}", crate::binary::stderr(&last));
        let source = env.api.records();
        let live: std::collections::BTreeMap<String, Value> = env
            .db
            .fetch_all::<(String, String)>(
                "SELECT id, CAST(record AS TEXT) FROM products WHERE deleted_at IS NULL",
            )
            .await
            .into_iter()
            .map(|(id, record)| (id, serde_json::from_str(&record).unwrap()))
            .collect();
        assert_eq!(live, expected_rows(&source));
        let stored = env.query_i64("SELECT count(*) FROM products").await;
        assert_eq!(stored as usize, next_id - 1, "every key ever read has one row");
        assert_eq!(marked(&env).await.len(), next_id - 1 - source.len());

        // History: one open version per key, matching the row; versions meet
        // exactly; none lost or doubled (each version follows the one before
        // as its op says).
        assert_eq!(keys_without_one_open_version(&env).await, 0);
        let mismatched = env
            .query_i64(
                "SELECT count(*) FROM products AS t JOIN products_history AS h \
                 ON h.id = t.id AND h.valid_to IS NULL \
                 WHERE h.content_hash <> t.content_hash \
                 OR (t.deleted_at IS NULL) <> (h.op <> 'delete')",
            )
            .await;
        assert_eq!(mismatched, 0, "the open version is the row as it stands");
        let history: Vec<Version> = env
            .db
            .fetch_all(
                "SELECT id, op, CAST(valid_from AS TEXT), CAST(valid_to AS TEXT), content_hash \
                 FROM products_history ORDER BY id, valid_from",
            )
            .await;
        for pair in history.windows(2).filter(|pair| pair[0].0 == pair[1].0) {
            let ((id, before, _, to, old_hash), (_, op, from, _, new_hash)) =
                (&pair[0], &pair[1]);
            assert_eq!(to.as_deref(), Some(from.as_str()), "{id}: versions meet");
            let follows = match op.as_str() {
                "update" => before != "delete" && old_hash != new_hash,
                "delete" => before != "delete" && old_hash == new_hash,
                "restore" => before == "delete",
                _ => false,
            };
            assert!(follows, "{id}: {op} after {before}");
        }
        let statuses: std::collections::BTreeMap<String, i64> = env
            .query_pairs("SELECT status, count(*) FROM apisync.runs GROUP BY status")
            .await
            .into_iter()
            .collect();
        assert_eq!(statuses.get("running"), None, "{statuses:?}");
        let killed_mid_run = env
            .query_i64("SELECT count(*) FROM apisync.runs WHERE status = 'failed' AND pages > 0")
            .await;
        assert!(killed_mid_run >= 4, "kills landed mid-run: {statuses:?}");
        let marking_runs = env
            .query_i64("SELECT count(*) FROM apisync.runs WHERE deleted > 0")
            .await;
        // At least the last (more, when a killed round's run completed).
        assert!(marking_runs >= 1, "runs that marked: {statuses:?}");
    }
}

store_tests! {
    async fn keys_gone_from_a_large_table_under_a_composite_key_are_all_found(backend: Backend) {
        // Arrange: 21,000 rows under a composite key (the live keys come in
        // one streamed read; the marking probes both columns), and one key
        // gone from the start, the middle and the end.
        let records: Vec<Value> = (1..=10_500)
            .flat_map(|id| ["eu", "us"].map(|region| json!({"id": id, "meta": {"region": region}})))
            .collect();
        let env = TestEnv::start_on(backend, records.clone()).await;
        let job = env.job(
            marking(JobToml::get("/none", "/data"))
                .keyed(&["id", "/meta/region"])
                .with("max_deleted", 3),
        );
        let first = env.run(&job).await;
        assert_eq!(first.counts.inserted, 21_000, "{:?}", first.error);
        let gone = [(1, "eu"), (5_000, "us"), (10_500, "eu")];
        env.api.set_records(
            records
                .into_iter()
                .filter(|r| !gone.iter().any(|(id, region)| r["id"] == *id && r["meta"]["region"] == *region))
                .collect(),
        );

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!((report.status.as_str(), report.counts.deleted), ("succeeded", 3), "{:?}", report.error);
        let mut marked: Vec<(String, String)> = env
            .query_texts("SELECT id, meta_region FROM products WHERE deleted_at IS NOT NULL")
            .await;
        marked.sort();
        assert_eq!(
            marked,
            [("1", "eu"), ("10500", "eu"), ("5000", "us")].map(|(id, region)| (id.to_owned(), region.to_owned()))
        );
    }
}

store_tests! {
    async fn keys_of_any_bytes_gone_upstream_are_marked_exactly(backend: Backend) {
        // Arrange: keys holding what a text format would have to escape (a
        // tab, a newline, a backslash, a quote, non-ASCII), half of them gone.
        let odd = ["tab\there", "new\nline", "back\\slash", "quo\"te", "ünï ✓", "\\N", "cr\rlf", "plain"];
        let records: Vec<Value> = odd.iter().map(|id| json!({"id": id, "name": "x"})).collect();
        let env = TestEnv::start_on(backend, records.clone()).await;
        let job = env.job(marking(JobToml::paged(3)).with("max_deleted", "100%"));
        let first = env.run(&job).await;
        assert_eq!(first.counts.inserted, odd.len() as u64, "{:?}", first.error);
        let gone = ["tab\there", "back\\slash", "ünï ✓", "\\N"];
        env.api.set_records(records.into_iter().filter(|r| !gone.contains(&r["id"].as_str().unwrap())).collect());

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!((report.status.as_str(), report.counts.deleted), ("succeeded", 4), "{:?}", report.error);
        let mut marked: Vec<(String,)> = env
            .db
            .fetch_all("SELECT id FROM products WHERE deleted_at IS NOT NULL")
            .await;
        marked.sort();
        let mut expected: Vec<(String,)> = gone.iter().map(|id| ((*id).to_owned(),)).collect();
        expected.sort();
        assert_eq!(marked, expected);
    }
}

store_tests! {
    async fn history_under_a_composite_key_records_each_op(backend: Backend) {
        // Arrange: the same id in two regions is two keys.
        let records = |name: &str| -> Vec<Value> {
            (1..=20)
                .flat_map(|id| {
                    ["eu", "us"].map(|region| json!({"id": id, "meta": {"region": region}, "name": name}))
                })
                .collect()
        };
        let env = TestEnv::start_on(backend, records("a")).await;
        let job = env.job(
            marking(JobToml::paged(7))
                .keyed(&["id", "/meta/region"])
                .with("history", true)
                .with("max_deleted", "100%"),
        );

        // Act: a load, every record changed, (3, us) gone, then back.
        env.run(&job).await;
        env.api.set_records(records("b"));
        let changed = env.run(&job).await;
        let mut without_one = records("b");
        without_one.retain(|r| !(r["id"] == 3 && r["meta"]["region"] == "us"));
        env.api.set_records(without_one);
        let deleting = env.run(&job).await;
        env.api.set_records(records("b"));
        let restoring = env.run(&job).await;

        // Assert
        assert_eq!(
            (changed.counts.updated, deleting.counts.deleted, restoring.counts.updated),
            (40, 1, 1),
            "{:?} {:?} {:?}",
            changed.error,
            deleting.error,
            restoring.error
        );
        let ops: Vec<(String,)> = env
            .db
            .fetch_all(
                "SELECT op FROM products_history WHERE id = '3' AND meta_region = 'us' \
                 ORDER BY valid_from",
            )
            .await;
        let ops: Vec<&str> = ops.iter().map(|(op,)| op.as_str()).collect();
        assert_eq!(ops, ["insert", "update", "delete", "restore"]);
        let open = env
            .query_i64("SELECT count(*) FROM products_history WHERE valid_to IS NULL")
            .await;
        assert_eq!(open, 40, "one open version per key");
        assert_eq!(env.query_i64("SELECT count(*) FROM products_history").await, 40 + 40 + 2);
    }
}

store_tests! {
    async fn a_record_rejected_for_its_content_keeps_its_key_live(backend: Backend) {
        // Arrange: a stored record the API then serves with a NUL character
        // (a reject: PostgreSQL cannot store it), its key still readable.
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(marking(JobToml::paged(10)));
        env.run(&job).await;
        let mut records = products(N);
        records[4]["name"] = json!("nul \u{0000} inside");
        env.api.set_records(records);

        // Act
        let report = env.run(&job).await;

        // Assert: rejected, and not taken for gone: the API still returns it.
        assert_eq!(report.status.as_str(), "succeeded", "{:?}", report.error);
        assert_eq!((report.counts.rejected, report.counts.deleted), (1, 0));
        assert!(marked(&env).await.is_empty());
    }

    async fn a_key_deleted_and_back_within_one_first_load_has_one_open_version(backend: Backend) {
        // Arrange: a first load in which key 1 comes, is deleted by a
        // tombstone on the next page, and comes back on the one after.
        let records = vec![
            json!({"id": 1, "v": 1}),
            json!({"id": 2}),
            json!({"id": 1, "deleted": true}),
            json!({"id": 3}),
            json!({"id": 1, "v": 2}),
            json!({"id": 4}),
        ];
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(
            JobToml::paged(2)
                .with("deletions", "delete")
                .with("tombstone", "/deleted")
                .with("history", true)
                .with("max_deleted", "100%"),
        );

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.status.as_str(), "succeeded", "{:?}", report.error);
        assert_eq!(
            versions(&env, 1).await,
            (
                vec![
                    ("insert".to_owned(), false),
                    ("delete".to_owned(), false),
                    ("insert".to_owned(), true)
                ],
                true
            )
        );
        assert_eq!(keys_without_one_open_version(&env).await, 0);
        assert_eq!(env.rows("products").await["1"], json!({"id": 1, "v": 2}));
    }
}
