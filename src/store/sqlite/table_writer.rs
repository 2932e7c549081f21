//! The SQLite table writer: the lookups a plan needs, and a batch's write.
//!
//! Lookups join the batch's keys, given as a `VALUES` list, to the table's
//! primary key, in chunks (SQLite binds each value separately and caps how
//! many one statement takes). The write is one `IMMEDIATE` transaction: a
//! guard (the run is still `running`), the rows by chunked upsert, the new
//! rejects, and the ledger's part (`ledger::record_batch`).

use sqlx::{AssertSqlSafe, Row};

use super::SqliteStore;
use crate::run::RunId;
use crate::store::dialect::{self, Db};
use crate::store::plan::{Lookup, Stored};
use crate::store::{Batch, BatchWrite, StoreError, TableSpec, ledger};

impl SqliteStore {
    /// Answers a plan's lookups on one connection: the stored hashes, then
    /// the stored rejects, each in chunks.
    pub(in crate::store) async fn look_up(
        &self,
        lookup: &Lookup<'_>,
    ) -> Result<Stored, StoreError> {
        let Lookup { job, batch, .. } = *lookup;
        let mut stored = Stored::for_rows(batch.rows.len());
        let mut conn = self.pool.acquire().await?;
        for chunk in lookup.asked.chunks(LOOKUP_CHUNK) {
            let chunk = Lookup {
                asked: chunk,
                ..*lookup
            };
            stored_hashes(&mut conn, &chunk, &mut stored).await?;
        }
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
                    stored.rejects.insert(hash);
                }
            }
        }
        Ok(stored)
    }

    /// Writes a planned batch in one transaction.
    pub(in crate::store) async fn write(&self, write: &BatchWrite<'_>) -> Result<(), StoreError> {
        let BatchWrite {
            job,
            table,
            run,
            batch,
            plan,
            ..
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
        // One time for the whole transaction, as PostgreSQL's now() is.
        let now = self.transaction_time();
        let written: Vec<usize> = plan
            .inserts
            .iter()
            .chain(&plan.updates)
            .chain(&plan.restores)
            .copied()
            .collect();
        for chunk in written.chunks(WRITE_CHUNK) {
            upsert(&mut tx, table, run, &now, batch, chunk).await?;
        }
        if let Some(history) = &table.history {
            let versions = [
                (&plan.inserts, "insert"),
                (&plan.updates, "update"),
                (&plan.restores, "restore"),
            ];
            // In a history that held no version when the run began, a key
            // inserted for the first time in the run has no open version
            // (see the PostgreSQL writer's `write_versions_of`).
            let mut keyed: Vec<(&[String], &str, bool)> = Vec::new();
            for (rows, op) in versions {
                for &i in rows.iter() {
                    let row = &batch.rows[i];
                    let close = op != "insert" || !write.fresh_history || row.repeat;
                    keyed.push((row.record.key.as_slice(), op, close));
                }
            }
            write_versions(&mut tx, table, history, run, &now, &keyed).await?;
        }
        if !plan.tombstoned.is_empty() {
            let keys: Vec<&[String]> = plan
                .tombstoned
                .iter()
                .map(|&i| batch.rows[i].record.key.as_slice())
                .collect();
            // A job with tombstones deletes; one that does not mark removes.
            delete_rows(&mut tx, table, run, &now, &keys, !table.marks).await?;
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
        ledger::record_batch(Db::Sqlite(&mut *tx), &dialect::SQLITE, write).await?;
        tx.commit().await?;
        Ok(())
    }
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
    now: &str,
    batch: &Batch,
    rows: &[usize],
) -> Result<(), StoreError> {
    let columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
    let row = format!("({}?, ?, ?, ?, ?)", "?, ".repeat(columns.len()));
    // A marked row is written whatever its hash: its mark is cleared.
    let (unmark, or_marked) = if table.marks {
        (", deleted_at = NULL", " OR deleted_at IS NOT NULL")
    } else {
        ("", "")
    };
    let sql = format!(
        "INSERT INTO {table} ({columns}, record, content_hash, first_seen_at, changed_at, run_id) \
         VALUES {values} \
         ON CONFLICT ({columns}) DO UPDATE SET record = excluded.record, \
           content_hash = excluded.content_hash, changed_at = excluded.changed_at, \
           run_id = excluded.run_id{unmark} \
         WHERE content_hash IS NOT excluded.content_hash{or_marked}",
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
            .bind(now)
            .bind(now)
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
async fn stored_hashes(
    conn: &mut sqlx::SqliteConnection,
    lookup: &Lookup<'_>,
    existing: &mut Stored,
) -> Result<(), StoreError> {
    let (table, batch, asked) = (lookup.table, lookup.batch, lookup.asked);
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
    let marked = if table.marks {
        "t.deleted_at IS NOT NULL"
    } else {
        "0"
    };
    let sql = format!(
        "WITH asked(ord, {aliases}) AS (VALUES {values}) \
         SELECT asked.ord, t.content_hash, {marked} FROM asked JOIN {table} AS t ON {join}",
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
        existing.note(asked, ord, Some(hash), found.try_get(2)?);
    }
    Ok(())
}

/// `WITH b(k0, …[, op]) AS (VALUES (?, …), …)` for `rows` keys of `table`,
/// each with an `op` when `with_op`.
fn keys_cte(table: &TableSpec, rows: usize, with_op: bool) -> String {
    let n = table.key_columns.len() + usize::from(with_op);
    let mut aliases: Vec<String> = (0..table.key_columns.len())
        .map(|i| format!("k{i}"))
        .collect();
    if with_op {
        aliases.push("op".to_owned());
    }
    let row = format!("(?{})", ", ?".repeat(n - 1));
    format!(
        "WITH b({}) AS (VALUES {})",
        aliases.join(", "),
        vec![row; rows].join(", ")
    )
}

/// Closes the open versions of `keys` at `now`.
async fn close_versions(
    conn: &mut sqlx::SqliteConnection,
    table: &TableSpec,
    history: &crate::store::Ident,
    now: &str,
    keys: &[&[String]],
) -> Result<(), StoreError> {
    let close = format!(
        "{cte} UPDATE {history} AS h SET valid_to = ? \
         WHERE h.valid_to IS NULL AND {matches}",
        cte = keys_cte(table, keys.len(), false),
        history = history.quoted(),
        matches = key_in_b(table, "h"),
    );
    let mut query = sqlx::query(AssertSqlSafe(close));
    for key in keys {
        for part in *key {
            query = query.bind(part.as_str());
        }
    }
    query.bind(now).execute(&mut *conn).await?;
    Ok(())
}

/// `({alias}."id", …) IN (SELECT k0, … FROM b)`: a lookup of each of the
/// CTE's keys in the primary key. (`EXISTS (SELECT … WHERE alias.id =
/// b.k0)` was run as a scan of the whole table: 1.4 s a statement at
/// 200,000 rows.)
fn key_in_b(table: &TableSpec, alias: &str) -> String {
    let columns: Vec<String> = table
        .key_columns
        .iter()
        .map(|c| format!("{alias}.{}", c.quoted()))
        .collect();
    let aliases: Vec<String> = (0..table.key_columns.len())
        .map(|i| format!("k{i}"))
        .collect();
    format!(
        "({}) IN (SELECT {} FROM b)",
        columns.join(", "),
        aliases.join(", ")
    )
}

/// `{alias}."id" = b.k0 AND …`
fn on_keys(table: &TableSpec, alias: &str) -> String {
    table
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{alias}.{} = b.k{i}", c.quoted()))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The versions of the rows of `keyed` as they now stand in the table, one
/// per key with its op, each closing the key's open version (when its flag
/// says to look for one) at `now`, the
/// new version's `valid_from` (see the PostgreSQL writer's `write_versions`).
async fn write_versions(
    conn: &mut sqlx::SqliteConnection,
    table: &TableSpec,
    history: &crate::store::Ident,
    run: RunId,
    now: &str,
    keyed: &[(&[String], &str, bool)],
) -> Result<(), StoreError> {
    let columns = table.key_list();
    let from_table: Vec<String> = table
        .key_columns
        .iter()
        .map(|c| format!("t.{}", c.quoted()))
        .collect();
    for chunk in keyed.chunks(WRITE_CHUNK) {
        let closing: Vec<&[String]> = chunk
            .iter()
            .filter(|(_, _, close)| *close)
            .map(|(key, _, _)| *key)
            .collect();
        if !closing.is_empty() {
            close_versions(conn, table, history, now, &closing).await?;
        }
        let insert = format!(
            "{cte} INSERT INTO {history} ({columns}, valid_from, op, record, content_hash, run_id) \
             SELECT {from_table}, ?, b.op, t.record, t.content_hash, ? \
             FROM b JOIN {table} AS t ON {on}",
            cte = keys_cte(table, chunk.len(), true),
            history = history.quoted(),
            from_table = from_table.join(", "),
            table = table.name.quoted(),
            on = on_keys(table, "t"),
        );
        let mut query = sqlx::query(AssertSqlSafe(insert));
        for (key, op, _) in chunk {
            for part in *key {
                query = query.bind(part.as_str());
            }
            query = query.bind(*op);
        }
        query.bind(now).bind(run).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Marks (or, with `remove`, removes) the rows of `keys` at `now`, each
/// with its `delete` version first when history is kept; returns how many
/// rows changed (a row marked already is left as it is).
async fn delete_rows(
    conn: &mut sqlx::SqliteConnection,
    table: &TableSpec,
    run: RunId,
    now: &str,
    keys: &[&[String]],
    remove: bool,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for keys in keys.chunks(WRITE_CHUNK) {
        if let Some(history) = &table.history {
            let keyed: Vec<(&[String], &str, bool)> =
                keys.iter().map(|&key| (key, "delete", true)).collect();
            write_versions(conn, table, history, run, now, &keyed).await?;
        }
        let cte = keys_cte(table, keys.len(), false);
        let matches = key_in_b(table, "t");
        let sql = if remove {
            format!(
                "{cte} DELETE FROM {table} AS t WHERE {matches}",
                table = table.name.quoted()
            )
        } else {
            format!(
                "{cte} UPDATE {table} AS t SET deleted_at = ?, run_id = ? \
                 WHERE t.deleted_at IS NULL AND {matches}",
                table = table.name.quoted()
            )
        };
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for key in keys {
            for part in *key {
                query = query.bind(part.as_str());
            }
        }
        if !remove {
            query = query.bind(now).bind(run);
        }
        deleted += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(deleted)
}

impl SqliteStore {
    /// Marks (or removes, with `remove`) the rows of `keys`, each with its
    /// `delete` version first when history is kept, and adds the count to
    /// the run's row, in one transaction.
    pub(in crate::store) async fn delete_keys(
        &self,
        deletion: &crate::store::KeyDeletion<'_>,
    ) -> Result<u64, StoreError> {
        let table = deletion.table;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let ours: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM apisync_runs WHERE id = ? AND status = 'running'")
                .bind(deletion.run)
                .fetch_optional(&mut *tx)
                .await?;
        if ours.is_none() {
            return Err(StoreError::RunClosed);
        }
        let now = self.transaction_time();
        let keys: Vec<&[String]> = deletion.keys.iter().map(Vec::as_slice).collect();
        let deleted =
            delete_rows(&mut tx, table, deletion.run, &now, &keys, deletion.remove).await?;
        ledger::add_deleted(
            Db::Sqlite(&mut *tx),
            &dialect::SQLITE,
            deletion.run,
            deleted,
        )
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
