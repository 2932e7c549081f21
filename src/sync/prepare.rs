//! The prepare stage: each fetched page becomes a batch (parse, key, hash,
//! reject, one row per key), on a blocking thread of its own, so that the
//! milliseconds of CPU a page costs never hold up the runtime's workers
//! (the fetch and the writer's I/O run there meanwhile).
//!
//! It owns what a run learns from one page to the next: the keys seen so far
//! (repeats across pages are counted as duplicates), the watermark tracker,
//! the repeated-page guard, the records and rejects read; and, once the
//! last page is read, the verdict on whether the run may succeed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use xxhash_rust::xxh3::Xxh3;

use super::Job;
use super::batching::Ready;
use super::error::SyncError;
use super::fetch::Fetched;
use super::repeat_guard::{Judgement, RepeatGuard};
use crate::batch::{Batch, BatchRow};
use crate::config::Threshold;
use crate::incremental::WatermarkTracker;
use crate::record::{ContentHash, Record, RecordShape, key_fingerprint};
use crate::redact::Redactor;
use crate::seen_keys::SeenKeys;
use crate::source::{Page, Stated};
use crate::store::StoreLimits;

/// A page of more records than this, or of more than [`PART_BYTES`] of
/// them, is read and written in parts of at most that, so memory holds a
/// few parts' rows and not the page's: read whole, a 21 MB page of 1.5
/// million small records took 531 MiB. Ordinary pages are read whole.
const PART_ROWS: usize = 5_000;
const PART_BYTES: usize = 4 << 20;

/// Runs the stage: reads the pages `fetched` yields, in order, and hands
/// each batch to the writer. Returns once the last page is handed over (or
/// the walk ended early: then the fetch's result says why), or with the
/// failure the last page carries (the verdict, a repeated page) after the
/// pages before it were handed over.
///
/// Returns every key the run read (the key of a reject that has one among
/// them) once the last page was read and the verdict passed: what the
/// deletion step compares the table with. `None` when the walk did not end
/// at the last page (the fetch stopped early, the writer did).
pub(super) fn prepare_pages(
    mut preparer: Preparer,
    mut fetched: mpsc::Receiver<Fetched>,
    writer: mpsc::Sender<Ready>,
) -> Result<Option<SeenKeys>, SyncError> {
    while let Some(Fetched { page, stated }) = fetched.blocking_recv() {
        let step = preparer.prepare(page, stated, &writer);
        let Some(ready) = step.ready else {
            // The page failed the run before any of it was written, or the
            // writer stopped while taking its parts (its error says why).
            return step.failure.map_or(Ok(None), Err);
        };
        if writer.blocking_send(ready).is_err() {
            // The writer stopped; its error says why.
            return Ok(None);
        }
        if let Some(failure) = step.failure {
            return Err(failure);
        }
        if step.ends {
            // The last page, or one the API served again past its end: a
            // page fetched after it is not read, whatever it holds.
            return Ok(Some(preparer.into_keys_read()));
        }
    }
    Ok(None)
}

/// One page, read.
pub(super) struct Step {
    /// `None` when the page fails the run before any of it is written.
    pub ready: Option<Ready>,
    /// No page follows this one.
    pub ends: bool,
    /// The run fails once this page is written.
    pub failure: Option<SyncError>,
}

/// What the stage carries from one page to the next.
pub(super) struct Preparer {
    job: String,
    shape: Arc<RecordShape>,
    limits: Option<StoreLimits>,
    /// Reject reasons are redacted before they are stored.
    redactor: Redactor,
    max_rejected: Threshold,
    /// Every key of the run so far.
    seen: SeenKeys,
    /// The keys of rejected records that had a readable key (refused for
    /// what the store cannot hold): the API still returns them.
    rejected_keys: Vec<u64>,
    tracker: Option<WatermarkTracker>,
    guard: RepeatGuard,
    /// Records read and rejected so far, and the first reject's reason.
    fetched: u64,
    rejected: u64,
    first_reject: Option<String>,
    /// The distinct rejects: a reject served twice is one record of the
    /// source, as a key seen twice is.
    distinct_rejects: HashSet<ContentHash>,
}

