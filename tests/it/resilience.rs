//! Faults injected on purpose: a storm of transient API failures, a
//! permanently broken API, bad input of every kind, rate limits,
//! incremental runs, a database that goes away, two processes on one job,
//! and kill -9 at random moments.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use apisync::store::{PgStore, Store};

use crate::binary::{self, scratch, stderr, stdout};
use crate::fake_api::FakeApi;
use crate::fake_api::faults::Fault;
use crate::helpers::{
    Backend, JobToml, TcpToggle, TestEnv, expected_rows, product, products, store_tests,
    wait_until, walk,
};

/// One page, all the records: a bad record in it is read once (with page
/// pagination, a fault that answers every page with the same rejected record
/// would be read until `max_pages`).
fn one_page_job() -> JobToml {
    JobToml::get("/none", "/data")
}

/// Two attempts 10 ms apart: a bad answer fails the run at once.
fn retry_briefly(job: JobToml) -> JobToml {
    job.with("retry.max_attempts", 2)
        .with("retry.initial_backoff", "10ms")
}

/// `job` with an incremental `field`/`param` of `updated_at`/`updated_since`.
fn incremental(job: JobToml) -> JobToml {
    job.with("incremental.field", "updated_at")
        .with("incremental.param", "updated_since")
}

/// Runs a good sync, then one against `fault`; checks the failure names
/// `expected` and the committed rows are untouched.
async fn assert_bad_input_fails_cleanly(
    backend: Backend,
    fault: Fault,
    job: JobToml,
    expected: &str,
) {
    // Arrange
    let env = TestEnv::start_on(backend, products(60)).await;
    let job = env.job(retry_briefly(job));
    assert_eq!(env.run(&job).await.error, None);
    let versions = env.row_versions("products").await;
    env.api.set_fault(Some(fault));

    // Act
    let report = env.run(&job).await;

    // Assert
    let error = report.error.expect("the bad input fails the run");
    assert!(
        error.contains(expected),
        "expected {expected:?} in {error:?}"
    );
    assert_eq!(
        env.row_versions("products").await,
        versions,
        "committed rows untouched"
    );
}

/// Products with an `updated_at` one minute apart, from 2026-01-01T00:00:00Z.
fn timed_products(n: usize) -> Vec<Value> {
    (1..=n)
        .map(|id| {
            let mut record = product(id);
            record["updated_at"] = json!(timestamp(id as i64 * 60));
            record
        })
        .collect()
}

