//! Where the next page is: one small pure function per pagination kind, given
//! what the last response said. No I/O here, so every rule is unit-tested.
//!
//! The rules that keep a walk complete (guarantee 7):
//! - `offset` advances by the page size asked for, or by what came back when
//!   that is less (an API that caps `limit`), never by a count that includes
//!   records repeated from the page before: records inserted while paging
//!   shift later ones back, and advancing past them would skip as many.
//! - A short page does not end `page` or `offset` pagination: APIs cap page
//!   sizes. An empty page does, or the stated total, and a stated end is
//!   confirmed by one request past it ([`Step::Confirm`]).
//! - A pointer that finds nothing at all is not "the end" where that could
//!   silently drop the rest (see [`Paginator::next`] for the exact rules).

use reqwest::Url;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::config::{Locator, Pagination, PaginationKind, ValueIn};
use crate::record::kind_of;
use crate::redact::Redactor;

/// What the paginator needs to know about one response.
pub struct Response<'a> {
    /// The URL that was requested (relative next links resolve against it).
    pub url: &'a Url,
    pub headers: &'a HeaderMap,
    /// The body with the records array emptied.
    pub body: &'a Value,
    /// How many records the page held.
    pub records: usize,
}

/// What to do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask for this URL next.
    Next(Url),
    /// The stated total says this was the last page: ask for this URL once
    /// to confirm. An empty page or a client error there confirms the end;
    /// records mean the total was wrong, and paging goes on.
    Confirm(Url),
    /// No page follows.
    End,
}

/// Why the next page cannot be determined. Each ends the run: guessing would
/// either loop or silently drop the rest of the data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PaginationError {
    #[error("{what} is {found}, expected {expected}")]
    BadValue {
        what: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{has_more} says there is more, but {cursor} is null or empty")]
    MoreWithoutCursor { has_more: String, cursor: String },
    #[error(
        "{what} finds nothing {why}; the response has {present} (a wrong pointer or header \
         name would silently end the run here{hint})"
    )]
    Missing {
        what: String,
        why: String,
        present: String,
        hint: &'static str,
    },
    #[error(
        "{what} finds no total in the first response, which has {present}; a total that is \
         configured must be there (a misspelt name must not pass as \"no total\")"
    )]
    TotalMissing { what: String, present: String },
    #[error("cannot parse the Link header: {0}")]
    LinkHeader(String),
    #[error("the next URL `{0}` is not a valid URL")]
    BadUrl(String),
    #[error(
        "the next URL points to {found}, not {expected}; apisync does not send the job's \
         headers to another host"
    )]
    OtherOrigin { found: String, expected: String },
}

/// What a locator found in a response.
enum Found<'a> {
    /// No such member or header.
    Absent,
    Null,
    Json(&'a Value),
    Header(&'a str),
}

impl Found<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Found::Absent => "nothing",
            Found::Null => "null",
            Found::Json(value) => kind_of(value),
            Found::Header(_) => "a header",
        }
    }
}

fn find<'a>(locator: &Locator, response: &Response<'a>) -> Result<Found<'a>, PaginationError> {
    match locator {
        Locator::Body(pointer) => Ok(match response.body.pointer(pointer) {
            None => Found::Absent,
            Some(Value::Null) => Found::Null,
            Some(value) => Found::Json(value),
        }),
        Locator::Header(name) => match response.headers.get(name.as_str()) {
            None => Ok(Found::Absent),
            Some(value) => value
                .to_str()
                .map(|text| Found::Header(text.trim()))
                .map_err(|_| PaginationError::BadValue {
                    what: format!("header `{name}`"),
                    found: "not ASCII text",
                    expected: "text",
                }),
        },
    }
}

/// What a response has, for messages: the body's top-level keys, or the
/// header names when the locator is a header (names only: values may be
/// credentials).
fn present(locator: &Locator, response: &Response) -> String {
    match locator {
        Locator::Body(_) => top_level_keys(response.body),
        Locator::Header(_) => {
            let mut names: Vec<&str> = response.headers.keys().map(|n| n.as_str()).collect();
            names.dedup();
            if names.is_empty() {
                "no headers".to_owned()
            } else {
                format!("the headers {}", names.join(", "))
            }
        }
    }
}

/// `the keys "count", "next", "results"`, or what the body is instead.
pub fn top_level_keys(body: &Value) -> String {
    match body {
        Value::Object(map) if map.is_empty() => "an empty object as body".to_owned(),
        Value::Object(map) => {
            let mut keys: Vec<String> = map.keys().take(20).map(|k| format!("\"{k}\"")).collect();
            if map.len() > 20 {
                keys.push(format!("… ({} in all)", map.len()));
            }
            format!("the top-level keys {}", keys.join(", "))
        }
        other => format!("{} as body, not an object", kind_of(other)),
    }
}

/// What the API stated about the size of the collection during a run.
///
/// The record count a run is checked against is the first one stated (when
/// the run began): records added while paging only raise later totals, and
/// a total that falls while pages are walked by position means records
/// moved back past the walk (a deletion), which can have skipped one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stated {
    /// The record count the API stated first, and last.
    pub first_records: Option<u64>,
    pub last_records: Option<u64>,
    /// The page count the API stated first (`total_pages_*`).
    pub pages: Option<u64>,
    /// Responses that held records.
    pub pages_with_records: u64,
}

/// Walks the pages of one run.
#[derive(Debug)]
pub struct Paginator {
    settings: Pagination,
    /// The configured URL with the configured query; page, offset and cursor
    /// parameters are set on a copy of it.
    base: Url,
    /// The page number or offset of the last request.
    position: u64,
    /// Responses read so far.
    responses: u64,
    /// Records read so far, on every page.
    records_seen: u64,
    /// The first non-empty page's record count: the API's own page size,
    /// when none is asked for.
    first_page_size: Option<u64>,
    /// `page` pagination: the page count, stated or derived from the total.
    total_pages: Option<u64>,
    /// The record count the API last stated.
    expected: Option<u64>,
    /// What the API stated, for the run's verdict.
    stated: Stated,
    /// Masks secrets in excerpts before they are cut.
    redactor: Redactor,
    /// `cursor_in = "body"`: the cursor the next request puts in its body.
    body_cursor: Option<Value>,
    /// The last response's `has_more` said true.
    said_more: bool,
}

