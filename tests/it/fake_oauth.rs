//! A fake OAuth2 authorization server with the API it protects, on loopback.
//!
//! | path                  | what                                                          |
//! |-----------------------|---------------------------------------------------------------|
//! | `POST /oauth/token`   | RFC 6749 token endpoint: `client_credentials` and `refresh_token` grants; the client as HTTP Basic or in the form; refresh tokens rotate and a used one is refused (`invalid_grant`) |
//! | `POST /login`         | a login call: JSON `{"username", "password"}` → `{"data": {"token", "ttl"}}` |
//! | `GET /items?page=N`   | the records, 10 a page, `{"data": [...]}`; a Bearer token that is not valid (unknown, expired, revoked) gets 401 |
//! | `GET /keyed?page=N`   | the same behind `?api_key=…`, with a DRF-style `next` URL that echoes the whole query |
//!
//! Tokens live `lifetime` seconds of real time: the server runs beside a
//! real binary or a real reqwest client, so tokio's paused clock cannot
//! stand in for it. Tests assert what happened (tokens issued, 401s
//! served, records archived), never how long it took.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "archiver";
pub const CLIENT_SECRET: &str = "cs-9f8e7d6c5b4a-secret";
pub const USERNAME: &str = "robot";
pub const PASSWORD: &str = "pw-Login-7766-secret";
pub const API_KEY: &str = "ak-Query-5544-secret";
pub const PAGE_SIZE: usize = 10;

/// How the token endpoint wants the client authenticated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Form,
}

struct AuthState {
    records: Vec<Value>,
    client_auth: ClientAuth,
    lifetime: Duration,
    /// Valid access tokens and when they expire.
    tokens: HashMap<String, Instant>,
    /// The refresh token that works now; every other is refused.
    refresh_token: String,
    /// Every refresh token presented, in order.
    refresh_tokens_used: Vec<String>,
    /// Every access token issued, in order.
    issued: Vec<String>,
    token_requests: usize,
    api_requests: usize,
    unauthorized: usize,
    /// Revoke every token once this many API requests have been answered.
    revoke_after: Option<usize>,
    /// Refuse every token once this many API requests have been answered
    /// (the client lost its access).
    deny_after: Option<usize>,
    /// Each answer of `/items` waits this long after its token was checked.
    delay: Duration,
    /// Each answer of the token endpoint waits this long after it was
    /// decided (a rotation is made before the wait).
    token_delay: Duration,
    /// What the token endpoint saw: grant type, scope, extra fields.
    forms: Vec<HashMap<String, String>>,
    /// Every query the API saw.
    queries: Vec<String>,
    nonce: u64,
}

#[derive(Clone)]
pub struct FakeAuth {
    pub addr: SocketAddr,
    state: Arc<Mutex<AuthState>>,
}

type Shared = State<Arc<Mutex<AuthState>>>;

