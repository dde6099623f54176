//! The control plane: reconciles each `DualWritePipeline` into the relay's StatefulSet,
//! Services, PodDisruptionBudget and RBAC (server-side apply under one field manager, owned through owner references), and
//! writes the status: provider rows aggregated from the relays' reports, the effective strategy,
//! and the Ready / Reconciling / Stalled / Degraded conditions.
//!
//! Decisions are pure functions over plain data, each tested with a table of cases; only
//! `reconcile` and this module's [`run`] do I/O.
//!
//! | module | owns |
//! |---|---|
//! | [`status`] | the whole next status and its Events, chaining the decisions below |
//! | [`rows`] | a row per provider, aggregated over the relays' reports |
//! | [`step`] | the migration step machine and its gates |
//! | [`fallback`] | the automatic fallback from FailFast to BestEffort and back |
//! | [`conditions`] | Ready, Reconciling, Stalled, Degraded |
//! | [`reason`] | every reason string the operator writes |
//! | [`resources`] | the owned objects (StatefulSet, Services, PodDisruptionBudget, the relay's and the consistency check's RBAC, the relays' reports and the verdict's ConfigMaps) |
//! | [`pods`] | relay pod failures and retained claims, from the pods' and claims' status |
//! | [`rollout`] | the bound on rollouts the operator starts of its own |
//! | [`scale`] | a scale-down held while a relay it removes holds a backlog |
//! | [`reconciled`] | through when a provider's misses are reconciled (a clean verify, an annotation) |
//! | `reconcile` | one reconcile's I/O |
//! | [`probes`] | the operator's health and metrics endpoints |
//! | [`owned`] | the caches of owned objects, and whether an owned object needs an apply |
//! | [`watches`] | whether the watches work (`/readyz`), and what to fix when they do not |
//! | [`task`] | a long-running task that ends on its own is an error (the process exits) |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::SignedDuration;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::{
    applier, trigger_owners, trigger_self, trigger_with, Action, ReconcileReason, ReconcileRequest,
};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};

use kube::{Api, Client, Resource, ResourceExt};

use crate::api::DualWritePipeline;

pub mod conditions;
pub mod fallback;
pub mod leader;
pub mod owned;
pub mod pods;
pub mod probes;
pub mod reason;
mod reconcile;
pub mod reconciled;
pub mod resources;
pub mod rollout;
pub mod rows;
pub mod scale;
pub mod status;
pub mod step;
pub mod task;
#[cfg(test)]
mod testing;
pub mod watches;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "dualwrite-operator";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the pipeline has no namespace")]
    NoNamespace,
    /// A reconcile outside `controller::run` (whose caches it reads).
    #[error("the controller is not running")]
    NotRunning,
    /// A watched kind never listed (RBAC, a missing API): decisions would read an empty cache.
    #[error("the operator's cache of {} has not listed (see /readyz for why: RBAC?); not deciding from an empty cache", .0.join(", "))]
    NotListed(Vec<&'static str>),
    /// Applying an owned object failed; the objects after it in the apply order were not applied.
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace => "no_namespace",
            Error::NotRunning => "not_running",
            Error::NotListed(_) => "not_listed",
            Error::Apply { .. } => "apply",
        }
    }
}

/// Settings of the operator, parsed once.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of the relays (the operator's own, unless a pipeline overrides it).
    pub relay_image: String,
    /// Periodic resync: notices stale relays and broker restarts without an event.
    pub resync: Duration,
    /// A relay report older than this no longer counts for health.
    pub stale_after: Duration,
    /// FailFast refusing every message for this long marks the pipeline Stalled.
    pub stall_after: Duration,
    /// Reporter instance for Events (the pod name).
    pub instance: Option<String>,
}

