//! Why a run failed, and the `reason` label each failure counts under.

use crate::config::Threshold;
use crate::run::FailureReason;
use crate::source::{SourceError, SourceErrorKind};
use crate::store::StoreError;

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
    /// A stage of the run panicked: a bug, which ends the run, not the process.
    #[error("a stage of the run failed unexpectedly: {0}")]
    Stage(String),
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
    #[error(
        "the run read the whole collection, but {gone} of the {live} stored keys were \
         not in it: more than max_deleted = {max_deleted} allows ({allowed}), so none was {done}; \
         the pages read are stored. If the API really deleted them, raise max_deleted \
         for one run; if it answered short (an outage, a changed filter), fix that"
    )]
    Deletions {
        gone: u64,
        live: u64,
        max_deleted: Threshold,
        /// What `max_deleted` allows of `live`.
        allowed: u64,
        /// `marked deleted` or `deleted`.
        done: &'static str,
    },
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
            SyncError::Source(error) => match &error.kind {
                SourceErrorKind::Fetch { source, .. } if source.is_auth() => FailureReason::Auth,
                SourceErrorKind::Fetch { source, .. } if source.is_store() => {
                    FailureReason::Database
                }
                SourceErrorKind::Head(kind) if matches!(&**kind, SourceErrorKind::Fetch { source, .. } if source.is_auth()) => {
                    FailureReason::Auth
                }
                SourceErrorKind::Fetch { .. } | SourceErrorKind::Head(_) => FailureReason::Fetch,
                SourceErrorKind::Records { .. }
                | SourceErrorKind::Pagination(_)
                | SourceErrorKind::Loop { .. }
                | SourceErrorKind::TooManyPages { .. } => FailureReason::Pagination,
            },
            SyncError::Store(_) => FailureReason::Database,
            SyncError::RepeatedPage { .. } | SyncError::Watermark(_) => FailureReason::Pagination,
            SyncError::Interrupted => return None,
            SyncError::Stage(_) => FailureReason::Internal,
            SyncError::Incomplete { .. } | SyncError::IncompletePages { .. } => {
                FailureReason::Incomplete
            }
            SyncError::Rejects { .. } => FailureReason::Rejects,
            SyncError::Deletions { .. } => FailureReason::Deletions,
        })
    }
}
