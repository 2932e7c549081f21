//! Faults the fake API can inject into its answers: a fixed one on every
//! request, a queue consumed first, or a seeded storm that hits a share of
//! the requests. Seeded, so a failing test fails the same way every time.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answers this status with a short body.
    Status(u16),
    /// 429 with `Retry-After: N`.
    TooManyRequests { retry_after_secs: u64 },
    /// The normal answer, plus `X-RateLimit-Remaining: 0` and a reset in N s.
    QuotaSpent { reset_secs: u64 },
    /// Waits this long, then answers normally (beyond the client's timeout).
    Slow(Duration),
    /// The normal body cut in half, with a matching `Content-Length`.
    Truncated,
    /// Half of the normal body, then the connection is dropped.
    Reset,
    /// `200` with JSON that ends in the middle.
    Malformed,
    /// `200` with bytes that are not UTF-8 inside a string.
    NonUtf8,
    /// `200` with an HTML error page, as some proxies send.
    Html,
    /// `200` with a record nested 5,000 levels deep.
    Deep,
    /// The normal answer with a `Link` header that is not RFC 8288.
    GarbageLink,
}

/// The storm's mix, one sixth each. Its 429s ask for no wait: the storm
/// proves what retries keep, `retry_after_is_honoured` that a wait asked for
/// is kept, and a second per 429 made the storm tests the slowest of all.
pub const STORM_MIX: [Fault; 6] = [
    Fault::Status(500),
    Fault::Status(503),
    Fault::TooManyRequests {
        retry_after_secs: 0,
    },
    Fault::Slow(Duration::from_secs(3)),
    Fault::Truncated,
    Fault::Reset,
];

#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Injected into every request.
    pub always: Option<Fault>,
    /// Consumed one per request before anything else.
    pub queue: VecDeque<Fault>,
    /// `(share of requests, seeded generator)`.
    pub storm: Option<(f64, fastrand::Rng)>,
    /// How many faults were injected so far.
    pub injected: u64,
}

impl FaultPlan {
    /// The fault for the next request, if any.
    pub fn next(&mut self) -> Option<Fault> {
        let fault = if let Some(fault) = self.queue.pop_front() {
            Some(fault)
        } else if let Some(fault) = &self.always {
            Some(fault.clone())
        } else if let Some((share, rng)) = &mut self.storm {
            (rng.f64() < *share).then(|| STORM_MIX[rng.usize(..STORM_MIX.len())].clone())
        } else {
            None
        };
        self.injected += u64::from(fault.is_some());
        fault
    }
}

/// Answers `request` with `fault` applied.
pub async fn apply(fault: Fault, request: Request, next: Next) -> Response {
    match fault {
        Fault::Status(code) => {
            (StatusCode::from_u16(code).unwrap(), "injected fault").into_response()
        }
        Fault::TooManyRequests { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            "slow down",
        )
            .into_response(),
        Fault::QuotaSpent { reset_secs } => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset_secs));
            response
        }
        Fault::Slow(wait) => {
            tokio::time::sleep(wait).await;
            next.run(request).await
        }
        Fault::Truncated => {
            let body = body_of(next.run(request).await).await;
            json_200(body.slice(..body.len() / 2))
        }
        Fault::Reset => {
            let body = body_of(next.run(request).await).await;
            let half = body.slice(..body.len() / 2);
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                )),
            ];
            let mut response = Body::from_stream(super::ReadyStream::new(chunks)).into_response();
            // Announce the full length, so the cut is a protocol error.
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            response
        }
        Fault::Malformed => json_200(Bytes::from_static(br#"{"data": [{"id": 1}, {"id": "#)),
        Fault::NonUtf8 => json_200(Bytes::from_static(b"{\"data\": [{\"id\": \"\xff\xfe\"}]}")),
        Fault::Html => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<!DOCTYPE html><html><body><h1>Service temporarily unavailable</h1></body></html>",
        )
            .into_response(),
        Fault::Deep => {
            let depth = 5_000;
            let body = format!(
                "{{\"data\": [{{\"id\": 1, \"x\": {}{}}}]}}",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            json_200(Bytes::from(body))
        }
        Fault::GarbageLink => {
            let mut response = next.run(request).await;
            response.headers_mut().insert(
                header::LINK,
                HeaderValue::from_static("garbage; rel=next <https://"),
            );
            response
        }
    }
}

async fn body_of(response: Response) -> Bytes {
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the fake API's own body")
}

fn json_200(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
