//! The database seam: the internal tables (runs, job state, rejects), the
//! job's target table, and the page write that keeps both consistent.
//!
//! [`Store`] is an enum over the backends so callers never branch on the
//! database: PostgreSQL, and SQLite as the embedded default.
//!
//! **Boundary:** this module never makes HTTP calls.
//! **Invariant:** a page's rows, its rejects and its run counts commit in one
//! transaction, and rows whose content hash did not change are not written;
//! a page with nothing to write opens no transaction.

pub mod ident;
mod migrations;
mod postgres;
mod sqlite;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use self::ident::Ident;
pub use self::postgres::{PgJobLock, PgStore, WritePath};
pub use self::sqlite::{SqliteJobLock, SqliteStore};
pub use crate::batch::{Batch, BatchRow};
use crate::config::DatabaseSettings;
use crate::record::{ContentHash, KeyField, Record};
use crate::run::{Counts, RunId, RunStatus};

/// A job's target table: its name and key columns.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: Ident,
    pub key_columns: Vec<Ident>,
}

impl TableSpec {
    pub fn new(name: Ident, key: &[KeyField]) -> Self {
        Self {
            name,
            key_columns: key.iter().map(|field| field.column.clone()).collect(),
        }
    }
}

/// Where a row's count goes once compared with what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Inserted,
    Updated,
    Unchanged,
}

fn classify(existing: Option<&ContentHash>, new: &ContentHash) -> Outcome {
    match existing {
        None => Outcome::Inserted,
        Some(old) if old == new => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    }
}

/// What a page needs, once compared with what is stored: its counts, which
/// rows (indexes into `Batch::rows`) are new or changed, and which
/// rejects (indexes into `Batch::rejects`) are not stored yet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WritePlan {
    pub counts: Counts,
    pub inserts: Vec<usize>,
    pub updates: Vec<usize>,
    pub new_rejects: Vec<usize>,
}

impl WritePlan {
    /// Whether the page needs a transaction: rows or new rejects to write,
    /// or a watermark to move. A page of unchanged rows and known rejects
    /// needs none.
    pub fn needs_commit(&self, moves_watermark: bool) -> bool {
        !self.inserts.is_empty()
            || !self.updates.is_empty()
            || !self.new_rejects.is_empty()
            || moves_watermark
    }
}

/// The rejects of `batch` whose hash is not in `stored`, each once.
fn new_rejects(batch: &Batch, stored: &HashSet<ContentHash>) -> Vec<usize> {
    let mut seen = HashSet::new();
    (0..batch.rejects.len())
        .filter(|&i| {
            let hash = batch.rejects[i].content_hash;
            !stored.contains(&hash) && seen.insert(hash)
        })
        .collect()
}

/// What a store cannot hold, checked before a page is written: the longest
/// key it can index, and numbers beyond PostgreSQL's `numeric`. A record
/// over either would fail the whole page's write, on every run.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    store: &'static str,
    /// Bytes of one index entry, headers included.
    max_entry_bytes: usize,
    /// What each key part costs besides its bytes (length header, alignment).
    per_part_bytes: usize,
    /// What an entry costs besides its parts.
    per_entry_bytes: usize,
}

impl StoreLimits {
    /// PostgreSQL's B-tree holds index entries of at most 2,704 bytes (a
    /// third of a page, less headers). An entry is an 8-byte header plus,
    /// per text column, a length header of up to 4 bytes and up to 3 of
    /// alignment: counting 8 per part keeps the check on the safe side.
    /// (PostgreSQL may compress a long key and fit it; a key that long is
    /// refused here all the same, so the outcome never depends on how well
    /// it compresses.)
    const POSTGRES: StoreLimits = StoreLimits {
        store: "PostgreSQL",
        max_entry_bytes: 2_704,
        per_part_bytes: 8,
        per_entry_bytes: 8,
    };

