//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz` on one port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::metrics::Metrics;

/// What `/readyz` reports: rules loaded and the API server reached at least once. A standby
/// replica (not the leader) is ready too: it is healthy and can take over.
#[derive(Default)]
pub struct Readiness {
    pub config_loaded: AtomicBool,
    pub api_reached: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.config_loaded.load(Ordering::Relaxed) && self.api_reached.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// Binds the admin server; the returned future serves until `shutdown` resolves.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState { metrics, readiness });
    let serve = async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "admin server stopped");
        }
    };
    Ok((local, serve))
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    state
        .metrics
        .runtime_tasks
        .set(i64::try_from(alive).unwrap_or(i64::MAX));
    // Encoding takes tens of milliseconds with thousands of rules: off the runtime thread,
    // so rule ticks are not held up by a scrape.
    let metrics = state.metrics.clone();
    let body = tokio::task::spawn_blocking(move || metrics.encode())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn ready_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
