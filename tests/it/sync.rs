//! One job's runs against a real PostgreSQL: idempotence, change tracking,
//! duplicates, volatile fields, rejects, and the table's safety net.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use apisync::store::{PgStore, Store};

use crate::helpers::{JobToml, TestEnv, expected_rows, product, products, store_tests};

const N: usize = 1_000;

const PAGED_JOB: &str = r#"
records = "/data"
[jobs.request]
url = "{api}/page"
[jobs.pagination]
kind = "page"
size = 99
"#;

/// Row counters of `table` as PostgreSQL's statistics see them, after the
/// pool's only connection has flushed its pending statistics.
async fn tuples_written(pool: &PgPool, table: &str) -> (i64, i64, i64) {
    // Statistics are flushed when a backend goes idle, at most once a second
    // unless forced; forcing on the connection that did the writing makes the
    // numbers exact instead of eventually right.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_second_run_over_unchanged_data_writes_nothing(pool: PgPool) {
    // Arrange: the store gets a single-connection pool so that the statistics
    // read below come from the connection that wrote.
    let single = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let mut env = TestEnv::start(pool, products(N)).await;
    env.ctx.store = Store::Postgres(PgStore::from_pool(single.clone()));
    let job = env.job(PAGED_JOB);
    let first = env.run(&job).await;
    assert_eq!(first.counts.inserted, N as u64);
    let versions_before = env.row_versions("products").await;
    let tuples_before = tuples_written(&single, "products").await;
    assert_eq!(
        tuples_before.0, N as i64,
        "the statistics see the first load"
    );

    // Act
    let second = env.run(&job).await;

    // Assert
    assert_eq!(second.error, None);
    assert_eq!(
        (
            second.counts.inserted,
            second.counts.updated,
            second.counts.unchanged
        ),
        (0, 0, N as u64)
    );
    assert_eq!(
        env.row_versions("products").await,
        versions_before,
        "no row version moved"
    );
    assert_eq!(tuples_written(&single, "products").await, tuples_before);
}

#[sqlx::test(migrations = false)]
async fn the_fast_and_the_simple_write_paths_give_identical_tables_and_counts(pool: PgPool) {
    // Arrange: the same history (first load, changes and additions,
    // duplicates and rejects) written once by each path, into two databases'
    // worth of tables: `products` by the fast path, then again by the simple.
    let mut records = products(700);
    records.push(json!({"no": "key"}));
    let env = TestEnv::start(pool, records).await;
    env.api.add_to_page(2, vec![product(5)]);
    let job = env.job(PAGED_JOB);
    let simple_ctx = simple_path(&env);
    let history = async |ctx: &apisync::sync::SyncContext| {
        let mut reports = Vec::new();
        env.api.set_records({
            let mut r = products(700);
            r.push(json!({"no": "key"}));
            r
        });
        reports.push(apisync::sync::run_once(&job, ctx).await.unwrap().counts);
        let mut changed = env.api.records();
        for i in (0..700).step_by(50) {
            changed[i]["price"]["amount"] = json!(-1);
        }
        changed.extend((701..=720).map(product));
        env.api.set_records(changed);
        reports.push(apisync::sync::run_once(&job, ctx).await.unwrap().counts);
        reports.push(apisync::sync::run_once(&job, ctx).await.unwrap().counts);
        reports
    };

    // Act
    let fast_counts = history(&env.ctx).await;
    let fast_rows = env.rows("products").await;
    sqlx::query("DROP TABLE products")
        .execute(env.pg())
        .await
        .unwrap();
    let simple_counts = history(&simple_ctx).await;
    let simple_rows = env.rows("products").await;

    // Assert
    assert_eq!(fast_counts, simple_counts);
    assert_eq!(fast_rows, simple_rows);
    assert_eq!(
        fast_rows,
        expected_rows(
            &env.api.records()[..700]
                .iter()
                .chain(&env.api.records()[701..])
                .cloned()
                .collect::<Vec<_>>()
        )
    );
    assert_eq!((fast_counts[1].updated, fast_counts[1].inserted), (14, 20));
}

/// `env`'s context writing pages the simple way (one upsert statement).
fn simple_path(env: &TestEnv) -> apisync::sync::SyncContext {
    let mut ctx = env.ctx.clone();
    let Store::Postgres(pg) = &ctx.store else {
        unreachable!("the test store is PostgreSQL")
    };
    ctx.store = Store::Postgres(
        pg.clone()
            .with_write_path(apisync::store::WritePath::Simple),
    );
    ctx
}

