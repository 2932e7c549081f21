//! The job lock: a session-level advisory lock on a connection of its own.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use xxhash_rust::xxh3::xxh3_64;

use crate::store::StoreError;

/// The advisory lock key of a job: one 64-bit number per job name, in a
/// namespace of apisync's own so other users of advisory locks do not collide.
pub(super) fn lock_key(job: &str) -> i64 {
    xxh3_64(format!("apisync.job:{job}").as_bytes()) as i64
}

/// A job's session-level advisory lock and the connection that holds it.
/// If the process dies, the connection closes and PostgreSQL frees the lock.
/// Session locks do not survive PgBouncer's transaction pooling: point
/// apisync at PostgreSQL directly or at a session-mode pool.
#[derive(Debug)]
pub struct PgJobLock {
    pub(super) conn: PgConnection,
    pub(super) key: i64,
    /// How long a check may take before the lock counts as lost.
    pub(super) timeout: Duration,
}

impl PgJobLock {
    /// The lock is still ours: its session is alive and PostgreSQL lists the
    /// lock under it. The second half also catches a transaction-pooling
    /// proxy, where the "same" connection may reach another backend.
    pub(crate) async fn still_held(&mut self) -> Result<(), StoreError> {
        let hi = ((self.key as u64) >> 32) as i64;
        let lo = ((self.key as u64) & 0xffff_ffff) as i64;
        let check = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted AND objsubid = 1 \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid)",
        )
        .bind(hi)
        .bind(lo)
        .fetch_one(&mut self.conn);
        match tokio::time::timeout(self.timeout, check).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(StoreError::LockLost(sqlx::Error::Protocol(
                "the session no longer holds the job's advisory lock (a transaction-pooling \
                 proxy between apisync and PostgreSQL?)"
                    .into(),
            ))),
            Ok(Err(e)) => Err(StoreError::LockLost(e)),
            Err(_) => Err(StoreError::LockLost(sqlx::Error::PoolTimedOut)),
        }
    }

    pub(crate) async fn release(mut self) {
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn);
        let _ = tokio::time::timeout(self.timeout, unlock).await;
        let _ = tokio::time::timeout(self.timeout, self.conn.close()).await;
    }
}
