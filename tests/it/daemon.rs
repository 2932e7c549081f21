//! `apisync run` in process: scheduling without overlap, the metric
//! catalogue against the runs table, readiness while the database is down.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use apisync::app::App;
use apisync::store::{PgStore, Store};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::{JobToml, TcpToggle, TestEnv, products, wait_until};

struct Daemon {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Builds and starts the daemon from the configuration file `text`.
    async fn start(store: Store, text: &str) -> Daemon {
        let settings =
            apisync::config::load_str(text, Path::new("daemon.toml"), &Default::default())
                .unwrap_or_else(|e| panic!("{e}"));
        let app = App::build_with_store(settings, store)
            .await
            .expect("the daemon builds");
        let addr = app.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Daemon {
            addr,
            shutdown,
            handle,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .expect("the daemon answers");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .unwrap()
            .expect("the daemon stops cleanly");
    }
}

/// The value of the series of `metric` whose labels include all of `labels`.
fn sample(scrape: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|line| {
            line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

const DAEMON_HEAD: &str = r#"
shutdown_timeout = "5s"
[database]
url = "postgres://unused@127.0.0.1/unused"
[server]
listen = "127.0.0.1:0"
"#;

/// The scheduler's own rules (no overlap, ticks missed during a run skipped,
/// never queued) are proved on a paused clock by
/// `scheduler::tests::a_slow_job_never_overlaps_and_missed_ticks_do_not_burst`;
/// this test checks the daemon wires them up: real runs, the runs table and
/// the skipped series. It waits for what it checks rather than for a fixed
/// time, so it takes the length of two runs.
#[sqlx::test(migrations = false)]
async fn a_job_due_every_second_never_overlaps_itself(pool: PgPool) {
    // Arrange: each run reads 4 pages at 600 ms each, over 2 s, while the
    // job is due every second.
    let env = TestEnv::start(pool, products(250)).await;
    env.api.set_delay(Duration::from_millis(600));
    let api = env.api.url("");
    let config = format!(
        r#"{DAEMON_HEAD}
[[jobs]]
name = "overlap_probe"
schedule = "* * * * * *"
table = "overlap_probe"
key = ["id"]
records = "/data"
[jobs.request]
url = "{api}/page"
[jobs.pagination]
kind = "page"
size = 100
"#
    );
    let runs_sql = "SELECT started_at, finished_at, status FROM apisync.runs \
                    WHERE job = 'overlap_probe' ORDER BY started_at";
    type Runs = Vec<(
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        String,
    )>;

    // Act: let it run until a second run has started after ticks were
    // skipped during the first.
    let daemon = Daemon::start(env.ctx.store.clone(), &config).await;
    let skipped = |scrape: &str| {
        sample(
            scrape,
            "apisync_runs_total",
            &[("job_name", "overlap_probe"), ("status", "skipped")],
        )
    };
    let mut scrape = String::new();
    wait_until("two runs started and two ticks were skipped", async || {
        let runs: Runs = sqlx::query_as(runs_sql).fetch_all(env.pg()).await.unwrap();
        scrape = daemon.get("/metrics").await.1;
        runs.len() >= 2 && skipped(&scrape).is_some_and(|n| n >= 2.0)
    })
    .await;
    daemon.stop().await;

    // Assert
    let runs: Runs = sqlx::query_as(runs_sql).fetch_all(env.pg()).await.unwrap();
    assert!(runs.len() >= 2, "{runs:?}");
    for pair in runs.windows(2) {
        let finished = pair[0].1.expect("an earlier run has finished");
        assert!(pair[1].0 >= finished, "runs overlap: {pair:?}");
    }
    assert!(
        runs.iter().all(|(_, _, status)| status != "running"),
        "{runs:?}"
    );
    let skipped = skipped(&scrape).expect("the skipped series exists");
    assert!(
        skipped >= 2.0,
        "ticks during runs are counted as skipped: {skipped}"
    );
}

#[sqlx::test(migrations = false)]
async fn metrics_cover_the_catalogue_and_agree_with_the_runs_table(pool: PgPool) {
    // Arrange: three jobs that run once at start: one clean, one with
    // duplicates, rejects and a deletion (a tombstone for a key of an earlier
    // page), one against an API that keeps failing.
    let mut records = products(150);
    records.push(serde_json::json!({"name": "no key"}));
    let env = TestEnv::start(pool, records).await;
    env.api.add_to_page(1, vec![crate::helpers::product(3)]);
    env.api
        .add_to_page(2, vec![serde_json::json!({"id": 1, "deleted": true})]);
    let api = env.api.url("");
    let job = |name: &str, url: &str, extra: &str| {
        let tombstones = if name == "m_messy" {
            "deletions = \"mark\"\ntombstone = \"/deleted\"\n"
        } else {
            ""
        };
        format!(
            "[[jobs]]\nname = \"{name}\"\nschedule = \"0 0 1 1 *\"\nrun_on_start = true\n\
             table = \"{name}\"\nkey = [\"id\"]\nrecords = \"/data\"\n{tombstones}\
             [jobs.request]\nurl = \"{api}{url}\"\n{extra}\n"
        )
    };
    let config = format!(
        "{DAEMON_HEAD}\n{}{}{}",
        job(
            "m_clean",
            "/cursor",
            "[jobs.pagination]\nkind = \"cursor\"\n"
        ),
        job(
            "m_messy",
            "/page",
            "[jobs.pagination]\nkind = \"page\"\nsize = 50\ntotal_path = \"/total\"\n"
        ),
        job(
            "m_failing",
            "/status/503",
            "[jobs.retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\"\n"
        ),
    );
    let jobs = ["m_clean", "m_messy", "m_failing"];

    // Act
    let daemon = Daemon::start(env.ctx.store.clone(), &config).await;
    let mut scrape = String::new();
    wait_until("all three runs are finished and counted", async || {
        let (_, text) = daemon.get("/metrics").await;
        let finished: f64 = jobs
            .iter()
            .flat_map(|job| {
                ["succeeded", "failed"].map(|status| {
                    sample(
                        &text,
                        "apisync_runs_total",
                        &[("job_name", job), ("status", status)],
                    )
                    .unwrap_or(0.0)
                })
            })
            .sum();
        scrape = text;
        finished == 3.0
    })
    .await;
    daemon.stop().await;

    // Assert: every metric of the catalogue is there, with its type…
    let types = [
        ("apisync_records_total", "counter"),
        ("apisync_duplicate_ratio", "gauge"),
        ("apisync_runs_total", "counter"),
        ("apisync_run_duration_seconds", "histogram"),
        ("apisync_last_success_timestamp_seconds", "gauge"),
        ("apisync_job_running", "gauge"),
        ("apisync_http_requests_total", "counter"),
        ("apisync_http_retries_total", "counter"),
        ("apisync_http_request_duration_seconds", "histogram"),
        ("apisync_db_write_duration_seconds", "histogram"),
        ("apisync_run_failures_total", "counter"),
        ("apisync_records_expected", "gauge"),
        ("apisync_build_info", "gauge"),
    ];
    assert_eq!(types.len(), apisync::metrics::CATALOGUE.len());
    for (metric, kind) in types {
        assert!(apisync::metrics::CATALOGUE.contains(&metric), "{metric}");
        assert!(
            scrape.contains(&format!("# TYPE {metric} {kind}\n")),
            "{metric} ({kind}) is missing from\n{scrape}"
        );
    }
    assert!(
        scrape.contains("apisync_run_duration_seconds_bucket{"),
        "histograms have buckets"
    );
    // …the record counters equal the sums in apisync.runs…
    for job in jobs {
        let sums: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT sum(inserted)::bigint, sum(updated)::bigint, sum(unchanged)::bigint, \
             sum(duplicate)::bigint, sum(rejected)::bigint, sum(deleted)::bigint \
             FROM apisync.runs WHERE job = $1",
        )
        .bind(job)
        .fetch_one(env.pg())
        .await
        .unwrap();
        let outcomes = [
            ("inserted", sums.0),
            ("updated", sums.1),
            ("unchanged", sums.2),
            ("duplicate", sums.3),
            ("rejected", sums.4),
            ("deleted", sums.5),
        ];
        for (outcome, sum) in outcomes {
            let counted = sample(
                &scrape,
                "apisync_records_total",
                &[("job_name", job), ("outcome", outcome)],
            );
            assert_eq!(counted, Some(sum as f64), "{job} {outcome}");
        }
        let statuses: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM apisync.runs WHERE job = $1 GROUP BY status",
        )
        .bind(job)
        .fetch_all(env.pg())
        .await
        .unwrap();
        for (status, count) in statuses {
            let counted = sample(
                &scrape,
                "apisync_runs_total",
                &[("job_name", job), ("status", &status)],
            );
            assert_eq!(counted, Some(count as f64), "{job} {status}");
        }
    }
    let messy_duplicates = sample(
        &scrape,
        "apisync_records_total",
        &[("job_name", "m_messy"), ("outcome", "duplicate")],
    );
    assert_eq!(
        messy_duplicates,
        Some(1.0),
        "the planted duplicate is counted"
    );
    let messy_deleted = sample(
        &scrape,
        "apisync_records_total",
        &[("job_name", "m_messy"), ("outcome", "deleted")],
    );
    assert_eq!(messy_deleted, Some(1.0), "the tombstoned key is counted");
    // …every attempt and retry of the failing job is counted…
    let attempts = sample(
        &scrape,
        "apisync_http_requests_total",
        &[("job_name", "m_failing"), ("status", "503")],
    );
    let retries = sample(
        &scrape,
        "apisync_http_retries_total",
        &[("job_name", "m_failing"), ("reason", "503")],
    );
    assert_eq!((attempts, retries), (Some(3.0), Some(2.0)));
    assert!(
        sample(
            &scrape,
            "apisync_last_success_timestamp_seconds",
            &[("job_name", "m_clean")]
        )
        .is_some()
    );
    assert_eq!(
        sample(
            &scrape,
            "apisync_last_success_timestamp_seconds",
            &[("job_name", "m_failing")]
        ),
        None,
        "a failed run is not a success"
    );
    // …failures by reason, and the total the API stated, only where it states one…
    let failures = |job: &str, reason: &str| {
        sample(
            &scrape,
            "apisync_run_failures_total",
            &[("job_name", job), ("reason", reason)],
        )
    };
    assert_eq!(failures("m_failing", "fetch"), Some(1.0));
    assert_eq!(failures("m_failing", "incomplete"), Some(0.0));
    assert_eq!(failures("m_clean", "fetch"), Some(0.0));
    let expected = |job: &str| sample(&scrape, "apisync_records_expected", &[("job_name", job)]);
    assert_eq!(
        expected("m_messy"),
        Some(151.0),
        "150 products and a reject"
    );
    assert_eq!(expected("m_clean"), None, "the cursor API states no total");
    // …and promtool finds nothing to complain about.
    let lint = promtool_check_metrics(&scrape).await;
    assert!(lint.is_empty(), "promtool check metrics: {lint}");
}

#[sqlx::test(migrations = false)]
async fn unchanged_records_are_counted_page_by_page_while_the_run_goes_on(pool: PgPool) {
    // Arrange: 100 records stored by a first run; the daemon's run then
    // re-reads them, and the API holds its sixth page for an hour.
    let env = TestEnv::start(pool, products(100)).await;
    let body = "records = \"/data\"\n[jobs.request]\nurl = \"{api}/page\"\ntimeout = \"1h\"\n\
                [jobs.pagination]\nkind = \"page\"\nsize = 10\n";
    let first = env
        .run(
            &env.job(
                JobToml::paged(10)
                    .named("m_unchanged")
                    .with("request.timeout", "1h"),
            ),
        )
        .await;
    assert_eq!(first.counts.inserted, 100);
    env.api.queue_faults(
        std::iter::repeat_n(crate::fake_api::faults::Fault::Slow(Duration::ZERO), 5).chain([
            crate::fake_api::faults::Fault::Slow(Duration::from_secs(3_600)),
        ]),
    );
    let config = format!(
        "{DAEMON_HEAD}\n[[jobs]]\nname = \"m_unchanged\"\nschedule = \"0 0 1 1 *\"\n\
         run_on_start = true\ntable = \"products\"\nkey = [\"id\"]\n{body}"
    );

    // Act
    let config = config.replace("{api}", &env.api.url(""));
    let daemon = Daemon::start(env.ctx.store.clone(), &config).await;
    let job = [("job_name", "m_unchanged")];
    let unchanged = [("job_name", "m_unchanged"), ("outcome", "unchanged")];
    let mut mid_run = (0.0, 0.0);
    wait_until(
        "the five pages served are counted while the run goes on",
        async || {
            let (_, text) = daemon.get("/metrics").await;
            mid_run = (
                sample(&text, "apisync_records_total", &unchanged).unwrap_or(0.0),
                sample(&text, "apisync_job_running", &job).unwrap_or(0.0),
            );
            mid_run.0 >= 50.0
        },
    )
    .await;
    daemon.stop().await;

    // Assert: counted before the run ended, and exactly what the runs
    // table holds for the interrupted run.
    assert_eq!(mid_run, (50.0, 1.0), "(unchanged, running) mid-run");
    let (status, unchanged, pages): (String, i64, i64) = sqlx::query_as(
        "SELECT status, unchanged, pages FROM apisync.runs ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(env.pg())
    .await
    .unwrap();
    assert_eq!((status.as_str(), unchanged, pages), ("interrupted", 50, 5));
}

/// What `promtool check metrics` says about `scrape` (empty when clean).
async fn promtool_check_metrics(scrape: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let scrape = scrape.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed (Debian package prometheus)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            text.trim().to_owned()
        } else {
            format!("exit {}: {text}", output.status)
        }
    })
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn readyz_follows_the_database_and_healthz_does_not(pool: PgPool) {
    // Arrange: the daemon reaches the test database through a connection
    // we can cut.
    let env = TestEnv::start(pool, products(10)).await;
    let options: PgConnectOptions = (*env.pg().connect_options()).clone();
    let toggle = TcpToggle::start(options.get_host(), options.get_port()).await;
    let through_toggle = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(options.host("127.0.0.1").port(toggle.port()));
    let store = Store::Postgres(PgStore::from_pool(through_toggle));
    let api = env.api.url("");
    let config = format!(
        "{DAEMON_HEAD}\n[[jobs]]\nname = \"ready_probe\"\nschedule = \"0 0 1 1 *\"\ntable = \"ready_probe\"\n\
         key = [\"id\"]\nrecords = \"/data\"\n[jobs.request]\nurl = \"{api}/none\"\n"
    );

    // Act + Assert: down…
    let daemon = Daemon::start(store, &config).await;
    assert_eq!(daemon.get("/healthz").await.0, 200);
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");

    // …then up.
    toggle.set_up(true);
    wait_until("/readyz answers 200", async || {
        daemon.get("/readyz").await.0 == 200
    })
    .await;
    assert_eq!(daemon.get("/healthz").await.0, 200);

    // …and down again.
    toggle.set_up(false);
    wait_until("/readyz answers 503", async || {
        daemon.get("/readyz").await.0 == 503
    })
    .await;
    daemon.stop().await;
}
