//! json-server 0.17.4: `?_page=N&_limit=L` (or `?_start=O&_limit=L`) answers a
//! bare array with `X-Total-Count` (on HEAD too) and, for `_page`, an RFC 8288
//! `Link` header with first/prev/next/last. Past the end: 200, `[]`, and an
//! empty `Link:` header.

use serde_json::json;

use super::servers;
use super::{
    Changes, assert_archive_is_exact, assert_changes_applied_exactly, assert_resync_writes_nothing,
};
use crate::helpers::store_tests;

/// The `Link` header, from a first request that asks for pages of 50 (without
/// `_page` json-server sends no Link at all).
const LINK_HEADER: &str = r#"
records = ""
[jobs.request]
url = "{api}/tickets"
query = { _page = "1", _limit = "50" }
[jobs.pagination]
kind = "link_header"
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
        // 0.17 numbers them 321 and 322 (the highest id plus one).
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
        let server = servers::shared_json_server_0_17().await;
        let report = assert_archive_is_exact(backend, server, LINK_HEADER).await;
        assert_eq!(report.counts.pages, 7, "6 pages of 50 and one of 20; no rel=next on the last");
    }

    async fn resync_writes_nothing(backend: Backend) {
        let server = servers::shared_json_server_0_17().await;
        assert_resync_writes_nothing(backend, server, LINK_HEADER).await;
    }

    async fn changes_are_applied_exactly(backend: Backend) {
        let server = servers::json_server_0_17().await;
        assert_changes_applied_exactly(backend, &server, LINK_HEADER, changes()).await;
    }

    /// `page` with the record count from `X-Total-Count`.
    async fn page_pagination_reads_the_total_from_x_total_count(backend: Backend) {
        let server = servers::shared_json_server_0_17().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = ""
    [jobs.request]
    url = "{api}/tickets"
    [jobs.pagination]
    kind = "page"
    page_param = "_page"
    size_param = "_limit"
    size = 50
    total_header = "X-Total-Count"
    "#)
        .await;
    }

    /// The same total asked for once with HEAD, which json-server answers
    /// with the header and no body.
    async fn page_pagination_reads_the_total_from_a_head_request(backend: Backend) {
        let server = servers::shared_json_server_0_17().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = ""
    [jobs.request]
    url = "{api}/tickets"
    [jobs.pagination]
    kind = "page"
    page_param = "_page"
    size_param = "_limit"
    size = 50
    total_header = "X-Total-Count"
    total_method = "HEAD"
    "#)
        .await;
    }

    /// Without a total, the empty array past the last page ends it.
    async fn page_pagination_without_a_total_ends_on_the_empty_page(backend: Backend) {
        let server = servers::shared_json_server_0_17().await;
        let report = assert_archive_is_exact(
            backend,
            server,
            r#"
    records = ""
    [jobs.request]
    url = "{api}/tickets"
    [jobs.pagination]
    kind = "page"
    page_param = "_page"
    size_param = "_limit"
    size = 50
    "#)
        .await;
        assert_eq!(report.counts.pages, 8, "7 pages, then the empty one");
    }

    /// `_start` and `_limit` are offset pagination, with the same header total.
    async fn offset_pagination_with_start_and_limit(backend: Backend) {
        let server = servers::shared_json_server_0_17().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = ""
    [jobs.request]
    url = "{api}/tickets"
    [jobs.pagination]
    kind = "offset"
    offset_param = "_start"
    limit_param = "_limit"
    limit = 50
    total_header = "X-Total-Count"
    "#)
        .await;
    }
}
