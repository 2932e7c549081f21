//! The configuration: one `Settings` tree read from a TOML file, layered with
//! environment variables, validated in full before anything runs.
//!
//! Only this module reads the configuration file and the `APISYNC__…`,
//! `APISYNC_CONFIG` and `DATABASE_URL` variables; everything else receives
//! values. The environment is passed in as a map so that tests never mutate the
//! process environment.

mod auth;
mod bounds;
#[cfg(test)]
mod fuzz;
mod layers;
mod pagination;
mod schema;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub use crate::record::KeyEntry;
use crate::redact::Redactor;
pub use auth::{AuthSettings, ClientAuth, KeyPlacement, LoginBody, OAuthClient, form_encode};
pub use bounds::{LONGEST_WAIT, timer};
pub use pagination::{Locator, Pagination, PaginationKind, TotalMethod, ValueIn};
pub use schema::json_schema;

/// The file read when neither `--config` nor `$APISYNC_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "apisync.toml";

/// Picks the configuration file: `--config`, else `$APISYNC_CONFIG`, else
/// `./apisync.toml`.
pub fn config_path(cli: Option<&Path>, env: &HashMap<String, String>) -> PathBuf {
    match (cli, env.get("APISYNC_CONFIG")) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(path)) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Reads, layers and validates the configuration file at `path`.
///
/// Layers, lowest first: the file; `DATABASE_URL`; `APISYNC__SECTION__KEY`
/// variables (for example `APISYNC__DATABASE__URL` sets `database.url`). String
/// values in the file may reference `${VAR}`.
///
/// # Errors
/// A [`ConfigError`] naming the file and every problem found: the file is
/// missing or not TOML, a key is unknown, a value has the wrong type or fails
/// validation, or a referenced variable is not set.
pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (name one with --config or APISYNC_CONFIG)"
        } else {
            ""
        };
        ConfigError::single(path, format!("cannot read the file: {e}{hint}"))
    })?;
    load_str(&text, path, env)
}

/// Like [`load`], from text already in memory; `origin` is only used in messages.
pub fn load_str(
    text: &str,
    origin: &Path,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    // The position and the reason, not the line itself: it may hold a
    // header value written in the file, and nothing parsed says which.
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map_or(0, |span| span.start).min(text.len());
        let before = &text.as_bytes()[..at];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        let message = e.message().trim_end();
        ConfigError::single(
            origin,
            format!("not valid TOML at line {line}, column {column}: {message}"),
        )
    })?;
    let job_names = layers::job_names(&table);
    let url_origin = layers::url_origin(&table, origin, env);

    let mut secrets = Vec::new();
    let base = origin
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut problems = layers::expand_variables(&mut table, env, base, &mut secrets, &job_names);
    let mut overrides = layers::EnvOverrides::default();
    problems.extend(layers::apply_env_overrides(&mut table, env, &mut overrides));
    if !problems.is_empty() {
        return Err(ConfigError::new(origin, problems));
    }

    // Messages quote values (`server.listen`, `schedule`, `table` …), and a
    // value may come from `${VAR}`: every problem passes the redactor.
    let describe = |e: &serde_path_to_error::Error<toml::de::Error>| {
        let key = layers::key_of(e.path());
        // A value from the environment is not the file's fault.
        let place = match overrides.source_of(&key) {
            Some(_) => overrides.place(&key),
            None => layers::describe_path(e.path(), &job_names),
        };
        // A number that does not even fit its type (negative, beyond
        // u32) gets the range it must lie in, as a bounded one would.
        let allowed = bounds::range(&key)
            .map(|range| format!(" (allowed: {})", range.describe()))
            .unwrap_or_default();
        let message = e.inner().message().to_string();
        let redactor = Redactor::new(secrets.iter().cloned(), None);
        redactor.redact(&format!("{place}{message}{allowed}"))
    };
    // Every unknown key at once, each with the keys allowed where it
    // stands: serde stops at the first, so each is noted, taken out, and
    // the tree read again.
    let mut unknown = Vec::new();
    let mut settings: Settings = loop {
        match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(settings) => break settings,
            Err(e) => {
                let problem = describe(&e);
                if unknown.len() < MAX_UNKNOWN_KEYS
                    && let Some(field) = unknown_field(e.inner().message())
                    && layers::remove_key(&mut table, e.path(), &field)
                {
                    unknown.push(problem);
                    continue;
                }
                unknown.push(problem);
                return Err(ConfigError::new(origin, unknown));
            }
        }
    };
    if !unknown.is_empty() {
        return Err(ConfigError::new(origin, unknown));
    }

    settings.database.url_origin = url_origin;
    secrets.extend(setting_secrets(&settings));
    settings.redactor = Redactor::new(secrets, None);
    let problems = validate::validate(&settings, &overrides);
    if !problems.is_empty() {
        let problems = problems
            .iter()
            .map(|problem| settings.redactor.redact(problem))
            .collect();
        return Err(ConfigError::new(origin, problems));
    }
    Ok(settings)
}

