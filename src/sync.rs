//! One run of one job: pages → records → de-duplication → page writes, with
//! the run recorded in `apisync.runs` from start to finish.
//!
//! **Boundary:** the only module that knows both the API side (`source`) and
//! the database side (`store`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3;

use crate::config::{JobSettings, Threshold};
use crate::incremental::{Incremental, WatermarkTracker};
use crate::metrics;
use crate::record::ContentHash;
use crate::record::RecordShape;
use crate::redact::Redactor;
use crate::run::{Counts, FailureReason, RunId, RunStatus};
use crate::seen_keys::SeenKeys;
use crate::source::{
    ApiClient, IfRepeated, Page, SourceError, SourceErrorKind, SourceSpec, Stated,
};
use crate::store::{
    Batch, BatchRow, BatchWrite, Ident, JobLock, RunEnd, Store, StoreError, StoreLimits, TableSpec,
};

/// A job, checked and ready to run any number of times.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub table: TableSpec,
    shape: Arc<RecordShape>,
    source: SourceSpec,
    incremental: Option<Incremental>,
    max_rejected: Threshold,
}

impl Job {
    /// # Errors
    /// What is wrong with the job; configuration validation catches all of
    /// these first, so this only fails for settings built by hand.
    pub fn from_settings(settings: &JobSettings) -> Result<Self, String> {
        let shape = RecordShape::with_key_entries(&settings.key, &settings.hash_exclude)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        let table = TableSpec::new(Ident::table(&settings.table)?, shape.key_fields());
        let incremental = settings
            .incremental
            .as_ref()
            .map(Incremental::new)
            .transpose()
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        Ok(Self {
            name: settings.name.clone(),
            table,
            shape: Arc::new(shape),
            source: SourceSpec::new(settings)?,
            incremental,
            max_rejected: settings.max_rejected,
        })
    }
}

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

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "page {page} holds exactly the records of page {previous}: the API seems to ignore \
         the pagination parameters; stopping instead of looping"
    )]
    RepeatedPage { page: u64, previous: u64 },
    #[error("interrupted by shutdown; the pages written so far are committed")]
    Interrupted,
    #[error("reading the pages failed unexpectedly: {0}")]
    Reader(String),
    #[error(
        "incomplete: the API states {expected} records{}, but the run read {read} distinct \
         keys{}; the rows read are stored, the watermark did not move",
        later_note(*.expected, *.last),
        rejects_note(*.rejected)
    )]
    Incomplete {
        /// The count stated first, when the run began.
        expected: u64,
        /// The count stated last.
        last: u64,
        read: u64,
        /// Distinct rejects.
        rejected: u64,
    },
    #[error(
        "incomplete: the API states {stated} pages, but the walk ended after {read} pages \
         with records; the rows read are stored, the watermark did not move"
    )]
    IncompletePages { stated: u64, read: u64 },
    #[error(
        "{rejected} of {fetched} records were rejected, more than max_rejected = \
         {max_rejected} allows (the first: {first}); the good rows are stored; \
         `apisync rejects {job}` lists the rejects"
    )]
    Rejects {
        job: String,
        rejected: u64,
        fetched: u64,
        max_rejected: Threshold,
        first: String,
    },
    #[error("{0}")]
    Watermark(String),
}

fn later_note(first: u64, last: u64) -> String {
    if first == last {
        String::new()
    } else {
        format!(" (when the run began; {last} at its end)")
    }
}

fn rejects_note(rejected: u64) -> String {
    if rejected == 0 {
        String::new()
    } else {
        format!(" and rejected {rejected} records")
    }
}

