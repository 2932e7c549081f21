//! One HTTP request, start to finish: send, check the status, read the body
//! under a size cap, parse it as JSON. Failures become a [`FetchError`] that
//! knows whether a retry could help.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::auth::{Authorized, Authorizer, TokenError, Tokens};
use crate::config::{Method, RequestSettings};
use crate::redact::Redactor;
use crate::store::Store;

/// Longest body excerpt kept in an error: enough to recognise an HTML error
/// page or an API's error message, short enough for a log line.
const EXCERPT_CHARS: usize = 200;

/// The HTTP client shared by every job (one connection pool per process).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The tokens of every job, shared by those with the same auth settings.
    tokens: Tokens,
}

impl ApiClient {
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("apisync/", env!("CARGO_PKG_VERSION")))
            .gzip(true)
            .redirect(same_origin_redirects())
            .build()?;
        Ok(Self {
            tokens: Tokens::new(http.clone()),
            http,
        })
    }

    /// Waits, at most `within`, for token requests still in flight, so a
    /// refresh token rotated meanwhile is committed before the process exits.
    pub async fn finish_token_requests(&self, within: Duration) {
        self.tokens.finish(within).await;
    }

    /// Keeps rotated OAuth2 refresh tokens in `store` (without one, a job
    /// with `auth.kind = "oauth2_refresh_token"` cannot get a token).
    pub fn keep_tokens_in(&self, store: Store) {
        self.tokens.keep_in(store);
    }
}

/// Follows at most 10 redirects, and only within the origin of the first
/// request: reqwest drops `Authorization` on a cross-host redirect but would
/// forward any other header, and a job's headers often carry credentials.
pub(crate) fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_none_or(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else if !same_origin {
            let target = attempt.url().origin().ascii_serialization();
            attempt.error(format!(
                "refused a redirect to {target}: the job's headers are only sent to the host of \
                 request.url"
            ))
        } else {
            attempt.follow()
        }
    })
}

/// The fixed part of a job's requests.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// For metric labels.
    job: String,
    method: Method,
    /// Marked sensitive, so they never show in `Debug` output.
    headers: HeaderMap,
    body: Option<Value>,
    timeout: Duration,
    max_body_bytes: u64,
    /// `[jobs.auth]`, when set.
    auth: Option<Authorizer>,
}

impl RequestSpec {
    /// # Errors
    /// A header that is not valid; `apisync check` reports these first.
    pub fn new(
        job: &str,
        settings: &RequestSettings,
        auth: Option<&crate::config::AuthSettings>,
        max_body_bytes: u64,
    ) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            let mut value = HeaderValue::from_str(value.expose_secret())
                .map_err(|_| format!("the value of header `{name}` is not valid"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(Self {
            job: job.to_owned(),
            method: settings.method,
            headers,
            body: settings.body.clone(),
            timeout: settings.timeout,
            max_body_bytes,
            auth: auth.map(Authorizer::new).transpose()?,
        })
    }

    /// The configured JSON body (POST).
    pub fn body(&self) -> Option<&Value> {
        self.body.as_ref()
    }
}

/// A successful response, its body read whole (JSON or not: what it holds is
/// for the caller to find).
#[derive(Debug)]
pub struct BodyResponse {
    /// What pagination may read: `Link`, totals, cursors in headers.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The API says its quota is spent and resets after this long.
    pub quota_reset: Option<std::time::Duration>,
    /// The API tells how much of a quota is left.
    pub announces_quota: bool,
}

/// Why one request failed. None of the variants carries the URL or the
/// headers: those may hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no response within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the request failed")]
    Transport(#[source] reqwest::Error),
    #[error("the redirect was not followed")]
    Redirect(#[source] reqwest::Error),
    #[error("the API answered {status}{}", excerpt_suffix(excerpt))]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        excerpt: String,
    },
    #[error("the response body is larger than max_body_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("the response body is not valid JSON{}", excerpt_suffix(excerpt))]
    Decode {
        #[source]
        source: serde_json::Error,
        excerpt: String,
    },
    /// No token to send: the request never reached the API.
    #[error("no token")]
    Token(#[source] Box<TokenError>),
}

fn excerpt_suffix(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(" (body: {excerpt})")
    }
}

impl FetchError {
    /// Transient failures worth another attempt: connection errors, timeouts,
    /// 408, 429, 500, 502, 503, 504, and a body cut short or not JSON on a
    /// success status (an overloaded proxy's page). Any other status (a 4xx,
    /// 501 Not Implemented, 505 …) will not change by asking again.
    pub fn is_retriable(&self) -> bool {
        match self {
            FetchError::Timeout(_) | FetchError::Transport(_) | FetchError::Decode { .. } => true,
            FetchError::Status { status, .. } => {
                matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
            }
            FetchError::TooLarge { .. } | FetchError::Redirect(_) => false,
            FetchError::Token(error) => error.is_retriable(),
        }
    }