    /// Why `record` cannot be stored, or `None` when it fits.
    pub fn check(&self, record: &Record) -> Option<String> {
        if record.wide_number {
            return Some(format!(
                "the record holds a number {} cannot store (more than 131,072 digits \
                 before the decimal point or 16,383 after)",
                self.store
            ));
        }
        let key = &record.key;
        let entry = self.per_entry_bytes
            + key
                .iter()
                .map(|part| part.len() + self.per_part_bytes)
                .sum::<usize>();
        (entry > self.max_entry_bytes).then(|| {
            let bytes: usize = key.iter().map(String::len).sum();
            format!(
                "the key is {bytes} bytes long; {} indexes keys of at most {} bytes{}",
                self.store,
                self.max_entry_bytes
                    .saturating_sub(self.per_entry_bytes + self.per_part_bytes * key.len()),
                if key.len() > 1 {
                    " (all key fields together)"
                } else {
                    ""
                }
            )
        })
    }
}

/// One batch's write: what [`Store::commit`] commits in one transaction.
/// The counts added to the run's row are the plan's.
#[derive(Debug, Clone, Copy)]
pub struct BatchWrite<'a> {
    pub job: &'a str,
    pub table: &'a TableSpec,
    pub run: RunId,
    pub batch: &'a Batch,
    pub plan: &'a WritePlan,
    /// Set on the last batch of an incremental run that may move it.
    pub watermark: Option<&'a serde_json::Value>,
}

/// What a lookup found for the key at `asked[position]` (its position in
/// the statement, from 0): the stored hash, or `None` for a key not stored.
/// A hash of another length (written by hand, say) never matches. Answers
/// for positions outside `asked` are ignored.
fn note_stored(
    existing: &mut [Option<ContentHash>],
    asked: &[usize],
    position: i64,
    stored: Option<Vec<u8>>,
) {
    let slot = usize::try_from(position)
        .ok()
        .and_then(|i| asked.get(i))
        .and_then(|&row| existing.get_mut(row));
    if let Some(slot) = slot {
        *slot = stored.map(|hash| hash.try_into().unwrap_or([0; 16]));
    }
}

/// Counts a page and picks the rows to write, given each row's stored hash.
/// Shared by every backend so they count alike.
fn plan_page(
    batch: &Batch,
    existing: &[Option<ContentHash>],
    stored_rejects: &HashSet<ContentHash>,
) -> WritePlan {
    let mut plan = WritePlan {
        new_rejects: new_rejects(batch, stored_rejects),
        counts: Counts {
            fetched: batch.fetched,
            duplicate: batch.collapsed,
            rejected: batch.rejects.len() as u64,
            pages: batch.pages,
            ..Counts::default()
        },
        ..WritePlan::default()
    };
    for (index, (row, stored)) in batch.rows.iter().zip(existing).enumerate() {
        let outcome = classify(stored.as_ref(), &row.record.content_hash);
        match outcome {
            Outcome::Inserted => plan.inserts.push(index),
            Outcome::Updated => plan.updates.push(index),
            Outcome::Unchanged => {}
        }
        let counter = match (row.repeat, outcome) {
            (true, _) => &mut plan.counts.duplicate,
            (false, Outcome::Inserted) => &mut plan.counts.inserted,
            (false, Outcome::Updated) => &mut plan.counts.updated,
            (false, Outcome::Unchanged) => &mut plan.counts.unchanged,
        };
        *counter += 1;
    }
    plan
}

/// The verdict on an existing target table, shared by the stores: the
/// column `problems` a store found in its catalogue, plus a primary key that
/// is not exactly the job's key columns.
fn table_shape_verdict(
    table: &TableSpec,
    mut problems: Vec<String>,
    mut primary_key: Vec<&str>,
) -> Result<(), StoreError> {
    let mut wanted_key: Vec<&str> = table.key_columns.iter().map(|c| c.as_str()).collect();
    primary_key.sort_unstable();
    wanted_key.sort_unstable();
    if primary_key != wanted_key {
        let found = if primary_key.is_empty() {
            "there is no primary key".to_owned()
        } else {
            format!("the primary key is ({})", primary_key.join(", "))
        };
        problems.push(format!(
            "{found}, expected PRIMARY KEY ({}); the key constraint is what guarantees \
             one row per key",
            wanted_key.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::TableShape {
            table: table.name.to_string(),
            problems: problems.join("; "),
        })
    }
}

/// What the end of a run records in its row.
#[derive(Debug)]
pub struct RunEnd<'a> {
    pub status: RunStatus,
    /// Secrets already redacted.
    pub error: Option<&'a str>,
    /// The record count the API stated.
    pub expected: Option<u64>,
}