#[sqlx::test(migrations = false)]
async fn the_fast_and_the_simple_write_paths_keep_the_same_history(pool: PgPool) {
    // Arrange: history and marks; runs that load, then change, add and lose
    // keys in the same pages (versions of mixed ops in one statement), then
    // bring one back.
    let env = TestEnv::start(pool, products(300)).await;
    let job = env.job(format!("history = true\ndeletions = \"mark\"\n{PAGED_JOB}"));
    let simple_ctx = simple_path(&env);
    let runs = async |ctx: &apisync::sync::SyncContext| {
        let mut counts = Vec::new();
        env.api.set_records(products(300));
        counts.push(apisync::sync::run_once(&job, ctx).await.unwrap().counts);
        let mut changed = products(300);
        for i in (0..300).step_by(30) {
            changed[i]["price"]["amount"] = json!(-1);
        }
        changed.extend((301..=310).map(product));
        changed.retain(|r| r["id"] != 7 && r["id"] != 150);
        env.api.set_records(changed.clone());
        counts.push(apisync::sync::run_once(&job, ctx).await.unwrap().counts);
        changed.push(product(7));
        env.api.set_records(changed);
        counts.push(apisync::sync::run_once(&job, ctx).await.unwrap().counts);
        counts
    };
    let versions = async || -> Vec<(String, String, Vec<u8>, bool)> {
        sqlx::query_as(
            "SELECT id, op, content_hash, valid_to IS NULL FROM products_history \
             ORDER BY id, valid_from",
        )
        .fetch_all(env.pg())
        .await
        .unwrap()
    };

    // Act
    let fast_counts = runs(&env.ctx).await;
    let fast_versions = versions().await;
    sqlx::query("DROP TABLE products, products_history")
        .execute(env.pg())
        .await
        .unwrap();
    let simple_counts = runs(&simple_ctx).await;
    let simple_versions = versions().await;

    // Assert: the same versions, and they are what happened.
    assert_eq!(fast_counts, simple_counts);
    assert_eq!(fast_versions, simple_versions);
    let ops = |op: &str| fast_versions.iter().filter(|v| v.1 == op).count();
    assert_eq!(
        (ops("insert"), ops("update"), ops("delete"), ops("restore")),
        (310, 10, 2, 1)
    );
    let open = fast_versions.iter().filter(|v| v.3).count();
    assert_eq!(open, 310, "one open version per key");
}

#[sqlx::test(migrations = false)]
async fn a_key_that_appears_between_plan_and_write_falls_back_to_the_upsert(pool: PgPool) {
    use apisync::record::RecordShape;
    use apisync::store::{Batch, BatchRow, BatchWrite, Ident, TableSpec};

    // Arrange: rows 1..=3 are stored; a page is planned as if the table were
    // empty (as another writer could make it look), so the fast path COPYs
    // keys that exist.
    let env = TestEnv::start(pool, products(3)).await;
    let job = env.job(PAGED_JOB);
    env.run(&job).await;
    let shape = RecordShape::new(&["id".to_owned()], &[]).unwrap();
    let table = TableSpec::new(Ident::table("products").unwrap(), shape.key_fields());
    let mut changed = product(2);
    changed["name"] = json!("renamed");
    let batch = Batch {
        rows: [changed.clone(), product(4)]
            .into_iter()
            .map(|v| BatchRow {
                record: shape.read(&v).unwrap(),
                repeat: false,
            })
            .collect(),
        fetched: 2,
        pages: 1,
        ..Batch::default()
    };
    let run = env.ctx.store.start_run("products").await.unwrap();
    let plan = env
        .ctx
        .store
        .plan("products", &table, &batch, true)
        .await
        .unwrap();
    assert_eq!(plan.inserts.len(), 2, "both planned as new");

    // Act
    env.ctx
        .store
        .commit(&BatchWrite {
            fresh_history: false,
            job: "products",
            table: &table,
            run,
            batch: &batch,
            plan: &plan,
            watermark: None,
        })
        .await
        .expect("the page is written all the same");

    // Assert
    let rows = env.rows("products").await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows["2"], changed);
    assert_eq!(rows["4"], product(4));
}

