//! The database seam: the internal tables (runs, job state, rejects), the
//! job's target table, and the batch write that keeps both consistent.
//!
//! Split by what differs between the backends:
//! - written once, with per-dialect SQL where the dialects differ
//!   (`dialect`): the run ledger (`ledger`: runs, job state, rejects,
//!   readiness), the target table's creation and shape check (`table`), and
//!   the plan of a batch's write (`plan`);
//! - per backend (`postgres`, `sqlite`): connecting, migrating, the job lock,
//!   and the table writer (`table_writer`: the lookups a plan needs, and the
//!   write itself).
//!
//! [`Store`] is an enum over the backends so callers never branch on the
//! database: PostgreSQL, and SQLite as the embedded default. It is matched
//! only where the backends differ.
//!
//! **Boundary:** this module never makes HTTP calls.
//! **Invariant:** a batch's rows, its rejects, its run counts and its
//! watermark commit in one transaction, and rows whose content hash did not
//! change are not written; a batch with nothing to write commits only its
//! counts.

mod deletions;
mod dialect;
mod error;
pub mod ident;
mod ledger;
mod migrations;
mod plan;
mod postgres;
mod sqlite;
mod table;

pub use self::deletions::{KeyDeletion, Unseen};
pub use self::error::{StoreError, describe_sqlx};
pub use self::ident::Ident;
pub use self::plan::WritePlan;
pub use self::postgres::{PgJobLock, PgStore, WritePath};
pub use self::sqlite::{SqliteJobLock, SqliteStore};
pub use self::table::TableSpec;
pub use crate::batch::{Batch, BatchRow};
use chrono::{DateTime, Utc};

use crate::config::DatabaseSettings;
use crate::record::Record;
use crate::run::{RunId, RunStatus};

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
    /// The history table held no version when the run began: a key the
    /// batch inserts has no open version to close.
    pub fresh_history: bool,
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
    /// Stored keys the run marked deleted or removed.
    pub deleted: i64,
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
/// SQLite as the embedded default. Callers never branch on it. The run
/// ledger and the target table's checks are `impl Store` blocks in
/// `ledger.rs` and `table.rs`, written once for both; the methods here are
/// the ones that differ by backend.
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

    /// Applies the internal schema migrations (idempotent, safe to run from
    /// several processes at once: sqlx takes an advisory lock on PostgreSQL,
    /// the SQLite store a file lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.migrate().await,
            Store::Sqlite(db) => db.migrate().await,
        }
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

    /// What this store cannot hold, when a record could reach it
    /// (PostgreSQL's B-tree keys and `numeric`; SQLite has no such limits).
    pub fn limits(&self) -> Option<StoreLimits> {
        match self {
            Store::Postgres(_) => Some(StoreLimits::POSTGRES),
            Store::Sqlite(_) => None,
        }
    }

    /// Compares a batch with what is stored (no transaction, no write): the
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
        let lookup = plan::Lookup {
            job,
            table,
            batch,
            asked: &plan::rows_to_look_up(batch, empty_at_start),
        };
        let stored = match self {
            Store::Postgres(pg) => pg.look_up(&lookup).await,
            Store::Sqlite(db) => db.look_up(&lookup).await,
        }
        .map_err(|e| e.on_table(table))?;
        Ok(plan::write_plan(
            batch,
            &stored.hashes,
            &stored.marked,
            &stored.rejects,
        ))
    }

    /// Commits one planned batch: its new and changed rows, its new
    /// rejects, its counts added to the run's row, and, when given, the
    /// job's new watermark, in one transaction. A batch with nothing else to
    /// write still commits its counts (one statement, no row of the job's
    /// table touched), so the run's row and the metrics grow batch by batch
    /// and a killed process loses no count of what it committed.
    pub async fn commit(&self, write: &BatchWrite<'_>) -> Result<(), StoreError> {
        if !write.plan.needs_commit(write.watermark.is_some()) {
            return self.add_counts(write.run, &write.plan.counts).await;
        }
        match self {
            Store::Postgres(pg) => pg.write(write).await,
            Store::Sqlite(db) => db.write(write).await,
        }
        .map_err(|e| e.on_table(write.table))
    }
}