impl FakeAuth {
    pub async fn start(records: Vec<Value>, client_auth: ClientAuth, lifetime: Duration) -> Self {
        let state = Arc::new(Mutex::new(AuthState {
            records,
            client_auth,
            lifetime,
            tokens: HashMap::new(),
            refresh_token: "rt-seed-0001".to_owned(),
            refresh_tokens_used: Vec::new(),
            issued: Vec::new(),
            token_requests: 0,
            api_requests: 0,
            unauthorized: 0,
            revoke_after: None,
            deny_after: None,
            delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            forms: Vec::new(),
            queries: Vec::new(),
            nonce: fastrand::u64(..),
        }));
        let app = Router::new()
            .route("/oauth/token", post(token))
            .route("/login", post(login))
            .route("/items", get(items))
            .route("/keyed", get(keyed))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeAuth { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    pub fn api_requests(&self) -> usize {
        self.state.lock().unwrap().api_requests
    }

    /// API requests answered 401.
    pub fn unauthorized(&self) -> usize {
        self.state.lock().unwrap().unauthorized
    }

    pub fn issued(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    pub fn refresh_tokens_used(&self) -> Vec<String> {
        self.state.lock().unwrap().refresh_tokens_used.clone()
    }

    /// The refresh token the server accepts now.
    pub fn current_refresh_token(&self) -> String {
        self.state.lock().unwrap().refresh_token.clone()
    }

    /// Makes `token` the refresh token the server accepts (a user who
    /// authorized the client anew).
    pub fn set_refresh_token(&self, token: &str) {
        self.state.lock().unwrap().refresh_token = token.to_owned();
    }

    pub fn forms(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().forms.clone()
    }

    pub fn queries(&self) -> Vec<String> {
        self.state.lock().unwrap().queries.clone()
    }

    /// Every token stops working once `n` API requests were answered.
    pub fn revoke_after(&self, n: usize) {
        self.state.lock().unwrap().revoke_after = Some(n);
    }

    /// Every token is refused once `n` API requests were answered.
    pub fn deny_after(&self, n: usize) {
        self.state.lock().unwrap().deny_after = Some(n);
    }

    /// Each token endpoint answer waits `delay` once the server decided it.
    pub fn token_delay(&self, delay: Duration) {
        self.state.lock().unwrap().token_delay = delay;
    }

    /// Each `/items` answer waits `delay` once its token was checked.
    pub fn delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn records(&self) -> Vec<Value> {
        self.state.lock().unwrap().records.clone()
    }
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

fn issue(s: &mut AuthState) -> String {
    let token = format!("at-{:016x}-{}", s.nonce, s.issued.len() + 1);
    s.tokens.insert(token.clone(), Instant::now() + s.lifetime);
    s.issued.push(token.clone());
    token
}

async fn token(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let (response, delay) = {
        let mut s = state.lock().unwrap();
        let delay = s.token_delay;
        (answer_token(&mut s, &headers, &body), delay)
    };
    tokio::time::sleep(delay).await;
    response
}

fn answer_token(s: &mut AuthState, headers: &HeaderMap, body: &Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    s.token_requests += 1;
    s.forms.push(form.clone());
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(str::to_owned);
    let expected_basic = apisync::redact::base64(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes());
    let client_ok = match s.client_auth {
        ClientAuth::Basic => basic.as_deref() == Some(expected_basic.as_str()),
        ClientAuth::Form => {
            basic.is_none()
                && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        }
    };
    if !client_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let lifetime = s.lifetime.as_secs_f64();
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            let token = issue(s);
            axum::Json(json!({
                "access_token": token, "token_type": "Bearer", "expires_in": lifetime,
            }))
            .into_response()
        }
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            s.refresh_tokens_used.push(presented.clone());
            if presented != s.refresh_token {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The refresh token is invalid or was already used",
                );
            }
            let rotated = format!("rt-{:016x}-{}", s.nonce, s.refresh_tokens_used.len() + 1);
            s.refresh_token = rotated.clone();
            let token = issue(s);
            axum::Json(json!({
                "access_token": token, "token_type": "Bearer", "expires_in": lifetime,
                "refresh_token": rotated,
            }))
            .into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "no"),
    }
}

async fn login(State(state): Shared, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = state.lock().unwrap();
    s.token_requests += 1;
    if body["username"] != USERNAME || body["password"] != PASSWORD {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "message": "wrong username or password" })),
        )
            .into_response();
    }
    let token = issue(&mut s);
    let ttl = s.lifetime.as_secs();
    axum::Json(json!({ "data": { "token": token, "ttl": ttl } })).into_response()
}

fn page_of(s: &AuthState, params: &HashMap<String, String>) -> (usize, Vec<Value>) {
    let page: usize = params.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let start = (page.max(1) - 1) * PAGE_SIZE;
    let data = s
        .records
        .iter()
        .skip(start)
        .take(PAGE_SIZE)
        .cloned()
        .collect();
    (page, data)
}

/// Counts the request, and revokes every token when it is due.
fn count_request(s: &mut AuthState, uri: &Uri) {
    s.api_requests += 1;
    s.queries.push(uri.query().unwrap_or_default().to_owned());
    if s.revoke_after == Some(s.api_requests) {
        s.tokens.clear();
    }
}

async fn items(
    State(state): Shared,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (response, delay) = {
        let mut s = state.lock().unwrap();
        (authorized_items(&mut s, &params, &headers, &uri), s.delay)
    };
    tokio::time::sleep(delay).await;
    response
}

fn authorized_items(
    s: &mut AuthState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let valid = s
        .tokens
        .get(&bearer)
        .is_some_and(|expires| Instant::now() < *expires)
        && s.deny_after.is_none_or(|n| s.api_requests < n);
    if !valid {
        s.unauthorized += 1;
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            axum::Json(json!({ "detail": "invalid or expired token" })),
        )
            .into_response();
    }
    count_request(s, uri);
    let (_, data) = page_of(s, params);
    axum::Json(json!({ "data": data })).into_response()
}

async fn keyed(
    State(state): Shared,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let mut s = state.lock().unwrap();
    count_request(&mut s, &uri);
    let keys = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(name, _)| name == "api_key")
        .count();
    if keys != 1 || params.get("api_key").map(String::as_str) != Some(API_KEY) {
        s.unauthorized += 1;
        // Echoes the request, as some APIs do: the key must not reach a log.
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "detail": format!("bad key in {uri}") })),
        )
            .into_response();
    }
    let (page, data) = page_of(&s, &params);
    let more = page * PAGE_SIZE < s.records.len();
    // DRF-style: the next URL keeps the whole query, the key included.
    let next = more.then(|| {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().filter(|(k, _)| *k != "page"))
            .append_pair("page", &(page + 1).to_string())
            .finish();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        format!("http://{host}/keyed?{query}")
    });
    axum::Json(json!({ "results": data, "next": next })).into_response()
}
