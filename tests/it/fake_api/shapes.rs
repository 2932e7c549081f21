//! Routes in the shapes of real API servers, whose quirks decide whether a
//! run is complete: what they answer past the last page, how they state a
//! total, where the next address is.
//!
//! | path      | modelled on                         | past the end                  |
//! |-----------|-------------------------------------|-------------------------------|
//! | `/drf`    | Django REST Framework `PageNumberPagination`: `?page=N&page_size=S` → `{"count", "next", "previous", "results"}` | 404 `{"detail": "Invalid page."}` |
//! | `/clamp`  | json-server 1.x: `?_page=N&_per_page=S` → `{"first", "prev", "next", "last", "pages", "items", "data"}` | the last page again |
//! | `/kinto`  | Kinto: `?_limit=L&_token=T` → `{"data"}`, the next URL in a `Next-Page` header, `Total-Records` only on HEAD | no `Next-Page` |

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Params, Shared, json_response, param, slice};

pub async fn drf(State(state): Shared, axum::extract::Query(params): Params, uri: Uri) -> Response {
    let mut s = state.lock().unwrap();
    let size = param(&params, "page_size", 100).clamp(1, 1000);
    let page = param(&params, "page", 1);
    let count = s.records.len();
    let pages = count.div_ceil(size).max(1);
    if page == 0 || page > pages {
        s.requests.push(uri.to_string());
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"detail": "Invalid page."}"#,
        )
            .into_response();
    }
    let results = slice(&mut s, &uri, (page - 1) * size, size);
    let link = |p: usize| format!("http://testserver/drf?page={p}");
    let next = (page < pages).then(|| link(page + 1));
    let previous = (page > 1).then(|| link(page - 1));
    json_response(
        &s,
        json!({ "count": count, "next": next, "previous": previous, "results": results }),
    )
}

pub async fn clamp(
    State(state): Shared,
    axum::extract::Query(params): Params,
    uri: Uri,
) -> Response {
    let mut s = state.lock().unwrap();
    let size = param(&params, "_per_page", 10).max(1);
    let items = s.records.len();
    let pages = items.div_ceil(size).max(1);
    // json-server 1.x: a page past the last is served as the last.
    let page = param(&params, "_page", 1).clamp(1, pages);
    let data = slice(&mut s, &uri, (page - 1) * size, size);
    let next = (page < pages).then_some(page + 1);
    let prev = (page > 1).then(|| page - 1);
    json_response(
        &s,
        json!({
            "first": 1, "prev": prev, "next": next, "last": pages,
            "pages": pages, "items": items, "data": data,
        }),
    )
}

pub async fn kinto(
    State(state): Shared,
    axum::extract::Query(params): Params,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    let limit = param(&params, "_limit", 25).max(1);
    let start = param(&params, "_token", 0);
    let total = s.records.len();
    if method == Method::HEAD {
        s.requests.push(format!("HEAD {uri}"));
        let mut response = StatusCode::OK.into_response();
        response
            .headers_mut()
            .insert("total-records", HeaderValue::from(total));
        return response;
    }
    let data = slice(&mut s, &uri, start, limit);
    let mut response = json_response(&s, json!({ "data": data }));
    if start + limit < total {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let next = format!(
            "http://{host}/kinto?_limit={limit}&_token={}",
            start + limit
        );
        response
            .headers_mut()
            .insert("next-page", HeaderValue::from_str(&next).unwrap());
    }
    response
}
