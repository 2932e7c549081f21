//! Where the next page is: one small pure function per pagination kind, given
//! what the last response said. No I/O here, so every rule is unit-tested.

use reqwest::Url;
use serde_json::Value;

use crate::config::Pagination;
use crate::record::kind_of;

/// What the paginator needs to know about one response.
pub struct Response<'a> {
    /// The URL that was requested (relative next links resolve against it).
    pub url: &'a Url,
    /// Every `Link` header of the response, joined with `,`.
    pub link: Option<&'a str>,
    pub body: &'a Value,
    /// How many records the page held.
    pub records: usize,
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
    #[error("{has_more} says there is more, but there is no cursor at {cursor_path}")]
    MoreWithoutCursor {
        has_more: String,
        cursor_path: String,
    },
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

/// Walks the pages of one run.
#[derive(Debug)]
pub struct Paginator {
    kind: Pagination,
    /// The configured URL with the configured query; page, offset and cursor
    /// parameters are set on a copy of it.
    base: Url,
    /// The page number or offset of the last request.
    position: u64,
    /// `page` pagination: the total page count the last response gave.
    total_pages: Option<u64>,
}

impl Paginator {
    pub fn new(kind: Pagination, base: Url) -> Self {
        let position = match &kind {
            Pagination::Page { start, .. } => *start,
            _ => 0,
        };
        Self {
            kind,
            base,
            position,
            total_pages: None,
        }
    }

    /// The URL of the first request.
    pub fn first(&self) -> Url {
        match &self.kind {
            Pagination::Page {
                page_param,
                size_param,
                size,
                start,
                ..
            } => {
                let mut params = vec![(page_param.as_str(), start.to_string())];
                if let Some(size) = size {
                    params.push((size_param.as_str(), size.to_string()));
                }
                with_params(&self.base, &params)
            }
            Pagination::Offset {
                offset_param,
                limit_param,
                limit,
                ..
            } => {
                let mut params = vec![(offset_param.as_str(), "0".to_owned())];
                if let Some(limit) = limit {
                    params.push((limit_param.as_str(), limit.to_string()));
                }
                with_params(&self.base, &params)
            }
            Pagination::None {}
            | Pagination::Cursor { .. }
            | Pagination::LinkHeader {}
            | Pagination::NextUrl { .. } => self.base.clone(),
        }
    }

    /// The URL of the page after `response`, or `None` when it was the last.
    pub fn next(&mut self, response: &Response) -> Result<Option<Url>, PaginationError> {
        let next = match &self.kind {
            Pagination::None {} => None,
            Pagination::Page {
                page_param,
                size_param,
                size,
                start,
                total_pages_path,
            } => {
                let total = total_pages_path
                    .as_deref()
                    .map(|path| number_at(response.body, path, "total_pages_path"))
                    .transpose()?
                    .flatten();
                self.total_pages = total;
                let fetched_pages = self.position - start + 1;
                match next_page(self.position, fetched_pages, response.records, total) {
                    None => None,
                    Some(page) => {
                        self.position = page;
                        let mut params = vec![(page_param.as_str(), page.to_string())];
                        if let Some(size) = size {
                            params.push((size_param.as_str(), size.to_string()));
                        }
                        Some(with_params(&self.base, &params))
                    }
                }
            }
            Pagination::Offset {
                offset_param,
                limit_param,
                limit,
                total_path,
            } => {
                let total = total_path
                    .as_deref()
                    .map(|path| number_at(response.body, path, "total_path"))
                    .transpose()?
                    .flatten();
                match next_offset(self.position, response.records, *limit, total) {
                    None => None,
                    Some(offset) => {
                        self.position = offset;
                        let mut params = vec![(offset_param.as_str(), offset.to_string())];
                        if let Some(limit) = limit {
                            params.push((limit_param.as_str(), limit.to_string()));
                        }
                        Some(with_params(&self.base, &params))
                    }
                }
            }
            Pagination::Cursor {
                cursor_param,
                cursor_path,
                has_more_path,
            } => next_cursor(response.body, cursor_path, has_more_path.as_deref())?
                .map(|cursor| with_params(&self.base, &[(cursor_param.as_str(), cursor)])),
            Pagination::LinkHeader {} => match response.link {
                None => None,
                Some(header) => find_rel_next(header)
                    .map_err(PaginationError::LinkHeader)?
                    .map(|link| self.resolve(response.url, &link))
                    .transpose()?,
            },
            Pagination::NextUrl { next_path } => match response.body.pointer(next_path) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(self.resolve(response.url, s)?),
                Some(other) => {
                    return Err(PaginationError::BadValue {
                        what: format!("next_path {next_path}"),
                        found: kind_of(other),
                        expected: "a URL string or null",
                    });
                }
            },
        };
        Ok(next)
    }

    /// The URL [`Paginator::next`] will give after the page last requested,
    /// when that is already certain: `page` pagination with a known total
    /// not yet reached (only an empty page, or a total that changes, would
    /// end it sooner). `None` for every other kind: their next URL depends on
    /// the response.
    pub fn predicted_next(&self) -> Option<Url> {
        let Pagination::Page {
            page_param,
            size_param,
            size,
            start,
            ..
        } = &self.kind
        else {
            return None;
        };
        let fetched_pages = self.position - start + 1;
        if fetched_pages >= self.total_pages? {
            return None;
        }
        let mut params = vec![(page_param.as_str(), (self.position + 1).to_string())];
        if let Some(size) = size {
            params.push((size_param.as_str(), size.to_string()));
        }
        Some(with_params(&self.base, &params))
    }

    /// The pointer that ended the pagination by finding nothing at all in
    /// `body`, for `cursor` and `next_url`. Some APIs drop the field on the
    /// last page, so it is not an error; but on the first page it more often
    /// means a wrong pointer, which callers should warn about.
    pub fn pointer_missing<'a>(&'a self, body: &Value) -> Option<&'a str> {
        let path = match &self.kind {
            Pagination::Cursor { cursor_path, .. } => cursor_path,
            Pagination::NextUrl { next_path } => next_path,
            _ => return None,
        };
        body.pointer(path).is_none().then_some(path.as_str())
    }

    /// Resolves a next link given by the API and refuses other hosts: the
    /// job's headers often carry credentials.
    fn resolve(&self, current: &Url, link: &str) -> Result<Url, PaginationError> {
        let url = current
            .join(link)
            .map_err(|_| PaginationError::BadUrl(strip_query(link)))?;
        if url.origin() != self.base.origin() {
            return Err(PaginationError::OtherOrigin {
                found: url.origin().ascii_serialization(),
                expected: self.base.origin().ascii_serialization(),
            });
        }
        Ok(url)
    }
}

