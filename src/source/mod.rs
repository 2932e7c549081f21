//! The pages of one run, fetched one after another: request (with retries),
//! find the records array, work out the next request, guard against APIs that
//! never stop.
//!
//! **Boundary:** this module never touches the database.

pub mod http;
pub mod paginate;

use std::collections::HashMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::Url;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_128;

use crate::config::{JobSettings, Pagination, RetrySettings};
use crate::record::kind_of;
use crate::redact::Redactor;
pub use http::{ApiClient, FetchError, RequestSpec};
use paginate::{PaginationError, Paginator, strip_query};

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
    max_pages: u64,
    retry: RetrySettings,
}

impl SourceSpec {
    /// # Errors
    /// When the URL or a header is invalid; `apisync check` reports these first.
    pub fn new(job: &JobSettings) -> Result<Self, String> {
        let mut base_url = Url::parse(&job.request.url)
            .map_err(|e| format!("request.url is not a valid URL: {e}"))?;
        if !job.request.query.is_empty() {
            base_url
                .query_pairs_mut()
                .extend_pairs(job.request.query.iter().map(|(k, v)| (k, &v.0)));
        }
        Ok(Self {
            request: RequestSpec::new(&job.name, &job.request, job.max_body_bytes)?,
            job: job.name.clone(),
            base_url,
            pagination: job.pagination.clone(),
            records_pointer: job.records.clone(),
            max_pages: job.max_pages,
            retry: job.retry.clone(),
        })
    }

    /// Starts walking the pages from the first; `redactor` cleans the errors
    /// logged on retries.
    pub fn pages<'a>(&'a self, client: &'a ApiClient, redactor: &'a Redactor) -> Pages<'a> {
        let paginator = Paginator::new(self.pagination.clone(), self.base_url.clone());
        Pages {
            next: Some(paginator.first()),
            spec: self,
            client,
            redactor,
            paginator,
            visited: HashMap::new(),
            fetched: 0,
        }
    }
}

/// One response's records.
#[derive(Debug)]
pub struct Page {
    /// 1 for the first page of the run.
    pub number: u64,
    pub records: Vec<Value>,
}

/// Why the run could not get its next page.
#[derive(Debug, thiserror::Error)]
#[error("page {page} ({url})")]
pub struct SourceError {
    pub page: u64,
    /// Without the query string, which may hold credentials.
    pub url: String,
    #[source]
    pub kind: SourceErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceErrorKind {
    #[error("fetching failed after {attempts} attempt(s)")]
    Fetch {
        attempts: u32,
        #[source]
        source: FetchError,
    },
    #[error("records pointer `{pointer}` found {found}, expected an array of records")]
    Records {
        pointer: String,
        found: &'static str,
    },
    #[error("pagination failed")]
    Pagination(#[source] PaginationError),
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
pub struct Pages<'a> {
    spec: &'a SourceSpec,
    client: &'a ApiClient,
    redactor: &'a Redactor,
    paginator: Paginator,
    /// The URL of the next request, `None` after the last page.
    next: Option<Url>,
    /// Fingerprints of every URL requested in this run, with its page number,
    /// to stop a cursor or next link that comes back around.
    visited: HashMap<u128, u64>,
    fetched: u64,
}

impl Pages<'_> {
    /// The next page, or `None` after the last.
    ///
    /// # Errors
    /// A [`SourceError`] naming the page and what went wrong; the run ends.
    pub async fn next_page(&mut self) -> Result<Option<Page>, SourceError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let number = self.fetched + 1;
        let error = |kind| SourceError {
            page: number,
            url: strip_query(url.as_str()),
            kind,
        };
        if number > self.spec.max_pages {
            return Err(error(SourceErrorKind::TooManyPages {
                max_pages: self.spec.max_pages,
            }));
        }
        if let Some(first_seen) = self
            .visited
            .insert(xxh3_128(url.as_str().as_bytes()), number)
        {
            return Err(error(SourceErrorKind::Loop { first_seen }));
        }

        let response = self.fetch_with_retries(&url).await.map_err(&error)?;
        self.fetched = number;

        let mut body = response.body;
        let records = match body.pointer(&self.spec.records_pointer) {
            Some(Value::Array(items)) => items.len(),
            other => {
                return Err(error(SourceErrorKind::Records {
                    pointer: self.spec.records_pointer.clone(),
                    found: other.map_or("nothing", kind_of),
                }));
            }
        };
        let view = paginate::Response {
            url: &url,
            link: response.link.as_deref(),
            body: &body,
            records,
        };
        self.next = self
            .paginator
            .next(&view)
            .map_err(|e| error(SourceErrorKind::Pagination(e)))?;
        if self.next.is_none()
            && number == 1
            && records > 0
            && let Some(pointer) = self.paginator.pointer_missing(&body)
        {
            tracing::warn!(
                pointer,
                "The first page has records but no next cursor or URL at the configured \
                 pointer; treating it as the only page. Check the pointer if the API has more."
            );
        }

        let records = match body.pointer_mut(&self.spec.records_pointer) {
            Some(Value::Array(items)) => std::mem::take(items),
            _ => unreachable!("checked above that the pointer finds an array"),
        };
        Ok(Some(Page { number, records }))
    }

    /// One request, retried while the failure is transient.
    ///
    /// Policy: at most `retry.max_attempts` attempts; before attempt n+1 wait a
    /// random time between zero and `initial_backoff × 2^(n-1)`, capped at
    /// `max_backoff` ("full jitter", so many clients do not retry in step); a
    /// server's `Retry-After` replaces that wait, also capped at `max_backoff`.
    async fn fetch_with_retries(&self, url: &Url) -> Result<http::JsonResponse, SourceErrorKind> {
        let retry = &self.spec.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(retry.initial_backoff)
            .with_max_delay(retry.max_backoff)
            .with_factor(2.0)
            .with_max_times(retry.max_attempts.saturating_sub(1) as usize);
        let mut attempts = 0;
        let result = (|| {
            attempts += 1;
            http::fetch_json(self.client, &self.spec.request, url)
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(FetchError::is_retriable)
        .adjust(|error, delay| delay.map(|d| retry_delay(error, d, retry.max_backoff)))
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
        result.map_err(|source| SourceErrorKind::Fetch { attempts, source })
    }
}

/// The wait before the next attempt: the server's `Retry-After` if it sent
/// one, else a random share of the exponential delay; never over `cap`.
fn retry_delay(error: &FetchError, exponential: Duration, cap: Duration) -> Duration {
    match error.retry_after() {
        Some(wait) => wait.min(cap),
        None => exponential.mul_f64(fastrand::f64()).min(cap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_but_is_capped() {
        let limited = FetchError::Status {
            status: reqwest::StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(Duration::from_secs(3)),
            excerpt: String::new(),
        };
        let cap = Duration::from_secs(10);
        assert_eq!(
            retry_delay(&limited, Duration::from_millis(200), cap),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_delay(&limited, Duration::from_millis(200), Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        let timeout = FetchError::Timeout(Duration::from_secs(1));
        for _ in 0..100 {
            assert!(
                retry_delay(&timeout, Duration::from_millis(400), cap)
                    <= Duration::from_millis(400)
            );
        }
    }
}