/// One row of `apisync.runs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub job: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub fetched: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub duplicate: i64,
    pub rejected: i64,
    pub pages: i64,
    /// The record count the API stated; `None` when it states none.
    pub expected: Option<i64>,
    pub error: Option<String>,
}

/// One row of `apisync.rejects`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectRecord {
    pub id: i64,
    pub job: String,
    /// The run that first stored it.
    pub run_id: RunId,
    pub rejected_at: DateTime<Utc>,
    pub reason: String,
    /// The record as received (JSON text).
    pub record: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement failed. Rendered by [`describe_sqlx`]: the server's
    /// message without the line of its C source that sqlx appends.
    #[error("the database request failed: {}", describe_sqlx(.0))]
    Database(sqlx::Error),
    /// Reaching the database failed before any statement ran: `stage` says
    /// what failed (connecting, authenticating), `target` where to.
    #[error("{stage} {target} failed: {detail}")]
    Connect {
        stage: &'static str,
        target: String,
        detail: String,
    },
    #[error("migrating the internal schema failed: {}", describe_migrate(.0))]
    Migrate(sqlx::migrate::MigrateError),
    /// A statement waited longer than `database.lock_timeout` for a lock
    /// another session holds.
    #[error(
        "a lock held by another session blocked the statement for longer than \
         database.lock_timeout ({detail}); another session holds a lock on {} \
         (LOCK TABLE, ALTER TABLE, VACUUM FULL, a long transaction): let it finish, or \
         raise database.lock_timeout",
        match table {
            Some(table) => format!("table {table} or on apisync's own tables"),
            None => "apisync's own tables or the job's table".to_owned(),
        }
    )]
    LockTimeout {
        detail: String,
        /// The job's table, when the statement was about it.
        table: Option<String>,
    },
    /// The connection holding the job's lock failed; another process may
    /// take the job now, so this run must stop writing.
    #[error(
        "lost the connection that holds the job's lock; stopping so that two processes \
         never write one job at once: {}",
        describe_sqlx(.0)
    )]
    LockLost(sqlx::Error),
    /// The run's row is no longer `running`: another process took the job
    /// over and closed it, so this run must not write.
    #[error("another process took over the job and closed this run; stopping without writing")]
    RunClosed,
    /// The target table exists but cannot hold the job's rows safely.
    #[error("table {table} exists but does not fit this job: {problems}")]
    TableShape { table: String, problems: String },
}

