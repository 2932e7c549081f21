//! `apisync run`: the daemon. [`App::build`] prepares everything that can
//! fail fast (jobs, listener, metrics); [`App::run_until_stopped`] serves
//! the endpoints, applies migrations, schedules every job and drains on
//! shutdown.
//!
//! **Invariant:** this is the only module that spawns long-lived tasks; each
//! is tracked by one `TaskTracker` and observes the one shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::redact::Redactor;
use crate::run::RunStatus;
use crate::schedule::Schedule;
use crate::scheduler::{SystemClock, run_schedule};
use crate::source::ApiClient;
use crate::store::Store;
use crate::sync::{Job, RunsInFlight, SyncContext, run_once};
use crate::{metrics, notify, server};

/// How often the metrics exporter trims histogram windows; without it their
/// memory grows without bound (DEPENDENCIES.md).
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Waits between attempts to reach the database and migrate at start.
const MIGRATE_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Time kept back from `shutdown_timeout` for what follows the drain (marking
/// runs that did not finish as `interrupted`), so the process exits within it.
pub(crate) const EXIT_MARGIN: Duration = Duration::from_millis(500);

/// How much longer systemd is asked to wait each time the database is retried.
const START_EXTENSION: Duration = Duration::from_secs(30);

struct ScheduledJob {
    job: Arc<Job>,
    schedule: Schedule,
    run_on_start: bool,
}

pub struct App {
    jobs: Vec<ScheduledJob>,
    store: Store,
    client: ApiClient,
    redactor: Redactor,
    listener: TcpListener,
    metrics: PrometheusHandle,
    max_concurrent_jobs: usize,
    shutdown_timeout: Duration,
    runs_retention: Option<Duration>,
}

impl App {
    /// Prepares the daemon: jobs checked, listener bound, metrics installed.
    /// Nothing is sent to the database yet.
    ///
    /// # Errors
    /// A job that cannot be built, a listen address that cannot be bound, a
    /// database URL that cannot be used.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let store = Store::connect_lazy(&settings.database).context("cannot use database.url")?;
        tracing::info!(
            store = %store.describe(),
            url_from = %settings.database.url_origin,
            "Using the store."
        );
        Self::build_with_store(settings, store).await
    }

    /// Like [`App::build`] with a store made elsewhere (tests bring one per
    /// test database).
    pub async fn build_with_store(settings: Settings, store: Store) -> anyhow::Result<App> {
        let built = Job::all_from_settings(&settings.jobs)
            .map_err(|(job, e)| anyhow::anyhow!("job \"{job}\": {e}"))?;
        let mut jobs = Vec::with_capacity(settings.jobs.len());
        for (job, built) in settings.jobs.iter().zip(built) {
            let Some(line) = job.schedule.as_deref() else {
                anyhow::bail!(
                    "job \"{}\" has no schedule: `apisync run` runs every job on its schedule; \
                     give it one (such as schedule = \"@hourly\"), or sync it by hand with \
                     `apisync sync {}`",
                    job.name,
                    job.name
                );
            };
            let schedule = Schedule::new(line, job.timezone.as_deref())
                .map_err(|(key, e)| anyhow::anyhow!("job \"{}\", key \"{key}\": {e}", job.name))?;
            jobs.push(ScheduledJob {
                job: Arc::new(built),
                schedule,
                run_on_start: job.run_on_start,
            });
        }
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| {
                format!(
                    "failed to bind the metrics and health listener on {}",
                    settings.server.listen
                )
            })?;
        let metrics = metrics::install();
        for job in &jobs {
            metrics::register_job(&job.job.name);
        }
        let client = ApiClient::new().context("cannot create the HTTP client")?;
        client.keep_tokens_in(store.clone());
        Ok(App {
            jobs,
            store,
            client,
            redactor: settings.redactor.clone(),
            listener,
            metrics,
            max_concurrent_jobs: settings.max_concurrent_jobs,
            shutdown_timeout: settings.shutdown_timeout,
            runs_retention: settings.runs_retention,
        })
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `shutdown` is cancelled, then stops scheduling, lets runs in
    /// flight commit their current page and record themselves `interrupted`,
    /// and returns within `shutdown_timeout`.
    ///
    /// # Errors
    /// Only for failures of the process itself; failed runs are recorded and
    /// logged, not returned.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let App {
            jobs,
            store,
            client,
            redactor,
            listener,
            metrics,
            max_concurrent_jobs,
            shutdown_timeout,
            runs_retention,
        } = self;

        let address = listener.local_addr()?;
        let router = server::router(server::ServerState {
            store: store.clone(),
            metrics: metrics.clone(),
            redactor: redactor.clone(),
        });
        let stop_serving = shutdown.clone();
        tasks.spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(stop_serving.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "The HTTP server failed.");
            }
        });
        tracing::info!(%address, "Serving /metrics, /healthz and /readyz.");

        let stop_upkeep = shutdown.clone();
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    () = stop_upkeep.cancelled() => return,
                    _ = ticks.tick() => metrics.run_upkeep(),
                }
            }
        });

        let in_flight = RunsInFlight::default();
        if migrate_until_done(&store, &redactor, &shutdown).await {
            notify::ready();
            tracing::info!(jobs = jobs.len(), "Ready; scheduling jobs.");
            tasks.spawn(notify::watchdog(shutdown.clone()));
            // Capped: Semaphore::new panics beyond MAX_PERMITS (the
            // configuration bounds it far lower already).
            let slots = Arc::new(Semaphore::new(
                max_concurrent_jobs.min(Semaphore::MAX_PERMITS),
            ));
            let ctx = SyncContext {
                store: store.clone(),
                client: client.clone(),
                redactor,
                cancel: shutdown.clone(),
                in_flight: in_flight.clone(),
            };
            for scheduled in jobs {
                tasks.spawn(schedule_job(
                    scheduled,
                    ctx.clone(),
                    slots.clone(),
                    runs_retention,
                ));
            }
        }
        tasks.close();

        shutdown.cancelled().await;
        notify::stopping();
        tracing::info!("Shutting down: waiting for runs in flight to commit their page.");
        let drain = shutdown_timeout.saturating_sub(EXIT_MARGIN);
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(drain, tasks.wait()).await.is_ok() {
            client
                .finish_token_requests(drain.saturating_sub(started.elapsed()))
                .await;
            tracing::info!("Stopped.");
            return Ok(());
        }
        let unfinished = in_flight.ids();
        tracing::warn!(
            runs = ?unfinished,
            "Runs were still in flight when shutdown_timeout ran out; marking them interrupted and exiting."
        );
        let error =
            "interrupted by shutdown: shutdown_timeout ran out while the run was still writing";
        let marked =
            tokio::time::timeout(EXIT_MARGIN, store.mark_interrupted(&unfinished, error)).await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::warn!("Could not mark them; the next run of each job closes them.");
        }
        Ok(())
    }
}

