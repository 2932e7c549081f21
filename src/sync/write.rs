//! The write stage: plan and commit the prepared batches, in order.
//!
//! Each committed batch adds its own counts to the run's row in its own
//! transaction (a batch with nothing else to write commits just those), so
//! what `apisync.runs` and the metrics say grows batch by batch, and a
//! killed process loses no count of what it committed. The run's counts are
//! the sum of what was committed.

use std::time::Instant;

use tokio::sync::mpsc;

use super::batching::{Ready, join_waiting};
use super::error::SyncError;
use super::{Job, SyncContext, events};
use crate::run::{Counts, RunId};
use crate::store::{BatchWrite, JobLock};

/// What the writer learned of a run: the counts it committed, the total the
/// API stated, and the reason of the first reject.
#[derive(Debug, Default)]
pub(super) struct Committed {
    pub counts: Counts,
    pub expected: Option<u64>,
    pub first_reject: Option<String>,
}

/// Where the batches go: the run's row and the job's table.
pub(super) struct Target<'a> {
    pub job: &'a Job,
    pub ctx: &'a SyncContext,
    pub lock: &'a mut JobLock,
    pub run: RunId,
    /// The table held no row when the run began (see `Store::plan`).
    pub empty_at_start: bool,
    /// The history table held no version when the run began.
    pub fresh_history: bool,
}

/// Plans and commits the batches `ready` yields, until it closes.
pub(super) async fn write_batches(
    target: Target<'_>,
    committed: &mut Committed,
    mut ready: mpsc::Receiver<Ready>,
) -> Result<(), SyncError> {
    let Target {
        job,
        ctx,
        lock,
        run,
        empty_at_start,
        fresh_history,
    } = target;
    // A batch taken from the queue that could not join the previous
    // transaction; it starts the next one.
    let mut held_back: Option<Ready> = None;
    loop {
        // Between batches, shutdown wins; a batch once taken is written whole.
        let next = match held_back.take() {
            Some(next) => Some(next),
            None => tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Err(SyncError::Interrupted),
                next = ready.recv() => next,
            },
        };
        let Some(next) = next else {
            return Ok(());
        };
        let (next, held) = join_waiting(next, || ready.try_recv().ok());
        held_back = held;
        let Ready {
            number,
            batch,
            watermark,
            expected,
        } = next;
        committed.expected = expected.or(committed.expected);
        if committed.first_reject.is_none() {
            committed.first_reject = batch.rejects.first().map(|r| r.reason.clone());
        }
        let started = Instant::now();
        let plan = ctx
            .store
            .plan(&job.name, &job.table, &batch, empty_at_start)
            .await?;
        let planned = started.elapsed();
        if plan.needs_commit(watermark.is_some()) {
            // Writing after losing the lock could race another process.
            lock.still_held().await?;
        }
        ctx.store
            .commit(&BatchWrite {
                job: &job.name,
                table: &job.table,
                run,
                batch: &batch,
                plan: &plan,
                watermark: watermark.as_ref(),
                fresh_history,
            })
            .await?;
        committed.counts += plan.counts;
        events::batch_committed(&job.name, number, &plan.counts, planned, started.elapsed());
    }
}
