//! Checks on values that deserialized fine but cannot work: every problem is
//! collected, each naming its job and key, so one `apisync check` shows them all.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use secrecy::ExposeSecret;

use super::bounds::{self, Range};
use super::layers::EnvOverrides;
use super::{
    AuthSettings, Deletions, JobSettings, KeyPlacement, Locator, Method, PaginationKind, Settings,
    Threshold, TotalMethod, ValueIn,
};
use crate::json_pointer;
use crate::record::RecordShape;
use crate::schedule::Schedule;
use crate::store::ident::Ident;

/// The most fields a natural key may have (PostgreSQL's `INDEX_MAX_KEYS`;
/// SQLite is held to the same rule, so a job moves between stores).
const MAX_KEY_FIELDS: usize = 32;

pub(super) fn validate(settings: &Settings, overrides: &EnvOverrides) -> Vec<String> {
    let mut problems = Vec::new();
    // Keys outside [[jobs]] may come from the environment: then the
    // variable is named, not the file.
    let mut global =
        |key: &str, message: String| problems.push(format!("{}{message}", overrides.place(key)));

    if let Some(url) = &settings.database.url {
        let url = url.expose_secret();
        // Never echo the URL: it may hold a password.
        let known = ["postgres://", "postgresql://", "sqlite:"];
        if !known.iter().any(|scheme| url.starts_with(scheme)) {
            global(
                "database.url",
                "must be a postgres://, postgresql:// or sqlite:// URL".into(),
            );
        } else if url.starts_with("sqlite:")
            && (url.contains(":memory:") || url.contains("mode=memory"))
        {
            global(
                "database.url",
                "an in-memory SQLite database keeps nothing; name a file, as sqlite://apisync.db"
                    .into(),
            );
        }
    }
    {
        use secrecy::ExposeSecret;
        let tls = settings.database.sslmode.is_some() || settings.database.ssl_root_cert.is_some();
        if tls
            && settings
                .database
                .url()
                .expose_secret()
                .starts_with("sqlite:")
        {
            global(
                "database.sslmode",
                "sslmode and ssl_root_cert are PostgreSQL settings; a SQLite file has no TLS"
                    .into(),
            );
        }
    }
    if let Some(ca) = &settings.database.ssl_root_cert
        && let Err(e) = std::fs::File::open(ca)
    {
        global(
            "database.ssl_root_cert",
            format!("cannot read {}: {e}", ca.display()),
        );
    }
    let counts = [
        ("max_concurrent_jobs", settings.max_concurrent_jobs as u64),
        (
            "database.max_connections",
            u64::from(settings.database.max_connections),
        ),
    ];
    for (key, value) in counts {
        if let Err(message) = bounded(key).check_count(value) {
            global(key, message);
        }
    }
    let times = [
        ("shutdown_timeout", settings.shutdown_timeout),
        (
            "database.acquire_timeout",
            settings.database.acquire_timeout,
        ),
        ("database.lock_timeout", settings.database.lock_timeout),
    ];
    for (key, value) in times {
        if let Err(message) = bounded(key).check_time(value) {
            global(key, message);
        }
    }
    if let Some(retention) = settings.runs_retention
        && let Err(message) = bounded("runs_retention").check_time(retention)
    {
        global("runs_retention", message);
    }
    if settings
        .server
        .listen
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        global(
            "server.listen",
            format!(
                "`{}` is not an address such as 127.0.0.1:9464",
                settings.server.listen
            ),
        );
    }
    if let Err(e) = crate::telemetry::log_filter(&settings.log.level) {
        global(
            "log.level",
            format!("`{}` is not a log filter: {e}", settings.log.level),
        );
    }
    if settings.jobs.is_empty() {
        problems.push("no [[jobs]] configured".to_owned());
    }

    // Jobs sharing a host's rate limit must agree on it.
    let mut shared_limits: HashMap<String, (&str, crate::config::RateLimit)> = HashMap::new();
    for job in &settings.jobs {
        let (Some(limit), crate::config::RateLimitScope::Host) =
            (job.rate_limit, job.rate_limit_scope)
        else {
            continue;
        };
        let Ok(url) = reqwest::Url::parse(&job.request.url) else {
            continue;
        };
        let origin = url.origin().ascii_serialization();
        match shared_limits.get(&origin) {
            Some((other, other_limit)) if *other_limit != limit => problems.push(format!(
                "job \"{}\", key \"rate_limit\": differs from job \"{other}\", which shares \
                 the limit of {origin} (rate_limit_scope = \"host\")",
                job.name
            )),
            Some(_) => {}
            None => {
                shared_limits.insert(origin, (&job.name, limit));
            }
        }
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut tables: HashMap<&str, &str> = HashMap::new();
    for job in &settings.jobs {
        let mut report = JobReport {
            job: &job.name,
            problems: &mut problems,
        };
        *names.entry(&job.name).or_default() += 1;
        if names[job.name.as_str()] == 2 {
            report.bad("name", "the name is used by more than one job".into());
        }
        if job.history {
            let history = format!("{}_history", job.table);
            let unqualified =
                |table: &str| table.strip_prefix("public.").unwrap_or(table).to_owned();
            if let Some(other) = settings
                .jobs
                .iter()
                .find(|other| unqualified(&other.table) == unqualified(&history))
            {
                report.bad(
                    "history",
                    format!(
                        "the history table `{history}` is the target of job \"{}\"",
                        other.name
                    ),
                );
            }
        }
        // `public.products` is `products` under the default search path.
        let same_table = job.table.strip_prefix("public.").unwrap_or(&job.table);
        if let Some(other) = tables.insert(same_table, &job.name) {
            report.bad(
                "table",
                format!(
                    "table `{}` is also the target of job \"{other}\"; each job needs its own table",
                    job.table
                ),
            );
        }
        let on_sqlite = {
            use secrecy::ExposeSecret;
            settings
                .database
                .url()
                .expose_secret()
                .starts_with("sqlite:")
        };
        if on_sqlite && job.table.contains('.') {
            report.bad(
                "table",
                format!(
                    "`{}` names a schema, which only PostgreSQL has; on SQLite name the table \
                     alone",
                    job.table
                ),
            );
        }
        validate_job(job, &mut report);
    }
    problems
}

