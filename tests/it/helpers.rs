//! The harness: a fresh database per test (from `#[sqlx::test]`) or SQLite
//! file, the fake API, jobs built from named parts (`JobToml`) through the
//! real configuration loader, helpers named after what tests check, written
//! once for both stores (`TestDb`), and `walk`: the source side alone, for
//! tests of request timing on tokio's paused clock.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::LazyLock;

use apisync::config::{self, LogFormat, LogSettings};
use apisync::redact::Redactor;
use apisync::source::{ApiClient, SourceError, SourceSpec};
use apisync::store::{PgStore, SqliteStore, Store};
use apisync::sync::{Job, RunReport, SyncContext, run_once};
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{FromRow, PgPool};
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

/// The test's own connection to the store, beside the store under test: what
/// the helpers read and change the tables through. One query text serves both
/// dialects where their SQL agrees (`apisync.x` is read as `apisync_x` on
/// SQLite, `$1` binds on both); the few statements that differ say so.
pub enum TestDb {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A row type both dialects decode: tuples of `String`, `i64`, `Option<…>`.
pub trait BothRows:
    Send + Unpin + for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow>
{
}
impl<T> BothRows for T where
    T: Send + Unpin + for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow>
{
}

impl TestDb {
    /// `sql` in this store's names for the internal tables.
    fn dialect(&self, sql: &str) -> String {
        match self {
            TestDb::Postgres(_) => sql.to_owned(),
            TestDb::Sqlite(_) => sql.replace("apisync.", "apisync_"),
        }
    }