/// The most unknown keys reported at once (each costs one more reading of
/// the tree).
const MAX_UNKNOWN_KEYS: usize = 50;

/// The key serde's "unknown field `x`, expected …" names.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The secrets written in the settings themselves, beside `${VAR}` values.
///
/// - Header values (`Authorization = "Bearer …"`), and the credential after
///   the scheme (`Bearer `, `Token `, `Basic `): APIs echo it without its
///   scheme. A `Basic` credential also as the `user:password` it decodes to,
///   and that password.
/// - The userinfo of `request.url`: reqwest sends it as `Authorization:
///   Basic base64(user:password)`, so that form too, and the password (or a
///   user without one, which is then a token) decoded.
/// - The database password, as written in the URL and decoded.
fn setting_secrets(settings: &Settings) -> Vec<String> {
    use secrecy::ExposeSecret;
    let mut secrets = Vec::new();
    for job in &settings.jobs {
        for value in job.request.headers.values() {
            let value = value.expose_secret().trim();
            if let Some((scheme, credential)) = value.split_once(' ') {
                let credential = credential.trim();
                if scheme.eq_ignore_ascii_case("basic")
                    && let Some(plain) = crate::redact::unbase64(credential)
                    && let Ok(plain) = String::from_utf8(plain)
                {
                    if let Some((_, password)) = plain.split_once(':') {
                        secrets.push(password.to_owned());
                    }
                    secrets.push(plain);
                }
                secrets.push(credential.to_owned());
            }
            secrets.push(value.to_owned());
        }
        if let Ok(url) = reqwest::Url::parse(&job.request.url) {
            secrets.extend(userinfo_secrets(&url));
        }
        if let Some(auth) = &job.auth {
            secrets.extend(auth.secrets());
        }
    }
    if let Some(url) = &settings.database.url
        && let Ok(url) = reqwest::Url::parse(url.expose_secret())
        && let Some(password) = url.password()
    {
        secrets.push(password.to_owned());
        secrets.push(percent_decode(password));
    }
    secrets
}

fn userinfo_secrets(url: &reqwest::Url) -> Vec<String> {
    let user = percent_decode(url.username());
    match url.password() {
        Some(password) => {
            let password = percent_decode(password);
            let basic = crate::redact::base64(format!("{user}:{password}").as_bytes());
            vec![password, basic]
        }
        None if !user.is_empty() => {
            let basic = crate::redact::base64(format!("{user}:").as_bytes());
            vec![user, basic]
        }
        None => Vec::new(),
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {}: {}", path.display(), problems.join("; "))]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl ConfigError {
    fn new(path: &Path, problems: Vec<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            problems,
        }
    }

    fn single(path: &Path, problem: String) -> Self {
        Self::new(path, vec![problem])
    }
}

/// The whole configuration.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `apisync run` starts at most this many runs at once, across all jobs;
    /// a due run waits for a free slot.
    #[serde(
        default = "default_max_concurrent_jobs",
        deserialize_with = "number_or_string"
    )]
    pub max_concurrent_jobs: usize,
    /// On SIGTERM or SIGINT, `apisync run` stops scheduling, lets each run in
    /// flight commit the page it is writing, records it `interrupted`, and
    /// exits within this time.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub shutdown_timeout: Duration,
    /// Runs (in `apisync.runs`) that finished longer ago than this, and
    /// rejects stored longer ago, are deleted after each run of their job
    /// (`"90d"`). Default: kept for ever.
    #[serde(default, with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub runs_retention: Option<Duration>,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// The jobs, in file order.
    #[serde(default)]
    pub jobs: Vec<JobSettings>,
    /// Removes the values of `${VAR}` references, header values, URL
    /// userinfo and the database password from any text that leaves the
    /// process (see `redact`).
    #[serde(skip)]
    pub redactor: Redactor,
}

