//! The fetch stage: the source's pages, one ahead of the prepare stage.
//!
//! The next page is fetched while the prepare stage reads the current one,
//! and no further: a slot in the queue is taken *before* a page is asked for,
//! so the API sees no more requests than the run reads (the source itself
//! may send one request ahead, see `source`). Waiting for a response,
//! retries included, is abandoned on shutdown: nothing of that page is
//! written yet.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::SyncError;
use crate::source::{Page, Pages, Stated};

/// A page, and what the API had stated about the whole when it came.
pub(super) struct Fetched {
    pub page: Page,
    pub stated: Stated,
}

/// The queue between this stage and the next: one page fetched ahead.
pub(super) fn queue() -> (mpsc::Sender<Fetched>, mpsc::Receiver<Fetched>) {
    mpsc::channel(1)
}

/// Fetches the pages into `prepare`, until the last one, a failure, or the
/// prepare stage stopping (then its own result says why).
pub(super) async fn fetch_pages(
    mut pages: Pages,
    cancel: CancellationToken,
    prepare: mpsc::Sender<Fetched>,
) -> Result<(), SyncError> {
    loop {
        let Ok(slot) = prepare.reserve().await else {
            return Ok(());
        };
        let started = Instant::now();
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(SyncError::Interrupted),
            next = pages.next_page() => next,
        };
        let Some(page) = next? else {
            return Ok(());
        };
        tracing::debug!(
            page = page.number,
            fetch_ms = started.elapsed().as_secs_f64() * 1e3,
            "Page fetched."
        );
        slot.send(Fetched {
            stated: pages.stated(),
            page,
        });
    }
}
