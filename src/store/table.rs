//! The job's target table: its name and key columns, created when missing,
//! an existing one checked against what the job needs, and whether it is
//! empty. Written once for both stores; the column types come from the
//! [`Dialect`].

use sqlx::{AssertSqlSafe, Row};

use super::dialect::{Dialect, per_db};
use super::ident::{HISTORY_COLUMNS, MARK_COLUMN, RESERVED_COLUMNS};
use super::{Store, StoreError};
use crate::record::KeyField;
use crate::store::Ident;

/// A job's target table: its name and key columns, whether its rows carry
/// `deleted_at` (`deletions = "mark"`), and the table of its versions
/// (`history = true`).
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: Ident,
    pub key_columns: Vec<Ident>,
    pub marks: bool,
    pub history: Option<Ident>,
}

impl TableSpec {
    pub fn new(name: Ident, key: &[KeyField]) -> Self {
        Self {
            name,
            key_columns: key.iter().map(|field| field.column.clone()).collect(),
            marks: false,
            history: None,
        }
    }

    /// Rows get `deleted_at`, set when a complete run finds them gone.
    ///
    /// # Errors
    /// When a key column is named `deleted_at`.
    pub fn marking_deletions(self) -> Result<Self, String> {
        self.refuse_key_columns(&[MARK_COLUMN], "deletions = \"mark\"")?;
        Ok(Self {
            marks: true,
            ..self
        })
    }

    /// Every version goes to `<table>_history` too.
    ///
    /// # Errors
    /// When that name is longer than an identifier may be, or a key column
    /// takes the name of a history column.
    pub fn keeping_history(self) -> Result<Self, String> {
        self.refuse_key_columns(&HISTORY_COLUMNS, "history = true")?;
        Ok(Self {
            history: Some(self.name.history_table()?),
            ..self
        })
    }

    fn refuse_key_columns(&self, names: &[&str], feature: &str) -> Result<(), String> {
        match self.key_columns.iter().find(|c| {
            names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(c.as_str()))
        }) {
            Some(column) => Err(format!(
                "the key column `{column}` has the name of a column {feature} adds; name it \
                 otherwise, as {{ field = \"…\", column = \"{column}_\" }}"
            )),
            None => Ok(()),
        }
    }

    /// The quoted key columns, joined by `, `.
    pub fn key_list(&self) -> String {
        self.key_columns
            .iter()
            .map(Ident::quoted)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Live rows only: `deleted_at IS NULL` when rows are marked, else
    /// every row (`true`).
    pub fn live(&self) -> &'static str {
        if self.marks {
            "deleted_at IS NULL"
        } else {
            "true"
        }
    }
}

/// One column of an existing table, as the store's catalogue describes it.
struct Column {
    name: String,
    /// The type as the catalogue spells it.
    type_name: String,
    in_primary_key: bool,
    /// A collation that is not deterministic (PostgreSQL), if any.
    nondeterministic_collation: Option<String>,
}

impl Store {
    /// Creates the job's table when missing; refuses one whose primary key or
    /// columns do not match, since the key constraint is what guarantees one
    /// row per key.
    pub async fn prepare_table(&self, table: &TableSpec) -> Result<(), StoreError> {
        self.create_and_check(table)
            .await
            .map_err(|e| e.on_table(table))
    }

    async fn create_and_check(&self, table: &TableSpec) -> Result<(), StoreError> {
        self.create_and_check_rows(table).await?;
        if let Some(history) = &table.history {
            self.prepare_history(table, history).await?;
        }
        Ok(())
    }

