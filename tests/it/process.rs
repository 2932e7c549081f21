//! `apisync run` as a real process: SIGTERM drains a long run, and systemd's
//! notification protocol is spoken on `NOTIFY_SOCKET`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::helpers::{TestEnv, expected_rows, products, wait_until};

/// A scratch directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apisync-proc-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The URL of the test's own database, for the binary.
fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for the tests");
    let mut url = reqwest::Url::parse(&base).unwrap();
    url.set_path(
        pool.connect_options()
            .get_database()
            .expect("a database name"),
    );
    url.to_string()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `apisync ARGS` in `dir` with a clean environment plus `envs`;
/// its output goes to `dir/stdout` and `dir/stderr`.
fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_apisync"));
    command
        .current_dir(dir)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
    for (key, value) in envs {
        command.env(key, value);
    }
    command.spawn().expect("the binary starts")
}

fn send_sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    let result = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(result, 0, "SIGTERM was delivered");
}

/// Waits for the process to exit, at most `limit`; `None` if it did not.
async fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(pool: &PgPool, api: &str, port: u16, job: &str) -> String {
    format!(
        r#"
shutdown_timeout = "5s"
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
"#,
        db = database_url(pool)
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
            &env.pool,
            &env.api.url(""),
            free_port(),
            "run_on_start = true",
        ),
    )
    .unwrap();
    let mut daemon = spawn(&dir, &["run"], &[]);
    let count_rows = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM drain")
            .fetch_one(&env.pool)
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
            .fetch_one(&env.pool)
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
            .fetch_all(&env.pool)
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
        config(&env.pool, &env.api.url(""), port, ""),
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
}
