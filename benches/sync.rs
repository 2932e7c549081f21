//! The throughput benchmark: N product records (about 400 bytes each) served
//! by the fake API on loopback in pages of 1,000, synced into a fresh
//! PostgreSQL database by the release binary, compared with `COPY` of the
//! same rows into a table of the same shape.
//!
//!     cargo bench --bench sync                         # N = 200,000, 3 rounds
//!     BENCH_RECORDS=1000000 BENCH_ROUNDS=1 cargo bench --bench sync
//!     BENCH_STORE=sqlite cargo bench --bench sync      # apisync into SQLite
//!     BENCH_LOG=debug cargo bench --bench sync         # apisync's log (per-page timings)
//!     BENCH_ONLY=large-page cargo bench --bench sync    # the large page alone
//!     BENCH_LARGE_PAGE=4500000 cargo bench --bench sync # of 4.5 M records
//!
//! After the throughput table, a second one: peak memory on one large page
//! (1.5 million records of ~14 bytes in one 21 MB response, the most rows per
//! byte of body), against the goal of 3 × the body + 48 MiB.
//!
//! With `BENCH_STORE=sqlite` apisync writes a SQLite file; rows written and
//! WAL are PostgreSQL statistics and show as `-`; COPY still runs on
//! PostgreSQL, as the yardstick.
//!
//! `DATABASE_URL` names the server (default: local, user postgres); the
//! benchmark creates and drops the database `apisync_bench` on it.
//! Figures are medians over the rounds. A `CHECKPOINT` precedes each timed
//! scenario (COPY included), so none pays for the disk writes of the one
//! before.

#[path = "../tests/it/fake_api/mod.rs"]
#[allow(dead_code)]
mod fake_api;

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