/// Shared state of the reconciler.
pub struct Context {
    client: Client,
    recorder: Recorder,
    /// Who records the Events (for the one-off recorders of [`reconcile`]'s object changes).
    reporter: Reporter,
    settings: Settings,
    /// Consecutive failures per pipeline, for exponential backoff (reset on success).
    failures: Mutex<HashMap<String, u32>>,
    /// Pipelines whose relays roll out a template the operator changed of its own (bounded).
    /// A std Mutex: held for a few map operations, never across an `.await`.
    rollouts: Mutex<rollout::Slots>,
    /// Per pipeline, the status this operator last wrote and the resourceVersion the write
    /// returned. The watch cache may hand a reconcile an older copy (a relay's report triggers
    /// it before the write comes back through the watch); the Events are decided against the
    /// previous status, so an older one would record a transition twice ([`Context::newest`]).
    written: Mutex<HashMap<String, (u64, crate::api::DualWritePipelineStatus)>>,
    pub metrics: OperatorMetrics,
    /// Whether the watches work (`/readyz`).
    pub watches: watches::WatchHealth,
    /// The caches of the running controller (`None` outside [`run`]). A std Mutex: held to
    /// clone the `Arc`, never across an `.await`.
    cache: Mutex<Option<Arc<owned::OwnedCache>>>,
    /// Pipelines (by uid) known to have no Deployment left from an operator before
    /// StatefulSets: not looked up again.
    no_legacy_deployment: Mutex<std::collections::HashSet<String>>,
    /// Per pipeline, what its owned objects were last compared against when every one was
    /// found as wanted (see [`owned::ApplyInputs`]). A std Mutex: held for a few cache
    /// lookups, never across an `.await`.
    applied: Mutex<HashMap<String, owned::ApplyInputs>>,
}

/// Counters served on the operator's `/metrics`.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    pub reconciles: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    /// Requests that write to the API server (apply, patch, delete, Event), counted where the
    /// reconciler makes them: at rest this stays still.
    pub api_writes: std::sync::atomic::AtomicU64,
    /// Reconciles that built the owned objects and compared them with the cache; the others
    /// found every input as it was when the objects were last found as wanted
    /// ([`owned::ApplyInputs`]). At rest this stays still.
    pub owned_compares: std::sync::atomic::AtomicU64,
    /// The controller's cache of pipelines, set once the controller starts: `/metrics` reads
    /// each pipeline's verdicts (Ready, consistency) from it at scrape time, so a deleted
    /// pipeline's series go with it.
    pub pipelines: std::sync::OnceLock<kube::runtime::reflector::Store<DualWritePipeline>>,
}

impl OperatorMetrics {
    /// One more write to the API server.
    fn wrote(&self) {
        self.api_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: settings.instance.clone(),
        };
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Arc::new(Self {
            client,
            recorder,
            reporter,
            settings,
            failures: Mutex::default(),
            rollouts: Mutex::default(),
            written: Mutex::default(),
            metrics: OperatorMetrics::default(),
            watches: watches::WatchHealth::default(),
            cache: Mutex::default(),
            no_legacy_deployment: Mutex::default(),
            applied: Mutex::default(),
        })
    }
}

impl Context {
    /// `p` with the status this operator last wrote, when that write is newer than the cached
    /// copy (a higher resourceVersion; one that is not a number leaves `p` as it is).
    /// Once the cache holds that write (or a newer one), the copy kept of it is dropped: the
    /// cache never goes back, and a thousand pipelines' statuses kept twice cost megabytes.
    fn newest(&self, p: Arc<DualWritePipeline>) -> Arc<DualWritePipeline> {
        let cached = resource_version(&p);
        let key = key(&p);
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match (written.get(&key), cached) {
            (Some((rv, status)), Some(cached)) if *rv > cached => {
                let mut newer = (*p).clone();
                newer.status = Some(status.clone());
                Arc::new(newer)
            }
            (Some(_), Some(_)) => {
                written.remove(&key);
                p
            }
            _ => p,
        }
    }

    /// Forgets everything kept per pipeline (the status last written, the failure count, the
    /// legacy-Deployment check) and frees its rollout slot: called when the pipeline is being
    /// deleted (its reconcile sees a deletion timestamp) and when the watch sees it gone (a
    /// pipeline without finalizers may vanish without a reconcile seeing it deleting).
    fn forget(&self, p: &DualWritePipeline) {
        let key = key(p);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.rollouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(&key);
        if let Some(uid) = &p.metadata.uid {
            self.no_legacy_deployment
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(uid);
        }
    }

