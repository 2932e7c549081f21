//! One run of one job, recorded in `apisync.runs` from start to finish.
//!
//! A run is a pipeline of stages joined by bounded queues, each in its own
//! module, read from the source to the store:
//!
//! ```text
//! fetch (task) ─1─► prepare (blocking thread) ─QUEUED─► write (this task)
//!   pages of the      parse, key, hash, reject;        join waiting batches
//!   source, one       repeats and the repeated-page    (batching), plan,
//!   ahead             guard; the verdict at the end    commit with counts
//! ```
//!
//! This module holds the run's lifecycle: the job's lock, the run's row,
//! the stages started and joined, the outcome recorded and reported
//! (`events`). `job` checks a job's settings once; `error` says why a run
//! failed.
//!
//! **Boundary:** the only module that knows both the API side (`source`) and
//! the database side (`store`). The types the two share live below both
//! (`batch`, `run`).

mod batching;
mod error;
mod events;
mod fetch;
mod job;
mod prepare;
mod repeat_guard;
mod verify;
mod write;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use self::error::SyncError;
pub use self::job::Job;
use self::prepare::Preparer;
pub use self::verify::{Comparison, KEYS_SHOWN, Keys, VerifyError, verify};
use self::write::{Committed, Target};
use crate::config::Deletions;
use crate::redact::Redactor;
use crate::run::{Counts, FailureReason, RunId, RunStatus};
use crate::seen_keys::SeenKeys;
use crate::source::ApiClient;
use crate::store::{JobLock, KeyDeletion, RunEnd, Store, StoreError};

/// Batches prepared ahead of the writer. Each holds its records as text
/// (about the size of the response), so a few cost a few megabytes at most.
const QUEUED_BATCHES: usize = 3;

/// The runs of this process that have started and not yet finished, so a
/// shutdown that runs out of time can still mark them `interrupted`.
#[derive(Debug, Clone, Default)]
pub struct RunsInFlight(Arc<Mutex<HashSet<RunId>>>);

impl RunsInFlight {
    fn insert(&self, run: RunId) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(run);
    }

    fn remove(&self, run: RunId) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
    }

    /// The ids of the runs still in flight.
    pub fn ids(&self) -> Vec<RunId> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// What a run needs besides the job; cheap to clone.
#[derive(Debug, Clone)]
pub struct SyncContext {
    pub store: Store,
    pub client: ApiClient,
    pub redactor: Redactor,
    /// Cancelled on shutdown. A run checks it between pages and while
    /// waiting for a response, never while writing: the page being written
    /// commits, then the run stops as `interrupted`.
    pub cancel: CancellationToken,
    pub in_flight: RunsInFlight,
}

/// The outcome of one run, as recorded in `apisync.runs`.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    /// `None` when the run was skipped (another process held the job).
    pub run_id: Option<RunId>,
    pub status: RunStatus,
    pub counts: Counts,
    pub elapsed: Duration,
    /// The error chain, secrets redacted, when the run failed.
    pub error: Option<String>,
    /// Why it failed, for the metric label.
    pub failure: Option<FailureReason>,
    /// The record count the API stated, when it states one.
    pub expected: Option<u64>,
    /// The reason of the run's first reject, secrets redacted.
    pub first_reject: Option<String>,
}

/// Applies `runs_retention` to `job` after a run: deletes its runs and
/// rejects older than `retention`, and says how many. A failure is logged,
/// never the run's: the archive is not at stake.
pub async fn prune_history(store: &Store, job: &str, retention: Duration) {
    match store.prune(job, retention).await {
        Ok((0, 0)) => {}
        Ok((runs, rejects)) => tracing::info!(
            job,
            runs,
            rejects,
            retention = %humantime::format_duration(retention),
            "Deleted runs and rejects older than runs_retention."
        ),
        Err(e) => tracing::warn!(
            job,
            error = %crate::error_chain(&e),
            "Could not delete old runs and rejects (runs_retention); the next run tries again."
        ),
    }
}

/// Runs `job` once, start to finish.
///
/// A failure while fetching or writing ends the run as `failed` with its error
/// recorded; cancellation of `ctx.cancel` ends it as `interrupted`. Either way
/// the pages committed before stay. The returned report says which.
///
/// # Errors
/// Only when the run cannot be recorded at all (the database is unreachable
/// when the run starts or ends).
#[tracing::instrument(skip_all, fields(job = %job.name, run_id))]
pub async fn run_once(job: &Job, ctx: &SyncContext) -> Result<RunReport, StoreError> {
    let started = Instant::now();
    let Some(mut lock) = ctx.store.try_lock_job(&job.name).await? else {
        events::run_skipped(&job.name);
        return Ok(RunReport {
            job: job.name.clone(),
            run_id: None,
            status: RunStatus::Skipped,
            counts: Counts::default(),
            elapsed: started.elapsed(),
            error: None,
            failure: None,
            expected: None,
            first_reject: None,
        });
    };
    let result = run_locked(job, ctx, &mut lock, started).await;
    lock.release().await;
    result
}

