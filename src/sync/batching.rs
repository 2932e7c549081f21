//! Which prepared pages share a transaction: the rules in one place.
//!
//! The writer takes one page, then joins to it the pages already waiting in
//! the queue, so that a first load (where writing is the slower half) needs
//! fewer commits and statements, and no page waits for a transaction that
//! waits for the API. Two rules bound a join:
//! - at most [`MAX_ROWS_PER_COMMIT`] rows (then the next page starts the next
//!   transaction), so one transaction's memory and lock time stay bounded;
//! - never two pages that share a key. The plan compares each row with what
//!   is stored: written apart, the later page's copy of a key is compared
//!   with what the earlier page stored and counted as it should be; joined,
//!   both copies would be compared with the state before either.
//!
//! Pure: no I/O, no clock.

use std::collections::HashSet;

use crate::batch::Batch;

/// The writer joins waiting pages to the one it writes up to this many rows.
pub(super) const MAX_ROWS_PER_COMMIT: usize = 4_000;

/// A batch ready to plan and write, with what the run learns once it is
/// committed.
#[derive(Debug)]
pub(super) struct Ready {
    /// The page's number (the last one's, once pages are joined).
    pub number: u64,
    pub batch: Batch,
    /// Set on the last page of an incremental run that may move it: the
    /// watermark to commit with it.
    pub watermark: Option<serde_json::Value>,
    /// The record count the API had stated when the page was read.
    pub expected: Option<u64>,
}

/// Joins to `first` the batches `waiting` yields (those already in the
/// queue) while the rules allow. Returns the joined batch, and the batch
/// that could not join (it shares a key): it starts the next transaction.
pub(super) fn join_waiting(
    mut first: Ready,
    mut waiting: impl FnMut() -> Option<Ready>,
) -> (Ready, Option<Ready>) {
    let mut keys: Option<HashSet<u128>> = None;
    while first.batch.rows.len() < MAX_ROWS_PER_COMMIT {
        let Some(next) = waiting() else { break };
        let keys = keys.get_or_insert_with(|| first.batch.keys().collect());
        if next.batch.keys().any(|key| keys.contains(&key)) {
            return (first, Some(next));
        }
        keys.extend(next.batch.keys());
        first.batch.append(next.batch);
        first.number = next.number;
        first.watermark = next.watermark;
        first.expected = next.expected;
    }
    (first, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchRow;
    use crate::record::RecordShape;
    use serde_json::json;
    use std::collections::VecDeque;

    fn ready(number: u64, ids: std::ops::Range<u64>) -> Ready {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let rows: Vec<BatchRow> = ids
            .map(|id| BatchRow {
                record: shape.read(&json!({ "id": id })).unwrap(),
                repeat: false,
            })
            .collect();
        Ready {
            number,
            batch: Batch {
                fetched: rows.len() as u64,
                rows,
                pages: 1,
                ..Batch::default()
            },
            watermark: None,
            expected: Some(number * 10),
        }
    }

    fn join(first: Ready, rest: Vec<Ready>) -> (Ready, Option<Ready>, usize) {
        let mut queue = VecDeque::from(rest);
        let (joined, held) = join_waiting(first, || queue.pop_front());
        (joined, held, queue.len())
    }

    #[test]
    fn waiting_pages_join_and_the_last_one_names_the_batch() {
        let (joined, held, left) = join(ready(1, 0..10), vec![ready(2, 10..20), ready(3, 20..30)]);
        assert!(held.is_none());
        assert_eq!(left, 0);
        assert_eq!((joined.number, joined.expected), (3, Some(30)));
        assert_eq!((joined.batch.rows.len(), joined.batch.pages), (30, 3));
        assert_eq!(joined.batch.fetched, 30);
    }

    #[test]
    fn a_page_sharing_a_key_is_held_back_whole_for_the_next_transaction() {
        let (joined, held, left) = join(
            ready(1, 0..10),
            vec![ready(2, 10..20), ready(3, 15..25), ready(4, 30..40)],
        );
        let held = held.expect("page 3 shares ids 15..20 with page 2");
        assert_eq!((held.number, held.batch.rows.len()), (3, 10));
        assert_eq!((joined.number, joined.batch.rows.len()), (2, 20));
        assert_eq!(left, 1, "page 4 was not taken");
    }

    #[test]
    fn a_join_stops_at_the_row_limit() {
        let size = MAX_ROWS_PER_COMMIT as u64 / 2;
        let (joined, held, left) = join(
            ready(1, 0..size),
            vec![ready(2, size..2 * size), ready(3, 2 * size..2 * size + 1)],
        );
        assert!(held.is_none());
        assert_eq!(joined.batch.rows.len(), MAX_ROWS_PER_COMMIT);
        assert_eq!(left, 1, "page 3 starts the next transaction");
    }
}
