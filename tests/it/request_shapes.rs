//! Request shapes real APIs need: a POST search paged by a cursor in its
//! JSON body, with the incremental time in the body too; and an
//! incremental value template (PostgREST's `updated_at=gte.<time>`).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestEnv, expected_rows, product, store_tests};

/// Records with an `updated_at` one minute apart, from 2026-01-01.
fn timed(ids: std::ops::RangeInclusive<usize>, minute: impl Fn(usize) -> i64) -> Vec<Value> {
    ids.map(|id| {
        let mut record = product(id);
        let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
        record["updated_at"] = json!(
            (base + chrono::Duration::minutes(minute(id)))
                .to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        record
    })
    .collect()
}

const SEARCH: &str = r#"
records = "/data"
[jobs.request]
url = "{api}/search/cursor"
method = "POST"
body = { filter = { status = "all" }, page = { size = 10 } }
[jobs.pagination]
kind = "cursor"
cursor_in = "body"
cursor_param = "/page/cursor"
cursor_path = "/meta/next_cursor"
[jobs.incremental]
field = "updated_at"
param = "/filter/updated_at"
param_in = "body"
value = "gte.{since}"
lookback = "0s"
"#;

store_tests! {
    async fn a_post_search_paged_by_a_cursor_in_its_body_is_exact(backend: Backend) {
        // Arrange: 45 records, read in full; then 5 changed and 5 added.
        let env = TestEnv::start_on(backend, timed(1..=45, |id| id as i64)).await;
        let job = env.job(SEARCH);
        let first = env.run(&job).await;
        let first_bodies = env.api.bodies();
        let mut records = timed(1..=50, |id| id as i64);
        for record in &mut records[40..] {
            record["name"] = json!("changed");
            record["updated_at"] = json!("2026-02-01T00:00:00Z");
        }
        env.api.set_records(records.clone());

        // Act
        let second = env.run(&job).await;

        // Assert: exact both times; the first run walked the cursor through
        // the body (none on the first request), the second sent the
        // watermark in the body, in the template, and read only changes.
        assert_eq!(first.status.as_str(), "succeeded", "{:?}", first.error);
        assert_eq!(first.counts.inserted, 45);
        let cursors: Vec<Value> = first_bodies.iter().map(|b| b["page"]["cursor"].clone()).collect();
        assert_eq!(
            cursors,
            vec![Value::Null, json!("pos-10"), json!("pos-20"), json!("pos-30"), json!("pos-40")]
        );
        for body in &first_bodies {
            assert_eq!(body["filter"]["status"], "all", "{body}");
            assert_eq!(body["page"]["size"], 10, "{body}");
            assert!(body["filter"].get("updated_at").is_none(), "a full first run: {body}");
        }
        assert_eq!(second.status.as_str(), "succeeded", "{:?}", second.error);
        let second_bodies = &env.api.bodies()[first_bodies.len()..];
        assert_eq!(second_bodies[0]["filter"]["updated_at"], "gte.2026-01-01T00:45:00Z");
        assert_eq!((second.counts.inserted, second.counts.updated), (5, 5));
        assert_eq!(env.rows("products").await, expected_rows(&records));
    }
}

#[sqlx::test(migrations = false)]
async fn a_postgrest_filter_template_carries_the_watermark(pool: PgPool) {
    // Arrange: PostgREST-style offset pages; the incremental value is
    // `updated_at=gte.<time>`.
    let env = TestEnv::start(pool, timed(1..=25, |id| id as i64)).await;
    let job = env.job(
        r#"
records = ""
[jobs.request]
url = "{api}/postgrest"
[jobs.pagination]
kind = "offset"
limit = 10
[jobs.incremental]
field = "updated_at"
param = "updated_at"
value = "gte.{since}"
lookback = "0s"
"#,
    );
    let first = env.run(&job).await;
    let mut records = timed(1..=25, |id| id as i64);
    records[3]["name"] = json!("changed");
    records[3]["updated_at"] = json!("2026-03-01T00:00:00Z");
    env.api.set_records(records.clone());
    let before = env.api.requests().len();

    // Act
    let second = env.run(&job).await;

    // Assert
    assert_eq!(first.status.as_str(), "succeeded", "{:?}", first.error);
    assert_eq!(second.status.as_str(), "succeeded", "{:?}", second.error);
    let requests = &env.api.requests()[before..];
    assert!(
        requests
            .iter()
            .all(|r| r.contains("updated_at=gte.2026-01-01T00%3A25%3A00Z")),
        "{requests:?}"
    );
    assert_eq!(second.counts.updated, 1);
    assert_eq!(
        second.counts.fetched, 2,
        "the watermark record and the changed one"
    );
    assert_eq!(env.rows("products").await, expected_rows(&records));
}

#[test]
fn a_value_in_the_body_needs_a_post_and_a_template_needs_the_time() {
    let text = r#"
[[jobs]]
name = "search"
schedule = "* * * * *"
table = "search"
key = ["id"]
[jobs.request]
url = "http://127.0.0.1:9/search"
[jobs.pagination]
kind = "cursor"
cursor_in = "body"
[jobs.incremental]
field = "updated_at"
param = "since"
param_in = "body"
value = "gte."
"#;
    let error = apisync::config::load_str(text, Path::new("t.toml"), &HashMap::new())
        .unwrap_err()
        .to_string();
    for expected in [
        "key \"pagination.cursor_in\": \"body\" puts the cursor in the JSON body, which only a POST",
        "key \"incremental.param_in\": \"body\" puts the time in the JSON body",
        "key \"incremental.value\": `gte.` does not hold {since}",
    ] {
        assert!(error.contains(expected), "{expected}\n{error}");
    }
}

#[test]
fn a_body_value_may_not_replace_part_of_the_configured_body() {
    let text = r#"
[[jobs]]
name = "search"
schedule = "* * * * *"
table = "search"
key = ["id"]
[jobs.request]
url = "http://127.0.0.1:9/search"
method = "POST"
body = { page = 3 }
[jobs.pagination]
kind = "cursor"
cursor_in = "body"
cursor_param = "/page/cursor"
"#;
    let refused = |text: &str| {
        apisync::config::load_str(text, Path::new("t.toml"), &HashMap::new())
            .unwrap_err()
            .to_string()
    };
    let error = refused(text);
    let expected = "key \"pagination.cursor_in\": `/page/cursor` passes through `/page` of \
                    request.body, which is not an object";
    assert!(error.contains(expected), "{error}");
    let paged = text.replace(
        "kind = \"cursor\"\ncursor_in = \"body\"\ncursor_param = \"/page/cursor\"",
        "kind = \"page\"\nend_on_status = [401]",
    );
    let error = refused(&paged);
    assert!(
        error.contains("key \"pagination.end_on_status\": 401 cannot mean \"past the end\""),
        "{error}"
    );
}