/// The run proper, with the job's lock held.
async fn run_locked(
    job: &Job,
    ctx: &SyncContext,
    lock: &mut JobLock,
    started: Instant,
) -> Result<RunReport, StoreError> {
    // Holding the lock, no live process runs this job: a `running` row is
    // what a process that died left behind.
    events::abandoned_runs_closed(ctx.store.close_abandoned_runs(&job.name).await?);
    let run_id = ctx.store.start_run(&job.name).await?;
    ctx.in_flight.insert(run_id);
    tracing::Span::current().record("run_id", run_id);
    events::run_started(&job.name);

    let mut committed = Committed::default();
    let result = transfer(job, ctx, lock, run_id, &mut committed).await;
    let status = match &result {
        Ok(()) => RunStatus::Succeeded,
        Err(SyncError::Interrupted) => RunStatus::Interrupted,
        // A write that failed once shutdown began was, as a rule, ended by
        // it (a shutdown that gives up on a write ends its session): the run
        // was interrupted, and its error says how. Recording it `failed`
        // would race the shutdown's own `interrupted` mark for the row.
        Err(SyncError::Store(_)) if ctx.cancel.is_cancelled() => RunStatus::Interrupted,
        Err(_) => RunStatus::Failed,
    };
    let failure = match status {
        RunStatus::Interrupted => None,
        _ => result.as_ref().err().and_then(SyncError::reason),
    };
    let error = result
        .err()
        .map(|e| ctx.redactor.redact(&crate::error_chain(&e)));
    let end = RunEnd {
        status,
        error: error.as_deref(),
        expected: committed.expected,
    };
    let recorded = ctx.store.finish_run(run_id, &end).await;
    let elapsed = started.elapsed();
    if let Err(e) = recorded {
        // Left in `in_flight`: a shutdown still tries to mark it.
        events::run_unrecorded(&job.name, &committed.counts, elapsed);
        return Err(e);
    }
    ctx.in_flight.remove(run_id);

    let report = RunReport {
        job: job.name.clone(),
        run_id: Some(run_id),
        status,
        counts: committed.counts,
        elapsed,
        error,
        failure,
        expected: committed.expected,
        first_reject: committed.first_reject.map(|r| ctx.redactor.redact(&r)),
    };
    events::run_finished(&report);
    Ok(report)
}

/// Moves the job's pages into its table: the stages, started and joined.
/// While one batch is written, the next pages are fetched, parsed and hashed;
/// the queues between the stages keep memory bounded.
async fn transfer(
    job: &Job,
    ctx: &SyncContext,
    lock: &mut JobLock,
    run: RunId,
    committed: &mut Committed,
) -> Result<(), SyncError> {
    // Nothing is written yet: shutdown wins over a statement waiting on a
    // lock another session holds on the table.
    until_cancelled(ctx, ctx.store.prepare_table(&job.table)).await?;
    let empty_at_start = until_cancelled(ctx, ctx.store.table_is_empty(&job.table)).await?;
    let fresh_history = until_cancelled(ctx, ctx.store.history_is_empty(&job.table)).await?;
    let tracker = match &job.incremental {
        Some(incremental) => Some(
            incremental
                .tracker(until_cancelled(ctx, ctx.store.watermark(&job.name)).await?)
                .with_redactor(ctx.redactor.clone()),
        ),
        None => None,
    };
    let reads_all = until_cancelled(ctx, reads_everything(job, &ctx.store)).await?;
    let since = match (&job.incremental, &tracker) {
        (Some(incremental), Some(tracker)) if !reads_all => {
            tracker.watermark().and_then(|w| incremental.since(w))
        }
        _ => None,
    };
    if let Some(since) = &since {
        tracing::info!(
            param = %since.param,
            since = %since.value,
            "Fetching changes since the watermark."
        );
    } else if job.incremental.is_some() {
        tracing::info!("Reading the whole collection (a full run: no watermark applied).");
    }
    // Only a run that reads everything can tell a deleted record from an
    // unchanged one; the guard measures against the live rows before it.
    let live_before = if job.deletions != Deletions::Ignore && since.is_none() {
        Some(until_cancelled(ctx, ctx.store.live_rows(&job.table)).await?)
    } else {
        None
    };
    let pages = job.source.pages(&ctx.client, &ctx.redactor, since.as_ref());

    let (to_prepare, fetched) = fetch::queue();
    let (to_write, ready) = tokio::sync::mpsc::channel(QUEUED_BATCHES);
    let fetching = Stage(tokio::spawn(fetch::fetch_pages(
        pages,
        ctx.cancel.clone(),
        to_prepare,
    )));
    let preparer = Preparer::new(job, ctx.store.limits(), tracker, ctx.redactor.clone());
    // On a thread of its own: reading a page takes milliseconds of CPU, and
    // its parsed values are dropped there too. It ends when its queues close
    // (the writer's error, or the fetch ending), so it never outlives the run.
    let preparing = Stage(tokio::task::spawn_blocking(move || {
        prepare::prepare_pages(preparer, fetched, to_write)
    }));
    let target = Target {
        job,
        ctx,
        lock,
        run,
        empty_at_start,
        fresh_history,
    };
    let written = write::write_batches(target, committed, ready).await;
    // The writer is done: the prepare stage has stopped (or stops at its
    // next hand-over), so a page still being fetched, retries and all, would
    // never be read. A fetch that already failed keeps its error.
    fetching.call_off();
    let prepared = preparing.finish().await;
    let fetched = fetching.finish().await;
    // A later stage's error comes first: an earlier one only stopped
    // because of it (its queue closed).
    written?;
    let keys_read = prepared?;
    fetched?;

    // Every page read, every check passed, every batch committed: the run
    // saw the whole collection, so a stored key it did not see is gone.
    let Some(keys_read) = keys_read else {
        return Ok(());
    };
    if let Some(live_before) = live_before {
        let gone = Gone {
            job,
            ctx,
            run,
            live_before,
            keys_read: &keys_read,
        };
        gone.act(lock, committed).await?;
    }
    if job.incremental.is_some()
        && since.is_none()
        && let Err(e) = ctx.store.save_full_run(&job.name, run).await
    {
        // What the run committed stands (its deletions too): a run that
        // fails here would say `failed` after changing the table. The next
        // run is a full one again, which is safe.
        tracing::warn!(error = %e, "Could not record the full run; the next run reads everything again.");
    }
    Ok(())
}

