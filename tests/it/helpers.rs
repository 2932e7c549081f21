//! The harness: a fresh database per test (from `#[sqlx::test]`), the fake
//! API, jobs built through the real configuration loader, and helpers named
//! after what tests check.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::LazyLock;

use apisync::config::{self, LogFormat, LogSettings};
use apisync::redact::Redactor;
use apisync::source::ApiClient;
use apisync::store::{PgStore, SqliteStore, Store};
use apisync::sync::{Job, RunReport, SyncContext, run_once};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

use crate::fake_api::FakeApi;

/// Logs only when `TEST_LOG` is set, and installed once per test binary.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        apisync::telemetry::init(
            &LogSettings {
                level: "debug".to_owned(),
                format: LogFormat::Text,
            },
            Redactor::default(),
        );
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

/// The store a behavioural test runs against: the same test body runs on
/// both (see `store_tests!`).
pub enum Backend {
    /// A fresh database from `#[sqlx::test]`.
    Postgres(PgPool),
    /// A fresh SQLite file in a scratch directory.
    Sqlite,
}

pub struct TestEnv {
    /// The PostgreSQL test database; PostgreSQL-only tests query it directly.
    /// On SQLite it points nowhere and must not be used.
    pub pool: PgPool,
    /// A second connection to the SQLite file, for the test's own queries.
    sqlite: Option<SqlitePool>,
    /// The store's URL, for the real binary.
    pub database_url: String,
    /// `postgres` or `sqlite`: part of names that must differ per store
    /// (metrics are process-wide).
    pub store_name: &'static str,
    pub api: FakeApi,
    pub ctx: SyncContext,
}

static SQLITE_FILES: AtomicUsize = AtomicUsize::new(0);

impl TestEnv {
    /// Migrates the test database and starts a fake API serving `records`.
    pub async fn start(pool: PgPool, records: Vec<Value>) -> TestEnv {
        Self::start_on(Backend::Postgres(pool), records).await
    }

