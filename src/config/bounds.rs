//! The allowed range of every number and duration in the configuration, in
//! one place: `validate` checks values against it, and a value that does not
//! even fit its type (a negative count, a number beyond `u32`) is reported
//! by `load_str` with the same range.
//!
//! The ranges are generous (nobody needs a 10-year timeout) but keep every
//! value far from what overflows an `Instant`, a `chrono` time, a semaphore
//! or an offset computation. The code that uses durations saturates on its
//! own too ([`timer`]), so a key added later without a bound cannot panic.

use std::time::Duration;

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The longest wait any timer is given (about 100 years): adding it to any
/// `Instant` the clock can show does not overflow.
pub const LONGEST_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `duration`, or [`LONGEST_WAIT`] if longer: for durations handed to code
/// that adds them to an `Instant` (sqlx's acquire timeout, throttles).
pub fn timer(duration: Duration) -> Duration {
    duration.min(LONGEST_WAIT)
}

/// Where a value must lie, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Range {
    Count(u64, u64),
    Bytes(u64, u64),
    Time(Duration, Duration),
}

impl Range {
    /// `1 to 1024`, `1KiB to 4GiB`, `1ms to 1h`.
    pub(super) fn describe(&self) -> String {
        match *self {
            Range::Count(min, max) => format!("{min} to {max}"),
            Range::Bytes(min, max) => format!("{} to {}", bytes(min), bytes(max)),
            Range::Time(min, max) => format!("{} to {}", time(min), time(max)),
        }
    }

    /// `Err(message)` naming the value and the range when `value` lies outside.
    pub(super) fn check_count(&self, value: u64) -> Result<(), String> {
        let (min, max, shown) = match *self {
            Range::Count(min, max) => (min, max, value.to_string()),
            Range::Bytes(min, max) => (min, max, bytes(value)),
            Range::Time(..) => unreachable!("a count checked against a time range"),
        };
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(self.outside(&shown))
        }
    }

    /// Like [`Range::check_count`] for a duration.
    pub(super) fn check_time(&self, value: Duration) -> Result<(), String> {
        let Range::Time(min, max) = *self else {
            unreachable!("a duration checked against a count range")
        };
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(self.outside(&time(value)))
        }
    }

    fn outside(&self, shown: &str) -> String {
        format!(
            "`{shown}` is outside the allowed range, {}",
            self.describe()
        )
    }
}

/// The range of `key`: a top-level key (`database.acquire_timeout`), or a
/// key of a job without the job (`retry.max_backoff`, `pagination.size`).
/// `None` for keys that hold no number or duration.
pub(super) fn range(key: &str) -> Option<Range> {
    use Range::{Bytes, Count, Time};
    Some(match key {
        // Top level. A run is a task and holds at most one connection.
        "max_concurrent_jobs" => Count(1, 1024),
        "shutdown_timeout" => Time(SECOND, HOUR),
        "runs_retention" => Time(HOUR, 36_500 * DAY),
        "database.max_connections" => Count(1, 1000),
        "database.acquire_timeout" => Time(MILLISECOND, HOUR),
        "database.lock_timeout" => Time(SECOND, HOUR),
        // Jobs.
        "max_rejected" | "max_deleted" => Count(0, 1_000_000_000_000),
        "full_refresh" => Time(SECOND, 3650 * DAY),
        "max_pages" => Count(1, 100_000_000),
        "max_body_bytes" => Bytes(1 << 10, 4 << 30),
        "request.timeout" => Time(MILLISECOND, HOUR),
        "retry.max_attempts" => Count(1, 10_000),
        "retry.initial_backoff" => Time(MILLISECOND, HOUR),
        "retry.max_backoff" => Time(MILLISECOND, DAY),
        "retry.max_retry_after" => Time(Duration::ZERO, DAY),
        "retry.max_elapsed" => Time(MILLISECOND, 7 * DAY),
        "pagination.size" | "pagination.limit" => Count(1, 1_000_000),
        "pagination.start" => Count(0, 1_000_000_000),
        "pagination.end_on_status" => Count(400, 499),
        "incremental.lookback" | "incremental.max_future" => Time(Duration::ZERO, 3650 * DAY),
        _ => return None,
    })
}

