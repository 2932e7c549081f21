//! The pages of one run, fetched one after another: request (with retries),
//! find the records array, work out the next request, guard against APIs that
//! never stop.
//!
//! **Boundary:** this module never touches the database.

pub mod body;
pub mod http;
pub mod paginate;
pub mod throttle;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::Url;
use xxhash_rust::xxh3::xxh3_128;

use crate::config::{
    JobSettings, Pagination, PaginationKind, RateLimitScope, RetrySettings, TotalMethod, ValueIn,
};
use crate::redact::Redactor;
pub use body::{RawRecords, ResponseBody};
pub use http::{ApiClient, FetchError, RequestSpec};
pub use paginate::Stated;
use paginate::{PaginationError, Paginator, Step};
pub use throttle::HostThrottles;
use throttle::Throttle;

/// Everything about a job's API that does not change between runs.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// For metric labels.
    job: String,
    request: RequestSpec,
    /// The configured URL with the configured query parameters.
    base_url: Url,
    pagination: Pagination,
    records_pointer: String,
    /// The same, as segments.
    records: Arc<[String]>,
    max_pages: u64,
    retry: RetrySettings,
    throttle: Throttle,
}

impl SourceSpec {
    /// # Errors
    /// When the URL or a header is invalid; `apisync check` reports these first.
    /// `hosts` holds the throttles shared with the jobs built with it.
    pub fn new(job: &JobSettings, hosts: &HostThrottles) -> Result<Self, String> {
        let mut base_url = Url::parse(&job.request.url)
            .map_err(|e| format!("request.url is not a valid URL: {e}"))?;
        if !job.request.query.is_empty() {
            base_url
                .query_pairs_mut()
                .extend_pairs(job.request.query.iter().map(|(k, v)| (k, &v.0)));
        }
        let throttle = match (job.rate_limit, job.rate_limit_scope) {
            (Some(limit), RateLimitScope::Host) => {
                hosts.get(&base_url.origin().ascii_serialization(), limit)
            }
            (limit, _) => Throttle::new(limit),
        };
        Ok(Self {
            request: RequestSpec::new(
                &job.name,
                &job.request,
                job.auth.as_ref(),
                job.max_body_bytes,
            )?,
            job: job.name.clone(),
            base_url,
            pagination: job.pagination.clone(),
            records_pointer: job.records.clone(),
            records: crate::json_pointer::segments(&job.records).into(),
            max_pages: job.max_pages,
            retry: job.retry.clone(),
            throttle,
        })
    }

    /// Starts walking the pages from the first; `redactor` cleans the errors
    /// logged on retries; `since` (the incremental sync's) goes into the
    /// query or the body of every request.
    pub fn pages(&self, client: &ApiClient, redactor: &Redactor, since: Option<&Since>) -> Pages {
        let mut base = self.base_url.clone();
        let mut body = self.request.body().cloned();
        match since {
            Some(since) if since.placement == ValueIn::Body => {
                let body = body.get_or_insert_with(|| serde_json::json!({}));
                crate::json_pointer::set(
                    body,
                    &crate::json_pointer::of_field(&since.param),
                    since.json(),
                );
            }
            Some(since) => {
                base = paginate::with_params(&base, &[(since.param.as_str(), since.value.clone())]);
            }
            None => {}
        }
        let paginator =
            Paginator::new(self.pagination.clone(), base).with_redactor(redactor.clone());
        Pages {
            next: Some(Request {
                url: paginator.first(),
                confirms_end: false,
                body_cursor: None,
            }),
            body: body.map(Arc::new),
            previous_records: None,
            total_was_low: false,
            fetcher: Arc::new(Fetcher {
                spec: self.clone(),
                client: client.clone(),
                redactor: redactor.clone(),
            }),
            paginator,
            visited: HashMap::new(),
            fetched: 0,
            prefetch: None,
            quota_announced: false,
        }
    }
}

/// The incremental sync's value on a run's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// A query parameter, or a field or JSON pointer in the body.
    pub param: String,
    /// The time, written into the configured template.
    pub value: String,
    pub placement: ValueIn,
    /// A number (an epoch watermark, no template around it): in a JSON body
    /// it goes as a number, since an API that compares by type would match
    /// nothing against a string.
    pub is_number: bool,
}

impl Since {
    /// The value as a JSON body carries it.
    fn json(&self) -> serde_json::Value {
        self.is_number
            .then(|| serde_json::from_str::<serde_json::Number>(&self.value).ok())
            .flatten()
            .map_or_else(
                || serde_json::Value::String(self.value.clone()),
                serde_json::Value::Number,
            )
    }
}

