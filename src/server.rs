//! The HTTP side of `apisync run`: `/metrics`, `/healthz`, `/readyz`.
//!
//! **Boundary:** it only reads shared state; it never starts or stops jobs.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::redact::Redactor;
use crate::store::Store;

/// A readiness probe must answer before the prober gives up (Kubernetes and
/// Docker default to a few seconds), so the database gets this long.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct ServerState {
    pub store: Store,
    pub metrics: PrometheusHandle,
    pub redactor: Redactor,
}

/// The routes, apart from serving them so tests can call them directly.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The process answers. No I/O: a slow database must not get a healthy
/// process restarted.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The database answers and the migrations are applied.
async fn readyz(State(state): State<ServerState>) -> (StatusCode, String) {
    match state.store.readiness(READY_TIMEOUT).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.redactor.redact(&reason)),
        ),
    }
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
