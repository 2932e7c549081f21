//! Running the real `apisync` binary from tests: scratch directories, the
//! test database's URL, spawning, signals, waiting with a bound.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// This test process's own folder under the system's temporary directory,
/// holding every scratch directory, SQLite file and server log of its tests.
/// It is removed when the process exits, passed or failed (the harness ends
/// with `exit`, which runs `atexit` handlers), so a run leaves nothing behind.
pub fn temp_root() -> &'static Path {
    static ROOT: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
        let root = std::env::temp_dir().join(format!("apisync-it-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("the tests' temporary folder");
        extern "C" fn remove_root() {
            let root = std::env::temp_dir().join(format!("apisync-it-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(root);
        }
        // SAFETY: registers a plain function, which touches only the file system.
        unsafe { libc::atexit(remove_root) };
        root
    });
    &ROOT
}

/// A fresh scratch directory for one test's files, under [`temp_root`].
pub fn scratch(name: &str) -> PathBuf {
    let dir = temp_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The URL of the test's own database, for the binary.
pub fn database_url(pool: &PgPool) -> String {
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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_apisync"));
    command.current_dir(dir).args(args).env_clear();
    for (key, value) in envs {
        command.env(key, value);
    }
    command
}

/// Runs `apisync ARGS` to completion in `dir` with a clean environment plus
/// `envs`, off the async runtime (the fake API must keep serving meanwhile).
pub async fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = command(dir, args, envs);
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .unwrap()
}

/// Starts `apisync ARGS` in `dir`; its output goes to `dir/stdout` and
/// `dir/stderr`.
pub fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Child {
    command(dir, args, envs)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("the binary starts")
}

pub fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a child we started, with a valid signal number.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "signal {signal} was delivered");
}

/// Waits for the process to exit, at most `limit`; kills it and returns
/// `None` if it did not.
pub async fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
