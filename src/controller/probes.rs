//! The operator's own HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Context;

pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let m = &ctx.metrics;
    let body = format!(
        "# HELP dualwrite_operator_reconciles_total Reconciles started.\n# TYPE dualwrite_operator_reconciles_total counter\ndualwrite_operator_reconciles_total {}\n# HELP dualwrite_operator_reconcile_failures_total Reconciles that failed (retried with backoff).\n# TYPE dualwrite_operator_reconcile_failures_total counter\ndualwrite_operator_reconcile_failures_total {}\n",
        m.reconciles.load(Ordering::Relaxed),
        m.failures.load(Ordering::Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
