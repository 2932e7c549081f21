//! `apisync init URL`: a job configuration guessed from an API's first
//! pages, then checked against the API with apisync's own paginator before
//! it is printed.
//!
//! What is guessed, from the first response (and a second fetch of it):
//! - the records: the body when it is an array of objects, else the largest
//!   array of objects in it (three levels deep at most);
//! - the key: `id`, `uuid`, `_id`, `<name>_id`, `key` or `code`, else the
//!   first field whose value is a scalar in every record and unique;
//! - the pagination: a `Link: rel="next"` header; a member named like
//!   `next` holding a URL; a member named like a cursor (with a `has_more`
//!   flag if there is one); a page count or a total beside page or offset
//!   parameters the API answers; else one page;
//! - a total (`count`, `total` …, or `X-Total-Count`);
//! - the fields that differ between two fetches of the same page
//!   (`hash_exclude`), and a field that looks like an update time (a
//!   commented `[jobs.incremental]`).
//!
//! The guess is then walked for two pages by `source::Pages`, as a run
//! walks them; what it could not tell, or what the walk refused, is said in
//! a comment. Only the TOML goes to stdout.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// The most a response may hold here: as much as a run allows by default.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Key fields tried first, in order (`{name}_id` is tried after `_id`).
const KEY_NAMES: [&str; 3] = ["id", "uuid", "_id"];

/// Record fields that look like an update time, for incremental sync.
const UPDATE_TIMES: [&str; 8] = [
    "updated_at",
    "updatedAt",
    "modified_at",
    "modifiedAt",
    "last_modified",
    "lastModified",
    "modified",
    "updated",
];

/// Envelope members that state the record count.
const TOTALS: [&str; 7] = [
    "count",
    "total",
    "total_count",
    "totalCount",
    "total_results",
    "totalResults",
    "total_items",
];

/// Envelope members that state the page count.
const PAGE_COUNTS: [&str; 5] = [
    "total_pages",
    "totalPages",
    "pages",
    "last_page",
    "page_count",
];

/// What `init` was asked.
pub struct Request {
    pub url: String,
    pub name: String,
    /// `Name: value` headers sent with every request (and printed into the
    /// job, with a note: they may be credentials).
    pub headers: Vec<(String, String)>,
    pub database: Option<String>,
}

/// One response, as fetched.
struct Fetched {
    headers: HeaderMap,
    body: Value,
}

/// The job guessed so far.
#[derive(Debug, Default)]
struct Guess {
    records: String,
    key: Option<Key>,
    pagination: Vec<(String, String)>,
    hash_exclude: Vec<String>,
    incremental: Option<String>,
    /// Lines for the comment above the job.
    notes: Vec<String>,
}

