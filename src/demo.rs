//! `apisync demo`: a tour with nothing to set up. A built-in sample API on
//! loopback (paginated, with a record repeated across pages, a volatile
//! field, and a transient failure now and then) is synced into a local
//! SQLite file every few seconds, `/metrics` is served, and each run is
//! explained in plain words.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::run::RunStatus;
use crate::source::ApiClient;
use crate::store::{SqliteStore, Store};
use crate::sync::{Job, RunReport, SyncContext, run_once};

const PRODUCTS: u64 = 240;
const PAGE_SIZE: u64 = 50;

/// What the demo needs from the command line.
pub struct DemoOptions {
    /// Stop after this many runs; `None`: until Ctrl-C.
    pub runs: Option<u64>,
    pub db: PathBuf,
    pub interval: Duration,
}

/// The sample API's state: how many requests it served, and which run of
/// the demo it is in (the data changes after the second).
#[derive(Default)]
struct Sample {
    requests: AtomicU64,
    version: AtomicU64,
}

/// Runs the demo.
///
/// # Errors
/// When the sample API, the database file or the metrics listener cannot be
/// set up.
pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sample = Arc::new(Sample::default());
    let api = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("failed to start the sample API on loopback")?;
    let api_addr = api.local_addr()?;
    let router = Router::new()
        .route("/products", get(products))
        .with_state(sample.clone());
    tokio::spawn(async move {
        let _ = axum::serve(api, router).await;
    });

    let text = format!(
        r#"
[[jobs]]
name = "demo_products"
schedule = "* * * * *"
table = "demo_products"
key = ["id"]
records = "/data"
hash_exclude = ["/served_at"]

[jobs.request]
url = "http://{api_addr}/products"

[jobs.retry]
initial_backoff = "50ms"

[jobs.pagination]
kind = "page"
size = {PAGE_SIZE}
"#
    );
    let settings = config::load_str(&text, std::path::Path::new("demo"), &Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let job = Job::from_settings(&settings.jobs[0]).map_err(|e| anyhow::anyhow!(e))?;
    let reused = options.db.exists();
    let store = Store::Sqlite(SqliteStore::open_file(&options.db, Duration::from_secs(10)));
    store
        .migrate()
        .await
        .context("cannot prepare the demo database")?;

    let metrics = crate::metrics::install();
    crate::metrics::register_job(&job.name);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("failed to bind the metrics listener")?;
    let metrics_addr = listener.local_addr()?;
    let server = crate::server::router(crate::server::ServerState {
        store: store.clone(),
        metrics,
        redactor: settings.redactor.clone(),
    });
    let stop_serving = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, server)
            .with_graceful_shutdown(stop_serving.cancelled_owned())
            .await;
    });

    println!("apisync demo");
    println!("  sample API:  http://{api_addr}/products ({PRODUCTS} products, {PAGE_SIZE} a page)");
    println!("  database:    {} (SQLite)", options.db.display());
    println!("  metrics:     http://{metrics_addr}/metrics");
    if reused {
        println!("  (reusing the rows of an earlier demo in this file: run 1 finds them)");
    }
    let every = humantime::format_duration(options.interval);
    match options.runs {
        Some(runs) => println!("  every {every} a run, {runs} run(s) in all.\n"),
        None => println!("  every {every} a run; Ctrl-C stops.\n"),
    }

    let ctx = SyncContext {
        store,
        client: ApiClient::new()?,
        redactor: settings.redactor.clone(),
        cancel: shutdown.clone(),
        in_flight: Default::default(),
    };
    let mut number = 0;
    loop {
        number += 1;
        sample.version.store(number, Ordering::SeqCst);
        let report = run_once(&job, &ctx)
            .await
            .context("the run could not be recorded")?;
        // Line by line: `printable` escapes a newline like any other
        // control character.
        for line in explain(number, &report).lines() {
            println!("{}", crate::redact::printable(line));
        }
        if options.runs.is_some_and(|runs| number >= runs) || shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(options.interval) => {}
        }
    }
    ctx.store.close().await;
    println!(
        "\nThe archive is in {db}: table demo_products, and the runs in apisync_runs \
         (for example: sqlite3 {db} 'SELECT * FROM apisync_runs').",
        db = options.db.display()
    );
    Ok(())
}

/// One run, in plain words.
fn explain(number: u64, report: &RunReport) -> String {
    let c = &report.counts;
    let head = format!(
        "run {number}: {} in {:.2}s, fetched {} records from {} pages",
        report.status.as_str(),
        report.elapsed.as_secs_f64(),
        c.fetched,
        c.pages
    );
    if report.status != RunStatus::Succeeded {
        return format!(
            "{head}\n  {}",
            report.error.as_deref().unwrap_or("no error recorded")
        );
    }
    let written = c.inserted + c.updated;
    let mut lines = vec![head];
    if c.inserted > 0 {
        lines.push(format!(
            "  inserted {}: new rows, one per product id",
            c.inserted
        ));
    }
    if c.updated > 0 {
        lines.push(format!(
            "  updated {}: a product changed upstream, so its row was rewritten",
            c.updated
        ));
    }
    if c.unchanged > 0 {
        lines.push(format!(
            "  unchanged {}: same content as stored (the volatile served_at field is left out of the hash), not written",
            c.unchanged
        ));
    }
    if c.duplicate > 0 {
        lines.push(format!(
            "  duplicate {}: the API repeated a product on the next page; stored once",
            c.duplicate
        ));
    }
    lines.push(format!("  rows written: {written}"));
    lines.join("\n")
}

#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<u64>,
    per_page: Option<u64>,
}

/// The sample API: `/products?page=N&per_page=S`.
async fn products(State(sample): State<Arc<Sample>>, Query(query): Query<PageQuery>) -> Response {
    let request = sample.requests.fetch_add(1, Ordering::SeqCst) + 1;
    // Now and then a transient failure, which apisync retries.
    if request % 9 == 4 {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
    }
    let version = sample.version.load(Ordering::SeqCst);
    let size = query.per_page.unwrap_or(PAGE_SIZE).clamp(1, 100);
    let page = query.page.unwrap_or(1).max(1);
    let first = (page - 1) * size + 1;
    let mut data: Vec<Value> = (first..first + size)
        .filter(|id| *id <= PRODUCTS)
        .map(|id| product(id, version, request))
        .collect();
    // The last product of page 1 shows up again on page 2, as happens when
    // an API's pages shift while it is read.
    if page == 2 {
        data.insert(0, product(size, version, request));
    }
    axum::Json(json!({ "data": data })).into_response()
}

fn product(id: u64, version: u64, request: u64) -> Value {
    // From the third run on, product 7 costs more: one update.
    let price = if id == 7 && version >= 3 {
        1999
    } else {
        900 + id * 3
    };
    json!({
        "id": id,
        "name": format!("Sample product {id}"),
        "price": { "amount": price, "currency": "EUR" },
        "served_at": format!("request-{request}"),
    })
}