    /// Like [`TestEnv::start`] on either store.
    pub async fn start_on(backend: Backend, records: Vec<Value>) -> TestEnv {
        LazyLock::force(&TRACING);
        let (pool, sqlite, store, database_url) = match backend {
            Backend::Postgres(pool) => {
                let store = Store::Postgres(PgStore::from_pool(pool.clone()));
                let url = crate::binary::database_url(&pool);
                (pool, None, store, url)
            }
            Backend::Sqlite => {
                let n = SQLITE_FILES.fetch_add(1, Ordering::SeqCst);
                let dir = crate::binary::temp_root().join("sqlite");
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(format!("test-{n}.db"));
                let _ = std::fs::remove_file(&file);
                let url = format!("sqlite://{}", file.display());
                let store = Store::Sqlite(
                    SqliteStore::connect_lazy(&url, std::time::Duration::from_secs(10)).unwrap(),
                );
                // The file exists once the migrations ran.
                store.migrate().await.expect("migrations apply");
                let reader = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .expect("open the SQLite file");
                let nowhere = PgPoolOptions::new()
                    .connect_lazy("postgres://nowhere.invalid/none")
                    .unwrap();
                (nowhere, Some(reader), store, url)
            }
        };
        let store_name = if sqlite.is_some() {
            "sqlite"
        } else {
            "postgres"
        };
        store.migrate().await.expect("migrations apply");
        let api = FakeApi::start(records).await;
        let ctx = SyncContext {
            store,
            client: ApiClient::new().expect("HTTP client"),
            redactor: Redactor::default(),
            cancel: CancellationToken::new(),
            in_flight: Default::default(),
        };
        TestEnv {
            pool,
            sqlite,
            database_url,
            store_name,
            api,
            ctx,
        }
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

    /// Like [`TestEnv::job`] with another natural key than `id`: `key` is
    /// the TOML value, as `["ID"]`.
    pub fn job_keyed(&self, key: &str, body: &str) -> Job {
        let text = job_config(&body.replace("{api}", &self.api.url("")))
            .replace("key = [\"id\"]", &format!("key = {key}"));
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
        match &self.sqlite {
            None => sqlx::query_as::<_, (String, Value)>(sqlx::AssertSqlSafe(sql))
                .fetch_all(&self.pool)
                .await
                .expect("read the target table")
                .into_iter()
                .collect(),
            Some(sqlite) => sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql))
                .fetch_all(sqlite)
                .await
                .expect("read the target table")
                .into_iter()
                .map(|(id, record)| (id, serde_json::from_str(&record).unwrap()))
                .collect(),
        }
    }

    /// `id → (version, changed_at, run_id)`: what moves when a row is
    /// written. The version is PostgreSQL's `xmin`; SQLite has none to show.
    pub async fn row_versions(&self, table: &str) -> BTreeMap<String, (String, String, i64)> {
        let (sql, pool) = match &self.sqlite {
            None => (
                format!("SELECT id, xmin::text, changed_at::text, run_id FROM \"{table}\""),
                None,
            ),
            Some(sqlite) => (
                format!("SELECT id, '', changed_at, run_id FROM \"{table}\""),
                Some(sqlite),
            ),
        };
        let rows: Vec<(String, String, String, i64)> = match pool {
            None => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await
            }
            Some(sqlite) => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(sqlite)
                    .await
            }
        }
        .expect("read row versions");
        rows.into_iter()
            .map(|(id, version, changed_at, run_id)| (id, (version, changed_at, run_id)))
            .collect()
    }

    /// `expected` of a run in the runs table.
    pub async fn run_expected(&self, run_id: Option<i64>) -> Option<i64> {
        let run_id = run_id.expect("the run was not skipped");
        match &self.sqlite {
            None => {
                sqlx::query_scalar("SELECT expected FROM apisync.runs WHERE id = $1")
                    .bind(run_id)
                    .fetch_one(&self.pool)
                    .await
            }
            Some(sqlite) => {
                sqlx::query_scalar("SELECT expected FROM apisync_runs WHERE id = ?")
                    .bind(run_id)
                    .fetch_one(sqlite)
                    .await
            }
        }
        .expect("the run is in the runs table")
    }

    /// `(status, error)` of a run in the runs table.
    pub async fn run_row(&self, run_id: Option<i64>) -> (String, Option<String>) {
        let run_id = run_id.expect("the run was not skipped");
        match &self.sqlite {
            None => {
                sqlx::query_as("SELECT status, error FROM apisync.runs WHERE id = $1")
                    .bind(run_id)
                    .fetch_one(&self.pool)
                    .await
            }
            Some(sqlite) => {
                sqlx::query_as("SELECT status, error FROM apisync_runs WHERE id = ?")
                    .bind(run_id)
                    .fetch_one(sqlite)
                    .await
            }
        }
        .expect("the run is in the runs table")
    }

    /// The single integer `sql` returns, on either store (`apisync.x` is
    /// read as `apisync_x` on SQLite).
    pub async fn query_i64(&self, sql: &str) -> i64 {
        match &self.sqlite {
            None => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&self.pool)
                    .await
            }
            Some(sqlite) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.replace("apisync.", "apisync_")))
                    .fetch_one(sqlite)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one statement on whichever store the test uses.
    pub async fn execute(&self, sql: &str) {
        match &self.sqlite {
            None => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&self.pool)
                .await
                .map(drop),
            Some(sqlite) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(sqlite)
                .await
                .map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `(text, text)` rows of `sql`, on either store, as for `query_i64`.
    pub async fn query_texts(&self, sql: &str) -> Vec<(String, String)> {
        match &self.sqlite {
            None => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&self.pool)
                    .await
            }
            Some(sqlite) => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.replace("apisync.", "apisync_")))
                    .fetch_all(sqlite)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `(text, integer)` rows of `sql`, on either store, as for `query_i64`.
    pub async fn query_pairs(&self, sql: &str) -> Vec<(String, i64)> {
        match &self.sqlite {
            None => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&self.pool)
                    .await
            }
            Some(sqlite) => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.replace("apisync.", "apisync_")))
                    .fetch_all(sqlite)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Starts counting row writes (inserts and updates) to `table` with
    /// triggers, on either store; read the count with [`TestEnv::writes`].
    pub async fn count_writes(&self, table: &str) {
        match &self.sqlite {
            None => {
                for sql in [
                    "CREATE TABLE test_writes (n bigint NOT NULL)".to_owned(),
                    "INSERT INTO test_writes VALUES (0)".to_owned(),
                    "CREATE FUNCTION test_count_write() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN UPDATE test_writes SET n = n + 1; RETURN NULL; END $$"
                        .to_owned(),
                    format!(
                        "CREATE TRIGGER test_count AFTER INSERT OR UPDATE ON \"{table}\" \
                         FOR EACH ROW EXECUTE FUNCTION test_count_write()"
                    ),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&self.pool)
                        .await
                        .unwrap();
                }
            }
            Some(sqlite) => {
                for sql in [
                    "CREATE TABLE test_writes (n INTEGER NOT NULL)".to_owned(),
                    "INSERT INTO test_writes VALUES (0)".to_owned(),
                    format!(
                        "CREATE TRIGGER test_count_insert AFTER INSERT ON \"{table}\" \
                         BEGIN UPDATE test_writes SET n = n + 1; END"
                    ),
                    format!(
                        "CREATE TRIGGER test_count_update AFTER UPDATE ON \"{table}\" \
                         BEGIN UPDATE test_writes SET n = n + 1; END"
                    ),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(sqlite)
                        .await
                        .unwrap();
                }
            }
        }
    }

    /// Row writes counted since [`TestEnv::count_writes`].
    pub async fn writes(&self) -> i64 {
        self.query_i64("SELECT n FROM test_writes").await
    }

    /// `(record, reason, run_id)` of the job's rejects, oldest first.
    pub async fn rejects(&self) -> Vec<(String, String, i64)> {
        match &self.sqlite {
            None => sqlx::query_as(
                "SELECT record, reason, run_id FROM apisync.rejects WHERE job = 'products' ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await,
            Some(sqlite) => sqlx::query_as(
                "SELECT record, reason, run_id FROM apisync_rejects WHERE job = 'products' ORDER BY id",
            )
            .fetch_all(sqlite)
            .await,
        }
        .expect("read the rejects")
    }
}

/// Defines each test twice, on PostgreSQL and on SQLite: one behavioural
/// suite, two stores. The body receives a [`Backend`] for `TestEnv::start_on`.
macro_rules! store_tests {
    ($(
        $(#[doc = $doc:literal])*
        async fn $name:ident($backend:ident: Backend) $body:block
    )*) => {$(
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($backend: $crate::helpers::Backend) $body

            #[sqlx::test(migrations = false)]
            async fn postgres(pool: sqlx::PgPool) {
                body($crate::helpers::Backend::Postgres(pool)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body($crate::helpers::Backend::Sqlite).await
            }
        }
    )*};
}
pub(crate) use store_tests;

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