store_tests! {
    async fn a_composite_key_from_pointers_gets_one_column_per_field(backend: Backend) {
        // Arrange: the same id in two regions is two records.
        let records: Vec<Value> = (1..=30)
            .flat_map(|id| ["eu", "us"].map(|region| json!({"id": id, "meta": {"region": region}})))
            .collect();
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(JobToml::paged(7).keyed(&["id", "/meta/region"]));

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        assert_eq!(report.counts.inserted, 60);
        let keys = env
            .query_texts(
                "SELECT id, meta_region FROM products ORDER BY CAST(id AS integer), meta_region",
            )
            .await;
        assert_eq!(keys.len(), 60);
        assert_eq!(keys[0], ("1".to_owned(), "eu".to_owned()));
        assert_eq!(keys[1], ("1".to_owned(), "us".to_owned()));

        // Act: one record changed, in one region only.
        let mut changed = env.api.records();
        changed[3]["meta"]["note"] = json!("changed");
        env.api.set_records(changed);
        let again = env.run(&job).await;

        // Assert: the stored rows are matched on both key columns.
        assert_eq!(again.error, None);
        let counts = (again.counts.inserted, again.counts.updated, again.counts.unchanged);
        assert_eq!(counts, (0, 1, 59));
    }

    async fn an_existing_table_without_the_primary_key_is_refused(backend: Backend) {
        // Arrange: a table with the right columns but no key constraint.
        let env = TestEnv::start_on(backend, products(10)).await;
        env.execute(if env.store_name == "sqlite" {
            "CREATE TABLE products (id TEXT NOT NULL, record TEXT NOT NULL, \
             content_hash BLOB NOT NULL, first_seen_at TEXT NOT NULL, \
             changed_at TEXT NOT NULL, run_id INTEGER NOT NULL)"
        } else {
            "CREATE TABLE products (id text NOT NULL, record jsonb NOT NULL, \
             content_hash bytea NOT NULL, first_seen_at timestamptz NOT NULL, \
             changed_at timestamptz NOT NULL, run_id bigint NOT NULL)"
        })
        .await;
        let job = env.job(PAGED_JOB);

        // Act
        let report = env.run(&job).await;

        // Assert
        let error = report.error.expect("the run is refused");
        assert!(
            error.contains(
                "table products exists but does not fit this job: there is no primary key, \
                 expected PRIMARY KEY (id)"
            ),
            "{error}"
        );
        assert_eq!(env.rows("products").await.len(), 0, "nothing written");
    }

    async fn big_numbers_are_kept_exactly_and_keep_keys_apart(backend: Backend) {
        // Arrange: ids beyond u64 and a decimal beyond f64, as some APIs send.
        let records: Vec<Value> = serde_json::from_str(
            r#"[
                {"id": 18446744073709551617, "price": 0.1234567890123456789012},
                {"id": 18446744073709551618, "price": 1e400}
            ]"#,
        )
        .unwrap();
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job("records = \"/data\"\n[jobs.request]\nurl = \"{api}/none\"\n");

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        assert_eq!((report.counts.inserted, report.counts.duplicate), (2, 0));
        let stored = env.rows("products").await;
        let ids: Vec<&String> = stored.keys().collect();
        assert_eq!(ids, ["18446744073709551617", "18446744073709551618"]);
        assert_eq!(
            stored["18446744073709551617"]["price"].to_string(),
            "0.1234567890123456789012"
        );
    }

    async fn a_second_run_over_unchanged_data_changes_no_row(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(PAGED_JOB);
        assert_eq!(env.run(&job).await.counts.inserted, N as u64);
        let versions = env.row_versions("products").await;
        env.count_writes("products").await;

        // Act
        let second = env.run(&job).await;

        // Assert: nothing counted as written, no row written (a trigger
        // counts every insert and update), and no row's changed_at, run id
        // (or, on PostgreSQL, xmin) moved.
        assert_eq!(env.writes().await, 0, "no row was written");
        assert_eq!(second.error, None);
        assert_eq!(
            (second.counts.inserted, second.counts.updated, second.counts.unchanged),
            (0, 0, N as u64)
        );
        assert_eq!(env.row_versions("products").await, versions);
        let (status, _) = env.run_row(second.run_id).await;
        assert_eq!(status, "succeeded");

        // The control: a changed record is one write.
        let mut records = env.api.records();
        records[0]["name"] = serde_json::json!("renamed");
        env.api.set_records(records);
        env.run(&job).await;
        assert_eq!(env.writes().await, 1);
    }

    async fn changed_and_new_records_are_counted_and_only_they_move(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(N)).await;
        let job = env.job(PAGED_JOB);
        env.run(&job).await;
        let before = env.row_versions("products").await;
        let changed_ids = [1, 2, 150, 333, 499, 777, 1000];
        let mut records = env.api.records();
        for id in changed_ids {
            records[id - 1]["price"]["amount"] = json!(99_999);
        }
        let added: Vec<Value> = (N + 1..=N + 5).map(product).collect();
        records.extend(added.iter().cloned());
        env.api.set_records(records.clone());

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        assert_eq!(report.counts.updated, changed_ids.len() as u64);
        assert_eq!(report.counts.inserted, added.len() as u64);
        assert_eq!(report.counts.unchanged, (N - changed_ids.len()) as u64);
        assert_eq!(env.rows("products").await, expected_rows(&records));
        let after = env.row_versions("products").await;
        let mut moved: Vec<String> = after
            .iter()
            .filter(|(id, version)| before.get(*id) != Some(version))
            .map(|(id, _)| id.clone())
            .collect();
        moved.sort_by_key(|id| id.parse::<usize>().unwrap());
        let expected_moved: Vec<String> = changed_ids
            .iter()
            .chain(&[1001, 1002, 1003, 1004, 1005])
            .map(|id| id.to_string())
            .collect();
        assert_eq!(
            moved, expected_moved,
            "changed_at, run_id and xmin move for those rows only"
        );
        for id in changed_ids {
            let (_, changed_at, run_id) = &after[&id.to_string()];
            assert_ne!(
                changed_at,
                &before[&id.to_string()].1,
                "changed_at of {id} moved"
            );
            assert_eq!(Some(*run_id), report.run_id);
        }
    }

    async fn a_record_repeated_in_a_page_and_on_the_next_is_stored_once(backend: Backend) {
        // Arrange: record 5 appears twice on page 1 and again on page 2.
        let env = TestEnv::start_on(backend, products(250)).await;
        env.api.add_to_page(1, vec![product(5)]);
        env.api.add_to_page(2, vec![product(5)]);
        let job = env.job(PAGED_JOB);

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        assert_eq!(report.counts.fetched, 252);
        assert_eq!(report.counts.duplicate, 2);
        assert_eq!(report.counts.inserted, 250);
        assert_eq!(
            env.rows("products").await,
            expected_rows(&env.api.records())
        );
        let c = report.counts;
        assert_eq!(
            c.fetched,
            c.inserted + c.updated + c.unchanged + c.duplicate + c.rejected,
            "every fetched record has one outcome"
        );

        // A re-run counts the same duplicates and still writes nothing.
        let versions = env.row_versions("products").await;
        let again = env.run(&job).await;
        assert_eq!((again.counts.duplicate, again.counts.unchanged), (2, 250));
        assert_eq!(env.row_versions("products").await, versions);
    }

    async fn volatile_fields_key_order_and_whitespace_cause_no_update(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(300)).await;
        env.api.set_volatile_field(true);
        let job = env.job(format!(
            "hash_exclude = [\"/meta/request_id\"]\n{PAGED_JOB}"
        ));
        env.run(&job).await;
        let versions = env.row_versions("products").await;

        // Act: new request ids on every response, then the same content spelled
        // with reversed keys and indentation.
        let volatile = env.run(&job).await;
        env.api.set_reorder_and_indent(true);
        let reordered = env.run(&job).await;

        // Assert
        for report in [&volatile, &reordered] {
            assert_eq!(report.error, None);
            assert_eq!((report.counts.updated, report.counts.unchanged), (0, 300));
        }
        assert_eq!(env.row_versions("products").await, versions);

        // The control: without the exclusion, the volatile field is a change.
        let strict = env.job(PAGED_JOB);
        let report = env.run(&strict).await;
        assert_eq!(report.counts.updated, 300);
    }

    async fn records_without_a_usable_key_are_rejected_and_the_rest_is_stored(backend: Backend) {
        // Arrange
        let mut records = products(120);
        let bad = vec![
            json!({"name": "no id"}),
            json!({"id": null, "name": "null id"}),
            json!({"id": {"nested": 1}, "name": "object id"}),
            json!({"id": "", "name": "empty id"}),
        ];
        records.splice(50..50, bad.clone());
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(PAGED_JOB);

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        assert_eq!((report.counts.rejected, report.counts.inserted), (4, 120));
        assert_eq!(env.rows("products").await, expected_rows(&products(120)));
        let rejects = env.rejects().await;
        let found: Vec<(Value, &str)> = rejects
            .iter()
            .map(|(record, reason, run_id)| {
                assert_eq!(Some(*run_id), report.run_id);
                (serde_json::from_str(record).unwrap(), reason.as_str())
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (bad[0].clone(), "key field `id` is missing"),
                (bad[1].clone(), "key field `id` is null"),
                (
                    bad[2].clone(),
                    "key field `id` is an object, not a string, number or boolean"
                ),
                (bad[3].clone(), "key field `id` is an empty string"),
            ]
        );
    }

    async fn reject_reasons_are_stored_redacted_and_records_as_they_came(backend: Backend) {
        // Arrange: the key field's name comes from `${KEY_FIELD}`; no record
        // has it, so every reason names it.
        let env = TestEnv::start_on(backend, products(2)).await;
        let vars: HashMap<String, String> =
            [("KEY_FIELD".to_owned(), "keyfield_secret_5".to_owned())].into();
        let (job, redactor) = env.job_with_env(
            JobToml::get("/none", "/data")
                .with("max_rejected", 5)
                .keyed(&["${KEY_FIELD}"]),
            &vars,
        );
        let mut ctx = env.ctx.clone();
        ctx.redactor = redactor;

        // Act
        let report = apisync::sync::run_once(&job, &ctx).await.unwrap();

        // Assert
        assert_eq!(report.counts.rejected, 2, "{report:?}");
        let rejects = env.rejects().await;
        assert_eq!(rejects.len(), 2);
        for (record, reason, _) in &rejects {
            assert_eq!(reason, "key field `[redacted]` is missing");
            // The API's data, archived as it came.
            assert!(record.contains("\"name\""), "{record}");
        }
    }

    async fn secrets_from_variables_stay_out_of_errors_and_the_runs_table(backend: Backend) {
        // Arrange: the API answers 401 and echoes the token and the query string.
        let env = TestEnv::start_on(backend, products(10)).await;
        let vars: HashMap<String, String> = [
            ("API_TOKEN".to_owned(), "tok-very-secret-1".to_owned()),
            ("API_KEY".to_owned(), "key-very-secret-2".to_owned()),
        ]
        .into();
        let (job, redactor) = env.job_with_env(
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/status/401?api_key=${API_KEY}"
    headers = { Authorization = "Bearer ${API_TOKEN}" }
    "#,
            &vars,
        );
        let mut ctx = env.ctx.clone();
        ctx.redactor = redactor;

        // Act
        let report = apisync::sync::run_once(&job, &ctx).await.unwrap();

        // Assert
        let error = report.error.expect("a 401 fails the run");
        assert!(
            error.contains("the API answered 401 Unauthorized"),
            "{error}"
        );
        assert!(error.contains("[redacted]"), "the echo is masked: {error}");
        let (_, stored) = env.run_row(report.run_id).await;
        for text in [error.as_str(), stored.as_deref().unwrap()] {
            assert!(!text.contains("tok-very-secret-1"), "{text}");
            assert!(!text.contains("key-very-secret-2"), "{text}");
        }
    }
}

