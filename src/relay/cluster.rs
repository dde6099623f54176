//! The relay inside a cluster (`dualwrite relay --pipeline NS/NAME`): it reads its pipeline,
//! follows changes to it (strategy and provider list decided by the operator in the status), and
//! reports its own per-provider numbers (and any backlog on its disk of a provider it no longer
//! writes) under its pod's key of the pipeline's reports ConfigMap, the one object its Role may
//! write; the operator aggregates them into the status. The only part of the relay that knows
//! Kubernetes.
//!
//! Lifecycle: [`run`] starts three tasks (the ingest server, the follower of the pipeline, the
//! reporter) that all stop on the one cancellation token the process stops on. The server lets
//! in-flight requests finish and closes the providers; the reporter then writes one last report,
//! so the status ends with the final counters rather than those of up to an interval before.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{PipelineConfig, Relay};
use crate::api::{DualWritePipeline, DualWritePipelineSpec, ProviderReport, RelayReport};
use crate::composite::CompositeStats;

/// `NS/NAME` of the pipeline a relay serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for PipelineRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(Error::BadRef(s.to_string())),
        }
    }
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

/// This relay's report from the composite's stats, with a row for each backlog on its disk of
/// a provider it no longer writes (`orphaned`); `stopped` on the last report before it exits.
pub fn report(
    pod: &str,
    generation: Option<i64>,
    stats: &CompositeStats,
    orphaned: Vec<ProviderReport>,
    stopped: bool,
    now: Timestamp,
) -> RelayReport {
    let mut providers: Vec<ProviderReport> =
        stats.providers.iter().map(ProviderReport::from).collect();
    providers.extend(orphaned);
    RelayReport {
        name: pod.to_string(),
        reported_at: Time(now),
        strategy: stats.strategy,
        generation,
        stopped,
        started_at: None,
        accepted: None,
        providers,
    }
}

/// The backlogs on this relay's disk of providers its composite does not write (a migration
/// step or a rollback removed them): each stays on disk, replayed only once a step writes that
/// provider again, so it is reported (`orphaned`) and counts toward `backlogEmpty`. Empty ones
/// with nothing missed are left out. A store that cannot be listed is logged and yields none
/// (the composite's rows still go out).
pub fn orphaned_backlogs(
    store: &Arc<crate::handoff::HandoffStore>,
    written: &[&str],
) -> Vec<ProviderReport> {
    let backlogs = match store.backlogs_on_disk() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the backlogs on disk; orphaned backlogs are not reported");
            return Vec::new();
        }
    };
    backlogs
        .iter()
        .filter(|b| !written.contains(&b.provider()))
        .filter(|b| !b.is_empty() || b.missed() > 0)
        .map(|b| ProviderReport {
            name: b.provider().to_string(),
            healthy: false,
            reason: "NotWritten".into(),
            message: "no longer written by this relay; its backlog waits on disk until a step writes this provider again".into(),
            backlog: b.len(),
            needs_reconciliation: b.missed() > 0,
            orphaned: true,
            ..ProviderReport::default()
        })
        .collect()
}

