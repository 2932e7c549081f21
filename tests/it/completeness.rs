//! Guarantee 7, "complete, or loud": each way a run was seen to end
//! `succeeded` with part of its source (against our fake API and against
//! real servers), and each record that used to fail every run for ever. A
//! run either reads the whole source or fails naming the cause, and keeps
//! what it read.

use apisync::run::FailureReason;
use serde_json::{Value, json};

use crate::helpers::{JobToml, TestEnv, expected_rows, product, products, store_tests};

/// Records with an `updated_at` one minute apart, from 2026-01-01.
fn timed(n: usize, time: impl Fn(usize) -> String) -> Vec<Value> {
    (1..=n)
        .map(|id| {
            let mut record = product(id);
            record["updated_at"] = json!(time(id));
            record
        })
        .collect()
}

fn rfc3339(id: usize) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    (base + chrono::Duration::minutes(id as i64))
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

const INCREMENTAL_PAGES: &str = r#"
records = "/data"
[jobs.request]
url = "{api}/page"
[jobs.pagination]
kind = "page"
size = 50
[jobs.incremental]
field = "updated_at"
param = "updated_since"
lookback = "0s"
"#;

store_tests! {
    /// Case 1: an API that repeats the end of the previous page (records
    /// inserted while paging) used to push the offset past as many records.
    async fn offset_pages_that_repeat_records_are_paged_without_skipping(backend: Backend) {
        // Arrange: every page after the first starts 3 records early.
        let env = TestEnv::start_on(backend, products(1_000)).await;
        env.api.set_offset_overlap(3);
        let job = env.job(
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/offset"
    [jobs.pagination]
    kind = "offset"
    limit = 100
    "#,
        );

        // Act
        let report = env.run(&job).await;

        // Assert: all 1,000 (970 before), the repeats counted as duplicates:
        // 3 on each of pages 2 to 10, and the 3 the request past the end gets.
        assert_eq!(report.error, None);
        assert_eq!(env.rows("products").await, expected_rows(&env.api.records()));
        assert_eq!(report.counts.duplicate, 10 * 3);
    }

    /// Case 2: a `limit` above the API's own maximum (the fake caps at 100,
    /// DRF at `max_limit`) made the first, short page look like the last.
    async fn an_offset_limit_above_the_apis_maximum_is_paged_at_the_apis_size(backend: Backend) {
        let env = TestEnv::start_on(backend, products(2_500)).await;
        let job = env.job(
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/offset"
    [jobs.pagination]
    kind = "offset"
    limit = 1000
    "#,
        );

        let report = env.run(&job).await;

        assert_eq!(report.error, None);
        assert_eq!(report.counts.inserted, 2_500, "100 before");
        assert_eq!(env.rows("products").await, expected_rows(&env.api.records()));
    }

    /// Case 3: a wrong `cursor_path` stored one page and succeeded.
    async fn a_cursor_pointer_that_finds_nothing_fails_the_run_naming_what_is_there(backend: Backend) {
        let env = TestEnv::start_on(backend, products(500)).await;
        let job = env.job(
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/cursor"
    [jobs.pagination]
    kind = "cursor"
    cursor_path = "/cursor"
    "#,
        );

        let report = env.run(&job).await;

        let error = report.error.expect("the run fails");
        assert!(
            error.contains("cursor_path `/cursor` finds nothing on a first page that holds records"),
            "{error}"
        );
        assert!(
            error.contains(r#"the top-level keys "data", "next_cursor""#),
            "{error}"
        );
        assert_eq!(report.failure, Some(FailureReason::Pagination));
        assert_eq!(env.run_row(report.run_id).await.0, "failed");
    }

    /// Case 4: a key typo rejected every record and succeeded; every re-run
    /// stored all the rejects again.
    async fn a_key_typo_fails_the_run_and_its_rejects_are_stored_once(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(120)).await;
        let job = env.job(JobToml::paged(50).keyed(&["ID"]));

        // Act
        let first = env.run(&job).await;
        let second = env.run(&job).await;

        // Assert
        for report in [&first, &second] {
            let error = report.error.clone().expect("the run fails");
            assert!(
                error.contains(
                    "120 of 120 records were rejected, more than max_rejected = 10% allows \
                     (the first: key field `ID` is missing)"
                ),
                "{error}"
            );
            assert!(error.contains("`apisync rejects products`"), "{error}");
            assert_eq!(report.failure, Some(FailureReason::Rejects));
            assert_eq!(report.counts.rejected, 120);
            assert_eq!(
                report.first_reject.as_deref(),
                Some("key field `ID` is missing")
            );
        }
        let rejects = env.rejects().await;
        assert_eq!(rejects.len(), 120, "the second run stored no reject again");
        assert!(rejects.iter().all(|(_, _, run)| Some(*run) == first.run_id));
    }

    async fn max_rejected_takes_a_count_or_a_share(backend: Backend) {
        // Arrange: 1 record of 60 has no key.
        let mut records = products(59);
        records.push(json!({"name": "no key"}));
        let env = TestEnv::start_on(backend, records).await;
        let body = |limit: &str| {
            format!("max_rejected = {limit}\nrecords = \"/data\"\n[jobs.request]\nurl = \"{{api}}/none\"\n")
        };

        // Act / Assert: the default (10%) lets it pass, 0 does not, "1%" does not.
        assert_eq!(env.run(&env.job(body("\"10%\""))).await.error, None);
        let strict = env.run(&env.job(body("0"))).await;
        assert_eq!(strict.failure, Some(FailureReason::Rejects));
        assert!(
            strict.error.unwrap().contains("1 of 60 records were rejected, more than max_rejected = 0"),
        );
        assert_eq!(
            env.run(&env.job(body("\"1%\""))).await.failure,
            Some(FailureReason::Rejects)
        );
        assert_eq!(env.run(&env.job(body("1"))).await.error, None);
        assert_eq!(env.rows("products").await.len(), 59, "the good rows are kept");
        assert_eq!(env.rejects().await.len(), 1, "stored once");
    }

    /// Case 5: one record from the year 9999 pinned the watermark, and every
    /// later run asked for changes since then and found none.
    async fn a_far_future_time_does_not_move_the_watermark(backend: Backend) {
        // Arrange
        let mut records = timed(100, rfc3339);
        records[41]["updated_at"] = json!("9999-12-31T23:59:59Z");
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(INCREMENTAL_PAGES);
        let first = env.run(&job).await;
        assert_eq!(first.error, None);
        assert_eq!(
            env.ctx.store.watermark("products").await.unwrap(),
            Some(json!(rfc3339(100))),
            "the highest time within max_future of the clock"
        );

        // Act: a record changes after that.
        let mut records = env.api.records();
        records[9]["name"] = json!("changed");
        records[9]["updated_at"] = json!(rfc3339(500));
        env.api.set_records(records.clone());
        let second = env.run(&job).await;

        // Assert
        assert_eq!(second.error, None);
        assert_eq!(second.counts.updated, 1, "the change is seen");
        assert_eq!(env.rows("products").await, expected_rows(&records));
    }

    /// Case 6: times in another format never moved the watermark: every
    /// run read everything, and succeeded.
    async fn times_in_another_format_fail_the_run_until_the_format_is_given(backend: Backend) {
        // Arrange: SQLite's and MySQL's usual form.
        let sql_time = |id: usize| rfc3339(id).replace('T', " ").replace('Z', "");
        let env = TestEnv::start_on(backend, timed(60, sql_time)).await;

        // Act
        let without = env.run(&env.job(INCREMENTAL_PAGES)).await;
        let formatted_job = env.job(format!(
            "{INCREMENTAL_PAGES}format = \"%Y-%m-%d %H:%M:%S\"\ntimezone = \"UTC\"\n"
        ));
        let with = env.run(&formatted_job).await;
        let requests_before = env.api.requests().len();
        let again = env.run(&formatted_job).await;

        // Assert: without a format the run names the field and a value…
        let error = without.error.expect("the run fails");
        assert!(
            error.contains(
                "none of the 60 records read has a readable incremental field `updated_at` \
                 (one has \"2026-01-01 00:01:00\")"
            ),
            "{error}"
        );
        assert!(error.contains("set incremental.format"), "{error}");
        assert_eq!(without.failure, Some(FailureReason::Pagination));
        assert_eq!(env.rows("products").await.len(), 60, "the rows are kept");
        // …with one, the watermark moves and is sent back in that format.
        assert_eq!(with.error, None);
        assert_eq!(
            env.ctx.store.watermark("products").await.unwrap(),
            Some(json!("2026-01-01 01:00:00"))
        );
        assert_eq!(again.error, None);
        assert_eq!(again.counts.fetched, 1, "only the record at the watermark");
        let asked = &env.api.requests()[requests_before];
        assert!(
            asked.contains("updated_since=2026-01-01+01%3A00%3A00"),
            "{asked}"
        );
    }

    /// Case 7: a stated page count that is too small ended the run early.
    async fn a_stated_total_that_is_too_small_is_found_out_by_the_confirming_request(backend: Backend) {
        let env = TestEnv::start_on(backend, products(2_500)).await;
        env.api.state_totals(None, Some(3));
        let job = env.job(
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/page"
    [jobs.pagination]
    kind = "page"
    size = 99
    total_pages_path = "/total_pages"
    "#,
        );

        let report = env.run(&job).await;

        assert_eq!(report.error, None);
        assert_eq!(report.counts.inserted, 2_500, "3 pages (297) before");
        assert_eq!(env.rows("products").await, expected_rows(&env.api.records()));
    }

    async fn fewer_keys_than_the_api_states_fail_the_run_as_incomplete(backend: Backend) {
        // Arrange: the API says 3,000 and serves 2,500.
        let env = TestEnv::start_on(backend, products(2_500)).await;
        env.api.state_totals(Some(3_000), None);
        let job = env.job(
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/page"
    [jobs.pagination]
    kind = "page"
    size = 100
    total_path = "/total"
    "#,
        );

        // Act
        let report = env.run(&job).await;

        // Assert: failed, named, counted, every row read kept.
        let error = report.error.expect("the run fails");
        assert!(
            error.contains("incomplete: the API states 3000 records, but the run read 2500 distinct keys"),
            "{error}"
        );
        assert_eq!(report.failure, Some(FailureReason::Incomplete));
        assert_eq!(report.expected, Some(3_000));
        assert_eq!(env.run_expected(report.run_id).await, Some(3_000));
        assert_eq!(env.rows("products").await.len(), 2_500);
    }

    async fn a_total_in_a_header_is_recorded_and_checked(backend: Backend) {
        // Arrange: json-server 0.17's X-Total-Count, and Content-Range.
        let env = TestEnv::start_on(backend, products(450)).await;
        let link = env.job(
            r#"
    records = ""
    [jobs.request]
    url = "{api}/link"
    [jobs.pagination]
    kind = "link_header"
    total_header = "X-Total-Count"
    "#,
        );
        let ranges = env.job(
            r#"
    records = "/items"
    [jobs.request]
    url = "{api}/offset"
    [jobs.pagination]
    kind = "offset"
    limit = 100
    total_header = "Content-Range"
    "#,
        );

        // Act
        let by_link = env.run(&link).await;
        let by_range = env.run(&ranges).await;

        // Assert
        for report in [&by_link, &by_range] {
            assert_eq!(report.error, None);
            assert_eq!(report.expected, Some(450));
            assert_eq!(env.run_expected(report.run_id).await, Some(450));
        }
        assert_eq!(env.rows("products").await, expected_rows(&env.api.records()));
        assert_eq!(
            by_range.counts.pages, 6,
            "5 pages, then one past the total confirms it (the 5th is short: not the end by itself)"
        );
    }

    async fn a_configured_total_that_no_response_carries_fails_the_run(backend: Backend) {
        let env = TestEnv::start_on(backend, products(100)).await;
        let misspelt = |locator: &str| {
            env.job(format!(
                "records = \"/data\"\n[jobs.request]\nurl = \"{{api}}/page\"\n\
                 [jobs.pagination]\nkind = \"page\"\nsize = 10\n{locator}\n"
            ))
        };

        let by_path = env.run(&misspelt("total_path = \"/totl\"")).await;
        let by_header = env.run(&misspelt("total_header = \"X-Total\"")).await;

        let error = by_path.error.expect("the run fails");
        assert!(
            error.contains("total_path `/totl` finds no total in the first response, which has the top-level keys"),
            "{error}"
        );
        assert!(
            by_header
                .error
                .expect("the run fails")
                .contains("total_header `X-Total` finds no total"),
        );
        assert_eq!(by_path.failure, Some(FailureReason::Pagination));
    }

    /// Django REST Framework's `PageNumberPagination`: a record count, and
    /// 404 past the last page (every `kind = "page"` run used to fail after
    /// storing everything).
    async fn drf_page_numbers_end_on_404_and_check_the_count(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(250)).await;
        let job = |extra: &str| {
            env.job(format!(
                "records = \"/results\"\n[jobs.request]\nurl = \"{{api}}/drf\"\n\
                 [jobs.pagination]\nkind = \"page\"\n{extra}\n"
            ))
        };

        // Act
        let on_404 = env.run(&job("end_on_status = [404]")).await;
        env.count_writes("products").await;
        let counted = env.run(&job("total_path = \"/count\"")).await;
        let neither = env.run(&job("")).await;

        // Assert: 404 after a page ends the walk; with the count, the 404 of
        // the request past it confirms the end.
        assert_eq!(on_404.error, None);
        assert_eq!(on_404.counts.pages, 4, "3 pages and the 404");
        assert_eq!(env.rows("products").await, expected_rows(&env.api.records()));
        assert_eq!(counted.error, None);
        assert_eq!(counted.expected, Some(250));
        assert_eq!(counted.counts.unchanged, 250);
        assert_eq!(env.writes().await, 0, "a re-sync writes nothing");
        let error = neither.error.expect("a 404 is an error unless it is said to end");
        assert!(error.contains("page 4") && error.contains("404"), "{error}");
        assert_eq!(neither.failure, Some(FailureReason::Fetch));
    }

    async fn end_on_status_on_the_first_page_is_still_an_error(backend: Backend) {
        let env = TestEnv::start_on(backend, products(10)).await;
        let job = env.job(
            "records = \"/data\"\n[jobs.request]\nurl = \"{api}/status/404\"\n\
             [jobs.pagination]\nkind = \"page\"\nend_on_status = [404]\n",
        );

        let report = env.run(&job).await;

        assert!(report.error.expect("the run fails").contains("404"));
    }

    /// json-server 1.x serves the last page again for page numbers past the
    /// end: that is the end, not an API that ignores the page parameter.
    async fn an_api_that_clamps_pages_past_the_end_ends_the_walk(backend: Backend) {
        // Arrange
        let env = TestEnv::start_on(backend, products(95)).await;
        let job = env.job(
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/clamp"
    [jobs.pagination]
    kind = "page"
    page_param = "_page"
    size_param = "_per_page"
    size = 10
    "#,
        );

        // Act
        let report = env.run(&job).await;
        env.api.set_records(products(4));
        env.execute("DELETE FROM products").await;
        let short = env.run(&job).await;

        // Assert: the repeated 10th page is not counted as 5 duplicates.
        assert_eq!(report.error, None);
        assert_eq!(report.counts.fetched, 95);
        assert_eq!(report.counts.duplicate, 0);
        assert_eq!(report.counts.pages, 11);
        // A short first page served again as the second is the end too.
        assert_eq!(short.error, None);
        assert_eq!(env.rows("products").await, expected_rows(&products(4)));
    }

    /// Kinto: the next URL in a `Next-Page` header, the total only in
    /// answer to HEAD.
    async fn a_next_url_and_a_total_from_headers_of_get_and_head(backend: Backend) {
        let env = TestEnv::start_on(backend, products(130)).await;
        let job = env.job(
            r#"
    records = "/data"
    [jobs.request]
    url = "{api}/kinto"
    query = { _limit = 25 }
    [jobs.pagination]
    kind = "next_url"
    next_header = "Next-Page"
    total_header = "Total-Records"
    total_method = "HEAD"
    "#,
        );

        let report = env.run(&job).await;

        assert_eq!(report.error, None);
        assert_eq!(report.expected, Some(130));
        assert_eq!(env.rows("products").await, expected_rows(&env.api.records()));
        assert_eq!(
            env.api.requests().first().map(String::as_str),
            Some("HEAD /kinto?_limit=25")
        );
    }

    /// A key over PostgreSQL's B-tree limit failed the page's write on every
    /// run; now it is a reject on PostgreSQL (SQLite stores it).
    async fn a_key_too_long_to_index_is_a_reject_and_the_rest_is_stored(backend: Backend) {
        // Arrange
        let mut records = products(60);
        let long = "k".repeat(3_000);
        records[30] = json!({"id": long, "name": "long key"});
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(
            "records = \"/data\"\n[jobs.request]\nurl = \"{api}/page\"\n\
             [jobs.pagination]\nkind = \"page\"\nsize = 25\n",
        );

        // Act
        let report = env.run(&job).await;

        // Assert
        assert_eq!(report.error, None);
        let rows = env.rows("products").await;
        if env.store_name == "postgres" {
            assert_eq!(rows.len(), 59);
            let rejects = env.rejects().await;
            assert_eq!(rejects.len(), 1);
            assert!(
                rejects[0]
                    .1
                    .contains("the key is 3000 bytes long; PostgreSQL indexes keys of at most 2688 bytes"),
                "{rejects:?}"
            );
        } else {
            assert_eq!(rows.len(), 60, "SQLite has no such limit");
        }
    }

    /// A page of nothing but rejects served again and again was read until
    /// `max_pages`: the repeated-page guard saw no key to compare.
    async fn a_repeated_page_of_rejects_is_caught_as_a_repeat(backend: Backend) {
        let env = TestEnv::start_on(backend, products(30)).await;
        let job = env.job(
            JobToml::get("/same", "/data")
                .with("pagination.kind", "page")
                .keyed(&["ID"]),
        );

        let report = env.run(&job).await;

        let error = report.error.expect("the run fails");
        assert!(
            error.contains("page 2 holds exactly the records of page 1"),
            "{error}"
        );
        assert_eq!(report.counts.pages, 1);
    }

    async fn a_failed_head_request_for_the_total_says_so(backend: Backend) {
        let env = TestEnv::start_on(backend, products(10)).await;
        let job = env.job(
            "records = \"/data\"\n[jobs.request]\nurl = \"{api}/status/405\"\n\
             [jobs.pagination]\nkind = \"next_url\"\ntotal_header = \"Total-Records\"\n\
             total_method = \"HEAD\"\n",
        );

        let report = env.run(&job).await;

        let error = report.error.expect("the run fails");
        assert!(
            error.contains("the HEAD request for the total (total_method = \"HEAD\") failed")
                && error.contains("405"),
            "{error}"
        );
        assert_eq!(report.failure, Some(FailureReason::Fetch));
    }
}
