//! FastAPI with fastapi-pagination: 1,234 orders as `Page`
//! (`{"items", "total", "page", "size", "pages"}`, 200 with no items past the
//! end) and `LimitOffsetPage` (`{"items", "total", "limit", "offset"}`); a
//! size or limit above 100 is refused with 422 rather than capped.

use serde_json::json;

use super::servers;
use super::{
    Changes, TABLE, assert_archive_is_exact, assert_changes_applied_exactly, assert_failed_with,
    assert_resync_writes_nothing, run_job,
};
use crate::helpers::store_tests;

/// Pages of 100 up to the page count the body states.
const PAGES_WITH_COUNT: &str = r#"
records = "/items"
[jobs.request]
url = "{api}/pages/orders"
[jobs.pagination]
kind = "page"
size_param = "size"
size = 100
total_pages_path = "/pages"
"#;

fn changes() -> Changes {
    Changes::Http {
        // Order 7 is "open"; 600 and 1234 get values they do not hold.
        patches: vec![
            ("/orders/7".to_owned(), json!({"status": "solved"})),
            ("/orders/600".to_owned(), json!({"total_cents": 1})),
            ("/orders/1234".to_owned(), json!({"lines": []})),
        ],
        post_path: "/orders".to_owned(),
        posts: (1..=2)
            .map(|i| {
                json!({
                    "reference": format!("ORD-LATE-{i}"),
                    "status": "new",
                    "customer": format!("late{i}@example.com"),
                    "total_cents": 100 * i,
                })
            })
            .collect(),
    }
}

store_tests! {
    async fn archive_is_exact(backend: Backend) {
        let server = servers::shared_fastapi().await;
        let report = assert_archive_is_exact(backend, server, PAGES_WITH_COUNT).await;
        assert_eq!(
            report.counts.pages, 14,
            "12 pages of 100, one of 34, and the empty one past the total that confirms it"
        );
    }

    async fn resync_writes_nothing(backend: Backend) {
        let server = servers::shared_fastapi().await;
        assert_resync_writes_nothing(backend, server, PAGES_WITH_COUNT).await;
    }

    async fn changes_are_applied_exactly(backend: Backend) {
        let server = servers::fastapi().await;
        assert_changes_applied_exactly(backend, &server, PAGES_WITH_COUNT, changes()).await;
    }

    /// The record count from `total`.
    async fn page_pagination_reads_the_record_count_from_total(backend: Backend) {
        let server = servers::shared_fastapi().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/pages/orders"
    [jobs.pagination]
    kind = "page"
    size_param = "size"
    size = 100
    total_path = "/total"
    "#)
        .await;
    }

    /// Without a total, page 14 of 13 answers `"items": []`: the end.
    async fn page_pagination_without_a_total_ends_on_the_empty_page(backend: Backend) {
        let server = servers::shared_fastapi().await;
        let report = assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/pages/orders"
    [jobs.pagination]
    kind = "page"
    size_param = "size"
    size = 100
    "#)
        .await;
        assert_eq!(report.counts.pages, 14, "13 pages, then the empty one");
    }

    async fn offset_pagination_with_the_total(backend: Backend) {
        let server = servers::shared_fastapi().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/offsets/orders"
    [jobs.pagination]
    kind = "offset"
    limit = 100
    total_path = "/total"
    "#)
        .await;
    }

    /// A limit above the maximum is a 422 on the first request: the run
    /// fails saying so, with nothing stored.
    async fn a_limit_above_the_maximum_fails_the_run_with_the_422(backend: Backend) {
        // Arrange
        let server = servers::shared_fastapi().await;

        // Act
        let (env, report) = run_job(
            backend,
            server,
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/offsets/orders"
    [jobs.pagination]
    kind = "offset"
    limit = 1000
    total_path = "/total"
    "#,
        )
        .await;

        // Assert
        assert_failed_with(&env, &report, "422").await;
        assert!(env.rows(TABLE).await.is_empty());
    }
}
