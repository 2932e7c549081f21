//! A page with records serde_json cannot read on their own (a lone surrogate
//! escape, a byte that is not UTF-8, nesting beyond its limit), served as raw
//! bytes: those records are rejected with the reason, the rest of the page is
//! stored, and a second run writes nothing (no row, no reject), on both stores.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use serde_json::Value;

use crate::helpers::{JobToml, TestEnv, expected_rows, product, store_tests};

/// Serves `body` as JSON at `/records` on loopback, for as long as the test
/// runs; returns the base URL.
async fn serve(body: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test API");
    let address = listener.local_addr().expect("the test API's address");
    let app = Router::new().route(
        "/records",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// The three bad records, by id, each with the reason it is rejected.
fn bad_records() -> Vec<(usize, Vec<u8>, &'static str)> {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    vec![
        (
            // An emoji cut in half, as JavaScript's `slice` leaves it.
            10,
            br#"{"id": 10, "name": "Product 10 \ud83d"}"#.to_vec(),
            "the record holds a lone UTF-16 surrogate escape `\\ud83d` at offset 31 \
             (half of a pair, no character on its own)",
        ),
        (
            // Latin-1 where UTF-8 belongs.
            20,
            b"{\"id\": 20, \"name\": \"Caf\xe9\"}".to_vec(),
            "the record is not valid UTF-8 (byte 0xe9 at offset 23)",
        ),
        (
            30,
            format!(r#"{{"id": 30, "tree": {deep}}}"#).into_bytes(),
            "the record nests deeper than 127 levels (level 128 opens at offset 145)",
        ),
    ]
}

/// A page of 50 records, ids 1 to 50, the bad ones among them.
fn page() -> Vec<u8> {
    let bad = bad_records();
    let records: Vec<Vec<u8>> = (1..=50)
        .map(|id| match bad.iter().find(|(bad_id, _, _)| *bad_id == id) {
            Some((_, text, _)) => text.clone(),
            None => product(id).to_string().into_bytes(),
        })
        .collect();
    [
        &b"{\"data\": ["[..],
        &records.join(&b",\n"[..]),
        b"], \"count\": 50}",
    ]
    .concat()
}

const JOB: &str = r#"
records = "/data"
[jobs.request]
url = "{api}/records"
[jobs.retry]
max_attempts = 2
initial_backoff = "10ms"
"#;

store_tests! {
    async fn records_serde_json_cannot_read_are_rejected_and_the_rest_of_the_page_is_stored(
        backend: Backend
    ) {
        // Arrange
        let env = TestEnv::start_on(backend, Vec::new()).await;
        let url = serve(page()).await;
        let job = env.job(JobToml::lines(JOB).api(&url));
        let good: Vec<Value> = (1..=50)
            .filter(|id| ![10, 20, 30].contains(id))
            .map(product)
            .collect();

        // Act
        let first = env.run(&job).await;

        // Assert
        assert_eq!(first.error, None);
        assert_eq!(
            (first.counts.fetched, first.counts.inserted, first.counts.rejected),
            (50, 47, 3)
        );
        assert_eq!(env.rows("products").await, expected_rows(&good));
        let rejects = env.rejects().await;
        assert_eq!(rejects.len(), 3, "{rejects:?}");
        for ((record, reason, run_id), (id, text, expected)) in rejects.iter().zip(bad_records()) {
            assert_eq!(Some(*run_id), first.run_id);
            assert_eq!(reason, expected, "record {id}");
            // The store took the record back as it was written: a JSON string
            // of its text, recognisable, with U+FFFD for a byte that is not UTF-8.
            let kept: Value = serde_json::from_str(record).expect("the reject is JSON");
            assert_eq!(
                kept,
                Value::String(String::from_utf8_lossy(&text).into_owned()),
                "record {id}"
            );
        }

        // Act: the same page again.
        env.count_writes("products").await;
        let second = env.run(&job).await;

        // Assert
        assert_eq!(second.error, None);
        assert_eq!(
            (second.counts.unchanged, second.counts.rejected),
            (47, 3)
        );
        assert_eq!(env.writes().await, 0, "no row was written again");
        assert_eq!(env.rejects().await, rejects, "the rejects are stored once");
        assert_eq!(env.rows("products").await, expected_rows(&good));
    }
}