/// `rate_limit = "COUNT/PERIOD"`: the range of each half.
pub(super) const RATE_COUNT: Range = Range::Count(1, 1_000_000);
pub(super) const RATE_PERIOD: Range = Range::Time(MILLISECOND, DAY);

fn time(duration: Duration) -> String {
    // humantime writes 3650 days as "9years 11months 30days 7h 12m"; whole
    // days read better, and round values are what the ranges hold.
    let secs = duration.as_secs();
    if duration.subsec_nanos() == 0 && secs >= 2 * 86_400 && secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else {
        humantime::format_duration(duration).to_string()
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(unit, _)| n >= *unit && n.is_multiple_of(*unit))
        .map_or_else(
            || n.to_string(),
            |(unit, name)| format!("{}{name}", n / unit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_written_in_the_file() {
        assert_eq!(
            range("max_concurrent_jobs").unwrap().describe(),
            "1 to 1024"
        );
        assert_eq!(range("max_body_bytes").unwrap().describe(), "1KiB to 4GiB");
        assert_eq!(range("request.timeout").unwrap().describe(), "1ms to 1h");
        assert_eq!(
            range("incremental.lookback").unwrap().describe(),
            "0s to 3650d"
        );
        assert_eq!(range("request.url"), None);
        let error = range("max_pages").unwrap().check_count(0).unwrap_err();
        assert_eq!(error, "`0` is outside the allowed range, 1 to 100000000");
    }

    #[test]
    fn every_range_fits_a_timer() {
        let keys = [
            "shutdown_timeout",
            "database.acquire_timeout",
            "database.lock_timeout",
            "request.timeout",
            "retry.initial_backoff",
            "retry.max_backoff",
            "retry.max_retry_after",
            "retry.max_elapsed",
            "incremental.lookback",
            "incremental.max_future",
        ];
        for key in keys {
            let Some(Range::Time(_, max)) = range(key) else {
                panic!("{key} has a time range")
            };
            assert!(max <= LONGEST_WAIT, "{key}");
            assert!(
                std::time::Instant::now().checked_add(max).is_some(),
                "{key}"
            );
        }
        assert_eq!(timer(Duration::MAX), LONGEST_WAIT);
    }

    /// `(section, key, a value below the range, a value above it)`; the
    /// section is `""` (top level), `"database"`, `"job"` (the job itself)
    /// or a table of the job.
    const CASES: &[(&str, &str, Option<&str>, &str)] = &[
        ("", "max_concurrent_jobs", Some("0"), "1025"),
        ("", "shutdown_timeout", Some("\"999ms\""), "\"61m\""),
        ("", "runs_retention", Some("\"59m\""), "\"36501d\""),
        ("database", "max_connections", Some("0"), "1001"),
        ("database", "acquire_timeout", Some("\"0s\""), "\"61m\""),
        ("database", "lock_timeout", Some("\"999ms\""), "\"61m\""),
        ("job", "max_rejected", None, "1000000000001"),
        ("job", "max_pages", Some("0"), "100000001"),
        ("job", "max_body_bytes", Some("1023"), "\"5GiB\""),
        ("request", "timeout", Some("\"0s\""), "\"2h\""),
        ("retry", "max_attempts", Some("0"), "10001"),
        ("retry", "initial_backoff", Some("\"0s\""), "\"2h\""),
        ("retry", "max_backoff", Some("\"0s\""), "\"2d\""),
        ("retry", "max_retry_after", None, "\"2d\""),
        ("retry", "max_elapsed", Some("\"0s\""), "\"8d\""),
        ("pagination", "size", Some("0"), "1000001"),
        ("pagination", "start", None, "1000000001"),
        ("pagination", "limit", Some("0"), "1000001"),
        ("pagination", "end_on_status", Some("[399]"), "[500]"),
        ("incremental", "lookback", None, "\"3651d\""),
        ("incremental", "max_future", None, "\"3651d\""),
    ];

    /// A configuration with `key = value` in `section`.
    fn with(section: &str, key: &str, value: &str) -> String {
        let line = format!("{key} = {value}\n");
        let pagination = match key {
            "limit" => "kind = \"offset\"\n",
            _ => "kind = \"page\"\n",
        };
        let at = |name: &str| if section == name { line.as_str() } else { "" };
        format!(
            "{top}[database]\n{database}\n[[jobs]]\nname = \"orders\"\nschedule = \"0 * * * *\"\n\
             table = \"orders\"\nkey = [\"id\"]\n{job}\n[jobs.request]\n\
             url = \"https://api.example.com/orders\"\n{request}\n[jobs.retry]\n{retry}\n\
             [jobs.pagination]\n{pagination}{paging}\n[jobs.incremental]\n\
             field = \"updated_at\"\nparam = \"since\"\n{incremental}",
            top = at(""),
            database = at("database"),
            job = at("job"),
            request = at("request"),
            retry = at("retry"),
            paging = at("pagination"),
            incremental = at("incremental"),
        )
    }

    #[test]
    fn every_bounded_key_is_refused_outside_its_range_naming_key_and_range() {
        let env = std::collections::HashMap::new();
        let origin = std::path::Path::new("t.toml");
        let ok = super::super::load_str(&with("", "log.x", "1"), origin, &env);
        assert!(
            ok.is_err(),
            "the unknown key makes the frame's check meaningful"
        );
        super::super::load_str(&with("job", "run_on_start", "true"), origin, &env)
            .unwrap_or_else(|e| panic!("the frame is valid: {e}"));
        for &(section, key, below, above) in CASES {
            let name = match section {
                "" | "job" => key.to_owned(),
                other => format!("{other}.{key}"),
            };
            let range = range(&name).unwrap_or_else(|| panic!("{name} has a range"));
            let place = match section {
                "" | "database" => format!("key \"{name}\""),
                _ => format!("job \"orders\", key \"{name}\""),
            };
            for value in below.into_iter().chain([above]) {
                let text = with(section, key, value);
                let error = match super::super::load_str(&text, origin, &env) {
                    Ok(_) => panic!("{name} = {value} is accepted"),
                    Err(error) => error,
                };
                let expected = match name.as_str() {
                    // end_on_status says why in its own words.
                    "pagination.end_on_status" => "cannot mean \"past the end\"".to_owned(),
                    _ => range.describe(),
                };
                assert!(
                    error
                        .problems
                        .iter()
                        .any(|p| p.contains(&place) && p.contains(&expected)),
                    "{name} = {value}: expected {place} and {expected:?} in {:?}",
                    error.problems
                );
            }
        }
    }

    #[test]
    fn a_key_of_more_fields_than_a_primary_key_holds_is_refused() {
        let env = std::collections::HashMap::new();
        let origin = std::path::Path::new("t.toml");
        let fields = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| format!("\"f{i}\"")).collect();
            format!("[{}]", list.join(", "))
        };
        let text = with("", "x", "1").replace("key = [\"id\"]", &format!("key = {}", fields(33)));
        let text = text.replace("x = 1\n", "");
        let error = super::super::load_str(&text, origin, &env).unwrap_err();
        assert!(
            error.problems.iter().any(|p| p
                .contains("job \"orders\", key \"key\": 33 fields are more than a primary key")
                && p.contains("allowed: 1 to 32")),
            "{:?}",
            error.problems
        );
        let text = with("", "x", "1").replace("key = [\"id\"]", &format!("key = {}", fields(32)));
        super::super::load_str(&text.replace("x = 1\n", ""), origin, &env)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn rate_limits_are_bounded_in_count_and_period() {
        let env = std::collections::HashMap::new();
        let origin = std::path::Path::new("t.toml");
        let cases = [
            ("\"1/300000000000y\"", "the period", "1ms to 1d"),
            ("\"1/2d\"", "the period", "1ms to 1d"),
            ("\"1000001/s\"", "the request count", "1 to 1000000"),
            ("\"4294967296/s\"", "the request count", "1 to 1000000"),
            ("\"1/500us\"", "the period", "1ms to 1d"),
        ];
        for (value, part, range) in cases {
            let text = with("job", "rate_limit", value);
            let error = super::super::load_str(&text, origin, &env).unwrap_err();
            assert!(
                error
                    .problems
                    .iter()
                    .any(|p| p.contains("job \"orders\", key \"rate_limit\"")
                        && p.contains(part)
                        && p.contains(range)),
                "{value}: {:?}",
                error.problems
            );
        }
        let text = with("job", "rate_limit", "\"24/1d\"");
        super::super::load_str(&text, origin, &env).unwrap_or_else(|e| panic!("{e}"));
    }
}
