//! The embedded SQLite store: the default when no `database.url` is set.
//!
//! Same tables and guarantees as PostgreSQL, in one file: internal tables
//! prefixed `apisync_` (SQLite has no schemas), `record` as JSON text, the
//! same hash, RFC 3339 timestamps. WAL mode, `synchronous = FULL` (what was
//! committed survives power loss), a busy timeout, write transactions begun
//! `IMMEDIATE`, and one connection per process (`database.max_connections`
//! does not apply): one writer, by construction.
//!
//! Job exclusivity between processes is an exclusive `flock` on a file next
//! to the database (`apisync.db.job.products.lock`): the kernel frees it when
//! the holder exits, even by SIGKILL. It works for processes on one machine;
//! replicas on several machines need PostgreSQL. Migrations take such a lock
//! too (sqlx has none for SQLite). In-memory databases are refused by the
//! configuration: nothing would persist, and there is no file to lock.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};

use super::{Batch, BatchWrite, RejectRecord, RunEnd, RunRecord, StoreError, TableSpec, WritePlan};
use crate::record::ContentHash;
use crate::run::{Counts, RunId};

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

fn migrator() -> Migrator {
    let mut migrator = super::migrations::migrator(super::migrations::SQLITE);
    migrator.dangerous_set_table_name("apisync_migrations");
    migrator
}

