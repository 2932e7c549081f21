//! SIGTERM (systemd, `docker stop`) and SIGINT (Ctrl-C) become a cancelled
//! `CancellationToken`; a second signal ends the process at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Spawns the signal listener. The first signal cancels `token` (a graceful
/// stop: runs commit the page they are writing and are recorded
/// `interrupted`); the second exits immediately with 128 + the signal number.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn listen(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = first,
            "Received {first}; stopping gracefully. Send it again to exit at once."
        );
        token.cancel();
        let (second, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 128 + 15),
            _ = int.recv() => ("SIGINT", 128 + 2),
        };
        tracing::warn!(signal = second, "Received a second signal; exiting now.");
        std::process::exit(code);
    });
    Ok(())
}
