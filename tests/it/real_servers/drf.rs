//! Django REST Framework: 5,002 tickets under PageNumberPagination (100 a page,
//! 404 past the last), LimitOffsetPagination (max_limit 500, larger limits
//! cut silently) and CursorPagination (opaque cursors in `next` links).

use apisync::sync::RunReport;
use serde_json::json;

use super::servers::{self, RealServer};
use super::{
    Changes, TABLE, assert_archive_is_exact, assert_changes_applied_exactly,
    assert_complete_or_loud, assert_deletions_marked_exactly, assert_failed_with,
    assert_resync_writes_nothing, assert_succeeded, assert_table_is_source, run_job,
};
use crate::helpers::{Backend, TestEnv, store_tests};

/// The tickets the template holds.
const N: u64 = 5_002;

/// Page-number pagination walked by its `next` links, which DRF sets to null
/// on the last page: the shape today's code already reads.
const PAGES_BY_NEXT_URL: &str = r#"
records = "/results"
[jobs.request]
url = "{api}/pages/tickets/"
[jobs.pagination]
kind = "next_url"
next_path = "/next"
"#;

/// All 5,002 tickets in one response (the view without pagination): more
/// records than the reader takes whole, so it is read and written in parts.
const ONE_LARGE_PAGE: &str = r#"
records = ""
[jobs.request]
url = "{api}/all/tickets/"
"#;

fn changes() -> Changes {
    Changes::Http {
        // Ticket 7 is "open", 2500 "low", 5002 assigned: each patch changes it
        // (and DRF moves updated_at too).
        patches: vec![
            ("/pages/tickets/7/".to_owned(), json!({"status": "solved"})),
            (
                "/pages/tickets/2500/".to_owned(),
                json!({"priority": "urgent"}),
            ),
            ("/pages/tickets/5002/".to_owned(), json!({"assignee": null})),
        ],
        post_path: "/pages/tickets/".to_owned(),
        posts: (1..=2)
            .map(|i| {
                json!({
                    "subject": format!("Added between runs {i}"),
                    "status": "new",
                    "priority": "normal",
                    "requester": format!("late{i}@example.com"),
                    "assignee": null,
                    "tags": ["late"],
                })
            })
            .collect(),
    }
}

/// Runs `body` once against the shared DRF server.
async fn run_once(backend: Backend, body: &str) -> (TestEnv, &'static RealServer, RunReport) {
    let server = servers::shared_drf().await;
    let (env, report) = run_job(backend, server, body).await;
    (env, server, report)
}

