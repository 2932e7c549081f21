//! A fake paginated JSON API on loopback, serving one data set in every
//! pagination style apisync supports, plus a few broken ones.
//!
//! | path            | style                                                            |
//! |-----------------|------------------------------------------------------------------|
//! | `/none`         | one page: `{"data": [...]}`                                      |
//! | `/page`         | `?page=N&per_page=S` → `{"data": [...], "total_pages": T, "total": N}` |
//! | `/offset`       | `?offset=O&limit=L` → `{"items": [...], "total": T}`; L capped at 100 |
//! | `/cursor`       | `?cursor=C` → `{"data": [...], "next_cursor": C2 \| null}`       |
//! | `/link`         | `?page=N` → bare array, `Link: <…>; rel="next"` (relative)       |
//! | `/next`         | `?after=K` → `{"results": [...], "next": absolute URL \| null}`  |
//! | `/loop/cursor`  | always the same `next_cursor`                                    |
//! | `/loop/next`    | always the same `next` URL                                       |
//! | `/endless`      | `?page=N`: fresh records on every page, forever                  |
//! | `/same`         | ignores `?page`: the same records on every page                  |
//! | `/status/{code}`| answers `code` with a body that echoes the request's credentials |
//! | `/echo/{code}`  | answers `code` echoing every request header and the URI, `/` as `\/` (PHP) |
//! | `/badlink`      | one record and a `Link` header that echoes the URI but never closes its `<` |
//! | `/ctl`          | one record and a `next` URL holding ESC, BEL and CR                |
//! | `/redirect`     | 302 to the same API under another origin (`localhost`)           |
//! | `/gzip`         | all records, gzip-compressed, without `Content-Length`           |
//! | `/search` (POST)| `{"data": [...]}` when the JSON body and `X-Api-Key` header are right |
//! | `/search/cursor` (POST) | body `{"filter": {"status": "all", "updated_at"?: "gte.T"}, "page": {"size": S, "cursor"?: C}}` → `{"data": [...], "meta": {"next_cursor": C2 \| null}}` |
//! | `/postgrest`    | PostgREST-style: `?updated_at=gte.T&offset=O&limit=L` → bare array |
//!
//! `/page` also filters on `?updated_since=T` (records whose `updated_at` is
//! at least T), and every route can be slowed down or hit by `faults`.
//! `/offset` can overlap its pages, and states its total in a
//! `Content-Range` header too; `/link` states it in `X-Total-Count`; `/page`
//! can state a wrong total. `shapes` has routes shaped like real servers.

pub mod faults;
mod shapes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Page size of the styles where the server picks it; it does not divide the
/// test data sets, so the last page is short.
pub const SERVER_PAGE_SIZE: usize = 97;

#[derive(Default)]
struct ApiState {
    records: Vec<Value>,
    /// Every request's path and query, in order.
    requests: Vec<String>,
    /// Stamp every served record with a fresh `/meta/request_id`.
    volatile_field: bool,
    /// Serve object keys in reverse order, pretty-printed.
    reorder_and_indent: bool,
    /// Extra records appended to the page at the same index (by `/page`), to
    /// plant duplicates.
    extra_on_page: HashMap<usize, Vec<Value>>,
    /// Every request waits this long before it is answered.
    delay: std::time::Duration,
    faults: faults::FaultPlan,
    /// When each request arrived, and its path and query.
    arrivals: Vec<(tokio::time::Instant, String)>,
    /// Rendered `/page` answers by URI, while nothing that shapes them
    /// changes: serving is then nearly free (shared, not copied), so a
    /// benchmark measures apisync rather than this fake.
    page_cache: HashMap<String, axum::body::Bytes>,
    /// Every answer says how much of a quota is left (plenty).
    quota_headers: bool,
    /// Requests arrived and not yet answered, and the most there ever were.
    in_flight: usize,
    max_in_flight: usize,
    /// `/offset` starts each page after the first this many records early,
    /// repeating the end of the page before (what an API does when records
    /// are inserted while it is paged).
    offset_overlap: usize,
    /// `/page` states these totals instead of the true ones.
    stated_total: Option<usize>,
    /// Every JSON body `/search/cursor` received.
    bodies: Vec<Value>,
    stated_total_pages: Option<usize>,
}