impl SyncError {
    /// The `reason` label of a failed run; `None` for an interrupted one.
    pub fn reason(&self) -> Option<FailureReason> {
        Some(match self {
            SyncError::Source(error) => match error.kind {
                SourceErrorKind::Fetch { .. } | SourceErrorKind::Head(_) => FailureReason::Fetch,
                SourceErrorKind::Records { .. }
                | SourceErrorKind::Pagination(_)
                | SourceErrorKind::Loop { .. }
                | SourceErrorKind::TooManyPages { .. } => FailureReason::Pagination,
            },
            SyncError::Store(_) => FailureReason::Database,
            SyncError::RepeatedPage { .. } | SyncError::Watermark(_) => FailureReason::Pagination,
            SyncError::Interrupted => return None,
            SyncError::Reader(_) => FailureReason::Internal,
            SyncError::Incomplete { .. } | SyncError::IncompletePages { .. } => {
                FailureReason::Incomplete
            }
            SyncError::Rejects { .. } => FailureReason::Rejects,
        })
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
        metrics::runs_skipped(&job.name, 1);
        tracing::info!("Another process is running this job; skipped.");
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
    let abandoned = ctx.store.close_abandoned_runs(&job.name).await?;
    if abandoned > 0 {
        tracing::warn!(
            runs = abandoned,
            "Closed runs left running by a process that exited."
        );
    }
    let run_id = ctx.store.start_run(&job.name).await?;
    ctx.in_flight.insert(run_id);
    tracing::Span::current().record("run_id", run_id);
    metrics::run_started(&job.name);

    let mut tally = Tally::default();
    let result = copy_pages(job, ctx, lock, run_id, &mut tally).await;
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
        expected: tally.expected,
    };
    let recorded = ctx.store.finish_run(run_id, &end).await;
    let elapsed = started.elapsed();
    let counts = tally.all;
    if let Err(e) = recorded {
        // Left in `in_flight`: a shutdown still tries to mark it.
        metrics::run_finished(&job.name, RunStatus::Failed, &counts, elapsed);
        metrics::run_failed(&job.name, FailureReason::Database);
        return Err(e);
    }
    ctx.in_flight.remove(run_id);
    metrics::run_finished(&job.name, status, &counts, elapsed);
    metrics::records_expected(&job.name, tally.expected);
    if let Some(reason) = failure {
        metrics::run_failed(&job.name, reason);
    }

    let report = RunReport {
        job: job.name.clone(),
        run_id: Some(run_id),
        status,
        counts,
        elapsed,
        error,
        failure,
        expected: tally.expected,
        first_reject: tally.first_reject.map(|r| ctx.redactor.redact(&r)),
    };
    log_finished(&report);
    Ok(report)
}

/// What the writer learned of a run: the counts it committed, the total the
/// API stated, and the reason of the first reject.
#[derive(Debug, Default)]
struct Tally {
    all: Counts,
    expected: Option<u64>,
    first_reject: Option<String>,
}

/// A page read, checked and ready to write.
struct Prepared {
    /// The page's number (the last one's, once pages are appended).
    number: u64,
    batch: Batch,
    /// Set on the last page of an incremental run that may move it: the
    /// watermark to commit.
    watermark: Option<serde_json::Value>,
    /// The record count the API had stated when the page was read.
    expected: Option<u64>,
}

impl Prepared {
    /// Appends the next page, unless it shares a key with this batch (then
    /// it is handed back, to be written after it).
    fn append(&mut self, next: Prepared) -> Result<(), Box<Prepared>> {
        let Prepared {
            number,
            batch,
            watermark,
            expected,
        } = next;
        match self.batch.append(batch) {
            Ok(()) => {
                self.number = number;
                self.watermark = watermark;
                self.expected = expected;
                Ok(())
            }
            Err(batch) => Err(Box::new(Prepared {
                number,
                batch,
                watermark,
                expected,
            })),
        }
    }
}

/// Pages read ahead of the writer. Each holds its records as text (about the
/// size of the response), so three cost a few megabytes at most.
const QUEUED_PAGES: usize = 3;

/// The writer appends waiting pages to the one it writes up to this many rows.
const MAX_ROWS_PER_COMMIT: usize = 4_000;

/// A page of more records than this, or of more than [`PART_BYTES`] of
/// them, is read and written in parts of at most that, so memory holds a
/// few parts' rows and not the page's: read whole, a 21 MB page of 1.5
/// million small records took 531 MiB. Ordinary pages are read whole.
const PART_ROWS: usize = 5_000;
const PART_BYTES: usize = 4 << 20;

