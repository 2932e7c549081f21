//! Datasette 0.65 over a copy of the DRF template: `?_shape=objects&_size=100`
//! answers `{"rows", "next", "next_url", "filtered_table_rows_count", …}`, where
//! `next` is a keyset token (the last id) for `?_next=`, null on the last page.
//! `_size` above 1,000 is a 400, not a cap. Read-only over HTTP: changes go
//! into its SQLite file, which it reads live.

use super::servers;
use super::{
    Changes, TABLE, assert_archive_is_exact, assert_changes_applied_exactly, assert_failed_with,
    assert_resync_writes_nothing, run_job,
};
use crate::helpers::store_tests;

/// The cursor token at `/next`, sent back as `_next`: the shape today's code
/// already reads.
const CURSOR: &str = r#"
records = "/rows"
[jobs.request]
url = "{api}/tickets/tickets_ticket.json"
query = { _shape = "objects", _size = "100" }
[jobs.pagination]
kind = "cursor"
cursor_param = "_next"
cursor_path = "/next"
"#;

fn changes() -> Changes {
    // The same three tickets as the DRF tests change, and two new ones.
    Changes::Sql(vec![
        "UPDATE tickets_ticket SET status = 'solved' WHERE id = 7",
        "UPDATE tickets_ticket SET priority = 'urgent' WHERE id = 2500",
        "UPDATE tickets_ticket SET assignee = NULL WHERE id = 5002",
        "INSERT INTO tickets_ticket (subject, status, priority, requester, assignee, tags, \
         created_at, updated_at) VALUES ('Added between runs 1', 'new', 'normal', \
         'late1@example.com', NULL, '[\"late\"]', '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
        "INSERT INTO tickets_ticket (subject, status, priority, requester, assignee, tags, \
         created_at, updated_at) VALUES ('Added between runs 2', 'new', 'normal', \
         'late2@example.com', NULL, '[\"late\"]', '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
    ])
}

store_tests! {
    async fn archive_is_exact(backend: Backend) {
        let server = servers::shared_datasette().await;
        let report = assert_archive_is_exact(backend, server, CURSOR).await;
        assert_eq!(report.counts.pages, 51, "50 pages of 100 and one of 2");
    }

    async fn resync_writes_nothing(backend: Backend) {
        let server = servers::shared_datasette().await;
        assert_resync_writes_nothing(backend, server, CURSOR).await;
    }

    async fn changes_are_applied_exactly(backend: Backend) {
        let server = servers::datasette().await;
        assert_changes_applied_exactly(backend, &server, CURSOR, changes()).await;
    }

    /// The same walk by the ready-made link at `/next_url`.
    async fn next_url_pagination_follows_next_url(backend: Backend) {
        let server = servers::shared_datasette().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/rows"
    [jobs.request]
    url = "{api}/tickets/tickets_ticket.json"
    query = { _shape = "objects", _size = "100" }
    [jobs.pagination]
    kind = "next_url"
    next_path = "/next_url"
    "#,
        )
        .await;
    }

    /// A cursor with the record count from `filtered_table_rows_count`.
    async fn cursor_pagination_reads_the_record_count(backend: Backend) {
        let server = servers::shared_datasette().await;
        assert_archive_is_exact(
            backend,
            server,
            r#"
    records = "/rows"
    [jobs.request]
    url = "{api}/tickets/tickets_ticket.json"
    query = { _shape = "objects", _size = "100" }
    [jobs.pagination]
    kind = "cursor"
    cursor_param = "_next"
    cursor_path = "/next"
    total_path = "/filtered_table_rows_count"
    "#,
        )
        .await;
    }

    /// Left at its default `/next_cursor`, the cursor pointer finds nothing
    /// on the first page: a broken configuration, not a one-page table.
    async fn a_missing_cursor_member_fails_instead_of_stopping_after_one_page(
        backend: Backend
    ) {
        // Arrange
        let server = servers::shared_datasette().await;

        // Act
        let (env, report) = run_job(
            backend,
            server,
            r#"
    records = "/rows"
    [jobs.request]
    url = "{api}/tickets/tickets_ticket.json"
    query = { _shape = "objects", _size = "100" }
    [jobs.pagination]
    kind = "cursor"
    cursor_param = "_next"
    "#,
        )
        .await;

        // Assert
        assert_failed_with(&env, &report, "/next_cursor").await;
        assert!(env.rows(TABLE).await.len() <= 100, "no page past the first");
    }

    /// `_size=1001` is refused with 400 `_size must be <= 1000`: the run fails
    /// saying so, with nothing stored.
    async fn a_size_above_the_maximum_fails_the_run_with_the_400(backend: Backend) {
        // Arrange
        let server = servers::shared_datasette().await;

        // Act
        let (env, report) = run_job(
            backend,
            server,
            r#"
    records = "/rows"
    [jobs.request]
    url = "{api}/tickets/tickets_ticket.json"
    query = { _shape = "objects", _size = "1001" }
    [jobs.pagination]
    kind = "cursor"
    cursor_param = "_next"
    cursor_path = "/next"
    "#,
        )
        .await;

        // Assert
        assert_failed_with(&env, &report, "400").await;
        assert!(env.rows(TABLE).await.is_empty());
    }
}
