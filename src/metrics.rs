//! Every metric name and label of apisync, and one function per event.
//!
//! The names and labels are the catalogue of PRODUCT.md: dashboards and alert
//! rules depend on them, so they change only together with it. Labels take
//! values from bounded sets only: job names from the configuration, status
//! codes, outcome and status words, retry reasons; never URLs or error text.
//! The job label is `job_name`, not `job`, which Prometheus sets itself.
//!
//! Calls go through the `metrics` facade: without an installed recorder
//! (tests, `apisync sync`) they cost next to nothing.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::run::{Counts, FailureReason, RunStatus};

pub const RECORDS_TOTAL: &str = "apisync_records_total";
pub const DUPLICATE_RATIO: &str = "apisync_duplicate_ratio";
pub const RUNS_TOTAL: &str = "apisync_runs_total";
pub const RUN_DURATION_SECONDS: &str = "apisync_run_duration_seconds";
pub const LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "apisync_last_success_timestamp_seconds";
pub const JOB_RUNNING: &str = "apisync_job_running";
pub const HTTP_REQUESTS_TOTAL: &str = "apisync_http_requests_total";
pub const HTTP_RETRIES_TOTAL: &str = "apisync_http_retries_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "apisync_http_request_duration_seconds";
pub const DB_WRITE_DURATION_SECONDS: &str = "apisync_db_write_duration_seconds";
pub const RUN_FAILURES_TOTAL: &str = "apisync_run_failures_total";
pub const RECORDS_EXPECTED: &str = "apisync_records_expected";
pub const BUILD_INFO: &str = "apisync_build_info";

/// Every metric of the catalogue, for tests and documentation.
pub const CATALOGUE: [&str; 13] = [
    RECORDS_TOTAL,
    DUPLICATE_RATIO,
    RUNS_TOTAL,
    RUN_DURATION_SECONDS,
    LAST_SUCCESS_TIMESTAMP_SECONDS,
    JOB_RUNNING,
    HTTP_REQUESTS_TOTAL,
    HTTP_RETRIES_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    DB_WRITE_DURATION_SECONDS,
    RUN_FAILURES_TOTAL,
    RECORDS_EXPECTED,
    BUILD_INFO,
];

const JOB: &str = "job_name";
const OUTCOMES: [&str; 6] = [
    "inserted",
    "updated",
    "unchanged",
    "duplicate",
    "rejected",
    "deleted",
];
const RUN_STATUSES: [&str; 4] = ["succeeded", "failed", "interrupted", "skipped"];
/// Retry reasons that get a zero series up front, so alert rules and
/// dashboards see the series before the first retry; others appear on use.
const COMMON_RETRY_REASONS: [&str; 5] = ["timeout", "transport", "429", "503", "500"];

/// Histogram buckets, in seconds. Histograms rather than summaries, because
/// summaries cannot be aggregated across replicas.
const RUN_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
const HTTP_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const DB_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle;
/// later calls return the same handle.
///
/// # Panics
/// If another recorder was installed by someone else first (a programming error).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(RUN_DURATION_SECONDS.into()), &RUN_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()),
                        &HTTP_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DB_WRITE_DURATION_SECONDS.into()),
                        &DB_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty constants")
                .install_recorder()
                .expect("the metrics recorder is installed once, here");
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        RECORDS_TOTAL,
        "Records fetched, by what happened to them; deleted: stored keys a complete run found gone, or a tombstone deleted."
    );
    describe_gauge!(
        DUPLICATE_RATIO,
        "Share of the last finished run's fetched records that needed no write: (unchanged + duplicate) / fetched."
    );
    describe_counter!(
        RUNS_TOTAL,
        "Runs by final status; skipped ticks count as skipped."
    );
    describe_histogram!(
        RUN_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of finished runs."
    );
    describe_gauge!(
        LAST_SUCCESS_TIMESTAMP_SECONDS,
        metrics::Unit::Seconds,
        "Unix time at which the job last finished a run successfully."
    );
    describe_gauge!(
        JOB_RUNNING,
        "1 while a run of the job is in progress, else 0."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP request attempts, retries included, by status code or `error`."
    );
    describe_counter!(HTTP_RETRIES_TOTAL, "HTTP requests retried, by reason.");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of HTTP request attempts, body included."
    );
    describe_histogram!(
        DB_WRITE_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of write transactions (one page, or the pages waiting together), the hash \
         comparison included."
    );
    describe_counter!(
        RUN_FAILURES_TOTAL,
        "Failed runs by reason: fetch, pagination, incomplete (fewer distinct keys than the API \
         stated), rejects (more than max_rejected), deletions, auth, database, internal."
    );
    describe_gauge!(
        RECORDS_EXPECTED,
        "The record count the API stated in the job's last finished run; absent while it states none."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
}

