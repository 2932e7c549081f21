//! What a run is and what it counted: shared by `sync`, the store and the CLI.

use std::ops::AddAssign;

/// `apisync.runs.id`.
pub type RunId = i64;

/// The status column of `apisync.runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// Not run: another process held the job's lock. Counted, not stored.
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Skipped => "skipped",
        }
    }
}

/// Per-run counts. Every fetched record has exactly one outcome, so
/// `fetched = inserted + updated + unchanged + duplicate + rejected`, plus
/// the tombstones that deleted a key; `deleted` counts stored keys: those a
/// complete run found gone, and those a tombstone deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records found in the responses.
    pub fetched: u64,
    /// New keys.
    pub inserted: u64,
    /// Known keys whose content hash changed.
    pub updated: u64,
    /// Known keys with the same content: not written.
    pub unchanged: u64,
    /// Keys already seen earlier in the same run (within a page or across pages).
    pub duplicate: u64,
    /// Records that could not be stored; kept in the rejects table.
    pub rejected: u64,
    /// Stored keys marked deleted or removed (`deletions`).
    pub deleted: u64,
    /// Responses received.
    pub pages: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.fetched += other.fetched;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
        self.deleted += other.deleted;
        self.pages += other.pages;
    }
}

/// Why a run failed, as the `reason` label of `apisync_run_failures_total`
/// (a bounded set, fixed by the metric catalogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// A request failed for good (status, transport, body).
    Fetch,
    /// The pages could not be walked as configured: a pointer or header
    /// that finds nothing, a loop, `max_pages`, a total no response carries,
    /// an incremental field no record has in a readable form.
    Pagination,
    /// The run read fewer distinct keys than the API stated.
    Incomplete,
    /// More rejects than `max_rejected`.
    Rejects,
    /// Deletions beyond `max_deleted`.
    Deletions,
    /// The API refused the credentials (401 after a renewal, 403), or the
    /// token endpoint refused or could not be reached.
    Auth,
    /// The store failed.
    Database,
    /// A bug: a task panicked.
    Internal,
}

impl FailureReason {
    pub const ALL: [FailureReason; 8] = [
        FailureReason::Fetch,
        FailureReason::Pagination,
        FailureReason::Incomplete,
        FailureReason::Rejects,
        FailureReason::Deletions,
        FailureReason::Auth,
        FailureReason::Database,
        FailureReason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Fetch => "fetch",
            FailureReason::Pagination => "pagination",
            FailureReason::Incomplete => "incomplete",
            FailureReason::Rejects => "rejects",
            FailureReason::Deletions => "deletions",
            FailureReason::Auth => "auth",
            FailureReason::Database => "database",
            FailureReason::Internal => "internal",
        }
    }
}