    /// The API or its token endpoint refused the credentials: a 401 that a
    /// new token did not cure, a 403, or a token endpoint's refusal.
    pub fn is_auth(&self) -> bool {
        match self {
            // A 403 that says when to come back is a spent quota (GitHub's
            // rate limit), not a refusal of the credentials.
            FetchError::Status {
                status,
                retry_after,
                ..
            } => status.as_u16() == 401 || (status.as_u16() == 403 && retry_after.is_none()),
            FetchError::Token(error) => !error.is_store(),
            _ => false,
        }
    }

    /// The store failed to keep a rotated refresh token.
    pub fn is_store(&self) -> bool {
        matches!(self, FetchError::Token(error) if error.is_store())
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A bounded label for logs and metrics: `timeout`, `transport`, the
    /// status code, `too_large` or `decode`.
    pub fn kind(&self) -> String {
        match self {
            FetchError::Timeout(_) => "timeout".to_owned(),
            FetchError::Transport(_) => "transport".to_owned(),
            FetchError::Redirect(_) => "redirect".to_owned(),
            FetchError::Status { status, .. } => status.as_u16().to_string(),
            FetchError::TooLarge { .. } => "too_large".to_owned(),
            FetchError::Decode { .. } => "decode".to_owned(),
            FetchError::Token(_) => "token".to_owned(),
        }
    }
}

/// Sends one request and returns the body of its 2xx answer; counts the
/// attempt.
///
/// # Errors
/// See [`FetchError`] (not [`FetchError::Decode`]: the caller reads the body).
pub async fn fetch_body(
    client: &ApiClient,
    spec: &RequestSpec,
    url: &Url,
    body: Option<&Value>,
    redactor: &Redactor,
) -> Result<BodyResponse, FetchError> {
    let authorized = spec.authorize(client, url, redactor).await?;
    let result = counted_attempt(client, spec, &authorized, body, redactor).await;
    match (result, &authorized.token) {
        (Err(FetchError::Status { status, .. }), Some(stale))
            if status == StatusCode::UNAUTHORIZED =>
        {
            // One renewal and one more request, inside the same attempt:
            // an expired token is not a failure of the API. A 401 again
            // fails the run (`auth`), with no retries.
            tracing::debug!("The API answered 401; renewing the token and asking once more.");
            let renewed = spec.renew(client, url, stale, redactor).await?;
            counted_attempt(client, spec, &renewed, body, redactor).await
        }
        (result, _) => result,
    }
}

async fn counted_attempt(
    client: &ApiClient,
    spec: &RequestSpec,
    authorized: &Authorized,
    body: Option<&Value>,
    redactor: &Redactor,
) -> Result<BodyResponse, FetchError> {
    let started = std::time::Instant::now();
    let mut status = None;
    let result = attempt(client, spec, authorized, body, redactor, &mut status).await;
    crate::metrics::http_attempt(&spec.job, status, started.elapsed());
    result
}

/// Sends one HEAD request (`total_method = "HEAD"`) and returns the response
/// headers; counts the attempt.
///
/// # Errors
/// See [`FetchError`]; a status other than 2xx is [`FetchError::Status`].
pub async fn fetch_head(
    client: &ApiClient,
    spec: &RequestSpec,
    url: &Url,
    redactor: &Redactor,
) -> Result<HeaderMap, FetchError> {
    let authorized = spec.authorize(client, url, redactor).await?;
    let result = counted_head(client, spec, &authorized).await;
    match (result, &authorized.token) {
        (Err(FetchError::Status { status, .. }), Some(stale))
            if status == StatusCode::UNAUTHORIZED =>
        {
            let renewed = spec.renew(client, url, stale, redactor).await?;
            counted_head(client, spec, &renewed).await
        }
        (result, _) => result,
    }
}

async fn counted_head(
    client: &ApiClient,
    spec: &RequestSpec,
    authorized: &Authorized,
) -> Result<HeaderMap, FetchError> {
    let started = std::time::Instant::now();
    let mut status_seen = None;
    let result = async {
        let response = spec
            .request(client, reqwest::Method::HEAD, authorized)
            .send()
            .await
            .map_err(|e| spec.transport_error(e))?;
        let status = response.status();
        status_seen = Some(status.as_u16());
        if !status.is_success() {
            return Err(FetchError::Status {
                status,
                retry_after: response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after),
                excerpt: String::new(),
            });
        }
        Ok(response.headers().clone())
    }
    .await;
    crate::metrics::http_attempt(&spec.job, status_seen, started.elapsed());
    result
}

impl RequestSpec {
    /// The URL and credentials of a request to `url`.
    async fn authorize(
        &self,
        client: &ApiClient,
        url: &Url,
        redactor: &Redactor,
    ) -> Result<Authorized, FetchError> {
        match &self.auth {
            None => Ok(Authorized {
                url: url.clone(),
                header: None,
                token: None,
            }),
            Some(auth) => auth
                .authorize(&client.tokens, url, redactor)
                .await
                .map_err(|e| FetchError::Token(Box::new(e))),
        }
    }

    /// [`RequestSpec::authorize`] after the API refused `stale`.
    async fn renew(
        &self,
        client: &ApiClient,
        url: &Url,
        stale: &std::sync::Arc<crate::auth::Token>,
        redactor: &Redactor,
    ) -> Result<Authorized, FetchError> {
        match &self.auth {
            Some(auth) if auth.renews() => auth
                .renew(&client.tokens, url, stale, redactor)
                .await
                .map_err(|e| FetchError::Token(Box::new(e))),
            _ => self.authorize(client, url, redactor).await,
        }
    }