const ONE_PAGE_JOB: &str = "records = \"/data\"\n[jobs.request]\nurl = \"{api}/none\"\n";

store_tests! {
    async fn a_page_too_large_to_hold_as_rows_is_written_in_parts_and_counted_as_one(backend: Backend) {
        // Arrange: one page of 12,000 records (the reader splits pages of more
        // than 5,000), with copies of two keys across its parts (one of them
        // changed), one copy within a part and one record without a key.
        let mut records = products(12_000);
        let mut changed = product(7);
        changed["name"] = json!("seven, later");
        records.push(changed.clone());
        records.insert(9_000, product(100));
        records.insert(3, product(2));
        records.insert(6_000, json!({"name": "no id"}));
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(ONE_PAGE_JOB);

        // Act
        let first = env.run(&job).await;
        env.count_writes("products").await;
        let second = env.run(&job).await;

        // Assert: counted as if the page were read whole: one page, every
        // key once, the later copy stored, and a re-run writes nothing.
        assert_eq!(first.status.as_str(), "succeeded", "{:?}", first.error);
        assert_eq!(
            (first.counts.fetched, first.counts.inserted, first.counts.updated, first.counts.duplicate),
            (12_004, 12_000, 0, 3),
        );
        assert_eq!((first.counts.rejected, first.counts.pages), (1, 1));
        let rows = env.rows("products").await;
        assert_eq!(rows.len(), 12_000);
        assert_eq!(rows["7"], changed, "the later copy, from the last part");
        assert_eq!(
            (second.counts.unchanged, second.counts.updated, second.counts.duplicate),
            (12_000, 0, 3),
            "only the last copy of id 7 is compared, as in a page read whole"
        );
        assert_eq!(env.writes().await, 0);
        assert_eq!(env.rejects().await.len(), 1);
    }
}