/// Creates the job's series at zero, so a scrape shows every job and metric
/// before anything has happened.
pub fn register_job(job: &str) {
    for outcome in OUTCOMES {
        counter!(RECORDS_TOTAL, JOB => job.to_owned(), "outcome" => outcome).absolute(0);
    }
    for status in RUN_STATUSES {
        counter!(RUNS_TOTAL, JOB => job.to_owned(), "status" => status).absolute(0);
    }
    for reason in COMMON_RETRY_REASONS {
        counter!(HTTP_RETRIES_TOTAL, JOB => job.to_owned(), "reason" => reason).absolute(0);
    }
    for reason in FailureReason::ALL {
        counter!(RUN_FAILURES_TOTAL, JOB => job.to_owned(), "reason" => reason.as_str())
            .absolute(0);
    }
    gauge!(JOB_RUNNING, JOB => job.to_owned()).set(0.0);
}

/// A run started.
pub fn run_started(job: &str) {
    gauge!(JOB_RUNNING, JOB => job.to_owned()).set(1.0);
}

/// A page was committed, with these counts (its own and those of earlier
/// pages that needed no transaction).
pub fn page_written(job: &str, counts: &Counts, elapsed: Duration) {
    records_counted(job, counts);
    histogram!(DB_WRITE_DURATION_SECONDS, JOB => job.to_owned()).record(elapsed.as_secs_f64());
}

/// Records reached the runs table with these outcomes.
pub fn records_counted(job: &str, counts: &Counts) {
    let by_outcome = [
        ("inserted", counts.inserted),
        ("updated", counts.updated),
        ("unchanged", counts.unchanged),
        ("duplicate", counts.duplicate),
        ("rejected", counts.rejected),
        ("deleted", counts.deleted),
    ];
    for (outcome, n) in by_outcome {
        if n > 0 {
            counter!(RECORDS_TOTAL, JOB => job.to_owned(), "outcome" => outcome).increment(n);
        }
    }
}

/// A run finished with `status` after `elapsed`.
pub fn run_finished(job: &str, status: RunStatus, counts: &Counts, elapsed: Duration) {
    gauge!(JOB_RUNNING, JOB => job.to_owned()).set(0.0);
    counter!(RUNS_TOTAL, JOB => job.to_owned(), "status" => status.as_str()).increment(1);
    histogram!(RUN_DURATION_SECONDS, JOB => job.to_owned()).record(elapsed.as_secs_f64());
    let ratio = if counts.fetched == 0 {
        0.0
    } else {
        (counts.unchanged + counts.duplicate) as f64 / counts.fetched as f64
    };
    gauge!(DUPLICATE_RATIO, JOB => job.to_owned()).set(ratio);
    if status == RunStatus::Succeeded {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        gauge!(LAST_SUCCESS_TIMESTAMP_SECONDS, JOB => job.to_owned()).set(now.as_secs_f64());
    }
}

/// `ticks` due runs were skipped because the job was still running (or
/// another process ran it).
pub fn runs_skipped(job: &str, ticks: u64) {
    counter!(RUNS_TOTAL, JOB => job.to_owned(), "status" => "skipped").increment(ticks);
}

/// One HTTP attempt finished: `status` is the code, or `None` when no
/// response arrived.
pub fn http_attempt(job: &str, status: Option<u16>, elapsed: Duration) {
    let status = status.map_or_else(|| "error".to_owned(), |code| code.to_string());
    counter!(HTTP_REQUESTS_TOTAL, JOB => job.to_owned(), "status" => status).increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, JOB => job.to_owned()).record(elapsed.as_secs_f64());
}

/// A failed request will be retried; `reason` is `FetchError::kind()`.
pub fn http_retry(job: &str, reason: &str) {
    counter!(HTTP_RETRIES_TOTAL, JOB => job.to_owned(), "reason" => reason.to_owned()).increment(1);
}

/// A run failed for `reason` (counted besides `runs_total{status="failed"}`).
pub fn run_failed(job: &str, reason: FailureReason) {
    counter!(RUN_FAILURES_TOTAL, JOB => job.to_owned(), "reason" => reason.as_str()).increment(1);
}

/// The jobs whose `apisync_records_expected` series exists.
static EXPECTED_SHOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The total the API stated in a finished run. A job that states none has
/// no series; one that stops stating it is set to NaN, which no comparison
/// in an alert rule matches (the exporter cannot remove a series).
pub fn records_expected(job: &str, expected: Option<u64>) {
    let mut shown = EXPECTED_SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    match expected {
        Some(count) => {
            if !shown.iter().any(|j| j == job) {
                shown.push(job.to_owned());
            }
            gauge!(RECORDS_EXPECTED, JOB => job.to_owned()).set(count as f64);
        }
        None if shown.iter().any(|j| j == job) => {
            gauge!(RECORDS_EXPECTED, JOB => job.to_owned()).set(f64::NAN);
        }
        None => {}
    }
}
