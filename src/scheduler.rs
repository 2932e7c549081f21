//! The loop around one job: wait for the next due instant, run, repeat.
//!
//! Runs of one job never overlap, by construction: the loop awaits each run
//! before it looks for the next tick. Ticks that fall due while a run is in
//! progress are counted as skipped, not queued, so a long run is never
//! followed by a burst of catch-up runs.

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::schedule::Schedule;

/// Counting missed ticks stops here: a schedule every second and a run of a
/// day would otherwise walk 86,400 instants.
const MAX_COUNTED_SKIPS: u64 = 100_000;

/// Where "now" comes from: the system clock in production, the (pausable)
/// tokio clock in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time advanced by tokio's clock from a fixed start, so a test with
/// `tokio::time::pause` can move time forward instantly.
pub struct TokioClock {
    start_wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start_wall: DateTime<Utc>) -> Self {
        Self {
            start_wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.start_wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

/// Calls `run` at every due instant of `schedule` (and once at the start when
/// `run_on_start`) until `cancel` fires. Each run is awaited to completion;
/// it is expected to watch `cancel` itself.
pub async fn run_schedule<F, Fut>(
    job: &str,
    schedule: &Schedule,
    run_on_start: bool,
    clock: &dyn Clock,
    cancel: &CancellationToken,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut after = clock.now();
    if run_on_start && !cancel.is_cancelled() {
        run().await;
        after = count_skipped(job, schedule, after, clock.now());
    }
    loop {
        let Some(due) = schedule.next_after(after) else {
            tracing::warn!(
                job,
                "The schedule never comes due again; the job will not run."
            );
            return;
        };
        // At start and after each run: when the job runs next.
        tracing::info!(job, next_run = %due.to_rfc3339(), "Next run scheduled.");
        let wait = (due - clock.now()).to_std().unwrap_or_default();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        run().await;
        if cancel.is_cancelled() {
            return;
        }
        // `due` itself ran; ticks after it that passed meanwhile were skipped.
        after = count_skipped(job, schedule, due, clock.now());
    }
}

/// Counts the ticks in `(since, now]` as skipped; returns the instant after
/// which the next tick is due.
fn count_skipped(
    job: &str,
    schedule: &Schedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let skipped = schedule.count_between(since, now, MAX_COUNTED_SKIPS);
    if skipped > 0 {
        metrics::runs_skipped(job, skipped);
        tracing::info!(
            job,
            skipped,
            "Ticks came due while the job was running; skipped them."
        );
    }
    since.max(now)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_job_never_overlaps_and_missed_ticks_do_not_burst() {
        // Arrange: due every second; each run takes 3.5 s.
        let schedule = Schedule::new("* * * * * *", None).unwrap();
        let clock = TokioClock::starting_at(start());
        let cancel = CancellationToken::new();
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            stopper.cancel();
        });

        // Act
        run_schedule("slow", &schedule, false, &clock, &cancel, || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            max_running.fetch_max(now, Ordering::SeqCst);
            runs.lock().unwrap().push(clock.now());
            let running = running.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(3500)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .await;

        // Assert: runs start at 1 s, then at the first tick after each ends
        // (4.5 → 5, 8.5 → 9, …): no overlap, no catch-up burst.
        assert_eq!(max_running.load(Ordering::SeqCst), 1);
        let offsets: Vec<i64> = runs
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - start()).num_seconds())
            .collect();
        assert_eq!(offsets, vec![1, 5, 9, 13, 17]);
    }

    #[tokio::test(start_paused = true)]
    async fn run_on_start_runs_at_once_then_follows_the_schedule() {
        let schedule = Schedule::new("*/10 * * * * *", None).unwrap();
        let clock = TokioClock::starting_at(start() + chrono::Duration::seconds(3));
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            stopper.cancel();
        });
        let mut runs = Vec::new();

        run_schedule("eager", &schedule, true, &clock, &cancel, || {
            runs.push((clock.now() - start()).num_seconds());
            async {}
        })
        .await;

        assert_eq!(runs, vec![3, 10, 20]);
    }

    /// Log lines, written where a test can read them.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_run_is_logged_at_start_and_after_each_run() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let schedule = Schedule::new("*/10 * * * * *", None).unwrap();
        let clock = TokioClock::starting_at(start() + chrono::Duration::seconds(3));
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            stopper.cancel();
        });

        run_schedule("logged", &schedule, false, &clock, &cancel, || async {}).await;

        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let next: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("Next run scheduled."))
            .collect();
        assert_eq!(next.len(), 2, "{log}");
        assert!(
            next[0].contains("next_run=2026-01-01T00:00:10+00:00"),
            "{log}"
        );
        assert!(
            next[1].contains("next_run=2026-01-01T00:00:20+00:00"),
            "{log}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_wait_for_the_next_tick() {
        let schedule = Schedule::new("0 0 1 1 *", None).unwrap();
        let clock = TokioClock::starting_at(start() + chrono::Duration::seconds(1));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut ran = false;
        run_schedule("yearly", &schedule, false, &clock, &cancel, || {
            ran = true;
            async {}
        })
        .await;
        assert!(!ran);
    }
}