    /// Every row of `sql`.
    pub async fn fetch_all<T: BothRows>(&self, sql: &str) -> Vec<T> {
        let text = sqlx::AssertSqlSafe(self.dialect(sql));
        match self {
            TestDb::Postgres(pool) => sqlx::query_as(text).fetch_all(pool).await,
            TestDb::Sqlite(pool) => sqlx::query_as(text).fetch_all(pool).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one row of `sql`.
    pub async fn fetch_one<T: BothRows>(&self, sql: &str) -> T {
        let text = sqlx::AssertSqlSafe(self.dialect(sql));
        match self {
            TestDb::Postgres(pool) => sqlx::query_as(text).fetch_one(pool).await,
            TestDb::Sqlite(pool) => sqlx::query_as(text).fetch_one(pool).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one statement.
    pub async fn execute(&self, sql: &str) {
        let text = sqlx::AssertSqlSafe(self.dialect(sql));
        match self {
            TestDb::Postgres(pool) => sqlx::query(text).execute(pool).await.map(drop),
            TestDb::Sqlite(pool) => sqlx::query(text).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

pub struct TestEnv {
    /// The test's own connection to the store.
    pub db: TestDb,
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
        let (store, database_url) = match &backend {
            Backend::Postgres(pool) => (
                Store::Postgres(PgStore::from_pool(pool.clone())),
                crate::binary::database_url(pool),
            ),
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
                (store, url)
            }
        };
        // On SQLite the file exists once the migrations ran.
        store.migrate().await.expect("migrations apply");
        let (db, store_name) = match backend {
            Backend::Postgres(pool) => (TestDb::Postgres(pool), "postgres"),
            Backend::Sqlite => {
                let reader = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&database_url)
                    .await
                    .expect("open the SQLite file");
                (TestDb::Sqlite(reader), "sqlite")
            }
        };
        let api = FakeApi::start(records).await;
        let client = ApiClient::new().expect("HTTP client");
        client.keep_tokens_in(store.clone());
        let ctx = SyncContext {
            store,
            client,
            redactor: Redactor::default(),
            cancel: CancellationToken::new(),
            in_flight: Default::default(),
        };
        TestEnv {
            db,
            database_url,
            store_name,
            api,
            ctx,
        }
    }

    /// The PostgreSQL test database, for PostgreSQL-only tests (xmin,
    /// pg_stat, advisory locks, sessions).
    pub fn pg(&self) -> &PgPool {
        match &self.db {
            TestDb::Postgres(pool) => pool,
            TestDb::Sqlite(_) => panic!("a PostgreSQL-only helper was used on SQLite"),
        }
    }

    /// `job` (a [`JobToml`], or the TOML lines of one, which may use `{api}`
    /// for the fake API's address) built through the real configuration
    /// loader.
    pub fn job(&self, job: impl Into<JobToml>) -> Job {
        self.job_with_env(job, &HashMap::new()).0
    }

    /// Like [`TestEnv::job`], with variables for `${VAR}` references; also
    /// returns the loaded settings' redactor.
    pub fn job_with_env(
        &self,
        job: impl Into<JobToml>,
        env: &HashMap<String, String>,
    ) -> (Job, Redactor) {
        let text = job.into().api_or(&self.api.url("")).config();
        let settings = config::load_str(&text, Path::new("test.toml"), env)
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}\n{text}"));
        let job = Job::from_settings(&settings.jobs[0]).expect("job builds");
        (job, settings.redactor)
    }

    /// A whole configuration file for the real binary: `job` against the
    /// fake API, into this test's store.
    pub fn config_file(&self, job: impl Into<JobToml>) -> String {
        job.into()
            .api_or(&self.api.url(""))
            .database(&self.database_url)
            .config()
    }

    pub async fn run(&self, job: &Job) -> RunReport {
        run_once(job, &self.ctx).await.expect("the run is recorded")
    }

    /// `id → record` of every row in `table`.
    pub async fn rows(&self, table: &str) -> BTreeMap<String, Value> {
        let sql = format!("SELECT id, CAST(record AS TEXT) FROM \"{table}\"");
        self.db
            .fetch_all::<(String, String)>(&sql)
            .await
            .into_iter()
            .map(|(id, record)| (id, serde_json::from_str(&record).unwrap()))
            .collect()
    }

    /// `id → (version, changed_at, run_id)`: what moves when a row is
    /// written. The version is PostgreSQL's `xmin`; SQLite has none to show.
    pub async fn row_versions(&self, table: &str) -> BTreeMap<String, (String, String, i64)> {
        let version = match self.db {
            TestDb::Postgres(_) => "CAST(xmin AS TEXT)",
            TestDb::Sqlite(_) => "''",
        };
        let sql =
            format!("SELECT id, {version}, CAST(changed_at AS TEXT), run_id FROM \"{table}\"");
        self.db
            .fetch_all::<(String, String, String, i64)>(&sql)
            .await
            .into_iter()
            .map(|(id, version, changed_at, run_id)| (id, (version, changed_at, run_id)))
            .collect()
    }

    /// `expected` of a run in the runs table.
    pub async fn run_expected(&self, run_id: Option<i64>) -> Option<i64> {
        let run_id = run_id.expect("the run was not skipped");
        let sql = format!("SELECT expected FROM apisync.runs WHERE id = {run_id}");
        self.db.fetch_one::<(Option<i64>,)>(&sql).await.0
    }

    /// `(status, error)` of a run in the runs table.
    pub async fn run_row(&self, run_id: Option<i64>) -> (String, Option<String>) {
        let run_id = run_id.expect("the run was not skipped");
        let sql = format!("SELECT status, error FROM apisync.runs WHERE id = {run_id}");
        self.db.fetch_one(&sql).await
    }

    /// The single integer `sql` returns, on either store (`apisync.x` is
    /// read as `apisync_x` on SQLite).
    pub async fn query_i64(&self, sql: &str) -> i64 {
        self.db.fetch_one::<(i64,)>(sql).await.0
    }

    /// Runs one statement on whichever store the test uses.
    pub async fn execute(&self, sql: &str) {
        self.db.execute(sql).await;
    }

    /// `(text, text)` rows of `sql`, on either store, as for `query_i64`.
    pub async fn query_texts(&self, sql: &str) -> Vec<(String, String)> {
        self.db.fetch_all(sql).await
    }

    /// `(text, integer)` rows of `sql`, on either store, as for `query_i64`.
    pub async fn query_pairs(&self, sql: &str) -> Vec<(String, i64)> {
        self.db.fetch_all(sql).await
    }

    /// Starts counting row writes (inserts and updates) to `table` with
    /// triggers, on either store; read the count with [`TestEnv::writes`].
    pub async fn count_writes(&self, table: &str) {
        self.count_writes_to(&[table]).await;
    }

    /// Like [`TestEnv::count_writes`], for writes to any of `tables`.
    pub async fn count_writes_to(&self, tables: &[&str]) {
        self.execute("CREATE TABLE test_writes (n bigint NOT NULL)")
            .await;
        self.execute("INSERT INTO test_writes VALUES (0)").await;
        // The dialects' triggers differ: a plpgsql function for one trigger
        // on PostgreSQL, a body per event on SQLite.
        let mut triggers = Vec::new();
        if let TestDb::Postgres(_) = self.db {
            triggers.push(
                "CREATE FUNCTION test_count_write() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN UPDATE test_writes SET n = n + 1; RETURN NULL; END $$"
                    .to_owned(),
            );
        }
        for table in tables {
            match self.db {
                TestDb::Postgres(_) => triggers.push(format!(
                    "CREATE TRIGGER test_count AFTER INSERT OR UPDATE ON \"{table}\" \
                     FOR EACH ROW EXECUTE FUNCTION test_count_write()"
                )),
                TestDb::Sqlite(_) => triggers.extend(["INSERT", "UPDATE"].map(|event| {
                    format!(
                        "CREATE TRIGGER test_count_{table}_{event} AFTER {event} ON \"{table}\" \
                         BEGIN UPDATE test_writes SET n = n + 1; END"
                    )
                })),
            }
        }
        for sql in triggers {
            self.execute(&sql).await;
        }
    }

    /// Row writes counted since [`TestEnv::count_writes`].
    pub async fn writes(&self) -> i64 {
        self.query_i64("SELECT n FROM test_writes").await
    }

    /// `(record, reason, run_id)` of the job's rejects, oldest first.
    pub async fn rejects(&self) -> Vec<(String, String, i64)> {
        self.db
            .fetch_all(
                "SELECT record, reason, run_id FROM apisync.rejects WHERE job = 'products' \
                 ORDER BY id",
            )
            .await
    }
}

/// A job's settings for a test, built from named parts (or read from TOML
/// lines) and rendered as the configuration file the real loader reads, so
/// every test job is validated as a user's would be.
///
/// A job `products` into table `products`, keyed on `id`, every 15 minutes,
/// unless the test says otherwise. `{api}` in a string value stands for the
/// API the test syncs from (the fake API, or a real server).
#[derive(Debug, Clone)]
pub struct JobToml {
    /// The `[[jobs]]` table: its keys and its sections (`request`,
    /// `pagination`, `retry`, `incremental` …).
    job: toml::Table,
    api: Option<String>,
    /// The `[database]` table; `None` leaves it out (the default store).
    database: Option<toml::Table>,
}

impl JobToml {
    /// A job that reads one response (`GET {api}{path}`), its records under
    /// `records` (a JSON pointer; `""` for a bare array).
    pub fn get(path: &str, records: &str) -> JobToml {
        JobToml::to(&format!("{{api}}{path}")).with("records", records)
    }

    /// A job whose one request goes to `url`, records under the default
    /// pointer: for configuration tests that never reach the API.
    pub fn to(url: &str) -> JobToml {
        JobToml::lines("").with("request.url", url)
    }

    /// The fake API's `/page` walked with page pagination, `size` a page.
    pub fn paged(size: i64) -> JobToml {
        JobToml::get("/page", "/data")
            .with("pagination.kind", "page")
            .with("pagination.size", size)
    }

    /// The job the TOML `lines` describe: its keys, then its sections as
    /// `[jobs.request]`, `[jobs.pagination]` ….
    pub fn lines(lines: &str) -> JobToml {
        let mut lines: toml::Table = toml::from_str(lines)
            .unwrap_or_else(|e| panic!("the test's job lines are TOML: {e}\n{lines}"));
        let mut job = toml::Table::new();
        job.insert("name".into(), "products".into());
        job.insert("schedule".into(), "*/15 * * * *".into());
        job.insert("table".into(), "products".into());
        job.insert("key".into(), vec!["id"].into());
        if let Some(toml::Value::Table(sections)) = lines.remove("jobs") {
            job.extend(sections);
        }
        job.extend(lines);
        let mut database = toml::Table::new();
        database.insert("url".into(), "postgres://unused@127.0.0.1/unused".into());
        JobToml {
            job,
            api: None,
            database: Some(database),
        }
    }

    /// Sets `key` (`"max_pages"`, or `"retry.max_attempts"` in a section) to
    /// `value`.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> JobToml {
        let (table, key) = match key.split_once('.') {
            None => (&mut self.job, key),
            Some((section, key)) => {
                let section = self
                    .job
                    .entry(section)
                    .or_insert_with(|| toml::Table::new().into());
                let toml::Value::Table(table) = section else {
                    panic!("`{section}` is a key of the job, not a section");
                };
                (table, key)
            }
        };
        table.insert(key.to_owned(), value.into());
        self
    }

    /// The job's name (its table stays `products`): metrics are
    /// process-wide, so a test that reads them needs a job name of its own.
    pub fn named(self, name: &str) -> JobToml {
        self.with("name", name)
    }

    /// Another natural key than `id`: JSON pointers or field names.
    pub fn keyed(self, key: &[&str]) -> JobToml {
        self.with("key", key.to_vec())
    }

    /// The address `{api}` stands for: `http://host:port`, no trailing
    /// slash. Unless set, the test's fake API.
    pub fn api(mut self, url: &str) -> JobToml {
        self.api = Some(url.trim_end_matches('/').to_owned());
        self
    }

    /// The fake API at `url`, unless the job names another API.
    fn api_or(self, url: &str) -> JobToml {
        match self.api {
            Some(_) => self,
            None => self.api(url),
        }
    }

    /// The store the configuration names (a placeholder unless set: jobs run
    /// in process get their store from the test).
    pub fn database(self, url: &str) -> JobToml {
        self.with_database("url", url)
    }

    /// Sets `key` of the `[database]` table.
    pub fn with_database(mut self, key: &str, value: impl Into<toml::Value>) -> JobToml {
        self.database
            .get_or_insert_default()
            .insert(key.to_owned(), value.into());
        self
    }

    /// No `[database]` table at all.
    pub fn without_database(mut self) -> JobToml {
        self.database = None;
        self
    }

    /// The whole configuration file.
    pub fn config(&self) -> String {
        let mut job = self.job.clone();
        if let Some(api) = &self.api {
            fill_in_api(&mut job, api);
        }
        let mut file = toml::Table::new();
        if let Some(database) = &self.database {
            file.insert("database".into(), database.clone().into());
        }
        file.insert("jobs".into(), vec![toml::Value::Table(job)].into());
        toml::to_string(&file).expect("a TOML table renders")
    }
}

impl From<&str> for JobToml {
    fn from(lines: &str) -> JobToml {
        JobToml::lines(lines)
    }
}

impl From<&String> for JobToml {
    fn from(lines: &String) -> JobToml {
        JobToml::lines(lines)
    }
}

impl From<String> for JobToml {
    fn from(lines: String) -> JobToml {
        JobToml::lines(&lines)
    }
}

impl From<&JobToml> for JobToml {
    fn from(job: &JobToml) -> JobToml {
        job.clone()
    }
}

/// `{api}` in every string value of `table` (nested ones too) becomes `api`.
fn fill_in_api(table: &mut toml::Table, api: &str) {
    fn fill(value: &mut toml::Value, api: &str) {
        match value {
            toml::Value::String(s) => *s = s.replace("{api}", api),
            toml::Value::Array(items) => items.iter_mut().for_each(|v| fill(v, api)),
            toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| fill(v, api)),
            _ => {}
        }
    }
    table.iter_mut().for_each(|(_, v)| fill(v, api));
}

/// What the source side of a job alone reads from the fake API: its pages
/// walked as a run walks them, no store involved, so a test of request
/// timing can run on tokio's paused clock.
pub struct Walk {
    /// Every record of every page, in order.
    pub records: Vec<Value>,
    pub pages: u64,
    /// Why the walk stopped early, if it did.
    pub error: Option<SourceError>,
}

/// Walks every page of `job` from `api` (see [`Walk`]).
pub async fn walk(api: &FakeApi, job: impl Into<JobToml>) -> Walk {
    LazyLock::force(&TRACING);
    let text = job.into().api_or(&api.url("")).config();
    let settings = config::load_str(&text, Path::new("test.toml"), &HashMap::new())
        .unwrap_or_else(|e| panic!("test configuration is valid: {e}\n{text}"));
    let spec = SourceSpec::new(&settings.jobs[0], &Default::default()).expect("the source builds");
    let client = ApiClient::new().expect("HTTP client");
    let mut pages = spec.pages(&client, &settings.redactor, None);
    let mut walk = Walk {
        records: Vec::new(),
        pages: 0,
        error: None,
    };
    loop {
        match pages.next_page().await {
            Ok(Some(page)) => {
                walk.pages += 1;
                walk.records.extend(
                    page.records
                        .iter()
                        .map(|r| serde_json::from_slice::<Value>(r).expect("a record is JSON")),
                );
            }
            Ok(None) => return walk,
            Err(e) => {
                walk.error = Some(e);
                return walk;
            }
        }
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