impl Preparer {
    pub(super) fn new(
        job: &Job,
        limits: Option<StoreLimits>,
        tracker: Option<WatermarkTracker>,
        redactor: Redactor,
    ) -> Self {
        Self {
            job: job.name.clone(),
            shape: Arc::clone(&job.shape),
            limits,
            redactor,
            max_rejected: job.max_rejected,
            seen: SeenKeys::default(),
            rejected_keys: Vec::new(),
            tracker,
            guard: RepeatGuard::default(),
            fetched: 0,
            rejected: 0,
            first_reject: None,
            distinct_rejects: HashSet::new(),
        }
    }

    /// Every key read, rows' and rejects' alike.
    fn into_keys_read(mut self) -> SeenKeys {
        for key in std::mem::take(&mut self.rejected_keys) {
            self.seen.insert(key);
        }
        self.seen
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

    /// Reads `page` into a batch, judged by the repeated-page guard. A large
    /// page is handed to `writer` part by part, all but its last part from
    /// here. The last page carries the verdict.
    pub(super) fn prepare(
        &mut self,
        page: Page,
        stated: Stated,
        writer: &mpsc::Sender<Ready>,
    ) -> Step {
        let number = page.number;
        // A large page is read twice: once for its fingerprint, then part
        // by part, each part handed to the writer as soon as it is read.
        let in_parts = page.records.parts(PART_ROWS, PART_BYTES).nth(1).is_some();
        let (mut batch, scan) = if in_parts {
            let scan = scan_page(&self.shape, self.limits.as_ref(), page.records.iter());
            (Batch::default(), scan)
        } else {
            let (batch, fingerprint) = build_batch(
                &self.shape,
                self.limits.as_ref(),
                page.records.iter(),
                &mut self.seen,
                &mut self.rejected_keys,
                self.tracker.as_mut(),
                None,
            );
            let scan = PageScan {
                fingerprint,
                ..PageScan::default()
            };
            (batch, scan)
        };
        let mut ends = page.is_last;
        match self
            .guard
            .judge(number, scan.fingerprint, page.if_repeated, page.is_last)
        {
            Judgement::Fails(failure) => {
                return Step {
                    ready: None,
                    ends: true,
                    failure: Some(failure),
                };
            }
            judgement @ (Judgement::Hold | Judgement::EndsHere) => {
                ends |= matches!(judgement, Judgement::EndsHere);
                batch = Batch {
                    pages: 1,
                    ..Batch::default()
                };
            }
            Judgement::Write if in_parts => {
                let Some(last) = self.hand_over_parts(&page, &scan, stated, writer) else {
                    // The writer stopped; its error says why.
                    return Step {
                        ready: None,
                        ends: true,
                        failure: None,
                    };
                };
                batch = last;
            }
            Judgement::Write => {}
        }
        self.redact_reasons(&mut batch);
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
        Step {
            ready: Some(Ready {
                number,
                batch,
                watermark,
                expected: stated.last_records,
            }),
            ends,
            failure,
        }
    }

    /// Reads a large page part by part, handing every part but the last to
    /// the writer (counting no page) and returning the last, which carries
    /// the page; `None` when the writer stopped. Of a key's copies only the
    /// last is kept, as in a page read whole.
    fn hand_over_parts(
        &mut self,
        page: &Page,
        scan: &PageScan,
        stated: Stated,
        writer: &mpsc::Sender<Ready>,
    ) -> Option<Batch> {
        let mut parts = page.records.parts(PART_ROWS, PART_BYTES).peekable();
        let mut first = 0;
        while let Some(part) = parts.next() {
            let (mut part, _) = build_batch(
                &self.shape,
                self.limits.as_ref(),
                part,
                &mut self.seen,
                &mut self.rejected_keys,
                self.tracker.as_mut(),
                Some((&scan.last_copy, first)),
            );
            first += usize::try_from(part.fetched).unwrap_or(usize::MAX);
            if parts.peek().is_none() {
                return Some(part);
            }
            self.redact_reasons(&mut part);
            self.count(&part);
            let part = Ready {
                number: page.number,
                batch: Batch { pages: 0, ..part },
                watermark: None,
                expected: stated.last_records,
            };
            writer.blocking_send(part).ok()?;
        }
        Some(Batch::default())
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

/// Reads a page's records into a batch: rejects apart (what the store cannot
/// hold by its `limits` among them), one row per key. Inside a page the later
/// copy of a key wins (it replaces the earlier one in place); a key already
/// seen on an earlier page is flagged as a repeat: written only if it
/// changed, and counted as a duplicate. A reject whose key could be read
/// adds that key to `rejected_keys`. An incremental job's `tracker` sees
/// the field of each record kept, and of no copy replaced. `later_copies`,
/// for a part of a large page: where the last copy of each key the page
/// holds more than once is, and the index of this part's first record.
///
/// Also returns a fingerprint of the page's keys and rejects in order (`None`
/// when it has neither), to notice an API that serves the same page again
/// and again.
fn build_batch<'a>(
    shape: &RecordShape,
    limits: Option<&StoreLimits>,
    records: impl Iterator<Item = &'a [u8]>,
    seen: &mut SeenKeys,
    rejected_keys: &mut Vec<u64>,
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
            Err((reason, key)) => {
                rejected_keys.extend(key.map(|key| key as u64));
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
/// what the store can hold), with its key's fingerprint when the text has
/// a readable key.
fn read_checked(
    shape: &RecordShape,
    limits: Option<&StoreLimits>,
    text: &[u8],
) -> Result<Record, (String, Option<u128>)> {
    let record = shape.read_text(text).map_err(|reason| {
        let key = shape.key_of_refused(text).map(|key| key_fingerprint(&key));
        (reason, key)
    })?;
    match limits.and_then(|limits| limits.check(&record)) {
        Some(reason) => Err((reason, Some(record.key_fingerprint))),
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
            Err((reason, _)) => keys.update(&shape.reject(text, reason).content_hash),
        }
    }
    PageScan {
        fingerprint: any_key.then(|| keys.digest128()),
        last_copy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incremental::Incremental;
    use crate::source::{IfRepeated, RawRecords};
    use serde_json::json;
    use std::time::Duration;

    /// Incremental on `updated_at`, without lookback.
    fn on_updated_at() -> Incremental {
        Incremental::new(&crate::config::IncrementalSettings {
            field: "updated_at".into(),
            param: "updated_since".into(),
            param_in: crate::config::ValueIn::Query,
            value: None,
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
            &mut Vec::new(),
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
        let (_, first_fingerprint) = build_batch(
            &shape,
            None,
            first.records.iter(),
            &mut seen,
            &mut Vec::new(),
            None,
            None,
        );
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
        let (batch, second_fingerprint) = build_batch(
            &shape,
            None,
            second.records.iter(),
            &mut seen,
            &mut Vec::new(),
            None,
            None,
        );
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
        let (batch, _) = build_batch(
            &shape,
            None,
            third.records.iter(),
            &mut seen,
            &mut Vec::new(),
            None,
            None,
        );
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
            &mut Vec::new(),
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
        let mut reader = Preparer::new(&job(), None, None, Redactor::default());
        let (writer, mut parts) = tokio::sync::mpsc::channel(10);
        let step = reader.prepare(large_page(1, IfRepeated::Fails), Stated::default(), &writer);
        let mut sent = Vec::new();
        while let Ok(part) = parts.try_recv() {
            sent.push(part.batch);
        }
        let last = step.ready.expect("the last part").batch;
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
        let mut reader = Preparer::new(&job(), None, None, Redactor::default());
        let (writer, mut parts) = tokio::sync::mpsc::channel(10);
        reader.prepare(large_page(1, IfRepeated::Fails), Stated::default(), &writer);
        while parts.try_recv().is_ok() {}

        let step = reader.prepare(large_page(2, IfRepeated::Fails), Stated::default(), &writer);

        assert!(
            parts.try_recv().is_err(),
            "no part of page 2 was handed over"
        );
        assert!(step.ready.is_none());
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
        let mut reader = Preparer::new(
            &job(),
            None,
            Some(incremental.tracker(None)),
            Redactor::default(),
        );
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
            step.ready.expect("the last part").watermark,
            Some(json!(11_999)),
            "id 0 is stored as its later copy (0), not the replaced one (99,999)"
        );
    }
}