impl Settings {
    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&JobSettings> {
        self.jobs.iter().find(|job| job.name == name)
    }
}

fn default_max_concurrent_jobs() -> usize {
    4
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[database]`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/database`, or `sqlite://FILE`.
    /// Default: `sqlite://apisync.db` in the working directory. Overridden by
    /// `DATABASE_URL`, which is overridden by `APISYNC__DATABASE__URL`.
    #[schemars(with = "Option<String>")]
    pub url: Option<SecretString>,
    /// Pool size. Each running job holds at most one connection at a time, and
    /// only while it writes a page, so a few connections serve many jobs.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "number_or_string"
    )]
    pub max_connections: u32,
    /// How long a run waits for a free connection before it fails.
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub acquire_timeout: Duration,
    /// How long one statement may wait for a lock another session holds
    /// (`LOCK TABLE`, a long `ALTER TABLE`, another writer on SQLite) before
    /// the run fails saying so. PostgreSQL's `lock_timeout`; SQLite's busy
    /// timeout.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub lock_timeout: Duration,
    /// PostgreSQL: how the connection uses TLS, as libpq's `sslmode`:
    /// `disable`, `prefer` (the default), `require` (encrypted, server not
    /// verified), `verify-ca` (its certificate chains to `ssl_root_cert`)
    /// or `verify-full` (and names the host). Overrides the URL's.
    pub sslmode: Option<SslMode>,
    /// PostgreSQL: the CA certificate file (PEM) `verify-ca` and
    /// `verify-full` check the server's certificate against; default: the
    /// system's roots.
    pub ssl_root_cert: Option<PathBuf>,
    /// Where `url` came from, for the log line at start.
    #[serde(skip)]
    pub url_origin: UrlOrigin,
}

/// `database.sslmode`, libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl From<SslMode> for sqlx::postgres::PgSslMode {
    fn from(mode: SslMode) -> Self {
        use sqlx::postgres::PgSslMode;
        match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// Where `database.url` was set: it decides which database is used, so the
/// log says it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UrlOrigin {
    /// Not set anywhere: the embedded default.
    #[default]
    Default,
    /// The configuration file (its path).
    File(PathBuf),
    /// An environment variable (`DATABASE_URL`, `APISYNC__DATABASE__URL`).
    Env(String),
}

impl std::fmt::Display for UrlOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlOrigin::Default => write!(f, "the default ({DEFAULT_DATABASE_URL})"),
            UrlOrigin::File(path) => write!(f, "database.url in {}", path.display()),
            UrlOrigin::Env(name) => write!(f, "the environment variable {name}"),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_max_connections(),
            acquire_timeout: default_acquire_timeout(),
            lock_timeout: default_lock_timeout(),
            sslmode: None,
            ssl_root_cert: None,
            url_origin: UrlOrigin::Default,
        }
    }
}

/// The store used when no `database.url` is configured: a SQLite file in the
/// working directory, created on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://apisync.db";

impl DatabaseSettings {
    /// `url`, or the embedded default.
    pub fn url(&self) -> SecretString {
        self.url
            .clone()
            .unwrap_or_else(|| SecretString::from(DEFAULT_DATABASE_URL))
    }
}

fn default_max_connections() -> u32 {
    5
}

