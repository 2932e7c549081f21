//! `apisync verify`: the whole source read (no `since`), compared with the
//! table, nothing written. The same fetch and prepare stages as a run; in
//! place of the writer, each batch is planned (the lookups a write would
//! make) and its plan read as a difference: a key the plan would insert is
//! missing from the table, one it would update differs, one it would restore
//! is marked deleted although the API returns it. Once every page is read,
//! the live stored keys the run did not see are the ones the API no longer
//! returns. A row marked deleted that the API does not return agrees.

use tokio::sync::mpsc;

use super::batching::Ready;
use super::fetch;
use super::prepare::{self, Preparer};
use super::{Job, Stage, SyncContext, SyncError};
use crate::store::{JobLock, StoreError, TableSpec};

/// The keys kept of each kind of difference; the counts are always whole.
pub const KEYS_SHOWN: usize = 1_000;

/// One kind of difference: how many keys, and the first [`KEYS_SHOWN`].
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Keys {
    pub count: u64,
    pub keys: Vec<Vec<String>>,
}

impl Keys {
    fn add(&mut self, key: &[String]) {
        self.count += 1;
        if self.keys.len() < KEYS_SHOWN {
            self.keys.push(key.to_vec());
        }
    }
}

/// What `verify` found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Comparison {
    pub job: String,
    /// Distinct keys the source returned.
    pub read: u64,
    /// Keys the source returns that the table lacks.
    pub missing: Keys,
    /// Live stored keys the source no longer returns.
    pub gone: Keys,
    /// Keys stored with other content than the source returns.
    pub differ: Keys,
    /// Keys the table marks deleted but the source returns.
    pub marked_but_returned: Keys,
}

impl Comparison {
    pub fn agrees(&self) -> bool {
        self.missing.count + self.gone.count + self.differ.count + self.marked_but_returned.count
            == 0
    }
}

/// Why `verify` could not compare.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The source could not be read completely (exit 3).
    #[error("the source could not be read completely: {0}")]
    Source(SyncError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("table {0} does not exist yet: nothing is archived; `apisync sync` creates it")]
    NoTable(String),
}

/// Compares the whole source with the job's table, holding the job's lock
/// (taken by the caller) so that no run writes meanwhile.
pub async fn verify(
    job: &Job,
    ctx: &SyncContext,
    _lock: &mut JobLock,
) -> Result<Comparison, VerifyError> {
    let Some(table) = ctx.store.existing_table(&job.table).await? else {
        return Err(VerifyError::NoTable(job.table.name.to_string()));
    };
    let pages = job.source.pages(&ctx.client, &ctx.redactor, None);
    let (to_prepare, fetched) = fetch::queue();
    let (to_compare, ready) = mpsc::channel(super::QUEUED_BATCHES);
    let fetching = Stage(tokio::spawn(fetch::fetch_pages(
        pages,
        ctx.cancel.clone(),
        to_prepare,
    )));
    // No watermark tracker: verify reads everything and moves nothing.
    let preparer = Preparer::new(job, ctx.store.limits(), None, ctx.redactor.clone());
    let preparing = Stage(tokio::task::spawn_blocking(move || {
        prepare::prepare_pages(preparer, fetched, to_compare)
    }));
    let mut comparison = Comparison {
        job: job.name.clone(),
        ..Comparison::default()
    };
    let compared = compare_batches(job, ctx, &table, ready, &mut comparison).await;
    fetching.call_off();
    let prepared = preparing.finish().await;
    let fetched = fetching.finish().await;
    compared?;
    let keys_read = prepared.map_err(VerifyError::Source)?;
    fetched.map_err(VerifyError::Source)?;
    let Some(keys_read) = keys_read else {
        return Err(VerifyError::Source(SyncError::Interrupted));
    };
    comparison.read = keys_read.len() as u64;
    let gone = ctx
        .store
        .unseen_keys(&table, &keys_read, KEYS_SHOWN)
        .await?;
    // Added to the live keys tombstones named: those count as read, so the
    // table's unseen keys never include them.
    comparison.gone.count += gone.count;
    let room = KEYS_SHOWN.saturating_sub(comparison.gone.keys.len());
    comparison
        .gone
        .keys
        .extend(gone.keys.into_iter().take(room));
    Ok(comparison)
}

/// Plans each batch against the table and notes its differences.
async fn compare_batches(
    job: &Job,
    ctx: &SyncContext,
    table: &TableSpec,
    mut ready: mpsc::Receiver<Ready>,
    comparison: &mut Comparison,
) -> Result<(), VerifyError> {
    loop {
        let next = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => {
                return Err(VerifyError::Source(SyncError::Interrupted));
            }
            next = ready.recv() => next,
        };
        let Some(Ready { batch, .. }) = next else {
            return Ok(());
        };
        let plan = ctx.store.plan(&job.name, table, &batch, false).await?;
        let kinds = [
            (&plan.inserts, &mut comparison.missing),
            (&plan.updates, &mut comparison.differ),
            (&plan.restores, &mut comparison.marked_but_returned),
            // A tombstone for a live stored key: the API says it is gone.
            (&plan.tombstoned, &mut comparison.gone),
        ];
        for (rows, keys) in kinds {
            // A key read again later in the run was compared the first time.
            for &row in rows.iter().filter(|&&row| !batch.rows[row].repeat) {
                keys.add(&batch.rows[row].record.key);
            }
        }
    }
}
