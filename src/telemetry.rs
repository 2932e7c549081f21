//! Logging: one `tracing` subscriber, text or JSON, on stderr.
//!
//! Logs go to stderr so that stdout carries only command output (the `sync`
//! summary, the `runs` table); journald and Docker collect both streams.
//!
//! Every line passes one writer, [`SafeStderr`], before it leaves: the
//! redactor masks secrets in it, whichever field or message holds them, and
//! control characters are escaped (a CR, a newline inside a message, a C1
//! code, a bidirectional override), so that what an API sends cannot act on
//! a terminal or forge a log line.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LogSettings};
use crate::redact::Redactor;

/// A log filter (`log.level`, `RUST_LOG`) with each directive trimmed
/// before `EnvFilter` reads it: tracing-subscriber 0.3 cuts a directive at
/// offsets counted in its trimmed form, which panics ("not a char
/// boundary") on ` é=info` and refuses ` apisync=debug`.
///
/// # Errors
/// Why the text is not a filter.
///
/// Each directive is a level (`info`) or `target=level` (`apisync=debug`):
/// a bare word that is no level (`verbose`, a typo of `debug`) would be read
/// by `tracing` as a target at every level, and is refused instead.
pub fn log_filter(text: &str) -> Result<EnvFilter, String> {
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    for directive in directives.iter().filter(|d| !d.is_empty()) {
        let level = directive
            .rsplit_once('=')
            .map_or(*directive, |(_, level)| level);
        if !LEVELS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(level.trim()))
        {
            return Err(format!(
                "`{level}` is not a log level; use one of {} (or target=level, as \
                 apisync=debug)",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(directives.join(",")).map_err(|e| e.to_string())
}

/// The levels a log filter may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Installs the global subscriber. `RUST_LOG`, when set, replaces `log.level`.
/// Calling it again is harmless (the first subscriber stays).
pub fn init(settings: &LogSettings, redactor: Redactor) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        // RUST_LOG as tracing reads it (bare targets, numeric levels); the
        // stricter rule of `log_filter` is for the file's `log.level`.
        .and_then(|filter| EnvFilter::try_new(filter.trim()).ok())
        .or_else(|| log_filter(&settings.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = settings.format == LogFormat::Text && std::io::stderr().is_terminal();
    let writer = SafeStderr {
        redactor: Arc::new(redactor),
        format: settings.format,
        ansi,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Makes one [`SafeLine`] per event.
pub struct SafeStderr {
    redactor: Arc<Redactor>,
    format: LogFormat,
    /// The formatter colours the text: its own ESC sequences stay. (It
    /// escapes ESC in the values it prints itself.)
    ansi: bool,
}

impl SafeStderr {
    /// What a line becomes on its way out.
    pub fn clean_line(&self, line: &str) -> String {
        clean_line(&self.redactor, self.format, self.ansi, line)
    }

    /// Without colours.
    pub fn new(redactor: Redactor, format: LogFormat) -> Self {
        Self {
            redactor: Arc::new(redactor),
            format,
            ansi: false,
        }
    }
}

impl<'a> MakeWriter<'a> for SafeStderr {
    type Writer = SafeLine;

    fn make_writer(&'a self) -> SafeLine {
        SafeLine {
            buffer: Vec::new(),
            redactor: Arc::clone(&self.redactor),
            format: self.format,
            ansi: self.ansi,
        }
    }
}

/// One event's text, gathered whole (the formatter may write it in
/// pieces, and a secret may straddle two), cleaned and written to stderr
/// when dropped.
pub struct SafeLine {
    buffer: Vec<u8>,
    redactor: Arc<Redactor>,
    format: LogFormat,
    ansi: bool,
}

impl Write for SafeLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SafeLine {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let line = clean_line(&self.redactor, self.format, self.ansi, &text);
        // Nowhere to report a failure to write a log line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// `text` redacted, with control characters escaped except the newline
/// that ends it (and the formatter's colours when `ansi`). In JSON, C0
/// characters are already escaped by the formatter; the rest are written
/// as `\uXXXX`, so that the line stays valid JSON.
fn clean_line(redactor: &Redactor, format: LogFormat, ansi: bool, text: &str) -> String {
    let redacted = redactor.redact(text);
    let (body, newline) = match redacted.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (redacted.as_str(), ""),
    };
    let mut out = String::with_capacity(body.len() + 1);
    for c in body.chars() {
        match format {
            LogFormat::Text if ansi && c == '\u{1b}' => out.push(c),
            LogFormat::Text => crate::redact::push_printable(&mut out, c),
            LogFormat::Json if crate::redact::needs_escape(c) => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            LogFormat::Json => out.push(c),
        }
    }
    out.push_str(newline);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_redacted_and_escaped() {
        let redactor = Redactor::new(["s3cr3t/t0ken".to_owned()], None);
        let text = SafeStderr::new(redactor.clone(), LogFormat::Text);
        assert_eq!(
            text.clean_line("WARN error=echo s3cr3t\\/t0ken at \u{1b}[2J\r\u{7}\u{9b}x\n"),
            "WARN error=echo [redacted] at \\x1b[2J\\r\\x07\\u{9b}x\n"
        );
        let json = SafeStderr::new(redactor, LogFormat::Json);
        let line = json.clean_line("{\"error\":\"s3cr3t/t0ken \u{9b}\u{202e}\"}\n");
        assert_eq!(line, "{\"error\":\"[redacted] \\u009b\\u202e\"}\n");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["error"], "[redacted] \u{9b}\u{202e}");
    }

    /// Found by the configuration fuzz test: `log.level = " 9é=x"` (a
    /// directive after whitespace, with a character of several bytes)
    /// panicked inside tracing-subscriber when validated.
    #[test]
    fn log_filters_with_spaces_and_non_ascii_do_not_panic() {
        for text in [
            " é=info",
            "9\u{fffd}\u{fffd}j=\u{fffd}",
            " 9\u{fffd}\u{fffd}j=\u{fffd}",
            "info, é=debug",
        ] {
            let _ = log_filter(text);
        }
        assert_eq!(
            log_filter(" apisync=debug , warn").unwrap().to_string(),
            log_filter("apisync=debug,warn").unwrap().to_string()
        );
    }
}
