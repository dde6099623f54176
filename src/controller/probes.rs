//! The operator's own HTTP endpoints: `/healthz` (the process answers), `/readyz` (the watches
//! work: [`super::watches`]; 503 with what to fix otherwise) and `/metrics`.
//!
//! The reconcile counters live in the shared [`Context`]; a `prometheus-client` [`Collector`]
//! reads them at scrape time, so there is one set of counters, not a mirror of it.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Context, OperatorMetrics};

pub fn router(ctx: Arc<Context>) -> Router {
    let registry = Arc::new(registry(Arc::clone(&ctx), |c| &c.metrics));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || readyz(ctx.clone())))
        .route("/metrics", get(move || metrics(registry.clone())))
}

/// Reads the operator's counters at scrape time from wherever they live (the [`Context`] in the
/// operator, a bare [`OperatorMetrics`] in tests).
struct OperatorCollector<S> {
    source: Arc<S>,
    read: fn(&S) -> &OperatorMetrics,
}

impl<S> fmt::Debug for OperatorCollector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorCollector").finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> Collector for OperatorCollector<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let m = (self.read)(&self.source);
        // Base names: the encoder appends `_total` to counters.
        for (name, help, value) in [
            (
                "dualwrite_operator_reconciles",
                "Reconciles started.",
                &m.reconciles,
            ),
            (
                "dualwrite_operator_reconcile_failures",
                "Reconciles that failed (retried with backoff).",
                &m.failures,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, u64, u64>(&value.load(Ordering::Relaxed), None)?;
        }
        Ok(())
    }
}

/// The operator's registry: one collector over the counters `read` finds in `source`.
pub fn registry<S: Send + Sync + 'static>(
    source: Arc<S>,
    read: fn(&S) -> &OperatorMetrics,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(OperatorCollector { source, read }));
    registry
}

/// The `/metrics` page in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in the collector.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

async fn readyz(ctx: Arc<Context>) -> impl IntoResponse {
    match ctx.watches.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(registry: Arc<Registry>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        render(&registry),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_reads_the_live_counters() {
        let m = Arc::new(OperatorMetrics::default());
        let registry = registry(m.clone(), |m| m);
        m.reconciles.fetch_add(3, Ordering::Relaxed);
        m.failures.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            render(&registry),
            "# HELP dualwrite_operator_reconciles_total Reconciles started.\n\
             # TYPE dualwrite_operator_reconciles_total counter\n\
             dualwrite_operator_reconciles_total 3\n\
             # HELP dualwrite_operator_reconcile_failures_total Reconciles that failed (retried with backoff).\n\
             # TYPE dualwrite_operator_reconcile_failures_total counter\n\
             dualwrite_operator_reconcile_failures_total 1\n"
        );
    }
}