/// Runs `init`; the TOML, or why there is none.
///
/// # Errors
/// The first page could not be fetched, is not JSON, or holds no records.
pub async fn init(request: &Request) -> Result<String, String> {
    let url =
        Url::parse(&request.url).map_err(|e| format!("`{}` is not a URL: {e}", request.url))?;
    let headers = header_map(&request.headers)?;
    let http = reqwest::Client::builder()
        .user_agent(concat!("apisync/", env!("CARGO_PKG_VERSION"), " (init)"))
        .timeout(std::time::Duration::from_secs(30))
        .gzip(true)
        // As a run's: `--header` values are often credentials.
        .redirect(crate::source::http::same_origin_redirects())
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
    let first = fetch(&http, &url, &headers).await?;
    let again = fetch(&http, &url, &headers).await.ok();

    let mut guess = Guess::default();
    let (records_pointer, records) = find_records(&first.body).ok_or_else(|| {
        format!(
            "found no array of records in the answer of {} ({})",
            crate::redact::display_url(url.as_str()),
            describe(&first.body)
        )
    })?;
    guess.records = records_pointer;
    guess.key = find_key(&records, &request.name);
    if guess.key.is_none() {
        guess
            .notes
            .push("No field is present and unique in every record: set `key`.".into());
    }
    if let (Some(key), Some(again)) = (&guess.key, &again)
        && let Some(records_again) = crate_pointer(&again.body, &guess.records)
    {
        guess.hash_exclude = volatile_fields(&records, records_again, &key.field);
    }
    guess.incremental = records.first().and_then(update_time_field);

    let envelope = envelope(&first.body, &guess.records);
    guess_pagination(
        &http, &url, &headers, &first, &envelope, &records, &mut guess,
    )
    .await;

    // apisync reads `${…}` in every string of a configuration as a variable
    // or a file: a name the API chose must never hold one.
    let chosen = std::iter::once(&guess.records)
        .chain(guess.key.iter().map(|key| &key.field))
        .chain(guess.hash_exclude.iter())
        .chain(guess.pagination.iter().map(|(_, value)| value))
        .chain(guess.incremental.iter());
    if let Some(bad) = chosen.into_iter().find(|value| value.contains("${")) {
        return Err(format!(
            "the API's answer names a member `{}` that holds `${{`, which apisync would read \
             as a variable reference; write this job by hand",
            bad.trim_matches('"')
        ));
    }
    let toml = render(request, &url, &guess);
    // The walk a run would make, two pages of it, with the guess as written.
    if let Err(problem) = confirm(&toml).await {
        let mut noted = String::new();
        let _ = writeln!(
            noted,
            "# apisync could not walk two pages with this guess: {}",
            one_line(&problem)
        );
        noted.push_str("# Adjust [jobs.pagination] (see config/example.toml) and try\n");
        noted.push_str("# `apisync check --connect`.\n");
        return Ok(format!("{noted}{toml}"));
    }
    Ok(toml)
}

fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("--header: `{name}` is not a header name"))?;
        let mut value = HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("--header: the value of `{name}` is not valid"))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

async fn fetch(http: &reqwest::Client, url: &Url, headers: &HeaderMap) -> Result<Fetched, String> {
    let shown = crate::redact::display_url(url.as_str());
    let mut response = http
        .get(url.clone())
        .headers(headers.clone())
        .send()
        .await
        .map_err(|e| format!("GET {shown}: {}", crate::error_chain(&e.without_url())))?;
    let status = response.status();
    let response_headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {shown}: {}", crate::error_chain(&e.without_url())))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            return Err(format!("GET {shown}: the answer is larger than 64 MiB"));
        }
    }
    if !status.is_success() {
        return Err(format!("GET {shown} answered {status}"));
    }
    let body = serde_json::from_slice(&body)
        .map_err(|e| format!("GET {shown}: the answer is not JSON ({e})"))?;
    Ok(Fetched {
        headers: response_headers,
        body,
    })
}

fn describe(body: &Value) -> String {
    crate::source::paginate::top_level_keys(body)
}

fn crate_pointer<'a>(body: &'a Value, pointer: &str) -> Option<&'a Vec<Value>> {
    body.pointer(pointer)?.as_array()
}

/// The records array: the body itself, or the largest array of objects in
/// it, three levels deep at most. Its pointer and its records.
fn find_records(body: &Value) -> Option<(String, Vec<Value>)> {
    fn objects(items: &[Value]) -> bool {
        !items.is_empty() && items.iter().all(Value::is_object)
    }
    fn search(value: &Value, pointer: String, depth: usize, best: &mut Option<(String, usize)>) {
        let Value::Object(members) = value else {
            return;
        };
        for (name, member) in members {
            let here = format!(
                "{pointer}{}",
                crate::json_pointer::join(std::slice::from_ref(name))
            );
            match member {
                Value::Array(items)
                    if objects(items) && best.as_ref().is_none_or(|(_, n)| items.len() > *n) =>
                {
                    *best = Some((here, items.len()));
                }
                Value::Object(_) if depth < 3 => search(member, here, depth + 1, best),
                _ => {}
            }
        }
    }
    if let Value::Array(items) = body {
        return (items.is_empty() || objects(items)).then(|| (String::new(), items.clone()));
    }
    let mut best = None;
    search(body, String::new(), 1, &mut best);
    let (pointer, _) = best?;
    let records = body.pointer(&pointer)?.as_array()?.clone();
    Some((pointer, records))
}

