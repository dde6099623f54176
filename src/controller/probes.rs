//! The operator's own HTTP endpoints: `/healthz` (the process answers), `/readyz` (the watches
//! work: [`super::watches`]; 503 with what to fix otherwise) and `/metrics`.
//!
//! The reconcile counters live in the shared [`Context`]; a `prometheus-client` [`Collector`]
//! reads them at scrape time, so there is one set of counters, not a mirror of it. The same
//! collector reads each pipeline's verdicts (`Ready`, the last consistency check) from the
//! controller's cache of pipelines: the relays export what they measure, the operator what it
//! decides. Those series carry `namespace` and `pipeline` labels (scrape them with
//! `honorLabels`, as the chart's ServiceMonitor does, so the target's own `namespace` does not
//! rename them).

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
use crate::api::DualWritePipeline;

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
            (
                "dualwrite_operator_api_writes",
                "Writes to the API server (apply, patch, delete, Event); none at rest.",
                &m.api_writes,
            ),
            (
                "dualwrite_operator_owned_compares",
                "Reconciles that built the owned objects and compared them with the cache (the others found none of their inputs changed).",
                &m.owned_compares,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, u64, u64>(&value.load(Ordering::Relaxed), None)?;
        }
        match m.pipelines.get() {
            Some(store) => encode_pipelines(&mut encoder, &store.state()),
            None => Ok(()),
        }
    }
}

/// A per-pipeline gauge: name, help, and its value for a pipeline (`None`: no series, e.g.
/// no consistency check has run yet).
type PipelineSeries = (
    &'static str,
    &'static str,
    fn(&DualWritePipeline) -> Option<i64>,
);

const PIPELINE_SERIES: [PipelineSeries; 3] = [
    (
        "dualwrite_pipeline_ready",
        "1 when the pipeline's Ready condition is True (every provider its strategy needs is healthy).",
        |p| {
            let ready = p.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
            Some(i64::from(ready.status == "True"))
        },
    ),
    (
        "dualwrite_pipeline_consistent",
        "1 when the last consistency check (dualwrite verify) found every provider holding the same messages, 0 when it found a difference.",
        |p| Some(i64::from(p.status.as_ref()?.consistency.as_ref()?.consistent)),
    ),
    (
        "dualwrite_pipeline_consistency_check_timestamp_seconds",
        "When the last consistency check ran (Unix time).",
        |p| Some(p.status.as_ref()?.consistency.as_ref()?.checked_at.0.as_second()),
    ),
];

fn encode_pipelines(
    encoder: &mut DescriptorEncoder,
    pipelines: &[Arc<DualWritePipeline>],
) -> fmt::Result {
    use kube::ResourceExt;
    for (name, help, value) in PIPELINE_SERIES {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for p in pipelines {
            let Some(v) = value(p) else { continue };
            let (namespace, pipeline) = (p.namespace().unwrap_or_default(), p.name_any());
            let labels = [
                ("namespace", namespace.as_str()),
                ("pipeline", pipeline.as_str()),
            ];
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
    }
    Ok(())
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
             dualwrite_operator_reconcile_failures_total 1\n\
             # HELP dualwrite_operator_api_writes_total Writes to the API server (apply, patch, delete, Event); none at rest.\n\
             # TYPE dualwrite_operator_api_writes_total counter\n\
             dualwrite_operator_api_writes_total 0\n\
             # HELP dualwrite_operator_owned_compares_total Reconciles that built the owned objects and compared them with the cache (the others found none of their inputs changed).\n\
             # TYPE dualwrite_operator_owned_compares_total counter\n\
             dualwrite_operator_owned_compares_total 0\n"
        );
    }

    #[test]
    fn exposition_has_each_pipelines_verdicts_and_drops_deleted_ones() {
        use kube::runtime::{reflector, watcher};
        let pipeline = |name: &str, status: &str| -> DualWritePipeline {
            serde_yaml::from_str(&format!(
                "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\n\
                 metadata: {{name: {name}, namespace: shop}}\n\
                 spec: {{providers: [{{name: a, type: memory}}]}}\n{status}"
            ))
            .unwrap()
        };
        let checked = pipeline(
            "orders",
            "status: {replicas: 1, conditions: [{type: Ready, status: 'False', reason: ProviderDown, message: m, lastTransitionTime: '2025-01-01T00:00:00Z'}], \
             consistency: {checkedAt: '2025-01-02T03:04:05Z', consistent: false, missing: {b: 3}}}",
        );
        let fresh = pipeline("payments", "");
        let (store, mut writer) = reflector::store();
        for p in [&checked, &fresh] {
            writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        }
        let m = Arc::new(OperatorMetrics::default());
        m.pipelines.set(store).unwrap();
        let registry = registry(m.clone(), |m| m);
        let text = render(&registry);
        for line in [
            "dualwrite_pipeline_ready{namespace=\"shop\",pipeline=\"orders\"} 0",
            "dualwrite_pipeline_consistent{namespace=\"shop\",pipeline=\"orders\"} 0",
            "dualwrite_pipeline_consistency_check_timestamp_seconds{namespace=\"shop\",pipeline=\"orders\"} 1735787045",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // No status yet: no series (absent, not a made-up 0).
        assert!(!text.contains("payments"), "{text}");
        writer.apply_watcher_event(&watcher::Event::Delete(checked));
        assert!(
            !render(&registry).contains("orders"),
            "a deleted pipeline's series go"
        );
    }
}