struct JobReport<'a> {
    job: &'a str,
    problems: &'a mut Vec<String>,
}

impl JobReport<'_> {
    fn bad(&mut self, key: &str, message: String) {
        self.problems
            .push(format!("job \"{}\", key \"{key}\": {message}", self.job));
    }

    fn pointer(&mut self, key: &str, pointer: &str) {
        if let Err(message) = json_pointer::validate(pointer) {
            self.bad(key, message);
        }
    }

    /// A pagination pointer: valid, and outside the records array, which
    /// apisync reads apart from the rest of a response.
    fn pagination_pointer(&mut self, key: &str, pointer: &str, records: &str) {
        self.pointer(key, pointer);
        let inside =
            records.is_empty() || pointer == records || pointer.starts_with(&format!("{records}/"));
        if inside {
            let whole = if records.is_empty() {
                " (\"\": the whole body is the array)"
            } else {
                ""
            };
            self.bad(
                key,
                format!(
                    "`{pointer}` lies inside the records array at records = \"{records}\"{whole}; \
                     apisync reads the records apart from the rest of a response, so \
                     pagination fields must lie outside it"
                ),
            );
        }
    }

    /// A count or size within the range `bounds` gives `key`.
    fn count(&mut self, key: &str, value: u64) {
        if let Err(message) = bounded(key).check_count(value) {
            self.bad(key, message);
        }
    }

    /// A duration within the range `bounds` gives `key`.
    fn time(&mut self, key: &str, value: Duration) {
        if let Err(message) = bounded(key).check_time(value) {
            self.bad(key, message);
        }
    }

    fn param(&mut self, key: &str, name: &str) {
        if name.trim().is_empty() {
            self.bad(key, "must not be empty".into());
        }
    }
}