/// One response's records.
#[derive(Debug)]
pub struct Page {
    /// 1 for the first page of the run.
    pub number: u64,
    pub records: RawRecords,
    /// No page follows: the run has read everything once this one is written.
    pub is_last: bool,
    /// What it means should this page hold exactly the records of the page
    /// before.
    pub if_repeated: IfRepeated,
}

/// A page that holds exactly the records of the page before is, by where
/// it comes in the walk:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfRepeated {
    /// An API that ignores the page parameter, or loops: the run fails.
    /// For cursors and next links, and a full first page served again.
    Fails,
    /// An API clamping positions past its end to its last page
    /// (json-server 1.x): the end. For `page` and `offset` pagination after
    /// a page shorter than the size asked for, and on a request that
    /// confirms a stated end.
    Ends,
    /// A full page served again from page 3 on: clamping if the next page
    /// repeats it too, else a stale or unstable API that hid a page (the
    /// run fails).
    EndsIfRepeatedAgain,
}

/// Why the run could not get its next page.
#[derive(Debug, thiserror::Error)]
#[error("page {page} ({url})")]
pub struct SourceError {
    pub page: u64,
    /// Without userinfo and query values, which may hold credentials
    /// (`redact::display_url`).
    pub url: String,
    #[source]
    pub kind: SourceErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceErrorKind {
    #[error("fetching failed after {attempts} attempt(s){gave_up}")]
    Fetch {
        attempts: u32,
        /// Why retrying stopped early, as ` (reason)`, or empty.
        gave_up: String,
        #[source]
        source: FetchError,
    },
    #[error(
        "records pointer `{pointer}` found {found}, expected an array of records; the \
         response has {present}"
    )]
    Records {
        pointer: String,
        found: &'static str,
        present: String,
    },
    #[error("pagination failed")]
    Pagination(#[source] PaginationError),
    #[error("the HEAD request for the total (total_method = \"HEAD\") failed")]
    Head(#[source] Box<SourceErrorKind>),
    #[error(
        "the API sent the address of page {first_seen} again (a repeating cursor or next \
         link); stopping instead of looping"
    )]
    Loop { first_seen: u64 },
    #[error(
        "the API has more than max_pages = {max_pages} pages; stopping (raise max_pages if \
         the data set really is that large)"
    )]
    TooManyPages { max_pages: u64 },
}

/// The pages of one run; call [`Pages::next_page`] until it returns `None`.
pub struct Pages {
    fetcher: Arc<Fetcher>,
    paginator: Paginator,
    /// The next request, `None` after the last page.
    next: Option<Request>,
    /// The previous page's record count.
    previous_records: Option<usize>,
    /// The API served records past its stated total (logged once).
    total_was_low: bool,
    /// Fingerprints of every URL requested in this run, with its page number,
    /// to stop a cursor or next link that comes back around.
    visited: HashMap<u128, u64>,
    fetched: u64,
    /// The request for the page after the current one, sent before the
    /// current response is read when its URL is already certain (see
    /// [`Pages::may_prefetch`]).
    prefetch: Option<Prefetch>,
    /// A response told how much of a quota is left.
    quota_announced: bool,
    /// The JSON body of every request (POST), `since` in it when it goes
    /// there; a body cursor is put into a copy.
    body: Option<Arc<serde_json::Value>>,
}

/// The next request of a run.
struct Request {
    url: Url,
    /// It asks past a stated end, to confirm it (see [`paginate::Step`]).
    confirms_end: bool,
    /// `cursor_in = "body"`: the cursor its body carries.
    body_cursor: Option<serde_json::Value>,
}

impl Request {
    /// What tells two requests apart: the URL, and a body cursor.
    fn fingerprint(&self) -> u128 {
        match &self.body_cursor {
            None => xxh3_128(self.url.as_str().as_bytes()),
            Some(cursor) => xxh3_128(format!("{} {cursor}", self.url).as_bytes()),
        }
    }
}

/// A page's response, its body split into records and envelope.
#[derive(Debug)]
struct PageResponse {
    /// What pagination may read: `Link`, totals, cursors in headers.
    headers: reqwest::header::HeaderMap,
    body: ResponseBody,
    /// The API says its quota is spent and resets after this long.
    quota_reset: Option<Duration>,
    /// The API tells how much of a quota is left.
    announces_quota: bool,
}

/// What a request needs, owned, so that a prefetch can run as a task.
struct Fetcher {
    spec: SourceSpec,
    client: ApiClient,
    redactor: Redactor,
}

