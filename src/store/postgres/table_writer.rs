//! The PostgreSQL table writer: the lookups a plan needs, and a batch's write.
//!
//! First the lookups, outside any transaction: the stored hashes of the
//! batch's keys, read with `SELECT … JOIN UNNEST(…)`, say which rows are new,
//! changed or unchanged (`store::plan` decides); unchanged rows are never
//! written, nor locked, and a batch with nothing to write touches no row of
//! the job's table: an unchanged re-sync writes only its counts.
//!
//! Then, in one transaction: a guard (the run is still the job's current
//! one), the rows, the rejects, and the ledger's part (the run's counts and
//! the watermark, `ledger::record_batch`).
//! - **Fast path** (the default): new rows with binary `COPY` straight into
//!   the table, changed rows with one `UPDATE … FROM UNNEST(…) WHERE
//!   content_hash IS DISTINCT FROM …`. COPY costs PostgreSQL about half of
//!   what an `INSERT … ON CONFLICT` of the same rows does.
//! - **Simple path**: one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT … DO
//!   UPDATE … WHERE content_hash IS DISTINCT FROM excluded.content_hash`. It
//!   is the fallback when a key appeared between plan and write (COPY fails
//!   with a unique violation and the page is redone this way), and what the
//!   fast path is tested against.
//!
//! The plan is made without the transaction because nobody else writes the
//! job's table meanwhile (one job per table, one process per job); the
//! statements keep their guards (`IS DISTINCT FROM`, the primary key)
//! regardless.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPool};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row};

use super::PgStore;
use crate::record::{ContentHash, Record};
use crate::run::RunId;
use crate::store::dialect::{self, Db};
use crate::store::plan::{Lookup, Stored};
use crate::store::{Batch, BatchWrite, StoreError, TableSpec, ledger};

/// How the rows of a page are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// COPY for new rows, UPDATE for changed ones.
    Fast,
    /// One INSERT … ON CONFLICT DO UPDATE for both.
    Simple,
}

impl PgStore {
    /// Writes a planned batch in one transaction, by the store's path.
    pub(in crate::store) async fn write(&self, write: &BatchWrite<'_>) -> Result<(), StoreError> {
        match write.commit(&self.pool, self.path, &self.writers).await {
            // A row inserted since the plan was made (not by apisync: two
            // processes never write one job): redo the batch with the upsert,
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

    /// Answers a plan's lookups: the stored hashes, then the stored rejects.
    pub(in crate::store) async fn look_up(
        &self,
        lookup: &Lookup<'_>,
    ) -> Result<Stored, StoreError> {
        let batch = lookup.batch;
        let mut stored = Stored::for_rows(batch.rows.len());
        // Several pages written together ask in several statements: one
        // statement for 5,000 keys took 70 ms where five of 1,000 take 25.
        for asked in lookup.asked.chunks(LOOKUP_CHUNK) {
            stored_hashes(&self.pool, lookup.table, batch, asked, &mut stored).await?;
        }
        stored.rejects = stored_rejects(&self.pool, lookup.job, batch).await?;
        Ok(stored)
    }
}

/// Which of the batch's rejects the job has stored already (by content hash).
async fn stored_rejects(
    pool: &PgPool,
    job: &str,
    batch: &Batch,
) -> Result<HashSet<ContentHash>, StoreError> {
    if batch.rejects.is_empty() {
        return Ok(HashSet::new());
    }
    let hashes: Vec<&[u8]> = batch
        .rejects
        .iter()
        .map(|r| r.content_hash.as_slice())
        .collect();
    let stored: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT content_hash FROM apisync.rejects WHERE job = $1 AND content_hash = ANY($2)",
    )
    .bind(job)
    .bind(hashes)
    .fetch_all(pool)
    .await?;
    Ok(stored
        .into_iter()
        .filter_map(|hash| hash.try_into().ok())
        .collect())
}

impl BatchWrite<'_> {
    /// Writes the batch in one transaction. While it runs, `writers` holds
    /// the session's backend pid under the run's id: a shutdown that gives
    /// up on the write ends that session, whose lock on the run's row would
    /// otherwise keep the run from being marked `interrupted`.
    pub(super) async fn commit(
        &self,
        pool: &PgPool,
        path: WritePath,
        writers: &Writers,
    ) -> Result<(), StoreError> {
        let result = self.commit_noting(pool, path, writers).await;
        writers.forget(self.run);
        result
    }