fn default_acquire_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[server]`: where `/metrics`, `/healthz` and `/readyz` are served by `apisync run`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".to_owned()
}

/// `[log]`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter such as `info` or `apisync=debug`; `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[[jobs]]`: one API endpoint copied into one table.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// Unique, `[a-z][a-z0-9_]*`.
    pub name: String,
    /// 5-field cron, 6 fields with seconds first, or a nickname (`@hourly`,
    /// `@daily` …). A run never overlaps the previous run of the same job: a
    /// tick that finds it still running is counted as skipped, and a long run
    /// is not followed by catch-up runs. Optional for a job that is only
    /// synced by hand; `apisync run` refuses a job without one.
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in (`Europe/Berlin`); default UTC.
    pub timezone: Option<String>,
    /// Also run once as soon as `apisync run` starts.
    #[serde(default)]
    pub run_on_start: bool,
    /// Target table, created when missing.
    pub table: String,
    /// The natural key: field names (`id`), JSON pointers (`/meta/id`), or
    /// `{ field = "/@id", column = "at_id" }` to name the column.
    pub key: Vec<KeyEntry>,
    /// JSON pointer to the array of records; `""` means the body is the array.
    #[serde(default)]
    pub records: String,
    /// JSON pointers left out of the content hash (volatile fields).
    #[serde(default)]
    pub hash_exclude: Vec<String>,
    /// A run with more rejected records than this fails (reason `rejects`),
    /// keeping its good rows: a count (`50`) or a share of the records
    /// fetched (`"10%"`). A key typo must never look like success.
    #[serde(default)]
    pub max_rejected: Threshold,
    /// A run fails rather than fetch more pages than this.
    #[serde(default = "default_max_pages")]
    pub max_pages: u64,
    /// Largest response body accepted, counted after decompression.
    #[serde(default = "default_max_body_bytes", deserialize_with = "byte_size")]
    #[schemars(schema_with = "schema::byte_size")]
    pub max_body_bytes: u64,
    /// At most this many requests, e.g. `"10/s"`, `"600/m"`, `"1/5s"`;
    /// requests are spaced evenly. Default: no limit.
    pub rate_limit: Option<RateLimit>,
    /// `"job"` (default): the limit is this job's own. `"host"`: one limit
    /// shared by every job with `rate_limit_scope = "host"` on the same
    /// scheme, host and port (their `rate_limit` must agree).
    #[serde(default)]
    pub rate_limit_scope: RateLimitScope,
    pub request: RequestSettings,
    /// How the job authenticates (`[jobs.auth]`); none by default.
    pub auth: Option<AuthSettings>,
    #[serde(default)]
    pub retry: RetrySettings,
    #[serde(default)]
    pub pagination: Pagination,
    /// Fetch only what changed since the last successful run.
    pub incremental: Option<IncrementalSettings>,
    /// Keep every version of every record in `<table>_history`.
    #[serde(default)]
    pub history: bool,
    /// What a complete full run does with stored keys it did not see:
    /// `"ignore"` (default), `"mark"` (set `deleted_at`) or `"delete"`.
    #[serde(default)]
    pub deletions: Deletions,
    /// A run that would mark or delete more stored keys than this fails
    /// (reason `deletions`) and its deletion step changes nothing: a count
    /// (`500`) or a share of the live rows before the run (`"10%"`).
    #[serde(default)]
    pub max_deleted: Threshold,
    /// Incremental jobs: at most this long between runs that read everything
    /// (no `since`), the only runs that can see deletions (required with
    /// `deletions` unless `tombstone` is set).
    #[serde(default, with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub full_refresh: Option<Duration>,
    /// Incremental feeds: a JSON pointer; a record where it is `true` is the
    /// deletion of its key (handled by `deletions`), never stored as content.
    pub tombstone: Option<String>,
}

/// `deletions`: what a complete full run does with stored keys it did not see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Deletions {
    /// Keep them as they are.
    #[default]
    Ignore,
    /// Set their `deleted_at`; cleared when the key comes back.
    Mark,
    /// Remove their rows (history, if kept, still has them).
    Delete,
}

impl Deletions {
    pub fn as_str(self) -> &'static str {
        match self {
            Deletions::Ignore => "ignore",
            Deletions::Mark => "mark",
            Deletions::Delete => "delete",
        }
    }
}

/// `rate_limit = "10/s"`: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub period: Duration,
}

impl RateLimit {
    /// The time between two requests.
    pub fn interval(&self) -> Duration {
        self.period / self.count.max(1)
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{text}` is not a rate such as \"10/s\", \"600/m\", \"1/5s\" or \"5000/h\"")
        };
        let (count, per) = text.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let count = u32::try_from(count).map_err(|_| {
            format!(
                "the request count of `{text}` is outside the allowed range, {}",
                bounds::RATE_COUNT.describe()
            )
        })?;
        let per = per.trim();
        let period = match per {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if count == 0 || period.is_zero() {
            return Err(format!("`{text}` allows no request at all"));
        }
        Ok(RateLimit { count, period })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    #[default]
    Job,
    Host,
}