/// A request sent ahead, aborted if dropped unused.
struct Prefetch {
    url: Url,
    task: tokio::task::JoinHandle<Result<PageResponse, SourceErrorKind>>,
}

impl Prefetch {
    /// Only for `page` pagination: its requests differ by URL alone.
    fn start(fetcher: &Arc<Fetcher>, url: Url, body: Option<Arc<serde_json::Value>>) -> Self {
        let task = tokio::spawn({
            let (fetcher, url) = (Arc::clone(fetcher), url.clone());
            async move { fetcher.fetch_page(&url, body.as_deref()).await }
        });
        Self { url, task }
    }

    async fn response(mut self) -> Result<PageResponse, SourceErrorKind> {
        match (&mut self.task).await {
            Ok(result) => result,
            // Never aborted while awaited: only a panic gets here.
            Err(join) => {
                std::panic::resume_unwind(join.try_into_panic().unwrap_or_else(|e| Box::new(e)))
            }
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pages {
    /// The next page, or `None` after the last.
    ///
    /// # Errors
    /// A [`SourceError`] naming the page and what went wrong; the run ends.
    pub async fn next_page(&mut self) -> Result<Option<Page>, SourceError> {
        let Some(request) = self.next.take() else {
            return Ok(None);
        };
        let fingerprint = request.fingerprint();
        let Request {
            url,
            confirms_end,
            body_cursor,
        } = request;
        let number = self.fetched + 1;
        let error = |kind| SourceError {
            page: number,
            url: crate::redact::display_url(url.as_str()),
            kind,
        };
        let spec = &self.fetcher.spec;
        if number > spec.max_pages {
            return Err(error(SourceErrorKind::TooManyPages {
                max_pages: spec.max_pages,
            }));
        }
        if let Some(first_seen) = self.visited.insert(fingerprint, number) {
            return Err(error(SourceErrorKind::Loop { first_seen }));
        }
        if number == 1 && spec.pagination.total_method == TotalMethod::Head {
            let headers = self
                .fetcher
                .with_retries(|| {
                    http::fetch_head(
                        &self.fetcher.client,
                        &spec.request,
                        &url,
                        &self.fetcher.redactor,
                    )
                })
                .await
                .map_err(|kind| error(SourceErrorKind::Head(Box::new(kind))))?;
            self.paginator
                .note_head(&headers)
                .map_err(|e| error(SourceErrorKind::Pagination(e)))?;
        }

        // One request ahead at most: the page after this one is asked for
        // while this one is read, when its URL is certain. It is started once
        // this page's request is under way (sent ahead itself, or answered);
        // the two may still reach the API in either order.
        let ahead = self.prefetch.take().filter(|prefetch| prefetch.url == url);
        let response = match ahead {
            Some(prefetch) => {
                self.start_prefetch(number);
                prefetch.response().await
            }
            None => {
                let body = self.body_with(body_cursor.as_ref());
                let response = self.fetcher.fetch_page(&url, body.as_deref()).await;
                if response.is_ok() {
                    self.start_prefetch(number);
                }
                response
            }
        };
        let response = match response {
            Ok(response) => response,
            Err(kind) => {
                // The run ends here: the request sent ahead is called off.
                self.prefetch = None;
                if number > 1 && self.is_past_the_end(&kind, confirms_end) {
                    self.fetched = number;
                    return Ok(Some(Page {
                        number,
                        records: RawRecords::default(),
                        is_last: true,
                        if_repeated: IfRepeated::Fails,
                    }));
                }
                return Err(error(kind));
            }
        };
        self.fetched = number;
        self.quota_announced |= response.announces_quota;
        let spec = &self.fetcher.spec;

        let body = response.body.envelope;
        let records = match response.body.records {
            Ok(records) => records,
            Err(found) => {
                return Err(error(SourceErrorKind::Records {
                    pointer: spec.records_pointer.clone(),
                    found,
                    present: paginate::top_level_keys(&body),
                }));
            }
        };
        if confirms_end && !records.is_empty() && !self.total_was_low {
            self.total_was_low = true;
            tracing::warn!(
                stated = self.paginator.expected(),
                page = number,
                "The API serves records past the total it states; reading on until a page \
                 comes back empty."
            );
        }
        let view = paginate::Response {
            url: &url,
            headers: &response.headers,
            body: &body,
            records: records.len(),
        };
        let step = self
            .paginator
            .next(&view)
            .map_err(|e| error(SourceErrorKind::Pagination(e)))?;
        let next_cursor = self.paginator.body_cursor().cloned();
        self.next = match step {
            // An empty page that points at itself is the end of a feed
            // (CouchDB's `_changes` answers past its end with no records and
            // the same `last_seq`): nothing is skipped by stopping, and
            // asking again would only trip the loop guard. Unless `has_more`
            // says there is more: then the loop guard fails the run.
            Step::Next(next)
                if records.is_empty()
                    && next == url
                    && next_cursor == body_cursor
                    && !self.paginator.said_more() =>
            {
                None
            }
            Step::Next(url) => Some(Request {
                url,
                confirms_end: false,
                body_cursor: next_cursor,
            }),
            Step::Confirm(url) => Some(Request {
                url,
                confirms_end: true,
                body_cursor: next_cursor,
            }),
            Step::End => None,
        };
        let shorter_than_asked = |count: usize| {
            self.paginator
                .size_asked()
                .is_some_and(|size| (count as u64) < size)
        };
        let if_repeated = if !spec.pagination.kind.is_positional() {
            IfRepeated::Fails
        } else if confirms_end || self.previous_records.is_some_and(shorter_than_asked) {
            IfRepeated::Ends
        } else if number >= 3 {
            IfRepeated::EndsIfRepeatedAgain
        } else {
            IfRepeated::Fails
        };
        self.previous_records = Some(records.len());

        Ok(Some(Page {
            number,
            records,
            is_last: self.next.is_none(),
            if_repeated,
        }))
    }

    /// What the API stated about the collection so far.
    pub fn stated(&self) -> paginate::Stated {
        self.paginator.stated()
    }

    /// Whether a failed request after the first page means "past the end":
    /// a status of `end_on_status`, or a client error answering a request
    /// that confirms a stated end (unless the API already served records
    /// past that total: then only an empty page ends the walk).
    fn is_past_the_end(&self, kind: &SourceErrorKind, confirms_end: bool) -> bool {
        let SourceErrorKind::Fetch {
            source: source @ FetchError::Status { status, .. },
            ..
        } = kind
        else {
            return false;
        };
        // Refused credentials are never "the end": a run that stopped there
        // would report success with what it read so far.
        if source.is_auth() {
            return false;
        }
        let pagination = &self.fetcher.spec.pagination;
        let listed =
            pagination.kind.is_positional() && pagination.end_on_status.contains(&status.as_u16());
        let confirmed = confirms_end
            && !self.total_was_low
            && status.is_client_error()
            && !source.is_retriable();
        if listed || confirmed {
            tracing::info!(
                status = status.as_u16(),
                "The API answered past the last page; pagination ends here."
            );
        }
        listed || confirmed
    }

    /// Sends the request for the page after page `number` ahead, when the
    /// paginator already knows its URL and nothing asks to go one request
    /// at a time: a `rate_limit`, or an API that announces quotas (a spent
    /// one must be seen before the next request goes out).
    fn start_prefetch(&mut self, number: u64) {
        let spec = &self.fetcher.spec;
        if spec.throttle.is_limited() || self.quota_announced || number >= spec.max_pages {
            return;
        }
        if let Some(url) = self.paginator.predicted_next() {
            self.prefetch = Some(Prefetch::start(&self.fetcher, url, self.body.clone()));
        }
    }

    /// The body of a request: the run's, with `cursor` put in it
    /// (`cursor_in = "body"`).
    fn body_with(&self, cursor: Option<&serde_json::Value>) -> Option<Arc<serde_json::Value>> {
        let (Some(cursor), PaginationKind::Cursor { cursor_param, .. }) =
            (cursor, &self.fetcher.spec.pagination.kind)
        else {
            return self.body.clone();
        };
        let mut body = self
            .body
            .as_deref()
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        crate::json_pointer::set(
            &mut body,
            &crate::json_pointer::of_field(cursor_param),
            cursor.clone(),
        );
        Some(Arc::new(body))
    }
}

impl Fetcher {
    /// One page's request, retried while the failure is transient; a spent
    /// quota the response announces pauses the job's later requests.
    /// A body that is not JSON is retried too: a response cut short says so.
    async fn fetch_page(
        &self,
        url: &Url,
        body: Option<&serde_json::Value>,
    ) -> Result<PageResponse, SourceErrorKind> {
        let response = self
            .with_retries(|| async {
                let response =
                    http::fetch_body(&self.client, &self.spec.request, url, body, &self.redactor)
                        .await?;
                let body =
                    ResponseBody::parse_off_the_runtime(response.body, self.spec.records.clone())
                        .await
                        .map_err(|(source, body)| FetchError::Decode {
                            source,
                            excerpt: http::excerpt(&body, &self.redactor),
                        })?;
                Ok(PageResponse {
                    headers: response.headers,
                    body,
                    quota_reset: response.quota_reset,
                    announces_quota: response.announces_quota,
                })
            })
            .await?;
        if let Some(reset) = response.quota_reset {
            tracing::info!(
                wait_ms = reset.as_millis() as u64,
                "The API's quota is spent; pausing until it resets."
            );
            self.spec
                .throttle
                .pause_for(reset.min(self.spec.retry.max_retry_after));
        }
        Ok(response)
    }

    /// Runs `attempt` (one request), paced by the job's throttle, until it
    /// succeeds, fails for good, or the retry policy gives up.
    ///
    /// Policy: at most `retry.max_attempts` attempts. Before attempt n+1 wait
    /// a random time between zero and `initial_backoff × 2^(n-1)`, capped at
    /// `max_backoff` ("full jitter", so many clients do not retry in step).
    /// A server's `Retry-After` replaces that wait when it is at most
    /// `max_retry_after`; a longer one ends the retries, since retrying early
    /// would only be refused again. Retries also end when the waits would
    /// add up to more than `max_elapsed`.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, SourceErrorKind>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let retry = &self.spec.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(retry.initial_backoff)
            .with_max_delay(retry.max_backoff)
            .with_factor(2.0)
            .with_max_times(retry.max_attempts.saturating_sub(1) as usize);
        let mut attempts = 0;
        let mut waited = Duration::ZERO;
        let mut gave_up = None;
        let result = (|| {
            attempts += 1;
            let request = attempt();
            async {
                self.spec.throttle.ready().await;
                request.await
            }
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(FetchError::is_retriable)
        .adjust(|error, delay| {
            let wait = match retry_delay(error, delay?, retry) {
                Ok(wait) => wait,
                Err(reason) => {
                    gave_up = Some(reason);
                    return None;
                }
            };
            if waited.saturating_add(wait) > retry.max_elapsed {
                gave_up = Some(format!(
                    "the retry budget retry.max_elapsed = {} is spent",
                    humantime::format_duration(retry.max_elapsed)
                ));
                return None;
            }
            waited += wait;
            Some(wait)
        })
        .notify(|error, delay| {
            crate::metrics::http_retry(&self.spec.job, &error.kind());
            tracing::warn!(
                reason = %error.kind(),
                delay_ms = delay.as_millis() as u64,
                error = %self.redactor.redact(&crate::error_chain(error)),
                "Retrying a failed request."
            );
        })
        .await;
        match result {
            Ok(response) => Ok(response),
            Err(source) => Err(SourceErrorKind::Fetch {
                attempts,
                gave_up: gave_up
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default(),
                source,
            }),
        }
    }
}

/// The wait before the next attempt: the server's `Retry-After` if it sent
/// one (refused when over `max_retry_after`), else a random share of the
/// exponential delay, capped at `max_backoff`.
fn retry_delay(
    error: &FetchError,
    exponential: Duration,
    retry: &RetrySettings,
) -> Result<Duration, String> {
    match error.retry_after() {
        Some(wait) if wait > retry.max_retry_after => Err(format!(
            "the API asked to wait {}, more than retry.max_retry_after = {}",
            humantime::format_duration(wait),
            humantime::format_duration(retry.max_retry_after)
        )),
        Some(wait) => Ok(wait),
        None => Ok(exponential.mul_f64(fastrand::f64()).min(retry.max_backoff)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_up_to_its_ceiling() {
        let retry = RetrySettings {
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(10),
            ..RetrySettings::default()
        };
        let asked = |seconds| FetchError::Status {
            status: reqwest::StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(Duration::from_secs(seconds)),
            excerpt: String::new(),
        };
        let exponential = Duration::from_millis(200);
        assert_eq!(
            retry_delay(&asked(3), exponential, &retry),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(
            retry_delay(&asked(3), exponential, &retry).unwrap(),
            Duration::from_secs(3),
            "Retry-After is not cut to max_backoff"
        );
        let refused = retry_delay(&asked(60), exponential, &retry).unwrap_err();
        assert!(
            refused.contains("more than retry.max_retry_after = 10s"),
            "{refused}"
        );
        let timeout = FetchError::Timeout(Duration::from_secs(1));
        for _ in 0..100 {
            let wait = retry_delay(&timeout, Duration::from_millis(400), &retry).unwrap();
            assert!(wait <= Duration::from_millis(400));
        }
        let capped = retry_delay(&timeout, Duration::from_secs(60), &retry).unwrap();
        assert!(capped <= Duration::from_secs(1));
    }
}