/// Reads and writes the pages, overlapped: while one page is being written,
/// the next are fetched, parsed and hashed (a queue of [`QUEUED_PAGES`]
/// between them keeps memory bounded).
async fn copy_pages(
    job: &Job,
    ctx: &SyncContext,
    lock: &mut JobLock,
    run_id: RunId,
    tally: &mut Tally,
) -> Result<(), SyncError> {
    // Nothing is written yet: shutdown wins over a statement waiting on a
    // lock another session holds on the table.
    until_cancelled(ctx, ctx.store.prepare_table(&job.table)).await?;
    let empty_at_start = until_cancelled(ctx, ctx.store.table_is_empty(&job.table)).await?;
    let tracker = match &job.incremental {
        Some(incremental) => Some(
            incremental
                .tracker(until_cancelled(ctx, ctx.store.watermark(&job.name)).await?)
                .with_redactor(ctx.redactor.clone()),
        ),
        None => None,
    };
    let since = match (&job.incremental, &tracker) {
        (Some(incremental), Some(tracker)) => {
            tracker.watermark().and_then(|w| incremental.since(w))
        }
        _ => None,
    };
    if let Some((param, value)) = &since {
        tracing::info!(param = %param, since = %value, "Fetching changes since the watermark.");
    }
    let since: Vec<(String, String)> = since
        .into_iter()
        .map(|(param, value)| (param.to_owned(), value))
        .collect();
    let (sender, receiver) = tokio::sync::mpsc::channel(QUEUED_PAGES);
    // The reader gets a task of its own so that parsing and hashing the next
    // page runs on another core while this one writes; it ends with the run
    // (the guard aborts it if the run is dropped half-way).
    let reader = ReaderTask(tokio::spawn({
        let (job, ctx) = (job.clone(), ctx.clone());
        async move {
            let since: Vec<(&str, String)> =
                since.iter().map(|(p, v)| (p.as_str(), v.clone())).collect();
            read_pages(&job, &ctx, &since, tracker, sender).await
        }
    }));
    let written = write_pages(job, ctx, lock, run_id, empty_at_start, tally, receiver).await;
    let read = reader.finish().await;
    // A write error comes first: the reader only stopped because of it.
    written?;
    read
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

/// The reader's task, aborted if the run is dropped before it ends.
struct ReaderTask(tokio::task::JoinHandle<Result<(), SyncError>>);

impl ReaderTask {
    async fn finish(mut self) -> Result<(), SyncError> {
        let result = (&mut self.0).await;
        match result {
            Ok(read) => read,
            // A panic in the reader is a bug; it ends the run, not the process.
            Err(e) => Err(SyncError::Reader(e.to_string())),
        }
    }
}

impl Drop for ReaderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fetches, reads and checks the pages, handing each to the writer.
///
/// Two stages overlap: while page N is read (hashed, checked) on the blocking
/// pool, page N+1 is fetched and parsed. Page N goes to the writer once page
/// N+1's response is in or has failed for good; a failure is returned only
/// after the pages before it were handed over. Once the last page is read,
/// the run's verdict (see [`ReaderState::verdict`]) decides whether it may
/// succeed; if not, the last page is still written, without the watermark.
async fn read_pages(
    job: &Job,
    ctx: &SyncContext,
    since: &[(&str, String)],
    tracker: Option<WatermarkTracker>,
    writer: tokio::sync::mpsc::Sender<Prepared>,
) -> Result<(), SyncError> {
    let mut pages = job.source.pages(&ctx.client, &ctx.redactor, since);
    let mut stage = ReaderStage::Idle(Box::new(ReaderState {
        redactor: ctx.redactor.clone(),
        ..ReaderState::new(job, ctx.store.limits(), tracker)
    }));
    loop {
        // Waiting for a response (retries included) is abandoned on shutdown:
        // nothing of that page is written yet.
        let fetch_started = Instant::now();
        let next = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Err(SyncError::Interrupted),
            next = pages.next_page() => next,
        };
        let state = match stage {
            ReaderStage::Idle(state) => state,
            ReaderStage::Reading(reading) => {
                let (step, state) = reading
                    .await
                    .map_err(|e| SyncError::Reader(e.to_string()))?;
                if let Some(prepared) = step.prepared
                    && writer.send(prepared).await.is_err()
                {
                    // The writer stopped; its error says why.
                    return Ok(());
                }
                if let Some(failure) = step.failure {
                    return Err(failure);
                }
                if step.ends {
                    // The last page, or one the API served again past its
                    // end: `next`, a request past that, is not read,
                    // whatever it answered.
                    return Ok(());
                }
                state
            }
        };
        let Some(page) = next? else {
            return Ok(());
        };
        tracing::debug!(
            page = page.number,
            fetch_ms = fetch_started.elapsed().as_secs_f64() * 1e3,
            "Page fetched."
        );
        let stated = pages.stated();
        // Reading a page's records takes milliseconds of CPU: on the blocking
        // pool, like the parse, so the runtime's workers stay free for the
        // writer's I/O. The parsed values are dropped there too.
        let mut state = state;
        let writer = writer.clone();
        stage = ReaderStage::Reading(tokio::task::spawn_blocking(move || {
            let step = state.prepare(page, stated, &writer);
            (step, state)
        }));
    }
}

/// The reader between two fetches: idle, or reading a page on the blocking
/// pool (which holds its state until it is done).
enum ReaderStage {
    Idle(Box<ReaderState>),
    Reading(tokio::task::JoinHandle<(ReadStep, Box<ReaderState>)>),
}

/// One page, read.
struct ReadStep {
    /// `None` when the page fails the run before any of it is written.
    prepared: Option<Prepared>,
    /// No page follows this one.
    ends: bool,
    /// The run fails once this page is written.
    failure: Option<SyncError>,
}

