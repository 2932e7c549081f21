//! What a run tells the outside: each event logs and counts in one place
//! (as Vector's `internal_events` do), so a log line and the metric that
//! describe the same thing cannot drift apart. Labels stay bounded: the job,
//! an outcome, a status, a failure reason.

use std::time::Duration;

use super::RunReport;
use crate::metrics;
use crate::run::{Counts, FailureReason, RunStatus};

/// Another process holds the job's lock.
pub(super) fn run_skipped(job: &str) {
    metrics::runs_skipped(job, 1);
    tracing::info!("Another process is running this job; skipped.");
}

/// Runs left `running` by a process that died were closed.
pub(super) fn abandoned_runs_closed(runs: u64) {
    if runs > 0 {
        tracing::warn!(runs, "Closed runs left running by a process that exited.");
    }
}

pub(super) fn run_started(job: &str) {
    metrics::run_started(job);
}

/// A batch (one page, several joined, or a part of a large one) committed,
/// its counts with it: `apisync_records_total` grows batch by batch.
pub(super) fn batch_committed(
    job: &str,
    page: u64,
    counts: &Counts,
    planned: Duration,
    elapsed: Duration,
) {
    metrics::page_written(job, counts, elapsed);
    tracing::debug!(
        page,
        fetched = counts.fetched,
        plan_ms = planned.as_secs_f64() * 1e3,
        write_ms = elapsed.as_secs_f64() * 1e3,
        "Page written."
    );
}

/// The run's end could not be recorded (the database failed): it counts as
/// failed, for the database.
pub(super) fn run_unrecorded(job: &str, counts: &Counts, elapsed: Duration) {
    metrics::run_finished(job, RunStatus::Failed, counts, elapsed);
    metrics::run_failed(job, FailureReason::Database);
}

/// The run ended and its row says so: the metrics of its end, and one line
/// with its counts: info, warn for an interrupted run or one with rejects,
/// or error with the error chain (logged here, where the run's failure is
/// handled, and only here).
pub(super) fn run_finished(report: &RunReport) {
    let job = &report.job;
    metrics::run_finished(job, report.status, &report.counts, report.elapsed);
    metrics::records_expected(job, report.expected);
    if let Some(reason) = report.failure {
        metrics::run_failed(job, reason);
    }

    macro_rules! finished {
        ($level:ident, $($extra:tt)*) => {
            tracing::$level!(
                status = report.status.as_str(),
                fetched = report.counts.fetched,
                inserted = report.counts.inserted,
                updated = report.counts.updated,
                unchanged = report.counts.unchanged,
                duplicate = report.counts.duplicate,
                rejected = report.counts.rejected,
                deleted = report.counts.deleted,
                pages = report.counts.pages,
                expected = report.expected,
                seconds = report.elapsed.as_secs_f64(),
                first_reject = report.first_reject.as_deref(),
                $($extra)*
            )
        };
    }
    let reason = report.failure.map(FailureReason::as_str);
    if report.status == RunStatus::Interrupted {
        // A graceful stop is not an error: the pages written are committed
        // and the next run carries on.
        finished!(
            warn,
            "Run interrupted by shutdown; the pages written so far are committed."
        );
        return;
    }
    match (&report.error, report.counts.rejected) {
        (None, 0) => finished!(info, "Run finished."),
        (None, _) => finished!(
            warn,
            "Run finished with rejects; `apisync rejects` lists them."
        ),
        (Some(error), _) => finished!(error, reason, error = %error, "Run failed."),
    }
}

/// The deletion step marked or removed `deleted` stored keys the run did
/// not see.
pub(super) fn deletions_committed(job: &str, deleted: u64, removed: bool, elapsed: Duration) {
    metrics::records_counted(
        job,
        &Counts {
            deleted,
            ..Counts::default()
        },
    );
    tracing::info!(
        deleted,
        seconds = elapsed.as_secs_f64(),
        "{}",
        if removed {
            "Deleted the stored keys the API no longer returns."
        } else {
            "Marked deleted the stored keys the API no longer returns."
        }
    );
}
