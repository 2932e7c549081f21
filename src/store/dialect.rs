//! What the two SQL dialects disagree on, for the code written once over
//! both stores (the ledger, the target table's checks): where the internal
//! tables live, the clock, the target table's column types and catalogue,
//! and the JSON functions of the watermark. Everything else is one SQL text
//! for both: placeholders are `$N` (sqlx's SQLite driver takes them too),
//! casts `CAST(… AS …)`.
//!
//! [`Db`] holds a connection source of either backend, and [`per_db!`]
//! expands one block of sqlx code against whichever it holds: the code is
//! written once and compiled once per backend, as a generic function would
//! be, without spelling out sqlx's trait bounds.

use super::migrations::{self, Files};

/// A connection source of one backend: pools, or connections inside a
/// transaction.
pub(super) enum Db<P, S> {
    Postgres(P),
    Sqlite(S),
}

/// Runs `$body` with `$conn` bound to whichever backend's connection
/// source `$db` holds.
macro_rules! per_db {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::store::dialect::Db::Postgres($conn) => $body,
            $crate::store::dialect::Db::Sqlite($conn) => $body,
        }
    };
}
pub(super) use per_db;

#[derive(Debug)]
pub(super) struct Dialect {
    /// The internal tables' names are this and `runs`, `job_state`,
    /// `rejects`: PostgreSQL keeps them in the schema `apisync`, SQLite
    /// (no schemas) prefixes them `apisync_`.
    internal: &'static str,
    /// The current time, as the store keeps timestamps: `timestamptz`, or
    /// RFC 3339 text in UTC (what sqlx's chrono decoding reads back).
    pub now: &'static str,
    pub migrations: Files,
    /// The table sqlx records applied migrations in.
    pub migrations_table: &'static str,
    /// Key columns: as created, and as the catalogue names their type.
    pub key_ddl: &'static str,
    pub key_type: &'static str,
    /// `deleted_at`, `valid_from` and `valid_to`: as created, and as the
    /// catalogue names their type.
    pub time_ddl: &'static str,
    pub time_type: &'static str,
    /// Whether the table named `$1` exists.
    pub table_exists: &'static str,
    /// Storage options after a history table's column list.
    pub history_options: &'static str,
    /// The types of [`super::ident::RESERVED_COLUMNS`], in that order.
    pub data_types: [&'static str; 5],
    /// The target table's columns: `(name, type, in the primary key,
    /// non-deterministic collation or NULL)`, for the table named `$1`.
    pub columns: &'static str,
    /// Merges `{$4: json($2)}` into the job's state (`$1` the job, `$3`
    /// the run), creating the row when missing.
    pub save_state: &'static str,
}

pub(super) const POSTGRES: Dialect = Dialect {
    internal: "apisync.",
    now: "now()",
    migrations: migrations::POSTGRES,
    migrations_table: "apisync._sqlx_migrations",
    // Keys are identifiers, compared byte for byte: the "C" collation
    // makes every primary-key probe a memcmp instead of a strcoll, and
    // keeps the index valid across C library upgrades that change a
    // locale's sort order.
    key_ddl: "text COLLATE \"C\"",
    key_type: "text",
    time_ddl: "timestamptz",
    time_type: "timestamp with time zone",
    table_exists: "SELECT to_regclass(CASE WHEN strpos($1, '.') > 0 \
         THEN quote_ident(split_part($1, '.', 1)) || '.' || quote_ident(split_part($1, '.', 2)) \
         ELSE quote_ident($1) END) IS NOT NULL",
    // Room on each page for the closed copy of a version: closing it (only
    // `valid_to` changes, which no index holds) is then a HOT update on the
    // same page, with no index entry to add.
    history_options: " WITH (fillfactor = 90)",
    data_types: [
        "jsonb",
        "bytea",
        "timestamp with time zone",
        "timestamp with time zone",
        "bigint",
    ],
    // With each column its collation, when not deterministic: one such as
    // an ICU case-insensitive collation makes `A` and `a` one key.
    columns: "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
              COALESCE(a.attnum = ANY(i.indkey), false), \
              CASE WHEN NOT c.collisdeterministic THEN c.collname::text END \
              FROM pg_attribute a \
              LEFT JOIN pg_collation c ON c.oid = a.attcollation \
              LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
              WHERE a.attrelid = to_regclass(CASE WHEN strpos($1, '.') > 0 \
              THEN quote_ident(split_part($1, '.', 1)) || '.' || quote_ident(split_part($1, '.', 2)) \
              ELSE quote_ident($1) END) AND a.attnum > 0 \
              AND NOT a.attisdropped",
    save_state: "INSERT INTO apisync.job_state (job, state, run_id) \
         VALUES ($1, jsonb_build_object(CAST($4 AS text), CAST($2 AS text)::jsonb), $3) \
         ON CONFLICT (job) DO UPDATE SET state = apisync.job_state.state || excluded.state, \
           run_id = excluded.run_id, updated_at = now()",
};

pub(super) const SQLITE: Dialect = Dialect {
    internal: "apisync_",
    now: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    migrations: migrations::SQLITE,
    migrations_table: "apisync_migrations",
    key_ddl: "TEXT",
    key_type: "TEXT",
    time_ddl: "TEXT",
    time_type: "TEXT",
    table_exists: "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
    history_options: "",
    data_types: ["TEXT", "BLOB", "TEXT", "TEXT", "INTEGER"],
    columns: "SELECT name, type, pk > 0, NULL FROM pragma_table_info($1)",
    save_state: "INSERT INTO apisync_job_state (job, state, run_id) \
         VALUES ($1, json_object($4, json($2)), $3) \
         ON CONFLICT (job) DO UPDATE SET \
           state = json_patch(apisync_job_state.state, excluded.state), \
           run_id = excluded.run_id, \
           updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
};

impl Dialect {
    /// `template` in this dialect: `{runs}`, `{job_state}` and `{rejects}`
    /// name the internal tables, `{now}` is the current time.
    pub fn sql(&self, template: &str) -> String {
        template
            .replace("{runs}", &format!("{}runs", self.internal))
            .replace("{job_state}", &format!("{}job_state", self.internal))
            .replace("{rejects}", &format!("{}rejects", self.internal))
            .replace("{now}", self.now)
    }

    /// The newest migration this build knows.
    pub fn latest_migration(&self) -> i64 {
        migrations::migrator(self.migrations)
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_each_stores_tables_and_clock() {
        let template = "UPDATE {runs} SET finished_at = {now} WHERE id = $1";
        assert_eq!(
            POSTGRES.sql(template),
            "UPDATE apisync.runs SET finished_at = now() WHERE id = $1"
        );
        assert_eq!(
            SQLITE.sql(template),
            "UPDATE apisync_runs SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE id = $1"
        );
    }
}