/// Counts a request as answered when dropped (also if the client went away).
struct InFlight(Arc<Mutex<ApiState>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    /// Serves `records` on a free loopback port.
    pub async fn start(records: Vec<Value>) -> FakeApi {
        Self::start_on("127.0.0.1:0", records).await
    }

    pub async fn start_on(addr: &str, records: Vec<Value>) -> FakeApi {
        let state = Arc::new(Mutex::new(ApiState {
            records,
            ..ApiState::default()
        }));
        let middleware_state = state.clone();
        let app = Router::new()
            .route("/none", get(none))
            .route("/page", get(page))
            .route("/offset", get(offset))
            .route("/cursor", get(cursor))
            .route("/link", get(link))
            .route("/next", get(next))
            .route("/loop/cursor", get(loop_cursor))
            .route("/loop/next", get(loop_next))
            .route("/endless", get(endless))
            .route("/same", get(same))
            .route("/status/{code}", get(status))
            .route("/echo/{code}", get(echo))
            .route("/badlink", get(bad_link))
            .route("/ctl", get(control))
            .route("/search", post(search))
            .route("/search/cursor", post(search_cursor))
            .route("/postgrest", get(postgrest))
            .route("/redirect", get(redirect))
            .route("/gzip", get(gzip))
            .route("/drf", get(shapes::drf))
            .route("/clamp", get(shapes::clamp))
            .route("/kinto", get(shapes::kinto))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let (delay, fault, quota_headers) = {
                        let mut s = middleware_state.lock().unwrap();
                        s.arrivals
                            .push((tokio::time::Instant::now(), request.uri().to_string()));
                        s.in_flight += 1;
                        s.max_in_flight = s.max_in_flight.max(s.in_flight);
                        (s.delay, s.faults.next(), s.quota_headers)
                    };
                    let answered = InFlight(middleware_state.clone());
                    async move {
                        let _answered = answered;
                        tokio::time::sleep(delay).await;
                        let mut response = match fault {
                            None => next.run(request).await,
                            Some(fault) => faults::apply(fault, request, next).await,
                        };
                        if quota_headers {
                            response.headers_mut().insert(
                                "x-ratelimit-remaining",
                                header::HeaderValue::from_static("1000"),
                            );
                        }
                        response
                    }
                },
            ))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the fake API on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serve the fake API");
        });
        FakeApi { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn records(&self) -> Vec<Value> {
        self.state.lock().unwrap().records.clone()
    }

    pub fn set_records(&self, records: Vec<Value>) {
        let mut state = self.state.lock().unwrap();
        state.records = records;
        state.page_cache.clear();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every JSON body `/search/cursor` received, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.state.lock().unwrap().bodies.clone()
    }

    /// When each request arrived, and its path and query.
    pub fn arrivals(&self) -> Vec<(tokio::time::Instant, String)> {
        self.state.lock().unwrap().arrivals.clone()
    }

    /// The most requests that were ever waiting for their answers at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// Injects `fault` into every later request (`None` to stop).
    pub fn set_fault(&self, fault: Option<faults::Fault>) {
        self.state.lock().unwrap().faults.always = fault;
    }

    /// Injects these faults into the next requests, one each.
    pub fn queue_faults(&self, faults: impl IntoIterator<Item = faults::Fault>) {
        self.state.lock().unwrap().faults.queue.extend(faults);
    }

    /// Hits `share` of the later requests with a fault of `faults::STORM_MIX`,
    /// chosen by a generator seeded with `seed`.
    pub fn start_storm(&self, share: f64, seed: u64) {
        self.state.lock().unwrap().faults.storm = Some((share, fastrand::Rng::with_seed(seed)));
    }

    /// How many faults were injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.state.lock().unwrap().faults.injected
    }

    pub fn set_volatile_field(&self, on: bool) {
        let mut state = self.state.lock().unwrap();
        state.volatile_field = on;
        state.page_cache.clear();
    }

    /// Every later answer says how much of a quota is left.
    pub fn set_quota_headers(&self, on: bool) {
        self.state.lock().unwrap().quota_headers = on;
    }

    /// Every later request waits `delay` before it is answered.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn set_reorder_and_indent(&self, on: bool) {
        let mut state = self.state.lock().unwrap();
        state.reorder_and_indent = on;
        state.page_cache.clear();
    }

    /// `/offset` repeats the last `records` of the previous page at the
    /// start of every later page.
    pub fn set_offset_overlap(&self, records: usize) {
        self.state.lock().unwrap().offset_overlap = records;
    }

    /// `/page` states `total` records and `total_pages` pages, whatever it holds.
    pub fn state_totals(&self, total: Option<usize>, total_pages: Option<usize>) {
        let mut state = self.state.lock().unwrap();
        state.stated_total = total;
        state.stated_total_pages = total_pages;
        state.page_cache.clear();
    }

    /// `/page` serves `extra` after the regular records of page `page` (1-based).
    pub fn add_to_page(&self, page: usize, extra: Vec<Value>) {
        let mut state = self.state.lock().unwrap();
        state.extra_on_page.entry(page).or_default().extend(extra);
        state.page_cache.clear();
    }
}

