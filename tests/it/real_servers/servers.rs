//! Starting the real third-party servers on a free loopback port, each with
//! its own copy of the seed data in a scratch directory, answering before the
//! test goes on. A test that changes the data starts a server of its own
//! (`drf()`, …), killed when its guard drops; the tests that only read share
//! one server of each kind (`shared_drf()`, …) for the whole test binary,
//! since starting one costs a Python or Node process its imports.
//!
//! What they run is installed by `scripts/real-servers/setup.sh`, which prints
//! the `APISYNC_REAL_SERVERS` directory the tests read; their code (the DRF
//! project, the FastAPI app) is read from this checkout.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How long a server may take to answer after its start. It takes well under
/// a second alone; the bound is for a CI machine busy with the other tests.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A port picked free can be taken by another test before the server binds
/// it; a start that fails that way is tried again on another port.
const START_ATTEMPTS: usize = 3;

static SCRATCH_DIRS: AtomicUsize = AtomicUsize::new(0);

/// The name of the SQLite copy in a server's scratch directory.
const DATA_FILE: &str = "tickets.sqlite3";

/// How a test asks a server for its whole collection without apisync: what
/// the table must equal.
#[derive(Clone, Copy)]
pub enum Everything {
    /// One GET of this path answers every record as a bare array.
    Array(&'static str),
    /// Datasette caps every answer at 1,000 rows (a 400 above): this path
    /// with `_size=1000`, its `next_url` links followed to the end.
    DatasetteRows(&'static str),
}

/// A running server. Dropping it kills the process and removes its data.
pub struct RealServer {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    pub everything: Everything,
    name: &'static str,
    child: Child,
    /// The data copy and `server.log`.
    dir: PathBuf,
    /// The SQLite file the server reads, for the servers that have one.
    data_file: Option<PathBuf>,
    http: reqwest::Client,
    /// Set on a shared server, whose data no test changes: its whole
    /// collection, once read.
    unchanging: Option<tokio::sync::OnceCell<std::collections::BTreeMap<String, Value>>>,
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory `setup.sh` prepared, or a failure that says how to get it:
/// these tests never skip.
fn installed() -> PathBuf {
    let dir = std::env::var_os("APISYNC_REAL_SERVERS").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "APISYNC_REAL_SERVERS is not set, so the real API servers (DRF, FastAPI, Datasette, json-server) \
             cannot be found. Install them and export it with \
             `eval \"$(scripts/real-servers/setup.sh)\"` (scripts/test.sh does both)"
        )
    });
    assert!(
        dir.join("venv/bin/python").exists(),
        "APISYNC_REAL_SERVERS={} holds no installed servers: run scripts/real-servers/setup.sh \
         again and export what it prints",
        dir.display()
    );
    dir
}

/// `scripts/real-servers/` of this checkout: the servers' own code.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/real-servers")
}

/// The server of each kind that the tests that only read share: started by
/// the first that asks, never stopped (the process's end kills it, see
/// [`KEEPER`], and removes its scratch directory with the rest).
macro_rules! shared {
    ($($shared:ident: $start:ident),* $(,)?) => {$(
        #[doc = concat!("The shared `", stringify!($start), "()` server, for tests that change nothing.")]
        pub async fn $shared() -> &'static RealServer {
            static SERVER: tokio::sync::OnceCell<RealServer> = tokio::sync::OnceCell::const_new();
            SERVER
                .get_or_init(|| async {
                    let mut server = $start().await;
                    server.unchanging = Some(tokio::sync::OnceCell::new());
                    server
                })
                .await
        }
    )*};
}

shared! {
    shared_drf: drf,
    shared_fastapi: fastapi,
    shared_datasette: datasette,
    shared_json_server_0_17: json_server_0_17,
    shared_json_server_1: json_server_1,
}