/// Keeps trying to reach the database and apply the migrations, so the
/// daemon comes up (and answers `/healthz`) while the database is still down.
/// `false` when shutdown came first.
async fn migrate_until_done(
    store: &Store,
    redactor: &Redactor,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        // Raced with shutdown: with the database down, one attempt can take
        // `acquire_timeout`, and a stop must not wait for it.
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return false,
            attempt = store.migrate() => attempt,
        };
        match attempt {
            Ok(()) => return true,
            Err(e) => {
                let error = redactor.redact(&crate::error_chain(&e));
                tracing::warn!(error = %error, "Cannot prepare the database yet; retrying.");
                notify::still_starting(
                    &format!("waiting for the database: {error}"),
                    START_EXTENSION,
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(MIGRATE_RETRY_INTERVAL) => {}
        }
    }
}

/// One job's life in the daemon: its schedule, each run taking one of the
/// `max_concurrent_jobs` slots.
async fn schedule_job(
    scheduled: ScheduledJob,
    ctx: SyncContext,
    slots: Arc<Semaphore>,
    runs_retention: Option<Duration>,
) {
    let ScheduledJob {
        job,
        schedule,
        run_on_start,
    } = scheduled;
    let cancel = ctx.cancel.clone();
    run_schedule(&job.name, &schedule, run_on_start, &SystemClock, &cancel, || {
        let (job, ctx, slots) = (job.clone(), ctx.clone(), slots.clone());
        async move {
            let _slot = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return,
                slot = slots.acquire() => match slot {
                    Ok(slot) => slot,
                    // Only a closed semaphore fails, and nothing closes it.
                    Err(_) => return,
                },
            };
            // A task of its own, so that a panic in a run (a bug) is logged
            // and the job stays scheduled instead of silently ending.
            let name = job.name.clone();
            let redactor = ctx.redactor.clone();
            let run = tokio::spawn(async move {
                let outcome = run_once(&job, &ctx).await;
                if let Some(retention) = runs_retention {
                    crate::sync::prune_history(&ctx.store, &job.name, retention).await;
                }
                outcome
            });
            match run.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(
                    job = %name,
                    error = %redactor.redact(&crate::error_chain(&e)),
                    "A run could not be recorded."
                ),
                Err(e) => {
                    metrics::run_finished(&name, RunStatus::Failed, &Default::default(), Duration::ZERO);
                    tracing::error!(job = %name, error = %e, "A run panicked; the job stays scheduled.");
                }
            }
        }
    })
    .await;
}