/// What the reader carries from one page to the next.
struct ReaderState {
    job: String,
    shape: Arc<RecordShape>,
    limits: Option<StoreLimits>,
    /// Reject reasons are redacted before they are stored.
    redactor: Redactor,
    max_rejected: Threshold,
    /// Every key of the run so far.
    seen: SeenKeys,
    tracker: Option<WatermarkTracker>,
    /// The previous page's number and key fingerprint.
    previous_page: Option<(u64, u128)>,
    /// Records read and rejected so far, and the first reject's reason.
    fetched: u64,
    rejected: u64,
    first_reject: Option<String>,
    /// The distinct rejects: a reject served twice is one record of the
    /// source, as a key seen twice is.
    distinct_rejects: HashSet<ContentHash>,
    /// A full page served again, from page 3 on: `(page, previous)`. The
    /// next page tells clamping from a stale API (see `IfRepeated`).
    suspect_repeat: Option<(u64, u64)>,
}

impl ReaderState {
    fn new(job: &Job, limits: Option<StoreLimits>, tracker: Option<WatermarkTracker>) -> Self {
        Self {
            job: job.name.clone(),
            shape: Arc::clone(&job.shape),
            limits,
            redactor: Redactor::default(),
            max_rejected: job.max_rejected,
            seen: SeenKeys::default(),
            tracker,
            previous_page: None,
            fetched: 0,
            rejected: 0,
            first_reject: None,
            distinct_rejects: HashSet::new(),
            suspect_repeat: None,
        }
    }

    /// A reason may quote the record. The record itself is the API's data
    /// and is archived as it came; the reason is ours and is printed, so it
    /// is redacted (after the reject's content hash was taken, so that the
    /// hash, like the page fingerprint, does not depend on the secrets).
    fn redact_reasons(&self, batch: &mut Batch) {
        for reject in &mut batch.rejects {
            reject.reason = self.redactor.redact(&reject.reason);
        }
    }

    /// Reads `page` into a batch. A page that repeats the previous one fails
    /// the run, unless it is an API clamping positions past its end: then it
    /// ends the walk and nothing of it is written (its records are not part
    /// of the source, and counting them as duplicates would skew the
    /// duplicate ratio). The last page carries the verdict.
    fn prepare(
        &mut self,
        page: Page,
        stated: Stated,
        writer: &tokio::sync::mpsc::Sender<Prepared>,
    ) -> ReadStep {
        let (number, mut ends, if_repeated) = (page.number, page.is_last, page.if_repeated);
        // A large page is read twice: once for its fingerprint, then part
        // by part, each part handed to the writer as soon as it is read.
        let in_parts = page.records.parts(PART_ROWS, PART_BYTES).nth(1).is_some();
        let mut scan = PageScan::default();
        let (mut batch, fingerprint) = if in_parts {
            scan = scan_page(&self.shape, self.limits.as_ref(), page.records.iter());
            (Batch::default(), scan.fingerprint)
        } else {
            build_batch(
                &self.shape,
                self.limits.as_ref(),
                page.records.iter(),
                &mut self.seen,
                self.tracker.as_mut(),
                None,
            )
        };
        self.redact_reasons(&mut batch);
        let repeats = matches!(
            (self.previous_page, fingerprint),
            (Some((_, last)), Some(current)) if last == current
        );
        let previous = self.previous_page.map_or(0, |(previous, _)| previous);
        let fail = |page, previous| ReadStep {
            prepared: None,
            ends: true,
            failure: Some(SyncError::RepeatedPage { page, previous }),
        };
        let suspect = self.suspect_repeat.take();
        if let Some((page, previous)) = suspect
            && !repeats
            && fingerprint.is_some()
        {
            // Page N served again as N+1, then other records: N+1's own
            // records were never seen.
            return fail(page, previous);
        }
        if repeats {
            match if_repeated {
                IfRepeated::Fails => return fail(number, previous),
                IfRepeated::EndsIfRepeatedAgain if suspect.is_none() && !ends => {
                    self.suspect_repeat = Some((number, previous));
                }
                _ => {
                    tracing::info!(
                        page = number,
                        previous,
                        "The API served the previous page again for a position past its end; \
                         pagination ends here."
                    );
                    ends = true;
                }
            }
            batch = Batch {
                pages: 1,
                ..Batch::default()
            };
        } else if in_parts {
            // Every part but the last goes to the writer from here, counting
            // no page; the last one carries the page. Of a key's copies only
            // the last is kept, as in a page read whole.
            let mut parts = page.records.parts(PART_ROWS, PART_BYTES).peekable();
            let mut first = 0;
            while let Some(part) = parts.next() {
                let (mut part, _) = build_batch(
                    &self.shape,
                    self.limits.as_ref(),
                    part,
                    &mut self.seen,
                    self.tracker.as_mut(),
                    Some((&scan.last_copy, first)),
                );
                self.redact_reasons(&mut part);
                first += usize::try_from(part.fetched).unwrap_or(usize::MAX);
                if parts.peek().is_none() {
                    batch = part;
                    break;
                }
                self.count(&part);
                let part = Prepared {
                    number,
                    batch: Batch { pages: 0, ..part },
                    watermark: None,
                    expected: stated.last_records,
                };
                if writer.blocking_send(part).is_err() {
                    // The writer stopped; its error says why.
                    return ReadStep {
                        prepared: None,
                        ends: true,
                        failure: None,
                    };
                }
            }
        }
        self.previous_page = fingerprint.map(|f| (number, f)).or(self.previous_page);
        self.count(&batch);
        let failure = if ends {
            self.verdict(stated).err()
        } else {
            None
        };
        // The watermark moves only with the last page of a run that may
        // succeed: see `incremental`.
        let watermark = self
            .tracker
            .as_ref()
            .filter(|_| ends && failure.is_none())
            .and_then(|tracker| tracker.watermark().cloned());
        ReadStep {
            prepared: Some(Prepared {
                number,
                batch,
                watermark,
                expected: stated.last_records,
            }),
            ends,
            failure,
        }
    }