/// Clears the needs-reconciliation flag of every backlog on disk whose misses all happened at
/// or before the time the operator says its provider was reconciled through
/// (`status.providers[].reconciledThrough`).
pub async fn apply_reconciled(store: &Arc<crate::handoff::HandoffStore>, p: &DualWritePipeline) {
    let Some(status) = &p.status else { return };
    let Ok(backlogs) = store.backlogs_on_disk() else {
        return;
    };
    for row in &status.providers {
        let Some(through) = &row.reconciled_through else {
            continue;
        };
        let Some(b) = backlogs.iter().find(|b| b.provider() == row.name) else {
            continue;
        };
        let through_ms = u64::try_from(through.0.as_millisecond()).unwrap_or(0);
        if b.missed() == 0 || b.last_missed_at().is_none_or(|at| at > through_ms) {
            continue;
        }
        match b.reset_missed_through(through_ms).await {
            Ok(true) => {
                tracing::info!(provider = %row.name, through = %through.0, "provider reconciled: needs-reconciliation cleared")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(provider = %row.name, error = %e, "cannot clear needs-reconciliation")
            }
        }
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

/// Checks the pipeline's effective spec and hands it to the relay, its Secret keys read under
/// `secrets_dir`.
async fn apply_pipeline(
    relay: &Relay,
    p: &DualWritePipeline,
    secrets_dir: &std::path::Path,
) -> Result<(), Error> {
    let config = PipelineConfig::try_from(&effective_spec(p))?.with_secrets_dir(secrets_dir);
    Ok(relay.apply(config).await?)
}

/// Why a relay in a cluster could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--pipeline {0:?}: expected NAMESPACE/NAME")]
    BadRef(String),
    #[error("cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {0}")]
    Connect(#[source] kube::Error),
    #[error("cannot read DualWritePipeline {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The pipeline's spec is not valid (each problem names its field).
    #[error("the pipeline is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(#[from] crate::api::SpecError),
    /// The pipeline's providers could not be built (the message names the provider).
    #[error(transparent)]
    Build(#[from] super::RelayError),
    #[error("ingest server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The ingest listener cannot start (port taken, TLS certificate or tokens unusable).
    #[error(transparent)]
    Ingest(#[from] super::listener::ListenerError),
    #[error("ingest server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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
    /// Where the Secret keys the pipeline references are mounted.
    pub secrets_dir: std::path::PathBuf,
}

/// This relay's name in the status: `--pod-name`/`POD_NAME`, else the host name (with a warning:
/// two relays on one host would overwrite each other's report).
pub fn pod_name(flag: Option<String>) -> String {
    flag.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
        tracing::warn!(name = %host, "POD_NAME is not set; reporting under the host name");
        host
    })
}

/// Connects to the Kubernetes API (in-cluster or KUBECONFIG) and runs the relay for `pipeline`
/// until `shutdown` is cancelled.
pub async fn run_in_cluster(
    pipeline: PipelineRef,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Connect)?;
    run(client, pipeline, options, shutdown).await
}

/// The last pipeline this relay ran, in its state directory: a relay restarted while the API
/// server is unreachable starts from it and keeps serving (reports resume once the API answers).
pub const KEPT_PIPELINE_FILE: &str = "last-pipeline.json";

/// The pipeline to start from: the API server's (kept in the state directory for the next
/// start), or, when the API server cannot be reached, the one kept there. An answer from the API
/// server (the pipeline is gone, access denied) is never overridden by the kept copy.
async fn starting_pipeline(
    api: &Api<DualWritePipeline>,
    pipeline: &PipelineRef,
    kept: Option<&std::path::Path>,
) -> Result<DualWritePipeline, Error> {
    match api.get(&pipeline.name).await {
        Ok(p) => {
            if let Some(path) = kept {
                keep_pipeline(path, &p);
            }
            Ok(p)
        }
        Err(source) => {
            let unreachable = !matches!(source, kube::Error::Api(_));
            let last = kept
                .filter(|_| unreachable)
                .and_then(|path| std::fs::read(path).ok())
                .and_then(|bytes| serde_json::from_slice::<DualWritePipeline>(&bytes).ok());
            match last {
                Some(p) => {
                    tracing::warn!(error = %source, "the Kubernetes API cannot be reached: starting from the pipeline kept in the state directory; reports resume once it answers");
                    Ok(p)
                }
                None => Err(Error::Read {
                    namespace: pipeline.namespace.clone(),
                    name: pipeline.name.clone(),
                    source,
                }),
            }
        }
    }
}

/// Writes `p` to `path` (via a temporary file and a rename, so a crash never leaves half a
/// file); a failure is only logged: the kept copy is a fallback, not the source of truth.
fn keep_pipeline(path: &std::path::Path, p: &DualWritePipeline) {
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(p)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not keep the pipeline in the state directory");
    }
}