    /// Whether the owned objects of `pipeline` were last found as wanted against exactly these
    /// inputs ([`owned::ApplyInputs::holds`]).
    fn inputs_unchanged(
        &self,
        pipeline: &str,
        version: &str,
        replicas: i32,
        cache: &owned::OwnedCache,
        ns: &str,
    ) -> bool {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pipeline)
            .is_some_and(|inputs| inputs.holds(version, replicas, cache, ns))
    }

    /// Records what the owned objects of `pipeline` were found as wanted against, or forgets
    /// it (`None`: something was applied, read afresh or held).
    fn record_applied_inputs(&self, pipeline: &str, inputs: Option<owned::ApplyInputs>) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        match inputs {
            Some(inputs) => applied.insert(pipeline.to_string(), inputs),
            None => applied.remove(pipeline),
        };
    }

    /// Whether `pipeline` holds a rollout slot (refreshed by each of its reconciles).
    fn holds_rollout_slot(&self, pipeline: &str) -> bool {
        self.rollouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held()
            .contains(&pipeline)
    }

    /// Remembers the status a write returned (see [`Context::newest`]).
    fn wrote(&self, p: &DualWritePipeline) {
        if let (Some(rv), Some(status)) = (resource_version(p), &p.status) {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key(p), (rv, status.clone()));
        }
    }
}

fn resource_version(p: &DualWritePipeline) -> Option<u64> {
    p.metadata.resource_version.as_deref()?.parse().ok()
}

/// Exponential backoff for the n-th consecutive failure: 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(9);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(300))
}

fn key(p: &DualWritePipeline) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// An Event a decision calls for; the reconciler records it on the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineEvent {
    pub type_: EventType,
    /// One of the constants in [`reason`].
    pub reason: &'static str,
    /// For people (`kubectl describe`, `kubectl events`).
    pub note: String,
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `4m30s`: a span as people read it (a negative one, from a clock gone backwards, as `0s`).
pub fn human(d: SignedDuration) -> String {
    crate::duration::format(Duration::try_from(d).unwrap_or_default())
}