type Shared = State<Arc<Mutex<ApiState>>>;
type Params = Query<HashMap<String, String>>;

fn param(params: &HashMap<String, String>, name: &str, default: usize) -> usize {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records `start..start+len` as the API shows them right now.
fn slice(state: &mut ApiState, uri: &Uri, start: usize, len: usize) -> Vec<Value> {
    state.requests.push(uri.to_string());
    let request_number = state.requests.len();
    let end = (start + len).min(state.records.len());
    let start = start.min(end);
    state.records[start..end]
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if state.volatile_field {
                record["meta"] = json!({"request_id": format!("req-{request_number}")});
            }
            record
        })
        .collect()
}

fn json_response(state: &ApiState, body: Value) -> Response {
    let text = render(state, &body);
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn render(state: &ApiState, body: &Value) -> String {
    if state.reorder_and_indent {
        reversed_keys_pretty(body, 0)
    } else {
        body.to_string()
    }
}

/// JSON with every object's keys in reverse order and generous whitespace:
/// the same content, spelled differently.
fn reversed_keys_pretty(value: &Value, depth: usize) -> String {
    let pad = "  ".repeat(depth + 1);
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| b.0.cmp(a.0));
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{pad}{} :  {}",
                        json!(k),
                        reversed_keys_pretty(v, depth + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{}}}", inner.join(",\n"), "  ".repeat(depth))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items
                .iter()
                .map(|v| format!("{pad}{}", reversed_keys_pretty(v, depth + 1)))
                .collect();
            format!("[\n{}\n{}]", inner.join(",\n"), "  ".repeat(depth))
        }
        other => other.to_string(),
    }
}

async fn none(State(state): Shared, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let len = s.records.len();
    let data = slice(&mut s, &uri, 0, len);
    json_response(&s, json!({ "data": data }))
}