/// `[jobs.incremental]`: ask the API only for records changed since the
/// watermark, the highest `field` among the records of the last run that
/// read to the end, minus `lookback`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncrementalSettings {
    /// JSON pointer (or top-level field name) to the record's change time:
    /// an RFC 3339 timestamp or a number (epoch seconds).
    pub field: String,
    /// Query parameter that carries `watermark - lookback`; with
    /// `param_in = "body"`, the field or JSON pointer in the POST body.
    pub param: String,
    /// `"query"` (default) or `"body"`.
    #[serde(default)]
    pub param_in: ValueIn,
    /// What is sent, `{since}` standing for the time: `"gte.{since}"` for
    /// PostgREST's `updated_at=gte.<time>`. Default `"{since}"`.
    pub value: Option<String>,
    /// Re-read this much before the watermark, for records the API makes
    /// visible late. Re-read records are unchanged and cost no writes.
    #[serde(default = "default_lookback", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub lookback: Duration,
    /// A record time further ahead of the local clock than this is stored
    /// but does not move the watermark (one far-future value would
    /// otherwise make every later run ask for changes since then).
    #[serde(default = "default_max_future", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub max_future: Duration,
    /// strftime pattern of the field (`"%Y-%m-%d %H:%M:%S"`), also used to
    /// write `param`. Default: RFC 3339, or epoch numbers.
    pub format: Option<String>,
    /// IANA zone of times written without an offset (`format` without
    /// `%z`); default UTC.
    pub timezone: Option<String>,
}

fn default_max_future() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A limit given as a count (`50`) or as a share (`"10%"`) of another count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Count(u64),
    /// Percent, 0 to 100.
    Percent(f64),
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Percent(10.0)
    }
}

impl Threshold {
    /// Whether `n` out of `of` is more than this allows.
    pub fn exceeded_by(&self, n: u64, of: u64) -> bool {
        match *self {
            Threshold::Count(limit) => n > limit,
            Threshold::Percent(percent) => n as f64 > of as f64 * percent / 100.0,
        }
    }

    /// The most out of `of` this allows: `exceeded_by(n, of)` exactly when
    /// `n` is more.
    pub fn allowed_of(&self, of: u64) -> u64 {
        match *self {
            Threshold::Count(limit) => limit,
            // Floored: a count is whole, so n > x exactly when n > ⌊x⌋.
            Threshold::Percent(percent) => (of as f64 * percent / 100.0).floor() as u64,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a count such as 50 or a share such as \"10%\"");
        let text = text.trim();
        match text.strip_suffix('%') {
            Some(percent) => {
                let percent: f64 = percent.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&percent) {
                    return Err(format!("`{text}` is not a share between 0% and 100%"));
                }
                Ok(Threshold::Percent(percent))
            }
            None => text.parse().map(Threshold::Count).map_err(|_| bad()),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match number_or_text(
            deserializer,
            "a count such as 50 or a share such as \"10%\"",
        )? {
            NumberOrText::Number(n) => Ok(Threshold::Count(n)),
            NumberOrText::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn default_max_pages() -> u64 {
    10_000
}

fn default_max_body_bytes() -> u64 {
    64 * 1024 * 1024
}

/// `[jobs.request]`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSettings {
    pub url: String,
    #[serde(default)]
    pub method: Method,
    /// Sent with every request of the job. Values may hold credentials, so
    /// they are secrets.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, SecretString>,
    /// Added to the URL of the first request; later URLs given by the API
    /// (`link_header`, `next_url`) are used as they are.
    #[serde(default)]
    pub query: BTreeMap<String, ScalarString>,
    /// JSON body, only with `method = "POST"`.
    pub body: Option<serde_json::Value>,
    /// Per request, from connect to the last byte of the body.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Post,
}

/// A query value written as a string, an integer or a boolean in TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: a table or an array is
        // then refused as "invalid type: map, expected …", not as "data did
        // not match any variant".
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<String, E> {
                Ok(s.to_owned())
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<String, E> {
                Ok(b.to_string())
            }
        }
        deserializer.deserialize_any(Scalar).map(ScalarString)
    }
}

