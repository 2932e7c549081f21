//! The PostgreSQL store: pool, migrations, target tables, runs; the job lock
//! in `lock`, page writes in `page`.

mod lock;
mod page;

pub use lock::PgJobLock;
pub use page::WritePath;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use super::{Batch, BatchWrite, RejectRecord, RunEnd, RunRecord, StoreError, TableSpec, WritePlan};
use crate::config::DatabaseSettings;
use crate::run::{Counts, RunId};

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
    pool: PgPool,
    path: WritePath,
    writers: page::Writers,
}

impl PgStore {
    /// # Errors
    /// When `database.url` is missing or not a PostgreSQL URL.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let url = settings.url.as_ref().ok_or_else(|| {
            StoreError::Database(sqlx::Error::Configuration("database.url is not set".into()))
        })?;
        let options = PgConnectOptions::from_str(url.expose_secret())?.application_name("apisync");
        // Set per session rather than as startup options, which a pooler
        // such as PgBouncer may refuse. `lock_timeout`: a statement waiting
        // on another session's lock fails instead of hanging the run;
        // `client_min_messages`: the NOTICEs of idempotent DDL ("schema
        // apisync already exists, skipping") are noise on every command.
        let lock_timeout_ms = settings.lock_timeout.as_millis().max(1);
        let pool = PgPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let set = format!(
                        "SET lock_timeout = {lock_timeout_ms}; SET client_min_messages = warning"
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
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            path: WritePath::Fast,
            writers: page::Writers::default(),
        })
    }

    /// Wraps a pool made elsewhere (tests get one per test database).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            path: WritePath::Fast,
            writers: page::Writers::default(),
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
    pub(super) async fn connect_once(&self, timeout: Duration) -> Result<PgConnection, StoreError> {
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

    pub(super) async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let _ = self.connect_once(timeout).await?.close().await;
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    pub(super) async fn readiness(&self, timeout: Duration) -> Result<(), String> {
        let wanted = migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let query = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(version) FROM apisync._sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool);
        match tokio::time::timeout(timeout, query).await {
            Err(_) => Err(format!(
                "the database did not answer within {}",
                humantime::format_duration(timeout)
            )),
            Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("42P01") => {
                Err("migrations not applied yet".to_owned())
            }
            Ok(Err(e)) => Err(format!(
                "the database is unreachable: {}",
                super::describe_sqlx(&e)
            )),
            Ok(Ok(applied)) if applied.unwrap_or(0) >= wanted => Ok(()),
            Ok(Ok(_)) => Err("migrations not applied yet".to_owned()),
        }
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let timeout = self.pool.options().get_acquire_timeout();
        let _ = self.connect_once(timeout).await?.close().await;
        migrator().run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn prepare_table(&self, table: &TableSpec) -> Result<(), StoreError> {
        let key_columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
        // Keys are identifiers, compared byte for byte: the "C" collation
        // makes every primary-key probe a memcmp instead of a strcoll, and
        // keeps the index valid across C library upgrades that change a
        // locale's sort order.
        let key_defs: String = key_columns
            .iter()
            .map(|c| format!("{c} text COLLATE \"C\" NOT NULL, "))
            .collect();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
                {key_defs}\
                record jsonb NOT NULL, \
                content_hash bytea NOT NULL, \
                first_seen_at timestamptz NOT NULL, \
                changed_at timestamptz NOT NULL, \
                run_id bigint NOT NULL, \
                PRIMARY KEY ({keys}))",
            table = table.name.quoted(),
            keys = key_columns.join(", "),
        );
        sqlx::query(AssertSqlSafe(create))
            .execute(&self.pool)
            .await?;
        self.check_table_shape(table).await
    }

    /// Compares an existing table with what the job needs.
    async fn check_table_shape(&self, table: &TableSpec) -> Result<(), StoreError> {
        let regclass = table.name.quoted();
        // With each column its collation, when not deterministic: one such
        // as an ICU case-insensitive collation makes `A` and `a` one key.
        let columns: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
             CASE WHEN NOT c.collisdeterministic THEN c.collname::text END \
             FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&regclass)
        .fetch_all(&self.pool)
        .await?;
        let primary_key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text \
             FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
        )
        .bind(&regclass)
        .fetch_all(&self.pool)
        .await?;

        let mut problems = Vec::new();
        let expected = table
            .key_columns
            .iter()
            .map(|c| (c.as_str(), "text"))
            .chain([
                ("record", "jsonb"),
                ("content_hash", "bytea"),
                ("first_seen_at", "timestamp with time zone"),
                ("changed_at", "timestamp with time zone"),
                ("run_id", "bigint"),
            ]);
        for (name, wanted) in expected {
            match columns.iter().find(|(column, _, _)| column == name) {
                None => problems.push(format!("column {name} ({wanted}) is missing")),
                Some((_, found, _)) if found != wanted => {
                    problems.push(format!("column {name} is {found}, expected {wanted}"))
                }
                Some(_) => {}
            }
        }
        for key in &table.key_columns {
            if let Some((_, _, Some(collation))) =
                columns.iter().find(|(column, _, _)| column == key.as_str())
            {
                problems.push(format!(
                    "key column {key} uses the collation \"{collation}\", which is not \
                     deterministic: keys that differ (as A and a) would compare equal and one \
                     record would overwrite the other; use a deterministic collation such as \
                     \"C\" (ALTER TABLE {table} ALTER COLUMN {quoted} TYPE text COLLATE \"C\")",
                    table = table.name.quoted(),
                    quoted = key.quoted(),
                ));
            }
        }
        super::table_shape_verdict(
            table,
            problems,
            primary_key.iter().map(String::as_str).collect(),
        )
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

    pub(super) async fn close_abandoned_runs(&self, job: &str) -> Result<u64, StoreError> {
        let closed = sqlx::query(
            "UPDATE apisync.runs SET status = 'failed', finished_at = now(), \
             error = 'process exited before the run finished' \
             WHERE job = $1 AND status = 'running'",
        )
        .bind(job)
        .execute(&self.pool)
        .await?;
        Ok(closed.rows_affected())
    }

    pub(super) async fn start_run(&self, job: &str) -> Result<RunId, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO apisync.runs (job, status) VALUES ($1, 'running') RETURNING id",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    pub(super) async fn plan_page(
        &self,
        job: &str,
        table: &TableSpec,
        batch: &Batch,
        empty_at_start: bool,
    ) -> Result<WritePlan, StoreError> {
        // In a table that was empty when the run began, only keys this run
        // already wrote can be stored: ask about the repeats alone.
        let asked: Vec<usize> = (0..batch.rows.len())
            .filter(|&i| !empty_at_start || batch.rows[i].repeat)
            .collect();
        let existing = page::stored_hashes(&self.pool, table, batch, &asked).await?;
        let stored_rejects = page::stored_rejects(&self.pool, job, batch).await?;
        Ok(super::plan_page(batch, &existing, &stored_rejects))
    }

    pub(super) async fn table_is_empty(&self, table: &TableSpec) -> Result<bool, StoreError> {
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", table.name.quoted());
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    pub(super) async fn commit(&self, write: &BatchWrite<'_>) -> Result<(), StoreError> {
        match write.commit(&self.pool, self.path, &self.writers).await {
            // A row inserted since the plan was made (not by apisync: two
            // processes never write one job): redo the page with the upsert,
            // which resolves the conflict row by row.
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if self.path == WritePath::Fast && e.code().as_deref() == Some("23505") =>
            {
                tracing::warn!(error = %e, "A key appeared during the page write; writing the page with the upsert.");
                write
                    .commit(&self.pool, WritePath::Simple, &self.writers)
                    .await
            }
            other => other,
        }
    }

    pub(super) async fn watermark(
        &self,
        job: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let watermark =
            sqlx::query_scalar("SELECT state->'watermark' FROM apisync.job_state WHERE job = $1")
                .bind(job)
                .fetch_optional(&self.pool)
                .await?;
        Ok(watermark.flatten())
    }

    pub(super) async fn finish_run(&self, run: RunId, end: &RunEnd<'_>) -> Result<(), StoreError> {
        // Only a run still `running`: one closed by another process that took
        // over the job keeps what that process recorded.
        sqlx::query(
            "UPDATE apisync.runs SET status = $2, error = $3, expected = $4, finished_at = now() \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(run)
        .bind(end.status.as_str())
        .bind(end.error)
        .bind(end.expected.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds a batch's counts to its run's row, alone: for a batch with
    /// nothing else to write.
    pub(super) async fn add_counts(&self, run: RunId, counts: &Counts) -> Result<(), StoreError> {
        let add = sqlx::query(
            "UPDATE apisync.runs SET fetched = fetched + $2, inserted = inserted + $3, \
             updated = updated + $4, unchanged = unchanged + $5, duplicate = duplicate + $6, \
             rejected = rejected + $7, pages = pages + $8 WHERE id = $1 AND status = 'running'",
        )
        .bind(run);
        let added = page::bind_counts(add, counts).execute(&self.pool).await?;
        if added.rows_affected() == 0 {
            return Err(StoreError::RunClosed);
        }
        Ok(())
    }

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

    pub(super) async fn recent_runs(
        &self,
        job: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, job, status, started_at, finished_at, fetched, inserted, updated, \
             unchanged, duplicate, rejected, pages, expected, error \
             FROM apisync.runs WHERE $1::text IS NULL OR job = $1 \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(job)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(RunRecord {
                    id: row.try_get("id")?,
                    job: row.try_get("job")?,
                    status: row.try_get("status")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                    fetched: row.try_get("fetched")?,
                    inserted: row.try_get("inserted")?,
                    updated: row.try_get("updated")?,
                    unchanged: row.try_get("unchanged")?,
                    duplicate: row.try_get("duplicate")?,
                    rejected: row.try_get("rejected")?,
                    pages: row.try_get("pages")?,
                    expected: row.try_get("expected")?,
                    error: row.try_get("error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub(super) async fn recent_rejects(
        &self,
        job: Option<&str>,
        run: Option<RunId>,
        limit: i64,
    ) -> Result<Vec<RejectRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, job, run_id, rejected_at, reason, record FROM apisync.rejects \
             WHERE ($1::text IS NULL OR job = $1) AND ($2::bigint IS NULL OR run_id = $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(job)
        .bind(run)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(RejectRecord {
                    id: row.try_get("id")?,
                    job: row.try_get("job")?,
                    run_id: row.try_get("run_id")?,
                    rejected_at: row.try_get("rejected_at")?,
                    reason: row.try_get("reason")?,
                    record: row.try_get("record")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