/// `[jobs.auth]`: URLs that are URLs, pointers that are pointers, one
/// body, and no second `Authorization` in `request.headers`.
fn validate_auth(job: &JobSettings, report: &mut JobReport) {
    let Some(auth) = &job.auth else {
        return;
    };
    let http_url = |report: &mut JobReport, key: &str, url: &str| match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
        Ok(_) => report.bad(key, "must be an http:// or https:// URL".into()),
        Err(e) => report.bad(key, format!("is not a valid URL: {e}")),
    };
    let sends_authorization = match auth {
        AuthSettings::ApiKey {
            name, placement, ..
        } => {
            report.param("auth.name", name);
            *placement == KeyPlacement::Header && name.eq_ignore_ascii_case("authorization")
        }
        AuthSettings::TokenRequest {
            url,
            method,
            body,
            form,
            token_path,
            expires_in_path,
            ..
        } => {
            http_url(report, "auth.url", url);
            report.pointer("auth.token_path", token_path);
            report.pointer("auth.expires_in_path", expires_in_path);
            if body.is_some() && form.is_some() {
                report.bad(
                    "auth.body",
                    "a login call sends a JSON body or a form, not both".into(),
                );
            }
            if *method == Method::Get && (body.is_some() || form.is_some()) {
                report.bad(
                    "auth.method",
                    "a GET login call sends no body; use method = \"POST\"".into(),
                );
            }
            true
        }
        other => {
            if let Some(client) = other.oauth_client() {
                http_url(report, "auth.token_url", client.token_url);
                report.param("auth.client_id", client.client_id);
            }
            true
        }
    };
    if sends_authorization
        && job
            .request
            .headers
            .keys()
            .any(|name| name.eq_ignore_ascii_case("authorization"))
    {
        report.bad(
            "request.headers",
            format!(
                "sets Authorization, and so does [jobs.auth] (kind = \"{}\"); keep one",
                auth.kind()
            ),
        );
    }
}

/// `deletions`, `max_deleted`, `full_refresh` and `tombstone` together: an
/// incremental run reads only changes, so it can see deletions only as
/// tombstones or in a periodic full run.
fn validate_deletions(job: &JobSettings, report: &mut JobReport) {
    if let Threshold::Count(count) = job.max_deleted {
        report.count("max_deleted", count);
    }
    // What the table gets from these settings: a `deleted_at` column, a
    // history table (its name, its columns).
    if let (Ok(name), Ok(shape)) = (
        Ident::table(&job.table),
        RecordShape::with_key_entries(&job.key, &job.hash_exclude),
    ) {
        let table = crate::store::TableSpec::new(name, shape.key_fields());
        if job.deletions == Deletions::Mark
            && let Err(message) = table.clone().marking_deletions()
        {
            report.bad("key", message);
        }
        if job.history
            && let Err(message) = table.keeping_history()
        {
            report.bad("history", message);
        }
    }
    if let Some(every) = job.full_refresh {
        report.time("full_refresh", every);
        if job.incremental.is_none() {
            report.bad(
                "full_refresh",
                "only incremental jobs skip records; every run of this job reads everything".into(),
            );
        }
    }
    if let Some(pointer) = &job.tombstone {
        report.pointer("tombstone", pointer);
        if pointer.is_empty() {
            report.bad(
                "tombstone",
                "must name the field that says a record is deleted, such as \"/deleted\"".into(),
            );
        }
        if job.deletions == Deletions::Ignore {
            report.bad(
                "tombstone",
                "a tombstone deletes its key as `deletions` says, but deletions = \"ignore\"; \
                 set deletions = \"mark\" or \"delete\""
                    .into(),
            );
        }
    }
    if job.deletions != Deletions::Ignore
        && job.incremental.is_some()
        && job.full_refresh.is_none()
        && job.tombstone.is_none()
    {
        report.bad(
            "full_refresh",
            format!(
                "deletions = \"{}\" on an incremental job needs full_refresh (such as \"24h\") \
                 or tombstone: a run that reads only changes cannot tell a deleted record \
                 from an unchanged one",
                job.deletions.as_str()
            ),
        );
    }
}