impl StoreError {
    /// Names the job's table in a lock timeout of a statement about it.
    fn on_table(self, table: &TableSpec) -> Self {
        match self {
            StoreError::LockTimeout {
                detail,
                table: None,
            } => StoreError::LockTimeout {
                detail,
                table: Some(table.name.to_string()),
            },
            other => other,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match lock_wait_detail(&error) {
            Some(detail) => StoreError::LockTimeout {
                detail,
                table: None,
            },
            None => StoreError::Database(error),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        match &error {
            sqlx::migrate::MigrateError::Execute(inner) => match lock_wait_detail(inner) {
                Some(detail) => StoreError::LockTimeout {
                    detail,
                    table: None,
                },
                None => StoreError::Migrate(error),
            },
            _ => StoreError::Migrate(error),
        }
    }
}

/// Whether `error` is a statement given up waiting for another session's
/// lock: PostgreSQL's `lock_not_available` (55P03, what `lock_timeout`
/// raises), or SQLite's `SQLITE_BUSY` (any of its extended codes: the busy
/// timeout ran out). The store's own words, for the message.
fn lock_wait_detail(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let code = db.code()?;
    if code == "55P03" {
        return Some(format!(
            "PostgreSQL: {}, SQLSTATE 55P03 lock_not_available",
            db.message()
        ));
    }
    let sqlite_busy = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        && code.parse::<u32>().is_ok_and(|code| code & 0xff == 5);
    sqlite_busy.then(|| format!("SQLite: {}, SQLITE_BUSY", db.message()))
}

/// An sqlx error in a sentence: the server's message and SQLSTATE (without
/// the "at line N" of PostgreSQL's own source that sqlx appends), or the
/// error chain.
pub fn describe_sqlx(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::PoolTimedOut => "no connection to the database became free within \
             database.acquire_timeout (pool timed out while waiting for an open connection)"
            .to_owned(),
        other => crate::error_chain(other),
    }
}

fn describe_migrate(error: &sqlx::migrate::MigrateError) -> String {
    match error {
        sqlx::migrate::MigrateError::Execute(inner) => describe_sqlx(inner),
        sqlx::migrate::MigrateError::ExecuteMigration(inner, version) => {
            format!("migration {version}: {}", describe_sqlx(inner))
        }
        other => crate::error_chain(other),
    }
}

/// Exclusive right to run one job, across processes.
#[derive(Debug)]
pub enum JobLock {
    Postgres(PgJobLock),
    Sqlite(SqliteJobLock),
}

impl JobLock {
    /// Checks that the lock is still held (its connection is alive).
    pub async fn still_held(&mut self) -> Result<(), StoreError> {
        match self {
            JobLock::Postgres(lock) => lock.still_held().await,
            // A file lock cannot be lost while the file is open.
            JobLock::Sqlite(_) => Ok(()),
        }
    }