/// The busy timeout of a store opened without settings (the default of
/// `database.lock_timeout`).
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file; lock files sit next to it.
    file: PathBuf,
    /// How long to wait for another connection's lock (the busy timeout,
    /// `database.lock_timeout`), and for another process's lock file.
    lock_timeout: Duration,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at a `sqlite:` URL.
    ///
    /// # Errors
    /// When the URL cannot be used.
    pub fn connect_lazy(url: &str, acquire_timeout: Duration) -> Result<Self, StoreError> {
        Ok(Self::with_options(
            SqliteConnectOptions::from_str(url)?,
            acquire_timeout,
            DEFAULT_BUSY_TIMEOUT,
        ))
    }

    /// Like [`SqliteStore::connect_lazy`], waiting at most `lock_timeout`
    /// for another connection's lock on the file (SQLite's busy timeout,
    /// the analogue of PostgreSQL's `lock_timeout`: SQLite locks the whole
    /// database, so it covers apisync's own tables too).
    ///
    /// # Errors
    /// When the URL cannot be used.
    pub fn connect_lazy_with_lock_timeout(
        url: &str,
        acquire_timeout: Duration,
        lock_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Ok(Self::with_options(
            SqliteConnectOptions::from_str(url)?,
            acquire_timeout,
            lock_timeout,
        ))
    }

    /// Opens (creating when missing) the database file at `path`, taken as
    /// it is (no URL syntax to escape).
    pub fn open_file(path: &std::path::Path, acquire_timeout: Duration) -> Self {
        Self::with_options(
            SqliteConnectOptions::new().filename(path),
            acquire_timeout,
            DEFAULT_BUSY_TIMEOUT,
        )
    }

    fn with_options(
        options: SqliteConnectOptions,
        acquire_timeout: Duration,
        busy_timeout: Duration,
    ) -> Self {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout);
        let file = options.get_filename().to_path_buf();
        let lock_timeout = busy_timeout;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(crate::config::timer(acquire_timeout))
            .connect_lazy_with(options);
        Self {
            pool,
            file,
            lock_timeout,
        }
    }

    /// The database file, absolute where it can be resolved.
    pub fn path(&self) -> PathBuf {
        std::path::absolute(&self.file).unwrap_or_else(|_| self.file.clone())
    }

    pub(super) async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    pub(super) async fn readiness(&self, timeout: Duration) -> Result<(), String> {
        let wanted = migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let query = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(version) FROM apisync_migrations WHERE success",
        )
        .fetch_one(&self.pool);
        match tokio::time::timeout(timeout, query).await {
            Err(_) => Err("the database did not answer in time".to_owned()),
            Ok(Err(e)) if e.to_string().contains("no such table") => {
                Err("migrations not applied yet".to_owned())
            }
            Ok(Err(e)) => Err(format!(
                "the database is unusable: {}",
                crate::error_chain(&e)
            )),
            Ok(Ok(applied)) if applied.unwrap_or(0) >= wanted => Ok(()),
            Ok(Ok(_)) => Err("migrations not applied yet".to_owned()),
        }
    }

    /// sqlx takes no migration lock on SQLite: processes starting together
    /// on a new file would both create the tables. A file lock serializes them.
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let _lock = self.wait_for_lock("migrate").await?;
        migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Takes the exclusive lock `<db>.<name>.lock`, waiting for it.
    /// Gives up after `lock_timeout`, as a statement would.
    async fn wait_for_lock(&self, name: &str) -> Result<File, StoreError> {
        let deadline = tokio::time::Instant::now() + self.lock_timeout;
        loop {
            if let Some(file) = self.try_file_lock(name)? {
                return Ok(file);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::LockTimeout {
                    detail: format!(
                        "SQLite: another process holds the lock file {}.{name}.lock",
                        self.path().display()
                    ),
                    table: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exclusive lock `<db>.<name>.lock`, if free. The path is made
    /// absolute and free of symlinks (once the file exists), so two names
    /// for one database share one lock.
    fn try_file_lock(&self, name: &str) -> Result<Option<File>, StoreError> {
        let io = |e| StoreError::Database(sqlx::Error::Io(e));
        let base = std::fs::canonicalize(&self.file)
            .or_else(|_| std::path::absolute(&self.file))
            .map_err(io)?;
        let mut lock_name = base.into_os_string();
        lock_name.push(format!(".{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(lock_name))
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        Ok(locked.then_some(file))
    }

    /// Closes the pool: the WAL is checkpointed and its files removed.
    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    pub(super) async fn prepare_table(&self, table: &TableSpec) -> Result<(), StoreError> {
        let keys: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
        let key_defs: String = keys
            .iter()
            .map(|c| format!("{c} TEXT NOT NULL, "))
            .collect();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} ({key_defs}record TEXT NOT NULL, \
             content_hash BLOB NOT NULL, first_seen_at TEXT NOT NULL, changed_at TEXT NOT NULL, \
             run_id INTEGER NOT NULL, PRIMARY KEY ({keys}))",
            table = table.name.quoted(),
            keys = keys.join(", "),
        );
        sqlx::query(AssertSqlSafe(create))
            .execute(&self.pool)
            .await?;

        let info = format!("PRAGMA table_info({})", table.name.quoted());
        let columns: Vec<(String, String, i64)> = sqlx::query(AssertSqlSafe(info))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("name")?,
                    row.try_get("type")?,
                    row.try_get("pk")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let mut problems = Vec::new();
        let expected = table
            .key_columns
            .iter()
            .map(|c| (c.as_str(), "TEXT"))
            .chain([
                ("record", "TEXT"),
                ("content_hash", "BLOB"),
                ("first_seen_at", "TEXT"),
                ("changed_at", "TEXT"),
                ("run_id", "INTEGER"),
            ]);
        for (name, wanted) in expected {
            match columns.iter().find(|(column, _, _)| column == name) {
                None => problems.push(format!("column {name} ({wanted}) is missing")),
                Some((_, found, _)) if !found.eq_ignore_ascii_case(wanted) => {
                    problems.push(format!("column {name} is {found}, expected {wanted}"))
                }
                Some(_) => {}
            }
        }
        let primary_key: Vec<&str> = columns
            .iter()
            .filter(|(_, _, pk)| *pk > 0)
            .map(|(name, _, _)| name.as_str())
            .collect();
        super::table_shape_verdict(table, problems, primary_key)
    }

    pub(super) async fn table_is_empty(&self, table: &TableSpec) -> Result<bool, StoreError> {
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", table.name.quoted());
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    pub(super) fn try_lock_job(&self, job: &str) -> Result<Option<SqliteJobLock>, StoreError> {
        Ok(self
            .try_file_lock(&format!("job.{job}"))?
            .map(|file| SqliteJobLock { _file: file }))
    }

    pub(super) async fn close_abandoned_runs(&self, job: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE apisync_runs SET status = 'failed', finished_at = {NOW}, \
             error = 'process exited before the run finished' WHERE job = ? AND status = 'running'"
        );
        let closed = sqlx::query(AssertSqlSafe(sql))
            .bind(job)
            .execute(&self.pool)
            .await?;
        Ok(closed.rows_affected())
    }

    pub(super) async fn start_run(&self, job: &str) -> Result<RunId, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO apisync_runs (job, status) VALUES (?, 'running') RETURNING id",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?)
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
        let mut existing: Vec<Option<ContentHash>> = vec![None; batch.rows.len()];
        let mut conn = self.pool.acquire().await?;
        for chunk in asked.chunks(LOOKUP_CHUNK) {
            lookup(&mut conn, table, batch, chunk, &mut existing).await?;
        }
        let mut stored_rejects = HashSet::new();
        for chunk in batch.rejects.chunks(LOOKUP_CHUNK) {
            let sql = format!(
                "SELECT content_hash FROM apisync_rejects WHERE job = ? AND content_hash IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query_scalar::<_, Vec<u8>>(AssertSqlSafe(sql)).bind(job);
            for reject in chunk {
                query = query.bind(reject.content_hash.as_slice());
            }
            for hash in query.fetch_all(&mut *conn).await? {
                if let Ok(hash) = hash.try_into() {
                    stored_rejects.insert(hash);
                }
            }
        }
        Ok(super::plan_page(batch, &existing, &stored_rejects))
    }

    pub(super) async fn commit(&self, write: &BatchWrite<'_>) -> Result<(), StoreError> {
        let BatchWrite {
            job,
            table,
            run,
            batch,
            plan,
            watermark,
        } = *write;
        // IMMEDIATE: take the write lock now. A deferred transaction whose
        // first statement reads would fail at its first write with "database
        // is locked" when another process writes, without waiting.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let ours: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM apisync_runs WHERE id = ? AND status = 'running'")
                .bind(run)
                .fetch_optional(&mut *tx)
                .await?;
        if ours.is_none() {
            return Err(StoreError::RunClosed);
        }
        let written: Vec<usize> = plan.inserts.iter().chain(&plan.updates).copied().collect();
        for chunk in written.chunks(WRITE_CHUNK) {
            upsert(&mut tx, table, run, batch, chunk).await?;
        }
        for reject in plan.new_rejects.iter().map(|&i| &batch.rejects[i]) {
            sqlx::query(
                "INSERT INTO apisync_rejects (job, run_id, record, reason, content_hash) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (job, content_hash) DO NOTHING",
            )
            .bind(job)
            .bind(run)
            .bind(reject.json.to_string())
            .bind(&reject.reason)
            .bind(reject.content_hash.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        add_counts(&mut tx, run, &plan.counts).await?;
        if let Some(watermark) = watermark {
            let state = serde_json::json!({ "watermark": watermark }).to_string();
            let sql = format!(
                "INSERT INTO apisync_job_state (job, state, run_id) VALUES (?, ?, ?) \
                 ON CONFLICT (job) DO UPDATE SET state = json_patch(apisync_job_state.state, excluded.state), \
                   run_id = excluded.run_id, updated_at = {NOW}"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(job)
                .bind(state)
                .bind(run)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn watermark(
        &self,
        job: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM apisync_job_state WHERE job = ?")
                .bind(job)
                .fetch_optional(&self.pool)
                .await?;
        Ok(state
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|state| state.get("watermark").cloned()))
    }

    pub(super) async fn finish_run(&self, run: RunId, end: &RunEnd<'_>) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE apisync_runs SET status = ?, error = ?, expected = ?, finished_at = {NOW} \
             WHERE id = ? AND status = 'running'"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(end.status.as_str())
            .bind(end.error)
            .bind(end.expected.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
            .bind(run)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Adds a batch's counts to its run's row, alone: for a batch with
    /// nothing else to write.
    pub(super) async fn add_counts(&self, run: RunId, counts: &Counts) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if add_counts(&mut conn, run, counts).await? == 0 {
            return Err(StoreError::RunClosed);
        }
        Ok(())
    }

    pub(super) async fn mark_interrupted(
        &self,
        runs: &[RunId],
        error: &str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE apisync_runs SET status = 'interrupted', error = ?, finished_at = {NOW} \
             WHERE id = ? AND status = 'running'"
        );
        for run in runs {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(error)
                .bind(run)
                .execute(&self.pool)
                .await?;
        }
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
             FROM apisync_runs WHERE ?1 IS NULL OR job = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(job)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RunRecord {
                    id: row.try_get("id")?,
                    job: row.try_get("job")?,
                    status: row.try_get("status")?,
                    started_at: time(row, "started_at")?.ok_or_else(|| {
                        sqlx::Error::Decode("started_at is not an RFC 3339 time".into())
                    })?,
                    finished_at: time(row, "finished_at")?,
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
            "SELECT id, job, run_id, rejected_at, reason, record FROM apisync_rejects \
             WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR run_id = ?2) \
             ORDER BY id DESC LIMIT ?3",
        )
        .bind(job)
        .bind(run)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RejectRecord {
                    id: row.try_get("id")?,
                    job: row.try_get("job")?,
                    run_id: row.try_get("run_id")?,
                    rejected_at: time(row, "rejected_at")?.ok_or_else(|| {
                        sqlx::Error::Decode("rejected_at is not an RFC 3339 time".into())
                    })?,
                    reason: row.try_get("reason")?,
                    record: row.try_get("record")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

/// A timestamp column (RFC 3339 text) of a row.
fn time(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    Ok(text
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.to_utc()))
}

/// Rows written by one statement, for the reason lookups are batched (see
/// [`LOOKUP_CHUNK`]): 200 rows of a few columns stay far below SQLite's
/// limit on bound values.
const WRITE_CHUNK: usize = 200;

/// Inserts or updates the rows `rows` of the batch in one statement. The
/// `WHERE` keeps a row whose hash did not change untouched, should a plan
/// be out of date.
async fn upsert(
    conn: &mut sqlx::SqliteConnection,
    table: &TableSpec,
    run: RunId,
    batch: &Batch,
    rows: &[usize],
) -> Result<(), StoreError> {
    let columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
    let row = format!("({}?, ?, {NOW}, {NOW}, ?)", "?, ".repeat(columns.len()));
    let sql = format!(
        "INSERT INTO {table} ({columns}, record, content_hash, first_seen_at, changed_at, run_id) \
         VALUES {values} \
         ON CONFLICT ({columns}) DO UPDATE SET record = excluded.record, \
           content_hash = excluded.content_hash, changed_at = excluded.changed_at, \
           run_id = excluded.run_id \
         WHERE content_hash IS NOT excluded.content_hash",
        table = table.name.quoted(),
        columns = columns.join(", "),
        values = vec![row; rows.len()].join(", "),
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for &i in rows {
        let record = &batch.rows[i].record;
        for part in &record.key {
            query = query.bind(part.as_str());
        }
        query = query
            .bind(record.text.as_str())
            .bind(record.content_hash.as_slice())
            .bind(run);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// Keys asked about in one statement: a statement per key cost about
/// 45 µs each, mostly the hand-off to SQLite's thread. 500 keys of up to a
/// few columns stay far below SQLite's limit of 32,766 bound values.
const LOOKUP_CHUNK: usize = 500;

/// The stored hashes of the rows `asked`, into `existing`: one statement
/// joining the keys, given as a `VALUES` list, to the table's primary key.
async fn lookup(
    conn: &mut sqlx::SqliteConnection,
    table: &TableSpec,
    batch: &Batch,
    asked: &[usize],
    existing: &mut [Option<ContentHash>],
) -> Result<(), StoreError> {
    let columns = table.key_columns.len();
    let placeholders = format!("(?{})", ", ?".repeat(columns));
    let values = vec![placeholders; asked.len()].join(", ");
    let aliases: Vec<String> = (0..columns).map(|i| format!("k{i}")).collect();
    let join: Vec<String> = table
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} = asked.k{i}", c.quoted()))
        .collect();
    let sql = format!(
        "WITH asked(ord, {aliases}) AS (VALUES {values}) \
         SELECT asked.ord, t.content_hash FROM asked JOIN {table} AS t ON {join}",
        aliases = aliases.join(", "),
        table = table.name.quoted(),
        join = join.join(" AND "),
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for (ord, &row) in asked.iter().enumerate() {
        query = query.bind(ord as i64);
        for part in &batch.rows[row].record.key {
            query = query.bind(part.as_str());
        }
    }
    for found in query.fetch_all(&mut *conn).await? {
        let ord: i64 = found.try_get(0)?;
        let hash: Vec<u8> = found.try_get(1)?;
        super::note_stored(existing, asked, ord, Some(hash));
    }
    Ok(())
}

/// Adds `counts` to the run's row while it is `running`; the rows changed.
async fn add_counts(
    conn: &mut sqlx::SqliteConnection,
    run: RunId,
    counts: &Counts,
) -> Result<u64, StoreError> {
    let added = sqlx::query(
        "UPDATE apisync_runs SET fetched = fetched + ?, inserted = inserted + ?, \
         updated = updated + ?, unchanged = unchanged + ?, duplicate = duplicate + ?, \
         rejected = rejected + ?, pages = pages + ? WHERE id = ? AND status = 'running'",
    )
    .bind(counts.fetched as i64)
    .bind(counts.inserted as i64)
    .bind(counts.updated as i64)
    .bind(counts.unchanged as i64)
    .bind(counts.duplicate as i64)
    .bind(counts.rejected as i64)
    .bind(counts.pages as i64)
    .bind(run)
    .execute(&mut *conn)
    .await?;
    Ok(added.rows_affected())
}

/// The job's lock file, held open with an exclusive `flock`; closing it
/// (dropping this, or the process ending) releases the lock.
#[derive(Debug)]
pub struct SqliteJobLock {
    _file: File,
}
