//! apisync copies records from HTTP/JSON APIs into PostgreSQL and guarantees
//! that running a job any number of times never duplicates, loses or
//! needlessly rewrites a record.
//!
//! # Layout
//!
//! - `cli`: the command line (`run`, `sync`, `check`, `migrate`, `runs`, `rejects`, `demo`) and exit codes.
//! - `demo`: `apisync demo`, a sample API synced into SQLite, explained run by run.
//! - `init`: `apisync init URL`, a job guessed from an API's first pages and walked before it is printed.
//! - `app`: the daemon: endpoints, migrations, one scheduled task per job, drain on shutdown.
//! - `scheduler`: the per-job loop (no overlap, skipped ticks counted); `schedule`: cron + zone.
//! - `server`: `/metrics`, `/healthz`, `/readyz`; `metrics`: every metric name and event.
//! - `shutdown`: signals to a cancellation token; `notify`: systemd READY/WATCHDOG/STOPPING.
//! - `config`: the `Settings` tree: TOML file, `${VAR}` and environment layers, validation.
//! - `telemetry`: the tracing subscriber (text or JSON logs on stderr).
//! - `sync`: one run of one job, `run_once`: a pipeline of fetch → prepare → batching → write.
//! - `incremental`: the watermark and the `since` parameter of incremental jobs.
//! - `record`: natural keys, canonical content hashes, rejects.
//! - `source`: the pages of a run: HTTP requests, retries, pagination.
//! - `auth`: credentials on requests: static ones, and tokens fetched, shared and renewed.
//! - `store`: the database seam: the run ledger, target tables, batch plans and writes.
//! - `batch`: the rows and rejects one transaction writes, shared by `sync` and `store`.
//! - `run`: run ids, statuses and counts shared by the above.
//! - `redact`: keeps secrets out of everything that leaves the process, and
//!   control characters off the terminal.
//! - `json_pointer`: RFC 6901 pointer syntax as used in the configuration.
//! - `raw_json`: finding values in checked JSON text without parsing it into a tree.

pub mod app;
pub mod auth;
pub mod batch;
pub mod cli;
pub mod config;
pub mod demo;
#[cfg(test)]
mod fuzz;
pub mod incremental;
pub mod init;
pub mod json_pointer;
pub mod metrics;
pub mod notify;
pub mod raw_json;
pub mod record;
pub mod redact;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod seen_keys;
pub mod server;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod sync;
pub mod telemetry;

/// An error and its causes on one line, `outer: inner: innermost`: the form
/// in which errors are logged, printed and stored.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source's text in their own; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
