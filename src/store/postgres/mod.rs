//! The PostgreSQL store: its pool and connection errors, migrations, the
//! end of runs a shutdown gives up on; the job lock in `lock`, the table
//! writer in `table_writer`.

pub(super) mod copy_out;
mod lock;
mod table_writer;

pub use lock::PgJobLock;
pub use table_writer::WritePath;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::StoreError;
use crate::config::DatabaseSettings;
use crate::run::RunId;

/// The internal schema. The migrations table lives in it too, so apisync
/// leaves nothing in `public` but the job tables.
fn migrator() -> Migrator {
    let mut migrator = super::migrations::migrator(super::migrations::POSTGRES);
    migrator.create_schema("apisync");
    migrator.dangerous_set_table_name("apisync._sqlx_migrations");
    migrator
}

/// `PostgreSQL at HOST:PORT, database DB, user USER`.
fn describe_target(options: &PgConnectOptions) -> String {
    format!(
        "PostgreSQL at {}, database {}, user {}",
        server_address(options),
        options.get_database().unwrap_or(options.get_username()),
        options.get_username()
    )
}

/// `HOST:PORT`, or the Unix socket's directory and port.
fn server_address(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!("socket {} port {}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// A failed connection attempt, saying what failed: reaching the server,
/// authenticating, or the database itself.
fn connect_error(options: &PgConnectOptions, error: sqlx::Error) -> StoreError {
    let target = describe_target(options);
    let (stage, detail) = match &error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => (
            "connecting to",
            format!(
                "connection refused: nothing listens on {}",
                server_address(options)
            ),
        ),
        sqlx::Error::Io(io)
            if io.kind() == std::io::ErrorKind::NotFound && options.get_socket().is_some() =>
        {
            (
                "connecting to",
                format!("no server socket there ({io}); is PostgreSQL running?"),
            )
        }
        sqlx::Error::Io(io) => ("connecting to", io.to_string()),
        sqlx::Error::Tls(tls) => ("connecting (TLS) to", tls.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Class 28: invalid authorization (wrong password, no such role,
            // refused by pg_hba.conf).
            let stage = if code.starts_with("28") {
                "authenticating to"
            } else {
                "connecting to"
            };
            (stage, super::describe_sqlx(&error))
        }
        other => ("connecting to", super::describe_sqlx(other)),
    };
    StoreError::Connect {
        stage,
        target,
        detail,
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    path: WritePath,
    writers: table_writer::Writers,
}

/// The pool's options: its size and timeouts, and the settings every
/// session starts with.
fn pool_options(settings: &DatabaseSettings) -> PgPoolOptions {
    // Set per session rather than as startup options, which a pooler
    // such as PgBouncer may refuse. `lock_timeout`: a statement waiting
    // on another session's lock fails instead of hanging the run;
    // `client_min_messages`: the NOTICEs of idempotent DDL ("schema
    // apisync already exists, skipping") are noise on every command;
    // `jit = off`: our statements are short batches whose cost the
    // planner overestimates on tables without statistics yet (a first
    // load, a history just made), which put them over `jit_above_cost`,
    // and compiling took longer than running them: the history writes
    // of a 1% change ran 3 × slower (see BENCHMARKS.md).
    let lock_timeout_ms = settings.lock_timeout.as_millis().max(1);
    PgPoolOptions::new()
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let set = format!(
                    "SET lock_timeout = {lock_timeout_ms}; SET client_min_messages = warning; \
                     SET jit = off"
                );
                sqlx::raw_sql(AssertSqlSafe(set)).execute(conn).await?;
                Ok(())
            })
        })
        .max_connections(settings.max_connections)
        .acquire_timeout(crate::config::timer(settings.acquire_timeout))
        // Recycle connections so a failover or a restarted server is
        // picked up without restarting apisync.
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(Duration::from_secs(1800))
}