fn timestamp(seconds: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    (base + chrono::Duration::seconds(seconds))
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn stored_watermark(env: &TestEnv) -> Option<Value> {
    env.ctx.store.watermark("products").await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn losing_the_database_mid_run_fails_cleanly_and_the_next_run_converges(pool: PgPool) {
    // Arrange: the store reaches the database through a connection we cut
    // after two pages.
    let env = TestEnv::start(pool, products(300)).await;
    let options = env.pg().connect_options();
    let toggle = TcpToggle::start(options.get_host(), options.get_port()).await;
    toggle.set_up(true);
    let through_toggle = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with((*options).clone().host("127.0.0.1").port(toggle.port()));
    let mut ctx = env.ctx.clone();
    ctx.store = Store::Postgres(PgStore::from_pool(through_toggle));
    env.api.set_delay(Duration::from_millis(200));
    let job = env.job(JobToml::paged(20));
    let run = tokio::spawn({
        let (job, ctx) = (job.clone(), ctx.clone());
        async move { apisync::sync::run_once(&job, &ctx).await }
    });
    wait_until("two pages are committed", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM products")
            .fetch_one(env.pg())
            .await
            .unwrap_or(0)
            >= 40
    })
    .await;

    // Act: the database goes away, then comes back.
    toggle.set_up(false);
    let outcome = run.await.unwrap();
    toggle.set_up(true);
    env.api.set_delay(Duration::ZERO);
    let next = apisync::sync::run_once(&job, &ctx)
        .await
        .expect("the next run is recorded");

    // Assert: the cut run failed (or could not even be recorded), nothing
    // is left `running`, and the next run completed the data.
    assert!(
        !matches!(&outcome, Ok(r) if r.error.is_none()),
        "{outcome:?}"
    );
    assert_eq!(next.error, None);
    assert_eq!(
        env.rows("products").await,
        expected_rows(&env.api.records())
    );
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apisync.runs WHERE status = 'running'")
            .fetch_one(env.pg())
            .await
            .unwrap();
    assert_eq!(running, 0);
}

#[sqlx::test(migrations = false)]
async fn a_run_that_loses_its_lock_stops_writing(pool: PgPool) {
    // Arrange: a slow run.
    let env = TestEnv::start(pool, products(300)).await;
    env.api.set_delay(Duration::from_millis(200));
    let job = env.job(JobToml::paged(20));
    let run = tokio::spawn({
        let (job, ctx) = (job.clone(), env.ctx.clone());
        async move { apisync::sync::run_once(&job, &ctx).await }
    });
    wait_until("two pages are committed", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM products")
            .fetch_one(env.pg())
            .await
            .unwrap_or(0)
            >= 40
    })
    .await;

    // Act: the session holding the job's lock goes away.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(env.pg())
    .await
    .unwrap();
    let report = run.await.unwrap().expect("the run is recorded");

    // Assert: the run stopped at its next write, and wrote nothing after.
    assert_eq!(terminated, vec![true]);
    let error = report.error.expect("the run fails");
    assert!(
        error.contains("lost the connection that holds the job's lock"),
        "{error}"
    );
    let rows_then = env.rows("products").await.len();
    assert_eq!(rows_then % 20, 0, "whole pages only");
    assert!(rows_then < 300);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.rows("products").await.len(),
        rows_then,
        "nothing written afterwards"
    );
    env.api.set_delay(Duration::ZERO);
    let next = env.run(&job).await;
    assert_eq!(next.error, None);
    assert_eq!(
        env.rows("products").await,
        expected_rows(&env.api.records())
    );
}