/// The envelope: the body without its records.
fn envelope(body: &Value, records: &str) -> Value {
    let mut envelope = body.clone();
    if !records.is_empty()
        && let Some(slot) = envelope.pointer_mut(records)
    {
        *slot = Value::Array(Vec::new());
    }
    envelope
}

/// A field present in every record as a scalar, with no value twice.
fn find_key(records: &[Value], name: &str) -> Option<Key> {
    let singular = name.strip_suffix('s').unwrap_or(name);
    let named = format!("{singular}_id");
    let unique = |field: &str| {
        let mut seen = BTreeSet::new();
        !records.is_empty()
            && records.iter().all(|record| match record.get(field) {
                Some(value @ (Value::String(_) | Value::Number(_))) => {
                    seen.insert(value.to_string())
                }
                _ => false,
            })
    };
    let preferred =
        KEY_NAMES
            .iter()
            .map(|s| s.to_string())
            .chain([named, "key".to_owned(), "code".to_owned()]);
    for field in preferred {
        if unique(&field) {
            return Some(Key {
                field,
                by_name: true,
            });
        }
    }
    let first = records.first()?.as_object()?;
    first
        .keys()
        .find(|field| is_identifier(field) && unique(field))
        .map(|field| Key {
            field: field.clone(),
            by_name: false,
        })
}

/// The key guessed, and whether by its name (`id` …) or only by being
/// unique on the first page (then `render` says another page may repeat it).
#[derive(Debug)]
struct Key {
    field: String,
    by_name: bool,
}