    async fn commit_noting(
        &self,
        pool: &PgPool,
        path: WritePath,
        writers: &Writers,
    ) -> Result<(), StoreError> {
        let mut tx = pool.begin().await?;
        // The guard that makes "one job, one writer" hold inside the write
        // itself: a process that took the job over (our lock connection
        // died) first closed this run, and then its row is no longer
        // `running`. Locking the row also makes that closing wait for us.
        let locked: Option<(DateTime<Utc>, i32)> = sqlx::query_as(
            "SELECT now(), pg_backend_pid() FROM apisync.runs \
             WHERE id = $1 AND status = 'running' FOR UPDATE",
        )
        .bind(self.run)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((now, pid)) = locked else {
            return Err(StoreError::RunClosed);
        };
        writers.note(self.run, pid);

        match path {
            WritePath::Fast => {
                if !self.plan.inserts.is_empty() {
                    copy_rows(
                        &mut tx,
                        self.table,
                        self.run,
                        now,
                        self.batch,
                        &self.plan.inserts,
                    )
                    .await?;
                }
                let mut changed = self.plan.updates.clone();
                changed.extend(&self.plan.restores);
                if !changed.is_empty() {
                    match &self.table.history {
                        // The changed rows and their versions in one statement.
                        Some(history) => {
                            let mut ops = vec!["update"; self.plan.updates.len()];
                            ops.extend(vec!["restore"; self.plan.restores.len()]);
                            let sql = versioned_update_sql(self.table, history);
                            bind_rows(
                                sqlx::query(AssertSqlSafe(sql)),
                                self.table,
                                self.batch,
                                &changed,
                            )
                            .bind(self.run)
                            .bind(ops)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            let sql = update_sql(self.table);
                            execute_rows(&mut tx, sql, self.table, self.run, self.batch, &changed)
                                .await?;
                        }
                    }
                }
                if let Some(history) = &self.table.history {
                    self.write_versions_of(&mut tx, history, &[(&self.plan.inserts, "insert")])
                        .await?;
                }
            }
            WritePath::Simple => {
                let mut rows = self.plan.inserts.clone();
                rows.extend(&self.plan.updates);
                rows.extend(&self.plan.restores);
                if !rows.is_empty() {
                    let sql = upsert_sql(self.table);
                    execute_rows(&mut tx, sql, self.table, self.run, self.batch, &rows).await?;
                }
                if let Some(history) = &self.table.history {
                    let versions = [
                        (&self.plan.inserts, "insert"),
                        (&self.plan.updates, "update"),
                        (&self.plan.restores, "restore"),
                    ];
                    self.write_versions_of(&mut tx, history, &versions).await?;
                }
            }
        }
        if !self.plan.tombstoned.is_empty() {
            let keys: Vec<&[String]> = self
                .plan
                .tombstoned
                .iter()
                .map(|&i| self.batch.rows[i].record.key.as_slice())
                .collect();
            // A job with tombstones deletes; one that does not mark removes.
            delete_rows(&mut tx, self.table, self.run, &keys, !self.table.marks).await?;
        }
        if !self.plan.new_rejects.is_empty() {
            let rejects = || {
                self.plan
                    .new_rejects
                    .iter()
                    .map(|&i| &self.batch.rejects[i])
            };
            let records: Vec<String> = rejects().map(|r| r.json.to_string()).collect();
            let reasons: Vec<&str> = rejects().map(|r| r.reason.as_str()).collect();
            let hashes: Vec<&[u8]> = rejects().map(|r| r.content_hash.as_slice()).collect();
            // DO NOTHING: stored by an earlier run meanwhile is stored all the same.
            sqlx::query(
                "INSERT INTO apisync.rejects (job, run_id, record, reason, content_hash) \
                 SELECT $1, $2, r.record, r.reason, r.hash \
                 FROM UNNEST($3::text[], $4::text[], $5::bytea[]) AS r(record, reason, hash) \
                 ON CONFLICT (job, content_hash) DO NOTHING",
            )
            .bind(self.job)
            .bind(self.run)
            .bind(&records)
            .bind(&reasons)
            .bind(&hashes)
            .execute(&mut *tx)
            .await?;
        }
        ledger::record_batch(Db::Postgres(&mut *tx), &dialect::POSTGRES, self).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl BatchWrite<'_> {
    /// The versions of the rows `versions` lists (row indexes, and the op
    /// of each), as they now stand in the table. In a history that held no
    /// version when the run began, a key inserted for the first time in the
    /// run has no open version, and none is looked for (a first load would
    /// otherwise probe for every key); a repeat may have one (deleted by a
    /// tombstone earlier in the run, say).
    async fn write_versions_of(
        &self,
        conn: &mut PgConnection,
        history: &crate::store::Ident,
        versions: &[(&Vec<usize>, &'static str)],
    ) -> Result<(), StoreError> {
        let mut keys: Vec<&[String]> = Vec::new();
        let mut ops: Vec<&str> = Vec::new();
        let mut close: Vec<bool> = Vec::new();
        for (rows, op) in versions {
            for &i in rows.iter() {
                let row = &self.batch.rows[i];
                keys.push(row.record.key.as_slice());
                ops.push(op);
                close.push(*op != "insert" || !self.fresh_history || row.repeat);
            }
        }
        write_versions(conn, self.table, history, self.run, &keys, &ops, &close).await
    }
}

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// The backend pid of each page write in progress, by run. An entry is
/// removed when its write returns, not when it is dropped: a write abandoned
/// by a shutdown keeps its entry, so the shutdown can end its session.
#[derive(Debug, Clone, Default)]
pub(super) struct Writers(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<RunId, i32>>>);

impl Writers {
    fn note(&self, run: RunId, pid: i32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run, pid);
    }

    fn forget(&self, run: RunId) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
    }

    /// The pids of the writes of `runs` still in progress (or abandoned).
    pub(super) fn pids(&self, runs: &[RunId]) -> Vec<i32> {
        let writers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        runs.iter()
            .filter_map(|run| writers.get(run).copied())
            .collect()
    }
}

/// Key values column by column, as UNNEST wants them.
fn key_arrays<'a>(
    table: &TableSpec,
    batch: &'a Batch,
    rows: impl Iterator<Item = usize> + Clone,
) -> Vec<Vec<&'a str>> {
    columns_of(table, rows.map(|i| batch.rows[i].record.key.as_slice()))
}