impl Paginator {
    pub fn new(settings: Pagination, base: Url) -> Self {
        let position = match &settings.kind {
            PaginationKind::Page { start, .. } => *start,
            _ => 0,
        };
        Self {
            settings,
            base,
            position,
            responses: 0,
            records_seen: 0,
            first_page_size: None,
            total_pages: None,
            expected: None,
            stated: Stated::default(),
            redactor: Redactor::default(),
            body_cursor: None,
            said_more: false,
        }
    }

    /// Excerpts in errors are redacted by `redactor` before they are cut.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// The record count the API last stated, if it states one.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// What the API stated so far.
    pub fn stated(&self) -> Stated {
        self.stated
    }

    fn note_records(&mut self, count: u64) {
        self.expected = Some(count);
        self.stated.first_records.get_or_insert(count);
        self.stated.last_records = Some(count);
    }

    /// Reads the total from the headers of a HEAD request to the first URL
    /// (`total_method = "HEAD"`).
    ///
    /// # Errors
    /// When the configured total header is absent or not a number.
    pub fn note_head(&mut self, headers: &HeaderMap) -> Result<(), PaginationError> {
        let Some(total) = &self.settings.total else {
            return Ok(());
        };
        let response = Response {
            url: &self.base,
            headers,
            body: &Value::Null,
            records: 0,
        };
        match count_at(total, "total", &response)? {
            Some(count) => self.note_records(count),
            None if header_states_no_count(total, &response) => {}
            None => {
                return Err(PaginationError::TotalMissing {
                    what: total.describe("total"),
                    present: present(total, &response),
                });
            }
        }
        Ok(())
    }

    /// The settings this paginator walks by.
    pub fn settings(&self) -> &Pagination {
        &self.settings
    }

    /// The page size or limit sent with every request, if configured.
    pub fn size_asked(&self) -> Option<u64> {
        match &self.settings.kind {
            PaginationKind::Page { size, .. } => *size,
            PaginationKind::Offset { limit, .. } => *limit,
            _ => None,
        }
    }

    /// The URL of the first request.
    pub fn first(&self) -> Url {
        match &self.settings.kind {
            PaginationKind::Page { start, .. } => self.page_url(*start),
            PaginationKind::Offset { .. } => self.offset_url(0),
            PaginationKind::None
            | PaginationKind::Cursor { .. }
            | PaginationKind::LinkHeader
            | PaginationKind::NextUrl { .. } => self.base.clone(),
        }
    }

    fn page_url(&self, page: u64) -> Url {
        let PaginationKind::Page {
            page_param,
            size_param,
            size,
            ..
        } = &self.settings.kind
        else {
            return self.base.clone();
        };
        let mut params = vec![(page_param.as_str(), page.to_string())];
        if let Some(size) = size {
            params.push((size_param.as_str(), size.to_string()));
        }
        with_params(&self.base, &params)
    }

    fn offset_url(&self, offset: u64) -> Url {
        let PaginationKind::Offset {
            offset_param,
            limit_param,
            limit,
        } = &self.settings.kind
        else {
            return self.base.clone();
        };
        let mut params = vec![(offset_param.as_str(), offset.to_string())];
        if let Some(limit) = limit {
            params.push((limit_param.as_str(), limit.to_string()));
        }
        with_params(&self.base, &params)
    }