    async fn create_and_check_rows(&self, table: &TableSpec) -> Result<(), StoreError> {
        let dialect = self.dialect();
        let key_columns: Vec<String> = table.key_columns.iter().map(|c| c.quoted()).collect();
        let key_defs: String = key_columns
            .iter()
            .map(|c| format!("{c} {} NOT NULL, ", dialect.key_ddl))
            .collect();
        let data_defs: String = RESERVED_COLUMNS
            .iter()
            .zip(dialect.data_types)
            .map(|(column, type_name)| format!("{column} {type_name} NOT NULL, "))
            .collect();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} ({key_defs}{data_defs}PRIMARY KEY ({keys}))",
            table = table.name.quoted(),
            keys = key_columns.join(", "),
        );
        // A table made before `deletions = "mark"` was set gets its column
        // here: a nullable column without a default is a change to the
        // catalogue alone on both stores (no row is rewritten), and every
        // existing row reads as live.
        let add_marks = format!(
            "ALTER TABLE {table} ADD COLUMN deleted_at {}",
            dialect.time_ddl,
            table = table.name.quoted(),
        );
        // `archive.products`: its schema first (PostgreSQL; SQLite refuses
        // such names in `check`).
        // Only when missing: CREATE SCHEMA checks the database's CREATE
        // privilege even with IF NOT EXISTS, which a role confined to a
        // schema a DBA made does not have.
        let schema = table.name.schema();
        let columns = per_db!(self.pools(), pool => {
            if let Some(schema) = &schema {
                let missing: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NULL")
                    .bind(schema.quoted())
                    .fetch_one(pool)
                    .await?;
                if missing {
                    let create = format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted());
                    sqlx::query(AssertSqlSafe(create)).execute(pool).await?;
                }
            }
            sqlx::query(AssertSqlSafe(create)).execute(pool).await?;
            let read = || async {
                sqlx::query(dialect.columns)
                    .bind(table.name.as_str())
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok(Column {
                            name: row.try_get(0)?,
                            type_name: row.try_get(1)?,
                            in_primary_key: row.try_get(2)?,
                            nondeterministic_collation: row.try_get(3)?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            };
            let mut columns = read().await?;
            if table.marks && !columns.iter().any(|c| c.name == "deleted_at") {
                sqlx::query(AssertSqlSafe(add_marks)).execute(pool).await?;
                columns = read().await?;
            }
            columns
        });
        shape_verdict(table, dialect, &columns)
    }

    /// Creates the history table when missing, and then, in the same
    /// transaction, starts each stored key's history with its current row
    /// (`insert` from its `changed_at`, or `delete` from its `deleted_at`
    /// for a marked row): a history turned on for a table with rows holds
    /// every key from the start.
    async fn prepare_history(&self, table: &TableSpec, history: &Ident) -> Result<(), StoreError> {
        let dialect = self.dialect();
        let keys = table.key_list();
        let key_defs: String = table
            .key_columns
            .iter()
            .map(|c| format!("{} {} NOT NULL, ", c.quoted(), dialect.key_ddl))
            .collect();
        let [record, hash, _, _, run] = dialect.data_types;
        let create = format!(
            "CREATE TABLE {history} ({key_defs}valid_from {time} NOT NULL, valid_to {time}, \
             op {text} NOT NULL, record {record} NOT NULL, content_hash {hash} NOT NULL, \
             run_id {run} NOT NULL, PRIMARY KEY ({keys}, valid_from)){options}",
            history = history.quoted(),
            options = dialect.history_options,
            time = dialect.time_ddl,
            text = dialect.key_type,
        );
        let (op, from) = if table.marks {
            (
                "CASE WHEN deleted_at IS NULL THEN 'insert' ELSE 'delete' END",
                "COALESCE(deleted_at, changed_at)",
            )
        } else {
            ("'insert'", "changed_at")
        };
        let seed = format!(
            "INSERT INTO {history} ({keys}, valid_from, op, record, content_hash, run_id) \
             SELECT {keys}, {from}, {op}, record, content_hash, run_id FROM {table}",
            history = history.quoted(),
            table = table.name.quoted(),
        );
        per_db!(self.pools(), pool => {
            let mut tx = pool.begin().await?;
            let exists: bool = sqlx::query_scalar(dialect.table_exists)
                .bind(history.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if !exists {
                sqlx::query(AssertSqlSafe(create)).execute(&mut *tx).await?;
                let seeded = sqlx::query(AssertSqlSafe(seed)).execute(&mut *tx).await?;
                tracing::info!(
                    table = %history,
                    rows = seeded.rows_affected(),
                    "Created the history table; each stored key's history starts with its current row."
                );
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// `table` as it stands, for reading without writing: `None` when it
    /// does not exist yet; rows marked only if `table` marks them and the
    /// column is there already (a sync adds it).
    pub async fn existing_table(&self, table: &TableSpec) -> Result<Option<TableSpec>, StoreError> {
        let dialect = self.dialect();
        let found = async {
            Ok::<_, StoreError>(per_db!(self.pools(), pool => {
                let exists: bool = sqlx::query_scalar(dialect.table_exists)
                    .bind(table.name.as_str())
                    .fetch_one(pool)
                    .await?;
                let names: Vec<String> = if exists {
                    sqlx::query(dialect.columns)
                        .bind(table.name.as_str())
                        .fetch_all(pool)
                        .await?
                        .iter()
                        .map(|row| row.try_get(0))
                        .collect::<Result<_, sqlx::Error>>()?
                } else {
                    Vec::new()
                };
                exists.then_some(names)
            }))
        };
        let Some(columns) = found.await.map_err(|e| e.on_table(table))? else {
            return Ok(None);
        };
        Ok(Some(TableSpec {
            marks: table.marks && columns.iter().any(|c| c == "deleted_at"),
            history: None,
            ..table.clone()
        }))
    }

    /// Whether the job's history table holds no version (`false` when the
    /// job keeps no history).
    pub async fn history_is_empty(&self, table: &TableSpec) -> Result<bool, StoreError> {
        let Some(history) = &table.history else {
            return Ok(false);
        };
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", history.quoted());
        let empty = async {
            Ok::<bool, StoreError>(per_db!(self.pools(), pool => {
                sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await?
            }))
        };
        empty.await.map_err(|e| e.on_table(table))
    }

    /// The live rows of the job's table (all rows, unless rows are marked).
    pub async fn live_rows(&self, table: &TableSpec) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            table.name.quoted(),
            table.live()
        );
        let count = async {
            Ok::<i64, StoreError>(per_db!(self.pools(), pool => {
                sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await?
            }))
        };
        let count = count.await.map_err(|e| e.on_table(table))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Whether the job's table holds no row.
    pub async fn table_is_empty(&self, table: &TableSpec) -> Result<bool, StoreError> {
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", table.name.quoted());
        let empty = async {
            Ok::<bool, StoreError>(per_db!(self.pools(), pool => {
                sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await?
            }))
        };
        empty.await.map_err(|e| e.on_table(table))
    }
}

/// The verdict on an existing target table, given its `columns` from the
/// catalogue: every column the job writes, of its type; key columns with a
/// deterministic collation; and a primary key of exactly the job's key
/// columns.
fn shape_verdict(
    table: &TableSpec,
    dialect: &Dialect,
    columns: &[Column],
) -> Result<(), StoreError> {
    let mut problems = Vec::new();
    let marks = table.marks.then_some(("deleted_at", dialect.time_type));
    let expected = table
        .key_columns
        .iter()
        .map(|c| (c.as_str(), dialect.key_type))
        .chain(RESERVED_COLUMNS.into_iter().zip(dialect.data_types))
        .chain(marks);
    for (name, wanted) in expected {
        match columns.iter().find(|column| column.name == name) {
            None => problems.push(format!("column {name} ({wanted}) is missing")),
            Some(column) if !column.type_name.eq_ignore_ascii_case(wanted) => problems.push(
                format!("column {name} is {}, expected {wanted}", column.type_name),
            ),
            Some(_) => {}
        }
    }
    for key in &table.key_columns {
        let collation = columns
            .iter()
            .find(|column| column.name == key.as_str())
            .and_then(|column| column.nondeterministic_collation.as_ref());
        if let Some(collation) = collation {
            problems.push(format!(
                "key column {key} uses the collation \"{collation}\", which is not \
                 deterministic: keys that differ (as A and a) would compare equal and one \
                 record would overwrite the other; use a deterministic collation such as \
                 \"C\" (ALTER TABLE {table} ALTER COLUMN {quoted} TYPE text COLLATE \"C\")",
                table = table.name.quoted(),
                quoted = key.quoted(),
            ));
        }
    }
    let mut primary_key: Vec<&str> = columns
        .iter()
        .filter(|column| column.in_primary_key)
        .map(|column| column.name.as_str())
        .collect();
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