    /// Frees the lock now, rather than when the connection times out.
    pub async fn release(self) {
        match self {
            JobLock::Postgres(lock) => lock.release().await,
            JobLock::Sqlite(lock) => drop(lock),
        }
    }
}

/// The database, whichever it is: PostgreSQL for production and replicas,
/// SQLite as the embedded default. Callers never branch on it.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Store {
    /// Opens a pool as `settings` say (no query is sent yet).
    ///
    /// # Errors
    /// When the URL cannot be used.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        use secrecy::ExposeSecret;
        let url = settings.url();
        if url.expose_secret().starts_with("sqlite:") {
            let store = SqliteStore::connect_lazy_with_lock_timeout(
                url.expose_secret(),
                settings.acquire_timeout,
                settings.lock_timeout,
            )?;
            Ok(Store::Sqlite(store))
        } else {
            Ok(Store::Postgres(PgStore::connect_lazy(settings)?))
        }
    }

    /// Closes the store's connections (on SQLite this also folds the WAL
    /// back into the database file).
    pub async fn close(&self) {
        match self {
            Store::Postgres(_) => {}
            Store::Sqlite(db) => db.close().await,
        }
    }

    /// Which store this is, for the log line at start.
    pub fn describe(&self) -> String {
        match self {
            Store::Postgres(pg) => pg.describe(),
            Store::Sqlite(db) => format!("SQLite ({})", db.path().display()),
        }
    }

    /// Answers one trivial query: the database is reachable.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.ping(timeout).await,
            Store::Sqlite(db) => db.ping(timeout).await,
        }
    }

    /// Ready to serve: the database answers within `timeout` and every
    /// migration this build knows is applied. The error says why not.
    pub async fn readiness(&self, timeout: Duration) -> Result<(), String> {
        match self {
            Store::Postgres(pg) => pg.readiness(timeout).await,
            Store::Sqlite(db) => db.readiness(timeout).await,
        }
    }

    /// Applies the internal schema migrations (idempotent, safe to run from
    /// several processes at once: sqlx takes an advisory lock on PostgreSQL,
    /// the SQLite store a file lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.migrate().await,
            Store::Sqlite(db) => db.migrate().await,
        }
    }

    /// Creates the job's table when missing; refuses one whose primary key or
    /// columns do not match, since the key constraint is what guarantees one
    /// row per key.
    pub async fn prepare_table(&self, table: &TableSpec) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.prepare_table(table).await,
            Store::Sqlite(db) => db.prepare_table(table).await,
        }
        .map_err(|e| e.on_table(table))
    }

    /// Takes the job's lock, held until [`JobLock::release`] or until the
    /// process dies; `None` when another process holds it. PostgreSQL is the
    /// coordinator: replicas need nothing else to never run one job twice.
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<JobLock>, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.try_lock_job(job).await?.map(JobLock::Postgres)),
            Store::Sqlite(db) => Ok(db.try_lock_job(job)?.map(JobLock::Sqlite)),
        }
    }

    /// Closes runs of `job` left `running` by a process that died. Call it
    /// only while holding the job's lock: then no live process runs the job.
    pub async fn close_abandoned_runs(&self, job: &str) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(pg) => pg.close_abandoned_runs(job).await,
            Store::Sqlite(db) => db.close_abandoned_runs(job).await,
        }
    }

    pub async fn start_run(&self, job: &str) -> Result<RunId, StoreError> {
        match self {
            Store::Postgres(pg) => pg.start_run(job).await,
            Store::Sqlite(db) => db.start_run(job).await,
        }
    }

    /// Compares a page with what is stored (no transaction, no write): the
    /// rows' hashes, and whether the job's rejects are stored already.
    /// `empty_at_start`: the table held no row when the run began, so only
    /// keys repeated within the run need looking up (a first load skips the
    /// lookups). Sound because no one else writes the job's table meanwhile.
    pub async fn plan(
        &self,
        job: &str,
        table: &TableSpec,
        batch: &Batch,
        empty_at_start: bool,
    ) -> Result<WritePlan, StoreError> {
        match self {
            Store::Postgres(pg) => pg.plan_page(job, table, batch, empty_at_start).await,
            Store::Sqlite(db) => db.plan_page(job, table, batch, empty_at_start).await,
        }
        .map_err(|e| e.on_table(table))
    }

    /// What this store cannot hold, when a record could reach it
    /// (PostgreSQL's B-tree keys and `numeric`; SQLite has no such limits).
    pub fn limits(&self) -> Option<StoreLimits> {
        match self {
            Store::Postgres(_) => Some(StoreLimits::POSTGRES),
            Store::Sqlite(_) => None,
        }
    }

    /// The latest rejects, newest first, of one job or all, of one run or all.
    pub async fn recent_rejects(
        &self,
        job: Option<&str>,
        run: Option<RunId>,
        limit: i64,
    ) -> Result<Vec<RejectRecord>, StoreError> {
        match self {
            Store::Postgres(pg) => pg.recent_rejects(job, run, limit).await,
            Store::Sqlite(db) => db.recent_rejects(job, run, limit).await,
        }
    }

    /// Whether the job's table holds no row.
    pub async fn table_is_empty(&self, table: &TableSpec) -> Result<bool, StoreError> {
        match self {
            Store::Postgres(pg) => pg.table_is_empty(table).await,
            Store::Sqlite(db) => db.table_is_empty(table).await,
        }
        .map_err(|e| e.on_table(table))
    }

    /// Commits one planned batch: its new and changed rows, its new
    /// rejects, its counts added to the run's row, and, when given, the
    /// job's new watermark, in one transaction. A batch with nothing else to
    /// write still commits its counts (one statement, no row of the job's
    /// table touched), so the run's row and the metrics grow batch by batch
    /// and a killed process loses no count of what it committed.
    pub async fn commit(&self, write: &BatchWrite<'_>) -> Result<(), StoreError> {
        let counts_only = !write.plan.needs_commit(write.watermark.is_some());
        match self {
            Store::Postgres(pg) if counts_only => {
                pg.add_counts(write.run, &write.plan.counts).await
            }
            Store::Sqlite(db) if counts_only => db.add_counts(write.run, &write.plan.counts).await,
            Store::Postgres(pg) => pg.commit(write).await,
            Store::Sqlite(db) => db.commit(write).await,
        }
        .map_err(|e| e.on_table(write.table))
    }

    /// The job's committed watermark, if it has one.
    pub async fn watermark(&self, job: &str) -> Result<Option<serde_json::Value>, StoreError> {
        match self {
            Store::Postgres(pg) => pg.watermark(job).await,
            Store::Sqlite(db) => db.watermark(job).await,
        }
    }

    /// Records the end of a run: its status, error and the total the API
    /// stated (its counts were committed batch by batch).
    pub async fn finish_run(&self, run: RunId, end: &RunEnd<'_>) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.finish_run(run, end).await,
            Store::Sqlite(db) => db.finish_run(run, end).await,
        }
    }

    /// Marks runs that could not finish in time as `interrupted`.
    pub async fn mark_interrupted(&self, runs: &[RunId], error: &str) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.mark_interrupted(runs, error).await,
            Store::Sqlite(db) => db.mark_interrupted(runs, error).await,
        }
    }

    /// The latest runs, newest first.
    pub async fn recent_runs(
        &self,
        job: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRecord>, StoreError> {
        match self {
            Store::Postgres(pg) => pg.recent_runs(job, limit).await,
            Store::Sqlite(db) => db.recent_runs(job, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordShape;
    use serde_json::json;

    #[test]
    fn appended_pages_count_as_if_written_apart() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let page = |rows: Vec<(serde_json::Value, bool)>| Batch {
            fetched: rows.len() as u64,
            rows: rows
                .into_iter()
                .map(|(value, repeat)| BatchRow {
                    record: shape.read(&value).unwrap(),
                    repeat,
                })
                .collect(),
            pages: 1,
            ..Batch::default()
        };
        let mut batch = page(vec![(json!({"id": 1}), false), (json!({"id": 2}), false)]);
        let mut second = page(vec![(json!({"id": 3}), false), (json!({"id": 9}), true)]);
        second.collapsed = 1;
        second.fetched += 1;
        batch.append(second);

        let plan = plan_page(&batch, &[None, None, None, Some([0; 16])], &HashSet::new());
        assert_eq!(
            plan.counts,
            Counts {
                fetched: 5,
                inserted: 3,
                duplicate: 2,
                pages: 2,
                ..Counts::default()
            },
            "as page 1 (2 inserted) then page 2 (1 inserted, 2 duplicates)"
        );
    }

    #[test]
    fn plan_counts_every_record_once_and_writes_only_changes() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let row = |value: serde_json::Value, repeat| BatchRow {
            record: shape.read(&value).unwrap(),
            repeat,
        };
        let batch = Batch {
            rows: vec![
                row(json!({"id": 1, "v": 1}), false),
                row(json!({"id": 2, "v": 1}), false),
                row(json!({"id": 3, "v": 2}), false),
                row(json!({"id": 4, "v": 2}), true),
                row(json!({"id": 5, "v": 2}), true),
            ],
            rejects: vec![crate::record::Rejected::of_text(
                br#"{"v": 1}"#,
                shape.read(&json!({"v": 1})).unwrap_err(),
            )],
            fetched: 7,
            collapsed: 1,
            pages: 1,
        };
        let same = |i: usize| Some(batch.rows[i].record.content_hash);
        let stored = [None, same(1), Some([0; 16]), Some([0; 16]), same(4)];
        let plan = plan_page(&batch, &stored, &HashSet::new());
        assert_eq!(
            plan.counts,
            Counts {
                fetched: 7,
                inserted: 1,
                updated: 1,
                unchanged: 1,
                duplicate: 3,
                rejected: 1,
                pages: 1,
            }
        );
        assert_eq!(plan.inserts, vec![0], "the new row");
        assert_eq!(
            plan.updates,
            vec![2, 3],
            "the changed row and a changed repeat"
        );
        assert!(plan.needs_commit(false));
        let quiet = Batch::default();
        let none = HashSet::new();
        assert!(!plan_page(&quiet, &[], &none).needs_commit(false));
        assert!(
            plan_page(&quiet, &[], &none).needs_commit(true),
            "a watermark to move"
        );
        assert_eq!(plan.new_rejects, vec![0]);
        let known: HashSet<ContentHash> = [batch.rejects[0].content_hash].into();
        assert!(
            plan_page(&batch, &stored, &known).new_rejects.is_empty(),
            "a reject stored by an earlier run is not stored again"
        );
    }
}
