//! The command line: parse, load the configuration, run the command, map the
//! outcome to an exit code.
//!
//! Exit codes: 0 success; 1 a run failed or the database could not be used;
//! 2 bad configuration or usage (clap's own usage errors are 2 as well).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError, Settings};
use crate::error_chain;
use crate::redact::printable;
use crate::run::RunStatus;
use crate::source::ApiClient;
use crate::store::{RunRecord, Store};
use crate::sync::{Job, RunReport, SyncContext, run_once};
use crate::telemetry;

mod verify;

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

/// Copies records from HTTP/JSON APIs into PostgreSQL, idempotently.
#[derive(Debug, Parser)]
#[command(
    name = "apisync",
    version,
    about = "Archives records from HTTP/JSON APIs into PostgreSQL or SQLite, exactly, on a schedule",
    after_help = "The store is a SQLite file, ./apisync.db, unless database.url, DATABASE_URL or \
                  APISYNC__DATABASE__URL names another (postgres://… or sqlite://FILE).\n\
                  Exit codes: 0 success, 1 a run or a connection failed, 2 bad configuration \
                  (verify: 3 when the source could not be read completely)."
)]
pub struct Cli {
    /// Configuration file [default: $APISYNC_CONFIG, else ./apisync.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: schedule every job, serve /metrics, /healthz and /readyz, stop gracefully on SIGTERM or SIGINT
    Run,
    /// Run jobs once now and exit (0: all succeeded, 1: a run failed, 2: bad configuration)
    Sync {
        /// Jobs to run, by name (or --all)
        #[arg(conflicts_with = "all")]
        jobs: Vec<String>,
        /// Run every configured job
        #[arg(long)]
        all: bool,
        /// Read the whole collection this once, whatever the watermark says (incremental jobs; with deletions, the run also finds the keys gone)
        #[arg(long)]
        full: bool,
    },
    /// Validate the configuration and exit (0 valid, 2 invalid)
    Check {
        /// Also reach the database and fetch the first page of each job once (nothing is written); exit 1 when the database or an API cannot be reached
        #[arg(long)]
        connect: bool,
    },
    /// Apply the internal schema migrations (also applied automatically by `sync`)
    Migrate,
    /// Ask the running daemon's /healthz (on server.listen) whether it answers; exit 0 if so (for container health checks)
    Health,
    /// A zero-setup tour: a built-in sample API on loopback synced into a local SQLite file, metrics served
    Demo {
        /// Exit after this many runs (default: run until Ctrl-C)
        #[arg(long)]
        runs: Option<u64>,
        /// The SQLite file to sync into
        #[arg(long, default_value = "apisync-demo.db")]
        db: PathBuf,
        /// Time between runs
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Show recent rejects (records that could not be stored) with their reasons
    Rejects {
        /// Only this job's rejects
        job: Option<String>,
        /// Only the rejects this run stored (a reject seen again by a later run is not stored again)
        #[arg(long, value_name = "ID")]
        run: Option<i64>,
        /// How many rejects to show
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// One JSON object per line instead of a list
        #[arg(long)]
        json: bool,
    },
    /// Read the whole source without writing and compare it with the job's table (exit 0 agree, 1 differ, 2 bad configuration, 3 the source could not be read completely)
    Verify {
        /// The job to verify
        job: String,
        /// One JSON object with the counts and (up to 1,000 of each kind) the keys
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the configuration (the same as config/apisync.schema.json), for editors and CI
    ConfigSchema,
    /// Fetch the first pages of URL and print a commented job configuration guessed from them (records, key, pagination, volatile fields), walked two pages before it is printed
    Init {
        /// The API's collection URL
        url: String,
        /// The job's (and table's) name
        #[arg(long, default_value = "records")]
        name: String,
        /// A header sent with every request, as NAME:VALUE (repeatable)
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// Also print a [database] section with this URL
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Show recent runs from the audit table
    Runs {
        /// Only this job's runs
        job: Option<String>,
        /// How many runs to show
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command line on a new multi-threaded runtime.
///
/// Not generic and not async, so the whole program is compiled once, here:
/// a `block_on(run(..))` in `main.rs` made the binary crate compile every
/// future again (140 s of a release build's 230 s for the two crates).
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("apisync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    // The demo brings its own configuration; the schema needs none.
    if let Command::Demo { runs, db, interval } = cli.command {
        return demo(runs, db, interval).await;
    }
    if let Command::ConfigSchema = cli.command {
        print!("{}", config::json_schema());
        return ExitCode::SUCCESS;
    }
    if let Command::Init {
        url,
        name,
        headers,
        database,
    } = cli.command
    {
        return init(url, name, headers, database).await;
    }
    let path = config::config_path(cli.config.as_deref(), &env);
    let settings = match config::load(&path, &env) {
        Ok(settings) => settings,
        Err(error) => {
            print_config_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(&settings.log, settings.redactor.clone());

    match cli.command {
        Command::Run => daemon(settings).await,
        Command::Sync { jobs, all, full } => sync(&settings, &jobs, all, full).await,
        Command::Check { connect } => check(&settings, &path, connect).await,
        Command::Migrate => migrate(&settings).await,
        Command::Verify { job, json } => verify::verify(&settings, &job, json).await,
        Command::Health => health(&settings).await,
        Command::Runs { job, limit, json } => runs(&settings, job.as_deref(), limit, json).await,
        Command::Rejects {
            job,
            run,
            limit,
            json,
        } => rejects(&settings, job.as_deref(), run, limit, json).await,
        Command::Demo { .. } | Command::ConfigSchema | Command::Init { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
    }
}

/// The problems are redacted where they are made (`config::load`); here
/// they are made printable.
fn print_config_error(error: &ConfigError) {
    // A problem may be with a value the environment set, not the file.
    let environment = error
        .problems
        .iter()
        .any(|problem| problem.starts_with("environment variable "));
    eprintln!(
        "apisync: invalid configuration in {}{}:",
        printable(&error.path.display().to_string()),
        if environment {
            " and the environment"
        } else {
            ""
        }
    );
    for problem in &error.problems {
        eprintln!("  - {}", printable(problem));
    }
}

/// Prints a line of command output on stdout, redacted and with control
/// characters escaped: every line of stdout passes here.
fn say(settings: &Settings, line: &str) {
    println!("{}", settings.redactor.clean(line));
}

/// The same, on stderr.
fn complain(settings: &Settings, line: &str) {
    eprintln!("{}", settings.redactor.clean(line));
}

/// Prints an error that is not about the configuration and picks exit code 1.
fn fail(settings: &Settings, what: &str, error: &dyn std::error::Error) -> ExitCode {
    complain(
        settings,
        &format!("apisync: {what}: {}", error_chain(error)),
    );
    ExitCode::from(EXIT_FAILED)
}

/// Says that `names` name no configured job, listing the jobs; exit 2.
fn no_such_job(settings: &Settings, names: &str) -> ExitCode {
    let known: Vec<&str> = settings.jobs.iter().map(|j| j.name.as_str()).collect();
    complain(
        settings,
        &format!(
            "apisync: no job named {names}; configured jobs: {}",
            known.join(", ")
        ),
    );
    ExitCode::from(EXIT_CONFIG)
}

/// What a run needs, for the commands that run jobs from the command line
/// (`sync`, `verify`): the store (migrated), an HTTP client, and a
/// cancellation token that Ctrl-C or SIGTERM cancels, so a run commits its
/// current page and is recorded `interrupted` instead of left `running`.
async fn sync_context(settings: &Settings) -> Result<SyncContext, ExitCode> {
    let store = open_store(settings).await?;
    let client =
        ApiClient::new().map_err(|e| fail(settings, "cannot create the HTTP client", &e))?;
    client.keep_tokens_in(store.clone());
    let cancel = CancellationToken::new();
    crate::shutdown::listen(cancel.clone())
        .map_err(|e| fail(settings, "cannot install the signal handlers", &e))?;
    Ok(SyncContext {
        store,
        client,
        redactor: settings.redactor.clone(),
        cancel,
        in_flight: Default::default(),
    })
}

/// The store, with migrations applied.
async fn open_store(settings: &Settings) -> Result<Store, ExitCode> {
    let store = Store::connect_lazy(&settings.database)
        .map_err(|e| fail(settings, "cannot use database.url", &e))?;
    tracing::info!(
        store = %store.describe(),
        url_from = %settings.database.url_origin,
        "Using the store."
    );
    store
        .migrate()
        .await
        .map_err(|e| fail(settings, "cannot prepare the database", &e))?;
    Ok(store)
}

async fn demo(runs: Option<u64>, db: PathBuf, interval: Duration) -> ExitCode {
    // Quiet logs: the demo explains each run itself.
    telemetry::init(
        &config::LogSettings {
            level: "warn".to_owned(),
            format: config::LogFormat::Text,
        },
        crate::redact::Redactor::default(),
    );
    let shutdown = CancellationToken::new();
    if let Err(e) = crate::shutdown::listen(shutdown.clone()) {
        eprintln!("apisync: cannot install the signal handlers: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    let options = crate::demo::DemoOptions { runs, db, interval };
    match crate::demo::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apisync: {}", printable(&format!("{e:#}")));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn daemon(settings: Settings) -> ExitCode {
    let shutdown = CancellationToken::new();
    if let Err(e) = crate::shutdown::listen(shutdown.clone()) {
        return fail(&settings, "cannot install the signal handlers", &e);
    }
    let redactor = settings.redactor.clone();
    let app = match crate::app::App::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("apisync: {}", redactor.clean(&format!("{e:#}")));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = match app.run_until_stopped(shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("apisync: {}", redactor.clean(&format!("{e:#}")));
            i32::from(EXIT_FAILED)
        }
    };
    // Exit here rather than by returning: dropping the runtime would wait
    // without limit for blocking tasks (a DNS lookup, say), and the drain has
    // already had its `shutdown_timeout`.
    std::process::exit(code)
}

async fn sync(settings: &Settings, names: &[String], all: bool, full: bool) -> ExitCode {
    let selected: Vec<&config::JobSettings> = if all {
        settings.jobs.iter().collect()
    } else if names.is_empty() {
        let known: Vec<&str> = settings.jobs.iter().map(|j| j.name.as_str()).collect();
        complain(
            settings,
            &format!(
                "apisync: name the jobs to sync, or --all for every job; configured jobs: {}",
                known.join(", ")
            ),
        );
        return ExitCode::from(EXIT_CONFIG);
    } else {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|name| settings.job(name).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return no_such_job(settings, &unknown.join(", "));
        }
        names.iter().filter_map(|name| settings.job(name)).collect()
    };
    let jobs = Job::all_from_settings(selected.iter().copied())
        .map_err(|(job, e)| format!("job \"{job}\": {e}"));
    let mut jobs = match jobs {
        Ok(jobs) => jobs,
        Err(e) => {
            complain(settings, &format!("apisync: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for job in &mut jobs {
        job.full = full;
    }
    let ctx = match sync_context(settings).await {
        Ok(ctx) => ctx,
        Err(code) => return code,
    };

    // The job being run, for the line printed if shutdown_timeout runs out.
    let current: std::sync::Mutex<Option<&str>> = std::sync::Mutex::new(None);
    let runs = async {
        let mut all_succeeded = true;
        for job in &jobs {
            if ctx.cancel.is_cancelled() {
                all_succeeded = false;
                say(
                    settings,
                    &format!("{} skipped: apisync is stopping", job.name),
                );
                continue;
            }
            *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(&job.name);
            let outcome = run_once(job, &ctx).await;
            if let Some(retention) = settings.runs_retention {
                crate::sync::prune_history(&ctx.store, &job.name, retention).await;
            }
            match outcome {
                Ok(report) => {
                    // A run skipped because another process holds the job is not
                    // a failure: the job is being run.
                    all_succeeded &=
                        matches!(report.status, RunStatus::Succeeded | RunStatus::Skipped);
                    say(settings, &summary_line(&report));
                }
                Err(e) => {
                    all_succeeded = false;
                    say(
                        settings,
                        &format!(
                            "{} failed error: the run could not be recorded: {}",
                            job.name,
                            error_chain(&e)
                        ),
                    );
                }
            }
        }
        all_succeeded
    };
    // A run stops at its next page once signalled; one whose statement waits
    // (a lock another session holds, a database that stopped answering) is
    // abandoned when shutdown_timeout runs out, as `apisync run` does.
    let drain = settings
        .shutdown_timeout
        .saturating_sub(crate::app::EXIT_MARGIN);
    let out_of_time = async {
        ctx.cancel.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    let all_succeeded = tokio::select! {
        all_succeeded = runs => all_succeeded,
        () = out_of_time => {
            let unfinished = ctx.in_flight.ids();
            let error =
                "interrupted by shutdown: shutdown_timeout ran out while the run was still waiting \
                 on the database";
            tracing::warn!(
                runs = ?unfinished,
                "A run was still waiting on the database when shutdown_timeout ran out; marking \
                 it interrupted and exiting."
            );
            let marked = tokio::time::timeout(
                crate::app::EXIT_MARGIN,
                ctx.store.mark_interrupted(&unfinished, error),
            )
            .await;
            if !matches!(marked, Ok(Ok(()))) {
                tracing::warn!("Could not mark it; the next run of the job closes it.");
            }
            let job = current.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or("a job");
            say(settings, &format!("{job} interrupted error: {error}"));
            // Exit here: the abandoned statement's connection and the
            // runtime's blocking tasks must not hold the process.
            std::process::exit(i32::from(EXIT_FAILED));
        }
    };
    ctx.client
        .finish_token_requests(settings.shutdown_timeout)
        .await;
    if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `products succeeded fetched=… inserted=… … pages=… [expected=…] seconds=…`,
/// then, when there were rejects, the first one's reason and where to see
/// them all, and, when the run failed, the error.
pub fn summary_line(report: &RunReport) -> String {
    if report.status == RunStatus::Skipped {
        return format!(
            "{} skipped: another process is running this job",
            report.job
        );
    }
    let c = &report.counts;
    let expected = report
        .expected
        .map(|n| format!(" expected={n}"))
        .unwrap_or_default();
    let mut line = format!(
        "{} {} fetched={} inserted={} updated={} unchanged={} duplicate={} rejected={} \
         deleted={} pages={}{expected} seconds={:.2}",
        report.job,
        report.status.as_str(),
        c.fetched,
        c.inserted,
        c.updated,
        c.unchanged,
        c.duplicate,
        c.rejected,
        c.deleted,
        c.pages,
        report.elapsed.as_secs_f64(),
    );
    if c.rejected > 0
        && let Some(reason) = &report.first_reject
    {
        line.push_str(&format!(
            " first reject: {reason} (all: apisync rejects {})",
            report.job
        ));
    }
    if let Some(error) = &report.error {
        line.push_str(" error: ");
        line.push_str(error);
    }
    line
}

/// `apisync init`: the TOML on stdout, diagnostics on stderr.
async fn init(
    url: String,
    name: String,
    headers: Vec<String>,
    database: Option<String>,
) -> ExitCode {
    let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        eprintln!(
            "apisync init: --name `{}` is not a job name: use [a-z][a-z0-9_]*",
            printable(&name)
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut pairs = Vec::new();
    for header in &headers {
        let Some((key, value)) = header.split_once(':') else {
            eprintln!(
                "apisync init: --header wants NAME:VALUE, not `{}`",
                printable(header)
            );
            return ExitCode::from(EXIT_CONFIG);
        };
        pairs.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    let request = crate::init::Request {
        url,
        name,
        headers: pairs,
        database,
    };
    // Header values may be credentials: never in a diagnostic.
    let redactor =
        crate::redact::Redactor::new(request.headers.iter().map(|(_, v)| v.clone()), None);
    match crate::init::init(&request).await {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("apisync init: {}", redactor.clean(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn check(settings: &Settings, path: &std::path::Path, connect: bool) -> ExitCode {
    let names: Vec<&str> = settings.jobs.iter().map(|j| j.name.as_str()).collect();
    say(
        settings,
        &format!(
            "configuration {} is valid: {} job(s): {}",
            path.display(),
            names.len(),
            names.join(", ")
        ),
    );
    if !connect {
        return ExitCode::SUCCESS;
    }

    let mut ok = true;
    let mut usable_store = None;
    match Store::connect_lazy(&settings.database) {
        Ok(store) => match store.ping(settings.database.acquire_timeout).await {
            Ok(()) => {
                usable_store = Some(store.clone());
                say(
                    settings,
                    &format!(
                        "database: reachable: {} (url from {})",
                        store.describe(),
                        settings.database.url_origin
                    ),
                )
            }
            Err(e) => {
                ok = false;
                say(
                    settings,
                    &format!("database: unreachable: {}", error_chain(&e)),
                );
            }
        },
        Err(e) => {
            ok = false;
            say(settings, &format!("database: {}", error_chain(&e)));
        }
    }
    let client = match ApiClient::new() {
        Ok(client) => client,
        Err(e) => return fail(settings, "cannot create the HTTP client", &e),
    };
    // A rotated refresh token must be kept: the store must be migrated
    // (as any start migrates it) before a token is asked for.
    if let Some(store) = usable_store
        && settings.jobs.iter().any(|job| {
            matches!(
                job.auth,
                Some(crate::config::AuthSettings::RefreshToken { .. })
            )
        })
    {
        match store.migrate().await {
            Ok(()) => client.keep_tokens_in(store),
            Err(e) => say(
                settings,
                &format!("database: cannot keep refresh tokens: {}", error_chain(&e)),
            ),
        }
    }
    let hosts = crate::source::HostThrottles::default();
    for job in &settings.jobs {
        let line = match crate::source::SourceSpec::new(job, &hosts) {
            Err(e) => {
                ok = false;
                format!("job {}: {e}", job.name)
            }
            Ok(spec) => match spec
                .pages(&client, &settings.redactor, None)
                .next_page()
                .await
            {
                Ok(Some(page)) => format!(
                    "job {}: API reachable, first page holds {} record(s)",
                    job.name,
                    page.records.len()
                ),
                Ok(None) => format!("job {}: API reachable, no page", job.name),
                Err(e) => {
                    ok = false;
                    format!("job {}: {}", job.name, error_chain(&e))
                }
            },
        };
        say(settings, &line);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `GET /healthz` of the daemon on `server.listen` (a wildcard address is
/// asked on loopback), with a short timeout: a container health check with
/// no curl or wget in the image.
async fn health(settings: &Settings) -> ExitCode {
    let Ok(mut address) = settings.server.listen.parse::<std::net::SocketAddr>() else {
        complain(settings, "apisync: server.listen is not an address");
        return ExitCode::from(EXIT_CONFIG);
    };
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(client) => client,
        Err(e) => return fail(settings, "cannot create the HTTP client", &e),
    };
    match client.get(format!("http://{address}/healthz")).send().await {
        Ok(response) if response.status().is_success() => {
            say(
                settings,
                &format!(
                    "healthy: http://{address}/healthz answered {}",
                    response.status()
                ),
            );
            ExitCode::SUCCESS
        }
        Ok(response) => {
            say(
                settings,
                &format!(
                    "unhealthy: http://{address}/healthz answered {}",
                    response.status()
                ),
            );
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            say(
                settings,
                &format!(
                    "unhealthy: http://{address}/healthz: {}",
                    error_chain(&e.without_url())
                ),
            );
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn migrate(settings: &Settings) -> ExitCode {
    match open_store(settings).await {
        Ok(_) => {
            say(settings, "migrations applied");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn runs(settings: &Settings, job: Option<&str>, limit: i64, json: bool) -> ExitCode {
    if let Some(name) = job
        && settings.job(name).is_none()
    {
        return no_such_job(settings, name);
    }
    let store = match open_store(settings).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let runs = match store.recent_runs(job, limit.max(0)).await {
        Ok(runs) => runs,
        Err(e) => return fail(settings, "cannot read apisync.runs", &e),
    };
    // The error was redacted when it was stored, with the secrets of that
    // day; it is redacted again with today's.
    if json {
        for run in &runs {
            let mut value = match serde_json::to_value(run) {
                Ok(value) => value,
                Err(e) => return fail(settings, "cannot print a run as JSON", &e),
            };
            if let Some(error) = &run.error {
                value["error"] = settings.redactor.redact(error).into();
            }
            println!("{}", json_line(&value));
        }
    } else {
        print!("{}", runs_table(&runs, &settings.redactor));
    }
    ExitCode::SUCCESS
}

/// A JSON value on one line, with the characters JSON may carry raw but a
/// terminal acts on (DEL, C1 codes, bidirectional overrides) escaped as
/// `\uXXXX`: still the same JSON.
fn json_line(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if !text.chars().any(crate::redact::needs_escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 12);
    for c in text.chars() {
        if crate::redact::needs_escape(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The runs as an aligned text table, newest first; every cell redacted
/// and printable, the error redacted before it is cut to 80 characters.
fn runs_table(runs: &[RunRecord], redactor: &crate::redact::Redactor) -> String {
    let header = [
        "ID",
        "JOB",
        "STATUS",
        "STARTED",
        "SECONDS",
        "FETCHED",
        "INSERTED",
        "UPDATED",
        "UNCHANGED",
        "DUPLICATE",
        "REJECTED",
        "DELETED",
        "PAGES",
        "EXPECTED",
        "ERROR",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for run in runs {
        let seconds = run
            .finished_at
            .map(|end| {
                let elapsed = (end - run.started_at).to_std().unwrap_or(Duration::ZERO);
                format!("{:.2}", elapsed.as_secs_f64())
            })
            .unwrap_or_else(|| "-".to_owned());
        let error = redactor.clean(run.error.as_deref().unwrap_or(""));
        let error = excerpt(&error, 80);
        rows.push(vec![
            run.id.to_string(),
            run.job.clone(),
            run.status.clone(),
            run.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            seconds,
            run.fetched.to_string(),
            run.inserted.to_string(),
            run.updated.to_string(),
            run.unchanged.to_string(),
            run.duplicate.to_string(),
            run.rejected.to_string(),
            run.deleted.to_string(),
            run.pages.to_string(),
            run.expected
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            error,
        ]);
        // Job and status; the error is cleaned above. Numbers and times are
        // ours and left alone: a short secret such as `1` would otherwise
        // mask every count of 1, which stands alone in its cell.
        let row = rows.last_mut().expect("just pushed");
        for cell in row.iter_mut().skip(1).take(2) {
            *cell = redactor.clean(cell);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn rejects(
    settings: &Settings,
    job: Option<&str>,
    run: Option<i64>,
    limit: i64,
    json: bool,
) -> ExitCode {
    if let Some(name) = job
        && settings.job(name).is_none()
    {
        return no_such_job(settings, name);
    }
    let store = match open_store(settings).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let rejects = match store.recent_rejects(job, run, limit.max(0)).await {
        Ok(rejects) => rejects,
        Err(e) => return fail(settings, "cannot read apisync.rejects", &e),
    };
    let redact = |text: &str| settings.redactor.redact(text);
    for reject in &rejects {
        let line = if json {
            let mut value = match serde_json::to_value(reject) {
                Ok(value) => value,
                Err(e) => return fail(settings, "cannot print a reject as JSON", &e),
            };
            value["reason"] = redact(&reject.reason).into();
            value["record"] = redact(&reject.record).into();
            json_line(&value)
        } else {
            // Two lines, each made printable on its own.
            format!(
                "{} {} run {} #{}: {}\n  {}",
                reject.rejected_at.format("%Y-%m-%d %H:%M:%S"),
                reject.job,
                reject.run_id,
                reject.id,
                settings.redactor.clean(&reject.reason),
                excerpt(&settings.redactor.clean(&reject.record), 300),
            )
        };
        println!("{line}");
    }
    if rejects.is_empty() && !json {
        match run {
            // A run's rejects seen before are stored under the run that
            // first stored them: say so, rather than "none" for a run
            // whose row counts rejects.
            Some(run) => say(
                settings,
                &format!(
                    "no rejects stored by run {run} (a reject is stored once, under the run \
                     that first met it; `apisync rejects{}` lists them all)",
                    job.map(|j| format!(" {j}")).unwrap_or_default()
                ),
            ),
            None => say(settings, "no rejects"),
        }
    }
    ExitCode::SUCCESS
}

/// The first `chars` characters of `text`, with `…` when cut.
fn excerpt(text: &str, chars: usize) -> String {
    let mut cut: String = text.chars().take(chars).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}
