//! `apisync run` as a real process: SIGTERM drains a long run, and systemd's
//! notification protocol is spoken on `NOTIFY_SOCKET`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use sqlx::PgPool;

use crate::binary::{database_url, free_port, scratch, spawn, wait_exit};
use crate::helpers::{TcpToggle, TestEnv, expected_rows, products, wait_until};

fn send_sigterm(child: &Child) {
    crate::binary::signal(child, libc::SIGTERM);
}

fn config(pool: &PgPool, api: &str, port: u16, job: &str) -> String {
    config_with(&database_url(pool), "5s", api, port, job)
}

fn config_with(db: &str, shutdown_timeout: &str, api: &str, port: u16, job: &str) -> String {
    format!(
        r#"
shutdown_timeout = "{shutdown_timeout}"
[database]
url = "{db}"
[server]
listen = "127.0.0.1:{port}"
[[jobs]]
name = "drain"
schedule = "0 0 1 1 *"
table = "drain"
key = ["id"]
records = "/data"
{job}
[jobs.request]
url = "{api}/page"
[jobs.pagination]
kind = "page"
size = 10
"#
    )
}

#[sqlx::test(migrations = false)]
async fn sigterm_interrupts_a_long_run_cleanly_and_the_next_run_completes(pool: PgPool) {
    // Arrange: 26 pages at 400 ms each: a run of about 10 s.
    let env = TestEnv::start(pool, products(250)).await;
    env.api.set_delay(Duration::from_millis(400));
    let dir = scratch("sigterm");
    std::fs::write(
        dir.join("apisync.toml"),
        config(
            env.pg(),
            &env.api.url(""),
            free_port(),
            "run_on_start = true",
        ),
    )
    .unwrap();
    let mut daemon = spawn(&dir, &["run"], &[]);
    let count_rows = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM drain")
            .fetch_one(env.pg())
            .await
            .unwrap_or(0)
    };
    wait_until("three pages are committed", async || {
        count_rows().await >= 30
    })
    .await;

    // Act
    send_sigterm(&daemon);
    let status = wait_exit(&mut daemon, Duration::from_secs(5)).await;

    // Assert: exit 0 within shutdown_timeout…
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    // …the run is recorded interrupted, with counts that match the table…
    let (run_status, inserted, error): (String, i64, Option<String>) =
        sqlx::query_as("SELECT status, inserted, error FROM apisync.runs WHERE job = 'drain'")
            .fetch_one(env.pg())
            .await
            .unwrap();
    assert_eq!(run_status, "interrupted");
    assert!(
        error
            .unwrap_or_default()
            .contains("interrupted by shutdown")
    );
    let rows = count_rows().await;
    assert_eq!(rows, inserted, "only whole, counted pages are in the table");
    assert_eq!(rows % 10, 0, "pages are committed whole");
    assert!(rows < 250, "the run really was cut short");

    // …and the next run completes the data exactly.
    env.api.set_delay(Duration::ZERO);
    let output = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_apisync"))
                .current_dir(dir)
                .args(["sync", "drain"])
                .env_clear()
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored: std::collections::BTreeMap<String, serde_json::Value> =
        sqlx::query_as::<_, (String, serde_json::Value)>("SELECT id, record FROM drain")
            .fetch_all(env.pg())
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(stored, expected_rows(&env.api.records()));
}

#[sqlx::test(migrations = false)]
async fn systemd_hears_ready_watchdog_and_stopping(pool: PgPool) {
    // Arrange: a datagram socket standing in for systemd.
    let env = TestEnv::start(pool, products(10)).await;
    let dir = scratch("notify");
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let systemd = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("apisync.toml"),
        config(env.pg(), &env.api.url(""), port, ""),
    )
    .unwrap();
    let mut daemon = spawn(
        &dir,
        &["run"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let receive = async || -> String {
        let mut buffer = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(30), systemd.recv(&mut buffer))
            .await
            .expect("a notification arrives")
            .unwrap();
        String::from_utf8_lossy(&buffer[..read]).trim().to_owned()
    };

    // Act + Assert: READY=1 first, once the port accepts connections…
    assert_eq!(receive().await, "READY=1");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the endpoints listen before READY=1 is sent"
    );
    // The container health check asks /healthz the same way.
    let health = crate::binary::run(&dir, &["health"], &[]).await;
    assert_eq!(
        health.status.code(),
        Some(0),
        "{}",
        crate::binary::stdout(&health)
    );
    // …then watchdog pings, repeatedly…
    for _ in 0..3 {
        assert_eq!(receive().await, "WATCHDOG=1");
    }
    // …and STOPPING=1 on SIGTERM.
    send_sigterm(&daemon);
    let mut stopping = false;
    for _ in 0..10 {
        if receive().await == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 arrives after SIGTERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let health = crate::binary::run(&dir, &["health"], &[]).await;
    assert_eq!(health.status.code(), Some(1), "no daemon, not healthy");
}

/// A daemon whose run is stuck writing a page: the test holds an exclusive
/// lock on the job's table, so the page's transaction waits for it.
struct BlockedDaemon {
    child: Child,
    dir: PathBuf,
    /// Holds `LOCK TABLE drain`; committing it lets the write through.
    lock: sqlx::Transaction<'static, sqlx::Postgres>,
    /// Rows committed before the blocked page.
    rows_before: i64,
}