/// `page` pagination: the next page number, unless the page was empty or the
/// total page count is reached.
fn next_page(
    page: u64,
    fetched_pages: u64,
    records: usize,
    total_pages: Option<u64>,
) -> Option<u64> {
    if records == 0 || total_pages.is_some_and(|total| fetched_pages >= total) {
        None
    } else {
        Some(page + 1)
    }
}

/// `offset` pagination: the offset advances by what was received (not by
/// `limit`, in case the API caps the page size lower). It stops on an empty
/// page or at the total; without a total, also on a page shorter than `limit`.
/// With a total, a short page does not stop it: the API may cap the page size
/// below `limit`, and stopping there would silently lose the rest.
fn next_offset(offset: u64, records: usize, limit: Option<u64>, total: Option<u64>) -> Option<u64> {
    let records = records as u64;
    let next = offset + records;
    let done = match total {
        Some(total) => next >= total,
        None => limit.is_some_and(|limit| records < limit),
    };
    if records == 0 || done {
        None
    } else {
        Some(next)
    }
}

/// `cursor` pagination: the cursor for the next request, if any.
fn next_cursor(
    body: &Value,
    cursor_path: &str,
    has_more_path: Option<&str>,
) -> Result<Option<String>, PaginationError> {
    // A flag the API always sends: finding nothing is a wrong pointer, not
    // the end (treating it as the end would silently stop after page 1).
    let has_more = match has_more_path {
        None => None,
        Some(path) => match body.pointer(path) {
            Some(Value::Bool(b)) => Some(*b),
            other => {
                return Err(PaginationError::BadValue {
                    what: format!("has_more_path {path}"),
                    found: other.map_or("nothing", kind_of),
                    expected: "a boolean",
                });
            }
        },
    };
    if has_more == Some(false) {
        return Ok(None);
    }
    let cursor = match body.pointer(cursor_path) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(PaginationError::BadValue {
                what: format!("cursor_path {cursor_path}"),
                found: kind_of(other),
                expected: "a string, a number or null",
            });
        }
    };
    if cursor.is_none() && has_more == Some(true) {
        return Err(PaginationError::MoreWithoutCursor {
            has_more: format!("has_more_path {}", has_more_path.unwrap_or_default()),
            cursor_path: cursor_path.to_owned(),
        });
    }
    Ok(cursor)
}

/// A whole number at `path` (numbers as strings accepted), `None` when absent or null.
fn number_at(body: &Value, path: &str, knob: &str) -> Result<Option<u64>, PaginationError> {
    let bad = |found| PaginationError::BadValue {
        what: format!("{knob} {path}"),
        found,
        expected: "a whole number",
    };
    match body.pointer(path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad("a number")),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad("a string")),
        Some(other) => Err(bad(kind_of(other))),
    }
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

/// A URL for messages: no query string, which may carry credentials.
pub fn strip_query(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_owned()
}

