//! The migrations compiled into the binary, built as `sqlx::migrate!` builds
//! them (the same version, description and checksum from each file), but
//! without sqlx's proc-macro crate: that crate links a second copy of
//! sqlx-core, rustls, aws-lc and the bundled SQLite for the build host, which
//! cost a release build about two minutes. A database migrated by a binary
//! built with `migrate!` is recognised as up to date (a test holds the two to
//! the same checksums, and every file of the folders to this list).

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

/// `(file name, SQL)` of each migration, in the folder's naming scheme
/// `<version>_<description>.sql`.
pub(super) type Files = &'static [(&'static str, &'static str)];

macro_rules! migration_files {
    ($dir:literal: $($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("../../migrations/", $dir, "/", $file)))),+]
    };
}

pub const POSTGRES: Files = migration_files!("postgres":
    "0001_create_internal_tables.sql",
    "0002_record_expected_totals_and_dedupe_rejects.sql",
    "0003_count_deletions.sql",
);

pub const SQLITE: Files = migration_files!("sqlite":
    "0001_create_internal_tables.sql",
    "0002_record_expected_totals_and_dedupe_rejects.sql",
    "0003_count_deletions.sql",
);

/// A migrator over `files`, as `sqlx::migrate!` would make it from their folder.
pub fn migrator(files: Files) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(file, sql)| {
            let (version, rest) = file
                .split_once('_')
                .expect("a migration named <version>_<description>.sql");
            let description = rest.trim_end_matches(".sql").replace('_', " ");
            Migration::new(
                version.parse().expect("a migration's version is a number"),
                Cow::Owned(description),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sql),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every file of the folder is listed, and the migrations are the ones
    /// sqlx itself reads from that folder (what `migrate!` compiled in before).
    async fn same_as_folder(files: Files, dir: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir);
        let from_folder = Migrator::new(dir.as_path())
            .await
            .expect("the folder resolves");
        let listed = migrator(files);
        let describe = |m: &Migrator| -> Vec<_> {
            m.iter()
                .map(|m| {
                    (
                        m.version,
                        m.description.to_string(),
                        m.migration_type,
                        m.checksum.to_vec(),
                        m.no_tx,
                    )
                })
                .collect()
        };
        assert_eq!(
            describe(&listed),
            describe(&from_folder),
            "{}",
            dir.display()
        );
    }

    #[tokio::test]
    async fn the_compiled_in_migrations_are_the_folders() {
        same_as_folder(POSTGRES, "postgres").await;
        same_as_folder(SQLITE, "sqlite").await;
    }
}