async fn start_blocked_daemon(env: &TestEnv, name: &str, shutdown_timeout: &str) -> BlockedDaemon {
    env.api.set_delay(Duration::from_millis(100));
    let dir = scratch(name);
    let text = config_with(
        &database_url(env.pg()),
        shutdown_timeout,
        &env.api.url(""),
        free_port(),
        "run_on_start = true",
    );
    std::fs::write(dir.join("apisync.toml"), text).unwrap();
    let child = spawn(&dir, &["run"], &[]);
    wait_until("two pages are committed", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM drain")
            .fetch_one(env.pg())
            .await
            .unwrap_or(0)
            >= 20
    })
    .await;
    let mut lock = env.pg().begin().await.unwrap();
    sqlx::query("LOCK TABLE drain IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let rows_before: i64 = sqlx::query_scalar("SELECT count(*) FROM drain")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    wait_until("apisync waits for the table lock", async || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'apisync' AND wait_event_type = 'Lock' \
             AND datname = current_database()",
        )
        .fetch_one(env.pg())
        .await
        .unwrap()
            > 0
    })
    .await;
    BlockedDaemon {
        child,
        dir,
        lock,
        rows_before,
    }
}

async fn run_row(env: &TestEnv) -> (String, i64, Option<String>) {
    sqlx::query_as("SELECT status, inserted, error FROM apisync.runs WHERE job = 'drain'")
        .fetch_one(env.pg())
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn sigterm_during_a_page_write_lets_that_page_commit(pool: PgPool) {
    // Arrange
    let env = TestEnv::start(pool, products(250)).await;
    let mut blocked = start_blocked_daemon(&env, "write", "10s").await;

    // Act: the signal arrives while the page waits inside its transaction.
    send_sigterm(&blocked.child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocked.lock.commit().await.unwrap();
    let status = wait_exit(&mut blocked.child, Duration::from_secs(10)).await;

    // Assert
    let stderr = std::fs::read_to_string(blocked.dir.join("stderr")).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM drain")
        .fetch_one(env.pg())
        .await
        .unwrap();
    assert_eq!(
        rows,
        blocked.rows_before + 10,
        "the page being written committed, and no other"
    );
    let (status, inserted, _) = run_row(&env).await;
    assert_eq!((status.as_str(), inserted), ("interrupted", rows));
}

#[sqlx::test(migrations = false)]
async fn a_second_signal_exits_at_once(pool: PgPool) {
    // Arrange: a drain that cannot finish while the test holds the lock.
    let env = TestEnv::start(pool, products(250)).await;
    let mut blocked = start_blocked_daemon(&env, "twice", "30s").await;

    // Act
    send_sigterm(&blocked.child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_sigterm(&blocked.child);
    let status = wait_exit(&mut blocked.child, Duration::from_secs(5)).await;
    blocked.lock.rollback().await.unwrap();

    // Assert: 128 + SIGTERM, long before the 30 s shutdown_timeout.
    assert_eq!(status.and_then(|s| s.code()), Some(143));
}

#[sqlx::test(migrations = false)]
async fn shutdown_timeout_bounds_the_exit_when_a_write_hangs(pool: PgPool) {
    // Arrange
    let env = TestEnv::start(pool, products(250)).await;
    let mut blocked = start_blocked_daemon(&env, "hang", "2s").await;

    // Act: the lock is held past shutdown_timeout.
    send_sigterm(&blocked.child);
    let status = wait_exit(&mut blocked.child, Duration::from_secs(4)).await;
    blocked.lock.rollback().await.unwrap();

    // Assert: a clean exit all the same, and the run is not left `running`.
    let stderr = std::fs::read_to_string(blocked.dir.join("stderr")).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    let (status, _, error) = run_row(&env).await;
    assert_eq!(status, "interrupted", "{error:?}\n{stderr}");
    // Marked by the shutdown ("shutdown_timeout ran out"), or by the run
    // itself once its ended write failed (then with that write's error).
    assert!(error.is_some_and(|e| !e.is_empty()));
}

#[sqlx::test(migrations = false)]
async fn ready_waits_for_the_database_while_healthz_answers(pool: PgPool) {
    // Arrange: the database is reached through a connection we control,
    // down at first.
    let env = TestEnv::start(pool, products(10)).await;
    let options = env.pg().connect_options();
    let toggle = TcpToggle::start(options.get_host(), options.get_port()).await;
    let mut db = reqwest::Url::parse(&database_url(env.pg())).unwrap();
    db.set_port(Some(toggle.port())).unwrap();
    let dir = scratch("ready");
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let systemd = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("apisync.toml"),
        config_with(db.as_str(), "5s", &env.api.url(""), port, ""),
    )
    .unwrap();
    let mut daemon = spawn(
        &dir,
        &["run"],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let receive = async || -> String {
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(30), systemd.recv(&mut buffer))
            .await
            .expect("a notification arrives")
            .unwrap();
        String::from_utf8_lossy(&buffer[..read]).trim().to_owned()
    };

    // Act + Assert: while the database is down, a status and a longer start
    // timeout, not READY=1; /healthz answers all the same.
    let waiting = receive().await;
    assert!(
        waiting.starts_with("STATUS=waiting for the database"),
        "{waiting}"
    );
    assert!(waiting.contains("EXTEND_TIMEOUT_USEC="), "{waiting}");
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    toggle.set_up(true);
    let mut ready = false;
    for _ in 0..20 {
        let message = receive().await;
        if message == "READY=1" {
            ready = true;
            break;
        }
        assert!(message.starts_with("STATUS=waiting"), "{message}");
    }
    assert!(ready, "READY=1 arrives once the database answers");

    send_sigterm(&daemon);
    let status = wait_exit(&mut daemon, Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}