    /// Adds a batch's records and rejects to the run's.
    fn count(&mut self, batch: &Batch) {
        self.fetched += batch.fetched;
        self.rejected += batch.rejects.len() as u64;
        self.distinct_rejects
            .extend(batch.rejects.iter().map(|r| r.content_hash));
        if self.first_reject.is_none() {
            self.first_reject = batch.rejects.first().map(|r| r.reason.clone());
        }
    }

    /// Whether a run that read every page may say `succeeded`: at least as
    /// many distinct keys (and rejects) as the API states, no more rejects
    /// than `max_rejected`, and, for an incremental job, a field it can read.
    fn verdict(&self, stated: Stated) -> Result<(), SyncError> {
        let read = self.seen.len() as u64;
        // Rejects count as read: they came, and `max_rejected` judges them.
        let rejected = self.distinct_rejects.len() as u64;
        if let Some(expected) = stated.first_records
            && read + rejected < expected
        {
            return Err(SyncError::Incomplete {
                expected,
                last: stated.last_records.unwrap_or(expected),
                read,
                rejected,
            });
        }
        if let Some(pages) = stated.pages
            && stated.pages_with_records < pages
        {
            return Err(SyncError::IncompletePages {
                stated: pages,
                read: stated.pages_with_records,
            });
        }
        if self.max_rejected.exceeded_by(self.rejected, self.fetched) {
            return Err(SyncError::Rejects {
                job: self.job.clone(),
                rejected: self.rejected,
                fetched: self.fetched,
                max_rejected: self.max_rejected,
                first: self.first_reject.clone().unwrap_or_default(),
            });
        }
        match &self.tracker {
            Some(tracker) => tracker.verdict().map_err(SyncError::Watermark),
            None => Ok(()),
        }
    }
}

/// Plans and commits the pages the reader hands over, in order.
async fn write_pages(
    job: &Job,
    ctx: &SyncContext,
    lock: &mut JobLock,
    run_id: RunId,
    empty_at_start: bool,
    tally: &mut Tally,
    mut pages: tokio::sync::mpsc::Receiver<Prepared>,
) -> Result<(), SyncError> {
    // A page taken from the queue that could not join the previous
    // transaction; it starts the next one.
    let mut held_back: Option<Prepared> = None;
    loop {
        // Between pages, shutdown wins; a page once taken is written whole.
        let prepared = match held_back.take() {
            Some(prepared) => Some(prepared),
            None => tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Err(SyncError::Interrupted),
                prepared = pages.recv() => prepared,
            },
        };
        let Some(mut prepared) = prepared else {
            return Ok(());
        };
        // Pages already waiting join this one's transaction: fewer commits
        // and statements when the writer is the slower half (a first load),
        // and no page waits for a transaction that waits for the API.
        while prepared.batch.rows.len() < MAX_ROWS_PER_COMMIT
            && let Ok(next) = pages.try_recv()
        {
            if let Err(next) = prepared.append(next) {
                // It shares a key with these pages: it goes after them.
                held_back = Some(*next);
                break;
            }
        }
        let Prepared {
            number,
            batch,
            watermark,
            expected,
        } = prepared;
        tally.expected = expected.or(tally.expected);
        if tally.first_reject.is_none() {
            tally.first_reject = batch.rejects.first().map(|r| r.reason.clone());
        }
        let started = Instant::now();
        let plan = ctx
            .store
            .plan(&job.name, &job.table, &batch, empty_at_start)
            .await?;
        let plan_ms = started.elapsed().as_secs_f64() * 1e3;
        if plan.needs_commit(watermark.is_some()) {
            // Writing after losing the lock could race another process.
            lock.still_held().await?;
        }
        ctx.store
            .commit(&BatchWrite {
                job: &job.name,
                table: &job.table,
                run: run_id,
                batch: &batch,
                plan: &plan,
                watermark: watermark.as_ref(),
            })
            .await?;
        metrics::page_written(&job.name, &plan.counts, started.elapsed());
        tally.all += plan.counts;
        tracing::debug!(
            page = number,
            fetched = batch.fetched,
            plan_ms,
            write_ms = started.elapsed().as_secs_f64() * 1e3,
            "Page written."
        );
    }
}

