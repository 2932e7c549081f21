//! json-server 1.0.0-beta.3: `?_page=N&_per_page=L` answers
//! `{"first", "prev", "next", "last", "pages", "items", "data"}` (`items` is the
//! record count, `data` the records), ids become strings, and a page number
//! past the end is clamped: it answers the last page again, 200, with
//! `"next": null`. No headers carry a total.

use serde_json::json;

use super::servers;
use super::{
    Changes, assert_archive_is_exact, assert_changes_applied_exactly,
    assert_deletions_marked_exactly, assert_resync_writes_nothing,
};
use crate::helpers::store_tests;

/// Pages of 50 up to the page count the body states: the shape today's code
/// already stops on.
const PAGES_WITH_COUNT: &str = r#"
records = "/data"
[jobs.request]
url = "{api}/tickets"
[jobs.pagination]
kind = "page"
page_param = "_page"
size_param = "_per_page"
size = 50
total_pages_path = "/pages"
"#;

fn changes() -> Changes {
    Changes::Http {
        // Ticket 7 is "open"; 100 and 320 get values they do not hold.
        patches: vec![
            ("/tickets/7".to_owned(), json!({"status": "solved"})),
            ("/tickets/100".to_owned(), json!({"amountCents": 1})),
            (
                "/tickets/320".to_owned(),
                json!({"customer": {"name": "Renamed", "email": "renamed@example.com"}}),
            ),
        ],
        // 1.x gives new records a random 4-hex-digit string id.
        post_path: "/tickets".to_owned(),
        posts: (1..=2)
            .map(|i| {
                json!({
                    "title": format!("Added between runs {i}"),
                    "status": "new",
                    "customer": {"name": "Late", "email": format!("late{i}@example.com")},
                    "amountCents": 0,
                    "createdAt": "2026-01-01T00:00:00Z",
                    "updatedAt": "2026-01-01T00:00:00Z",
                })
            })
            .collect(),
    }
}

store_tests! {
    async fn archive_is_exact(backend: Backend) {
        let server = servers::shared_json_server_1().await;
        let report = assert_archive_is_exact(backend, server, PAGES_WITH_COUNT).await;
        assert_eq!(
            report.counts.pages, 8,
            "6 pages of 50, one of 20, and page 8, which confirms the end by serving page 7 again"
        );
    }

    async fn resync_writes_nothing(backend: Backend) {
        let server = servers::shared_json_server_1().await;
        assert_resync_writes_nothing(backend, server, PAGES_WITH_COUNT).await;
    }

    async fn changes_are_applied_exactly(backend: Backend) {
        let server = servers::json_server_1().await;
        assert_changes_applied_exactly(backend, &server, PAGES_WITH_COUNT, changes()).await;
    }

    async fn records_deleted_through_the_api_are_marked_exactly(backend: Backend) {
        let server = servers::json_server_1().await;
        let deletes = ["/tickets/1", "/tickets/170", "/tickets/320"];
        assert_deletions_marked_exactly(backend, &server, PAGES_WITH_COUNT, &deletes).await;
    }

    /// With no total configured, page 8 of 7 answers page 7 again. That is
    /// the end of the collection, not an API ignoring its parameters: the run
    /// succeeds with every record.
    async fn page_numbers_past_the_end_are_clamped_and_the_run_still_succeeds(
        backend: Backend
    ) {
        let server = servers::shared_json_server_1().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/tickets"
    [jobs.pagination]
    kind = "page"
    page_param = "_page"
    size_param = "_per_page"
    size = 50
    "#)
        .await;
    }

    /// The record count from `items` (a number here, not the records).
    async fn page_pagination_reads_the_record_count_from_items(backend: Backend) {
        let server = servers::shared_json_server_1().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/tickets"
    [jobs.pagination]
    kind = "page"
    page_param = "_page"
    size_param = "_per_page"
    size = 50
    total_path = "/items"
    "#)
        .await;
    }
}
