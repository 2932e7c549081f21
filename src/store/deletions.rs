//! Finding the stored keys a complete run did not see, and the write that
//! marks or removes them. Written once for both stores: the keys are read
//! in pages of the primary key's order (keyset paging: each page starts
//! after the last key of the previous one), so memory holds one page and
//! the keys found gone, never the table.

use sqlx::{AssertSqlSafe, Row};

use super::dialect::per_db;
use super::{Store, StoreError, TableSpec};
use crate::record::key_fingerprint;
use crate::run::RunId;
use crate::seen_keys::SeenKeys;

/// Keys read per statement.
const KEYS_PER_PAGE: i64 = 10_000;

/// The live stored keys a run did not see: how many, and the first `keep`
/// of them.
#[derive(Debug, Default)]
pub struct Unseen {
    pub count: u64,
    pub keys: Vec<Vec<String>>,
}

/// The deletion step's write: the rows of `keys` marked (`remove` false)
/// or removed, in one transaction that also counts them in the run's row.
#[derive(Debug, Clone, Copy)]
pub struct KeyDeletion<'a> {
    pub table: &'a TableSpec,
    pub run: RunId,
    pub keys: &'a [Vec<String>],
    pub remove: bool,
}

impl Store {
    /// The live keys of the job's table whose fingerprint is not in `seen`,
    /// keeping the first `keep`. A key is compared by its 64-bit fingerprint,
    /// the one the run kept for each key it read: two keys that share one
    /// make a gone key look seen (it stays, and a later run may find it),
    /// never a seen key look gone.
    pub async fn unseen_keys(
        &self,
        table: &TableSpec,
        seen: &SeenKeys,
        keep: usize,
    ) -> Result<Unseen, StoreError> {
        self.read_unseen(table, seen, keep)
            .await
            .map_err(|e| e.on_table(table))
    }

    async fn read_unseen(
        &self,
        table: &TableSpec,
        seen: &SeenKeys,
        keep: usize,
    ) -> Result<Unseen, StoreError> {
        let n = table.key_columns.len();
        let keys = table.key_list();
        let after: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        let page = |from: &str| {
            format!(
                "SELECT {keys} FROM {table} WHERE {live}{from} ORDER BY {keys} LIMIT {KEYS_PER_PAGE}",
                table = table.name.quoted(),
                live = table.live(),
            )
        };
        let first = page("");
        let next = page(&format!(" AND ({keys}) > ({})", after.join(", ")));
        let mut unseen = Unseen::default();
        let mut last: Option<Vec<String>> = None;
        loop {
            let sql = if last.is_some() { &next } else { &first };
            let rows: Vec<Vec<String>> = per_db!(self.pools(), pool => {
                let mut query = sqlx::query(AssertSqlSafe(sql.clone()));
                for part in last.iter().flatten() {
                    query = query.bind(part.as_str());
                }
                query
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| (0..n).map(|i| row.try_get::<String, _>(i)).collect())
                    .collect::<Result<_, sqlx::Error>>()?
            });
            let full_page = rows.len() as i64 == KEYS_PER_PAGE;
            for key in &rows {
                if !seen.contains(key_fingerprint(key) as u64) {
                    unseen.count += 1;
                    if unseen.keys.len() < keep {
                        unseen.keys.push(key.clone());
                    }
                }
            }
            if !full_page {
                return Ok(unseen);
            }
            last = rows.into_iter().last();
        }
    }

    /// Marks or removes the rows of `deletion.keys` (with their `delete`
    /// versions when history is kept) and counts them in the run's row, in
    /// one transaction; returns how many rows it changed.
    pub async fn delete_keys(&self, deletion: &KeyDeletion<'_>) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(pg) => pg.delete_keys(deletion).await,
            Store::Sqlite(db) => db.delete_keys(deletion).await,
        }
        .map_err(|e| e.on_table(deletion.table))
    }
}