store_tests! {
    async fn a_storm_of_transient_faults_loses_and_doubles_nothing(backend: Backend) {
        // Arrange: 5,000 records in 51 requests; 30 % of requests fail with a
        // seeded mix of 500, 503, 429 + Retry-After, timeouts, truncated bodies
        // and connection resets. The timeout is short, so a request the storm
        // stalls costs half a second: what is proved is what the retries keep,
        // not how long they wait (`retry_after_is_honoured` checks that).
        let metrics = apisync::metrics::install();
        let env = TestEnv::start_on(backend, products(5_000)).await;
        env.api.start_storm(0.3, 20261127);
        let job = env.job(
            JobToml::paged(100)
                .named(&format!("storm_{}", env.store_name))
                .with("request.timeout", "500ms")
                .with("retry.max_attempts", 10)
                .with("retry.initial_backoff", "10ms")
                .with("retry.max_backoff", "100ms"),
        );

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        assert_eq!(
            env.rows("products").await,
            expected_rows(&env.api.records())
        );
        assert_eq!(report.counts.inserted, 5_000);
        let injected = env.api.faults_injected();
        assert!(
            injected >= 10,
            "the storm really happened: {injected} faults"
        );
        let scrape = metrics.render();
        let retries: f64 = scrape
            .lines()
            .filter(|l| {
                l.starts_with("apisync_http_retries_total{") && l.contains(&format!("job_name=\"storm_{}\"", env.store_name))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        // At least one retry per fault; a page slowed by the loaded machine
        // itself may add one.
        assert!(
            retries >= injected as f64,
            "every injected fault was retried and counted: {retries} retries, {injected} faults"
        );
    }

    async fn a_permanently_broken_api_fails_the_run_and_keeps_every_row(backend: Backend) {
        // Arrange: a first sync succeeds, then every response is truncated.
        let env = TestEnv::start_on(backend, products(120)).await;
        let dir = scratch(&format!("broken-{}", env.store_name));
        let config = env.config_file(
            JobToml::paged(50)
                .with("retry.max_attempts", 3)
                .with("retry.initial_backoff", "10ms"),
        );
        std::fs::write(dir.join("apisync.toml"), config).unwrap();
        let good = binary::run(&dir, &["sync", "products"], &[]).await;
        assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
        let versions = env.row_versions("products").await;
        env.api.set_fault(Some(Fault::Truncated));

        // Act
        let broken = binary::run(&dir, &["sync", "products"], &[]).await;

        // Assert
        assert_eq!(broken.status.code(), Some(1), "{}", stderr(&broken));
        let line = stdout(&broken);
        assert!(
            line.starts_with("products failed")
                && line.contains("page 1 (")
                && line.contains(
                    "fetching failed after 3 attempt(s): the response body is not valid JSON"
                ),
            "{line}"
        );
        assert_eq!(
            env.row_versions("products").await,
            versions,
            "committed rows untouched"
        );
    }

    async fn malformed_json_fails_the_run_cleanly(backend: Backend) {
        assert_bad_input_fails_cleanly(
            backend,
            Fault::Malformed,
            JobToml::paged(25),
            "the response body is not valid JSON (body: {\"data\": [{\"id\": 1}, {\"id\":): EOF while parsing",
        )
        .await;
    }

    async fn a_record_with_non_utf8_bytes_is_rejected_and_alone_fails_the_run(backend: Backend) {
        // The page's one record is rejected (its neighbours would be stored:
        // see `bad_records`), more than `max_rejected` allows.
        assert_bad_input_fails_cleanly(
            backend,
            Fault::NonUtf8,
            one_page_job(),
            "1 of 1 records were rejected, more than max_rejected = 10% allows (the first: \
             the record is not valid UTF-8 (byte 0xff at offset 8))",
        )
        .await;
    }

    async fn an_html_page_with_status_200_fails_the_run_cleanly(backend: Backend) {
        assert_bad_input_fails_cleanly(
            backend,
            Fault::Html,
            JobToml::paged(25),
            "the response body is not valid JSON (body: <!DOCTYPE html><html><body><h1>Service temporarily unavailable",
        )
        .await;
    }

    async fn a_record_nested_thousands_deep_is_rejected_and_alone_fails_the_run(
        backend: Backend
    ) {
        assert_bad_input_fails_cleanly(
            backend,
            Fault::Deep,
            one_page_job(),
            "1 of 1 records were rejected, more than max_rejected = 10% allows (the first: \
             the record nests deeper than 127 levels (level 128 opens at offset 141))",
        )
        .await;
    }

    async fn a_garbage_link_header_fails_the_run_cleanly(backend: Backend) {
        assert_bad_input_fails_cleanly(
            backend,
            Fault::GarbageLink,
            JobToml::get("/link", "").with("pagination.kind", "link_header"),
            "cannot parse the Link header: expected `<` at `garbage; rel=next <https://`",
        )
        .await;
    }

    async fn a_single_enormous_record_is_stored_whole(backend: Backend) {
        // Arrange: one 8 MB record among ordinary ones.
        let mut records = products(10);
        records[4]["blob"] = json!("x".repeat(8 * 1024 * 1024));
        let env = TestEnv::start_on(backend, records.clone()).await;
        let job = env.job(JobToml::paged(4));

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        assert_eq!(env.rows("products").await, expected_rows(&records));
    }

    async fn an_enormous_record_over_max_body_bytes_fails_the_run_cleanly(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(10)).await;
        let job = env.job(JobToml::paged(4).with("max_body_bytes", "1MiB"));
        assert_eq!(env.run(&job).await.error, None);
        let versions = env.row_versions("products").await;
        let mut records = products(10);
        records[4]["blob"] = json!("x".repeat(2 * 1024 * 1024));
        env.api.set_records(records);

        // Act
        let report = env.run(&job).await;

        // Assert
        let error = report.error.expect("the enormous page fails the run");
        assert!(error.contains("page 2 ("), "{error}");
        assert!(
            error.contains("larger than max_body_bytes (1048576 bytes)"),
            "{error}"
        );
        assert_eq!(env.row_versions("products").await, versions);
    }

    async fn a_retry_after_over_the_ceiling_fails_instead_of_retrying_early(backend: Backend) {
        let env = TestEnv::start_on(backend, products(10)).await;
        env.api.set_fault(Some(Fault::TooManyRequests {
            retry_after_secs: 3600,
        }));
        let job = env.job(
            "records = \"/data\"\n[jobs.request]\nurl = \"{api}/none\"\n[jobs.retry]\nmax_retry_after = \"1m\"\n",
        );

        let report = env.run(&job).await;

        let error = report.error.expect("the run fails");
        assert!(
            error.contains("fetching failed after 1 attempt(s) (the API asked to wait 1h, more than retry.max_retry_after = 1m)"),
            "{error}"
        );
        assert_eq!(env.api.arrivals().len(), 1, "no early retry");
    }

    async fn an_incremental_run_fetches_and_writes_only_what_changed(backend: Backend) {
        // Arrange: a first run reads everything and sets the watermark.
        let n = 500;
        let env = TestEnv::start_on(backend, timed_products(n)).await;
        let incremental = |lookback: &str| {
            env.job(incremental(JobToml::paged(50)).with("incremental.lookback", lookback))
        };
        let job = incremental("0s");
        let first = env.run(&job).await;
        assert_eq!(first.counts.inserted, n as u64);
        assert_eq!(
            stored_watermark(&env).await,
            Some(json!(timestamp(n as i64 * 60)))
        );
        let requests_before = env.api.requests().len();

        // K records change, later than anything before.
        let changed = [3, 77, 150, 151, 499];
        let mut records = env.api.records();
        for (i, id) in changed.iter().enumerate() {
            records[id - 1]["price"]["amount"] = json!(123_456);
            records[id - 1]["updated_at"] = json!(timestamp(n as i64 * 60 + 3600 + i as i64));
        }
        env.api.set_records(records.clone());
        let before = env.row_versions("products").await;

        // Act
        let second = env.run(&job).await;

        // Assert: it asked from the watermark, received the K changes (plus the
        // record at the watermark itself), and wrote exactly K rows.
        assert_eq!(second.error, None);
        let asked = &env.api.requests()[requests_before];
        assert!(
            asked.contains(&format!(
                "updated_since={}",
                timestamp(n as i64 * 60).replace(':', "%3A")
            )),
            "{asked}"
        );
        assert_eq!(second.counts.fetched, changed.len() as u64 + 1);
        assert_eq!(
            (second.counts.updated, second.counts.inserted),
            (changed.len() as u64, 0)
        );
        assert_eq!(env.rows("products").await, expected_rows(&records));
        let after = env.row_versions("products").await;
        let moved = after
            .iter()
            .filter(|(id, v)| before.get(*id) != Some(v))
            .count();
        assert_eq!(moved, changed.len());
        let highest = timestamp(n as i64 * 60 + 3600 + changed.len() as i64 - 1);
        assert_eq!(stored_watermark(&env).await, Some(json!(highest)));

        // A lookback window re-reads the recent changes without writing.
        let versions = env.row_versions("products").await;
        let looking_back = env.run(&incremental("2h")).await;
        assert_eq!(looking_back.error, None);
        assert!(looking_back.counts.fetched >= changed.len() as u64);
        assert_eq!(looking_back.counts.unchanged, looking_back.counts.fetched);
        assert_eq!(
            env.row_versions("products").await,
            versions,
            "re-reading costs no write"
        );
    }

    async fn an_interrupted_incremental_run_does_not_move_the_watermark(backend: Backend) {
        // Arrange: a first run sets the watermark; then the API breaks on page 3.
        let env = TestEnv::start_on(backend, timed_products(100)).await;
        let job = env.job(incremental(JobToml::paged(10)));
        env.run(&job).await;
        let watermark = stored_watermark(&env).await;
        let mut records = env.api.records();
        for record in &mut records {
            record["updated_at"] = json!(timestamp(100_000));
        }
        env.api.set_records(records);
        // Two good pages (a zero delay is no fault), then a permanent error.
        env.api
            .queue_faults([Fault::Slow(Duration::ZERO), Fault::Slow(Duration::ZERO)]);
        env.api.set_fault(Some(Fault::Status(404)));

        // Act
        let report = env.run(&job).await;

        // Assert: the pages read were written, but the watermark stays, so the
        // next run asks for everything since the old one again.
        assert!(report.error.is_some());
        assert_eq!(report.counts.updated, 20);
        assert_eq!(stored_watermark(&env).await, watermark);
    }

    async fn two_processes_never_run_one_job_at_once(backend: Backend) {
        // Arrange: a run takes about 1 s (20 pages, 50 ms each), far longer
        // than a process takes to start.
        let env = TestEnv::start_on(backend, products(200)).await;
        env.api.set_delay(Duration::from_millis(50));
        let dir = scratch(&format!("two-{}", env.store_name));
        std::fs::write(dir.join("apisync.toml"), env.config_file(JobToml::paged(10))).unwrap();

        // Act: both start together.
        let (a, b) = tokio::join!(
            binary::run(&dir, &["sync", "products"], &[]),
            binary::run(&dir, &["sync", "products"], &[])
        );

        // Assert: both exit 0; one ran, the other said it skipped; runs never
        // overlap; the data is exact.
        assert_eq!(
            (a.status.code(), b.status.code()),
            (Some(0), Some(0)),
            "{}{}",
            stderr(&a),
            stderr(&b)
        );
        let outputs = format!("{}{}", stdout(&a), stdout(&b));
        assert!(
            outputs.contains("products skipped: another process is running this job"),
            "{outputs}"
        );
        // The API saw one walk through the pages at a time: page numbers only
        // ever go up by one, or start again at 1.
        let pages: Vec<usize> = env
            .api
            .requests()
            .iter()
            .filter_map(|r| r.split("page=").nth(1)?.split('&').next()?.parse().ok())
            .collect();
        for pair in pages.windows(2) {
            assert!(
                pair[1] == pair[0] + 1 || pair[1] == 1,
                "interleaved walks: {pages:?}"
            );
        }
        assert_eq!(
            env.rows("products").await,
            expected_rows(&env.api.records())
        );
    }

    async fn kill_9_at_random_moments_never_loses_or_doubles_a_record(backend: Backend) {
        // Arrange: an incremental job, runs of about 1.5 s (40 pages), and a
        // source that keeps changing between kills.
        let env = TestEnv::start_on(backend, timed_products(1_000)).await;
        env.api.set_delay(Duration::from_millis(30));
        let dir = scratch(&format!("kill9-{}", env.store_name));
        let config =
            env.config_file(incremental(JobToml::paged(25)).with("incremental.lookback", "0s"));
        std::fs::write(dir.join("apisync.toml"), config).unwrap();
        let mut rng = fastrand::Rng::with_seed(9);
        let mut next_id = 1_001;
        let mut clock = 10_000_000;

        // Act: 12 runs, each killed with SIGKILL after a random time (a run
        // reads all 40 pages until one completes, so most land mid-run).
        for _ in 0..12 {
            let mut child = binary::spawn(&dir, &["sync", "products"], &[]);
            tokio::time::sleep(Duration::from_millis(rng.u64(100..1_200))).await;
            binary::signal(&child, libc::SIGKILL);
            child.wait().unwrap();
            // The source moves on: some records change, some are new.
            let mut records = env.api.records();
            for _ in 0..5 {
                let i = rng.usize(..records.len());
                clock += 1;
                records[i]["price"]["amount"] = json!(clock);
                records[i]["updated_at"] = json!(timestamp(clock as i64));
            }
            for _ in 0..3 {
                clock += 1;
                let mut record = product(next_id);
                record["updated_at"] = json!(timestamp(clock as i64));
                records.push(record);
                next_id += 1;
            }
            env.api.set_records(records);
        }
        env.api.set_delay(Duration::ZERO);
        // A killed process's session may hold the job's lock for a moment more.
        let mut last = binary::run(&dir, &["sync", "products"], &[]).await;
        for _ in 0..50 {
            if !stdout(&last).contains("skipped") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = binary::run(&dir, &["sync", "products"], &[]).await;
        }

        // Assert
        assert_eq!(last.status.code(), Some(0), "{}", stderr(&last));
        assert!(
            stdout(&last).starts_with("products succeeded"),
            "{}",
            stdout(&last)
        );
        let stored = env.rows("products").await;
        assert_eq!(stored, expected_rows(&env.api.records()));
        let rows = env.query_i64("SELECT count(*) FROM products").await;
        let keys = env.query_i64("SELECT count(DISTINCT id) FROM products").await;
        assert_eq!(rows, keys, "no duplicate");
        let statuses: BTreeMap<String, i64> = env
            .query_pairs("SELECT status, count(*) FROM apisync.runs GROUP BY status")
            .await
            .into_iter()
            .collect();
        assert_eq!(statuses.get("running"), None, "{statuses:?}");
        let killed_mid_run = env
            .query_i64("SELECT count(*) FROM apisync.runs WHERE status = 'failed' AND pages > 0")
            .await;
        assert!(
            killed_mid_run >= 5,
            "kills landed mid-run: {statuses:?}, {killed_mid_run} with pages"
        );
    }

    async fn a_killed_run_has_counted_every_committed_page_unchanged_ones_too(backend: Backend) {
        // Arrange: 100 records stored by a first run; then a re-sync whose
        // sixth page never comes (the API holds it for an hour).
        let env = TestEnv::start_on(backend, products(100)).await;
        let dir = scratch(&format!("kill9-counts-{}", env.store_name));
        let job = JobToml::paged(10).with("request.timeout", "1h");
        std::fs::write(dir.join("apisync.toml"), env.config_file(job)).unwrap();
        let first = binary::run(&dir, &["sync", "products"], &[]).await;
        assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
        env.api.queue_faults(
            std::iter::repeat_n(Fault::Slow(Duration::ZERO), 5)
                .chain([Fault::Slow(Duration::from_secs(3_600))]),
        );
        let mut child = binary::spawn(&dir, &["sync", "products"], &[]);
        let counts = "SELECT pages * 1000 + unchanged FROM apisync.runs \
                      WHERE job = 'products' ORDER BY id DESC LIMIT 1";
        wait_until("the five pages served are counted", async || {
            env.query_i64(counts).await == 5_050
        })
        .await;

        // Act
        binary::signal(&child, libc::SIGKILL);
        child.wait().unwrap();

        // Assert: the run's row holds exactly the five committed pages, each
        // of 10 unchanged records, and no write touched the table.
        let (pages, unchanged, fetched) = (
            env.query_i64("SELECT pages FROM apisync.runs ORDER BY id DESC LIMIT 1")
                .await,
            env.query_i64("SELECT unchanged FROM apisync.runs ORDER BY id DESC LIMIT 1")
                .await,
            env.query_i64("SELECT fetched FROM apisync.runs ORDER BY id DESC LIMIT 1")
                .await,
        );
        assert_eq!((pages, unchanged, fetched), (5, 50, 50));
        assert_eq!(
            env.query_i64("SELECT count(*) FROM products WHERE run_id > 1")
                .await,
            0,
            "an unchanged page writes no row"
        );
    }
}

// Request timing: the source side alone against the fake API, on tokio's
// paused clock, so a wait of seconds costs none. No store: a paused clock
// jumps ahead whenever the runtime waits on something outside it, such as
// PostgreSQL's socket or SQLite's thread, and fires timeouts that never
// came. What a run makes of the pages is the store tests' part.

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    // Arrange: the first answer is a 429 asking for 2 s.
    let api = FakeApi::start(products(10)).await;
    api.queue_faults([Fault::TooManyRequests {
        retry_after_secs: 2,
    }]);

    // Act
    let walk = walk(&api, JobToml::get("/none", "/data")).await;

    // Assert: the retry came no sooner than asked.
    assert!(walk.error.is_none(), "{:?}", walk.error);
    assert_eq!(walk.records, api.records());
    let arrivals = api.arrivals();
    assert_eq!(arrivals.len(), 2);
    let waited = arrivals[1].0 - arrivals[0].0;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spent_quota_pauses_until_its_reset() {
    // Arrange: the first page says the quota is spent for 2 s.
    let api = FakeApi::start(products(30)).await;
    api.queue_faults([Fault::QuotaSpent { reset_secs: 2 }]);

    // Act
    let walk = walk(&api, JobToml::paged(20)).await;

    // Assert: the second request waited for the reset; no 429 was needed.
    assert!(walk.error.is_none(), "{:?}", walk.error);
    assert_eq!(walk.records, api.records());
    // Two pages (20 and 10 records) and the request that confirms the
    // stated end; none sent ahead, since the API announces quotas.
    let arrivals = api.arrivals();
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    let waited = arrivals[1].0 - arrivals[0].0;
    assert!(
        waited >= Duration::from_secs(2),
        "next request after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_is_never_exceeded() {
    // Arrange: 21 requests at 5 per second.
    let api = FakeApi::start(products(200)).await;

    // Act
    let walk = walk(&api, JobToml::paged(10).with("rate_limit", "5/s")).await;

    // Assert: any 6 consecutive requests span at least a second, so no
    // one-second window holds more than 5, and 21 requests take 4 s. On the
    // paused clock arrivals carry no loopback jitter: no slack is needed.
    assert!(walk.error.is_none(), "{:?}", walk.error);
    assert_eq!(walk.records, api.records());
    let arrivals: Vec<Instant> = api.arrivals().into_iter().map(|(t, _)| t).collect();
    assert_eq!(arrivals.len(), 21);
    for (i, window) in arrivals.windows(6).enumerate() {
        let span = window[5] - window[0];
        assert!(
            span >= Duration::from_secs(1),
            "requests {i}..={} within {span:?}",
            i + 5
        );
    }
    assert!(arrivals[20] - arrivals[0] >= Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_ends_retries_of_a_request() {
    let api = FakeApi::start(products(10)).await;
    api.set_fault(Some(Fault::Status(503)));
    let job = JobToml::get("/none", "/data")
        .with("retry.max_attempts", 1000)
        .with("retry.initial_backoff", "100ms")
        .with("retry.max_backoff", "100ms")
        .with("retry.max_elapsed", "1s");

    let walk = walk(&api, job).await;

    let error = apisync::error_chain(&walk.error.expect("the walk fails"));
    assert!(
        error.contains("(the retry budget retry.max_elapsed = 1s is spent)"),
        "{error}"
    );
    assert!(
        error.contains("the API answered 503 Service Unavailable"),
        "{error}"
    );
    // Each wait is at most max_backoff = 100ms, so the 1s budget is spent
    // after no fewer than 10 of them (11 attempts); they average 50ms, so
    // about 20 are expected, and 60 would need them to average under 17ms.
    // max_attempts = 1000 is far away either way.
    let attempts = api.arrivals().len();
    assert!(
        (11..=60).contains(&attempts),
        "stopped by the budget, not by max_attempts: {attempts}"
    );
    assert!(
        error.contains(&format!("fetching failed after {attempts} attempt(s)")),
        "{error}"
    );
}