const PAGE_SIZE: usize = 1_000;
const TABLE: &str = "bench";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A product of about 400 bytes of JSON.
fn product(id: usize, version: usize) -> Value {
    json!({
        "id": id,
        "sku": format!("SKU-{id:08}"),
        "name": format!("Product {id}, deluxe edition"),
        "description": format!(
            "A sturdy, well-made product number {id} for everyday use. Ships in recyclable \
             packaging; assembly takes about ten minutes. Version {version}."
        ),
        "price": { "amount": (id * 37) % 100_000, "currency": "EUR" },
        "stock": id % 250,
        "tags": ["archive", format!("group-{}", id % 17), "benchmark"],
        "active": !id.is_multiple_of(3),
        "updated_at": "2026-11-27T12:00:00Z",
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    seconds: f64,
    peak_rss_mib: f64,
    rows_inserted: i64,
    rows_updated: i64,
    wal_bytes: i64,
    /// Blocks of the table and its history read from outside PostgreSQL's
    /// shared buffers (from the OS cache or the disk).
    blocks_read: i64,
}

struct Bench {
    admin: PgPool,
    db_url: String,
    /// Where apisync writes: `db_url`, or a SQLite file.
    store_url: String,
    sqlite: bool,
    pool: PgPool,
    dir: std::path::PathBuf,
}

impl Bench {
    async fn new(server_url: &str) -> Bench {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server_url)
            .await
            .expect("the PostgreSQL server in DATABASE_URL answers");
        sqlx::query("DROP DATABASE IF EXISTS apisync_bench WITH (FORCE)")
            .execute(&admin)
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE apisync_bench")
            .execute(&admin)
            .await
            .unwrap();
        let mut url = reqwest::Url::parse(server_url).unwrap();
        url.set_path("apisync_bench");
        let db_url = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&db_url)
            .await
            .unwrap();
        let dir = std::env::temp_dir().join(format!("apisync-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sqlite = std::env::var("BENCH_STORE").is_ok_and(|s| s == "sqlite");
        let store_url = if sqlite {
            let file = dir.join("bench.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            format!("sqlite://{}", file.display())
        } else {
            db_url.clone()
        };
        Bench {
            admin,
            db_url,
            store_url,
            sqlite,
            pool,
            dir,
        }
    }

    /// Writes out what earlier scenarios left dirty, so that each timed
    /// scenario starts from a quiet disk instead of paying for the previous
    /// one's writes (a first load leaves over 100 MB for the checkpointer,
    /// which makes every commit right after it wait).
    async fn checkpoint(&self) {
        sqlx::query("CHECKPOINT")
            .execute(&self.admin)
            .await
            .unwrap();
    }

    async fn wal_lsn(&self) -> String {
        sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.admin)
            .await
            .unwrap()
    }

    async fn wal_since(&self, lsn: &str) -> i64 {
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint")
            .bind(lsn)
            .fetch_one(&self.admin)
            .await
            .unwrap()
    }

    /// `(n_tup_ins, n_tup_upd)` of `table`, and the blocks of it and its
    /// history read from outside shared buffers, after the writers'
    /// statistics reached the shared counters (a backend flushes them when
    /// it exits).
    async fn tuples(&self, table: &str) -> (i64, i64, i64) {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut conn = self.pool.acquire().await.unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query_as(
            "SELECT coalesce(sum(s.n_tup_ins) FILTER (WHERE s.relname = $1), 0)::bigint, \
               coalesce(sum(s.n_tup_upd) FILTER (WHERE s.relname = $1), 0)::bigint, \
               coalesce(sum(io.heap_blks_read + coalesce(io.idx_blks_read, 0) \
                 + coalesce(io.toast_blks_read, 0)), 0)::bigint \
             FROM pg_stat_user_tables s JOIN pg_statio_user_tables io USING (relid) \
             WHERE s.relname IN ($1, $1 || '_history')",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    }

    /// Runs `apisync sync bench` once with the release binary.
    async fn sync(&self, api_url: &str) -> (Figures, String) {
        self.sync_with(api_url, "").await
    }

    /// Like [`Bench::sync`], with `settings` (job keys, one per line) added.
    async fn sync_with(&self, api_url: &str, settings: &str) -> (Figures, String) {
        let job = format!(
            r#"records = "/data"
max_pages = 100000
{settings}
[jobs.request]
url = "{api_url}/page"
timeout = "60s"
[jobs.pagination]
kind = "page"
size = {PAGE_SIZE}
total_pages_path = "/total_pages"
"#
        );
        self.sync_job(&job).await
    }

    /// Runs the job `bench` described by `job` (the TOML after its key).
    async fn sync_job(&self, job: &str) -> (Figures, String) {
        let config = format!(
            r#"
[database]
url = "{db}"
[log]
level = "{log}"
[[jobs]]
name = "bench"
schedule = "0 0 1 1 *"
table = "{TABLE}"
key = ["id"]
{job}"#,
            db = self.store_url,
            log = std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
        );
        let path = self.dir.join("bench.toml");
        std::fs::write(&path, config).unwrap();
        self.checkpoint().await;
        let lsn = self.wal_lsn().await;
        let before = if self.sqlite {
            (0, 0, 0)
        } else {
            self.tuples(TABLE).await
        };
        let path_arg = path.clone();
        let (output, peak_kib, elapsed) =
            tokio::task::spawn_blocking(move || run_measured(&path_arg))
                .await
                .unwrap();
        let seconds = elapsed.as_secs_f64();
        let (wal_bytes, after) = if self.sqlite {
            (-1, (-1, -1, -1))
        } else {
            (self.wal_since(&lsn).await, self.tuples(TABLE).await)
        };
        let written = |after: i64, before: i64| if after < 0 { -1 } else { after - before };
        (
            Figures {
                seconds,
                peak_rss_mib: peak_kib as f64 / 1024.0,
                rows_inserted: written(after.0, before.0),
                rows_updated: written(after.1, before.1),
                wal_bytes,
                blocks_read: written(after.2, before.2),
            },
            output,
        )
    }

    /// COPY of the same rows into a table of the same shape, timed from the
    /// start of the COPY to its commit.
    async fn copy(&self, records: &[Value]) -> Figures {
        sqlx::query("DROP TABLE IF EXISTS copy_target")
            .execute(&self.pool)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE copy_target (id text COLLATE \"C\" NOT NULL PRIMARY KEY, record jsonb NOT NULL, \
             content_hash bytea NOT NULL, first_seen_at timestamptz NOT NULL, \
             changed_at timestamptz NOT NULL, run_id bigint NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .unwrap();
        let shape = apisync::record::RecordShape::new(&["id".to_owned()], &[]).unwrap();
        let mut data = String::with_capacity(records.len() * 520);
        for value in records {
            let record = shape.read(value).unwrap();
            let json = record.text.replace('\\', "\\\\");
            let hash: String = record
                .content_hash
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let _ = writeln!(
                data,
                "{}\t{json}\t\\\\x{hash}\t2026-11-27 12:00:00+00\t2026-11-27 12:00:00+00\t0",
                record.key[0]
            );
        }
        let options: PgConnectOptions = self.db_url.parse().unwrap();
        let mut conn = PgConnection::connect_with(&options).await.unwrap();
        self.checkpoint().await;
        let lsn = self.wal_lsn().await;
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw("COPY copy_target FROM STDIN")
            .await
            .unwrap();
        for chunk in data.as_bytes().chunks(1 << 20) {
            copy.send(chunk).await.unwrap();
        }
        copy.finish().await.unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let wal_bytes = self.wal_since(&lsn).await;
        conn.close().await.unwrap();
        Figures {
            seconds,
            rows_inserted: records.len() as i64,
            wal_bytes,
            blocks_read: -1,
            ..Figures::default()
        }
    }
}

/// Runs the binary to completion; returns its stdout and peak RSS in KiB.
///
/// The peak is the process's own `VmHWM`, sampled until it exits: `wait4`'s
/// `ru_maxrss` would count the forked copy of this (large) benchmark process.
fn run_measured(config: &std::path::Path) -> (String, i64, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_apisync"))
        .args(["sync", "bench", "--config"])
        .arg(config)
        // The benchmark's own DATABASE_URL names the server; apisync would
        // take it over the file's URL and write into that database instead.
        .env_remove("DATABASE_URL")
        .env_remove("APISYNC__DATABASE__URL")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the release binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut output = String::new();
        std::io::Read::read_to_string(&mut { stdout }, &mut output).unwrap();
        output
    });
    // Peak RSS: VmHWM, polled until the child exits (it only grows).
    // `wait4`'s ru_maxrss would count the bench's own memory, which the
    // child shares between fork and exec.
    let status_file = format!("/proc/{}/status", child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = std::thread::spawn({
        let done = std::sync::Arc::clone(&done);
        move || {
            let mut peak_kib = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(&status_file)
                    && let Some(kib) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
                {
                    peak_kib = peak_kib.max(kib);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak_kib
        }
    });
    // The exit time from a blocking wait, not from the polling above, which
    // would add up to a poll interval. WNOWAIT leaves the child unreaped
    // until the poller has stopped, so its PID cannot be reused meanwhile.
    // SAFETY: a zeroed siginfo_t is valid, and waitid writes only into it.
    let waited = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let pid = libc::id_t::from(child.id());
        libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
    };
    let elapsed = started.elapsed();
    assert_eq!(waited, 0, "waitid on apisync");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = poller.join().unwrap();
    let exit = child.wait().expect("apisync runs");
    let output = reader.join().unwrap();
    assert!(exit.success(), "apisync failed: {output}");
    (output, peak_kib, elapsed)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`:
    // the benchmark only runs under `cargo bench`.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("the throughput benchmark runs with `cargo bench --bench sync`");
        return;
    }
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "large-page") {
        large_page(&server).await;
        remove_scratch();
        return;
    }
    let n = env_number("BENCH_RECORDS", 200_000);
    let rounds = env_number("BENCH_ROUNDS", 3).max(1);
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "archive") {
        archive(&server, n, rounds).await;
        remove_scratch();
        return;
    }
    println!(
        "apisync benchmark: N = {n} records of ~400 B, pages of {PAGE_SIZE}, {rounds} round(s)"
    );
    println!(
        "machine: {} cores; PostgreSQL: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        server_version(&server).await
    );

    let records: Vec<Value> = (1..=n).map(|id| product(id, 0)).collect();
    let api = fake_api::FakeApi::start(records.clone()).await;
    let scenarios = [
        "first load",
        "unchanged re-sync",
        "1% changed",
        "COPY (yardstick)",
    ];
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=rounds {
        let bench = Bench::new(&server).await;
        api.set_records(records.clone());
        warm(&api, n).await;
        let (first, out1) = bench.sync(&api.url("")).await;
        let (unchanged, out2) = bench.sync(&api.url("")).await;
        let mut changed = records.clone();
        for id in (1..=n).step_by(100) {
            changed[id - 1] = product(id, round);
        }
        api.set_records(changed);
        warm(&api, n).await;
        let (one_percent, out3) = bench.sync(&api.url("")).await;
        let copy = bench.copy(&records).await;
        eprintln!(
            "round {round}:\n  {}  {}  {}",
            out1.trim(),
            out2.trim(),
            out3.trim()
        );
        for (i, figures) in [first, unchanged, one_percent, copy]
            .into_iter()
            .enumerate()
        {
            results[i].push(figures);
        }
    }

    print_table(&scenarios, &results, 3, n);
    large_page(&server).await;
    remove_scratch();
}

/// The medians of each scenario's rounds, with × COPY taken from the
/// scenario at `copy`.
fn print_table(scenarios: &[&str], results: &[Vec<Figures>], copy: usize, n: usize) {
    let copy_seconds = median(&mut results[copy].iter().map(|f| f.seconds).collect::<Vec<_>>());
    println!(
        "\n{:<28} {:>9} {:>11} {:>8} {:>9} {:>10} {:>10} {:>9} {:>10}",
        "scenario",
        "seconds",
        "records/s",
        "× COPY",
        "RSS MiB",
        "rows ins",
        "rows upd",
        "WAL MB",
        "blks read"
    );
    for (name, runs) in scenarios.iter().zip(results) {
        let pick = |f: fn(&Figures) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        let seconds = pick(|f| f.seconds);
        let rss = pick(|f| f.peak_rss_mib);
        // Negative figures mean "not measured" (SQLite has no such statistics).
        let or_dash = |value: f64, text: String| if value < 0.0 { "-".to_owned() } else { text };
        let inserted = pick(|f| f.rows_inserted as f64);
        let updated = pick(|f| f.rows_updated as f64);
        let wal = pick(|f| f.wal_bytes as f64);
        let read = pick(|f| f.blocks_read as f64);
        println!(
            "{:<28} {:>9.2} {:>11.0} {:>8.2} {:>9} {:>10} {:>10} {:>9} {:>10}",
            name,
            seconds,
            n as f64 / seconds,
            seconds / copy_seconds,
            or_dash(if rss > 0.0 { rss } else { -1.0 }, format!("{rss:.1}")),
            or_dash(inserted, format!("{inserted:.0}")),
            or_dash(updated, format!("{updated:.0}")),
            or_dash(wal, format!("{:.1}", wal / 1e6)),
            or_dash(read, format!("{read:.0}")),
        );
    }
}

/// `BENCH_ONLY=archive`: what history and deletions cost. The same three
/// runs with and without `history = true`; then, on a table of N rows with
/// `deletions = "mark"`, a run over a source that lost 1% of its keys, once
/// with `deletions = "ignore"` and once with `"mark"`: the difference is the
/// deletion step (the live-row count, the key read, the marking).
async fn archive(server: &str, n: usize, rounds: usize) {
    println!("apisync archive benchmark: N = {n}, pages of {PAGE_SIZE}, {rounds} round(s)");
    let records: Vec<Value> = (1..=n).map(|id| product(id, 0)).collect();
    let api = fake_api::FakeApi::start(records.clone()).await;
    let scenarios = [
        "first load",
        "unchanged re-sync",
        "1% changed",
        "first load, history",
        "unchanged re-sync, history",
        "1% changed, history",
        "99% left, deletions ignore",
        "99% left, deletions mark",
        "COPY (yardstick)",
    ];
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); scenarios.len()];
    let mut changed = records.clone();
    for id in (1..=n).step_by(100) {
        changed[id - 1] = product(id, 1);
    }
    let left: Vec<Value> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 100 != 50)
        .map(|(_, r)| r.clone())
        .collect();
    for round in 1..=rounds {
        let mut figures = Vec::new();
        for settings in ["", "history = true"] {
            let bench = Bench::new(server).await;
            api.set_records(records.clone());
            warm(&api, n).await;
            figures.push(bench.sync_with(&api.url(""), settings).await.0);
            figures.push(bench.sync_with(&api.url(""), settings).await.0);
            api.set_records(changed.clone());
            warm(&api, n).await;
            figures.push(bench.sync_with(&api.url(""), settings).await.0);
        }
        let bench = Bench::new(server).await;
        api.set_records(records.clone());
        warm(&api, n).await;
        bench.sync_with(&api.url(""), "deletions = \"mark\"").await;
        api.set_records(left.clone());
        warm(&api, n).await;
        figures.push(
            bench
                .sync_with(&api.url(""), "deletions = \"ignore\"")
                .await
                .0,
        );
        let (marking, out) = bench.sync_with(&api.url(""), "deletions = \"mark\"").await;
        figures.push(marking);
        figures.push(bench.copy(&records).await);
        eprintln!("round {round}: {}", out.trim());
        for (i, f) in figures.into_iter().enumerate() {
            results[i].push(f);
        }
    }
    print_table(&scenarios, &results, scenarios.len() - 1, n);
}

/// The folder of the configuration files, made by [`Bench::new`].
fn remove_scratch() {
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("apisync-bench-{}", std::process::id())),
    );
}

/// Peak memory on one large page: `BENCH_LARGE_PAGE` records (default
/// 1,500,000) as small as records come (`{"id":N}`, about 14 bytes each, the
/// most rows per byte of body), in one response. The goal: a peak RSS of at
/// most 3 × the body + 48 MiB, on the first load and on the unchanged re-sync.
async fn large_page(server: &str) {
    let n = env_number("BENCH_LARGE_PAGE", 1_500_000);
    let records: Vec<Value> = (1..=n).map(|id| json!({ "id": id })).collect();
    let body_bytes = serde_json::to_vec(&json!({ "data": records }))
        .unwrap()
        .len();
    let api = fake_api::FakeApi::start(records).await;
    let bench = Bench::new(server).await;
    let job = format!(
        "records = \"/data\"\n[jobs.request]\nurl = \"{}\"\ntimeout = \"120s\"\n",
        api.url("/none")
    );
    let body_mib = body_bytes as f64 / (1 << 20) as f64;
    let goal = 3.0 * body_mib + 48.0;
    println!(
        "\none page of {n} records, body {body_mib:.1} MiB; goal: peak RSS ≤ 3 × body + 48 MiB = {goal:.0} MiB"
    );
    println!(
        "{:<20} {:>9} {:>9} {:>10}",
        "scenario", "seconds", "RSS MiB", "× body"
    );
    for name in ["first load", "unchanged re-sync"] {
        let (figures, out) = bench.sync_job(&job).await;
        eprintln!("  {}", out.trim());
        println!(
            "{:<20} {:>9.2} {:>9.1} {:>10.1}{}",
            name,
            figures.seconds,
            figures.peak_rss_mib,
            figures.peak_rss_mib / body_mib,
            if figures.peak_rss_mib > goal {
                "  over the goal"
            } else {
                ""
            }
        );
    }
}

/// Requests every page once, untimed, so the fake API serves the timed runs
/// from its cache: a real API's cost is on another machine, not in the figures.
async fn warm(api: &fake_api::FakeApi, n: usize) {
    let client = reqwest::Client::new();
    for page in 1..=n.div_ceil(PAGE_SIZE) {
        let url = api.url(&format!("/page?page={page}&per_page={PAGE_SIZE}"));
        client.get(url).send().await.unwrap().bytes().await.unwrap();
    }
}

async fn server_version(url: &str) -> String {
    match PgConnection::connect(url).await {
        Ok(mut conn) => sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&mut conn)
            .await
            .unwrap_or_default(),
        Err(e) => format!("unreachable ({e})"),
    }
}