    /// A request with the job's headers, timeout and credentials.
    fn request(
        &self,
        client: &ApiClient,
        method: reqwest::Method,
        authorized: &Authorized,
    ) -> reqwest::RequestBuilder {
        let mut headers = self.headers.clone();
        if let Some((name, value)) = &authorized.header {
            headers.insert(name.clone(), value.clone());
        }
        client
            .http
            .request(method, authorized.url.clone())
            .headers(headers)
            .timeout(self.timeout)
    }

    fn transport_error(&self, e: reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout(self.timeout)
        } else if e.is_redirect() {
            FetchError::Redirect(e.without_url())
        } else {
            FetchError::Transport(e.without_url())
        }
    }
}

/// One attempt; `status` is set as soon as a response arrives.
async fn attempt(
    client: &ApiClient,
    spec: &RequestSpec,
    authorized: &Authorized,
    body: Option<&Value>,
    redactor: &Redactor,
    status_seen: &mut Option<u16>,
) -> Result<BodyResponse, FetchError> {
    let method = match spec.method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
    };
    let mut request = spec.request(client, method, authorized);
    if let Some(body) = body {
        request = request.json(body);
    }
    let transport = |e: reqwest::Error| spec.transport_error(e);
    let mut response = request.send().await.map_err(transport)?;

    let status = response.status();
    *status_seen = Some(status.as_u16());
    let response_headers = response.headers().clone();
    let quota_reset = super::throttle::quota_reset(response.headers());
    let announces_quota = super::throttle::announces_quota(response.headers());
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
        .or(quota_reset);

    if let Some(length) = response.content_length()
        && length > spec.max_body_bytes
        && status.is_success()
    {
        return Err(FetchError::TooLarge {
            limit: spec.max_body_bytes,
        });
    }
    // Read chunk by chunk so the cap applies to the decompressed size even
    // when Content-Length is absent or describes the compressed body.
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if (body.len() + chunk.len()) as u64 > spec.max_body_bytes {
            if !status.is_success() {
                break;
            }
            return Err(FetchError::TooLarge {
                limit: spec.max_body_bytes,
            });
        }
        body.extend_from_slice(&chunk);
    }

    if !status.is_success() {
        return Err(FetchError::Status {
            status,
            retry_after,
            excerpt: excerpt(&body, redactor),
        });
    }
    Ok(BodyResponse {
        headers: response_headers,
        body,
        quota_reset,
        announces_quota,
    })
}

/// `Retry-After` as seconds (`120`) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Bytes of a body read for an excerpt beyond the most its characters can
/// take: a secret that begins inside the excerpt and runs past its end is
/// still found whole, so it is masked, not cut to a prefix.
const EXCERPT_SECRET_MARGIN: usize = 1024;

/// The start of a body, on one line, for error messages: redacted first,
/// then cut.
pub(super) fn excerpt(body: &[u8], redactor: &Redactor) -> String {
    let window = &body[..body.len().min(EXCERPT_CHARS * 4 + EXCERPT_SECRET_MARGIN)];
    let text = redactor.redact(&String::from_utf8_lossy(window));
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    if text.chars().count() > EXCERPT_CHARS || window.len() < body.len() {
        out.push('…');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_statuses() {
        let cases = [
            (408, true),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (504, true),
            (501, false),
            (505, false),
            (400, false),
            (401, false),
            (404, false),
        ];
        for (code, retriable) in cases {
            let error = FetchError::Status {
                status: StatusCode::from_u16(code).unwrap(),
                retry_after: None,
                excerpt: String::new(),
            };
            assert_eq!(error.is_retriable(), retriable, "status {code}");
        }
        assert!(!FetchError::TooLarge { limit: 1 }.is_retriable());
    }

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let wait = parse_retry_after(&soon).unwrap();
        assert!(wait <= Duration::from_secs(90) && wait >= Duration::from_secs(80));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        let none = Redactor::default();
        assert_eq!(
            excerpt(b"<html>\n<body>oops</body>", &none),
            "<html> <body>oops</body>"
        );
        assert_eq!(excerpt(&[0xff, 0xfe, b'a'], &none), "\u{fffd}\u{fffd}a");
        let long = "x".repeat(500);
        assert_eq!(
            excerpt(long.as_bytes(), &none).chars().count(),
            EXCERPT_CHARS + 1
        );
    }

    #[test]
    fn excerpts_are_redacted_before_they_are_cut() {
        // A 23-character key that the cut at 200 characters would split.
        let key = "key-0123456789abcdefghi";
        let redactor = Redactor::new([key.to_owned()], None);
        let body = format!("{}{key} and more", "x".repeat(EXCERPT_CHARS - 17));
        let cut = excerpt(body.as_bytes(), &redactor);
        assert!(!cut.contains("key-0123"), "{cut}");
        assert!(cut.contains("[redacted]"), "{cut}");
    }
}