    /// What follows `response`.
    ///
    /// A cursor or next pointer that finds nothing at all (no such member,
    /// as opposed to `null` or `""`) fails the run while `has_more` says
    /// true, while the stated total says more records exist, or on a first
    /// page that holds records (unless `end_when_missing`: some APIs drop
    /// the member on their last page). A header that is absent ends paging,
    /// as a missing `Link` does, under the same `has_more` and total checks.
    ///
    /// # Errors
    /// A [`PaginationError`]: the run cannot know its next page.
    pub fn next(&mut self, response: &Response) -> Result<Step, PaginationError> {
        self.responses += 1;
        let first = self.responses == 1;
        let records = response.records as u64;
        self.records_seen += records;
        if records > 0 {
            self.stated.pages_with_records += 1;
            self.first_page_size.get_or_insert(records);
        }
        if let Some(total) = self.settings.total.clone() {
            let total = &total;
            match count_at(total, "total", response)? {
                Some(count) => self.note_records(count),
                None if first
                    && self.expected.is_none()
                    && !matches!(find(total, response)?, Found::Null)
                    && !header_states_no_count(total, response) =>
                {
                    return Err(PaginationError::TotalMissing {
                        what: total.describe("total"),
                        present: present(total, response),
                    });
                }
                None => {}
            }
        }

        let mut body_cursor = None;
        let mut said_more = false;
        let step = match &self.settings.kind {
            PaginationKind::None => Step::End,
            PaginationKind::Page {
                size, total_pages, ..
            } => {
                if let Some(locator) = total_pages {
                    match count_at(locator, "total_pages", response)? {
                        Some(pages) => {
                            self.total_pages = Some(pages);
                            self.stated.pages.get_or_insert(pages);
                        }
                        None if first && !matches!(find(locator, response)?, Found::Null) => {
                            return Err(PaginationError::TotalMissing {
                                what: locator.describe("total_pages"),
                                present: present(locator, response),
                            });
                        }
                        None => {}
                    }
                } else if let (Some(count), Some(size)) = (self.expected, self.page_size(*size)) {
                    self.total_pages = Some(count.div_ceil(size.max(1)));
                }
                if records == 0 {
                    Step::End
                } else {
                    let start = match &self.settings.kind {
                        PaginationKind::Page { start, .. } => *start,
                        _ => 0,
                    };
                    let pages_read = self.position - start + 1;
                    self.position += 1;
                    let url = self.page_url(self.position);
                    if self.total_pages.is_some_and(|total| pages_read >= total) {
                        Step::Confirm(url)
                    } else {
                        Step::Next(url)
                    }
                }
            }
            PaginationKind::Offset { limit, .. } => {
                if records == 0 {
                    Step::End
                } else {
                    let page_size = limit.or(self.first_page_size).unwrap_or(records);
                    self.position += records.min(page_size);
                    let url = self.offset_url(self.position);
                    if self.expected.is_some_and(|total| self.position >= total) {
                        Step::Confirm(url)
                    } else {
                        Step::Next(url)
                    }
                }
            }
            PaginationKind::Cursor {
                cursor_param,
                cursor_in,
                cursor,
                has_more,
                end_when_missing,
            } => {
                let more = has_more
                    .as_ref()
                    .map(|locator| flag_at(locator, response))
                    .transpose()?;
                said_more = more == Some(true);
                // The cursor's value, as the next request carries it.
                let mut next = |value: Value| match cursor_in {
                    ValueIn::Query => {
                        let text = match value {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        Step::Next(with_params(&self.base, &[(cursor_param.as_str(), text)]))
                    }
                    ValueIn::Body => {
                        body_cursor = Some(value);
                        Step::Next(self.base.clone())
                    }
                };
                if more == Some(false) {
                    Step::End
                } else {
                    match find(cursor, response)? {
                        Found::Json(Value::String(s)) if !s.is_empty() => {
                            next(Value::String(s.clone()))
                        }
                        Found::Json(Value::Number(n)) => next(Value::Number(n.clone())),
                        Found::Header(text) if !text.is_empty() => {
                            next(Value::String(text.to_owned()))
                        }
                        Found::Null | Found::Json(Value::String(_)) | Found::Header(_) => {
                            if more == Some(true) {
                                return Err(PaginationError::MoreWithoutCursor {
                                    has_more: has_more
                                        .as_ref()
                                        .map(|l| l.describe("has_more"))
                                        .unwrap_or_default(),
                                    cursor: cursor.describe("cursor"),
                                });
                            }
                            Step::End
                        }
                        Found::Json(other) => {
                            return Err(PaginationError::BadValue {
                                what: cursor.describe("cursor"),
                                found: kind_of(other),
                                expected: "a string, a number or null",
                            });
                        }
                        Found::Absent => {
                            self.when_missing(cursor, "cursor", more, *end_when_missing, response)?
                        }
                    }
                }
            }
            PaginationKind::LinkHeader => {
                let link = join_headers(response.headers, reqwest::header::LINK);
                match link {
                    None => Step::End,
                    Some(header) => {
                        // Redacted before it is cut: the header may carry a
                        // key in a URL.
                        let next = find_rel_next(&header).map_err(|e| {
                            let excerpt = self.redactor.excerpt(&header, e.at, LINK_EXCERPT_CHARS);
                            PaginationError::LinkHeader(format!("{} `{excerpt}`", e.what))
                        })?;
                        match next {
                            None => Step::End,
                            Some(link) => Step::Next(self.resolve(response.url, &link)?),
                        }
                    }
                }
            }
            PaginationKind::NextUrl {
                next,
                end_when_missing,
            } => match find(next, response)? {
                Found::Null => Step::End,
                Found::Json(Value::String(s)) if s.is_empty() => Step::End,
                Found::Header("") => Step::End,
                Found::Json(Value::String(s)) => Step::Next(self.resolve(response.url, s)?),
                Found::Header(text) => Step::Next(self.resolve(response.url, text)?),
                Found::Json(other) => {
                    return Err(PaginationError::BadValue {
                        what: next.describe("next"),
                        found: kind_of(other),
                        expected: "a URL string or null",
                    });
                }
                Found::Absent => {
                    self.when_missing(next, "next", None, *end_when_missing, response)?
                }
            },
        };
        self.body_cursor = body_cursor;
        self.said_more = said_more;
        Ok(step)
    }

    /// Whether the last response's `has_more` said there is more.
    pub fn said_more(&self) -> bool {
        self.said_more
    }

    /// `cursor_in = "body"`: the cursor the request [`Paginator::next`] gave
    /// last puts in its body (`None` for the first request, and for every
    /// other kind).
    pub fn body_cursor(&self) -> Option<&Value> {
        self.body_cursor.as_ref()
    }

    /// The page size to derive a page count from: the first non-empty
    /// page's, when it is smaller than the size asked for (an API that caps
    /// `page_size`, as DRF does at `max_page_size`; a first page that is
    /// also the last is short, but then the count fits it exactly).
    fn page_size(&self, asked: Option<u64>) -> Option<u64> {
        match (asked, self.first_page_size) {
            (Some(asked), Some(first)) => Some(asked.min(first)),
            (asked, first) => asked.or(first),
        }
    }

    /// A cursor or next locator found nothing: the end, or an error (see
    /// [`Paginator::next`]).
    fn when_missing(
        &self,
        locator: &Locator,
        value: &str,
        has_more: Option<bool>,
        end_when_missing: bool,
        response: &Response,
    ) -> Result<Step, PaginationError> {
        let why = if has_more == Some(true) {
            Some("although has_more says there is more".to_owned())
        } else if let Some(total) = self.expected.filter(|&total| self.records_seen < total) {
            Some(format!(
                "although the API states {total} records and {} were read",
                self.records_seen
            ))
        } else if self.responses == 1
            && response.records > 0
            && !end_when_missing
            && matches!(locator, Locator::Body(_))
        {
            Some("on a first page that holds records".to_owned())
        } else {
            None
        };
        match why {
            Some(why) => Err(PaginationError::Missing {
                what: locator.describe(value),
                why,
                present: present(locator, response),
                hint: if end_when_missing || matches!(locator, Locator::Header(_)) {
                    ""
                } else {
                    "; if the API leaves it out on its last page, set end_when_missing = true"
                },
            }),
            None => {
                if self.responses == 1 && response.records > 0 {
                    tracing::warn!(
                        what = %locator.describe(value),
                        "The first page has records but no next page address; treating it \
                         as the only page. Check the setting if the API has more."
                    );
                }
                Ok(Step::End)
            }
        }
    }

    /// The URL [`Paginator::next`] will give after the page last requested,
    /// when that is already certain: `page` pagination with a known total
    /// not yet reached (only an empty page, or a total that changes, would
    /// end it sooner). `None` for every other kind: their next URL depends on
    /// the response.
    pub fn predicted_next(&self) -> Option<Url> {
        let PaginationKind::Page { start, .. } = &self.settings.kind else {
            return None;
        };
        let pages_read = self.position - start + 1;
        if pages_read >= self.total_pages? {
            return None;
        }
        Some(self.page_url(self.position + 1))
    }

    /// Resolves a next link given by the API and refuses other hosts: the
    /// job's headers often carry credentials.
    fn resolve(&self, current: &Url, link: &str) -> Result<Url, PaginationError> {
        let url = current
            .join(link)
            .map_err(|_| PaginationError::BadUrl(crate::redact::display_url(link)))?;
        if url.origin() != self.base.origin() {
            return Err(PaginationError::OtherOrigin {
                found: url.origin().ascii_serialization(),
                expected: self.base.origin().ascii_serialization(),
            });
        }
        Ok(url)
    }
}

/// A whole number at `locator` (numbers as strings accepted; in a header,
/// the part after the last `/`, so `Content-Range: items 0-99/1234` gives
/// 1234), `None` when absent, null or `*` (a range of unknown length).
fn count_at(
    locator: &Locator,
    value: &str,
    response: &Response,
) -> Result<Option<u64>, PaginationError> {
    let bad = |found| PaginationError::BadValue {
        what: locator.describe(value),
        found,
        expected: "a whole number",
    };
    match find(locator, response)? {
        Found::Absent | Found::Null => Ok(None),
        // Some APIs say -1 for "not counted".
        Found::Json(Value::Number(n)) if n.as_i64().is_some_and(|n| n < 0) => Ok(None),
        Found::Json(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad("a number")),
        Found::Json(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad("a string")),
        Found::Json(other) => Err(bad(kind_of(other))),
        Found::Header(text) => {
            let count = text.rsplit('/').next().unwrap_or(text).trim();
            if count == "*" {
                return Ok(None);
            }
            count.parse().map(Some).map_err(|_| bad("not a number"))
        }
    }
}

/// Whether a header is there but states no count: `Content-Range: items
/// 0-9/*` (PostgREST without `Prefer: count=exact`). Not a misspelt name.
fn header_states_no_count(locator: &Locator, response: &Response) -> bool {
    matches!(locator, Locator::Header(name) if response
        .headers
        .get(name.as_str())
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().ends_with("/*")))
}

