//! `[jobs.pagination]`: how the next page is requested, where the API states
//! its total, and what ends the walk.
//!
//! The TOML table is flat (`kind = "page"`, `size = 100`, `total_path =
//! "/count"`), but which keys make sense depends on the kind. It is read into
//! [`RawPagination`] (every key, all optional) and turned into a
//! [`Pagination`] that only holds what its kind uses, refusing the keys of
//! other kinds by name, with the list of those its kind has.

use serde::Deserialize;

/// Where a pagination value is read: a JSON pointer into the response body
/// (`*_path` keys), or a response header (`*_header` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    Body(String),
    Header(String),
}

impl Locator {
    /// `total_path /count` or `total_header X-Total-Count`, for messages.
    pub fn describe(&self, value: &str) -> String {
        match self {
            Locator::Body(pointer) => format!("{value}_path `{pointer}`"),
            Locator::Header(name) => format!("{value}_header `{name}`"),
        }
    }
}

/// How the pages of a job are walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagination {
    pub kind: PaginationKind,
    /// Where the API states how many records the collection holds
    /// (`total_path`, `total_header`; a `Content-Range: items 0-99/1234` is
    /// read as 1234). The run compares the distinct keys it read with it.
    pub total: Option<Locator>,
    /// `"HEAD"`: the total is asked for once, with a HEAD request to the first
    /// URL, before the first page (Kinto sends `Total-Records` only there).
    pub total_method: TotalMethod,
    /// `page` and `offset`: these statuses, answered after at least one page,
    /// mean "past the end" (DRF answers 404). On the first page they stay errors.
    pub end_on_status: Vec<u16>,
}

impl Default for Pagination {
    fn default() -> Self {
        Pagination {
            kind: PaginationKind::None,
            total: None,
            total_method: TotalMethod::Get,
            end_on_status: Vec::new(),
        }
    }
}

/// Where a value apisync sends goes: the query of the URL, or the JSON
/// body of a POST (a search endpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueIn {
    #[default]
    Query,
    Body,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TotalMethod {
    #[default]
    Get,
    Head,
}

/// The pagination style and the knobs only it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaginationKind {
    /// One request, one page.
    None,
    /// `?page=1&per_page=100`, then 2, 3, …; stops on an empty page, or at
    /// the total (a page count, or pages derived from the record count and
    /// the page size), confirmed by one request past it.
    Page {
        page_param: String,
        size_param: String,
        /// Sent as `size_param` when set.
        size: Option<u64>,
        start: u64,
        /// Where the API states the page count.
        total_pages: Option<Locator>,
    },
    /// `?offset=0&limit=100`; the offset advances by the page size asked for
    /// (or by what came back, when the API caps it lower); stops on an empty
    /// page, or at the total, confirmed by one request past it.
    Offset {
        offset_param: String,
        limit_param: String,
        /// Sent as `limit_param` when set.
        limit: Option<u64>,
    },
    /// `?cursor=…` taken from the previous response, or the cursor put into
    /// the JSON body of a POST search (`cursor_in = "body"`, `cursor_param`
    /// then a field or pointer in the body).
    Cursor {
        cursor_param: String,
        cursor_in: ValueIn,
        cursor: Locator,
        has_more: Option<Locator>,
        /// A cursor member absent from a non-empty first page ends paging
        /// instead of failing the run.
        end_when_missing: bool,
    },
    /// Follows the RFC 8288 `Link: <…>; rel="next"` header.
    LinkHeader,
    /// Follows the URL (absolute or relative) in the body or a header.
    NextUrl {
        next: Locator,
        end_when_missing: bool,
    },
}

impl PaginationKind {
    /// Whether pages are addressed by position (page number or offset): then
    /// an API that serves the last page again for positions past the end is
    /// clamping, not looping.
    pub fn is_positional(&self) -> bool {
        matches!(
            self,
            PaginationKind::Page { .. } | PaginationKind::Offset { .. }
        )
    }
}

/// Every key of `[jobs.pagination]`, as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPagination {
    #[serde(default)]
    kind: RawKind,
    page_param: Option<String>,
    size_param: Option<String>,
    size: Option<u64>,
    start: Option<u64>,
    #[serde(alias = "total_pages")]
    total_pages_path: Option<String>,
    total_pages_header: Option<String>,
    offset_param: Option<String>,
    limit_param: Option<String>,
    limit: Option<u64>,
    #[serde(alias = "total")]
    total_path: Option<String>,
    total_header: Option<String>,
    total_method: Option<TotalMethod>,
    end_on_status: Option<Vec<u16>>,
    cursor_param: Option<String>,
    cursor_in: Option<ValueIn>,
    cursor_path: Option<String>,
    cursor_header: Option<String>,
    has_more_path: Option<String>,
    has_more_header: Option<String>,
    next_path: Option<String>,
    next_header: Option<String>,
    end_when_missing: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    #[default]
    None,
    Page,
    Offset,
    Cursor,
    LinkHeader,
    NextUrl,
}

