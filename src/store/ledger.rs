//! The run ledger, written once for both stores: runs (started, counted
//! batch by batch, finished, closed when abandoned), the job's committed
//! watermark, the stored rejects, readiness and ping. Each statement is one
//! SQL text in the store's [`Dialect`]; [`per_db!`] runs it on either pool
//! (and decodes its rows: timestamps are `timestamptz` on PostgreSQL and
//! RFC 3339 text on SQLite, which sqlx's chrono decoding reads alike).
//!
//! [`record_batch`] is the ledger's part of a batch's transaction, called by
//! each backend's table writer inside its own transaction.

use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, PgConnection, Row, SqliteConnection};

use super::dialect::{self, Db, Dialect, per_db};
use super::{BatchWrite, RejectRecord, RunEnd, RunRecord, Store, StoreError, describe_sqlx};
use crate::run::{Counts, RunId, RunStatus};

/// Adds a batch's counts to its run's row (`$1`) while the run is `running`.
const ADD_COUNTS: &str = "UPDATE {runs} SET fetched = fetched + $2, inserted = inserted + $3, \
     updated = updated + $4, unchanged = unchanged + $5, duplicate = duplicate + $6, \
     rejected = rejected + $7, pages = pages + $8, deleted = deleted + $9 \
     WHERE id = $1 AND status = 'running'";

/// The eight counts, in the order of [`ADD_COUNTS`]'s parameters.
fn count_values(counts: &Counts) -> [i64; 8] {
    [
        counts.fetched,
        counts.inserted,
        counts.updated,
        counts.unchanged,
        counts.duplicate,
        counts.rejected,
        counts.pages,
        counts.deleted,
    ]
    .map(|count| i64::try_from(count).unwrap_or(i64::MAX))
}

/// The ledger's part of a batch's transaction, on the writer's connection:
/// the batch's counts added to its run's row, and the job's new watermark
/// when the batch moves it.
pub(super) async fn record_batch(
    conn: Db<&mut PgConnection, &mut SqliteConnection>,
    dialect: &Dialect,
    write: &BatchWrite<'_>,
) -> Result<(), StoreError> {
    let add = dialect.sql(ADD_COUNTS);
    let watermark = write.watermark.map(|w| w.to_string());
    per_db!(conn, conn => {
        let query = sqlx::query(AssertSqlSafe(add)).bind(write.run);
        count_values(&write.plan.counts)
            .into_iter()
            .fold(query, |query, count| query.bind(count))
            .execute(&mut *conn)
            .await?;
        if let Some(watermark) = watermark {
            sqlx::query(dialect.save_state)
                .bind(write.job)
                .bind(watermark)
                .bind(write.run)
                .bind("watermark")
                .execute(&mut *conn)
                .await?;
        }
    });
    Ok(())
}