/// Runs the relay for `pipeline` until `shutdown` is cancelled: the ingest server, a follower
/// of the pipeline's changes and a reporter of this relay's numbers, all stopped by one token.
pub async fn run(
    client: Client,
    pipeline: PipelineRef,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let api: Api<DualWritePipeline> = Api::namespaced(client.clone(), &pipeline.namespace);
    let kept = options
        .handoff
        .as_ref()
        .and_then(|store| store.path().parent())
        .map(|dir| dir.join(KEPT_PIPELINE_FILE));
    let p = starting_pipeline(&api, &pipeline, kept.as_deref()).await?;
    let config =
        PipelineConfig::try_from(&effective_spec(&p))?.with_secrets_dir(&options.secrets_dir);
    let composite = super::build_composite_with(&config, options.handoff.as_ref()).await?;
    let port = config.port(options.port);
    let relay = Relay::with_handoff(composite, config, options.handoff);
    let generation = Arc::new(AtomicI64::new(p.metadata.generation.unwrap_or(0)));
    // Bound (and TLS and tokens loaded) before anything is spawned: a start-up error stops the
    // relay at once.
    let server = super::listener::IngestServer::bind(relay.clone(), options.bind, port).await?;

    let server = tokio::spawn(super::serve_with(
        server,
        shutdown.clone().cancelled_owned(),
    ));
    let follower = tokio::spawn(follow(
        api.clone(),
        pipeline.name.clone(),
        kept,
        options.secrets_dir,
        relay.clone(),
        generation.clone(),
        shutdown.clone(),
    ));
    let reporter = tokio::spawn(report_loop(
        Reporter {
            api: Api::namespaced(client, &pipeline.namespace),
            name: pipeline.name,
            pod: options.pod,
            relay,
            generation,
            every: options.report_every,
        },
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    let served = server.await?;
    // The reporter sends a last report after the server finished: final counters.
    let _ = follower.await;
    let _ = reporter.await;
    served.map_err(Error::Serve)
}

/// Follows the pipeline until `stop`: every change is applied without dropping in-flight
/// messages; a change that cannot be applied is logged and the previous pipeline kept.
async fn follow(
    api: Api<DualWritePipeline>,
    name: String,
    kept: Option<std::path::PathBuf>,
    secrets_dir: std::path::PathBuf,
    relay: Arc<Relay>,
    generation: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            next = changes.next() => match next {
                Some(Ok(p)) => {
                    if let Some(store) = relay.handoff() {
                        apply_reconciled(store, &p).await;
                    }
                    let g = p.metadata.generation.unwrap_or(0);
                    match apply_pipeline(&relay, &p, &secrets_dir).await {
                        Ok(()) => {
                            generation.store(g, Ordering::Release);
                            if let Some(path) = &kept {
                                keep_pipeline(path, &p);
                            }
                        }
                        Err(e) => tracing::error!(pipeline = %p.name_any(), error = %e, "cannot apply the changed pipeline; keeping the previous one"),
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching the pipeline failed; retrying"),
                None => break,
            }
        }
    }
}

/// What the reporter needs: where to write, under which name, and what to read.
struct Reporter {
    /// The pipeline's reports ConfigMap (the relay's Role allows get/patch on it only).
    api: Api<ConfigMap>,
    name: String,
    pod: String,
    relay: Arc<Relay>,
    generation: Arc<AtomicI64>,
    every: Duration,
}

/// Reports this relay's numbers at a throttled interval (see [`should_report`]) until `stop`,
/// then once more with the final counters.
async fn report_loop(r: Reporter, stop: CancellationToken) {
    let manager = format!("dualwrite-relay-{}", r.pod);
    let heartbeat = r.every * 4;
    let map = crate::api::relay_reports_name(&r.name);
    let mut last: Option<(RelayReport, Timestamp)> = None;
    // A failing report is said once at warn (with what to fix), then at debug until one
    // succeeds: a relay that cannot report keeps serving, and its log is not flooded.
    let mut failing = false;
    // This process's incarnation: its counters began at zero then.
    let started_at = Time(Timestamp::now());
    let mut tick = tokio::time::interval(r.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = Timestamp::now();
        let composite = r.relay.composite();
        let stats = composite.stats_detailed();
        let orphaned = match r.relay.handoff() {
            Some(store) => {
                let written: Vec<&str> = stats.providers.iter().map(|p| p.name.as_str()).collect();
                orphaned_backlogs(store, &written)
            }
            None => Vec::new(),
        };
        let mut next = report(
            &r.pod,
            Some(r.generation.load(Ordering::Acquire)),
            &stats,
            orphaned,
            stopping,
            now,
        );
        next.started_at = Some(started_at.clone());
        next.accepted = Some(r.relay.metrics.accepted.load(Ordering::Relaxed));
        if stopping || should_report(last.as_ref(), &next, now, heartbeat) {
            let written =
                tokio::time::timeout(REPORT_TIMEOUT, write_report(&r.api, &map, &manager, &next))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
            match written {
                Ok(()) => {
                    if failing {
                        tracing::info!(configmap = %map, "reporting again");
                    }
                    failing = false;
                    last = Some((next, now));
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(configmap = %map, error = %e, "could not report: the operator creates this ConfigMap and lets the relay patch it (an operator of an earlier version does not); the relay keeps serving and retries every report interval");
                }
                Err(e) => tracing::debug!(configmap = %map, error = %e, "could not report"),
            }
        }
        if stopping {
            break;
        }
    }
}

/// Writes `report` under its pod's key of the reports ConfigMap `map` (a merge patch: the other
/// relays' keys are left as they are).
async fn write_report(
    api: &Api<ConfigMap>,
    map: &str,
    manager: &str,
    report: &RelayReport,
) -> Result<(), String> {
    let json = serde_json::to_string(report).map_err(|e| e.to_string())?;
    let patch = serde_json::json!({ "data": { report.name.clone(): json } });
    let params = kube::api::PatchParams {
        field_manager: Some(manager.to_string()),
        ..Default::default()
    };
    api.patch(map, &params, &kube::api::Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Deadline of one status report: a slow API server must not hold up the next one or shutdown.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composite::Strategy;

    /// A migration step removes memory-2 from the composite while its backlog still holds
    /// messages: the relay's report carries that backlog as orphaned (so the operator counts it
    /// toward backlogEmpty), and drops the row once the backlog is gone.
    #[tokio::test]
    async fn a_removed_providers_backlog_is_reported_as_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::handoff::HandoffStore::open(dir.path()).unwrap();
        let config = PipelineConfig::two_memory_queues();
        let composite = super::super::build_composite_with(&config, Some(&store))
            .await
            .unwrap();
        let relay = Relay::with_handoff(composite, config.clone(), Some(store.clone()));
        // The step removes memory-2; what it missed before (here written straight to its
        // backlog, as a failed write would have) stays on disk, and nothing replays it.
        let mut step = config.clone();
        step.providers.retain(|p| p.name == "memory-1");
        relay.apply(step).await.unwrap();
        let backlog = store.backlog("memory-2", config.handoff.limits).unwrap();
        for i in 0..4 {
            backlog
                .append(&crate::message::DataMessage::new("s", format!("m{i}")))
                .await
                .unwrap();
        }

        let stats = relay.composite().stats_detailed();
        let written: Vec<&str> = stats.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(written, ["memory-1"]);
        let orphaned = orphaned_backlogs(&store, &written);
        let r = report(
            "p-relay-0",
            Some(1),
            &stats,
            orphaned,
            false,
            Timestamp::now(),
        );
        let row = r
            .providers
            .iter()
            .find(|p| p.name == "memory-2")
            .expect("the removed provider's backlog is reported");
        assert!(row.orphaned);
        assert_eq!(row.backlog, 4, "the backlog on disk");

        let (seq, _) = backlog.peek(10).await.unwrap().pop().unwrap();
        backlog.remove_through(seq).await.unwrap();
        assert!(
            orphaned_backlogs(&store, &written).is_empty(),
            "empty: no row"
        );
    }

    /// `status.providers[].reconciledThrough` written by the operator reaches the relay's
    /// backlog store: misses up to it are cleared, a later one is kept.
    #[tokio::test]
    async fn reconciled_through_clears_the_flag_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::handoff::HandoffStore::open(dir.path()).unwrap();
        let limits = crate::handoff::Limits {
            max_messages: Some(1),
            max_age: None,
        };
        let b = store.backlog("kafka", limits).unwrap();
        b.append(&crate::message::DataMessage::new("s", "a"))
            .await
            .unwrap();
        let _ = b.append(&crate::message::DataMessage::new("s", "b")).await;
        assert!(b.needs_reconciliation());
        let missed_at = b.last_missed_at().unwrap() as i64;

        let pipeline = |through_ms: i64| {
            let mut p: DualWritePipeline = serde_yaml::from_str(
                "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: x}\nspec:\n  providers: [{name: kafka, type: memory}]\n",
            )
            .unwrap();
            let mut row =
                crate::api::ProviderStatus::new("kafka", crate::api::ProviderKind::Memory);
            row.reconciled_through = Some(Time(Timestamp::from_millisecond(through_ms).unwrap()));
            p.status = Some(crate::api::DualWritePipelineStatus {
                providers: vec![row],
                ..Default::default()
            });
            p
        };
        apply_reconciled(&store, &pipeline(missed_at - 1000)).await;
        assert!(
            b.needs_reconciliation(),
            "reconciled through a time before the miss"
        );
        apply_reconciled(&store, &pipeline(missed_at)).await;
        assert!(!b.needs_reconciliation(), "cleared");
    }

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
            stopped: false,
            started_at: None,
            accepted: None,
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
