//! A batch: the unit the pipeline hands to the store, one transaction's
//! worth of rows and rejects with the counts of what was read.
//!
//! It sits below both `sync` (which builds batches) and `store` (which plans
//! and writes them), so neither depends on the other for it.

use crate::record::{Record, Rejected};

/// Records ready to write: one page's, several pages' joined into one
/// transaction, or a part of a large page. One row per key, and the rejects.
#[derive(Debug, Default)]
pub struct Batch {
    pub rows: Vec<BatchRow>,
    pub rejects: Vec<Rejected>,
    /// Records in the response, rejects and collapsed copies included.
    pub fetched: u64,
    /// Copies of a key collapsed inside this batch (the later copy was kept).
    pub collapsed: u64,
    /// The pages this batch completes: 1 for a page, more once pages are
    /// appended, 0 for a part of a large page whose last part comes in a
    /// later batch.
    pub pages: u64,
}

impl Batch {
    /// Appends the batch of the next page, so that consecutive pages can
    /// share one transaction. The counts and the stored rows come out as if
    /// the pages were written one after the other only if the two share no
    /// key: the caller checks that first (see `sync::batching`).
    pub fn append(&mut self, next: Batch) {
        self.rows.extend(next.rows);
        self.rejects.extend(next.rejects);
        self.fetched += next.fetched;
        self.collapsed += next.collapsed;
        self.pages += next.pages;
    }

    /// The key fingerprints of its rows.
    pub fn keys(&self) -> impl Iterator<Item = u128> + '_ {
        self.rows.iter().map(|row| row.record.key_fingerprint)
    }
}

#[derive(Debug)]
pub struct BatchRow {
    pub record: Record,
    /// The key was already seen on an earlier page of this run. The row is
    /// still written when its content differs (the later copy wins, as it
    /// does inside a page: it is the fresher one when pages shift during a
    /// run, and an incremental watermark may already be past the first),
    /// but it is counted as `duplicate`, not inserted, updated or unchanged.
    pub repeat: bool,
}