/// Reads a page's records into a batch: rejects apart (what the store cannot
/// hold by its `limits` among them), one row per key. Inside a page the later copy of
/// a key wins (it replaces the earlier one in place); a key already seen on
/// an earlier page is flagged as a repeat: written only if it changed, and
/// counted as a duplicate. An incremental job's `tracker` sees the field of
/// each record kept, and of no copy replaced.
///
/// Also returns a fingerprint of the page's keys and rejects in order (`None`
/// when it has neither), to notice an API that serves the same page again
/// and again.
fn build_batch<'a>(
    shape: &RecordShape,
    limits: Option<&StoreLimits>,
    records: impl Iterator<Item = &'a [u8]>,
    seen: &mut SeenKeys,
    tracker: Option<&mut WatermarkTracker>,
    later_copies: Option<(&HashMap<u128, usize>, usize)>,
) -> (Batch, Option<u128>) {
    let mut batch = Batch {
        pages: 1,
        ..Batch::default()
    };
    let mut slot_of_key: HashMap<u128, usize> = HashMap::new();
    // The incremental field of each kept row: a copy replaced later in the
    // page must not move the watermark.
    let mut marks: Vec<Option<serde_json::Value>> = Vec::new();
    // Rejects count too: a page of nothing but rejects served again and
    // again must not be read until `max_pages`.
    let mut keys = Xxh3::new();
    let mut any_key = false;
    for (index, text) in records.enumerate() {
        batch.fetched += 1;
        let record = match read_checked(shape, limits, text) {
            Ok(record) => record,
            Err(reason) => {
                let reject = shape.reject(text, reason);
                keys.update(&reject.content_hash);
                any_key = true;
                batch.rejects.push(reject);
                continue;
            }
        };
        let fingerprint = record.key_fingerprint;
        keys.update(&fingerprint.to_le_bytes());
        any_key = true;
        if let Some((last_copy, first)) = later_copies
            && last_copy
                .get(&fingerprint)
                .is_some_and(|&last| last != first + index)
        {
            // A later part of the page holds a later copy of this key.
            batch.collapsed += 1;
            continue;
        }
        let mark = tracker.as_deref().map(|tracker| tracker.field_of(text));
        if let Some(&slot) = slot_of_key.get(&fingerprint) {
            batch.rows[slot].record = record;
            batch.collapsed += 1;
            if let Some(mark) = mark {
                marks[slot] = mark;
            }
        } else {
            slot_of_key.insert(fingerprint, batch.rows.len());
            marks.extend(mark);
            // 64 bits are enough for the run-wide set (8 bytes a key, not 16):
            // a collision could only mark a record as a repeat, which changes
            // its count, never whether it is written. The in-page map above
            // keeps all 128 bits, since it replaces records.
            batch.rows.push(BatchRow {
                record,
                repeat: !seen.insert(fingerprint as u64),
            });
        }
    }
    if let Some(tracker) = tracker {
        for (mark, row) in marks.iter().zip(&batch.rows) {
            tracker.observe_field(mark.as_ref(), &row.record.key);
        }
    }
    (batch, any_key.then(|| keys.digest128()))
}

/// The record of `text`, or why it cannot be stored (by the shape, or by
/// what the store can hold).
fn read_checked(
    shape: &RecordShape,
    limits: Option<&StoreLimits>,
    text: &[u8],
) -> Result<crate::record::Record, String> {
    let record = shape.read_text(text)?;
    match limits.and_then(|limits| limits.check(&record)) {
        Some(reason) => Err(reason),
        None => Ok(record),
    }
}

/// A large page, read once before it is read in parts: its fingerprint (the
/// one [`build_batch`] would give it, to tell a repeated page before any
/// part is written), and where the last copy of each key that it holds more
/// than once is, so that only that copy is kept, as in a page read whole.
#[derive(Debug, Default)]
struct PageScan {
    fingerprint: Option<u128>,
    /// Key fingerprint → index of its last copy, for keys with copies.
    last_copy: HashMap<u128, usize>,
}