/// Whether this run reads the whole collection: every run of a job that is
/// not incremental; for an incremental one, a run asked to (`--full`), the
/// first (no watermark yet: then no `since` is sent either), and one due
/// by `full_refresh` since the last complete full run.
async fn reads_everything(job: &Job, store: &Store) -> Result<bool, StoreError> {
    if job.incremental.is_none() || job.full {
        return Ok(true);
    }
    let Some(every) = job.full_refresh else {
        return Ok(false);
    };
    let due = match store.last_full_run(&job.name).await? {
        None => true,
        // A time ahead of the clock (it was set back) is due too: else full
        // runs, and with them deletions, would stop until it caught up.
        Some(at) => chrono::Utc::now()
            .signed_duration_since(at)
            .to_std()
            .map_or(true, |since| since >= every),
    };
    Ok(due)
}

/// The deletion step of a complete full run.
struct Gone<'a> {
    job: &'a Job,
    ctx: &'a SyncContext,
    run: RunId,
    live_before: u64,
    keys_read: &'a SeenKeys,
}

impl Gone<'_> {
    /// Marks or removes the stored keys the run did not see, unless they
    /// are more than `max_deleted` allows: then nothing changes and the run
    /// fails (reason `deletions`), keeping the pages it committed.
    async fn act(self, lock: &mut JobLock, committed: &mut Committed) -> Result<(), SyncError> {
        let Gone {
            job,
            ctx,
            run,
            live_before,
            keys_read,
        } = self;
        if ctx.cancel.is_cancelled() {
            return Err(SyncError::Interrupted);
        }
        let started = Instant::now();
        let allowed = job.max_deleted.allowed_of(live_before);
        let keep = usize::try_from(allowed).unwrap_or(usize::MAX);
        // Nothing is written yet: shutdown wins over the read.
        let unseen =
            until_cancelled(ctx, ctx.store.unseen_keys(&job.table, keys_read, keep)).await?;
        let remove = job.deletions == Deletions::Delete;
        if unseen.count > allowed {
            return Err(SyncError::Deletions {
                gone: unseen.count,
                live: live_before,
                max_deleted: job.max_deleted,
                allowed,
                done: if remove { "deleted" } else { "marked deleted" },
            });
        }
        if unseen.count == 0 {
            return Ok(());
        }
        // Writing after losing the lock could race another process.
        lock.still_held().await?;
        let deleted = ctx
            .store
            .delete_keys(&KeyDeletion {
                table: &job.table,
                run,
                keys: &unseen.keys,
                remove,
            })
            .await?;
        committed.counts.deleted += deleted;
        events::deletions_committed(&job.name, deleted, remove, started.elapsed());
        Ok(())
    }
}

/// `work`, unless shutdown comes first: for statements before the first
/// write, which may wait on a lock without limit but have nothing to commit.
async fn until_cancelled<T>(
    ctx: &SyncContext,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, SyncError> {
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Err(SyncError::Interrupted),
        done = work => Ok(done?),
    }
}

/// A stage's task, aborted if the run is dropped before it ends (a blocking
/// one cannot be: it ends once its queues close).
struct Stage<T>(tokio::task::JoinHandle<Result<T, SyncError>>);

impl<T: Default> Stage<T> {
    async fn finish(mut self) -> Result<T, SyncError> {
        let result = (&mut self.0).await;
        match result {
            Ok(result) => result,
            // Called off by `call_off`: its work was no longer needed.
            Err(e) if e.is_cancelled() => Ok(T::default()),
            // A panic in a stage is a bug; it ends the run, not the process.
            Err(e) => Err(SyncError::Stage(e.to_string())),
        }
    }

    /// Stops the stage at its next await, unless it has ended already (then
    /// `finish` still returns its result).
    fn call_off(&self) {
        self.0.abort();
    }
}

impl<T> Drop for Stage<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