impl PgStore {
    /// # Errors
    /// When `database.url` is missing or not a PostgreSQL URL.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let url = settings.url.as_ref().ok_or_else(|| {
            StoreError::Database(sqlx::Error::Configuration("database.url is not set".into()))
        })?;
        let mut options =
            PgConnectOptions::from_str(url.expose_secret())?.application_name("apisync");
        // The configuration's TLS keys win over the URL's `sslmode` and
        // `sslrootcert`, which work too.
        if let Some(mode) = settings.sslmode {
            options = options.ssl_mode(mode.into());
        }
        if let Some(ca) = &settings.ssl_root_cert {
            options = options.ssl_root_cert(ca);
        }
        let pool = pool_options(settings).connect_lazy_with(options);
        Ok(Self {
            pool,
            path: WritePath::Fast,
            writers: table_writer::Writers::default(),
        })
    }

    /// Wraps a pool made elsewhere (tests get one per test database).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            path: WritePath::Fast,
            writers: table_writer::Writers::default(),
        }
    }

    /// The same store writing pages the simple way (one upsert statement),
    /// for tests that compare it with the fast path.
    pub fn with_write_path(mut self, path: WritePath) -> Self {
        self.path = path;
        self
    }

    /// Where the store connects, for messages and the log line at start:
    /// `PostgreSQL at HOST:PORT, database DB, user USER` (never the password).
    pub(super) fn describe(&self) -> String {
        describe_target(&self.pool.connect_options())
    }

    /// Opens one connection outside the pool, within `timeout`, so that a
    /// database that cannot be reached says why at once (the pool retries
    /// until its acquire timeout, then reports only that it timed out).
    async fn connect_once(&self, timeout: Duration) -> Result<PgConnection, StoreError> {
        let options = self.pool.connect_options();
        match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(&options, e)),
            Err(_) => Err(StoreError::Connect {
                stage: "connecting to",
                target: describe_target(&options),
                detail: format!(
                    "no answer within database.acquire_timeout ({})",
                    humantime::format_duration(timeout)
                ),
            }),
        }
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        self.reach(self.pool.options().get_acquire_timeout())
            .await?;
        migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Reaches the server once, outside the pool: an error says why it
    /// cannot be reached.
    pub(super) async fn reach(&self, timeout: Duration) -> Result<(), StoreError> {
        let _ = self.connect_once(timeout).await?.close().await;
        Ok(())
    }

    /// Takes the job's advisory lock on a connection of its own (outside the
    /// pool, so a long run never starves page writes of connections). `None`
    /// when another session holds it.
    pub(super) async fn try_lock_job(&self, job: &str) -> Result<Option<PgJobLock>, StoreError> {
        let timeout = self.pool.options().get_acquire_timeout();
        let mut conn = self.connect_once(timeout).await?;
        let key = lock::lock_key(job);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if locked {
            Ok(Some(PgJobLock { conn, key, timeout }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Marks runs that could not finish in time as `interrupted`.
    pub(super) async fn mark_interrupted(
        &self,
        runs: &[RunId],
        error: &str,
    ) -> Result<(), StoreError> {
        // A page write given up on still holds its run's row (and waits,
        // say, on a lock another session holds): its session is ended in
        // the same statement, which then waits for the row. One statement,
        // so the update is queued for the row before the run, told its
        // write failed, can record itself `failed` instead.
        let pids = self.writers.pids(runs);
        sqlx::query(
            "UPDATE apisync.runs SET status = 'interrupted', error = $2, finished_at = now() \
             FROM (SELECT count(pg_terminate_backend(pid)) AS ended FROM pg_stat_activity \
                   WHERE pid = ANY($3) AND application_name = 'apisync') AS writers \
             WHERE id = ANY($1) AND status = 'running' AND writers.ended >= 0",
        )
        .bind(runs)
        .bind(error)
        .bind(&pids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrations = false)]
    async fn every_session_starts_with_jit_off_and_the_lock_timeout(pool: PgPool) {
        // Arrange: the pool apisync builds, on the test's database.
        let settings = DatabaseSettings {
            lock_timeout: Duration::from_millis(2_500),
            ..DatabaseSettings::default()
        };
        let store_pool =
            pool_options(&settings).connect_lazy_with((*pool.connect_options()).clone());

        // Act
        let mut conn = store_pool.acquire().await.unwrap();
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let messages: String = sqlx::query_scalar("SHOW client_min_messages")
            .fetch_one(&mut *conn)
            .await
            .unwrap();

        // Assert
        assert_eq!(
            (jit.as_str(), lock_timeout.as_str(), messages.as_str()),
            ("off", "2500ms", "warning")
        );
    }
}
