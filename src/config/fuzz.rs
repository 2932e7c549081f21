//! Arbitrary values for every configuration key: loading never panics,
//! refuses with a problem naming the key (or the variable) it was given,
//! or accepts a value inside its range.

use std::collections::HashMap;
use std::path::Path;

use super::bounds::range;
use super::{PaginationKind, Settings, Threshold, load_str};
use crate::fuzz::Fuzz;

/// Every key with all its sections present, each set to a valid value.
const BASE: &str = r#"
max_concurrent_jobs = 4
shutdown_timeout = "10s"

[database]
url = "postgres://u@127.0.0.1:5432/d"
max_connections = 5
acquire_timeout = "10s"
lock_timeout = "30s"

[server]
listen = "127.0.0.1:9464"

[log]
level = "info"
format = "text"

[[jobs]]
name = "orders"
schedule = "*/15 * * * *"
timezone = "Europe/Berlin"
run_on_start = false
table = "orders"
key = ["id"]
records = "/data"
hash_exclude = ["/meta/request_id"]
max_rejected = "10%"
max_pages = 10000
max_body_bytes = "64MiB"
rate_limit = "10/s"
rate_limit_scope = "job"

[jobs.request]
url = "https://api.example.com/orders"
method = "GET"
headers = { Authorization = "Bearer t0ken" }
query = { status = "all" }
timeout = "30s"

[jobs.retry]
max_attempts = 5
initial_backoff = "200ms"
max_backoff = "30s"
max_retry_after = "2m"
max_elapsed = "5m"

[jobs.pagination]
kind = "page"
page_param = "page"
size_param = "per_page"
size = 100
start = 1
total_pages_path = "/meta/pages"

[jobs.incremental]
field = "updated_at"
param = "updated_since"
lookback = "5m"
max_future = "1d"
"#;

/// `(table, key)`: `""` is the top level, `"job"` the job itself, else a
/// table of the job or a top-level section. A key of `""` replaces the
/// whole table.
const KEYS: &[(&str, &str)] = &[
    ("", "max_concurrent_jobs"),
    ("", "shutdown_timeout"),
    ("", "database"),
    ("", "jobs"),
    ("database", "url"),
    ("database", "max_connections"),
    ("database", "acquire_timeout"),
    ("database", "lock_timeout"),
    ("server", "listen"),
    ("log", "level"),
    ("log", "format"),
    ("job", "name"),
    ("job", "schedule"),
    ("job", "timezone"),
    ("job", "run_on_start"),
    ("job", "table"),
    ("job", "key"),
    ("job", "records"),
    ("job", "hash_exclude"),
    ("job", "max_rejected"),
    ("job", "max_pages"),
    ("job", "max_body_bytes"),
    ("job", "rate_limit"),
    ("job", "rate_limit_scope"),
    ("job", "request"),
    ("job", "retry"),
    ("job", "incremental"),
    ("request", "url"),
    ("request", "method"),
    ("request", "headers"),
    ("request", "query"),
    ("request", "body"),
    ("request", "timeout"),
    ("retry", "max_attempts"),
    ("retry", "initial_backoff"),
    ("retry", "max_backoff"),
    ("retry", "max_retry_after"),
    ("retry", "max_elapsed"),
    ("pagination", "kind"),
    ("pagination", "page_param"),
    ("pagination", "size_param"),
    ("pagination", "size"),
    ("pagination", "start"),
    ("pagination", "total_pages_path"),
    ("pagination", "limit"),
    ("pagination", "total_path"),
    ("pagination", "total_header"),
    ("pagination", "total_method"),
    ("pagination", "end_on_status"),
    ("pagination", "cursor_path"),
    ("pagination", "next_header"),
    ("pagination", "end_when_missing"),
    ("incremental", "field"),
    ("incremental", "param"),
    ("incremental", "lookback"),
    ("incremental", "max_future"),
    ("incremental", "format"),
    ("incremental", "timezone"),
];

/// Strings an operator (or an attacker) might write.
const STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "5",
    "-5s",
    "0s",
    "1ns",
    "999ms",
    "1h 1ns",
    "300000000000y",
    "18446744073709551615s",
    "1000000y",
    "3651d",
    "10/s",
    "0/s",
    "1/0s",
    "1/300000000000y",
    "4294967296/s",
    "1/1ns",
    "64MiB",
    "18446744073709551615GiB",
    "1023",
    "10%",
    "nan%",
    "inf%",
    "-1%",
    "100.0000001%",
    "${UNSET}",
    "${",
    "${SET}",
    "\0",
    "\u{1b}[31m\u{7}",
    "é😀",
    "postgres://u:p@h/d",
    "sqlite::memory:",
    "sqlite://f.db",
    "mysql://x",
    "page",
    "offset",
    "cursor",
    "link_header",
    "next_url",
    "HEAD",
    "POST",
    "*/5 * * * *",
    "0 0 30 2 *",
    "61 * * * *",
    "*/0 * * * *",
    "0 0 ? * 5L",
    "0 0 * * 5#6",
    "0 0 LW * *",
    "1-100000000000 * * * *",
    "0 0 0 1 1 ? 2099",
    "Europe/Berlin",
    "Mars/Olympus",
    "/data",
    "/data/0",
    "/meta/pages",
    "~2",
    "/a~",
    "a\\b",
    "X Total",
    "%Y-%m-%d %Q",
    "%s",
    "[::1]:0",
    "999.1.1.1:1",
    "apisync=debug,warn",
    " é=info",
    "info, [span{a=é}]=debug",
    "json",
    "host",
];

