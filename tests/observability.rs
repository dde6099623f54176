//! The chart's alert rules and Grafana dashboard name only series that the relay and the
//! operator really export: a renamed metric fails here, not silently on a dashboard. (The
//! rules themselves are checked and unit-tested by promtool: hack/check-prometheus-rules.)

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use dualwrite::api::DualWritePipeline;
use dualwrite::controller::{probes, OperatorMetrics};
use dualwrite::relay::{self, metrics, PipelineConfig, Relay};
use kube::runtime::{reflector, watcher};

/// Every series name an exposition can hold: counters carry `_total` already; a histogram
/// `h` is read as `h_bucket`, `h_sum` and `h_count`.
fn series_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// The `dualwrite_…` names a file mentions.
fn mentioned(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let re = regex::Regex::new(r"\bdualwrite_[a-z0-9_]*[a-z0-9]").unwrap();
    re.find_iter(&text)
        .map(|m| m.as_str().to_string())
        .collect()
}

#[tokio::test]
async fn rules_and_dashboard_name_only_exported_series() {
    let config = PipelineConfig::two_memory_queues();
    let composite = relay::build_composite(&config).await.unwrap();
    let relay = Relay::new(composite, config);
    let mut exported = series_names(&metrics::render(&metrics::registry(relay)));

    let pipeline: DualWritePipeline = serde_yaml::from_str(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\n\
         metadata: {name: orders, namespace: shop}\n\
         spec: {providers: [{name: a, type: memory}]}\n\
         status: {replicas: 1, consistency: {checkedAt: '2025-01-02T03:04:05Z', consistent: true}}\n",
    )
    .unwrap();
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(pipeline));
    let operator = Arc::new(OperatorMetrics::default());
    operator.pipelines.set(store).unwrap();
    exported.extend(series_names(&probes::render(&probes::registry(
        operator,
        |m| m,
    ))));

    for file in [
        "charts/dualwrite-operator/templates/prometheusrule.yaml",
        "charts/dualwrite-operator/files/grafana-dashboard.json",
        "tests/prometheus/alerts.test.yaml",
    ] {
        let names = mentioned(file);
        assert!(!names.is_empty(), "{file} names no dualwrite series");
        let unknown: Vec<_> = names.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names series nothing exports: {unknown:?}\nexported: {exported:?}"
        );
    }
}
