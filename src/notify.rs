//! The systemd notification protocol (`Type=notify`): READY=1, WATCHDOG=1,
//! STOPPING=1. Without `NOTIFY_SOCKET` (not under systemd) every call does
//! nothing. The sd-notify crate reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
//! `WATCHDOG_PID` itself: the one exception to "only `config` reads the
//! environment", since these belong to the service manager, not to the user.

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Migrations are applied and the HTTP server listens.
pub fn ready() {
    send(NotifyState::Ready);
}

/// Still starting: tells systemd why and asks it to wait `extend` longer,
/// so a database that is slow to come up does not get the service killed by
/// `TimeoutStartSec=` (systemd keeps waiting as long as this repeats).
pub fn still_starting(status: &str, extend: std::time::Duration) {
    let micros = u32::try_from(extend.as_micros()).unwrap_or(u32::MAX);
    if let Err(e) = sd_notify::notify(&[
        NotifyState::Status(status),
        NotifyState::ExtendTimeoutUsec(micros),
    ]) {
        tracing::warn!(error = %e, "Could not notify systemd.");
    }
}

/// Shutdown has begun.
pub fn stopping() {
    send(NotifyState::Stopping);
}

/// Pings the watchdog at half the interval systemd asked for, until `cancel`.
/// The pings come from the runtime itself, so a wedged runtime stops them and
/// systemd restarts the service.
pub async fn watchdog(cancel: CancellationToken) {
    let Some(period) = ping_period(sd_notify::watchdog_enabled()) else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => send(NotifyState::Watchdog),
        }
    }
}

/// Half the watchdog interval; `None` without a watchdog, or for an
/// interval of zero (`WATCHDOG_USEC=0`): `tokio::time::interval`
/// panics on a zero period.
fn ping_period(interval: Option<std::time::Duration>) -> Option<std::time::Duration> {
    interval
        .map(|interval| interval / 2)
        .filter(|period| !period.is_zero())
}

fn send(state: NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "Could not notify systemd.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_watchdog_interval_too_short_to_halve_pings_nothing_rather_than_panicking() {
        assert_eq!(ping_period(None), None);
        assert_eq!(ping_period(Some(Duration::ZERO)), None);
        assert_eq!(ping_period(Some(Duration::from_nanos(1))), None);
        assert_eq!(
            ping_period(Some(Duration::from_secs(30))),
            Some(Duration::from_secs(15))
        );
    }
}