fn value(fuzz: &mut Fuzz, depth: usize) -> toml::Value {
    use toml::Value;
    match fuzz.rng.u8(0..if depth > 1 { 5 } else { 8 }) {
        0 => Value::Integer(
            [
                0,
                1,
                -1,
                404,
                1023,
                1024,
                1025,
                65_536,
                4_294_967_296,
                i64::MAX,
                i64::MIN,
            ][fuzz.rng.usize(0..11)],
        ),
        1 => Value::Float(
            [1.5, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e308][fuzz.rng.usize(0..6)],
        ),
        2 => Value::Boolean(fuzz.rng.bool()),
        3 => Value::String(String::from_utf8_lossy(&fuzz.bytes(12)).into_owned()),
        4 => Value::String(fuzz.pick(STRINGS).to_owned()),
        5 => Value::Array(
            (0..fuzz.rng.usize(0..3))
                .map(|_| value(fuzz, depth + 1))
                .collect(),
        ),
        6 => Value::Table(
            (0..fuzz.rng.usize(0..3))
                .map(|_| {
                    let key = fuzz.pick(&["a", "Authorization", "status", "X Y", ""]);
                    (key.to_owned(), value(fuzz, depth + 1))
                })
                .collect(),
        ),
        _ => Value::Datetime("1979-05-27T07:32:00Z".parse().unwrap()),
    }
}

/// A value of the kind `key` takes, at or near the ends of its range.
fn near_range(fuzz: &mut Fuzz, section: &str, key: &str) -> Option<toml::Value> {
    use super::bounds::Range;
    let name = match section {
        "" | "job" => key.to_owned(),
        other => format!("{other}.{key}"),
    };
    let (min, max, unit) = match range(&name)? {
        Range::Count(min, max) | Range::Bytes(min, max) => (min, max, ""),
        Range::Time(min, max) => (min.as_millis() as u64, max.as_millis() as u64, "ms"),
    };
    let n = match fuzz.rng.u8(0..5) {
        0 => min,
        1 => max,
        2 => min.wrapping_sub(1),
        3 => max + 1,
        _ => fuzz.rng.u64(min..=max),
    };
    let value = match (unit, i64::try_from(n)) {
        ("", Ok(n)) if name != "pagination.end_on_status" => toml::Value::Integer(n),
        ("", Ok(n)) => toml::Value::Array(vec![toml::Value::Integer(n)]),
        _ => toml::Value::String(format!("{n}{unit}")),
    };
    Some(value)
}

/// The table `section` names in `document`, unless a mutation replaced it.
fn table<'a>(document: &'a mut toml::Table, section: &str) -> Option<&'a mut toml::Table> {
    match section {
        "" => Some(document),
        "database" | "server" | "log" => document.get_mut(section)?.as_table_mut(),
        _ => {
            let job = document
                .get_mut("jobs")?
                .as_array_mut()?
                .first_mut()?
                .as_table_mut()?;
            if section == "job" {
                return Some(job);
            }
            job.get_mut(section)?.as_table_mut()
        }
    }
}

/// A value accepted lies inside its range.
fn check_ranges(settings: &Settings) -> Result<(), String> {
    let count = |key: &str, value: u64| range(key).unwrap().check_count(value);
    let time = |key: &str, value| range(key).unwrap().check_time(value);
    count("max_concurrent_jobs", settings.max_concurrent_jobs as u64)?;
    time("shutdown_timeout", settings.shutdown_timeout)?;
    count(
        "database.max_connections",
        u64::from(settings.database.max_connections),
    )?;
    time(
        "database.acquire_timeout",
        settings.database.acquire_timeout,
    )?;
    time("database.lock_timeout", settings.database.lock_timeout)?;
    for job in &settings.jobs {
        if let Threshold::Count(n) = job.max_rejected {
            count("max_rejected", n)?;
        }
        count("max_pages", job.max_pages)?;
        count("max_body_bytes", job.max_body_bytes)?;
        time("request.timeout", job.request.timeout)?;
        count("retry.max_attempts", u64::from(job.retry.max_attempts))?;
        time("retry.initial_backoff", job.retry.initial_backoff)?;
        time("retry.max_backoff", job.retry.max_backoff)?;
        time("retry.max_retry_after", job.retry.max_retry_after)?;
        time("retry.max_elapsed", job.retry.max_elapsed)?;
        if let Some(limit) = job.rate_limit {
            super::bounds::RATE_COUNT.check_count(u64::from(limit.count))?;
            super::bounds::RATE_PERIOD.check_time(limit.period)?;
        }
        match &job.pagination.kind {
            PaginationKind::Page { size, start, .. } => {
                size.map_or(Ok(()), |size| count("pagination.size", size))?;
                count("pagination.start", *start)?;
            }
            PaginationKind::Offset { limit, .. } => {
                limit.map_or(Ok(()), |limit| count("pagination.limit", limit))?;
            }
            _ => {}
        }
        if let Some(incremental) = &job.incremental {
            time("incremental.lookback", incremental.lookback)?;
            time("incremental.max_future", incremental.max_future)?;
        }
    }
    Ok(())
}

