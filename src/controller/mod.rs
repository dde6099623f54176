//! The control plane: reconciles each `DualWritePipeline` into the relay's Deployment, Service
//! and RBAC (server-side apply under one field manager, owned through owner references), and
//! writes the status: provider rows aggregated from the relays' reports, the effective strategy,
//! and the Ready / Reconciling / Stalled / Degraded conditions.
//!
//! Decisions (aggregation, conditions) are pure functions in [`status`]; this module does I/O.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{DualWritePipeline, DualWritePipelineStatus};

pub mod leader;
pub mod migration;
pub mod probes;
pub mod resources;
pub mod status;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "dualwrite-operator";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the pipeline has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// Settings of the operator, parsed once.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of the relay Deployments (the operator's own, unless a pipeline overrides it).
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
    settings: Settings,
    /// Consecutive failures per pipeline, for exponential backoff (reset on success).
    failures: Mutex<HashMap<String, u32>>,
    pub metrics: OperatorMetrics,
}

/// Counters served on the operator's `/metrics`.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    pub reconciles: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: settings.instance.clone(),
            },
        );
        Arc::new(Self {
            client,
            recorder,
            settings,
            failures: Mutex::default(),
            metrics: OperatorMetrics::default(),
        })
    }
}

/// Exponential backoff for the n-th consecutive failure: 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(9);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(300))
}

fn key(p: &DualWritePipeline) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

async fn publish_event(
    ctx: &Context,
    p: &DualWritePipeline,
    type_: EventType,
    reason: &str,
    note: String,
) {
    // kube's recorder folds Events with the same (reason, action, object) into one series and
    // keeps the first note; an action derived from the note keeps each distinct change (another
    // kind created, another strategy flip) its own Event. The API caps action at 128 bytes.
    let action: String = note.chars().take(100).collect();
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action,
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &p.object_ref(&())).await {
        tracing::warn!(pipeline = %key(p), error = %e, "could not record an Event");
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Change {
    Created,
    Updated,
    Unchanged,
}

/// Server-side applies `obj` and says whether that created or changed it.
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<Change, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let before = api.get_opt(&name).await?;
    let after = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    Ok(match before {
        None => Change::Created,
        Some(b) if b.resource_version() != after.resource_version() => Change::Updated,
        Some(_) => Change::Unchanged,
    })
}

