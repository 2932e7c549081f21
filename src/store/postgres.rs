//! The PostgreSQL store.
//!
//! A page is written as: read the stored hashes of the page's keys, then one
//! batched `INSERT … SELECT FROM UNNEST(…) ON CONFLICT … DO UPDATE … WHERE
//! content_hash IS DISTINCT FROM excluded.content_hash` for the new and changed
//! rows only. Reading first means unchanged rows are not even locked (an
//! upsert that skips them still locks them and writes WAL), and gives exact
//! per-row counts; the `WHERE` stays as the guard against a concurrent writer.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use xxhash_rust::xxh3::xxh3_64;

use super::{PageBatch, RunRecord, StoreError, TableSpec, plan_page};
use crate::config::DatabaseSettings;
use crate::record::ContentHash;
use crate::run::{Counts, RunId, RunStatus};

/// The internal schema. The migrations table lives in it too, so apisync
/// leaves nothing in `public` but the job tables.
fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("migrations/postgres");
    migrator.create_schema("apisync");
    migrator.dangerous_set_table_name("apisync._sqlx_migrations");
    migrator
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// # Errors
    /// When `database.url` is missing or not a PostgreSQL URL.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let url = settings.url.as_ref().ok_or_else(|| {
            StoreError::Database(sqlx::Error::Configuration("database.url is not set".into()))
        })?;
        let options = PgConnectOptions::from_str(url.expose_secret())?.application_name("apisync");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // Recycle connections so a failover or a restarted server is
            // picked up without restarting apisync.
            .idle_timeout(Duration::from_secs(300))
            .max_lifetime(Duration::from_secs(1800))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Wraps a pool made elsewhere (tests get one per test database).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
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
                crate::error_chain(&e)
            )),
            Ok(Ok(applied)) if applied.unwrap_or(0) >= wanted => Ok(()),
            Ok(Ok(_)) => Err("migrations not applied yet".to_owned()),
        }
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        migrator().run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn prepare_table(&self, table: &TableSpec) -> Result<(), StoreError> {
        let key_columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
        let key_defs: String = key_columns
            .iter()
            .map(|c| format!("{c} text NOT NULL, "))
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
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT attname::text, format_type(atttypid, atttypmod) \
             FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(&regclass)
        .fetch_all(&self.pool)
        .await?;
        let mut primary_key: Vec<String> = sqlx::query_scalar(
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
            match columns.iter().find(|(column, _)| column == name) {
                None => problems.push(format!("column {name} ({wanted}) is missing")),
                Some((_, found)) if found != wanted => {
                    problems.push(format!("column {name} is {found}, expected {wanted}"))
                }
                Some(_) => {}
            }
        }
        let mut wanted_key: Vec<String> = table
            .key_columns
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        wanted_key.sort();
        primary_key.sort();
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

    /// Takes the job's advisory lock on a connection of its own (outside the
    /// pool, so a long run never starves page writes of connections). `None`
    /// when another session holds it.
    pub(super) async fn try_lock_job(&self, job: &str) -> Result<Option<PgJobLock>, StoreError> {
        let options = self.pool.connect_options();
        let timeout = self.pool.options().get_acquire_timeout();
        let mut conn = tokio::time::timeout(timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??;
        let key = lock_key(job);
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

    pub(super) async fn write_page(
        &self,
        job: &str,
        table: &TableSpec,
        run: RunId,
        batch: &PageBatch,
        watermark: Option<&serde_json::Value>,
    ) -> Result<Counts, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The guard that makes "one job, one writer" hold inside the write
        // itself: if another process took the job (our lock connection died)
        // it first closed this run, and then this row is no longer
        // `running`. Locking the row also makes its closing wait for us.
        let ours: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM apisync.runs WHERE id = $1 AND status = 'running' FOR UPDATE",
        )
        .bind(run)
        .fetch_optional(&mut *tx)
        .await?;
        if ours.is_none() {
            return Err(StoreError::RunClosed);
        }

        let existing = stored_hashes(&mut tx, table, batch).await?;
        let (counts, to_write) = plan_page(batch, &existing);
        if !to_write.is_empty() {
            upsert(&mut tx, table, run, batch, &to_write).await?;
        }
        if !batch.rejects.is_empty() {
            let records: Vec<String> = batch.rejects.iter().map(|r| r.json.to_string()).collect();
            let reasons: Vec<&str> = batch.rejects.iter().map(|r| r.reason.as_str()).collect();
            sqlx::query(
                "INSERT INTO apisync.rejects (job, run_id, record, reason) \
                 SELECT $1, $2, r.record, r.reason FROM UNNEST($3::text[], $4::text[]) \
                 AS r(record, reason)",
            )
            .bind(job)
            .bind(run)
            .bind(&records)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
        let add_counts = sqlx::query(
            "UPDATE apisync.runs SET fetched = fetched + $2, inserted = inserted + $3, \
             updated = updated + $4, unchanged = unchanged + $5, duplicate = duplicate + $6, \
             rejected = rejected + $7, pages = pages + $8 WHERE id = $1",
        )
        .bind(run)
        .bind(counts.fetched as i64)
        .bind(counts.inserted as i64)
        .bind(counts.updated as i64)
        .bind(counts.unchanged as i64)
        .bind(counts.duplicate as i64)
        .bind(counts.rejected as i64)
        .bind(counts.pages as i64);
        add_counts.execute(&mut *tx).await?;
        if let Some(watermark) = watermark {
            sqlx::query(
                "INSERT INTO apisync.job_state (job, state, run_id) \
                 VALUES ($1, jsonb_build_object('watermark', $2::jsonb), $3) \
                 ON CONFLICT (job) DO UPDATE SET state = apisync.job_state.state || excluded.state, \
                   run_id = excluded.run_id, updated_at = now()",
            )
            .bind(job)
            .bind(watermark)
            .bind(run)
            .execute(&mut *tx)
            .await?;
        }

        tx.commit().await?;
        Ok(counts)
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

    pub(super) async fn finish_run(
        &self,
        run: RunId,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        // The counts are not written here: each page added its own in the
        // transaction that committed it, so the row cannot claim more (or less)
        // than what is in the table, even if a commit's outcome was unclear.
        // Only a run still `running`: one closed by another process that took
        // over the job keeps what that process recorded.
        sqlx::query(
            "UPDATE apisync.runs SET status = $2, error = $3, finished_at = now() \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(run)
        .bind(status.as_str())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn mark_interrupted(
        &self,
        runs: &[RunId],
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE apisync.runs SET status = 'interrupted', error = $2, finished_at = now() \
             WHERE id = ANY($1) AND status = 'running'",
        )
        .bind(runs)
        .bind(error)
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
             unchanged, duplicate, rejected, pages, error \
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
                    error: row.try_get("error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

/// The advisory lock key of a job: one 64-bit number per job name, in a
/// namespace of apisync's own so other users of advisory locks do not collide.
fn lock_key(job: &str) -> i64 {
    xxh3_64(format!("apisync.job:{job}").as_bytes()) as i64
}

/// A job's session-level advisory lock and the connection that holds it.
/// If the process dies, the connection closes and PostgreSQL frees the lock.
/// Session locks do not survive PgBouncer's transaction pooling: point
/// apisync at PostgreSQL directly or at a session-mode pool.
#[derive(Debug)]
pub struct PgJobLock {
    conn: PgConnection,
    key: i64,
    /// How long a check may take before the lock counts as lost.
    timeout: Duration,
}

impl PgJobLock {
    /// The lock is still ours: its session is alive and PostgreSQL lists the
    /// lock under it. The second half also catches a transaction-pooling
    /// proxy, where the "same" connection may reach another backend.
    pub(super) async fn still_held(&mut self) -> Result<(), StoreError> {
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

    pub(super) async fn release(mut self) {
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn);
        let _ = tokio::time::timeout(self.timeout, unlock).await;
        let _ = tokio::time::timeout(self.timeout, self.conn.close()).await;
    }
}

/// Key values column by column, as UNNEST wants them.
fn key_arrays<'a>(
    table: &TableSpec,
    batch: &'a PageBatch,
    rows: impl Iterator<Item = usize> + Clone,
) -> Vec<Vec<&'a str>> {
    (0..table.key_columns.len())
        .map(|k| {
            rows.clone()
                .map(|i| batch.rows[i].record.key[k].as_str())
                .collect()
        })
        .collect()
}

/// The stored content hash of each row's key, `None` for keys not stored yet.
async fn stored_hashes(
    tx: &mut sqlx::PgConnection,
    table: &TableSpec,
    batch: &PageBatch,
) -> Result<Vec<Option<ContentHash>>, StoreError> {
    let mut existing = vec![None; batch.rows.len()];
    if batch.rows.is_empty() {
        return Ok(existing);
    }
    let n = table.key_columns.len();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let join: Vec<String> = table
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} = b.k{i}", c.quoted()))
        .collect();
    let sql = format!(
        "SELECT b.ord, t.content_hash FROM UNNEST({params}) WITH ORDINALITY AS b({aliases}, ord) \
         JOIN {table} AS t ON {join}",
        params = params.join(", "),
        aliases = aliases.join(", "),
        table = table.name.quoted(),
        join = join.join(" AND "),
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for column in key_arrays(table, batch, 0..batch.rows.len()) {
        query = query.bind(column);
    }
    for row in query.fetch_all(&mut *tx).await? {
        let ord: i64 = row.try_get(0)?;
        let hash: Vec<u8> = row.try_get(1)?;
        // A hash of another length (written by hand, say) simply never matches.
        let hash: Option<ContentHash> = hash.try_into().ok();
        if let Some(slot) = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| existing.get_mut(i))
        {
            *slot = Some(hash.unwrap_or([0; 16]));
        }
    }
    Ok(existing)
}

/// Inserts new rows and rewrites changed ones, in one statement.
async fn upsert(
    tx: &mut sqlx::PgConnection,
    table: &TableSpec,
    run: RunId,
    batch: &PageBatch,
    to_write: &[usize],
) -> Result<(), StoreError> {
    let n = table.key_columns.len();
    let columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let sql = format!(
        "INSERT INTO {table} AS t ({columns}, record, content_hash, first_seen_at, changed_at, run_id) \
         SELECT {aliases}, b.record, b.content_hash, now(), now(), ${run_param} \
         FROM UNNEST({params}, ${record_param}::jsonb[], ${hash_param}::bytea[]) \
           AS b({aliases}, record, content_hash) \
         ON CONFLICT ({columns}) DO UPDATE SET record = excluded.record, \
           content_hash = excluded.content_hash, changed_at = excluded.changed_at, \
           run_id = excluded.run_id \
         WHERE t.content_hash IS DISTINCT FROM excluded.content_hash",
        table = table.name.quoted(),
        columns = columns.join(", "),
        aliases = aliases.join(", "),
        params = params.join(", "),
        record_param = n + 1,
        hash_param = n + 2,
        run_param = n + 3,
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for column in key_arrays(table, batch, to_write.iter().copied()) {
        query = query.bind(column);
    }
    let records: Vec<&serde_json::Value> = to_write
        .iter()
        .map(|&i| &batch.rows[i].record.json)
        .collect();
    let hashes: Vec<&[u8]> = to_write
        .iter()
        .map(|&i| batch.rows[i].record.content_hash.as_slice())
        .collect();
    query
        .bind(records)
        .bind(hashes)
        .bind(run)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