/// `[jobs.retry]`: how transient failures are retried.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts per request, the first included; 1 disables retries.
    /// Retried: connection errors, timeouts, 408, 429, 500, 502, 503, 504,
    /// and a body cut short or not JSON. Any other status fails the run.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub initial_backoff: Duration,
    /// Cap on one computed wait.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub max_backoff: Duration,
    /// A server's `Retry-After` (or rate-limit reset) is honoured up to
    /// this; asked to wait longer, the run fails instead of retrying early.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub max_retry_after: Duration,
    /// Total time one request may spend waiting between its attempts.
    #[serde(default = "default_max_elapsed", with = "humantime_serde")]
    #[schemars(schema_with = "schema::duration")]
    pub max_elapsed: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_retry_after: default_max_retry_after(),
            max_elapsed: default_max_elapsed(),
        }
    }
}

fn default_max_attempts() -> u32 {
    5
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_max_retry_after() -> Duration {
    Duration::from_secs(120)
}

fn default_max_elapsed() -> Duration {
    Duration::from_secs(300)
}

/// Non-zero by default: re-reading is cheap (no writes), missing a record is not.
fn default_lookback() -> Duration {
    Duration::from_secs(300)
}

/// Accepts `8` or `"8"`: values from the environment arrive as strings.
fn number_or_string<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64> + std::str::FromStr,
{
    let invalid = |found: &str| {
        serde::de::Error::custom(format!("`{found}` is not a non-negative whole number"))
    };
    match number_or_text(deserializer, "a non-negative whole number")? {
        NumberOrText::Number(n) => {
            T::try_from(n).map_err(|_| serde::de::Error::custom(format!("`{n}` is too large")))
        }
        NumberOrText::Text(s) => s.trim().parse().map_err(|_| invalid(&s)),
    }
}

/// A whole number or a text, as the file or the environment gives it.
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// Reads a [`NumberOrText`]; anything else (a negative number, a float, a
/// boolean, a table) is refused in serde's words, saying what was found and
/// that `expected` was (an untagged enum would only say that "data did not
/// match any variant").
fn number_or_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    expected: &'static str,
) -> Result<NumberOrText, D::Error> {
    struct Visitor(&'static str);
    impl serde::de::Visitor<'_> for Visitor {
        type Value = NumberOrText;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.0)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<NumberOrText, E> {
            Ok(NumberOrText::Number(n))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<NumberOrText, E> {
            u64::try_from(n)
                .map(NumberOrText::Number)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<NumberOrText, E> {
            Ok(NumberOrText::Text(s.to_owned()))
        }
    }
    deserializer.deserialize_any(Visitor(expected))
}

/// Accepts a byte count (`1048576`) or a size with a unit (`"64MiB"`, `"500kB"`).
fn byte_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    match number_or_text(deserializer, "a byte count or a size such as \"64MiB\"")? {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(s) => parse_byte_size(&s).map_err(serde::de::Error::custom),
    }
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 1048576, \"512KiB\" or \"64MiB\""))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, kB, KiB, MB, MiB, GB or GiB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_and_without_units() {
        let cases = [
            ("1024", Some(1024)),
            ("64MiB", Some(64 << 20)),
            ("500kB", Some(500_000)),
            ("1 GiB", Some(1 << 30)),
            ("12 parsecs", None),
            ("MiB", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_byte_size(text).ok(), expected, "case {text:?}");
        }
    }

    #[test]
    fn rate_limits_parse() {
        let cases = [
            ("10/s", Some((10, 1))),
            ("600/m", Some((600, 60))),
            ("1/5s", Some((1, 5))),
            ("5000/h", Some((5000, 3600))),
            ("0/s", None),
            ("ten/s", None),
            ("10", None),
            ("10/fortnight", None),
        ];
        for (text, expected) in cases {
            let parsed = text
                .parse::<RateLimit>()
                .ok()
                .map(|r| (r.count, r.period.as_secs()));
            assert_eq!(parsed, expected, "case {text:?}");
        }
        let limit: RateLimit = "4/s".parse().unwrap();
        assert_eq!(limit.interval(), Duration::from_millis(250));
    }

    #[test]
    fn config_path_prefers_flag_then_env_then_default() {
        let env: HashMap<String, String> =
            [("APISYNC_CONFIG".to_owned(), "/etc/a.toml".to_owned())].into();
        assert_eq!(
            config_path(Some(Path::new("x.toml")), &env),
            PathBuf::from("x.toml")
        );
        assert_eq!(config_path(None, &env), PathBuf::from("/etc/a.toml"));
        assert_eq!(
            config_path(None, &HashMap::new()),
            PathBuf::from("apisync.toml")
        );
    }
}