fn validate_job(job: &JobSettings, report: &mut JobReport) {
    let name_ok = job
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase())
        && job
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && job.name.len() <= 63;
    if !name_ok {
        report.bad(
            "name",
            format!(
                "`{}` is not a valid job name: use [a-z][a-z0-9_]*, at most 63 characters",
                job.name
            ),
        );
    }
    match job
        .schedule
        .as_deref()
        .map(|line| (line, Schedule::new(line, job.timezone.as_deref())))
    {
        None => {}
        Some((_, Err((key, e)))) => report.bad(key, e),
        Some((line, Ok(schedule))) if schedule.next_after(chrono::Utc::now()).is_none() => report
            .bad(
                "schedule",
                format!("`{line}` never comes due (a date that does not exist?)"),
            ),
        Some(_) => {}
    }
    if let Err(e) = Ident::table(&job.table) {
        report.bad("table", e);
    }
    // PostgreSQL's INDEX_MAX_KEYS: a primary key of more columns fails
    // every run, not `check`.
    if job.key.len() > MAX_KEY_FIELDS {
        report.bad(
            "key",
            format!(
                "{} fields are more than a primary key can have; allowed: 1 to {MAX_KEY_FIELDS}",
                job.key.len()
            ),
        );
    }
    if let Err((key, message)) = RecordShape::with_key_entries(&job.key, &job.hash_exclude) {
        report.bad(key, message);
    }
    report.pointer("records", &job.records);
    if let Threshold::Count(count) = job.max_rejected {
        report.count("max_rejected", count);
    }
    report.count("max_pages", job.max_pages);
    report.count("max_body_bytes", job.max_body_bytes);
    if let Some(limit) = job.rate_limit {
        let count = bounds::RATE_COUNT.check_count(u64::from(limit.count));
        let period = bounds::RATE_PERIOD.check_time(limit.period);
        if let Err(message) = count {
            report.bad("rate_limit", format!("the request count: {message}"));
        }
        if let Err(message) = period {
            report.bad("rate_limit", format!("the period: {message}"));
        }
    }

    if job.rate_limit_scope == crate::config::RateLimitScope::Host && job.rate_limit.is_none() {
        report.bad(
            "rate_limit_scope",
            "\"host\" shares a rate_limit, but this job sets none".into(),
        );
    }
    validate_deletions(job, report);
    validate_auth(job, report);
    if let Some(incremental) = &job.incremental {
        if incremental.param_in == ValueIn::Body {
            needs_a_body(
                job,
                report,
                "incremental.param_in",
                "the time",
                &incremental.param,
            );
        }
        report.time("incremental.lookback", incremental.lookback);
        report.time("incremental.max_future", incremental.max_future);
        if let Err((key, message)) = crate::incremental::Incremental::new(incremental) {
            report.bad(key, message);
        }
    }

    let request = &job.request;
    match reqwest::Url::parse(&request.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        // Only the scheme is echoed: the URL may carry an expanded secret.
        Ok(url) => report.bad(
            "request.url",
            format!(
                "must be an http or https URL with a host, not `{}:`",
                url.scheme()
            ),
        ),
        Err(e) => report.bad("request.url", format!("not a valid URL: {e}")),
    }
    for (name, value) in &request.headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            report.bad(
                &format!("request.headers.{name}"),
                "not a valid header name".into(),
            );
        }
        if HeaderValue::from_str(value.expose_secret()).is_err() {
            report.bad(
                &format!("request.headers.{name}"),
                "not a valid header value (control characters or non-ASCII)".into(),
            );
        }
    }
    for name in request.query.keys() {
        report.param("request.query", name);
    }
    if request.body.is_some() && request.method != Method::Post {
        report.bad(
            "request.body",
            "a body is only sent with method = \"POST\"".into(),
        );
    }
    report.time("request.timeout", request.timeout);

    let retry = &job.retry;
    report.count("retry.max_attempts", u64::from(retry.max_attempts));
    report.time("retry.initial_backoff", retry.initial_backoff);
    report.time("retry.max_backoff", retry.max_backoff);
    report.time("retry.max_retry_after", retry.max_retry_after);
    report.time("retry.max_elapsed", retry.max_elapsed);
    if retry.max_backoff < retry.initial_backoff {
        report.bad(
            "retry.max_backoff",
            "must not be shorter than retry.initial_backoff".into(),
        );
    }

    validate_pagination(job, report);
}

