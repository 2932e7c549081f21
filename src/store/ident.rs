//! SQL identifiers that come from the configuration (table and key column
//! names). They are validated here and always quoted where SQL is built, so no
//! configuration can inject SQL.

use std::fmt;

/// PostgreSQL truncates longer identifiers silently; we refuse them instead.
const MAX_LEN: usize = 63;

/// Columns every target table has; a key column may not take these names.
pub const RESERVED_COLUMNS: [&str; 5] = [
    "record",
    "content_hash",
    "first_seen_at",
    "changed_at",
    "run_id",
];

/// The column apisync adds with `deletions = "mark"`, and those of a history
/// table besides the key and the reserved ones: a key column may take these
/// names only while the feature is off (see `TableSpec`).
pub const MARK_COLUMN: &str = "deleted_at";
pub const HISTORY_COLUMNS: [&str; 3] = ["valid_from", "valid_to", "op"];

/// Columns the stores keep in every table (PostgreSQL's system columns,
/// SQLite's rowid aliases): a key column by one of these names is never the
/// record's own. Refused on every store, so a configuration works on either.
pub const SYSTEM_COLUMNS: [&str; 9] = [
    "tableoid", "xmin", "cmin", "xmax", "cmax", "ctid", "oid", "rowid", "_rowid_",
];

/// A validated identifier: ASCII letters, digits and `_`, not starting with a
/// digit, at most 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// A table name: lowercase only, so that it can be used unquoted in psql;
    /// `schema.table` names a table in another PostgreSQL schema (created
    /// when missing; SQLite has no schemas, see `config::validate`).
    pub fn table(name: &str) -> Result<Self, String> {
        let lowercase = name.chars().all(|c| !c.is_ascii_uppercase());
        let parts: Vec<&str> = name.split('.').collect();
        let reserved = parts.len() == 2
            && (parts[0] == "apisync"
                || parts[0] == "information_schema"
                || parts[0].starts_with("pg_"));
        if reserved {
            Err(format!(
                "`{name}` is in a schema apisync or PostgreSQL keeps for itself; use another"
            ))
        } else if lowercase && parts.len() <= 2 && parts.iter().all(|part| is_identifier(part)) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "`{name}` is not a valid table name: use lowercase letters, digits and _, \
                 starting with a letter or _, at most {MAX_LEN} characters, optionally after \
                 a schema and a dot (archive.products, PostgreSQL only)"
            ))
        }
    }

    /// The schema of a `schema.table` name.
    pub fn schema(&self) -> Option<Ident> {
        self.0
            .split_once('.')
            .map(|(schema, _)| Ident(schema.to_owned()))
    }

    /// A column name; mixed case is kept (and must be quoted in queries).
    pub fn column(name: &str) -> Result<Self, String> {
        if !is_identifier(name) {
            return Err(format!(
                "`{name}` is not a valid column name: use letters, digits and _, \
                 starting with a letter or _, at most {MAX_LEN} characters"
            ));
        }
        if RESERVED_COLUMNS
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
        {
            return Err(format!(
                "`{name}` cannot be a key column: apisync uses that column itself"
            ));
        }
        if SYSTEM_COLUMNS
            .iter()
            .any(|system| system.eq_ignore_ascii_case(name))
        {
            return Err(format!(
                "`{name}` cannot be a key column: it is a system column (PostgreSQL's \
                 tableoid, xmin, cmin, xmax, cmax, ctid; SQLite's rowid, oid, _rowid_); \
                 name the column otherwise, as {{ field = \"{name}\", column = \"{name}_\" }}"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The table keeping the versions of `self`'s rows: `<table>_history`,
    /// refused when longer than an identifier may be.
    pub fn history_table(&self) -> Result<Self, String> {
        Self::table(&format!("{}_history", self.0)).map_err(|_| {
            format!(
                "the history table `{}_history` would be longer than {MAX_LEN} characters; \
                 shorten the table name",
                self.0
            )
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier in double quotes, ready to splice into SQL (each part
    /// of `schema.table`).
    pub fn quoted(&self) -> String {
        // Validation admits no `"`, so there is nothing to escape.
        self.0
            .split('.')
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && name.len() <= MAX_LEN && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated() {
        for ok in ["products", "_x", "t1", "a_b_c"] {
            assert!(Ident::table(ok).is_ok(), "{ok:?} should be accepted");
        }
        let too_long = "a".repeat(64);
        for bad in [
            "",
            "x; drop table y",
            "1abc",
            "Products",
            "a-b",
            "a.b.c",
            ".b",
            "a.",
            "\"x\"",
            too_long.as_str(),
        ] {
            assert!(Ident::table(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_table_may_name_its_schema() {
        let table = Ident::table("archive.products").unwrap();
        assert_eq!(table.quoted(), "\"archive\".\"products\"");
        assert_eq!(table.schema().unwrap().quoted(), "\"archive\"");
        assert_eq!(
            table.history_table().unwrap().quoted(),
            "\"archive\".\"products_history\""
        );
        assert!(Ident::table("products").unwrap().schema().is_none());
        for reserved in ["apisync.x", "pg_catalog.x", "information_schema.x"] {
            assert!(Ident::table(reserved).is_err(), "{reserved}");
        }
    }

    #[test]
    fn column_names_keep_case_and_refuse_reserved_names() {
        assert_eq!(Ident::column("userId").unwrap().quoted(), "\"userId\"");
        assert!(Ident::column("record").is_err());

        assert!(Ident::column("id\"; --").is_err());
    }
}
