//! Every pagination kind copies a multi-page data set exactly, and broken
//! pagination ends the run as failed without losing what was committed.

use std::time::Duration;

use crate::fake_api::FakeApi;
use crate::helpers::{Backend, TestEnv, expected_rows, products, store_tests, walk};

/// Not a multiple of any page size used below, so every last page is short.
const N: usize = 2_500;

/// `page` pagination that knows the total: the next URL is certain before
/// the current answer arrives.
const PAGES_WITH_TOTAL: &str = r#"
records = "/data"
[jobs.request]
url = "{api}/page"
[jobs.pagination]
kind = "page"
size = 10
total_pages_path = "/total_pages"
"#;

async fn assert_syncs_exactly(backend: Backend, job_body: &str) -> u64 {
    assert_syncs_exactly_with_requests(backend, job_body)
        .await
        .0
}

/// Syncs `N` records and checks the table; returns the pages read and the
/// requests the API saw.
async fn assert_syncs_exactly_with_requests(
    backend: Backend,
    job_body: &str,
) -> (u64, Vec<String>) {
    // Arrange
    let env = TestEnv::start_on(backend, products(N)).await;
    let job = env.job(job_body);

    // Act
    let report = env.run(&job).await;

    // Assert
    assert_eq!(report.error, None);
    assert_eq!(report.counts.fetched, N as u64);
    assert_eq!(report.counts.inserted, N as u64);
    assert_eq!(report.counts.duplicate, 0);
    assert_eq!(
        env.rows("products").await,
        expected_rows(&env.api.records())
    );
    (report.counts.pages, env.api.requests())
}

/// Runs a job against a broken endpoint and checks the run failed with
/// `expected` in its error while the rows of earlier pages stayed.
async fn assert_fails_keeping_rows(
    backend: Backend,
    job_body: &str,
    expected: &str,
    rows_kept: usize,
) {
    // Arrange
    let env = TestEnv::start_on(backend, products(100)).await;
    let job = env.job(job_body);

    // Act
    let report = env.run(&job).await;

    // Assert
    let error = report.error.clone().expect("the run failed");
    assert!(
        error.contains(expected),
        "error {error:?} should contain {expected:?}"
    );
    let (status, stored_error) = env.run_row(report.run_id).await;
    assert_eq!(status, "failed");
    assert_eq!(stored_error.as_deref(), Some(error.as_str()));
    assert_eq!(env.rows("products").await.len(), rows_kept);
    assert_eq!(
        report.counts.inserted, rows_kept as u64,
        "counts cover the committed pages"
    );
}

