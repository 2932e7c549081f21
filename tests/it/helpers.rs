//! The harness: a fresh database per test (from `#[sqlx::test]`), the fake
//! API, jobs built through the real configuration loader, and helpers named
//! after what tests check.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::LazyLock;

use apisync::config::{self, LogFormat, LogSettings};
use apisync::redact::Redactor;
use apisync::source::ApiClient;
use apisync::store::{PgStore, Store};
use apisync::sync::{Job, RunReport, SyncContext, run_once};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::fake_api::FakeApi;

/// Logs only when `TEST_LOG` is set, and installed once per test binary.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        apisync::telemetry::init(&LogSettings {
            level: "debug".to_owned(),
            format: LogFormat::Text,
        });
    }
});

/// `n` product records of about 200 bytes: ids 1..=n.
pub fn products(n: usize) -> Vec<Value> {
    (1..=n).map(product).collect()
}

pub fn product(id: usize) -> Value {
    json!({
        "id": id,
        "name": format!("Product {id}"),
        "price": { "amount": (id * 37) % 1000, "currency": "EUR" },
        "tags": ["archive", format!("group-{}", id % 7)],
        "active": !id.is_multiple_of(3),
    })
}

pub struct TestEnv {
    pub pool: PgPool,
    pub api: FakeApi,
    pub ctx: SyncContext,
}

impl TestEnv {
    /// Migrates the test database and starts a fake API serving `records`.
    pub async fn start(pool: PgPool, records: Vec<Value>) -> TestEnv {
        LazyLock::force(&TRACING);
        let store = Store::Postgres(PgStore::from_pool(pool.clone()));
        store.migrate().await.expect("migrations apply");
        let api = FakeApi::start(records).await;
        let ctx = SyncContext {
            store,
            client: ApiClient::new().expect("HTTP client"),
            redactor: Redactor::default(),
            cancel: CancellationToken::new(),
            in_flight: Default::default(),
        };
        TestEnv { pool, api, ctx }
    }

    /// A job `products` into table `products`, keyed on `id`, built from the
    /// TOML lines in `body` (they may use `{api}` for the fake API's address)
    /// through the real configuration loader.
    pub fn job(&self, body: &str) -> Job {
        self.job_with_env(body, &HashMap::new()).0
    }

    /// Like [`TestEnv::job`] for a job called `name` (still into table
    /// `products`): metrics are process-wide, so a test that reads them
    /// needs a job name of its own.
    pub fn named_job(&self, name: &str, body: &str) -> Job {
        let text = job_config(&body.replace("{api}", &self.api.url("")))
            .replace("name = \"products\"", &format!("name = \"{name}\""));
        let settings = config::load_str(&text, Path::new("test.toml"), &HashMap::new())
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}\n{text}"));
        Job::from_settings(&settings.jobs[0]).expect("job builds")
    }

    /// Like [`TestEnv::job`], with variables for `${VAR}` references; also
    /// returns the loaded settings' redactor.
    pub fn job_with_env(&self, body: &str, env: &HashMap<String, String>) -> (Job, Redactor) {
        let text = job_config(&body.replace("{api}", &self.api.url("")));
        let settings = config::load_str(&text, Path::new("test.toml"), env)
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}\n{text}"));
        let job = Job::from_settings(&settings.jobs[0]).expect("job builds");
        (job, settings.redactor)
    }

    pub async fn run(&self, job: &Job) -> RunReport {
        run_once(job, &self.ctx).await.expect("the run is recorded")
    }

    /// `id → record` of every row in `table`.
    pub async fn rows(&self, table: &str) -> BTreeMap<String, Value> {
        let sql = format!("SELECT id, record FROM \"{table}\"");
        sqlx::query_as::<_, (String, Value)>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .expect("read the target table")
            .into_iter()
            .collect()
    }

    /// `id → (xmin, changed_at, run_id)`: what moves when a row is written.
    pub async fn row_versions(&self, table: &str) -> BTreeMap<String, (String, String, i64)> {
        let sql = format!("SELECT id, xmin::text, changed_at::text, run_id FROM \"{table}\"");
        sqlx::query_as::<_, (String, String, String, i64)>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .expect("read row versions")
            .into_iter()
            .map(|(id, xmin, changed_at, run_id)| (id, (xmin, changed_at, run_id)))
            .collect()
    }

    /// `(status, error)` of a run in `apisync.runs`.
    pub async fn run_row(&self, run_id: Option<i64>) -> (String, Option<String>) {
        sqlx::query_as("SELECT status, error FROM apisync.runs WHERE id = $1")
            .bind(run_id.expect("the run was not skipped"))
            .fetch_one(&self.pool)
            .await
            .expect("the run is in apisync.runs")
    }
}

/// The source as the table should hold it: `id → record`.
pub fn expected_rows(records: &[Value]) -> BTreeMap<String, Value> {
    records
        .iter()
        .map(|r| (r["id"].to_string(), r.clone()))
        .collect()
}

/// A whole configuration file around one job's extra lines.
pub fn job_config(body: &str) -> String {
    format!(
        r#"
[database]
url = "postgres://unused@127.0.0.1/unused"

[[jobs]]
name = "products"
schedule = "*/15 * * * *"
table = "products"
key = ["id"]
{body}
"#
    )
}

/// Polls `check` every 100 ms until it holds; fails the test after 30 s.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A TCP forwarder that can be switched off: while down it refuses new
/// connections and cuts the ones it carries, like a database that went away.
pub struct TcpToggle {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl TcpToggle {
    /// Forwards to `host:port`; starts down.
    pub async fn start(host: &str, port: u16) -> TcpToggle {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().port();
        let (up, watch) = tokio::sync::watch::channel(false);
        let target = format!("{host}:{port}");
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                if !*watch.borrow() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        TcpToggle { port: local, up }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}