impl RawKind {
    fn name(self) -> &'static str {
        match self {
            RawKind::None => "none",
            RawKind::Page => "page",
            RawKind::Offset => "offset",
            RawKind::Cursor => "cursor",
            RawKind::LinkHeader => "link_header",
            RawKind::NextUrl => "next_url",
        }
    }

    /// The keys this kind has, besides `kind` itself.
    fn keys(self) -> &'static [&'static str] {
        const TOTAL: [&str; 3] = ["total_path", "total_header", "total_method"];
        match self {
            RawKind::None | RawKind::LinkHeader => &TOTAL,
            RawKind::Page => &[
                "page_param",
                "size_param",
                "size",
                "start",
                "total_pages_path",
                "total_pages_header",
                "total_path",
                "total_header",
                "total_method",
                "end_on_status",
            ],
            RawKind::Offset => &[
                "offset_param",
                "limit_param",
                "limit",
                "total_path",
                "total_header",
                "total_method",
                "end_on_status",
            ],
            RawKind::Cursor => &[
                "cursor_param",
                "cursor_in",
                "cursor_path",
                "cursor_header",
                "has_more_path",
                "has_more_header",
                "end_when_missing",
                "total_path",
                "total_header",
                "total_method",
            ],
            RawKind::NextUrl => &[
                "next_path",
                "next_header",
                "end_when_missing",
                "total_path",
                "total_header",
                "total_method",
            ],
        }
    }
}

impl RawPagination {
    /// The keys that were set, by name.
    fn set_keys(&self) -> Vec<&'static str> {
        let present = [
            ("page_param", self.page_param.is_some()),
            ("size_param", self.size_param.is_some()),
            ("size", self.size.is_some()),
            ("start", self.start.is_some()),
            ("total_pages_path", self.total_pages_path.is_some()),
            ("total_pages_header", self.total_pages_header.is_some()),
            ("offset_param", self.offset_param.is_some()),
            ("limit_param", self.limit_param.is_some()),
            ("limit", self.limit.is_some()),
            ("total_path", self.total_path.is_some()),
            ("total_header", self.total_header.is_some()),
            ("total_method", self.total_method.is_some()),
            ("end_on_status", self.end_on_status.is_some()),
            ("cursor_param", self.cursor_param.is_some()),
            ("cursor_in", self.cursor_in.is_some()),
            ("cursor_path", self.cursor_path.is_some()),
            ("cursor_header", self.cursor_header.is_some()),
            ("has_more_path", self.has_more_path.is_some()),
            ("has_more_header", self.has_more_header.is_some()),
            ("next_path", self.next_path.is_some()),
            ("next_header", self.next_header.is_some()),
            ("end_when_missing", self.end_when_missing.is_some()),
        ];
        present
            .into_iter()
            .filter_map(|(key, set)| set.then_some(key))
            .collect()
    }
}

/// One of a `*_path` / `*_header` pair, refusing both at once.
fn locator(
    value: &str,
    path: Option<String>,
    header: Option<String>,
) -> Result<Option<Locator>, String> {
    match (path, header) {
        (Some(_), Some(_)) => Err(format!(
            "set {value}_path or {value}_header, not both: the {value} is read from one place"
        )),
        (Some(path), None) => Ok(Some(Locator::Body(path))),
        (None, Some(header)) => Ok(Some(Locator::Header(header))),
        (None, None) => Ok(None),
    }
}

impl TryFrom<RawPagination> for Pagination {
    type Error = String;