store_tests! {
    async fn one_page_read_in_parts_is_archived_exactly(backend: Backend) {
        let server = servers::shared_drf().await;
        let report = assert_archive_is_exact(backend, server, ONE_LARGE_PAGE).await;
        assert_eq!(report.counts.pages, 1, "one response, read in two parts");
    }

    async fn one_page_read_in_parts_resyncs_without_writes(backend: Backend) {
        let server = servers::shared_drf().await;
        assert_resync_writes_nothing(backend, server, ONE_LARGE_PAGE).await;
    }

    async fn one_page_read_in_parts_applies_changes_exactly(backend: Backend) {
        let server = servers::drf().await;
        assert_changes_applied_exactly(backend, &server, ONE_LARGE_PAGE, changes()).await;
    }

    async fn archive_is_exact(backend: Backend) {
        let server = servers::shared_drf().await;
        let report = assert_archive_is_exact(backend, server, PAGES_BY_NEXT_URL).await;
        assert_eq!(report.counts.pages, 51, "50 pages of 100 and one of 2");
    }

    async fn resync_writes_nothing(backend: Backend) {
        let server = servers::shared_drf().await;
        assert_resync_writes_nothing(backend, server, PAGES_BY_NEXT_URL).await;
    }

    async fn changes_are_applied_exactly(backend: Backend) {
        let server = servers::drf().await;
        assert_changes_applied_exactly(backend, &server, PAGES_BY_NEXT_URL, changes()).await;
    }

    async fn records_deleted_through_the_api_are_marked_exactly(backend: Backend) {
        let server = servers::drf().await;
        let deletes = ["/pages/tickets/1/", "/pages/tickets/2501/", "/pages/tickets/5002/"];
        assert_deletions_marked_exactly(backend, &server, PAGES_BY_NEXT_URL, &deletes).await;
    }

    /// DRF answers 404 `{"detail": "Invalid page."}` for the page after the
    /// last; with `end_on_status` that is the end, and `count` is the total.
    async fn page_number_ends_on_the_404_past_the_last_page(backend: Backend) {
        // Arrange, Act
        let (env, server, report) = run_once(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/pages/tickets/"
    [jobs.pagination]
    kind = "page"
    size_param = "page_size"
    size = 100
    total_path = "/count"
    end_on_status = [404]
    "#,
        )
        .await;

        // Assert
        assert_succeeded(&report);
        assert_eq!(report.counts.fetched, N);
        assert_table_is_source(&env, server).await;
    }

    /// Without `end_on_status` the 404 past the last page is an error like
    /// any other: the run fails, naming it, and keeps every page it stored.
    async fn page_number_without_end_on_status_fails_on_the_404_and_keeps_every_row(
        backend: Backend
    ) {
        // Arrange, Act
        let (env, server, report) = run_once(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/pages/tickets/"
    [jobs.pagination]
    kind = "page"
    size_param = "page_size"
    size = 100
    "#,
        )
        .await;

        // Assert
        assert_failed_with(&env, &report, "404").await;
        assert_eq!(report.counts.inserted, N, "the 51 pages before the 404 are kept");
        assert_table_is_source(&env, server).await;
    }

    /// `page_size=1000` is cut to max_page_size 500 without a word, so the
    /// pages hold 500 while `count / size` promises 6 pages: the run must
    /// read all 11 or fail, never stop at 3,000 and succeed.
    async fn page_size_above_max_page_size_is_complete_or_loud(backend: Backend) {
        // Arrange, Act
        let (env, server, report) = run_once(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/pages/tickets/"
    [jobs.pagination]
    kind = "page"
    size_param = "page_size"
    size = 1000
    total_path = "/count"
    end_on_status = [404]
    "#,
        )
        .await;

        // Assert
        assert_complete_or_loud(&env, server, &report).await;
    }

    /// `limit=1000` is cut to max_limit 500 without a word (the `next` link
    /// then says `limit=500`): the offsets must still cover every ticket.
    async fn limit_offset_pages_fully_when_the_limit_is_above_max_limit(backend: Backend) {
        // Arrange, Act
        let (env, server, report) = run_once(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/offsets/tickets/"
    [jobs.pagination]
    kind = "offset"
    limit = 1000
    total_path = "/count"
    "#,
        )
        .await;

        // Assert
        assert_succeeded(&report);
        assert_eq!(report.counts.fetched, N, "each ticket once, none skipped");
        assert_table_is_source(&env, server).await;
    }

    /// The same cap with no total configured: a 500-record answer to
    /// `limit=1000` is not the end of the collection. All of it, or a failure.
    async fn limit_offset_above_max_limit_without_a_total_is_complete_or_loud(
        backend: Backend
    ) {
        // Arrange, Act
        let (env, server, report) = run_once(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/offsets/tickets/"
    [jobs.pagination]
    kind = "offset"
    limit = 1000
    "#,
        )
        .await;

        // Assert
        assert_complete_or_loud(&env, server, &report).await;
    }

    /// CursorPagination: `next` carries an opaque `?cursor=`, null at the end.
    async fn cursor_pagination_follows_the_next_links(backend: Backend) {
        let server = servers::shared_drf().await;
        let report = assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/cursor/tickets/"
    [jobs.pagination]
    kind = "next_url"
    next_path = "/next"
    "#)
        .await;
        assert_eq!(report.counts.pages, 51);
    }

    /// A typo in `next_path` finds nothing on the first page: that is a
    /// broken configuration, not a one-page collection.
    async fn a_wrong_next_path_fails_instead_of_stopping_after_one_page(backend: Backend) {
        // Arrange, Act
        let (env, _server, report) = run_once(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/cursor/tickets/"
    [jobs.pagination]
    kind = "next_url"
    next_path = "/nxt"
    "#,
        )
        .await;

        // Assert
        assert_failed_with(&env, &report, "/nxt").await;
        assert!(env.rows(TABLE).await.len() <= 100, "no page past the first");
    }
}