/// The thread that starts every server process. A server is made to die
/// with the thread that started it (`PR_SET_PDEATHSIG`), so that a test
/// binary killed before its guards drop leaves none behind; a test's own
/// thread ends with the test, which would take a shared server with it.
/// This one lives as long as the process.
static KEEPER: LazyLock<Mutex<mpsc::Sender<SpawnRequest>>> = LazyLock::new(|| {
    let (requests, incoming) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("real-server-keeper".into())
        .spawn(move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        })
        .expect("start the server keeper thread");
    Mutex::new(requests)
});

/// A command to spawn, and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from [`KEEPER`]'s thread.
fn spawn_kept(command: Command) -> std::io::Result<Child> {
    let (reply, answer) = mpsc::channel();
    KEEPER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .expect("the server keeper thread runs");
    answer.recv().expect("the server keeper thread answers")
}

/// Django REST Framework's dev server over a copy of the 5,002-ticket template.
pub async fn drf() -> RealServer {
    drf_with_token_lifetime(36_000).await
}

/// [`drf`] with django-oauth-toolkit's access tokens living `seconds`.
pub async fn drf_with_token_lifetime(seconds: u64) -> RealServer {
    let installed = installed();
    start("DRF", Everything::Array("/all/tickets/"), |port, dir| {
        let db = dir.join(DATA_FILE);
        std::fs::copy(installed.join("drf.sqlite3"), &db).expect("copy the DRF template");
        let mut command = Command::new(installed.join("venv/bin/python"));
        // --noreload: one process, no file watcher to outlive the kill.
        // --skip-checks: the template was migrated by setup.sh; checks only
        // slow the start.
        command
            .args(["manage.py", "runserver", "--noreload", "--skip-checks"])
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(sources().join("drf"))
            .env("TICKETS_DB", db)
            .env("OAUTH_TOKEN_SECONDS", seconds.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1");
        command
    })
    .await
}

/// The FastAPI app (fastapi-pagination) under uvicorn; its 1,234 orders live
/// in the process, so each server has its own.
pub async fn fastapi() -> RealServer {
    let installed = installed();
    start("FastAPI", Everything::Array("/all/orders"), |port, _dir| {
        let mut command = Command::new(installed.join("venv/bin/python"));
        command
            .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--log-level", "warning"])
            .current_dir(sources().join("fastapi"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        command
    })
    .await
}

/// Datasette over a copy of the DRF template (database `tickets`, table
/// `tickets_ticket`): read-only over HTTP, so tests change the file itself.
pub async fn datasette() -> RealServer {
    let installed = installed();
    let everything = Everything::DatasetteRows("/tickets/tickets_ticket.json?_shape=objects");
    start("Datasette", everything, |port, dir| {
        // Datasette names the database after the file: /tickets/….
        let db = dir.join(DATA_FILE);
        std::fs::copy(installed.join("drf.sqlite3"), &db).expect("copy the DRF template");
        let mut command = Command::new(installed.join("venv/bin/python"));
        command
            .args(["-m", "datasette", "serve", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .arg(db)
            .current_dir(dir);
        command
    })
    .await
}

/// json-server 0.17.4 over a copy of the 320-ticket db.json.
pub async fn json_server_0_17() -> RealServer {
    json_server("json-server 0.17", "json-server-0.17", &["--quiet"]).await
}

/// json-server 1.0.0-beta.3 over a copy of the 320-ticket db.json.
pub async fn json_server_1() -> RealServer {
    json_server("json-server 1.x", "json-server-1", &[]).await
}

async fn json_server(name: &'static str, bin: &str, extra: &[&str]) -> RealServer {
    let installed = installed();
    start(name, Everything::Array("/tickets"), |port, dir| {
        let db = dir.join("db.json");
        std::fs::copy(installed.join("json-server.json"), &db).expect("copy db.json");
        // In production mode (below) 1.x serves ./public and fails to start
        // without one.
        std::fs::create_dir_all(dir.join("public")).expect("public directory");
        let mut command = Command::new("node");
        command
            .arg(installed.join(bin))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .arg(db)
            .current_dir(dir)
            // json-server 1.x reloads db.json whenever it changes on disk, and
            // that reload races its own writes: of three PATCHes sent one
            // after another, one was lost. "production" turns the watcher off
            // (0.17 ignores it).
            .env("NODE_ENV", "production");
        command
    })
    .await
}

/// Starts the process `command` builds for a port and a scratch directory and
/// waits until the path `everything` names answers 200.
async fn start(
    name: &'static str,
    everything: Everything,
    command: impl Fn(u16, &Path) -> Command,
) -> RealServer {
    let probe = match everything {
        Everything::Array(path) | Everything::DatasetteRows(path) => path,
    };
    // No idle connections kept: a shared server's client is used from the
    // runtimes of many tests, and a pooled connection dies with its runtime.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");
    for attempt in 1..=START_ATTEMPTS {
        let port = crate::binary::free_port();
        let dir = crate::binary::temp_root().join(format!(
            "real-server-{}",
            SCRATCH_DIRS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let log = File::create(dir.join("server.log")).expect("server log");
        let mut command = command(port, &dir);
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // The server dies with the thread that started it, [`KEEPER`]'s.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = spawn_kept(command).unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let data_file = Some(dir.join(DATA_FILE)).filter(|f| f.exists());
        let mut server = RealServer {
            url: format!("http://127.0.0.1:{port}"),
            everything,
            name,
            child,
            dir,
            data_file,
            http: http.clone(),
            unchanging: None,
        };
        match server.wait_ready(probe).await {
            Ready::Yes => return server,
            Ready::PortTaken if attempt < START_ATTEMPTS => continue,
            Ready::PortTaken | Ready::Exited => panic!(
                "{name} exited before answering on {}:\n{}",
                server.url,
                server.log()
            ),
        }
    }
    unreachable!("the last attempt returns or panics")
}

enum Ready {
    Yes,
    PortTaken,
    Exited,
}

impl RealServer {
    /// Polls `probe` until it answers 200; fails the test past the deadline.
    async fn wait_ready(&mut self, probe: &str) -> Ready {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if self.child.try_wait().expect("poll the server").is_some() {
                let log = self.log().to_lowercase();
                return if log.contains("in use") || log.contains("eaddrinuse") {
                    Ready::PortTaken
                } else {
                    Ready::Exited
                };
            }
            let answer = self
                .http
                .get(format!("{}{probe}", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
                return Ready::Yes;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer {probe} within {READY_WITHIN:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// For a shared server (whose data no test changes), the place for its
    /// whole collection once read.
    pub fn unchanging(
        &self,
    ) -> Option<&tokio::sync::OnceCell<std::collections::BTreeMap<String, Value>>> {
        self.unchanging.as_ref()
    }

    /// The SQLite file this server reads (DRF, Datasette).
    pub fn data_file(&self) -> &Path {
        self.data_file
            .as_deref()
            .unwrap_or_else(|| panic!("{} keeps no SQLite file", self.name))
    }

    /// What the server printed, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// `GET path`: the status, the headers and the JSON body (`Null` when the
    /// body is not JSON).
    pub async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.name));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let (status, _, body) = self.get(path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {path} on {}: {body}",
            self.name
        );
        body
    }

    /// `DELETE path`; the answer must be a success.
    pub async fn delete(&self, path: &str) {
        let response = self
            .http
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {path} on {}: {e}", self.name));
        let status = response.status();
        assert!(
            status.is_success(),
            "DELETE {path} on {} answered {status}",
            self.name
        );
    }

    /// Sends `body` with `method` to `path`; the answer must be a success.
    /// Returns the JSON answer (`Null` for an empty one).
    /// `POST path` with a form body and HTTP Basic credentials: the JSON answer
    /// and its status.
    pub async fn post_form(
        &self,
        path: &str,
        basic: (&str, &str),
        form: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .basic_auth(basic.0, Some(basic.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(&self, method: Method, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.name));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "{method} {path} on {} answered {status}: {text}",
            self.name
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}