/// `keys` column by column, as UNNEST wants them.
fn columns_of<'a>(
    table: &TableSpec,
    keys: impl Iterator<Item = &'a [String]> + Clone,
) -> Vec<Vec<&'a str>> {
    (0..table.key_columns.len())
        .map(|k| keys.clone().map(|key| key[k].as_str()).collect())
        .collect()
}

/// The versions of the rows of `keys` as they now stand in the table, one
/// per key with its `ops` entry, each closing the key's open version: the
/// closed version's `valid_to` and the new one's `valid_from` are the same
/// `now()`, the transaction's time. Read from the table, not sent again:
/// the rows were written (or, for a deletion, are about to be) in this
/// transaction. Only keys whose `close` is set are looked for an open
/// version (see [`BatchWrite::write_versions_of`]).
///
/// One statement (the closing is a data-modifying CTE), with one
/// primary-key probe per key in LATERAL subqueries kept apart by OFFSET 0:
/// a plain join to a table without statistics yet (a first load, a history
/// just made) was planned as a scan of the whole table per batch.
///
/// When the table has one key column and every version has the same op
/// (a page's new rows; a deletion), the rows are read instead by
/// `key = ANY(keys)`: one index scan in key order, no join, and no plan
/// that could scan the table (a scan would test every row against the
/// whole array, which the planner prices as it is). It took the history
/// writes of a first load from 1.94 to 1.83 × COPY (see BENCHMARKS.md).
async fn write_versions(
    conn: &mut PgConnection,
    table: &TableSpec,
    history: &crate::store::Ident,
    run: RunId,
    keys: &[&[String]],
    ops: &[&str],
    close: &[bool],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let n = table.key_columns.len();
    let (params, aliases) = key_params(table, 1);
    let from_table: Vec<String> = table
        .key_columns
        .iter()
        .map(|c| format!("t.{}", c.quoted()))
        .collect();
    let table_name = table.name.quoted();
    let (op, from) = match &table.key_columns[..] {
        [key] if ops.iter().all(|op| *op == ops[0]) => (
            format!("(${}::text[])[1]", n + 1),
            format!(
                "FROM {table_name} AS t WHERE t.{} = ANY($1::text[])",
                key.quoted()
            ),
        ),
        _ => (
            "b.op".to_owned(),
            format!(
                "FROM b CROSS JOIN LATERAL \
                 (SELECT * FROM {table_name} AS t WHERE {} OFFSET 0) AS t",
                key_join_on(table, "t")
            ),
        ),
    };
    let sql = format!(
        "WITH b AS (SELECT * FROM UNNEST({params}, ${ops}::text[], ${close}::bool[]) \
           AS b({aliases}, op, close)), \
         closed AS (UPDATE {history} SET valid_to = now() WHERE ctid = ANY(ARRAY( \
           SELECT o.ctid FROM b CROSS JOIN LATERAL (SELECT h.ctid FROM {history} AS h \
             WHERE {on_h} AND h.valid_to IS NULL OFFSET 0) AS o \
           WHERE b.close))) \
         INSERT INTO {history} ({columns}, valid_from, op, record, content_hash, run_id) \
         SELECT {from_table}, now(), {op}, t.record, t.content_hash, ${run} {from}",
        ops = n + 1,
        close = n + 2,
        run = n + 3,
        history = history.quoted(),
        on_h = key_join_on(table, "h"),
        columns = table.key_list(),
        from_table = from_table.join(", "),
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for column in columns_of(table, keys.iter().copied()) {
        query = query.bind(column);
    }
    query
        .bind(ops)
        .bind(close)
        .bind(run)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl PgStore {
    /// Marks (or removes, with `remove`) the rows of `keys`, each with its
    /// `delete` version first when history is kept, and adds the count to
    /// the run's row: one transaction, guarded like a batch's.
    pub(in crate::store) async fn delete_keys(
        &self,
        deletion: &crate::store::KeyDeletion<'_>,
    ) -> Result<u64, StoreError> {
        let result = self.delete_keys_noting(deletion).await;
        self.writers.forget(deletion.run);
        result
    }

    /// [`PgStore::delete_keys`], its session noted as a batch write's is
    /// (see [`BatchWrite::commit`]).
    async fn delete_keys_noting(
        &self,
        deletion: &crate::store::KeyDeletion<'_>,
    ) -> Result<u64, StoreError> {
        let table = deletion.table;
        let mut tx = self.pool.begin().await?;
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pg_backend_pid() FROM apisync.runs \
             WHERE id = $1 AND status = 'running' FOR UPDATE",
        )
        .bind(deletion.run)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(pid) = pid else {
            return Err(StoreError::RunClosed);
        };
        self.writers.note(deletion.run, pid);
        let keys: Vec<&[String]> = deletion.keys.iter().map(Vec::as_slice).collect();
        let deleted = delete_rows(&mut tx, table, deletion.run, &keys, deletion.remove).await?;
        ledger::add_deleted(
            Db::Postgres(&mut *tx),
            &dialect::POSTGRES,
            deletion.run,
            deleted,
        )
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// Marks (or, with `remove`, removes) the rows of `keys`, each with its
/// `delete` version first when history is kept; returns how many rows
/// changed (a row marked already is left as it is).
async fn delete_rows(
    conn: &mut PgConnection,
    table: &TableSpec,
    run: RunId,
    keys: &[&[String]],
    remove: bool,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for keys in keys.chunks(LOOKUP_CHUNK * 10) {
        if let Some(history) = &table.history {
            let ops = vec!["delete"; keys.len()];
            let close = vec![true; keys.len()];
            write_versions(conn, table, history, run, keys, &ops, &close).await?;
        }
        let (params, aliases) = key_params(table, 1);
        let sql = if remove {
            format!(
                "DELETE FROM {table} WHERE ctid = ANY({rows})",
                table = table.name.quoted(),
                rows = probe_rows(table, &table.name, &params, &aliases, "true"),
            )
        } else {
            format!(
                "UPDATE {table} SET deleted_at = now(), run_id = ${run} WHERE ctid = ANY({rows})",
                table = table.name.quoted(),
                run = table.key_columns.len() + 1,
                rows = probe_rows(
                    table,
                    &table.name,
                    &params,
                    &aliases,
                    "h.deleted_at IS NULL"
                ),
            )
        };
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for column in columns_of(table, keys.iter().copied()) {
            query = query.bind(column);
        }
        if !remove {
            query = query.bind(run);
        }
        deleted += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(deleted)
}

/// `$first::text[], …` for the key columns, and their aliases `k0, …`.
fn key_params(table: &TableSpec, first: usize) -> (String, String) {
    let n = table.key_columns.len();
    let params: Vec<String> = (first..first + n)
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    (params.join(", "), aliases.join(", "))
}

/// `t."id" = b.k0 AND …`
fn key_join(table: &TableSpec) -> String {
    key_join_on(table, "t")
}

/// `{alias}."id" = b.k0 AND …`
fn key_join_on(table: &TableSpec, alias: &str) -> String {
    table
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{alias}.{} = b.k{i}", c.quoted()))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `ARRAY(…)` of the `ctid`s of the rows of `target` (the job's table or
/// its history, aliased `h`) whose key is one of the keys bound as
/// `params` (`UNNEST` aliases `aliases`) and that match `filter`: one
/// primary-key probe per key. An `UPDATE … FROM UNNEST(…)` on a table
/// whose statistics do not know the filtered column yet (a `deleted_at`
/// just added, a history table just made) was planned as a scan of the
/// whole table per statement; a probe per key in a LATERAL subquery (kept
/// apart by OFFSET 0) and a TID scan do not depend on statistics.
fn probe_rows(
    table: &TableSpec,
    target: &crate::store::Ident,
    params: &str,
    aliases: &str,
    filter: &str,
) -> String {
    format!(
        "ARRAY(SELECT o.ctid FROM UNNEST({params}) AS b({aliases}) \
         CROSS JOIN LATERAL (SELECT h.ctid FROM {target} AS h WHERE {on} AND {filter} OFFSET 0) AS o)",
        target = target.quoted(),
        on = key_join_on(table, "h"),
    )
}

/// Keys asked about in one statement.
const LOOKUP_CHUNK: usize = 1_000;

/// The stored hashes of the rows `asked`, into `existing`.
async fn stored_hashes(
    pool: &PgPool,
    table: &TableSpec,
    batch: &Batch,
    asked: &[usize],
    existing: &mut Stored,
) -> Result<(), StoreError> {
    let n = table.key_columns.len();
    let (params, aliases) = key_params(table, 1);
    // The server compares the hashes and answers only for keys that are
    // missing or stored with another hash: an unchanged page comes back
    // empty, instead of as a thousand rows to send, decode and compare here.
    //
    // A nested loop of primary-key probes, one per key. The planner flattens
    // a plain LATERAL subquery into a join, and for a few thousand keys it
    // then prefers a hash join over a scan of the whole table (measured: 70 ms
    // instead of 20 ms for 5,000 keys in 200,000 rows). `LIMIT 1` (a key
    // matches at most one row) keeps the subquery, and so the probes.
    //
    // A row marked deleted is answered too, whatever its hash: it is restored.
    let (marked, or_marked) = if table.marks {
        ("t.deleted_at IS NOT NULL", " OR s.marked")
    } else {
        ("false", "")
    };
    let sql = format!(
        "SELECT b.ord, s.content_hash, COALESCE(s.marked, false) \
         FROM UNNEST({params}, ${hashes}::bytea[]) WITH ORDINALITY AS b({aliases}, h, ord) \
         LEFT JOIN LATERAL (SELECT t.content_hash, {marked} AS marked FROM {table} AS t \
           WHERE {join} LIMIT 1) AS s \
         ON true WHERE s.content_hash IS DISTINCT FROM b.h{or_marked}",
        hashes = n + 1,
        table = table.name.quoted(),
        join = key_join(table),
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for column in key_arrays(table, batch, asked.iter().copied()) {
        query = query.bind(column);
    }
    let hashes: Vec<&[u8]> = asked
        .iter()
        .map(|&row| &batch.rows[row].record.content_hash[..])
        .collect();
    query = query.bind(hashes);
    // Keys not in the answer are stored with the same hash, unmarked.
    for &row in asked {
        existing.hashes[row] = Some(batch.rows[row].record.content_hash);
    }
    for row in query.fetch_all(pool).await? {
        // ORDINALITY counts from 1.
        let ord: i64 = row.try_get(0)?;
        existing.note(asked, ord - 1, row.try_get(1)?, row.try_get(2)?);
    }
    Ok(())
}

/// New rows, by binary COPY into the table itself, sent in chunks so that
/// the encoded rows never sit in memory all at once.
async fn copy_rows(
    conn: &mut PgConnection,
    table: &TableSpec,
    run: RunId,
    now: DateTime<Utc>,
    batch: &Batch,
    rows: &[usize],
) -> Result<(), StoreError> {
    let columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
    let sql = format!(
        "COPY {table} ({columns}, record, content_hash, first_seen_at, changed_at, run_id) \
         FROM STDIN WITH (FORMAT binary)",
        table = table.name.quoted(),
        columns = columns.join(", "),
    );
    let encoder = BinaryCopy::new(table.key_columns.len(), run, now);
    let mut copy = conn.copy_in_raw(&sql).await?;
    let mut chunk = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
    encoder.header(&mut chunk);
    let mut sent = Ok(());
    for &i in rows {
        encoder.row(&mut chunk, &batch.rows[i].record);
        if chunk.len() >= COPY_CHUNK_BYTES {
            sent = copy.send(chunk.as_slice()).await.map(drop);
            chunk.clear();
            if sent.is_err() {
                break;
            }
        }
    }
    if sent.is_ok() {
        encoder.trailer(&mut chunk);
        sent = copy.send(chunk).await.map(drop);
    }
    if let Err(e) = sent {
        let _ = copy.abort("apisync: sending the page failed").await;
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

/// Bytes of COPY data sent at a time.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// PostgreSQL's binary COPY format for the target table: key columns (text),
/// record (jsonb: version 1 + the JSON text), content_hash (bytea),
/// first_seen_at and changed_at (timestamptz: microseconds since
/// 2000-01-01), run_id (int8).
struct BinaryCopy {
    fields: i16,
    micros: i64,
    run: RunId,
}

impl BinaryCopy {
    fn new(keys: usize, run: RunId, now: DateTime<Utc>) -> Self {
        const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
        Self {
            fields: (keys + 5) as i16,
            micros: now.timestamp_micros() - PG_EPOCH_MICROS,
            run,
        }
    }

    fn header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0i32.to_be_bytes()); // flags
        out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    }

    fn row(&self, out: &mut Vec<u8>, record: &Record) {
        let field = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        out.extend_from_slice(&self.fields.to_be_bytes());
        for key in &record.key {
            field(out, key.as_bytes());
        }
        out.extend_from_slice(&(record.text.len() as i32 + 1).to_be_bytes());
        out.push(1); // jsonb format version, then the JSON text
        out.extend_from_slice(record.text.as_bytes());
        field(out, &record.content_hash);
        field(out, &self.micros.to_be_bytes());
        field(out, &self.micros.to_be_bytes());
        field(out, &self.run.to_be_bytes());
    }

    fn trailer(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(-1i16).to_be_bytes());
    }
}

/// The statement for changed rows, over [`unnest_rows`]; the `WHERE`
/// re-checks the hash.
fn update_sql(table: &TableSpec) -> String {
    update_over(table, &unnest_rows(table))
}

/// [`update_sql`] from the rows of `unnest`, a relation `b` with the key
/// aliases, `record` and `content_hash`; the run is parameter n + 3.
fn update_over(table: &TableSpec, unnest: &str) -> String {
    // A marked row is written whatever its hash: its mark is cleared.
    let (unmark, or_marked) = if table.marks {
        (", deleted_at = NULL", " OR t.deleted_at IS NOT NULL")
    } else {
        ("", "")
    };
    format!(
        "UPDATE {table} AS t SET record = b.record, content_hash = b.content_hash, \
           changed_at = now(), run_id = ${run_param}{unmark} \
         FROM {unnest} \
         WHERE {join} AND (t.content_hash IS DISTINCT FROM b.content_hash{or_marked})",
        table = table.name.quoted(),
        run_param = table.key_columns.len() + 3,
        join = key_join(table),
    )
}

/// [`update_sql`] with the rows' versions in the same statement: the
/// updated rows (`RETURNING`, with the op bound after the run) close their
/// key's open version and become its new one. One round trip per batch:
/// a batch of a few changed rows cost two statements' latency before.
fn versioned_update_sql(table: &TableSpec, history: &crate::store::Ident) -> String {
    let n = table.key_columns.len();
    let returned: Vec<String> = table
        .key_columns
        .iter()
        .map(|c| format!("t.{}", c.quoted()))
        .collect();
    let from_upd: Vec<String> = table
        .key_columns
        .iter()
        .map(|c| format!("u.{}", c.quoted()))
        .collect();
    let on_h: Vec<String> = table
        .key_columns
        .iter()
        .map(|c| format!("h.{c} = u.{c}", c = c.quoted()))
        .collect();
    let (params, aliases) = key_params(table, 1);
    let update = update_over(
        table,
        &format!(
            "UNNEST({params}, ${record}::text[]::jsonb[], ${hash}::bytea[], ${ops}::text[]) \
             AS b({aliases}, record, content_hash, op)",
            record = n + 1,
            hash = n + 2,
            ops = n + 4,
        ),
    );
    format!(
        "WITH u AS ({update} RETURNING {returned}, t.record, t.content_hash, b.op), \
         closed AS (UPDATE {history} SET valid_to = now() WHERE ctid = ANY(ARRAY( \
           SELECT o.ctid FROM u CROSS JOIN LATERAL (SELECT h.ctid FROM {history} AS h \
             WHERE {on_h} AND h.valid_to IS NULL OFFSET 0) AS o))) \
         INSERT INTO {history} ({columns}, valid_from, op, record, content_hash, run_id) \
         SELECT {from_upd}, now(), u.op, u.record, u.content_hash, ${run} FROM u",
        returned = returned.join(", "),
        history = history.quoted(),
        on_h = on_h.join(" AND "),
        columns = table.key_list(),
        from_upd = from_upd.join(", "),
        run = n + 3,
    )
}

/// The statement for new and changed rows in one upsert (the simple path),
/// over [`unnest_rows`].
fn upsert_sql(table: &TableSpec) -> String {
    let columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
    let (_, aliases) = key_params(table, 1);
    let (unmark, or_marked) = if table.marks {
        (", deleted_at = NULL", " OR t.deleted_at IS NOT NULL")
    } else {
        ("", "")
    };
    format!(
        "INSERT INTO {table} AS t ({columns}, record, content_hash, first_seen_at, changed_at, run_id) \
         SELECT {aliases}, b.record, b.content_hash, now(), now(), ${run_param} \
         FROM {unnest} \
         ON CONFLICT ({columns}) DO UPDATE SET record = excluded.record, \
           content_hash = excluded.content_hash, changed_at = excluded.changed_at, \
           run_id = excluded.run_id{unmark} \
         WHERE t.content_hash IS DISTINCT FROM excluded.content_hash{or_marked}",
        table = table.name.quoted(),
        columns = columns.join(", "),
        run_param = table.key_columns.len() + 3,
        unnest = unnest_rows(table),
    )
}

/// `UNNEST(…) AS b(k0, …, record, content_hash)` over the parameters that
/// [`bind_rows`] binds: the key arrays, then the records and the hashes;
/// the run is the parameter after them.
fn unnest_rows(table: &TableSpec) -> String {
    let n = table.key_columns.len();
    let (params, aliases) = key_params(table, 1);
    format!(
        "UNNEST({params}, ${record}::text[]::jsonb[], ${hash}::bytea[]) \
         AS b({aliases}, record, content_hash)",
        record = n + 1,
        hash = n + 2,
    )
}

/// Runs `sql`, a statement over [`unnest_rows`], for the rows `rows` of the batch.
async fn execute_rows(
    conn: &mut PgConnection,
    sql: String,
    table: &TableSpec,
    run: RunId,
    batch: &Batch,
    rows: &[usize],
) -> Result<(), StoreError> {
    bind_rows(sqlx::query(AssertSqlSafe(sql)), table, batch, rows)
        .bind(run)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Binds the key arrays, the records (text[], cast to jsonb[]) and the hashes (bytea[]).
fn bind_rows<'q>(
    mut query: PgQuery<'q>,
    table: &TableSpec,
    batch: &'q Batch,
    rows: &[usize],
) -> PgQuery<'q> {
    for column in key_arrays(table, batch, rows.iter().copied()) {
        query = query.bind(column);
    }
    let records: Vec<&str> = rows
        .iter()
        .map(|&i| batch.rows[i].record.text.as_str())
        .collect();
    let hashes: Vec<&[u8]> = rows
        .iter()
        .map(|&i| batch.rows[i].record.content_hash.as_slice())
        .collect();
    query.bind(records).bind(hashes)
}
