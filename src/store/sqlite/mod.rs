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

mod table_writer;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::StoreError;

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
    pub(super) pool: SqlitePool,
    /// The database file; lock files sit next to it.
    file: PathBuf,
    /// How long to wait for another connection's lock (the busy timeout,
    /// `database.lock_timeout`), and for another process's lock file.
    lock_timeout: Duration,
    /// The time of this process's latest write transaction.
    last_write: std::sync::Arc<std::sync::Mutex<chrono::DateTime<chrono::Utc>>>,
}

impl SqliteStore {
    /// The time of a write transaction, in the store's text form (RFC 3339,
    /// milliseconds, UTC: what the SQL clock writes and sqlx reads back):
    /// one value for every statement of the transaction, as PostgreSQL's
    /// `now()` is, and later than the process's previous one, so a key's
    /// versions never share a `valid_from` (a millisecond is coarse enough
    /// for two transactions to fall within it).
    pub(super) fn transaction_time(&self) -> String {
        let mut last = self.last_write.lock().unwrap_or_else(|e| e.into_inner());
        let now = chrono::Utc::now().max(*last + chrono::Duration::milliseconds(1));
        *last = now;
        now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

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
            last_write: Default::default(),
        }
    }

    /// The database file, absolute where it can be resolved.
    pub fn path(&self) -> PathBuf {
        std::path::absolute(&self.file).unwrap_or_else(|_| self.file.clone())
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

    pub(super) fn try_lock_job(&self, job: &str) -> Result<Option<SqliteJobLock>, StoreError> {
        Ok(self
            .try_file_lock(&format!("job.{job}"))?
            .map(|file| SqliteJobLock { _file: file }))
    }
}

/// The job's lock file, held open with an exclusive `flock`; closing it
/// (dropping this, or the process ending) releases the lock.
#[derive(Debug)]
pub struct SqliteJobLock {
    _file: File,
}
