//! The relay inside a cluster (`dualwrite relay --pipeline NS/NAME`): it reads its pipeline,
//! follows changes to it (strategy and provider list decided by the operator in the status), and
//! reports its own per-provider numbers into the status, one entry per relay pod, written with
//! server-side apply under a field manager of its own. The only part of the relay that knows
//! Kubernetes.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use super::Relay;
use crate::api::{DualWritePipeline, DualWritePipelineSpec, ProviderReport, RelayReport};
use crate::composite::CompositeStats;

/// `NS/NAME` of the pipeline a relay serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for PipelineRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("--pipeline {s:?}: expected NAMESPACE/NAME")),
        }
    }
}

/// Checks the pipeline's effective spec and hands it to the relay.
async fn apply_pipeline(relay: &Relay, p: &DualWritePipeline) -> Result<(), String> {
    let config = super::PipelineConfig::try_from(&effective_spec(p)).map_err(|e| e.to_string())?;
    relay.apply(config).await.map_err(|e| e.to_string())
}

/// The spec the relay runs: the operator's decisions in the status (effective strategy, the
/// providers active in the current migration step) applied over the user's spec. Before the
/// operator has written a status, the spec as written.
pub fn effective_spec(p: &DualWritePipeline) -> DualWritePipelineSpec {
    let mut spec = p.spec.clone();
    if let Some(status) = &p.status {
        if let Some(strategy) = status.strategy {
            spec.strategy = strategy;
        }
        if let Some(active) = &status.active_providers {
            let kept: Vec<_> = spec
                .providers
                .iter()
                .filter(|x| active.contains(&x.name))
                .cloned()
                .collect();
            if !kept.is_empty() {
                spec.providers = kept;
            }
        }
    }
    spec.migration = None;
    spec
}

fn to_time(t: chrono::DateTime<chrono::Utc>) -> Option<Time> {
    Timestamp::from_microsecond(t.timestamp_micros())
        .ok()
        .map(Time)
}

/// This relay's report from the composite's stats.
pub fn report(
    pod: &str,
    generation: Option<i64>,
    stats: &CompositeStats,
    now: Timestamp,
) -> RelayReport {
    RelayReport {
        name: pod.to_string(),
        reported_at: Time(now),
        strategy: stats.strategy,
        generation,
        providers: stats
            .providers
            .iter()
            .map(|row| ProviderReport {
                name: row.name.clone(),
                healthy: row.health.healthy,
                reason: row.health.reason.clone(),
                message: row.health.message.clone(),
                since: to_time(row.health.since),
                published: row.stats.published,
                failed: row.stats.failed,
                backlog: row.stats.backlog,
                latency_p99_ms: (row.latency.count > 0).then_some(row.latency.p99_ms),
                needs_reconciliation: row.needs_reconciliation,
            })
            .collect(),
    }
}

/// Decides whether to write a report: when anything but the time changed, or when the last one
/// is a heartbeat old (so the operator can tell a live relay from a dead one).
pub fn should_report(
    last: Option<&(RelayReport, Timestamp)>,
    next: &RelayReport,
    now: Timestamp,
    heartbeat: Duration,
) -> bool {
    match last {
        None => true,
        Some((prev, at)) => {
            let mut a = prev.clone();
            a.reported_at = next.reported_at.clone();
            a != *next || now.duration_since(*at).unsigned_abs() >= heartbeat
        }
    }
}

/// How a relay in a cluster runs.
pub struct Options {
    /// This relay's name in the status (the pod name).
    pub pod: String,
    /// Address to listen on.
    pub bind: std::net::IpAddr,
    /// Overrides the pipeline's ingest port.
    pub port: Option<u16>,
    /// How often to consider reporting (see [`should_report`]).
    pub report_every: Duration,
    pub handoff: Option<Arc<crate::handoff::HandoffStore>>,
}