async fn page(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let page = param(&params, "page", 1).max(1);
    let size = param(&params, "per_page", 30).max(1);
    if let Some(since) = params.get("updated_since") {
        // Incremental: serve only what changed since `since`, from a view
        // that does not disturb the data set.
        let changed: Vec<Value> = s
            .records
            .iter()
            .filter(|r| {
                r["updated_at"]
                    .as_str()
                    .is_some_and(|t| t >= since.as_str())
            })
            .cloned()
            .collect();
        let total_pages = changed.len().div_ceil(size);
        let all = std::mem::replace(&mut s.records, changed);
        let data = slice(&mut s, &uri, (page - 1) * size, size);
        s.records = all;
        return json_response(&s, json!({ "data": data, "total_pages": total_pages }));
    }
    let cacheable = !s.volatile_field && !s.extra_on_page.contains_key(&page);
    let key = uri.to_string();
    if cacheable && let Some(body) = s.page_cache.get(&key).cloned() {
        s.requests.push(key);
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let mut data = slice(&mut s, &uri, (page - 1) * size, size);
    if let Some(extra) = s.extra_on_page.get(&page) {
        data.extend(extra.iter().cloned());
    }
    let total_pages = s
        .stated_total_pages
        .unwrap_or(s.records.len().div_ceil(size));
    let total = s.stated_total.unwrap_or(s.records.len());
    let body = axum::body::Bytes::from(render(
        &s,
        &json!({ "data": data, "total_pages": total_pages, "total": total }),
    ));
    if cacheable {
        s.page_cache.insert(key, body.clone());
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn offset(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let offset = param(&params, "offset", 0);
    // Like many APIs, a larger limit is quietly capped.
    let limit = param(&params, "limit", 50).clamp(1, 100);
    let start = if offset > 0 {
        offset.saturating_sub(s.offset_overlap)
    } else {
        0
    };
    let items = slice(&mut s, &uri, start, offset + limit - start);
    let total = s.records.len();
    let shown = items.len();
    let mut response = json_response(&s, json!({ "items": items, "total": total }));
    // `Content-Range: items 0-99/2500`, as PostgREST and others state it.
    let range = if shown == 0 {
        format!("items */{total}")
    } else {
        format!("items {start}-{}/{total}", start + shown - 1)
    };
    response.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&range).unwrap(),
    );
    response
}

async fn cursor(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    // An opaque-looking cursor that encodes the next index.
    let start = params
        .get("cursor")
        .and_then(|c| c.strip_prefix("after-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let data = slice(&mut s, &uri, start, SERVER_PAGE_SIZE);
    let next = start + SERVER_PAGE_SIZE;
    let next_cursor = (next < s.records.len()).then(|| format!("after-{next}"));
    json_response(&s, json!({ "data": data, "next_cursor": next_cursor }))
}

async fn link(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let page = param(&params, "page", 1).max(1);
    let data = slice(
        &mut s,
        &uri,
        (page - 1) * SERVER_PAGE_SIZE,
        SERVER_PAGE_SIZE,
    );
    let last = s.records.len().div_ceil(SERVER_PAGE_SIZE);
    let mut links = vec![format!("</link?page={last}>; rel=\"last\"")];
    if page < last {
        links.insert(0, format!("</link?page={}>; rel=\"next\"", page + 1));
    }
    let total = s.records.len();
    let mut response = json_response(&s, Value::Array(data));
    response.headers_mut().insert(
        header::LINK,
        HeaderValue::from_str(&links.join(", ")).unwrap(),
    );
    // json-server 0.17 states the total in a header.
    response
        .headers_mut()
        .insert("x-total-count", HeaderValue::from(total));
    response
}

async fn next(
    State(state): Shared,
    Query(params): Params,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    let after = param(&params, "after", 0);
    let results = slice(&mut s, &uri, after, SERVER_PAGE_SIZE);
    let next_index = after + SERVER_PAGE_SIZE;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let next =
        (next_index < s.records.len()).then(|| format!("http://{host}/next?after={next_index}"));
    json_response(&s, json!({ "results": results, "next": next }))
}

async fn loop_cursor(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let start = if params.contains_key("cursor") { 10 } else { 0 };
    let data = slice(&mut s, &uri, start, 10);
    json_response(&s, json!({ "data": data, "next_cursor": "stuck" }))
}

async fn loop_next(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let start = if params.contains_key("after") { 10 } else { 0 };
    let data = slice(&mut s, &uri, start, 10);
    json_response(
        &s,
        json!({ "results": data, "next": "/loop/next?after=10" }),
    )
}

async fn endless(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    s.requests.push(uri.to_string());
    let page = param(&params, "page", 1);
    let data: Vec<Value> = (0..10)
        .map(|i| json!({"id": page * 10 + i, "name": "generated"}))
        .collect();
    json_response(&s, json!({ "data": data }))
}

async fn same(State(state): Shared, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let data = slice(&mut s, &uri, 0, 10);
    json_response(&s, json!({ "data": data }))
}

/// Answers with `code` and a body that repeats what it was sent, as careless
/// APIs do: a test that the echo never reaches logs or the runs table.
async fn status(Path(code): Path<u16>, uri: Uri, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let body = format!("{{\"error\": \"denied\", \"you_sent\": \"{auth}\", \"uri\": \"{uri}\"}}");
    (StatusCode::from_u16(code).unwrap(), body).into_response()
}

/// Answers `code` with every request header and the URI in a JSON body,
/// written as PHP's `json_encode` writes it: `/` as `\/`. `?pad=N` puts N
/// characters before the headers (to place an echo at a cut).
async fn echo(
    Path(code): Path<u16>,
    Query(params): Params,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let pad = "p".repeat(param(&params, "pad", 0));
    // Sorted by name, in a fixed order of members: tests place an echo at
    // a known offset.
    let headers: std::collections::BTreeMap<String, String> = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let body = format!(
        "{{\"pad\":\"{pad}\",\"uri\":{},\"headers\":{},\"error\":\"unauthorized\"}}",
        Value::String(uri.to_string()),
        serde_json::to_string(&headers).unwrap()
    )
    .replace('/', "\\/");
    (StatusCode::from_u16(code).unwrap(), body).into_response()
}

/// One record, and a `Link` header that repeats the request URI inside a
/// `<` it never closes.
async fn bad_link(uri: Uri) -> Response {
    let link = format!("<{uri}; rel=\"next\"");
    (
        [
            (header::LINK, link),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        json!([{"id": 1}]).to_string(),
    )
        .into_response()
}

/// One record and a `next` URL that is not a URL, with terminal controls in
/// it: ESC (a colour, a screen clear), BEL and CR.
async fn control() -> Response {
    json!({
        "results": [{"id": 1}],
        "next": "http://\u{1b}[2J\u{1b}[31mevil\u{7}\r:99999/x"
    })
    .to_string()
    .into_response()
}

/// A POST search endpoint: wants `{"status": "all"}` and `X-Api-Key: k-123`.
async fn search(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some("k-123") {
        return (StatusCode::UNAUTHORIZED, "missing X-Api-Key").into_response();
    }
    if body != json!({"status": "all"}) {
        return (StatusCode::BAD_REQUEST, format!("unexpected body {body}")).into_response();
    }
    let mut s = state.lock().unwrap();
    let len = s.records.len();
    let data = slice(&mut s, &uri, 0, len);
    json_response(&s, json!({ "data": data }))
}

/// The records whose `updated_at` is at least the time of a PostgREST-style
/// filter `gte.T`; all of them without one; `Err` for another operator.
fn changed_since(s: &ApiState, filter: Option<&str>) -> Result<Vec<Value>, String> {
    let Some(filter) = filter else {
        return Ok(s.records.clone());
    };
    let Some(since) = filter.strip_prefix("gte.") else {
        return Err(format!("unknown filter {filter}"));
    };
    Ok(s.records
        .iter()
        .filter(|r| r["updated_at"].as_str().is_some_and(|t| t >= since))
        .cloned()
        .collect())
}

async fn search_cursor(State(state): Shared, uri: Uri, Json(body): Json<Value>) -> Response {
    let mut s = state.lock().unwrap();
    s.bodies.push(body.clone());
    s.requests.push(uri.to_string());
    if body["filter"]["status"] != "all" {
        return (StatusCode::BAD_REQUEST, format!("unexpected body {body}")).into_response();
    }
    let records = match changed_since(&s, body["filter"]["updated_at"].as_str()) {
        Ok(records) => records,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let size = body["page"]["size"].as_u64().unwrap_or(10).max(1) as usize;
    let start = match &body["page"]["cursor"] {
        Value::Null => 0,
        Value::String(c) => match c.strip_prefix("pos-").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => return (StatusCode::BAD_REQUEST, "bad cursor").into_response(),
        },
        _ => return (StatusCode::BAD_REQUEST, "bad cursor").into_response(),
    };
    let end = (start + size).min(records.len());
    let data = &records[start.min(end)..end];
    let next = (end < records.len()).then(|| format!("pos-{end}"));
    json_response(&s, json!({ "data": data, "meta": { "next_cursor": next } }))
}

async fn postgrest(State(state): Shared, Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    s.requests.push(uri.to_string());
    let records = match changed_since(&s, params.get("updated_at").map(String::as_str)) {
        Ok(records) => records,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let offset = param(&params, "offset", 0);
    let limit = param(&params, "limit", 100).max(1);
    let end = (offset + limit).min(records.len());
    json_response(&s, json!(records[offset.min(end)..end]))
}

async fn redirect(headers: HeaderMap) -> Response {
    let port = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit(':').next())
        .unwrap_or("80")
        .to_owned();
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("http://localhost:{port}/none"))],
    )
        .into_response()
}

/// The whole data set gzip-compressed and streamed: no `Content-Length`, so
/// only the decompressed byte count can enforce `max_body_bytes`.
async fn gzip(State(state): Shared, uri: Uri) -> Response {
    use std::io::Write;
    let body = {
        let mut s = state.lock().unwrap();
        let len = s.records.len();
        json!({ "data": slice(&mut s, &uri, 0, len) }).to_string()
    };
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body.as_bytes()).unwrap();
    let compressed = encoder.finish().unwrap();
    let chunks = compressed
        .chunks(512)
        .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::copy_from_slice(c)))
        .collect::<Vec<_>>();
    let stream = ReadyStream::new(chunks);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_ENCODING, "gzip"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// A stream over chunks that are ready (or errors), without a stream crate.
pub struct ReadyStream(std::vec::IntoIter<Result<axum::body::Bytes, std::io::Error>>);

impl ReadyStream {
    pub fn new(chunks: Vec<Result<axum::body::Bytes, std::io::Error>>) -> Self {
        Self(chunks.into_iter())
    }
}

impl futures_core::Stream for ReadyStream {
    type Item = Result<axum::body::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}