fn scan_page<'a>(
    shape: &RecordShape,
    limits: Option<&StoreLimits>,
    records: impl Iterator<Item = &'a [u8]>,
) -> PageScan {
    let mut keys = Xxh3::new();
    let mut any_key = false;
    // 64 bits to notice a second copy; the map keeps all 128, so a
    // collision here only adds an entry that points at the key's one copy.
    let mut in_page = SeenKeys::default();
    let mut last_copy = HashMap::new();
    for (index, text) in records.enumerate() {
        any_key = true;
        match read_checked(shape, limits, text) {
            Ok(record) => {
                let fingerprint = record.key_fingerprint;
                keys.update(&fingerprint.to_le_bytes());
                if !in_page.insert(fingerprint as u64) {
                    last_copy.insert(fingerprint, index);
                }
            }
            Err(reason) => keys.update(&shape.reject(text, reason).content_hash),
        }
    }
    PageScan {
        fingerprint: any_key.then(|| keys.digest128()),
        last_copy,
    }
}

/// One line per finished run with its counts: info, warn for an interrupted
/// run, or error with the error chain (logged here, where the run's failure
/// is handled, and only here).
fn log_finished(report: &RunReport) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RawRecords;
    use serde_json::json;

    /// Incremental on `updated_at`, without lookback.
    fn on_updated_at() -> Incremental {
        Incremental::new(&crate::config::IncrementalSettings {
            field: "updated_at".into(),
            param: "updated_since".into(),
            lookback: Duration::ZERO,
            max_future: Duration::from_secs(86_400),
            format: None,
            timezone: None,
        })
        .unwrap()
    }

    #[test]
    fn a_copy_replaced_within_the_page_does_not_move_the_watermark() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let incremental = on_updated_at();
        let mut tracker = incremental.tracker(None);
        let page = Page {
            number: 1,
            records: RawRecords::from_values(&[
                json!({"id": 1, "updated_at": 50}),
                json!({"id": 2, "updated_at": 10}),
                json!({"id": 1, "updated_at": 20}),
            ]),
            is_last: true,
            if_repeated: IfRepeated::Fails,
        };
        build_batch(
            &shape,
            None,
            page.records.iter(),
            &mut SeenKeys::default(),
            Some(&mut tracker),
            None,
        );
        assert_eq!(
            tracker.watermark(),
            Some(&json!(20)),
            "id 1 is stored as its later copy (20), not the replaced one (50)"
        );
    }

    #[test]
    fn batches_keep_one_copy_per_key() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let mut seen = SeenKeys::default();
        let first = Page {
            number: 1,
            records: RawRecords::from_values(&[json!({"id": 1}), json!({"id": 2})]),
            is_last: false,
            if_repeated: IfRepeated::Fails,
        };
        let (_, first_fingerprint) =
            build_batch(&shape, None, first.records.iter(), &mut seen, None, None);
        let second = Page {
            number: 2,
            records: RawRecords::from_values(&[
                json!({"id": 2, "v": "old"}),
                json!({"id": 3}),
                json!({"id": 2, "v": "new"}),
                json!({"no_id": true}),
            ]),
            is_last: false,
            if_repeated: IfRepeated::Fails,
        };
        let (batch, second_fingerprint) =
            build_batch(&shape, None, second.records.iter(), &mut seen, None, None);
        assert_ne!(first_fingerprint, second_fingerprint);
        assert_eq!(batch.fetched, 4);
        assert_eq!(batch.collapsed, 1, "id 2 twice on page 2");
        assert_eq!(batch.rejects.len(), 1);
        let rows: Vec<_> = batch
            .rows
            .iter()
            .map(|r| (r.record.text.as_str(), r.repeat))
            .collect();
        assert_eq!(
            rows,
            vec![(r#"{"id":2,"v":"new"}"#, true), (r#"{"id":3}"#, false)],
            "the later copy wins; id 2 was on page 1"
        );

        let third = Page {
            number: 3,
            records: RawRecords::from_values(&[
                json!({"id": 4, "v": "old"}),
                json!({"id": 5}),
                json!({"id": 4, "v": "new"}),
            ]),
            is_last: true,
            if_repeated: IfRepeated::Fails,
        };
        let (batch, _) = build_batch(&shape, None, third.records.iter(), &mut seen, None, None);
        let rows: Vec<_> = batch.rows.iter().map(|r| r.record.text.as_str()).collect();
        assert_eq!(
            rows,
            vec![r#"{"id":4,"v":"new"}"#, r#"{"id":5}"#],
            "inside a page the later copy wins and keeps the first one's place"
        );
        assert_eq!(batch.collapsed, 1);
    }

    #[test]
    fn a_scanned_page_has_its_batch_fingerprint_and_knows_its_last_copies() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let records = RawRecords::from_values(&[
            json!({"id": 1}),
            json!({"no_id": true}),
            json!({"id": 2}),
            json!({"id": 1, "v": 2}),
        ]);
        let (_, fingerprint) = build_batch(
            &shape,
            None,
            records.iter(),
            &mut SeenKeys::default(),
            None,
            None,
        );
        assert!(fingerprint.is_some());
        let scan = scan_page(&shape, None, records.iter());
        assert_eq!(scan.fingerprint, fingerprint);
        let id_1 = shape.read(&json!({"id": 1})).unwrap().key_fingerprint;
        assert_eq!(scan.last_copy, HashMap::from([(id_1, 3)]));
        let other = RawRecords::from_values(&[json!({"id": 1}), json!({"id": 2})]);
        assert_ne!(
            scan_page(&shape, None, other.iter()).fingerprint,
            fingerprint
        );
        assert_eq!(
            scan_page(&shape, None, RawRecords::default().iter()).fingerprint,
            None
        );
    }

    /// A job keyed on `id`, built from TOML as a user writes it.
    fn job() -> Job {
        let text = r#"
            [database]
            url = "sqlite://unused.db"
            [[jobs]]
            name = "parts"
            schedule = "0 0 * * *"
            table = "parts"
            key = ["id"]
            [jobs.request]
            url = "http://127.0.0.1:9/"
        "#;
        let settings =
            crate::config::load_str(text, std::path::Path::new("t.toml"), &HashMap::new()).unwrap();
        Job::from_settings(&settings.jobs[0]).unwrap()
    }

    fn large_page(number: u64, if_repeated: IfRepeated) -> Page {
        let values: Vec<_> = (0..12_000).map(|id| json!({ "id": id })).collect();
        Page {
            number,
            records: RawRecords::from_values(&values),
            is_last: false,
            if_repeated,
        }
    }

    #[test]
    fn a_large_page_goes_to_the_writer_in_parts_and_counts_as_one_page() {
        let mut reader = ReaderState::new(&job(), None, None);
        let (writer, mut parts) = tokio::sync::mpsc::channel(10);
        let step = reader.prepare(large_page(1, IfRepeated::Fails), Stated::default(), &writer);
        let mut sent = Vec::new();
        while let Ok(part) = parts.try_recv() {
            sent.push(part.batch);
        }
        let last = step.prepared.expect("the last part").batch;
        assert!(step.failure.is_none() && !step.ends);
        assert_eq!(sent.len(), 2, "12,000 records in parts of 5,000");
        assert!(
            sent.iter()
                .all(|part| part.pages == 0 && part.rows.len() == 5_000)
        );
        assert_eq!((last.pages, last.rows.len()), (1, 2_000));
        assert_eq!(reader.fetched, 12_000);
    }

    #[test]
    fn a_large_page_served_again_writes_none_of_its_parts() {
        let mut reader = ReaderState::new(&job(), None, None);
        let (writer, mut parts) = tokio::sync::mpsc::channel(10);
        reader.prepare(large_page(1, IfRepeated::Fails), Stated::default(), &writer);
        while parts.try_recv().is_ok() {}

        let step = reader.prepare(large_page(2, IfRepeated::Fails), Stated::default(), &writer);

        assert!(
            parts.try_recv().is_err(),
            "no part of page 2 was handed over"
        );
        assert!(step.prepared.is_none());
        assert!(matches!(
            step.failure,
            Some(SyncError::RepeatedPage {
                page: 2,
                previous: 1
            })
        ));
    }

    #[test]
    fn a_copy_replaced_in_a_later_part_does_not_move_the_watermark() {
        let incremental = on_updated_at();
        let mut reader = ReaderState::new(&job(), None, Some(incremental.tracker(None)));
        let values: Vec<_> = std::iter::once(json!({"id": 0, "updated_at": 99_999}))
            .chain((0..12_000).map(|id| json!({ "id": id, "updated_at": id })))
            .collect();
        let page = Page {
            number: 1,
            records: RawRecords::from_values(&values),
            is_last: true,
            if_repeated: IfRepeated::Fails,
        };
        let (writer, _parts) = tokio::sync::mpsc::channel(10);

        let step = reader.prepare(page, Stated::default(), &writer);

        assert_eq!(
            step.prepared.expect("the last part").watermark,
            Some(json!(11_999)),
            "id 0 is stored as its later copy (0), not the replaced one (99,999)"
        );
    }
}