/// Runs the relay for `pipeline` until `shutdown` resolves.
pub async fn run(
    client: Client,
    pipeline: PipelineRef,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let Options {
        pod,
        bind,
        port: port_override,
        report_every,
        handoff,
    } = options;
    let api: Api<DualWritePipeline> = Api::namespaced(client, &pipeline.namespace);
    let p = api.get(&pipeline.name).await.map_err(|e| {
        format!(
            "cannot read DualWritePipeline {}/{}: {e}",
            pipeline.namespace, pipeline.name
        )
    })?;
    let spec = effective_spec(&p);
    let config = super::PipelineConfig::try_from(&spec).map_err(|e| e.to_string())?;
    let composite = super::build_composite_with(&config, handoff.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let port = config.port(port_override);
    let relay = Relay::with_handoff(composite, config, handoff);
    let generation = Arc::new(AtomicI64::new(p.metadata.generation.unwrap_or(0)));
    let addr = std::net::SocketAddr::new(bind, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(super::serve(
        relay.clone(),
        listener,
        stopped(stop_rx.clone()),
    ));

    // Follow the pipeline: every change is applied without dropping in-flight messages.
    let follower = {
        let (api, relay, generation, name) = (
            api.clone(),
            relay.clone(),
            generation.clone(),
            pipeline.name.clone(),
        );
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut changes = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    next = changes.next() => match next {
                        Some(Ok(p)) => {
                            let g = p.metadata.generation.unwrap_or(0);
                            match apply_pipeline(&relay, &p).await {
                                Ok(()) => generation.store(g, Ordering::Release),
                                Err(e) => tracing::error!(pipeline = %p.name_any(), error = %e, "cannot apply the changed pipeline; keeping the previous one"),
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "watching the pipeline failed; retrying"),
                        None => break,
                    }
                }
            }
        })
    };

    // Report this relay's numbers at a throttled interval.
    let reporter = {
        let (api, relay, generation, name, pod) = (
            api.clone(),
            relay.clone(),
            generation.clone(),
            pipeline.name.clone(),
            pod.clone(),
        );
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            let manager = format!("dualwrite-relay-{pod}");
            let heartbeat = report_every * 4;
            let mut last: Option<(RelayReport, Timestamp)> = None;
            let mut tick = tokio::time::interval(report_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(stop);
            loop {
                let stopping = tokio::select! {
                    _ = &mut stop => true,
                    _ = tick.tick() => false,
                };
                let now = Timestamp::now();
                let next = report(
                    &pod,
                    Some(generation.load(Ordering::Acquire)),
                    &relay.composite().stats_detailed(),
                    now,
                );
                if stopping || should_report(last.as_ref(), &next, now, heartbeat) {
                    let part = serde_json::json!({ "relays": [next] });
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        crate::api::apply_status(&api, &name, &manager, &part),
                    )
                    .await
                    {
                        Ok(Ok(_)) => last = Some((next, now)),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not report to the pipeline status")
                        }
                        Err(_) => tracing::warn!("reporting to the pipeline status timed out"),
                    }
                }
                if stopping {
                    break;
                }
            }
        })
    };

    shutdown.await;
    let _ = stop_tx.send(true);
    let served = server
        .await
        .map_err(|e| format!("ingest server task failed: {e}"))?;
    // The reporter sends a last report after the server finished: final counters.
    let _ = follower.await;
    let _ = reporter.await;
    served.map_err(|e| format!("ingest server failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composite::Strategy;

    #[test]
    fn pipeline_ref_parsing() {
        assert_eq!(
            "shop/orders".parse::<PipelineRef>().unwrap(),
            PipelineRef {
                namespace: "shop".into(),
                name: "orders".into()
            }
        );
        for bad in ["orders", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<PipelineRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn effective_spec_follows_the_operator_decision() {
        let mut p: DualWritePipeline = serde_yaml::from_str(
            "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: x}\nspec:\n  strategy: FailFast\n  providers: [{name: a, type: memory}, {name: b, type: memory}]\n",
        )
        .unwrap();
        assert_eq!(effective_spec(&p).strategy, Strategy::FailFast);
        p.status = Some(crate::api::DualWritePipelineStatus {
            strategy: Some(Strategy::BestEffort),
            active_providers: Some(vec!["b".into()]),
            ..Default::default()
        });
        let e = effective_spec(&p);
        assert_eq!(e.strategy, Strategy::BestEffort);
        assert_eq!(e.providers.len(), 1);
        assert_eq!(e.providers[0].name, "b");
    }

    #[test]
    fn reports_only_on_change_or_heartbeat() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let r = |published: u64, at: Timestamp| RelayReport {
            name: "pod".into(),
            reported_at: Time(at),
            strategy: Strategy::FailFast,
            generation: Some(1),
            providers: vec![ProviderReport {
                name: "a".into(),
                healthy: true,
                published,
                ..Default::default()
            }],
        };
        let hb = Duration::from_secs(60);
        let last = (r(1, t0), t0);
        let t10 = Timestamp::from_second(1_800_000_010).unwrap();
        let t70 = Timestamp::from_second(1_800_000_070).unwrap();
        assert!(should_report(None, &r(1, t0), t0, hb));
        assert!(
            !should_report(Some(&last), &r(1, t10), t10, hb),
            "nothing changed"
        );
        assert!(
            should_report(Some(&last), &r(2, t10), t10, hb),
            "a counter moved"
        );
        assert!(
            should_report(Some(&last), &r(1, t70), t70, hb),
            "heartbeat due"
        );
    }
}