/// A value sent in the JSON body (`cursor_in`, `param_in` = `"body"`)
/// needs a request that has one.
///
/// The value goes at `pointer` (a field or a JSON pointer): every member on
/// the way must be an object or absent, else setting it would replace part
/// of the configured body.
fn needs_a_body(job: &JobSettings, report: &mut JobReport, key: &str, what: &str, pointer: &str) {
    if job.request.method != Method::Post {
        report.bad(
            key,
            format!(
                "\"body\" puts {what} in the JSON body, which only a POST request has; set \
                 request.method = \"POST\" (and request.body)"
            ),
        );
    }
    let pointer = json_pointer::of_field(pointer);
    let Some(mut at) = job.request.body.as_ref() else {
        return;
    };
    let segments = json_pointer::segments(&pointer);
    for (depth, segment) in segments.iter().enumerate() {
        if !at.is_object() {
            report.bad(
                key,
                format!(
                    "`{pointer}` passes through {} of request.body, which is not an object: \
                     putting {what} there would replace it",
                    if depth == 0 {
                        "the top".to_owned()
                    } else {
                        format!("`{}`", json_pointer::join(&segments[..depth]))
                    }
                ),
            );
            return;
        }
        match at.get(segment) {
            Some(next) => at = next,
            None => return,
        }
    }
}

fn validate_pagination(job: &JobSettings, report: &mut JobReport) {
    let pagination = &job.pagination;
    if let PaginationKind::Cursor {
        cursor_in: ValueIn::Body,
        cursor_param,
        ..
    } = &pagination.kind
    {
        needs_a_body(
            job,
            report,
            "pagination.cursor_in",
            "the cursor",
            cursor_param,
        );
        if cursor_param.starts_with('/') {
            report.pointer("pagination.cursor_param", cursor_param);
        }
    }
    let locator = |report: &mut JobReport, value: &str, locator: &Locator| match locator {
        Locator::Body(pointer) => {
            report.pagination_pointer(&format!("pagination.{value}_path"), pointer, &job.records)
        }
        Locator::Header(name) => {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                report.bad(
                    &format!("pagination.{value}_header"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    };
    if let Some(total) = &pagination.total {
        locator(report, "total", total);
    }
    if pagination.total_method == TotalMethod::Head
        && job
            .incremental
            .as_ref()
            .is_some_and(|i| i.param_in == ValueIn::Body)
    {
        report.bad(
            "pagination.total_method",
            "\"HEAD\" sends no body, so its total would ignore incremental.param_in = \"body\""
                .into(),
        );
    }
    if pagination.total_method == TotalMethod::Head
        && !matches!(pagination.total, Some(Locator::Header(_)))
    {
        report.bad(
            "pagination.total_method",
            "\"HEAD\" asks for the total in a header: set total_header".into(),
        );
    }
    for &status in &pagination.end_on_status {
        if bounded("pagination.end_on_status")
            .check_count(u64::from(status))
            .is_err()
            || matches!(status, 401 | 403 | 408 | 429)
        {
            report.bad(
                "pagination.end_on_status",
                format!(
                    "{status} cannot mean \"past the end\": use client errors (400-499) other \
                     than 401 and 403 (refused credentials) and 408 and 429 (retried)"
                ),
            );
        }
    }
    match &pagination.kind {
        PaginationKind::None | PaginationKind::LinkHeader => {}
        PaginationKind::Page {
            page_param,
            size_param,
            size,
            start,
            total_pages,
        } => {
            report.param("pagination.page_param", page_param);
            report.param("pagination.size_param", size_param);
            if page_param == size_param {
                report.bad(
                    "pagination.size_param",
                    "must differ from pagination.page_param".into(),
                );
            }
            if let Some(size) = size {
                report.count("pagination.size", *size);
            }
            report.count("pagination.start", *start);
            if let Some(total_pages) = total_pages {
                locator(report, "total_pages", total_pages);
            }
        }
        PaginationKind::Offset {
            offset_param,
            limit_param,
            limit,
        } => {
            report.param("pagination.offset_param", offset_param);
            report.param("pagination.limit_param", limit_param);
            if offset_param == limit_param {
                report.bad(
                    "pagination.limit_param",
                    "must differ from pagination.offset_param".into(),
                );
            }
            if let Some(limit) = limit {
                report.count("pagination.limit", *limit);
            }
        }
        PaginationKind::Cursor {
            cursor_param,
            cursor,
            has_more,
            ..
        } => {
            report.param("pagination.cursor_param", cursor_param);
            locator(report, "cursor", cursor);
            if let Some(has_more) = has_more {
                locator(report, "has_more", has_more);
            }
        }
        PaginationKind::NextUrl { next, .. } => locator(report, "next", next),
    }
}

/// The range of a key `bounds` knows.
fn bounded(key: &str) -> Range {
    bounds::range(key).unwrap_or_else(|| unreachable!("`{key}` has a range in bounds.rs"))
}