store_tests! {
    async fn page_pagination_copies_every_record_once(backend: Backend) {
        let pages = assert_syncs_exactly(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/page"
    [jobs.pagination]
    kind = "page"
    size = 99
    "#,
        )
        .await;
        assert_eq!(
            pages, 27,
            "26 pages of records, then the empty page that ends it"
        );
    }

    async fn page_pagination_stops_at_total_pages(backend: Backend) {
        let (pages, requests) = assert_syncs_exactly_with_requests(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/page"
    query = { status = "all" }
    [jobs.pagination]
    kind = "page"
    size = 99
    total_pages_path = "/total_pages"
    "#,
        )
        .await;
        assert_eq!(pages, 27, "26 pages, then one request past the total confirms it");
        assert_eq!(
            requests.first().unwrap(),
            "/page?status=all&page=1&per_page=99"
        );
        // The request sent ahead may overtake the one before it.
        let mut requests = requests;
        requests.sort();
        let mut expected: Vec<String> = (1..=27)
            .map(|page| format!("/page?status=all&page={page}&per_page=99"))
            .collect();
        expected.sort();
        assert_eq!(
            requests, expected,
            "each page once, one past the total (the requests sent ahead included)"
        );
    }

    async fn offset_pagination_copies_every_record_once(backend: Backend) {
        let pages = assert_syncs_exactly(
            backend,
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/offset"
    [jobs.pagination]
    kind = "offset"
    limit = 90
    "#,
        )
        .await;
        assert_eq!(
            pages, 29,
            "a short 28th page is not the end (APIs cap limits): the empty 29th is"
        );
    }

    async fn cursor_pagination_copies_every_record_once(backend: Backend) {
        assert_syncs_exactly(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/cursor"
    [jobs.pagination]
    kind = "cursor"
    "#,
        )
        .await;
    }

    async fn link_header_pagination_copies_every_record_once(backend: Backend) {
        assert_syncs_exactly(
            backend,
            r#"
    records = ""
    [jobs.request]
    url = "{api}/link"
    [jobs.pagination]
    kind = "link_header"
    "#,
        )
        .await;
    }

    async fn next_url_pagination_copies_every_record_once(backend: Backend) {
        assert_syncs_exactly(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/next"
    [jobs.pagination]
    kind = "next_url"
    "#,
        )
        .await;
    }

    async fn no_pagination_copies_the_single_page(backend: Backend) {
        let pages = assert_syncs_exactly(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/none"
    "#,
        )
        .await;
        assert_eq!(pages, 1);
    }

    async fn a_post_request_sends_its_body_and_headers(backend: Backend) {
        let pages = assert_syncs_exactly(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/search"
    method = "POST"
    body = { status = "all" }
    headers = { X-Api-Key = "k-123" }
    "#,
        )
        .await;
        assert_eq!(pages, 1);
    }

    async fn a_repeating_cursor_fails_the_run_and_keeps_committed_rows(backend: Backend) {
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/loop/cursor"
    [jobs.pagination]
    kind = "cursor"
    "#,
            "the API sent the address of page 2 again",
            20,
        )
        .await;
    }

    async fn a_repeating_next_url_fails_the_run_and_keeps_committed_rows(backend: Backend) {
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/results"
    [jobs.request]
    url = "{api}/loop/next"
    [jobs.pagination]
    kind = "next_url"
    "#,
            "the API sent the address of page 2 again",
            20,
        )
        .await;
    }

    async fn an_api_that_never_stops_fails_at_max_pages(backend: Backend) {
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/data"
    max_pages = 5
    [jobs.request]
    url = "{api}/endless"
    [jobs.pagination]
    kind = "page"
    "#,
            "the API has more than max_pages = 5 pages",
            50,
        )
        .await;
    }

    async fn an_api_that_ignores_the_page_parameter_fails_on_the_repeated_page(backend: Backend) {
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/same"
    [jobs.pagination]
    kind = "page"
    "#,
            "page 2 holds exactly the records of page 1",
            10,
        )
        .await;
    }

    async fn a_body_over_max_body_bytes_fails_the_run(backend: Backend) {
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/data"
    max_body_bytes = "1KiB"
    [jobs.request]
    url = "{api}/none"
    "#,
            "the response body is larger than max_body_bytes (1024 bytes)",
            0,
        )
        .await;
    }

    async fn a_records_pointer_that_finds_no_array_fails_the_run(backend: Backend) {
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/total_pages"
    [jobs.request]
    url = "{api}/page"
    [jobs.pagination]
    kind = "page"
    "#,
            "records pointer `/total_pages` found a number, expected an array of records; the \
             response has the top-level keys \"data\", \"total\", \"total_pages\"",
            0,
        )
        .await;
    }

    async fn max_body_bytes_counts_the_decompressed_body(backend: Backend) {
        // 100 records are about 17 kB of JSON, well under 4 KiB compressed.
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/data"
    max_body_bytes = "4KiB"
    [jobs.request]
    url = "{api}/gzip"
    "#,
            "the response body is larger than max_body_bytes (4096 bytes)",
            0,
        )
        .await;
    }

    async fn a_gzip_body_under_the_cap_is_read(backend: Backend) {
        assert_syncs_exactly(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/gzip"
    "#,
        )
        .await;
    }

    async fn a_redirect_to_another_origin_is_refused(backend: Backend) {
        assert_fails_keeping_rows(
            backend,
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/redirect"
    headers = { X-Api-Key = "k-123" }
    "#,
            "refused a redirect to http://localhost:",
            0,
        )
        .await;
    }

    async fn offset_pagination_with_a_total_survives_a_capped_page_size(backend: Backend) {
        // The API caps `limit` at 100: every page is "short", but the total says
        // there is more.
        assert_syncs_exactly(
            backend,
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/offset"
    [jobs.pagination]
    kind = "offset"
    limit = 150
    total_path = "/total"
    "#,
        )
        .await;
    }
}

// Requests sent ahead: the source side alone against the fake API, on tokio's
// paused clock, so the answers' delays (long enough that a request sent ahead
// finds the one before it still waiting) cost no real time. What a run
// stores of the pages is the store tests' part.

#[tokio::test(start_paused = true)]
async fn with_a_known_total_the_next_page_is_asked_for_while_one_is_read() {
    // Arrange: 6 pages, each answered after a delay.
    let api = FakeApi::start(products(60)).await;
    api.set_delay(Duration::from_millis(300));

    // Act
    let walk = walk(&api, PAGES_WITH_TOTAL).await;

    // Assert: every page once, and a request that arrived while the one
    // before it was still waiting for its answer.
    assert!(walk.error.is_none(), "{:?}", walk.error);
    assert_eq!(walk.records, api.records());
    let mut pages: Vec<String> = api.arrivals().into_iter().map(|(_, uri)| uri).collect();
    pages.sort();
    let mut expected: Vec<String> = (1..=7)
        .map(|page| format!("/page?page={page}&per_page=10"))
        .collect();
    expected.sort();
    assert_eq!(pages, expected, "6 pages and the one that confirms the end");
    assert_eq!(api.max_in_flight(), 2, "one request ahead, no more");
}

#[tokio::test(start_paused = true)]
async fn an_api_that_announces_quotas_is_asked_one_page_at_a_time() {
    // Arrange: the same, but every answer says how much quota is left.
    let api = FakeApi::start(products(60)).await;
    api.set_delay(Duration::from_millis(300));
    api.set_quota_headers(true);

    // Act
    let walk = walk(&api, PAGES_WITH_TOTAL).await;

    // Assert: each request waited for the answer before it.
    assert!(walk.error.is_none(), "{:?}", walk.error);
    assert_eq!(walk.records.len(), 60);
    assert_eq!(api.arrivals().len(), 7);
    assert_eq!(api.max_in_flight(), 1);
}