/// The target of the `rel="next"` link in an RFC 8288 `Link` header, as
/// GitHub sends it: `<https://api…?page=2>; rel="next", <…>; rel="last"`.
///
/// # Errors
/// A description of the first thing that is not a link-value, so that a
/// garbled header ends the run instead of silently ending the pagination.
pub fn find_rel_next(header: &str) -> Result<Option<String>, String> {
    let mut rest = header.trim_start_matches([' ', '\t', ',']);
    while !rest.is_empty() {
        let Some(after_lt) = rest.strip_prefix('<') else {
            return Err(format!("expected `<` at `{}`", excerpt(rest)));
        };
        let end = after_lt
            .find('>')
            .ok_or_else(|| format!("no closing `>` in `{}`", excerpt(rest)))?;
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
                return Err(format!("a parameter without a name at `{}`", excerpt(rest)));
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
                    let close = closed.ok_or_else(|| {
                        format!("an unterminated quoted value in `{}`", excerpt(rest))
                    })?;
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
                return Err(format!("expected `,` or `;` at `{}`", excerpt(rest)));
            };
            rest = after_comma.trim_start_matches([' ', '\t', ',']);
        }
    }
    Ok(None)
}

fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
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
    fn page_numbers_stop_on_empty_page_or_total() {
        assert_eq!(next_page(1, 1, 10, None), Some(2));
        assert_eq!(next_page(4, 4, 0, None), None);
        assert_eq!(next_page(3, 3, 10, Some(3)), None);
        assert_eq!(next_page(0, 1, 10, Some(2)), Some(1), "start = 0");
    }

    #[test]
    fn offsets_advance_by_records_received() {
        assert_eq!(next_offset(0, 100, Some(100), None), Some(100));
        assert_eq!(next_offset(100, 40, Some(100), None), None, "short page");
        assert_eq!(next_offset(100, 0, None, None), None, "empty page");
        assert_eq!(next_offset(0, 50, None, None), Some(50), "no limit");
        assert_eq!(next_offset(200, 100, Some(100), Some(300)), None, "total");
        assert_eq!(
            next_offset(0, 50, Some(100), Some(300)),
            Some(50),
            "a short page is not the end while the total says more"
        );
    }

    #[test]
    fn cursors_stop_when_missing_or_has_more_is_false() {
        let cases = [
            (
                json!({"next_cursor": "abc"}),
                None,
                Ok(Some("abc".to_owned())),
            ),
            (json!({"next_cursor": 17}), None, Ok(Some("17".to_owned()))),
            (json!({"next_cursor": null}), None, Ok(None)),
            (json!({"next_cursor": ""}), None, Ok(None)),
            (json!({}), None, Ok(None)),
            (
                json!({"next_cursor": "x", "more": false}),
                Some("/more"),
                Ok(None),
            ),
            (
                json!({"next_cursor": "x", "more": true}),
                Some("/more"),
                Ok(Some("x".to_owned())),
            ),
        ];
        for (body, has_more, expected) in cases {
            assert_eq!(
                next_cursor(&body, "/next_cursor", has_more),
                expected,
                "body {body}"
            );
        }
        assert!(next_cursor(&json!({"more": true}), "/next_cursor", Some("/more")).is_err());
        assert!(
            next_cursor(&json!({"next_cursor": "x"}), "/next_cursor", Some("/more")).is_err(),
            "a has_more pointer that finds nothing is an error, not the end"
        );
        assert!(
            next_cursor(
                &json!({"next_cursor": "x", "more": null}),
                "/next_cursor",
                Some("/more")
            )
            .is_err()
        );
        assert!(next_cursor(&json!({"next_cursor": [1]}), "/next_cursor", None).is_err());
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
    fn page_kind_walks_from_start() {
        let kind = Pagination::Page {
            page_param: "p".into(),
            size_param: "n".into(),
            size: Some(10),
            start: 1,
            total_pages_path: Some("/pages".into()),
        };
        let mut paginator = Paginator::new(kind, url("http://h/x"));
        let first = paginator.first();
        assert_eq!(first.as_str(), "http://h/x?p=1&n=10");
        let body = json!({"pages": 2});
        let response = Response {
            url: &first,
            link: None,
            body: &body,
            records: 10,
        };
        let second = paginator.next(&response).unwrap().unwrap();
        assert_eq!(second.as_str(), "http://h/x?p=2&n=10");
        let response = Response {
            url: &second,
            link: None,
            body: &body,
            records: 10,
        };
        assert_eq!(paginator.next(&response).unwrap(), None);
    }

    #[test]
    fn next_urls_resolve_relative_and_refuse_other_hosts() {
        let kind = Pagination::NextUrl {
            next_path: "/next".into(),
        };
        let mut paginator = Paginator::new(kind, url("http://h:8080/v1/items?a=1"));
        let current = paginator.first();
        let body = json!({"next": "/v1/items?after=5"});
        let response = Response {
            url: &current,
            link: None,
            body: &body,
            records: 3,
        };
        assert_eq!(
            paginator.next(&response).unwrap().unwrap().as_str(),
            "http://h:8080/v1/items?after=5"
        );
        let body = json!({"next": "http://evil.test/steal"});
        let response = Response {
            url: &current,
            link: None,
            body: &body,
            records: 3,
        };
        assert!(matches!(
            paginator.next(&response),
            Err(PaginationError::OtherOrigin { .. })
        ));
    }
}