fn is_identifier(field: &str) -> bool {
    field
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The fields whose values differ between two fetches of the same page in
/// every record compared (request ids, `served_at`), as pointers. A field
/// that differs in only some records is data that changed in between, not
/// a volatile field.
fn volatile_fields(first: &[Value], second: &[Value], key: &str) -> Vec<String> {
    let again: std::collections::HashMap<String, &Value> = second
        .iter()
        .filter_map(|record| Some((record.get(key)?.to_string(), record)))
        .collect();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut compared = 0;
    for record in first {
        let Some(other) = record.get(key).and_then(|id| again.get(&id.to_string())) else {
            continue;
        };
        let (Some(a), Some(b)) = (record.as_object(), other.as_object()) else {
            continue;
        };
        compared += 1;
        for (field, value) in a {
            match b.get(field) {
                Some(other) if other == value => {}
                Some(Value::Object(inner)) if value.is_object() => {
                    for (sub, sub_value) in inner {
                        if value.get(sub) != Some(sub_value) {
                            let pointer = crate::json_pointer::join(&[field.clone(), sub.clone()]);
                            *counts.entry(pointer).or_default() += 1;
                        }
                    }
                }
                Some(_) => {
                    let pointer = crate::json_pointer::join(std::slice::from_ref(field));
                    *counts.entry(pointer).or_default() += 1;
                }
                None => {}
            }
        }
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n == compared && compared > 0)
        .map(|(pointer, _)| pointer)
        .collect()
}

/// A field named like an update time whose value reads as a time.
fn update_time_field(record: &Value) -> Option<String> {
    let record = record.as_object()?;
    UPDATE_TIMES.iter().find_map(|name| {
        let value = record.get(*name)?.as_str()?;
        chrono::DateTime::parse_from_rfc3339(value)
            .is_ok()
            .then(|| (*name).to_owned())
    })
}

/// A member of the envelope (not inside the records), by pointer.
fn members(envelope: &Value) -> Vec<(String, Value)> {
    fn walk(value: &Value, pointer: String, depth: usize, out: &mut Vec<(String, Value)>) {
        let Value::Object(map) = value else { return };
        for (name, member) in map {
            let here = format!(
                "{pointer}{}",
                crate::json_pointer::join(std::slice::from_ref(name))
            );
            out.push((here.clone(), member.clone()));
            if depth < 3 {
                walk(member, here, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(envelope, String::new(), 1, &mut out);
    out
}

/// The last segment of a pointer, lowercased, `_` and `-` removed.
fn leaf(pointer: &str) -> String {
    pointer
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace(['_', '-'], "")
}

async fn guess_pagination(
    http: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
    first: &Fetched,
    envelope: &Value,
    records: &[Value],
    guess: &mut Guess,
) {
    let set = |guess: &mut Guess, key: &str, value: String| {
        guess.pagination.push((key.to_owned(), value));
    };
    let envelope_members = members(envelope);
    let total = envelope_members.iter().find_map(|(pointer, value)| {
        (value.is_u64() && TOTALS.iter().any(|t| leaf(pointer) == leaf(t))).then(|| pointer.clone())
    });
    let total_header = ["x-total-count", "x-total"]
        .into_iter()
        .find(|name| first.headers.contains_key(*name));

    // A Link header with rel="next".
    if let Some(link) = crate::source::paginate::join_headers(&first.headers, reqwest::header::LINK)
        && matches!(crate::source::paginate::find_rel_next(&link), Ok(Some(_)))
    {
        set(guess, "kind", quoted("link_header"));
        if let Some(name) = total_header {
            set(guess, "total_header", quoted(&header_case(name)));
        }
        return;
    }
    // A next URL in the body.
    let next_url = envelope_members.iter().find(|(pointer, value)| {
        leaf(pointer).contains("next")
            && value
                .as_str()
                .is_some_and(|s| s.starts_with("http") || s.starts_with('/') || s.starts_with('?'))
    });
    if let Some((pointer, _)) = next_url {
        set(guess, "kind", quoted("next_url"));
        set(guess, "next_path", quoted(pointer));
        if let Some(total) = &total {
            set(guess, "total_path", quoted(total));
        }
        return;
    }
    // A cursor.
    let cursor = envelope_members.iter().find(|(pointer, value)| {
        let leaf = leaf(pointer);
        (leaf.contains("cursor") || leaf.contains("token") || leaf == "after" || leaf == "next")
            && (value.is_string() || value.is_number())
    });
    if let Some((pointer, _)) = cursor {
        let name = pointer.rsplit('/').next().unwrap_or("cursor");
        let param = name
            .strip_prefix("next_")
            .or_else(|| name.strip_prefix("next"))
            .filter(|p| !p.is_empty())
            .unwrap_or(name);
        let param = match param {
            "" => "cursor",
            p => p,
        };
        set(guess, "kind", quoted("cursor"));
        set(guess, "cursor_param", quoted(param));
        set(guess, "cursor_path", quoted(pointer));
        if let Some((more, _)) = envelope_members
            .iter()
            .find(|(p, v)| v.is_boolean() && leaf(p).contains("more"))
        {
            set(guess, "has_more_path", quoted(more));
        }
        guess.notes.push(format!(
            "The cursor goes back as `{param}`: check the API's name for it."
        ));
        return;
    }
    // A page count, or a total larger than one page: page or offset
    // parameters, tried against the API.
    let page_count = envelope_members.iter().find_map(|(pointer, value)| {
        (value.is_u64() && PAGE_COUNTS.iter().any(|t| leaf(pointer) == leaf(t)))
            .then(|| pointer.clone())
    });
    let stated_total = total
        .as_ref()
        .and_then(|p| envelope.pointer(p))
        .and_then(Value::as_u64)
        .or_else(|| {
            total_header
                .and_then(|h| first.headers.get(h))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        });
    let more_than_a_page =
        page_count.is_some() || stated_total.is_some_and(|n| n > records.len() as u64);
    // Tried even when nothing says there is more: an API without totals
    // may page all the same, and taking it for one page would archive a
    // part of it.
    if !records.is_empty() {
        let page_param = ["page", "current_page"]
            .into_iter()
            .find(|p| url.query_pairs().any(|(k, _)| k == *p))
            .unwrap_or("page");
        let second = crate::source::paginate::with_params(url, &[(page_param, "2".to_owned())]);
        if differs(http, &second, headers, guess, records).await {
            set(guess, "kind", quoted("page"));
            if page_param != "page" {
                set(guess, "page_param", quoted(page_param));
            }
            if let Some(count) = page_count {
                set(guess, "total_pages_path", quoted(&count));
            } else if let Some(total) = &total {
                set(guess, "total_path", quoted(total));
            } else if let Some(name) = total_header {
                set(guess, "total_header", quoted(&header_case(name)));
            }
            return;
        }
        let offset =
            crate::source::paginate::with_params(url, &[("offset", records.len().to_string())]);
        if differs(http, &offset, headers, guess, records).await {
            set(guess, "kind", quoted("offset"));
            if let Some(total) = &total {
                set(guess, "total_path", quoted(total));
            } else if let Some(name) = total_header {
                set(guess, "total_header", quoted(&header_case(name)));
            }
            return;
        }
        if more_than_a_page {
            guess.notes.push(
                "The API states more records than one page holds, but neither ?page=2 nor \
                 ?offset=N gave others: set [jobs.pagination] by hand."
                    .into(),
            );
        }
    }
    set(guess, "kind", quoted("none"));
    guess
        .notes
        .push("No pagination found: the job reads this one response.".into());
    // A stated total is checked by every run: one page short of it fails.
    if let Some(total) = &total {
        set(guess, "total_path", quoted(total));
    } else if let Some(name) = total_header {
        set(guess, "total_header", quoted(&header_case(name)));
    }
}

/// Whether `url` answers other records than `first` (and some): other keys,
/// when the key is known, since volatile fields differ on every fetch.
async fn differs(
    http: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
    guess: &Guess,
    first: &[Value],
) -> bool {
    let records_pointer = guess.records.as_str();
    let Ok(fetched) = fetch(http, url, headers).await else {
        return false;
    };
    let records = if records_pointer.is_empty() {
        fetched.body.as_array()
    } else {
        crate_pointer(&fetched.body, records_pointer)
    };
    let keys = |records: &[Value]| -> Option<BTreeSet<String>> {
        let key = &guess.key.as_ref()?.field;
        records
            .iter()
            .map(|record| record.get(key).map(Value::to_string))
            .collect()
    };
    records.is_some_and(|records| {
        !records.is_empty()
            && match (keys(records), keys(first)) {
                (Some(these), Some(those)) => these != those,
                _ => records.as_slice() != first,
            }
    })
}

fn header_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The job as commented TOML.
fn render(request: &Request, url: &Url, guess: &Guess) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Guessed by `apisync init` from {}.",
        crate::redact::display_url(url.as_str())
    );
    out.push_str("# Check it with `apisync check --connect`, then `apisync sync ");
    let _ = writeln!(out, "{}`.", request.name);
    for note in &guess.notes {
        let _ = writeln!(out, "# {note}");
    }
    if let Some(database) = &request.database {
        let _ = writeln!(out, "\n[database]\nurl = {}", quoted(database));
    }
    let _ = writeln!(out, "\n[[jobs]]\nname = {}", quoted(&request.name));
    out.push_str("# When `apisync run` runs it (optional for `apisync sync`).\n");
    out.push_str("schedule = \"@hourly\"\n");
    let _ = writeln!(out, "table = {}", quoted(&request.name));
    match &guess.key {
        Some(Key {
            field,
            by_name: false,
        }) => {
            out.push_str("# No id-like field: this one is unique on the first page only. Make\n");
            out.push_str("# sure it is the natural key (unique across the whole collection):\n");
            out.push_str("# records with the same key are stored as one row.\n");
            let _ = writeln!(out, "key = [{}]", quoted(field));
        }
        Some(Key { field, .. }) => {
            out.push_str("# A field present and unique in every record of the first page.\n");
            let _ = writeln!(out, "key = [{}]", quoted(field));
        }
        None => out.push_str("# key = [\"id\"]   # could not tell: name the natural key\n"),
    }
    out.push_str("# Where the records are: \"\" is the body itself.\n");
    let _ = writeln!(out, "records = {}", quoted(&guess.records));
    if !guess.hash_exclude.is_empty() {
        out.push_str("# These changed between two fetches of the same page: left out of the\n");
        out.push_str("# content hash, so they do not count as changes.\n");
        let list: Vec<String> = guess.hash_exclude.iter().map(|p| quoted(p)).collect();
        let _ = writeln!(out, "hash_exclude = [{}]", list.join(", "));
    }
    let mut base = url.clone();
    base.set_fragment(None);
    let _ = writeln!(out, "\n[jobs.request]\nurl = {}", quoted(base.as_str()));
    if !request.headers.is_empty() {
        out.push_str("# Headers given to init; a credential belongs in ${VAR} or [jobs.auth].\n");
        let pairs: Vec<String> = request
            .headers
            .iter()
            .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
            .collect();
        let _ = writeln!(out, "headers = {{ {} }}", pairs.join(", "));
    }
    out.push_str("\n[jobs.pagination]\n");
    for (key, value) in &guess.pagination {
        let _ = writeln!(out, "{key} = {value}");
    }
    if let Some(field) = &guess.incremental {
        out.push_str("\n# `");
        out.push_str(field);
        out.push_str("` looks like an update time. If the API can filter on it, read only\n");
        out.push_str("# changes (name the query parameter it takes):\n");
        let _ = writeln!(
            out,
            "# [jobs.incremental]\n# field = {}\n# param = \"updated_since\"",
            quoted(field)
        );
    }
    out
}

/// Walks two pages of `toml`'s job as a run would; why not, if it cannot.
async fn confirm(toml: &str) -> Result<(), String> {
    // No environment: nothing of it may reach the API through a name the
    // API chose (see `render`).
    let settings = crate::config::load_str(
        toml,
        std::path::Path::new("init.toml"),
        &std::collections::HashMap::new(),
    )
    .map_err(|e| e.problems.join("; "))?;
    let job = settings.jobs.first().ok_or("no job")?;
    let spec = crate::source::SourceSpec::new(job, &crate::source::HostThrottles::default())?;
    let client = crate::source::ApiClient::new().map_err(|e| e.to_string())?;
    let mut pages = spec.pages(&client, &settings.redactor, None);
    for _ in 0..2 {
        match pages.next_page().await {
            Ok(Some(page)) if page.is_last => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => return Err(crate::error_chain(&e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_are_the_largest_array_of_objects() {
        let body = json!({"meta": {"tags": [{"a": 1}]}, "data": {"items": [{"id": 1}, {"id": 2}]}});
        let (pointer, records) = find_records(&body).unwrap();
        assert_eq!(pointer, "/data/items");
        assert_eq!(records.len(), 2);
        assert_eq!(find_records(&json!([{"id": 1}])).unwrap().0, "");
        assert!(find_records(&json!({"data": [1, 2]})).is_none());
    }

    #[test]
    fn the_key_is_a_preferred_name_or_a_unique_scalar() {
        let records = vec![json!({"sku": "a", "n": 1}), json!({"sku": "b", "n": 1})];
        let sku = find_key(&records, "products").unwrap();
        assert_eq!((sku.field.as_str(), sku.by_name), ("sku", false));
        let named = vec![json!({"order_id": 1}), json!({"order_id": 2})];
        let order = find_key(&named, "orders").unwrap();
        assert_eq!((order.field.as_str(), order.by_name), ("order_id", true));
        let none = vec![json!({"n": 1}), json!({"n": 1})];
        assert!(find_key(&none, "x").is_none());
    }

    #[test]
    fn fields_that_change_between_fetches_are_volatile() {
        let first = vec![json!({"id": 1, "name": "a", "meta": {"request_id": "r1", "v": 1}})];
        let second = vec![json!({"id": 1, "name": "a", "meta": {"request_id": "r2", "v": 1}})];
        assert_eq!(
            volatile_fields(&first, &second, "id"),
            vec!["/meta/request_id"]
        );
    }
}
