//! A sample paginated API for trying apisync locally (`scripts/try.sh`): the
//! test suite's fake API, serving 2,500 products until it is stopped.
//!
//!     cargo run --example sample_api -- 127.0.0.1:8089

#[path = "../tests/it/fake_api/mod.rs"]
#[allow(dead_code)]
mod fake_api;

use serde_json::json;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8089".to_owned());
    let records = (1..=2_500)
        .map(|id| {
            json!({
                "id": id,
                "name": format!("Product {id}"),
                "price": { "amount": (id * 37) % 1000, "currency": "EUR" },
            })
        })
        .collect();
    let api = fake_api::FakeApi::start_on(&addr, records).await;
    println!("sample API on http://{}/page", api.addr);
    std::future::pending::<()>().await;
}