/// A boolean at `locator`: JSON `true`/`false`, or a header `true`, `false`,
/// `1`, `0`. A body member that is absent or not a boolean is an error (a
/// flag the API always sends: finding nothing is a wrong pointer, and taking
/// it for "no more" would silently stop after page 1); an absent header ends
/// paging, as a missing `Link` does.
fn flag_at(locator: &Locator, response: &Response) -> Result<bool, PaginationError> {
    let found = find(locator, response)?;
    match found {
        Found::Json(Value::Bool(b)) => Ok(*b),
        Found::Absent if matches!(locator, Locator::Header(_)) => Ok(false),
        Found::Header(text) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(PaginationError::BadValue {
                what: locator.describe("has_more"),
                found: "another text",
                expected: "true, false, 1 or 0",
            }),
        },
        other => Err(PaginationError::BadValue {
            what: locator.describe("has_more"),
            found: other.kind(),
            expected: "a boolean",
        }),
    }
}

/// Every value of header `name`, joined with `, `.
pub fn join_headers(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// `url` with each of `params` set, replacing any earlier value of that name.
pub fn with_params(url: &Url, params: &[(&str, String)]) -> Url {
    let mut url = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| !params.iter().any(|(p, _)| p == name))
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = url.query_pairs_mut();
        query.clear();
        query.extend_pairs(kept);
        query.extend_pairs(params.iter().map(|(n, v)| (*n, v.as_str())));
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    url
}

/// The target of the `rel="next"` link in an RFC 8288 `Link` header, as
/// GitHub sends it: `<https://api…?page=2>; rel="next", <…>; rel="last"`.
///
/// # Errors
/// The first thing that is not a link-value, so that a garbled header ends
/// the run instead of silently ending the pagination.
pub fn find_rel_next(header: &str) -> Result<Option<String>, LinkError> {
    let at = |what: &'static str, rest: &str| LinkError {
        what,
        at: header.len() - rest.len(),
    };
    let mut rest = header.trim_start_matches([' ', '\t', ',']);
    while !rest.is_empty() {
        let Some(after_lt) = rest.strip_prefix('<') else {
            return Err(at("expected `<` at", rest));
        };
        let end = after_lt
            .find('>')
            .ok_or_else(|| at("no closing `>` in", rest))?;
        let target = &after_lt[..end];
        rest = &after_lt[end + 1..];
        let mut is_next = false;
        // Parameters: `; name=value` or `; name="quoted value"`, up to the next `,`.
        loop {
            rest = rest.trim_start_matches([' ', '\t']);
            let Some(after_semi) = rest.strip_prefix(';') else {
                break;
            };
            rest = after_semi.trim_start_matches([' ', '\t']);
            let name_end = rest
                .find(|c: char| c == '=' || c == ';' || c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            if name.is_empty() {
                return Err(at("a parameter without a name at", rest));
            }
            rest = rest[name_end..].trim_start_matches([' ', '\t']);
            let mut value = String::new();
            if let Some(after_eq) = rest.strip_prefix('=') {
                rest = after_eq.trim_start_matches([' ', '\t']);
                if let Some(quoted) = rest.strip_prefix('"') {
                    let mut chars = quoted.char_indices();
                    let mut closed = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, escaped)) = chars.next() {
                                    value.push(escaped);
                                }
                            }
                            '"' => {
                                closed = Some(i);
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    let close =
                        closed.ok_or_else(|| at("an unterminated quoted value in", rest))?;
                    rest = &quoted[close + 1..];
                } else {
                    let end = rest.find([';', ',']).unwrap_or(rest.len());
                    value = rest[..end].trim().to_owned();
                    rest = &rest[end..];
                }
            }
            if name.eq_ignore_ascii_case("rel")
                && value
                    .split_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
            {
                is_next = true;
            }
        }
        if is_next {
            return Ok(Some(target.to_owned()));
        }
        rest = rest.trim_start_matches([' ', '\t']);
        if !rest.is_empty() {
            let Some(after_comma) = rest.strip_prefix(',') else {
                return Err(at("expected `,` or `;` at", rest));
            };
            rest = after_comma.trim_start_matches([' ', '\t', ',']);
        }
    }
    Ok(None)
}

