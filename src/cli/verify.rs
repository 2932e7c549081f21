//! `apisync verify JOB`: the whole source compared with the table, nothing
//! written. Exit 0 when they agree, 1 when they differ (or the store
//! fails), 2 on bad configuration, 3 when the source could not be read
//! completely.

use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_CONFIG, EXIT_FAILED, complain, fail, no_such_job, say, sync_context};
use crate::config::Settings;
use crate::sync::{Comparison, Job, Keys, VerifyError};

/// The source could not be read completely.
const EXIT_INCOMPLETE: u8 = 3;

/// Keys listed per kind in the text summary (`--json` lists up to
/// `KEYS_SHOWN`).
const KEYS_LISTED: usize = 10;

pub(super) async fn verify(settings: &Settings, name: &str, json: bool) -> ExitCode {
    let Some(job_settings) = settings.job(name) else {
        return no_such_job(settings, name);
    };
    let job = match Job::from_settings(job_settings) {
        Ok(job) => job,
        Err(e) => {
            complain(settings, &format!("apisync: job \"{name}\": {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let ctx = match sync_context(settings).await {
        Ok(ctx) => ctx,
        Err(code) => return code,
    };

    // The job's lock, as a run takes it: a run in progress is waited for,
    // never raced (its half-written state would read as differences).
    let mut waiting = false;
    let mut lock = loop {
        match ctx.store.try_lock_job(&job.name).await {
            Ok(Some(lock)) => break lock,
            Ok(None) => {}
            Err(e) => return fail(settings, "cannot take the job's lock", &e),
        }
        if !waiting {
            complain(
                settings,
                &format!("apisync: {name} is being synced by another process; waiting for it"),
            );
            waiting = true;
        }
        tokio::select! {
            () = ctx.cancel.cancelled() => return ExitCode::from(EXIT_FAILED),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let result = crate::sync::verify(&job, &ctx, &mut lock).await;
    ctx.client
        .finish_token_requests(settings.shutdown_timeout)
        .await;
    lock.release().await;
    ctx.store.close().await;
    match result {
        Ok(comparison) => {
            if json {
                match serde_json::to_string(&comparison) {
                    Ok(line) => say(settings, &line),
                    Err(e) => return fail(settings, "cannot write the JSON", &e),
                }
            } else {
                say(settings, &summary(&comparison));
            }
            if comparison.agrees() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(VerifyError::Source(e)) => {
            complain(
                settings,
                &format!(
                    "apisync: {name}: the source could not be read completely, so nothing \
                     was compared: {}",
                    settings.redactor.redact(&crate::error_chain(&e))
                ),
            );
            ExitCode::from(EXIT_INCOMPLETE)
        }
        Err(e) => fail(settings, &format!("{name}: cannot compare"), &e),
    }
}

/// The text summary: one line of counts, then a few keys of each kind.
fn summary(c: &Comparison) -> String {
    if c.agrees() {
        return format!(
            "{} agrees: the table holds the {} keys the source returns, with the same content",
            c.job, c.read
        );
    }
    let mut out = format!(
        "{} differs: read {} keys; missing from the table {}, no longer returned by the API {}, \
         content differs {}, marked deleted but returned {}",
        c.job, c.read, c.missing.count, c.gone.count, c.differ.count, c.marked_but_returned.count
    );
    let kinds = [
        ("missing from the table", &c.missing),
        ("no longer returned by the API", &c.gone),
        ("content differs", &c.differ),
        ("marked deleted but returned", &c.marked_but_returned),
    ];
    for (what, keys) in kinds {
        if keys.count > 0 {
            out.push_str(&format!("\n  {what}: {}", listed(keys)));
        }
    }
    out.push_str("\n`apisync sync` brings the table in line; --json lists the keys.");
    out
}

fn listed(keys: &Keys) -> String {
    let mut shown: Vec<String> = keys
        .keys
        .iter()
        .take(KEYS_LISTED)
        .map(|key| key.join("/"))
        .collect();
    if keys.count > shown.len() as u64 {
        shown.push(format!("… ({} more)", keys.count - shown.len() as u64));
    }
    shown.join(", ")
}
