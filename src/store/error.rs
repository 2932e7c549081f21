//! The store's errors, and how an sqlx error reads in a message.

use super::TableSpec;

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
    pub(super) fn on_table(self, table: &TableSpec) -> Self {
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