    fn try_from(raw: RawPagination) -> Result<Self, String> {
        let kind = raw.kind;
        let foreign: Vec<&str> = raw
            .set_keys()
            .into_iter()
            .filter(|key| !kind.keys().contains(key))
            .collect();
        if !foreign.is_empty() {
            let list: Vec<String> = foreign.iter().map(|k| format!("`{k}`")).collect();
            let verb = if foreign.len() == 1 { "is" } else { "are" };
            return Err(format!(
                "{} {verb} not a setting of kind = \"{}\" (its settings: {})",
                list.join(", "),
                kind.name(),
                kind.keys().join(", ")
            ));
        }
        let total = locator("total", raw.total_path, raw.total_header)?;
        let total_method = raw.total_method.unwrap_or_default();
        let kind = match kind {
            RawKind::None => PaginationKind::None,
            RawKind::LinkHeader => PaginationKind::LinkHeader,
            RawKind::Page => PaginationKind::Page {
                page_param: raw.page_param.unwrap_or_else(|| "page".to_owned()),
                size_param: raw.size_param.unwrap_or_else(|| "per_page".to_owned()),
                size: raw.size,
                start: raw.start.unwrap_or(1),
                total_pages: locator("total_pages", raw.total_pages_path, raw.total_pages_header)?,
            },
            RawKind::Offset => PaginationKind::Offset {
                offset_param: raw.offset_param.unwrap_or_else(|| "offset".to_owned()),
                limit_param: raw.limit_param.unwrap_or_else(|| "limit".to_owned()),
                limit: raw.limit,
            },
            RawKind::Cursor => PaginationKind::Cursor {
                cursor_param: raw.cursor_param.unwrap_or_else(|| "cursor".to_owned()),
                cursor_in: raw.cursor_in.unwrap_or_default(),
                cursor: locator("cursor", raw.cursor_path, raw.cursor_header)?
                    .unwrap_or_else(|| Locator::Body("/next_cursor".to_owned())),
                has_more: locator("has_more", raw.has_more_path, raw.has_more_header)?,
                end_when_missing: raw.end_when_missing.unwrap_or(false),
            },
            RawKind::NextUrl => PaginationKind::NextUrl {
                next: locator("next", raw.next_path, raw.next_header)?
                    .unwrap_or_else(|| Locator::Body("/next".to_owned())),
                end_when_missing: raw.end_when_missing.unwrap_or(false),
            },
        };
        Ok(Pagination {
            kind,
            total,
            total_method,
            end_on_status: raw.end_on_status.unwrap_or_default(),
        })
    }
}

impl<'de> Deserialize<'de> for Pagination {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawPagination::deserialize(deserializer)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pagination, String> {
        toml::from_str::<Pagination>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn each_kind_takes_its_own_keys_and_names_the_others() {
        let page = parse("kind = \"page\"\nsize = 10\ntotal_path = \"/count\"").unwrap();
        assert_eq!(page.total, Some(Locator::Body("/count".into())));
        assert!(matches!(
            page.kind,
            PaginationKind::Page {
                size: Some(10),
                start: 1,
                ..
            }
        ));

        let error = parse("kind = \"page\"\nlimit = 10").unwrap_err();
        assert!(
            error.contains("`limit` is not a setting of kind = \"page\""),
            "{error}"
        );
        assert!(
            error.contains("its settings: page_param, size_param"),
            "{error}"
        );

        let error = parse("kind = \"cursor\"\nlimit = 1\nsize = 2").unwrap_err();
        assert!(error.contains("`size`, `limit` are not"), "{error}");

        let error = parse("kind = \"offset\"\ntotal_path = \"/t\"\ntotal_header = \"X-Total\"")
            .unwrap_err();
        assert!(error.contains("not both"), "{error}");

        let error = parse("kind = \"page\"\nbogus = 1").unwrap_err();
        assert!(error.contains("unknown field `bogus`"), "{error}");
    }

    #[test]
    fn defaults_and_headers() {
        let cursor = parse("kind = \"cursor\"\nhas_more_header = \"X-More\"").unwrap();
        assert_eq!(
            cursor.kind,
            PaginationKind::Cursor {
                cursor_param: "cursor".into(),
                cursor_in: ValueIn::Query,
                cursor: Locator::Body("/next_cursor".into()),
                has_more: Some(Locator::Header("X-More".into())),
                end_when_missing: false,
            }
        );
        let next = parse("kind = \"next_url\"\nnext_header = \"Next-Page\"\ntotal_header = \"Total-Records\"\ntotal_method = \"HEAD\"").unwrap();
        assert_eq!(
            next.kind,
            PaginationKind::NextUrl {
                next: Locator::Header("Next-Page".into()),
                end_when_missing: false
            }
        );
        assert_eq!(next.total_method, TotalMethod::Head);
        assert_eq!(parse("").unwrap(), Pagination::default());
        let aliased = parse("kind = \"offset\"\ntotal = \"/t\"").unwrap();
        assert_eq!(aliased.total, Some(Locator::Body("/t".into())));
    }
}
