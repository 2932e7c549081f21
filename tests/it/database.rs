//! The database side of hardening: locks held by other sessions, table
//! shapes that would corrupt or fail later, and errors that say what failed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use apisync::config;
use apisync::store::{PgStore, SqliteStore, Store, StoreError};
use apisync::sync::Job;
use serde_json::json;
use sqlx::PgPool;

use crate::binary::{self, database_url, free_port, run, scratch, spawn, wait_exit};
use crate::helpers::{JobToml, TestEnv, products, store_tests, wait_until};

/// A whole configuration for one job `locked` into table `locked`, read
/// from the fake API's `/page` ten records at a time; with `daemon`, for
/// `apisync run`: a server on that port and a run at the start.
fn locked_config(db: &str, api: &str, extra_database: &str, daemon: Option<u16>) -> String {
    let (server, run_on_start) = match daemon {
        Some(port) => (
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
            "run_on_start = true",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"
shutdown_timeout = "2s"
[database]
url = "{db}"
{extra_database}
{server}
[[jobs]]
{run_on_start}
name = "locked"
schedule = "0 0 1 1 *"
table = "locked"
key = ["id"]
records = "/data"
[jobs.request]
url = "{api}/page"
[jobs.pagination]
kind = "page"
size = 10
"#
    )
}

/// Creates the job's table with a first run, then holds `LOCK TABLE locked
/// IN ACCESS EXCLUSIVE MODE` in an open transaction (rolled back when the
/// returned transaction is dropped).
async fn lock_the_table(env: &TestEnv, dir: &Path) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let first = run(dir, &["sync", "locked"], &[]).await;
    assert!(first.status.success(), "{}", binary::stderr(&first));
    let mut lock = env.pg().begin().await.unwrap();
    sqlx::query("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock
}

async fn apisync_waits_for_a_lock(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'apisync' AND wait_event_type = 'Lock' \
         AND datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
        > 0
}

async fn last_run(pool: &PgPool) -> (String, Option<String>) {
    sqlx::query_as(
        "SELECT status, error FROM apisync.runs WHERE job = 'locked' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn sigterm_ends_sync_while_another_session_holds_the_table_lock(pool: PgPool) {
    // Arrange: a lock_timeout far longer than the test, so only the signal
    // can end the wait.
    let env = TestEnv::start(pool, products(30)).await;
    let dir = scratch("db-lock-sigterm");
    let text = locked_config(
        &database_url(env.pg()),
        &env.api.url(""),
        "lock_timeout = \"1h\"",
        None,
    );
    std::fs::write(dir.join("apisync.toml"), text).unwrap();
    let lock = lock_the_table(&env, &dir).await;
    let mut child = spawn(&dir, &["sync", "locked"], &[]);
    wait_until("apisync waits for the table lock", async || {
        apisync_waits_for_a_lock(env.pg()).await
    })
    .await;

    // Act
    binary::signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;

    // Assert: it exited while the lock is still held…
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
    assert!(
        status.is_some(),
        "apisync sync ignored SIGTERM while the lock was held\n{stderr}"
    );
    assert!(
        lock_is_held(env.pg()).await,
        "the lock was still held when apisync exited"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stdout}\n{stderr}");
    // …the run is recorded interrupted…
    let (run_status, error) = last_run(env.pg()).await;
    assert_eq!(run_status, "interrupted", "{error:?}");
    assert!(stdout.contains("locked interrupted"), "{stdout}");
    // …and a graceful stop is not logged as an error.
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(stderr.contains("Run interrupted"), "{stderr}");
    lock.rollback().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn sigterm_ends_sync_within_shutdown_timeout_when_a_page_write_waits_on_a_lock(pool: PgPool) {
    // Arrange: a first load of 25 pages, slowed; once two pages are in, the
    // table is locked and the next page's write waits inside its
    // transaction, where a signal does not cut in at once.
    let env = TestEnv::start(pool, products(250)).await;
    env.api.set_delay(Duration::from_millis(100));
    let dir = scratch("db-lock-write");
    let text = locked_config(
        &database_url(env.pg()),
        &env.api.url(""),
        "lock_timeout = \"1h\"",
        None,
    );
    std::fs::write(dir.join("apisync.toml"), text).unwrap();
    let mut child = spawn(&dir, &["sync", "locked"], &[]);
    wait_until("two pages are committed", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM locked")
            .fetch_one(env.pg())
            .await
            .unwrap_or(0)
            >= 20
    })
    .await;
    let mut lock = env.pg().begin().await.unwrap();
    sqlx::query("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    wait_until("apisync waits for the table lock", async || {
        apisync_waits_for_a_lock(env.pg()).await
    })
    .await;

    // Act
    binary::signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;

    // Assert: out while the lock is held, the run recorded interrupted.
    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(status.is_some(), "apisync sync ignored SIGTERM\n{stderr}");
    assert!(lock_is_held(env.pg()).await);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stdout}\n{stderr}");
    let (run_status, error) = last_run(env.pg()).await;
    assert_eq!(run_status, "interrupted", "{error:?}");
    assert!(
        error
            .unwrap_or_default()
            .contains("shutdown_timeout ran out"),
        "{stdout}"
    );
    assert!(stdout.contains("locked interrupted"), "{stdout}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    lock.rollback().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether some session holds an AccessExclusiveLock on table `locked`.
async fn lock_is_held(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'locked'::regclass \
         AND mode = 'AccessExclusiveLock' AND granted)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_statement_waiting_past_lock_timeout_fails_the_run_saying_a_lock_blocked_it(
    pool: PgPool,
) {
    // Arrange
    let env = TestEnv::start(pool, products(30)).await;
    let dir = scratch("db-lock-timeout");
    let text = locked_config(
        &database_url(env.pg()),
        &env.api.url(""),
        "lock_timeout = \"1s\"",
        None,
    );
    std::fs::write(dir.join("apisync.toml"), text).unwrap();
    let lock = lock_the_table(&env, &dir).await;

    // Act: no signal; the lock outlives lock_timeout.
    let mut child = spawn(&dir, &["sync", "locked"], &[]);
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;

    // Assert: the run failed while the lock was held, and says why.
    assert!(lock_is_held(env.pg()).await);
    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stdout}\n{stderr}");
    let (run_status, error) = last_run(env.pg()).await;
    let error = error.unwrap_or_default();
    assert_eq!(run_status, "failed", "{error}");
    for part in [
        "a lock held by another session blocked the statement",
        "database.lock_timeout",
        "55P03",
        "another session holds a lock on table locked",
    ] {
        assert!(error.contains(part), "{part:?} in {error}");
        assert!(stdout.contains(part), "{part:?} in {stdout}");
    }
    lock.rollback().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn under_apisync_run_a_run_blocked_past_lock_timeout_is_failed_not_left_running(
    pool: PgPool,
) {
    // Arrange
    let env = TestEnv::start(pool, products(30)).await;
    let dir = scratch("db-lock-daemon");
    let text = locked_config(
        &database_url(env.pg()),
        &env.api.url(""),
        "lock_timeout = \"1s\"",
        Some(free_port()),
    );
    std::fs::write(dir.join("apisync.toml"), text).unwrap();
    let lock = lock_the_table(&env, &dir).await;

    // Act
    let mut daemon = spawn(&dir, &["run"], &[]);
    wait_until("the daemon's run has ended", async || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM apisync.runs WHERE job = 'locked' AND status <> 'running'",
        )
        .fetch_one(env.pg())
        .await
        .unwrap()
            >= 2
    })
    .await;

    // Assert: failed, saying why, while the lock is still held.
    assert!(lock_is_held(env.pg()).await);
    let (status, error) = last_run(env.pg()).await;
    let error = error.unwrap_or_default();
    assert_eq!(status, "failed", "{error}");
    assert!(
        error.contains("a lock held by another session blocked the statement"),
        "{error}"
    );
    binary::signal(&daemon, libc::SIGTERM);
    let stopped = wait_exit(&mut daemon, Duration::from_secs(60)).await;
    assert_eq!(stopped.and_then(|s| s.code()), Some(0));
    lock.rollback().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn on_sqlite_the_busy_timeout_is_the_lock_timeout_and_says_a_lock_blocked_it() {
    // Arrange: another connection holds the file's write lock.
    let dir = scratch("db-sqlite-busy");
    let url = format!("sqlite://{}", dir.join("busy.db").display());
    let store = SqliteStore::connect_lazy_with_lock_timeout(
        &url,
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .unwrap();
    let store = Store::Sqlite(store);
    store.migrate().await.unwrap();
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    // Act
    let started = store.start_run("busy").await;

    // Assert
    let error = started.expect_err("the write waits for the lock, then fails");
    assert!(matches!(error, StoreError::LockTimeout { .. }), "{error:?}");
    let text = apisync::error_chain(&error);
    assert!(
        text.contains("a lock held by another session blocked the statement"),
        "{text}"
    );
    assert!(text.contains("SQLITE_BUSY"), "{text}");
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    drop(other);
    store.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn on_sqlite_a_migration_lock_held_by_another_process_is_waited_for_at_most_lock_timeout() {
    use std::os::fd::AsRawFd;
    // Arrange: the lock file another process would hold while migrating.
    let dir = scratch("db-sqlite-migrate-lock");
    let file = dir.join("m.db");
    let url = format!("sqlite://{}", file.display());
    let store = Store::Sqlite(
        SqliteStore::connect_lazy_with_lock_timeout(
            &url,
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
        .unwrap(),
    );
    store.migrate().await.unwrap();
    let mut lock_name = std::fs::canonicalize(&file).unwrap().into_os_string();
    lock_name.push(".migrate.lock");
    let held = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_name)
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );

    // Act
    let migrated = tokio::time::timeout(Duration::from_secs(60), store.migrate()).await;

    // Assert
    let error = migrated
        .expect("migrate gives up waiting")
        .expect_err("the lock is held");
    let text = apisync::error_chain(&error);
    assert!(
        text.contains("a lock held by another session blocked the statement"),
        "{text}"
    );
    assert!(text.contains("m.db.migrate.lock"), "{text}");
    drop(held);
    store.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn an_existing_key_column_with_a_nondeterministic_collation_is_refused(pool: PgPool) {
    // Arrange: an ICU case-insensitive collation on the key column.
    let created = sqlx::query(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
    )
    .execute(&pool)
    .await;
    if let Err(e) = created {
        eprintln!("skipped: this PostgreSQL cannot create an ICU collation ({e})");
        return;
    }
    sqlx::query(
        "CREATE TABLE products (id text COLLATE ci NOT NULL PRIMARY KEY, record jsonb NOT NULL, \
         content_hash bytea NOT NULL, first_seen_at timestamptz NOT NULL, \
         changed_at timestamptz NOT NULL, run_id bigint NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = Store::Postgres(PgStore::from_pool(pool.clone()));
    let settings = config::load_str(
        &JobToml::to("http://127.0.0.1:1/").config(),
        Path::new("t.toml"),
        &HashMap::new(),
    )
    .unwrap();
    let job = Job::from_settings(&settings.jobs[0]).unwrap();

    // Act
    let prepared = store.prepare_table(&job.table).await;

    // Assert
    let error = apisync::error_chain(&prepared.expect_err("the table is refused"));
    assert!(error.contains("table products exists"), "{error}");
    assert!(error.contains("collation \"ci\""), "{error}");
    assert!(error.contains("not deterministic"), "{error}");
    // A deterministic one (the "C" apisync creates) is accepted.
    sqlx::query("ALTER TABLE products ALTER COLUMN id TYPE text COLLATE \"C\"")
        .execute(&pool)
        .await
        .unwrap();
    store.prepare_table(&job.table).await.expect("accepted");
}

fn load_error(key: &str) -> String {
    // A configuration test: the key as the user would write it.
    let text = JobToml::lines(&format!("key = {key}"))
        .with("request.url", "http://127.0.0.1:1/")
        .config();
    match config::load_str(&text, Path::new("t.toml"), &HashMap::new()) {
        Ok(_) => panic!("key = {key} is accepted"),
        Err(e) => e.problems.join("; "),
    }
}

#[test]
fn system_columns_are_refused_as_key_columns_on_every_store() {
    for name in [
        "xmin", "ctid", "tableoid", "cmin", "cmax", "xmax", "rowid", "oid", "_rowid_", "XMIN",
        "RowId",
    ] {
        let error = load_error(&format!("[\"{name}\"]"));
        assert!(
            error.contains(&format!("job \"products\", key \"key\": `{name}` cannot be a key column: it is a system column")),
            "{name}: {error}"
        );
    }
    // Also when the column is derived from a pointer or named outright.
    assert!(load_error(r#"[{ field = "id", column = "ctid" }]"#).contains("system column"));
    // The way out the message suggests works.
    let text = JobToml::lines(r#"key = [{ field = "xmin", column = "xmin_" }]"#)
        .with("request.url", "http://127.0.0.1:1/")
        .config();
    config::load_str(&text, Path::new("t.toml"), &HashMap::new()).expect("accepted");
}

#[test]
fn key_columns_that_differ_only_by_case_are_refused_on_every_store() {
    for (key, columns) in [
        (r#"["ID", "id"]"#, "`ID` and `id`"),
        (r#"["/a/b", "A_B"]"#, "`a_b` and `A_B`"),
        (r#"["Record"]"#, ""),
    ] {
        let error = load_error(key);
        if columns.is_empty() {
            assert!(error.contains("apisync uses that column itself"), "{error}");
        } else {
            assert!(
                error.contains(&format!("key columns {columns} differ only by case")),
                "{key}: {error}"
            );
        }
    }
}

#[test]
fn a_key_entry_names_its_column_or_says_what_it_expects() {
    let bad = [
        (r#"["@id"]"#, "`@id` is not a valid column name"),
        (
            r#"[{ field = "/@id", column = "at-id" }]"#,
            "key field `/@id`: `at-id` is not a valid column name",
        ),
        (
            r#"[{ field = "/@id" }]"#,
            "expected a field name (\"id\"), a JSON pointer (\"/meta/id\") or a field with its column",
        ),
        (
            r#"[{ field = "/@id", column = "at_id", extra = 1 }]"#,
            "expected a field name",
        ),
        (
            r#"[{ field = "/a", column = "x" }, { field = "/b", column = "x" }]"#,
            "key fields `/a` and `/b` map to one column, `x`",
        ),
    ];
    for (key, expected) in bad {
        let error = load_error(key);
        assert!(error.contains(expected), "{key}: {error}");
    }
}

#[test]
fn lock_timeout_defaults_to_30s_and_is_bounded() {
    let job = JobToml::to("http://127.0.0.1:1/");
    let settings = config::load_str(&job.config(), Path::new("t.toml"), &HashMap::new()).unwrap();
    assert_eq!(settings.database.lock_timeout, Duration::from_secs(30));
    for (value, ok) in [
        ("\"1s\"", true),
        ("\"1h\"", true),
        ("\"500ms\"", false),
        ("\"2h\"", false),
    ] {
        // The value as the user would write it (a string or a number).
        let value: toml::Table = toml::from_str(&format!("v = {value}")).unwrap();
        let text = job
            .clone()
            .with_database("lock_timeout", value["v"].clone())
            .config();
        let loaded = config::load_str(&text, Path::new("t.toml"), &HashMap::new());
        match (loaded, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => assert!(
                e.problems
                    .join("; ")
                    .contains("key \"database.lock_timeout\": `"),
                "{e}"
            ),
            (other, _) => panic!("lock_timeout = {value}: {other:?}"),
        }
    }
}

store_tests! {
    /// A key field whose name is not an identifier, stored in the column
    /// the configuration names.
    async fn a_key_field_that_is_not_an_identifier_goes_to_the_column_named(backend: Backend) {
        // Arrange
        let records: Vec<_> = (1..=25)
            .map(|i| json!({"@id": format!("urn:{i}"), "name": format!("n{i}")}))
            .collect();
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(
            JobToml::lines(r#"key = [{ field = "/@id", column = "at_id" }, "name"]"#)
                .with("records", "/data")
                .with("request.url", "{api}/page")
                .with("pagination.kind", "page")
                .with("pagination.size", 10),
        );

        // Act
        let first = env.run(&job).await;
        let second = env.run(&job).await;

        // Assert
        assert_eq!(first.error, None);
        assert_eq!((first.counts.inserted, second.counts.unchanged), (25, 25));
        let rows = env
            .query_texts("SELECT at_id, name FROM products ORDER BY at_id")
            .await;
        assert_eq!(rows.len(), 25);
        assert_eq!(rows[0], ("urn:1".to_owned(), "n1".to_owned()));
    }
}

/// `apisync migrate` with `url`, off the runtime; at most a minute.
async fn migrate_with(dir: &Path, url: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let text = JobToml::to("http://127.0.0.1:1/")
        .database(url)
        .with_database("acquire_timeout", "1h")
        .config();
    std::fs::write(dir.join("apisync.toml"), text).unwrap();
    let mut child = spawn(dir, &["migrate"], envs);
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    (status.map(|s| s.code().unwrap_or(-1)), stderr)
}

#[tokio::test]
async fn a_closed_database_port_says_connection_refused_with_host_port_and_database_at_once() {
    // Arrange: acquire_timeout is an hour, so only an error that comes at
    // once ends the command within the test's minute.
    let dir = scratch("db-refused");
    let port = free_port();
    let url = format!("postgres://apisync:hunter2@127.0.0.1:{port}/archive");

    // Act
    let (code, stderr) = migrate_with(&dir, &url, &[]).await;

    // Assert
    assert_eq!(code, Some(1), "{stderr}");
    for part in [
        "connecting to PostgreSQL at 127.0.0.1:",
        &format!(":{port}, database archive"),
        "connection refused",
    ] {
        assert!(stderr.contains(part), "{part:?} in {stderr}");
    }
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_missing_database_is_named_without_postgresqls_source_line(pool: PgPool) {
    // Arrange
    let dir = scratch("db-missing");
    let mut url = reqwest::Url::parse(&database_url(&pool)).unwrap();
    url.set_path("apisync_no_such_database");

    // Act
    let (code, stderr) = migrate_with(&dir, url.as_str(), &[]).await;

    // Assert
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "connecting to PostgreSQL at {}:{}, database apisync_no_such_database",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("database \"apisync_no_such_database\" does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains(" at line "), "{stderr}");
    assert!(
        !stderr.contains("migrat"),
        "not a failed migration: {stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stand-in PostgreSQL that refuses every login the way the server does
/// on a wrong password (the ErrorResponse fields of auth.c, line included).
async fn refusing_server() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                loop {
                    // Untyped startup packets: length, then a code.
                    let Ok(length) = socket.read_u32().await else {
                        return;
                    };
                    let mut body = vec![0; length.saturating_sub(4) as usize];
                    if socket.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if body.starts_with(&80877103u32.to_be_bytes()) {
                        // SSLRequest: no TLS here.
                        let _ = socket.write_all(b"N").await;
                        continue;
                    }
                    let mut fields = Vec::new();
                    for (code, value) in [
                        (b'S', "FATAL"),
                        (b'V', "FATAL"),
                        (b'C', "28P01"),
                        (b'M', "password authentication failed for user \"apisync\""),
                        (b'F', "auth.c"),
                        (b'L', "334"),
                        (b'R', "auth_failed"),
                    ] {
                        fields.push(code);
                        fields.extend_from_slice(value.as_bytes());
                        fields.push(0);
                    }
                    fields.push(0);
                    let mut message = vec![b'E'];
                    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                    message.extend_from_slice(&fields);
                    let _ = socket.write_all(&message).await;
                    return;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_wrong_password_says_authenticating_failed_and_names_host_and_database() {
    // Arrange
    let port = refusing_server().await;
    let dir = scratch("db-password");
    let url = format!("postgres://apisync:wrong-secret-pw@127.0.0.1:{port}/archive");

    // Act
    let (code, stderr) = migrate_with(&dir, &url, &[]).await;

    // Assert
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "authenticating to PostgreSQL at 127.0.0.1:{port}, database archive, user apisync \
             failed: password authentication failed for user \"apisync\""
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(" at line "), "{stderr}");
    assert!(
        !stderr.contains("migrat"),
        "not a failed migration: {stderr}"
    );
    assert!(!stderr.contains("wrong-secret-pw"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn the_log_names_the_database_and_where_its_url_came_from_and_no_notices(pool: PgPool) {
    // Arrange: the file names one database, DATABASE_URL another (with a
    // password the server does not need under trust authentication).
    let dir = scratch("db-origin");
    let mut url = reqwest::Url::parse(&database_url(&pool)).unwrap();
    url.set_password(Some("env-pass-7781")).unwrap();
    let database = url.path().trim_start_matches('/').to_owned();
    let host = format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    );

    // Act: twice, so the second finds the schema there already.
    let envs = [("DATABASE_URL", url.as_str())];
    let (first, _) = migrate_with(&dir, "postgres://unused@127.0.0.1/unused", &envs).await;
    let (second, stderr) = migrate_with(&dir, "postgres://unused@127.0.0.1/unused", &envs).await;

    // Assert
    assert_eq!((first, second), (Some(0), Some(0)), "{stderr}");
    assert!(
        stderr.contains(&format!("store=PostgreSQL at {host}, database {database}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("url_from=the environment variable DATABASE_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("env-pass-7781"), "{stderr}");
    assert!(!stderr.contains("already exists, skipping"), "{stderr}");
    // `check --connect` says which database it reached, and why that one.
    let checked = run(&dir, &["check", "--connect"], &envs).await;
    let stdout = binary::stdout(&checked);
    assert!(
        stdout.contains(&format!(
            "database: reachable: PostgreSQL at {host}, database {database}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("(url from the environment variable DATABASE_URL)"),
        "{stdout}"
    );
    assert!(!stdout.contains("env-pass-7781"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_url_origin_is_the_layer_that_set_it() {
    let job = JobToml::to("http://127.0.0.1:1/");
    let text = job.config();
    let origin = |env: &[(&str, &str)]| {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::load_str(&text, Path::new("conf/apisync.toml"), &env)
            .unwrap()
            .database
            .url_origin
            .to_string()
    };
    assert_eq!(origin(&[]), "database.url in conf/apisync.toml");
    assert_eq!(
        origin(&[("DATABASE_URL", "postgres://a@h/d")]),
        "the environment variable DATABASE_URL"
    );
    assert_eq!(
        origin(&[
            ("DATABASE_URL", "postgres://a@h/d"),
            ("APISYNC__DATABASE__URL", "postgres://b@h/d")
        ]),
        "the environment variable APISYNC__DATABASE__URL"
    );
    let without = job.without_database().config();
    let settings = config::load_str(&without, Path::new("t.toml"), &HashMap::new()).unwrap();
    assert_eq!(
        settings.database.url_origin.to_string(),
        "the default (sqlite://apisync.db)"
    );
}

#[tokio::test]
async fn apisync_check_refuses_a_system_column_as_key() {
    // Arrange
    let dir = scratch("db-check-xmin");
    let text = JobToml::to("http://127.0.0.1:1/").keyed(&["xmin"]).config();
    std::fs::write(dir.join("apisync.toml"), text).unwrap();

    // Act
    let output = run(&dir, &["check"], &[]).await;

    // Assert: a configuration error (exit 2), before any run could fail on it.
    let stderr = binary::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("job \"products\", key \"key\": `xmin` cannot be a key column"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The local server's certificate (Debian's snakeoil: self-signed, for
/// `localhost`), which `verify-ca` and `verify-full` can be pointed at.
const LOCAL_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Whether apisync's session on the test database uses TLS, as the server
/// sees it (`pg_stat_ssl`).
async fn apisync_session_uses_tls(pool: &PgPool) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'apisync' AND a.datname = current_database() LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// The settings of a store on the test database, reached as `host`.
fn tls_settings(pool: &PgPool, host: &str, extra: &str) -> config::Settings {
    let url = database_url(pool).replace("127.0.0.1", host);
    let text = format!(
        "[database]\nurl = \"{url}\"\n{extra}\n[[jobs]]\nname = \"p\"\ntable = \"p\"\n\
         key = [\"id\"]\n[jobs.request]\nurl = \"http://127.0.0.1:9/p\"\n"
    );
    config::load_str(&text, Path::new("t.toml"), &HashMap::new()).unwrap_or_else(|e| panic!("{e}"))
}

#[sqlx::test(migrations = false)]
async fn postgresql_tls_settings_are_applied_and_a_certificate_is_verified(pool: PgPool) {
    // Arrange
    let verified = format!("sslmode = \"verify-full\"\nssl_root_cert = \"{LOCAL_CERT}\"");
    let full = tls_settings(&pool, "localhost", &verified);
    let wrong_name = tls_settings(&pool, "127.0.0.1", &verified);
    let plain = tls_settings(&pool, "localhost", "sslmode = \"disable\"");

    // Act + Assert: verify-full against the server's own certificate works
    // and the session is encrypted…
    let store = Store::connect_lazy(&full.database).unwrap();
    store
        .ping(Duration::from_secs(10))
        .await
        .expect("verify-full with the server's CA");
    assert_eq!(apisync_session_uses_tls(&pool).await, Some(true));
    store.close().await;
    drop(store);
    // …a host the certificate does not name is refused…
    let refused = Store::connect_lazy(&wrong_name.database).unwrap();
    let error = refused.ping(Duration::from_secs(10)).await.unwrap_err();
    let text = apisync::error_chain(&error);
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    // …and sslmode = "disable" turns TLS off (the server would offer it).
    let store = Store::connect_lazy(&plain.database).unwrap();
    store.ping(Duration::from_secs(10)).await.unwrap();
    wait_until("the plain session shows", async || {
        apisync_session_uses_tls(&pool).await == Some(false)
    })
    .await;
}

#[test]
fn tls_settings_that_cannot_work_are_refused() {
    let load = |text: &str| {
        config::load_str(text, Path::new("t.toml"), &HashMap::new())
            .unwrap_err()
            .to_string()
    };
    let missing = load(
        "[database]\nurl = \"postgres://u@localhost/d\"\nsslmode = \"verify-ca\"\n\
         ssl_root_cert = \"/nonexistent/ca.pem\"\n",
    );
    assert!(
        missing.contains("key \"database.ssl_root_cert\": cannot read /nonexistent/ca.pem"),
        "{missing}"
    );
    let sqlite = load("[database]\nurl = \"sqlite://x.db\"\nsslmode = \"require\"\n");
    assert!(sqlite.contains("a SQLite file has no TLS"), "{sqlite}");
    let unknown = load("[database]\nurl = \"postgres://u@localhost/d\"\nsslmode = \"maybe\"\n");
    assert!(unknown.contains("unknown variant `maybe`"), "{unknown}");
}

store_tests! {
    async fn runs_retention_deletes_old_runs_and_rejects_and_nothing_running(backend: Backend) {
        // Arrange: two runs with a reject each time; then the first run,
        // the reject and a run left running are made two days old.
        let mut records = products(19);
        records.push(json!({"name": "no id"}));
        let env = TestEnv::start_on(backend, records).await;
        let job = env.job(JobToml::paged(10));
        let first = env.run(&job).await;
        let second = env.run(&job).await;
        let (runs, rejects) = match env.store_name {
            "postgres" => ("apisync.runs", "apisync.rejects"),
            _ => ("apisync_runs", "apisync_rejects"),
        };
        let old = "'2020-01-01T00:00:00.000Z'";
        env.execute(&format!(
            "UPDATE {runs} SET finished_at = {old} WHERE id = {}",
            first.run_id.unwrap()
        ))
        .await;
        env.execute(&format!("UPDATE {rejects} SET rejected_at = {old}")).await;
        env.execute(&format!(
            "INSERT INTO {runs} (job, status, started_at, finished_at) \
             VALUES ('products', 'running', {old}, {old})"
        ))
        .await;

        // Act
        apisync::sync::prune_history(&env.ctx.store, "products", Duration::from_secs(86_400))
            .await;

        // Assert: the old finished run and the reject are gone; the recent
        // run and the one still running stay.
        let left = env
            .query_pairs(&format!("SELECT status, id FROM {runs} ORDER BY id"))
            .await;
        assert_eq!(
            left.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            vec!["succeeded", "running"],
            "{left:?}"
        );
        assert_eq!(left[0].1, second.run_id.unwrap());
        assert_eq!(env.query_i64(&format!("SELECT count(*) FROM {rejects}")).await, 0);
    }
}

#[tokio::test]
async fn runs_retention_is_a_setting_with_a_range() {
    let text = "runs_retention = \"10m\"\n[database]\nurl = \"sqlite://x.db\"\n[[jobs]]\n\
                name = \"p\"\ntable = \"p\"\nkey = [\"id\"]\n[jobs.request]\n\
                url = \"http://127.0.0.1:9/p\"\n";
    let error = config::load_str(text, Path::new("t.toml"), &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("key \"runs_retention\": `10m` is outside the allowed range, 1h to 36500d"),
        "{error}"
    );
    let ok = config::load_str(
        &text.replace("10m", "90d"),
        Path::new("t.toml"),
        &HashMap::new(),
    )
    .unwrap();
    assert_eq!(ok.runs_retention, Some(Duration::from_secs(90 * 86_400)));
}

#[sqlx::test(migrations = false)]
async fn a_schema_qualified_table_is_created_in_its_schema(pool: PgPool) {
    // Arrange: a job writing `archive.products`, with history, into a
    // database that has no `archive` schema yet.
    let env = TestEnv::start(pool, products(25)).await;
    let job = env.job(
        JobToml::paged(10)
            .with("table", "archive.products")
            .with("history", true),
    );

    // Act
    let first = env.run(&job).await;
    let second = env.run(&job).await;

    // Assert: the rows and their versions are in the schema, and a re-sync
    // finds them unchanged.
    assert_eq!(first.status.as_str(), "succeeded", "{:?}", first.error);
    assert_eq!(first.counts.inserted, 25);
    assert_eq!(second.counts.unchanged, 25, "{:?}", second.error);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM archive.products")
        .fetch_one(env.pg())
        .await
        .unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM archive.products_history")
        .fetch_one(env.pg())
        .await
        .unwrap();
    assert_eq!((rows, versions), (25, 25));
    let in_public: bool = sqlx::query_scalar("SELECT to_regclass('public.products') IS NOT NULL")
        .fetch_one(env.pg())
        .await
        .unwrap();
    assert!(!in_public);
}

#[test]
fn a_schema_qualified_table_is_refused_on_sqlite() {
    let text = "[database]\nurl = \"sqlite://x.db\"\n[[jobs]]\nname = \"p\"\n\
                table = \"archive.products\"\nkey = [\"id\"]\n[jobs.request]\n\
                url = \"http://127.0.0.1:9/p\"\n";
    let error = config::load_str(text, Path::new("t.toml"), &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("names a schema, which only PostgreSQL has"),
        "{error}"
    );
}