/// Variables that set keys outside [[jobs]], some misspelt.
const VARIABLES: &[&str] = &[
    "APISYNC__MAX_CONCURRENT_JOBS",
    "APISYNC__SHUTDOWN_TIMEOUT",
    "APISYNC__DATABASE__URL",
    "APISYNC__DATABASE__MAX_CONNECTIONS",
    "APISYNC__DATABASE__ACQUIRE_TIMEOUT",
    "APISYNC__DATABASE__LOCK_TIMEOUT",
    "APISYNC__SERVER__LISTEN",
    "APISYNC__LOG__LEVEL",
    "APISYNC__LOG__FORMAT",
    "APISYNC__DATABSE__URL",
    "APISYNC__LOG__LEVEL__DEEP",
    "APISYNC__SERVER",
    "APISYNC__NOPE",
    "DATABASE_URL",
];

#[test]
fn fuzz_every_key_is_accepted_in_range_or_refused_by_name() {
    let mut fuzz = Fuzz::new(
        "fuzz_every_key_is_accepted_in_range_or_refused_by_name",
        29,
        3_000,
    );
    let origin = Path::new("fuzz.toml");
    let base: toml::Table = BASE.parse().unwrap();
    let env: HashMap<String, String> = [("SET".to_owned(), "v".to_owned())].into();
    load_str(BASE, origin, &env).unwrap_or_else(|e| panic!("the base is valid: {e}"));
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..fuzz.iterations {
        let mut document = base.clone();
        let mut env = env.clone();
        // What the problem must name: a key's last part, or a variable.
        let mut names = Vec::new();
        for _ in 0..fuzz.rng.usize(1..=2) {
            if fuzz.rng.u8(0..5) == 0 {
                let variable = fuzz.pick(VARIABLES);
                let value = match fuzz.rng.bool() {
                    true => fuzz.pick(STRINGS).to_owned(),
                    false => String::from_utf8_lossy(&fuzz.bytes(8)).into_owned(),
                };
                env.insert(variable.to_owned(), value);
                names.push(variable.to_owned());
            } else {
                let (section, key) = KEYS[fuzz.rng.usize(0..KEYS.len())];
                let new = match fuzz.rng.bool() {
                    true => near_range(&mut fuzz, section, key),
                    false => None,
                }
                .unwrap_or_else(|| value(&mut fuzz, 0));
                if let Some(table) = table(&mut document, section) {
                    table.insert(key.to_owned(), new);
                    // A `jobs` entry that is no table is `job #1`.
                    names.push(key.trim_end_matches('s').to_owned());
                }
            }
        }
        if names.is_empty() {
            continue;
        }
        let Ok(mut text) = toml::to_string(&document) else {
            continue; // a value TOML cannot write where it was put
        };
        let spoilt = fuzz.rng.u8(0..6) == 0;
        if spoilt {
            text = String::from_utf8_lossy(&fuzz.mutate(text.as_bytes())).into_owned();
        }
        let outcome = std::panic::catch_unwind(|| load_str(&text, origin, &env));
        let Ok(outcome) = outcome else {
            panic!("load_str panicked on {names:?} in\n{text}\nwith {env:?}");
        };
        match outcome {
            Ok(settings) => {
                accepted += 1;
                if let Err(e) = check_ranges(&settings) {
                    panic!("accepted out of range ({e}) after setting {names:?} in\n{text}");
                }
            }
            Err(error) => {
                refused += 1;
                assert!(!error.problems.is_empty(), "{text}");
                let named = error
                    .problems
                    .iter()
                    .any(|p| names.iter().any(|name| p.contains(name.as_str())));
                // A spoilt file may break anywhere: TOML's error says where.
                assert!(
                    named || spoilt,
                    "no problem names {names:?}: {:?}\n{text}\nwith {env:?}",
                    error.problems
                );
            }
        }
    }
    assert!(
        accepted * 30 >= fuzz.iterations && refused * 2 >= fuzz.iterations,
        "{accepted} accepted, {refused} refused"
    );
}