fn error_policy(p: Arc<DualWritePipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key(&p)).or_default();
        *n += 1;
        *n
    };
    let delay = backoff(n);
    tracing::warn!(pipeline = %key(&p), error = %error, kind = error.metric_label(), attempt = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// An Api over one namespace, or over all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` resolves. A watch error goes to [`watches`] (logged at
/// warn with what to fix, `/readyz` not ready until a check passes); each watch is retried with
/// backoff meanwhile.
///
/// Built from kube's `applier` rather than `Controller::owns`: each watch of an owned kind
/// feeds a reflector store ([`owned`]) first and triggers the owner's reconcile after, so the
/// reconcile compares what it wants with a cache that already holds the change that woke it,
/// and makes no request at all when nothing differs.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (client, ns) = (&ctx.client, namespace.as_deref());
    let owned_config =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=dualwrite-operator");
    let (pipelines, writer) = reflector::store::<DualWritePipeline>();
    // Set once per process; a second `run` (tests, a new Lease term) keeps the first cache.
    let _ = ctx.metrics.pipelines.set(pipelines.clone());
    let mut triggers = futures::stream::SelectAll::new();
    triggers.push(
        trigger_self(
            watcher::watcher(
                scoped::<DualWritePipeline>(client, ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(owned::trim)
            .reflect(writer)
            .inspect({
                let ctx = Arc::clone(&ctx);
                move |event| {
                    if let Ok(watcher::Event::Delete(p)) = event {
                        ctx.forget(p);
                    }
                }
            })
            .applied_objects(),
            (),
        )
        .boxed(),
    );
    macro_rules! owned_kind {
        ($kind:ty) => {{
            let (store, writer) = reflector::store::<$kind>();
            triggers.push(
                trigger_owners(
                    watcher::watcher(scoped::<$kind>(client, ns), owned_config.clone())
                        .default_backoff()
                        .modify(owned::trim)
                        .reflect(writer)
                        .touched_objects(),
                    (),
                    (),
                )
                .boxed(),
            );
            store
        }};
    }
    // Relay pods (owned by the StatefulSet) and their claims (owned by nobody) name their
    // pipeline in a label: their failures reach the status as soon as the kubelet reports them.
    macro_rules! labelled_kind {
        ($kind:ty, $trim:path) => {{
            let (store, writer) = reflector::store::<$kind>();
            triggers.push(
                trigger_with(
                    watcher::watcher(scoped::<$kind>(client, ns), owned_config.clone())
                        .default_backoff()
                        .modify($trim)
                        .reflect(writer)
                        .touched_objects(),
                    |obj: $kind| {
                        labelled_pipeline(&obj).map(|obj_ref| ReconcileRequest {
                            obj_ref,
                            reason: ReconcileReason::RelatedObjectUpdated {
                                obj_ref: Box::new(ObjectRef::from_obj(&obj).erase()),
                            },
                        })
                    },
                )
                .boxed(),
            );
            store
        }};
    }
    let cache = Arc::new(owned::OwnedCache {
        statefulsets: owned_kind!(StatefulSet),
        services: owned_kind!(Service),
        pdbs: owned_kind!(PodDisruptionBudget),
        service_accounts: owned_kind!(ServiceAccount),
        roles: owned_kind!(Role),
        role_bindings: owned_kind!(RoleBinding),
        // The relays' reports and the consistency verdict: a change reconciles its pipeline,
        // which recomputes the status (the owned objects compare equal: nothing is applied).
        config_maps: owned_kind!(ConfigMap),
        // The scheduled consistency check: edited or deleted by hand, it is put back.
        cron_jobs: owned_kind!(CronJob),
        // Only what `pods` and `reconcile::list_relays` read is kept.
        pods: labelled_kind!(Pod, owned::trim_pod),
        claims: labelled_kind!(PersistentVolumeClaim, owned::trim_claim),
    });
    *ctx.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(cache);
    let queue = triggers.take_until(shutdown);
    applier(
        |p, ctx| Box::pin(reconcile::reconcile(p, ctx)),
        error_policy,
        Arc::clone(&ctx),
        pipelines,
        queue,
        // Trailing-edge debounce: the triggers of one burst (a relay report, the reflectors'
        // echoes of the objects a reconcile applied, pods changing together) make one
        // reconcile and at most one status write, still well under a second after a change.
        kube::runtime::Config::default().debounce(DEBOUNCE),
    )
    .for_each(|result| {
        match result {
            Err(kube::runtime::controller::Error::QueueError(e)) => ctx.watches.watch_failed(&e),
            // Reconcile failures are logged by `error_policy`.
            Err(e) => tracing::debug!(error = %e, "controller event"),
            Ok(_) => {}
        }
        futures::future::ready(())
    })
    .await;
    *ctx.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// How long the triggers of one pipeline are gathered before its reconcile.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The pipeline an object names in its `dualwrite.io/pipeline` label (a relay pod, a claim).
fn labelled_pipeline<K: Resource>(obj: &K) -> Option<ObjectRef<DualWritePipeline>> {
    let ns = obj.meta().namespace.as_deref()?;
    let name = obj.meta().labels.as_ref()?.get("dualwrite.io/pipeline")?;
    Some(ObjectRef::new(name).within(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_status_written_is_kept_only_until_the_cache_holds_it() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let ctx = Context::new(
            client,
            Settings {
                relay_image: "relay".into(),
                resync: Duration::from_secs(30),
                stale_after: Duration::from_secs(60),
                stall_after: Duration::from_secs(60),
                instance: None,
            },
        );
        let pipeline = |rv: &str, generation: i64| {
            let mut p: DualWritePipeline = serde_yaml::from_str(
                "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\n\
                 metadata: {name: p, namespace: shop}\n\
                 spec: {providers: [{name: a, type: memory}]}\n",
            )
            .unwrap();
            p.metadata.resource_version = Some(rv.into());
            p.status = Some(crate::api::DualWritePipelineStatus {
                observed_generation: Some(generation),
                ..Default::default()
            });
            p
        };
        let observed = |p: &DualWritePipeline| p.status.as_ref().unwrap().observed_generation;
        ctx.wrote(&pipeline("5", 2));
        // The cache is behind the write: the written status.
        assert_eq!(observed(&ctx.newest(Arc::new(pipeline("4", 1)))), Some(2));
        assert_eq!(ctx.written.lock().unwrap().len(), 1);
        // The cache holds it: the cached copy, and the kept one is dropped.
        assert_eq!(observed(&ctx.newest(Arc::new(pipeline("5", 2)))), Some(2));
        assert!(ctx.written.lock().unwrap().is_empty());
        assert_eq!(observed(&ctx.newest(Arc::new(pipeline("6", 3)))), Some(3));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let got: Vec<u64> = [1, 2, 3, 4, 9, 10, 50]
            .iter()
            .map(|n| backoff(*n).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 256, 300, 300]);
    }

    #[test]
    fn human_durations() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (270, "4m30s"),
            (3600, "1h"),
            (3900, "1h5m"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(human(SignedDuration::from_secs(secs)), want);
        }
    }
}