/// Adds `deleted` to the run's `deleted` count, inside the deletion's
/// transaction.
pub(super) async fn add_deleted(
    conn: Db<&mut PgConnection, &mut SqliteConnection>,
    dialect: &Dialect,
    run: RunId,
    deleted: u64,
) -> Result<(), StoreError> {
    let sql = dialect
        .sql("UPDATE {runs} SET deleted = deleted + $2 WHERE id = $1 AND status = 'running'");
    let deleted = i64::try_from(deleted).unwrap_or(i64::MAX);
    per_db!(conn, conn => {
        sqlx::query(AssertSqlSafe(sql))
            .bind(run)
            .bind(deleted)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Whether `error` says a table does not exist: the migrations that create
/// it have not run yet.
fn is_missing_table(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    match db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // SQLite has no code of its own for it (SQLITE_ERROR), only the text.
        Some(_) => db.message().starts_with("no such table"),
        None => db.code().as_deref() == Some("42P01"),
    }
}

/// The member of the job's state that says when its latest complete full
/// run ended (RFC 3339), for `full_refresh`.
const FULL_RUN_AT: &str = "full_run_at";
/// The `job_state` member holding a rotated refresh token.
const REFRESH_TOKEN: &str = "refresh_token";

/// One `apisync.runs` row as read by [`Store::recent_runs`].
const RUN_COLUMNS: &str = "id, job, status, started_at, finished_at, fetched, inserted, updated, \
     unchanged, duplicate, rejected, deleted, pages, expected, error";

impl Store {
    pub(super) fn dialect(&self) -> &'static Dialect {
        match self {
            Store::Postgres(_) => &dialect::POSTGRES,
            Store::Sqlite(_) => &dialect::SQLITE,
        }
    }

    pub(super) fn pools(&self) -> Db<&PgPool, &SqlitePool> {
        match self {
            Store::Postgres(pg) => Db::Postgres(&pg.pool),
            Store::Sqlite(db) => Db::Sqlite(&db.pool),
        }
    }

    /// Answers one trivial query: the database is reachable.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        if let Store::Postgres(pg) = self {
            pg.reach(timeout).await?;
        }
        let query = async move {
            per_db!(self.pools(), pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
        };
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Ready to serve: the database answers within `timeout` and every
    /// migration this build knows is applied. The error says why not.
    pub async fn readiness(&self, timeout: Duration) -> Result<(), String> {
        let dialect = self.dialect();
        let sql = format!(
            "SELECT max(version) FROM {} WHERE success",
            dialect.migrations_table
        );
        let query = async move {
            per_db!(self.pools(), pool => {
                sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
            })
        };
        match tokio::time::timeout(timeout, query).await {
            Err(_) => Err(format!(
                "the database did not answer within {}",
                humantime::format_duration(timeout)
            )),
            Ok(Err(e)) if is_missing_table(&e) => Err("migrations not applied yet".to_owned()),
            Ok(Err(e)) => Err(format!(
                "the database cannot be queried: {}",
                describe_sqlx(&e)
            )),
            Ok(Ok(applied)) if applied.unwrap_or(0) >= dialect.latest_migration() => Ok(()),
            Ok(Ok(_)) => Err("migrations not applied yet".to_owned()),
        }
    }

    /// Closes runs of `job` left `running` by a process that died. Call it
    /// only while holding the job's lock: then no live process runs the job.
    pub async fn close_abandoned_runs(&self, job: &str) -> Result<u64, StoreError> {
        let sql = self.dialect().sql(
            "UPDATE {runs} SET status = 'failed', finished_at = {now}, \
             error = 'process exited before the run finished' \
             WHERE job = $1 AND status = 'running'",
        );
        let closed = per_db!(self.pools(), pool => {
            sqlx::query(AssertSqlSafe(sql)).bind(job).execute(pool).await?.rows_affected()
        });
        Ok(closed)
    }

    pub async fn start_run(&self, job: &str) -> Result<RunId, StoreError> {
        let sql = self
            .dialect()
            .sql("INSERT INTO {runs} (job, status) VALUES ($1, 'running') RETURNING id");
        let id = per_db!(self.pools(), pool => {
            sqlx::query_scalar(AssertSqlSafe(sql)).bind(job).fetch_one(pool).await?
        });
        Ok(id)
    }

    /// Adds a batch's counts to its run's row, alone: for a batch with
    /// nothing else to write.
    pub(super) async fn add_counts(&self, run: RunId, counts: &Counts) -> Result<(), StoreError> {
        let sql = self.dialect().sql(ADD_COUNTS);
        let added = per_db!(self.pools(), pool => {
            let query = sqlx::query(AssertSqlSafe(sql)).bind(run);
            count_values(counts)
                .into_iter()
                .fold(query, |query, count| query.bind(count))
                .execute(pool)
                .await?
                .rows_affected()
        });
        if added == 0 {
            return Err(StoreError::RunClosed);
        }
        Ok(())
    }

    /// Records the end of a run: its status, error and the total the API
    /// stated (its counts were committed batch by batch).
    pub async fn finish_run(&self, run: RunId, end: &RunEnd<'_>) -> Result<(), StoreError> {
        // Only a run still `running`: one closed by another process that took
        // over the job keeps what that process recorded.
        let sql = self.dialect().sql(
            "UPDATE {runs} SET status = $2, error = $3, expected = $4, finished_at = {now} \
             WHERE id = $1 AND status = 'running'",
        );
        let expected = end.expected.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        per_db!(self.pools(), pool => {
            sqlx::query(AssertSqlSafe(sql))
                .bind(run)
                .bind(end.status.as_str())
                .bind(end.error)
                .bind(expected)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Marks runs that could not finish in time as `interrupted`.
    pub async fn mark_interrupted(&self, runs: &[RunId], error: &str) -> Result<(), StoreError> {
        match self {
            // Also ends the sessions of writes still holding a run's row.
            Store::Postgres(pg) => pg.mark_interrupted(runs, error).await,
            // One connection per process: no write of ours holds a row
            // while this runs.
            Store::Sqlite(_) => {
                let end = RunEnd {
                    status: RunStatus::Interrupted,
                    error: Some(error),
                    expected: None,
                };
                for &run in runs {
                    self.finish_run(run, &end).await?;
                }
                Ok(())
            }
        }
    }

    /// The job's committed watermark, if it has one.
    pub async fn watermark(&self, job: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.state_field(job, "watermark").await
    }

    /// When the job's latest complete full run (one that read everything,
    /// so could see deletions) ended, if it had one.
    pub async fn last_full_run(
        &self,
        job: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let at = self.state_field(job, FULL_RUN_AT).await?;
        Ok(at
            .as_ref()
            .and_then(serde_json::Value::as_str)
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&chrono::Utc)))
    }

    /// Records that a complete full run of `job` ended now.
    pub async fn save_full_run(&self, job: &str, run: RunId) -> Result<(), StoreError> {
        let now = serde_json::Value::String(chrono::Utc::now().to_rfc3339());
        let dialect = self.dialect();
        per_db!(self.pools(), pool => {
            sqlx::query(dialect.save_state)
                .bind(job)
                .bind(now.to_string())
                .bind(run)
                .bind(FULL_RUN_AT)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes `job`'s runs that finished more than `older_than` ago and its
    /// rejects stored before then (`runs_retention`); how many of each. A
    /// run still `running` is never deleted, whatever its age.
    pub async fn prune(&self, job: &str, older_than: Duration) -> Result<(u64, u64), StoreError> {
        let seconds = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let (runs, rejects) = match self {
            Store::Postgres(_) => (
                "DELETE FROM apisync.runs WHERE job = $1 AND status <> 'running' \
                 AND finished_at < now() - make_interval(secs => $2::double precision)",
                "DELETE FROM apisync.rejects WHERE job = $1 \
                 AND rejected_at < now() - make_interval(secs => $2::double precision) \
                 AND run_id NOT IN (SELECT id FROM apisync.runs WHERE job = $1 \
                   AND status = 'running')",
            ),
            Store::Sqlite(_) => (
                "DELETE FROM apisync_runs WHERE job = $1 AND status <> 'running' \
                 AND finished_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $2 || ' seconds')",
                "DELETE FROM apisync_rejects WHERE job = $1 \
                 AND rejected_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $2 || ' seconds') \
                 AND run_id NOT IN (SELECT id FROM apisync_runs WHERE job = $1 \
                   AND status = 'running')",
            ),
        };
        let mut deleted = [0; 2];
        for (sql, count) in [runs, rejects].into_iter().zip(&mut deleted) {
            *count = per_db!(self.pools(), pool => {
                sqlx::query(sql).bind(job).bind(seconds).execute(pool).await?.rows_affected()
            });
        }
        Ok((deleted[0], deleted[1]))
    }

    /// The refresh token kept for the auth settings `holder` names (see
    /// `auth::tokens`), if one was saved.
    pub async fn refresh_token(&self, holder: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .state_field(holder, REFRESH_TOKEN)
            .await?
            .and_then(|token| token.as_str().map(str::to_owned)))
    }

    /// Keeps a rotated refresh token for `holder`, committed before this
    /// returns. Its run id is 0: the row belongs to auth settings that
    /// several jobs may share, not to one run.
    pub async fn save_refresh_token(&self, holder: &str, token: &str) -> Result<(), StoreError> {
        let value = serde_json::Value::String(token.to_owned());
        let dialect = self.dialect();
        per_db!(self.pools(), pool => {
            sqlx::query(dialect.save_state)
                .bind(holder)
                .bind(value.to_string())
                .bind(0_i64)
                .bind(REFRESH_TOKEN)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// One member of the job's state.
    async fn state_field(
        &self,
        job: &str,
        field: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let sql = self
            .dialect()
            .sql("SELECT CAST(state AS text) FROM {job_state} WHERE job = $1");
        let state: Option<String> = per_db!(self.pools(), pool => {
            sqlx::query_scalar(AssertSqlSafe(sql)).bind(job).fetch_optional(pool).await?
        });
        Ok(state
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|mut state| state.get_mut(field).map(serde_json::Value::take)))
    }

    /// The latest runs, newest first.
    pub async fn recent_runs(
        &self,
        job: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let sql = self.dialect().sql(&format!(
            "SELECT {RUN_COLUMNS} FROM {{runs}} WHERE CAST($1 AS text) IS NULL OR job = $1 \
             ORDER BY id DESC LIMIT $2"
        ));
        let runs = per_db!(self.pools(), pool => {
            sqlx::query(AssertSqlSafe(sql))
                .bind(job)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
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
                        deleted: row.try_get("deleted")?,
                        pages: row.try_get("pages")?,
                        expected: row.try_get("expected")?,
                        error: row.try_get("error")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?
        });
        Ok(runs)
    }

    /// The latest rejects, newest first, of one job or all, of one run or all.
    pub async fn recent_rejects(
        &self,
        job: Option<&str>,
        run: Option<RunId>,
        limit: i64,
    ) -> Result<Vec<RejectRecord>, StoreError> {
        let sql = self.dialect().sql(
            "SELECT id, job, run_id, rejected_at, reason, record FROM {rejects} \
             WHERE (CAST($1 AS text) IS NULL OR job = $1) \
             AND (CAST($2 AS bigint) IS NULL OR run_id = $2) \
             ORDER BY id DESC LIMIT $3",
        );
        let rejects = per_db!(self.pools(), pool => {
            sqlx::query(AssertSqlSafe(sql))
                .bind(job)
                .bind(run)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(RejectRecord {
                        id: row.try_get("id")?,
                        job: row.try_get("job")?,
                        run_id: row.try_get("run_id")?,
                        rejected_at: row.try_get("rejected_at")?,
                        reason: row.try_get("reason")?,
                        record: row.try_get("record")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?
        });
        Ok(rejects)
    }
}