/// Where a `Link` header stops being a list of link-values.
#[derive(Debug, PartialEq, Eq)]
pub struct LinkError {
    /// `expected \`<\` at` …, followed in messages by an excerpt.
    pub what: &'static str,
    /// The byte offset in the header the excerpt starts at.
    pub at: usize,
}

/// How much of a garbled `Link` header a message shows.
const LINK_EXCERPT_CHARS: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};
    use serde_json::json;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn settings(toml: &str) -> Pagination {
        toml::from_str(toml).unwrap()
    }

    /// Feeds responses to a paginator and collects the steps.
    struct Walk {
        paginator: Paginator,
        current: Url,
    }

    impl Walk {
        fn new(toml: &str) -> Walk {
            let paginator = Paginator::new(settings(toml), url("http://h/x"));
            let current = paginator.first();
            Walk { paginator, current }
        }

        fn answer(&mut self, body: Value, records: usize) -> Result<Step, PaginationError> {
            self.answer_with(body, records, &[])
        }

        fn answer_with(
            &mut self,
            body: Value,
            records: usize,
            headers: &[(&str, &str)],
        ) -> Result<Step, PaginationError> {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let response = Response {
                url: &self.current,
                headers: &map,
                body: &body,
                records,
            };
            let step = self.paginator.next(&response)?;
            if let Step::Next(next) | Step::Confirm(next) = &step {
                self.current = next.clone();
            }
            Ok(step)
        }
    }

    fn next(s: &str) -> Step {
        Step::Next(url(s))
    }

    fn confirm(s: &str) -> Step {
        Step::Confirm(url(s))
    }

    #[test]
    fn link_header_finds_next_in_github_style() {
        let header = r#"<https://api.github.com/repos/x/y/issues?page=2>; rel="next", <https://api.github.com/repos/x/y/issues?page=5>; rel="last""#;
        assert_eq!(
            find_rel_next(header).unwrap().as_deref(),
            Some("https://api.github.com/repos/x/y/issues?page=2")
        );
    }

    #[test]
    fn link_header_cases() {
        let cases: [(&str, Result<Option<&str>, ()>); 9] = [
            (r#"</p3>; rel="last""#, Ok(None)),
            (r#"</p1>; rel="prev", </p3>; rel=next"#, Ok(Some("/p3"))),
            (r#"</p3>; title="a, b; c"; rel="next""#, Ok(Some("/p3"))),
            (r#"</p3>; REL="Next Last""#, Ok(Some("/p3"))),
            (r#"</a,b>; rel="next""#, Ok(Some("/a,b"))),
            ("", Ok(None)),
            ("garbage", Err(())),
            (r#"</p3; rel="next""#, Err(())),
            (r#"</p3>; rel="next"#, Err(())),
        ];
        for (header, expected) in cases {
            let got = find_rel_next(header).map_err(|_| ());
            assert_eq!(
                got,
                expected.map(|o| o.map(str::to_owned)),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn offsets_advance_by_the_size_asked_for_never_by_repeats() {
        let mut walk = Walk::new("kind = \"offset\"\nlimit = 100");
        assert_eq!(walk.current.as_str(), "http://h/x?offset=0&limit=100");
        assert_eq!(
            walk.answer(json!({}), 100).unwrap(),
            next("http://h/x?offset=100&limit=100")
        );
        assert_eq!(
            walk.answer(json!({}), 103).unwrap(),
            next("http://h/x?offset=200&limit=100"),
            "a page with 3 records repeated from the page before still moves by 100"
        );
        assert_eq!(
            walk.answer(json!({}), 40).unwrap(),
            next("http://h/x?offset=240&limit=100"),
            "a short page is not the end: the API may cap the limit"
        );
        assert_eq!(walk.answer(json!({}), 0).unwrap(), Step::End);
    }

    #[test]
    fn offsets_follow_an_api_that_caps_the_limit() {
        let mut walk = Walk::new("kind = \"offset\"\nlimit = 1000");
        assert_eq!(
            walk.answer(json!({}), 500).unwrap(),
            next("http://h/x?offset=500&limit=1000")
        );
        assert_eq!(
            walk.answer(json!({}), 500).unwrap(),
            next("http://h/x?offset=1000&limit=1000")
        );
    }

    #[test]
    fn without_a_limit_the_offset_moves_by_the_first_pages_size() {
        let mut walk = Walk::new("kind = \"offset\"");
        assert_eq!(
            walk.answer(json!({}), 50).unwrap(),
            next("http://h/x?offset=50")
        );
        assert_eq!(
            walk.answer(json!({}), 52).unwrap(),
            next("http://h/x?offset=100"),
            "2 repeats do not move it further"
        );
    }

    #[test]
    fn a_stated_total_is_confirmed_by_one_request_past_it() {
        let mut walk = Walk::new("kind = \"offset\"\nlimit = 100\ntotal_path = \"/total\"");
        let body = json!({"total": 150});
        assert_eq!(
            walk.answer(body.clone(), 100).unwrap(),
            next("http://h/x?offset=100&limit=100")
        );
        assert_eq!(
            walk.answer(body.clone(), 50).unwrap(),
            confirm("http://h/x?offset=150&limit=100")
        );
        assert_eq!(walk.paginator.expected(), Some(150));
        assert_eq!(
            walk.answer(body.clone(), 7).unwrap(),
            confirm("http://h/x?offset=157&limit=100"),
            "records past the total: paging goes on, each page a confirmation"
        );
        assert_eq!(walk.answer(body, 0).unwrap(), Step::End);
    }

    #[test]
    fn page_counts_come_from_a_page_total_or_the_record_count() {
        let mut walk = Walk::new("kind = \"page\"\nsize = 10\ntotal_pages_path = \"/pages\"");
        assert_eq!(walk.current.as_str(), "http://h/x?page=1&per_page=10");
        let body = json!({"pages": 2});
        assert_eq!(
            walk.answer(body.clone(), 10).unwrap(),
            next("http://h/x?page=2&per_page=10")
        );
        assert_eq!(
            walk.paginator.predicted_next(),
            None,
            "page 2 is the last by the total"
        );
        assert_eq!(
            walk.answer(body.clone(), 10).unwrap(),
            confirm("http://h/x?page=3&per_page=10")
        );

        // DRF: a record count, and the server's own page size.
        let mut walk = Walk::new("kind = \"page\"\ntotal_path = \"/count\"");
        let body = json!({"count": 250});
        assert_eq!(
            walk.answer(body.clone(), 100).unwrap(),
            next("http://h/x?page=2")
        );
        assert_eq!(
            walk.paginator.predicted_next(),
            Some(url("http://h/x?page=3"))
        );
        assert_eq!(
            walk.answer(body.clone(), 100).unwrap(),
            next("http://h/x?page=3")
        );
        assert_eq!(walk.answer(body, 50).unwrap(), confirm("http://h/x?page=4"));
    }

    #[test]
    fn a_page_size_the_api_caps_is_taken_from_the_first_page() {
        // DRF: page_size=1000 asked, 500 served, 5,002 records: 11 pages.
        let mut walk = Walk::new("kind = \"page\"\nsize = 1000\ntotal_path = \"/count\"");
        let body = json!({"count": 5002});
        for page in 2..=11 {
            assert_eq!(
                walk.answer(body.clone(), 500).unwrap(),
                next(&format!("http://h/x?page={page}&per_page=1000")),
                "not a confirmation before page 11"
            );
        }
        assert_eq!(
            walk.answer(body, 2).unwrap(),
            confirm("http://h/x?page=12&per_page=1000")
        );
    }

    #[test]
    fn a_short_page_does_not_end_page_pagination() {
        let mut walk = Walk::new("kind = \"page\"\nsize = 100");
        assert_eq!(
            walk.answer(json!({}), 60).unwrap(),
            next("http://h/x?page=2&per_page=100")
        );
        assert_eq!(walk.answer(json!({}), 0).unwrap(), Step::End);
        let mut walk = Walk::new("kind = \"page\"\nstart = 0");
        assert_eq!(walk.current.as_str(), "http://h/x?page=0");
        assert_eq!(
            walk.answer(json!({}), 5).unwrap(),
            next("http://h/x?page=1")
        );
    }

    #[test]
    fn totals_come_from_headers_and_content_range() {
        let mut walk = Walk::new("kind = \"page\"\nsize = 2\ntotal_header = \"X-Total-Count\"");
        assert_eq!(
            walk.answer_with(json!([]), 2, &[("x-total-count", "3")])
                .unwrap(),
            next("http://h/x?page=2&per_page=2")
        );
        assert_eq!(walk.paginator.expected(), Some(3));

        let mut walk =
            Walk::new("kind = \"offset\"\nlimit = 100\ntotal_header = \"Content-Range\"");
        walk.answer_with(json!([]), 100, &[("content-range", "items 0-99/1234")])
            .unwrap();
        assert_eq!(walk.paginator.expected(), Some(1234));
        walk.answer_with(json!([]), 100, &[("content-range", "items 100-199/*")])
            .unwrap();
        assert_eq!(
            walk.paginator.expected(),
            Some(1234),
            "`*` states nothing new"
        );
    }

    #[test]
    fn a_configured_total_that_the_first_response_lacks_fails() {
        let mut walk = Walk::new("kind = \"page\"\ntotal_path = \"/cuont\"");
        let error = walk
            .answer(json!({"count": 5, "results": []}), 5)
            .unwrap_err();
        assert!(
            error.to_string().contains(
                "total_path `/cuont` finds no total in the first response, which has the \
                 top-level keys \"count\", \"results\""
            ),
            "{error}"
        );
        let mut walk = Walk::new("kind = \"page\"\ntotal_header = \"X-Total\"");
        let error = walk
            .answer_with(json!([]), 5, &[("x-total-count", "5")])
            .unwrap_err();
        assert!(
            error.to_string().contains("the headers x-total-count"),
            "{error}"
        );
        let mut walk = Walk::new("kind = \"page\"\ntotal_path = \"/count\"");
        assert!(
            walk.answer(json!({"count": null}), 5).is_ok(),
            "null: the API states no total, under the right name"
        );
    }

    #[test]
    fn cursors_follow_body_or_header_and_stop_on_null_or_has_more_false() {
        let cases = [
            (json!({"next_cursor": "abc"}), None, Some("abc")),
            (json!({"next_cursor": 17}), None, Some("17")),
            (json!({"next_cursor": null}), None, None),
            (json!({"next_cursor": ""}), None, None),
            (
                json!({"next_cursor": "x", "more": false}),
                Some("/more"),
                None,
            ),
            (
                json!({"next_cursor": "x", "more": true}),
                Some("/more"),
                Some("x"),
            ),
        ];
        for (body, has_more, expected) in cases {
            let toml = match has_more {
                Some(p) => format!("kind = \"cursor\"\nhas_more_path = \"{p}\""),
                None => "kind = \"cursor\"".to_owned(),
            };
            let mut walk = Walk::new(&toml);
            let step = walk.answer(body.clone(), 3).unwrap();
            let expected = match expected {
                Some(c) => next(&format!("http://h/x?cursor={c}")),
                None => Step::End,
            };
            assert_eq!(step, expected, "body {body}");
        }
        let mut walk = Walk::new(
            "kind = \"cursor\"\ncursor_header = \"X-Next\"\nhas_more_header = \"X-More\"",
        );
        assert_eq!(
            walk.answer_with(json!([]), 3, &[("x-next", "c2"), ("x-more", "true")])
                .unwrap(),
            next("http://h/x?cursor=c2")
        );
        assert_eq!(
            walk.answer_with(json!([]), 3, &[("x-next", "c3")]).unwrap(),
            Step::End,
            "an absent has_more header ends paging"
        );
    }

    #[test]
    fn a_cursor_that_finds_nothing_fails_where_it_could_drop_records() {
        // A wrong pointer on a first page that holds records.
        let mut walk = Walk::new("kind = \"cursor\"\ncursor_path = \"/next\"");
        let error = walk
            .answer(
                json!({"next_cursor": "c2", "has_more": true, "data": []}),
                100,
            )
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("cursor_path `/next` finds nothing on a first page that holds records"),
            "{text}"
        );
        assert!(
            text.contains("the top-level keys \"data\", \"has_more\", \"next_cursor\""),
            "{text}"
        );
        assert!(text.contains("end_when_missing = true"), "{text}");

        // An API that drops the member on its last page says so.
        let mut walk = Walk::new("kind = \"cursor\"\nend_when_missing = true");
        assert_eq!(walk.answer(json!({}), 100).unwrap(), Step::End);

        // Not on a later page, unless has_more or the total says more.
        let mut walk = Walk::new("kind = \"cursor\"");
        walk.answer(json!({"next_cursor": "c2"}), 10).unwrap();
        assert_eq!(walk.answer(json!({}), 10).unwrap(), Step::End);

        let mut walk =
            Walk::new("kind = \"cursor\"\nhas_more_path = \"/more\"\nend_when_missing = true");
        let error = walk.answer(json!({"more": true}), 10).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("although has_more says there is more"),
            "{error}"
        );

        let mut walk =
            Walk::new("kind = \"next_url\"\nend_when_missing = true\ntotal_path = \"/count\"");
        walk.answer(json!({"count": 30, "next": "/x?p=2"}), 10)
            .unwrap();
        let error = walk.answer(json!({"count": 30}), 10).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("although the API states 30 records and 20 were read"),
            "{error}"
        );
        assert!(
            walk.answer(json!({"count": 30}), 0).is_err(),
            "still short of the total"
        );
    }

    #[test]
    fn has_more_without_a_cursor_or_a_readable_flag_fails() {
        let mut walk = Walk::new("kind = \"cursor\"\nhas_more_path = \"/more\"");
        assert!(matches!(
            walk.answer(json!({"more": true, "next_cursor": null}), 1),
            Err(PaginationError::MoreWithoutCursor { .. })
        ));
        for body in [
            json!({"next_cursor": "x"}),
            json!({"next_cursor": "x", "more": null}),
        ] {
            let mut walk = Walk::new("kind = \"cursor\"\nhas_more_path = \"/more\"");
            assert!(
                walk.answer(body.clone(), 1).is_err(),
                "a has_more pointer that finds no boolean is an error, not the end: {body}"
            );
        }
        let mut walk = Walk::new("kind = \"cursor\"");
        assert!(walk.answer(json!({"next_cursor": [1]}), 1).is_err());
    }

    #[test]
    fn params_replace_earlier_values_and_keep_the_rest() {
        let base = url("https://api.test/items?status=all&page=9");
        let next = with_params(
            &base,
            &[("page", "2".to_owned()), ("per_page", "50".to_owned())],
        );
        assert_eq!(
            next.as_str(),
            "https://api.test/items?status=all&page=2&per_page=50"
        );
    }

    #[test]
    fn next_urls_resolve_relative_and_refuse_other_hosts() {
        let mut walk = Walk::new("kind = \"next_url\"");
        walk.current = url("http://h/v1/items?a=1");
        assert_eq!(
            walk.answer(json!({"next": "/v1/items?after=5"}), 3)
                .unwrap(),
            next("http://h/v1/items?after=5")
        );
        assert!(matches!(
            walk.answer(json!({"next": "http://evil.test/steal"}), 3),
            Err(PaginationError::OtherOrigin { .. })
        ));
        let mut walk = Walk::new("kind = \"next_url\"\nnext_header = \"Next-Page\"");
        assert_eq!(
            walk.answer_with(json!({}), 3, &[("next-page", "http://h/x?_token=2")])
                .unwrap(),
            next("http://h/x?_token=2")
        );
        assert_eq!(
            walk.answer(json!({}), 3).unwrap(),
            Step::End,
            "no header: the end"
        );
    }

    /// Pagination settings of every kind, with totals and cursors read from
    /// the body or from headers.
    fn random_settings(fuzz: &mut crate::fuzz::Fuzz) -> Pagination {
        let body_or_header = |fuzz: &mut crate::fuzz::Fuzz, path: &str, header: &str| {
            if fuzz.rng.bool() {
                Locator::Body(path.to_owned())
            } else {
                Locator::Header(header.to_owned())
            }
        };
        let sizes = [None, Some(1), Some(3), Some(100), Some(1_000_000)];
        let kind = match fuzz.rng.u8(0..6) {
            0 => PaginationKind::None,
            1 => PaginationKind::Page {
                page_param: "page".into(),
                size_param: "size".into(),
                size: sizes[fuzz.rng.usize(0..sizes.len())],
                start: [0, 1, 1_000_000_000][fuzz.rng.usize(0..3)],
                total_pages: fuzz
                    .rng
                    .bool()
                    .then(|| body_or_header(fuzz, "/meta/pages", "X-Total-Pages")),
            },
            2 => PaginationKind::Offset {
                offset_param: "offset".into(),
                limit_param: "limit".into(),
                limit: sizes[fuzz.rng.usize(0..sizes.len())],
            },
            3 => PaginationKind::Cursor {
                cursor_param: "cursor".into(),
                cursor_in: if fuzz.rng.bool() {
                    ValueIn::Query
                } else {
                    ValueIn::Body
                },
                cursor: body_or_header(fuzz, "/next", "X-Next"),
                has_more: fuzz
                    .rng
                    .bool()
                    .then(|| body_or_header(fuzz, "/has_more", "X-Has-More")),
                end_when_missing: fuzz.rng.bool(),
            },
            4 => PaginationKind::LinkHeader,
            _ => PaginationKind::NextUrl {
                next: body_or_header(fuzz, "/next", "X-Next"),
                end_when_missing: fuzz.rng.bool(),
            },
        };
        let totals = ["X-Total-Count", "Content-Range"];
        Pagination {
            kind,
            total: fuzz.rng.bool().then(|| {
                let header = fuzz.pick(&totals);
                body_or_header(fuzz, "/meta/count", header)
            }),
            total_method: Default::default(),
            end_on_status: Vec::new(),
        }
    }

    /// Header values an API may send, and some it should not.
    const HEADER_VALUES: [&str; 22] = [
        "",
        "0",
        "1",
        "-1",
        "7",
        "18446744073709551615",
        "18446744073709551616",
        " 12 ",
        "true",
        "FALSE",
        "items 0-99/1234",
        "items 0-9/*",
        "*/",
        "/",
        "0-0/0",
        "https://h/x?page=2",
        "https://elsewhere/x",
        "/x?cursor=%zz",
        "../../..//x",
        "<https://h/x?p=3>; rel=\"next\"",
        "<a>;rel=next,<b>;rel=\"next\"",
        "<https://h/x?p=2>; rel=\"last\", <",
    ];

    /// A Link header from pieces, valid or not.
    fn random_link(fuzz: &mut crate::fuzz::Fuzz) -> String {
        const PIECES: [&str; 16] = [
            "<",
            ">",
            ";",
            ",",
            " ",
            "\t",
            "rel",
            "=",
            "\"",
            "next",
            "last",
            "\\",
            "https://h/x?page=9",
            "/y",
            "é",
            "title",
        ];
        (0..fuzz.rng.usize(0..14))
            .map(|_| fuzz.pick(&PIECES))
            .collect()
    }

    /// Random settings walked over random responses (bodies, headers,
    /// record counts): no panic, and every next URL stays on the origin.
    #[test]
    fn fuzz_pagination_never_panics_and_stays_on_the_origin() {
        let mut fuzz = crate::fuzz::Fuzz::new(
            "fuzz_pagination_never_panics_and_stays_on_the_origin",
            19,
            3_000,
        );
        let header_names = [
            "X-Total-Count",
            "Content-Range",
            "X-Total-Pages",
            "X-Next",
            "X-Has-More",
            "Link",
        ];
        let (mut steps, mut nexts) = (0, 0);
        for _ in 0..fuzz.iterations {
            let base = url("http://h/x?q=1");
            let mut paginator = Paginator::new(random_settings(&mut fuzz), base.clone());
            let mut current = paginator.first();
            for _ in 0..fuzz.rng.usize(1..12) {
                let mut body = fuzz.json(0);
                if !body.is_object() || fuzz.rng.bool() {
                    body = json!({});
                }
                for path in ["/next", "/has_more"] {
                    if fuzz.rng.bool() {
                        body[&path[1..]] = match fuzz.rng.u8(0..4) {
                            0 => json!(fuzz.pick(&HEADER_VALUES)),
                            1 => json!(fuzz.rng.bool()),
                            _ => fuzz.json(2),
                        };
                    }
                }
                if fuzz.rng.bool() {
                    body["meta"] = json!({"count": fuzz.json(3), "pages": fuzz.json(3)});
                }
                let mut headers = HeaderMap::new();
                for name in header_names {
                    for _ in 0..fuzz.rng.usize(0..3) {
                        let value = match name {
                            "Link" if fuzz.rng.bool() => random_link(&mut fuzz),
                            _ => fuzz.pick(&HEADER_VALUES).to_owned(),
                        };
                        if let Ok(value) = HeaderValue::from_str(&value) {
                            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
                        }
                    }
                }
                let response = Response {
                    url: &current,
                    headers: &headers,
                    body: &body,
                    records: fuzz.rng.usize(0..6),
                };
                let _ = paginator.note_head(&headers);
                let _ = paginator.predicted_next();
                steps += 1;
                match paginator.next(&response) {
                    Ok(Step::Next(next) | Step::Confirm(next)) => {
                        nexts += 1;
                        assert_eq!(next.origin(), base.origin(), "{next}");
                        current = next;
                    }
                    Ok(Step::End) | Err(_) => break,
                }
            }
            let _ = (paginator.expected(), paginator.stated());
        }
        assert!(nexts * 4 >= steps, "{nexts} next pages in {steps} steps");
    }

    /// Any text as a Link header: no panic, and a target found is a part
    /// of the header; a next link among others is found.
    #[test]
    fn fuzz_link_headers() {
        let mut fuzz = crate::fuzz::Fuzz::new("fuzz_link_headers", 23, 20_000);
        for _ in 0..fuzz.iterations {
            let header = match fuzz.rng.u8(0..3) {
                0 => String::from_utf8_lossy(&fuzz.bytes(40)).into_owned(),
                1 => random_link(&mut fuzz),
                _ => {
                    let links: Vec<String> = (0..fuzz.rng.usize(0..4))
                        .map(|i| format!("</p{i}>; rel=\"last\"; title=\"a, b; c\""))
                        .collect();
                    let at = fuzz.rng.usize(0..=links.len());
                    let mut links = links;
                    links.insert(at, "</next?a=1,2>; REL=\"prev next\"".to_owned());
                    let joined = links.join(fuzz.pick(&[",", ", ", " ,\t", ",,"]));
                    assert_eq!(
                        find_rel_next(&joined),
                        Ok(Some("/next?a=1,2".to_owned())),
                        "{joined}"
                    );
                    let spoilt = fuzz.mutate(joined.as_bytes());
                    String::from_utf8_lossy(&spoilt).into_owned()
                }
            };
            if let Ok(Some(target)) = find_rel_next(&header) {
                assert!(header.contains(&target), "{target:?} from {header:?}");
            }
        }
    }
}