async fn apply_owned(p: &DualWritePipeline, ns: &str, ctx: &Context) -> Result<(), Error> {
    let c = &ctx.client;
    let d = resources::deployment(p, &ctx.settings.relay_image);
    let changes = [
        (
            "ServiceAccount",
            apply(c, ns, &resources::service_account(p)).await?,
        ),
        ("Role", apply(c, ns, &resources::role(p)).await?),
        (
            "RoleBinding",
            apply(c, ns, &resources::role_binding(p)).await?,
        ),
        ("Deployment", apply(c, ns, &d).await?),
        ("Service", apply(c, ns, &resources::service(p)).await?),
    ];
    let name = resources::relay_name(&p.name_any());
    for (kind, change) in changes {
        let (reason, verb) = match change {
            Change::Created => ("Created", "created"),
            Change::Updated => ("Updated", "updated"),
            Change::Unchanged => continue,
        };
        tracing::info!(pipeline = %key(p), kind, name = %name, "{verb}");
        publish_event(
            ctx,
            p,
            EventType::Normal,
            reason,
            format!("{kind} {name} {verb}"),
        )
        .await;
    }
    Ok(())
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// Whether every fresh relay has reported since the current step began, running the strategy
/// the operator decided: only then do the step's gates judge what the relays did in it.
fn relays_in_step(
    prev: &DualWritePipelineStatus,
    now: Timestamp,
    stale_after: SignedDuration,
) -> Result<(), String> {
    let Some(current) = &prev.migration else {
        return Ok(());
    };
    let fresh: Vec<_> = prev
        .relays
        .iter()
        .filter(|r| status::is_fresh(r, now, stale_after))
        .collect();
    if fresh.is_empty() {
        return Err("no relay has reported recently".into());
    }
    for r in fresh {
        if r.reported_at.0 <= current.step_started_at.0 {
            return Err(format!(
                "relay {} has not reported since the step began",
                r.name
            ));
        }
        if Some(r.strategy) != prev.strategy {
            return Err(format!("relay {} still runs {}", r.name, r.strategy));
        }
    }
    Ok(())
}

/// Computes the whole status from the pipeline, its previous status and `now`, plus the Events
/// (reason, note) its decisions call for. Pure: the reconciler does the I/O.
pub fn next_status(
    p: &DualWritePipeline,
    settings: &Settings,
    now: Timestamp,
) -> (DualWritePipelineStatus, Vec<(&'static str, String)>) {
    let prev = p.status.clone().unwrap_or_default();
    let generation = p.metadata.generation.unwrap_or(0);
    let invalid = p.spec.validate().err().map(|e| e.join("; "));
    let stale_after = signed(settings.stale_after);
    let rows =
        status::aggregate_providers(&p.spec, &prev.relays, &prev.providers, now, stale_after);
    let mut events = Vec::new();

    // The migration step (if any) decides the strategy and the providers written; the automatic
    // fallback may then relax FailFast to BestEffort while a provider is down.
    let all: Vec<String> = p.spec.providers.iter().map(|x| x.name.clone()).collect();
    let (step_strategy, active, read_from, migration, migrating, fallback_after) = match &p
        .spec
        .migration
    {
        Some(m) if invalid.is_none() => {
            let input = migration::StepInput {
                relays_in_step: relays_in_step(&prev, now, stale_after),
                migration: m,
                current: prev.migration.as_ref(),
                providers: &rows,
                consistency: prev.consistency.as_ref(),
                now,
            };
            let decision = migration::decide_step(&input);
            let next = migration::next_migration_status(&input, &decision);
            let (strategy, active, read_from) = migration::step_view(m, decision.step, &all);
            if decision.moved {
                events.push((
                    "StepChanged",
                    format!(
                        "step {} ({}), {strategy}: {} — {}",
                        decision.step, next.step_name, decision.reason, decision.message
                    ),
                ));
            }
            let fallback_after = m
                .fallback_after
                .as_deref()
                .and_then(|t| crate::api::parse_duration("spec.migration.fallbackAfter", t).ok())
                .map(signed);
            (
                strategy,
                active,
                read_from,
                Some(next),
                decision.moved,
                fallback_after,
            )
        }
        _ => (
            p.spec.strategy,
            all.clone(),
            all.first().cloned(),
            None,
            false,
            None,
        ),
    };
    let fallback_input = migration::FallbackInput {
        strategy: step_strategy,
        fallback_after,
        active: &active,
        providers: &rows,
        previous: prev.fallback.as_ref(),
        now,
    };
    let (mut strategy, mut fallback) = migration::decide_fallback(&fallback_input);
    if let Some(event) = migration::fallback_event(&fallback_input, fallback.as_ref()) {
        events.push(event);
    }
    let (mut active, mut read_from, mut migration) = (active, read_from, migration);
    if invalid.is_some() && prev.strategy.is_some() {
        // An invalid spec (one the CRD's rules let through) changes nothing that runs: the
        // relays keep the strategy, providers and migration step they had, and Stalled says why.
        strategy = prev.strategy.unwrap_or(strategy);
        active = prev.active_providers.clone().unwrap_or(active);
        read_from = prev.read_from.clone();
        migration = prev.migration.clone();
        fallback = prev.fallback.clone();
    }

    let fresh: Vec<_> = prev
        .relays
        .iter()
        .filter(|r| status::is_fresh(r, now, stale_after))
        .collect();
    let on_generation = fresh
        .iter()
        .filter(|r| r.generation == Some(generation))
        .count();
    // FailFast has been blocked since Ready last turned False for want of providers.
    let blocked_since = prev
        .conditions
        .iter()
        .find(|c| {
            c.type_ == status::READY
                && c.status == "False"
                && c.reason == status::reason::PROVIDERS_NOT_READY
        })
        .map(|c| c.last_transition_time.0);
    let input = status::ConditionInput {
        generation,
        invalid,
        strategy,
        active: &active,
        providers: &rows,
        fresh_relays: fresh.len() as i32,
        relays_on_generation: on_generation as i32,
        desired_relays: p.spec.relay.as_ref().and_then(|r| r.replicas).unwrap_or(1),
        blocked_since,
        now,
        stall_after: signed(settings.stall_after),
        migrating,
    };
    let conditions = status::compute_conditions(&input, &prev.conditions);
    let next = DualWritePipelineStatus {
        observed_generation: Some(generation),
        strategy: Some(strategy),
        active_providers: Some(active),
        read_from,
        replicas: fresh.len() as i32,
        selector: Some(format!("dualwrite.io/pipeline={}", p.name_any())),
        published: rows.iter().map(|r| r.published).sum(),
        backlog: rows.iter().map(|r| r.backlog).sum(),
        summary: Some(status::summary(&rows)),
        providers: rows,
        migration,
        fallback,
        consistency: None, // owned by `dualwrite verify`; never written by the operator
        relays: Vec::new(), // owned by the relays; never written by the operator
        conditions,
    };
    (next, events)
}

async fn reconcile(p: Arc<DualWritePipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .reconciles
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = p.namespace().ok_or(Error::NoNamespace)?;
    if p.metadata.deletion_timestamp.is_some() {
        // Owned objects go with their owner through garbage collection.
        return Ok(Action::await_change());
    }
    let invalid = p.spec.validate().err();
    if invalid.is_none() {
        apply_owned(&p, &ns, &ctx).await?;
    }
    let (next, events) = next_status(&p, &ctx.settings, Timestamp::now());
    let prev = p.status.clone().unwrap_or_default();
    for (reason, note) in events {
        publish_event(&ctx, &p, EventType::Normal, reason, note).await;
    }
    if let (Some(before), Some(after)) = (prev.strategy, next.strategy) {
        if before != after {
            publish_event(
                &ctx,
                &p,
                EventType::Normal,
                "StrategyChanged",
                format!("strategy {before} → {after}"),
            )
            .await;
        }
    }
    if let Some(errs) = invalid {
        publish_event(
            &ctx,
            &p,
            EventType::Warning,
            status::reason::INVALID_SPEC,
            errs.join("; "),
        )
        .await;
    }
    let api: Api<DualWritePipeline> = Api::namespaced(ctx.client.clone(), &ns);
    crate::api::apply_status(&api, &p.name_any(), MANAGER, &next).await?;
    prune_gone_relays(&api, &p, &ctx.settings).await?;
    ctx.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key(&p));
    Ok(Action::requeue(ctx.settings.resync))
}

/// Relay reports this much older than the staleness limit belong to pods that are gone: they
/// are removed so the status does not grow with every rollout.
const PRUNE_AFTER_STALE: u32 = 4;

/// Removes reports of relays gone for long (`PRUNE_AFTER_STALE` × stale-after). A JSON patch
/// with a `test` per entry: a relay writing its entry at the same moment makes the patch fail
/// harmlessly (retried next reconcile) instead of removing the wrong entry.
async fn prune_gone_relays(
    api: &Api<DualWritePipeline>,
    p: &DualWritePipeline,
    settings: &Settings,
) -> Result<(), Error> {
    let Some(status) = &p.status else {
        return Ok(());
    };
    let limit = signed(settings.stale_after * PRUNE_AFTER_STALE);
    let now = Timestamp::now();
    let gone: Vec<(usize, &str)> = status
        .relays
        .iter()
        .enumerate()
        .filter(|(_, r)| now.duration_since(r.reported_at.0) > limit)
        .map(|(i, r)| (i, r.name.as_str()))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    // From the highest index down, so earlier removals do not shift later ones.
    let ops: Vec<serde_json::Value> = gone
        .iter()
        .rev()
        .flat_map(|(i, name)| {
            [
                serde_json::json!({"op": "test", "path": format!("/status/relays/{i}/name"), "value": name}),
                serde_json::json!({"op": "remove", "path": format!("/status/relays/{i}")}),
            ]
        })
        .collect();
    let patch = serde_json::from_value(serde_json::Value::Array(ops))
        .expect("a JSON patch of test/remove ops");
    match api
        .patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(pipeline = %key(p), relays = ?gone.iter().map(|(_, n)| *n).collect::<Vec<_>>(), "removed reports of relays gone for long");
            Ok(())
        }
        // A concurrent write moved the list: try again on the next reconcile.
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
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

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (client, ns) = (&ctx.client, namespace.as_deref());
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=dualwrite-operator");
    let pipelines: Api<DualWritePipeline> = scoped(client, ns);
    Controller::new(pipelines, watcher::Config::default())
        .owns(scoped::<Deployment>(client, ns), owned.clone())
        .owns(scoped::<Service>(client, ns), owned.clone())
        .owns(scoped::<ServiceAccount>(client, ns), owned.clone())
        .owns(scoped::<Role>(client, ns), owned.clone())
        .owns(scoped::<RoleBinding>(client, ns), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composite::Strategy;

    fn settings() -> Settings {
        Settings {
            relay_image: "img".into(),
            resync: Duration::from_secs(30),
            stale_after: Duration::from_secs(150),
            stall_after: Duration::from_secs(300),
            instance: None,
        }
    }

    fn pipeline(yaml: &str) -> DualWritePipeline {
        let mut p: DualWritePipeline = serde_yaml::from_str(yaml).unwrap();
        p.metadata.generation = Some(1);
        p
    }

    const MIGRATION: &str = "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: p, namespace: n}\nspec:\n  providers: [{name: a, type: memory}, {name: b, type: memory}]\n  migration:\n    steps:\n    - {name: only-a, strategy: FailFast, providers: [a]}\n    - {name: both, strategy: BestEffort}\n";

    #[test]
    fn first_status_enters_step_zero_with_its_strategy_and_providers() {
        let p = pipeline(MIGRATION);
        let (st, events) = next_status(
            &p,
            &settings(),
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        assert_eq!(st.strategy, Some(Strategy::FailFast));
        assert_eq!(st.active_providers.as_deref(), Some(&["a".to_string()][..]));
        assert_eq!(st.migration.as_ref().unwrap().current_step, 0);
        assert!(
            events.iter().any(|(r, _)| *r == "StepChanged"),
            "{events:?}"
        );
        assert_eq!(st.conditions.len(), 4);
    }

    #[test]
    fn an_invalid_spec_keeps_what_runs_and_stalls() {
        let mut p = pipeline(MIGRATION);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (mut st, _) = next_status(&p, &settings(), now);
        // Move to step 1, then make the spec invalid (a target past the last step).
        p.spec.migration.as_mut().unwrap().target_step = Some(1);
        p.status = Some(st.clone());
        (st, _) = next_status(&p, &settings(), now);
        assert_eq!(st.migration.as_ref().unwrap().current_step, 1);
        p.spec.migration.as_mut().unwrap().target_step = Some(7);
        p.status = Some(st.clone());
        let (next, _) = next_status(&p, &settings(), now);
        assert_eq!(next.strategy, st.strategy, "strategy kept");
        assert_eq!(next.active_providers, st.active_providers, "providers kept");
        assert_eq!(
            next.migration, st.migration,
            "migration step and history kept"
        );
        let stalled = next
            .conditions
            .iter()
            .find(|c| c.type_ == status::STALLED)
            .unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", status::reason::INVALID_SPEC)
        );
        assert!(
            stalled.message.contains("targetStep"),
            "{}",
            stalled.message
        );
    }

    #[test]
    fn gates_wait_for_relays_to_report_from_inside_the_step() {
        use crate::api::{ProviderReport, RelayReport};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut p = pipeline(MIGRATION);
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let (st, _) = next_status(&p, &settings(), t(0));
        p.status = Some(st);
        let report = |at: i64| RelayReport {
            name: "relay-0".into(),
            reported_at: Time(t(at)),
            strategy: Strategy::FailFast,
            generation: Some(1),
            providers: ["a", "b"]
                .iter()
                .map(|n| ProviderReport {
                    name: n.to_string(),
                    healthy: true,
                    ..Default::default()
                })
                .collect(),
        };
        // A report from before the step began does not open its gates.
        p.status.as_mut().unwrap().relays = vec![report(-1)];
        let (st, _) = next_status(&p, &settings(), t(5));
        let m = st.migration.as_ref().unwrap();
        assert_eq!(
            (m.current_step, m.reason.as_str()),
            (0, migration::reason::WAITING_FOR_RELAYS),
            "{}",
            m.message
        );
        // A healthy report from inside the step does.
        let mut prev = st;
        prev.relays = vec![report(4)];
        p.status = Some(prev);
        let (st, _) = next_status(&p, &settings(), t(6));
        assert_eq!(st.migration.as_ref().unwrap().current_step, 1);
        assert_eq!(st.strategy, Some(Strategy::BestEffort));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let got: Vec<u64> = [1, 2, 3, 4, 9, 10, 50]
            .iter()
            .map(|n| backoff(*n).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 256, 300, 300]);
    }
}
