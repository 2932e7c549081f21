//! Adversarial cases: APIs that behave the way hostile or quirky real servers
//! do, each a way a run was seen to end `succeeded` with less than the
//! source, to fail for ever over one record, or to write on an unchanged
//! re-sync. Every test here failed when written; each states the expected
//! behaviour (guarantees 5, 1 and 7).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, store_tests};

/// What a scripted API answers: status, headers and body, given the query
/// and the number of this request (1 for the first).
type Script = dyn Fn(&HashMap<String, String>, usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>)
    + Send
    + Sync;

/// Serves `script` at `/x` on loopback for as long as the test runs; returns
/// the URL of `/x`.
async fn serve(script: Arc<Script>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the scripted API");
    let address = listener.local_addr().expect("its address");
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/x",
        get(move |Query(query): Query<HashMap<String, String>>| {
            let (script, calls) = (Arc::clone(&script), Arc::clone(&calls));
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let (status, headers, body) = script(&query, n);
                let mut map = HeaderMap::new();
                map.insert(
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                );
                for (name, value) in headers {
                    map.insert(
                        HeaderName::from_static(name),
                        HeaderValue::from_str(&value).unwrap(),
                    );
                }
                let response: Response =
                    (StatusCode::from_u16(status).unwrap(), map, body).into_response();
                response
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/x")
}

fn rec(id: usize) -> Value {
    json!({"id": id, "name": format!("r{id}")})
}

fn records(ids: impl IntoIterator<Item = usize>) -> Vec<Value> {
    ids.into_iter().map(rec).collect()
}

fn number(query: &HashMap<String, String>, name: &str, default: usize) -> usize {
    query.get(name).map_or(default, |v| v.parse().unwrap())
}

fn ok(body: Value) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    (200, vec![], body.to_string().into_bytes())
}

/// The ids stored in `products`, sorted as numbers.
async fn ids(env: &TestEnv) -> Vec<usize> {
    let mut ids: Vec<usize> = env
        .rows("products")
        .await
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

store_tests! {
    /// Offset paging while a record already read is deleted: every later
    /// record moves forward one place, so the first of the next page is
    /// never served. The API says so — its total drops from 6 to 5 — yet the
    /// run compares with the last total only, reads 5 distinct keys and
    /// succeeds without record 4, which is still in the source.
    async fn a_total_that_drops_while_offset_paging_does_not_hide_a_skipped_record(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, n| {
            let mut source = records(1..=6);
            if n > 1 {
                source.retain(|r| r["id"] != 1);
            }
            let offset = number(query, "offset", 0);
            let limit = number(query, "limit", 3);
            let page: Vec<Value> = source.iter().skip(offset).take(limit).cloned().collect();
            ok(json!({"items": page, "total": source.len()}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/items"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "offset"
    limit = 3
    total_path = "/total"
    "#
        ));

        let report = env.run(&job).await;

        let stored = ids(&env).await;
        assert!(
            report.error.is_some() || stored.contains(&4),
            "succeeded with {stored:?}: record 4 (in the source all along) was skipped"
        );
    }

    /// An API whose total comes from a window count over the page's rows
    /// (`SELECT …, count(*) OVER ()`) states 0 on an empty page. Here it
    /// states 9 records on pages 1 and 2, then truncates the walk with an
    /// empty page 3 that states 0: the run takes the last total, 0, and
    /// succeeds with 6 of 9 — exactly the silent truncation a total is meant
    /// to catch.
    async fn a_zero_total_on_an_early_empty_page_does_not_pass_a_truncated_walk(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, _| {
            let page = number(query, "page", 1);
            let size = number(query, "per_page", 3);
            let items: Vec<Value> = if page <= 2 {
                records((page - 1) * size + 1..=page * size)
            } else {
                vec![]
            };
            let total = if items.is_empty() { 0 } else { 9 };
            ok(json!({"data": items, "total": total}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "page"
    size = 3
    total_path = "/total"
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(ids(&env).await.len(), 6);
        assert!(
            report.error.is_some(),
            "the API stated 9 records, the run read 6 and succeeded (expected = {:?})",
            report.expected
        );
    }

    /// Rejects count toward the stated total, but per occurrence while keys
    /// count once: an API with an unstable sort order serves its one bad
    /// record on both pages and never serves record 3. Total 4 = 2 distinct
    /// keys + the same reject twice, so the run succeeds without record 3
    /// (the rejects table holds that reject once).
    async fn a_reject_served_twice_counts_once_toward_the_total(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, _| {
            let items = match number(query, "page", 1) {
                1 => json!([{"no_id": "bad"}, rec(1)]),
                2 => json!([{"no_id": "bad"}, rec(2)]),
                _ => json!([]),
            };
            ok(json!({"data": items, "total": 4}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    max_rejected = 5
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "page"
    size = 2
    total_path = "/total"
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(env.rejects().await.len(), 1, "one distinct reject");
        assert_eq!(ids(&env).await, vec![1, 2]);
        assert!(
            report.error.is_some(),
            "2 keys + 1 distinct reject < 4 stated, yet the run succeeded"
        );
    }

    /// Once a confirmation request past the stated total came back with
    /// records, the total is known to be wrong: a client error on a later
    /// page (here 403, as a rate limit or an expiring token answers) is no
    /// longer a confirmation of the end. The run logs "reading on until a
    /// page comes back empty", then ends on the 403 as `succeeded` with 4 of
    /// 6 records.
    async fn a_client_error_after_the_total_proved_wrong_does_not_end_the_walk(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, _| {
            let offset = number(query, "offset", 0);
            if offset >= 4 {
                return (403, vec![], br#"{"error": "forbidden"}"#.to_vec());
            }
            let page: Vec<Value> = records(1..=6).into_iter().skip(offset).take(2).collect();
            ok(json!({"items": page, "total": 2}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/items"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "offset"
    limit = 2
    total_path = "/total"
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(ids(&env).await, vec![1, 2, 3, 4]);
        assert!(
            report.error.is_some(),
            "the total (2) was proven wrong by page 2; a 403 on page 3 ended the run as succeeded"
        );
    }

    /// A stated page count is a total too: the API says 5 pages, page 3
    /// comes back empty, and the run succeeds with pages 1 and 2 (4 of 10
    /// records). The verdict only compares record counts, so
    /// `total_pages_path` guards nothing.
    async fn a_stated_page_count_not_reached_fails_the_run(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, _| {
            let page = number(query, "page", 1);
            let items = if page == 3 || page > 5 {
                vec![]
            } else {
                records((page - 1) * 2 + 1..=page * 2)
            };
            ok(json!({"data": items, "total_pages": 5}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "page"
    size = 2
    total_pages_path = "/total_pages"
    "#
        ));

        let report = env.run(&job).await;

        assert!(
            report.error.is_some() || ids(&env).await.len() == 10,
            "the API stated 5 pages; the run stopped after 2 and succeeded with {:?}",
            ids(&env).await
        );
    }

    /// The json-server clamping rule ("a page equal to the one before, from
    /// page 3 on, is the end") also fires on a full page served again in
    /// the middle of the walk (a stale cache, a replica behind): page 3
    /// repeats page 2 at full size, pages 4 holds records 7 and 8. The run
    /// even fetched page 4, threw it away, and succeeded with 4 of 8.
    /// json-server's clamped page is its short last page; a full-size
    /// repeat is not evidence of the end.
    async fn a_full_page_served_again_mid_walk_is_not_taken_for_the_end(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, _| {
            let mut page = number(query, "page", 1);
            if page == 3 {
                page = 2;
            }
            let items: Vec<Value> = records(1..=8)
                .into_iter()
                .skip((page - 1) * 2)
                .take(2)
                .collect();
            ok(json!({"data": items}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "page"
    size = 2
    "#
        ));

        let report = env.run(&job).await;

        assert!(
            report.error.is_some() || ids(&env).await.len() == 8,
            "a full page 3 equal to page 2 ended the walk: succeeded with {:?}",
            ids(&env).await
        );
    }

    /// "A reject is stored once per job and content", with `hash_exclude`
    /// left out of the content: true for a record with no key, but a record
    /// that is not UTF-8 is kept as a string of its text, where the excluded
    /// field cannot be left out. With a volatile `/meta/request_id` each
    /// unchanged re-run adds a reject row.
    async fn an_unreadable_reject_with_a_volatile_field_is_stored_once(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|_, n| {
            let body = format!(
                "{{\"data\": [{{\"id\": 1, \"meta\": {{\"request_id\": \"{n}\"}}}}, \
                 {{\"id\": 2, \"name\": \"\u{1}\", \"meta\": {{\"request_id\": \"{n}\"}}}}]}}"
            )
            .into_bytes();
            // The second record's name: one byte that is not UTF-8.
            let body: Vec<u8> = body
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect();
            (200, vec![], body)
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    hash_exclude = ["/meta/request_id"]
    max_rejected = 5
    [jobs.request]
    url = "{url}"
    "#
        ));

        for _ in 0..3 {
            let report = env.run(&job).await;
            assert_eq!(report.error, None);
            assert_eq!(report.counts.rejected, 1);
        }

        assert_eq!(
            env.rejects().await.len(),
            1,
            "unchanged re-runs (only the excluded field differs) stored the reject again"
        );
    }

    /// "More is fine: records can be added while paging" — but on a feed
    /// sorted newest first, a record added after page 1 shifts the rest back
    /// one place: page 2 repeats the last record of page 1, every record of
    /// the source at the start is read, the total rises from 6 to 7, and the
    /// run fails as `incomplete` (6 of 7). On a busy feed every run does.
    async fn a_record_added_at_the_front_while_paging_does_not_fail_the_run(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, n| {
            let mut source = records((1..=6).rev());
            if n > 1 {
                source.insert(0, rec(7));
            }
            let offset = number(query, "offset", 0);
            let page: Vec<Value> = source.iter().skip(offset).take(3).cloned().collect();
            ok(json!({"items": page, "total": source.len()}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/items"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "offset"
    limit = 3
    total_path = "/total"
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(ids(&env).await, vec![1, 2, 3, 4, 5, 6], "every record there at the start");
        assert_eq!(report.error, None);
    }

    /// "Only a body that cannot be split into records fails the page": a
    /// lone surrogate escape in a member beside the records array (an echo
    /// of the query, a message) fails the whole run as "not valid JSON",
    /// retried as transient, on every run, although both records are fine.
    async fn a_lone_surrogate_beside_the_records_does_not_fail_every_run(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|_, _| {
            (
                200,
                vec![],
                br#"{"query": "caf\ud800", "data": [{"id": 1}, {"id": 2}]}"#.to_vec(),
            )
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    [jobs.request]
    url = "{url}"
    [jobs.retry]
    max_attempts = 1
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(report.error, None);
        assert_eq!(ids(&env).await, vec![1, 2]);
    }

    /// The same for nesting: 130 levels in a member beside the records
    /// array fail the run as "not valid JSON".
    async fn deep_nesting_beside_the_records_does_not_fail_every_run(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|_, _| {
            let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
            (
                200,
                vec![],
                format!(r#"{{"facets": {deep}, "data": [{{"id": 1}}, {{"id": 2}}]}}"#).into_bytes(),
            )
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    [jobs.request]
    url = "{url}"
    [jobs.retry]
    max_attempts = 1
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(report.error, None);
        assert_eq!(ids(&env).await, vec![1, 2]);
    }

    /// (Not part of the completeness change.) A CouchDB-style changes feed:
    /// `?since=S` answers the records after S and `last_seq`; past the end
    /// it answers no records and the same `last_seq`. The cursor repeats on
    /// an empty page, the loop guard fires, and every run fails; there is
    /// no setting that makes an empty page with an unchanged cursor the end.
    async fn an_empty_page_that_repeats_the_cursor_ends_a_changes_feed(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, _| {
            let since = number(query, "since", 0);
            let page: Vec<Value> = records(1..=5).into_iter().skip(since).take(2).collect();
            let last = since + page.len();
            ok(json!({"results": page, "last_seq": last}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/results"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "cursor"
    cursor_path = "/last_seq"
    cursor_param = "since"
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(ids(&env).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(report.error, None);
    }

    /// The same feed, but its `has_more` says true on the empty page that
    /// repeats the cursor: that is no end, and the run must not say
    /// `succeeded` with what it read.
    async fn an_empty_page_that_repeats_the_cursor_while_has_more_says_true_fails(
        backend: Backend
    ) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|query, _| {
            let since = number(query, "since", 0);
            // Records 1 to 4 are served; 5 exists but never comes.
            let page: Vec<Value> = records(1..=4).into_iter().skip(since).take(2).collect();
            let last = since + page.len();
            ok(json!({"results": page, "last_seq": last, "more": true}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/results"
    [jobs.request]
    url = "{url}"
    [jobs.pagination]
    kind = "cursor"
    cursor_path = "/last_seq"
    cursor_param = "since"
    has_more_path = "/more"
    [jobs.retry]
    max_attempts = 1
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(report.status.as_str(), "failed");
        let error = report.error.unwrap_or_default();
        assert!(error.contains("again"), "{error}");
    }

    /// A local time in a DST gap (Europe/Berlin skips 02:00–03:00 on
    /// 2026-03-29) is read as no time at all: with `format` and `timezone`
    /// set and a value that matches the format, the run fails "none of the 1
    /// records read has a readable incremental field … set incremental.format
    /// (and incremental.timezone)", and so does every later run while it is
    /// the only record in the window.
    async fn a_local_time_in_a_dst_gap_is_a_readable_incremental_field(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|_, _| {
            ok(json!({"data": [{"id": 1, "updated_at": "2026-03-29 02:30:00"}]}))
        }))
        .await;
        let job = env.job(format!(
            r#"
    records = "/data"
    [jobs.request]
    url = "{url}"
    [jobs.incremental]
    field = "updated_at"
    param = "since"
    format = "%Y-%m-%d %H:%M:%S"
    timezone = "Europe/Berlin"
    "#
        ));

        let report = env.run(&job).await;

        assert_eq!(report.error, None);
    }

    /// Secrets stay out of errors: a header value written in the file (not
    /// through `${VAR}`) is not redacted, and the new "the response has the
    /// top-level keys …" lists whatever the API echoes, here the token.
    async fn a_header_value_echoed_by_the_api_stays_out_of_the_error(backend: Backend) {
        let env = TestEnv::start_on(backend, vec![]).await;
        let url = serve(Arc::new(|_, _| {
            ok(json!({"data": [rec(1)], "next_cursor": "c2", "unknown token s3cr3tTOKENvalue": true}))
        }))
        .await;
        let (job, redactor) = env.job_with_env(
            format!(
                r#"
    records = "/data"
    [jobs.request]
    url = "{url}"
    headers = {{ Authorization = "Bearer s3cr3tTOKENvalue" }}
    [jobs.pagination]
    kind = "cursor"
    cursor_path = "/nxt"
    "#
            ),
            &HashMap::new(),
        );
        let mut ctx = env.ctx.clone();
        ctx.redactor = redactor;

        let report = apisync::sync::run_once(&job, &ctx).await.unwrap();

        let error = report.error.expect("the pointer finds nothing: the run fails");
        assert!(!error.contains("s3cr3tTOKENvalue"), "{error}");
        // The key is listed, masked: without it the check above proves
        // nothing.
        assert!(error.contains("\"unknown token [redacted]\""), "{error}");
    }
}

/// A number PostgreSQL's `numeric` (hence `jsonb`) cannot hold — beyond
/// 10^131072 or below 10^-16383 — fails the whole page's write with "value
/// overflows numeric format", on every run: the good records of the page are
/// never stored and the job never succeeds again until the API changes the
/// record. It should be a reject like a NUL character or a lone surrogate.
#[sqlx::test(migrations = false)]
async fn a_number_postgresql_cannot_hold_is_a_reject_not_a_failed_page(pool: sqlx::PgPool) {
    let env = TestEnv::start(pool, vec![]).await;
    let url = serve(Arc::new(|_, _| {
        (
            200,
            vec![],
            br#"{"data": [{"id": 1}, {"id": 2, "x": 1e999999}, {"id": 3, "y": 1e-20000}, {"id": 4}]}"#
                .to_vec(),
        )
    }))
    .await;
    let job = env.job(format!(
        r#"
    records = "/data"
    max_rejected = 5
    [jobs.request]
    url = "{url}"
    "#
    ));

    for _ in 0..2 {
        let report = env.run(&job).await;
        assert_eq!(report.error, None, "one bad number fails every run");
    }
    assert_eq!(ids(&env).await, vec![1, 4]);
    assert_eq!(env.rejects().await.len(), 2);
}
