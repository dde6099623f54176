//! The reconciler's I/O: one reconcile applies the relay's owned objects with server-side apply
//! (the StatefulSet only when [`rollout`] admits its template, with the replicas [`scale`]
//! decides; the PodDisruptionBudget only with more than one relay; the Deployment of an
//! operator before StatefulSets deleted), lists the relay pods and claims ([`pods`]), records
//! the Events the decisions call for, writes the status [`status::next_status`] computed, and
//! prunes the reports of relays gone for long.
//!
//! An owned object the API server refuses (a quota, an admission webhook, a policy) does not
//! end the reconcile before the status: the objects applied before it keep their Events, the
//! status is written with Stalled and Ready saying which object and what the API server said
//! (and a Warning Event), then the reconcile fails so that it is retried with backoff. A
//! transient failure (a conflict, throttling, a server error, no connection) is only retried.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::owned::{self, OwnedCache};
use super::pods::{self, RelayObservation};
use super::scale::{self, ScaleDecision};
use super::{
    key, reason, resources, rollout, signed, status, Context, Error, PipelineEvent, Settings,
    MANAGER,
};
use crate::api::{
    ConsistencyStatus, DualWritePipeline, DualWritePipelineStatus, MigrationAction,
    MigrationRequest, RelayReport,
};

/// One reconcile: the owned objects (unless the spec is invalid), the Events of the decisions,
/// the status, then the pruning of relays gone for long.
pub(super) async fn reconcile(
    p: Arc<DualWritePipeline>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics
        .reconciles
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = p.namespace().ok_or(Error::NoNamespace)?;
    if p.metadata.deletion_timestamp.is_some() {
        // Owned objects go with their owner through garbage collection (the relays' claims
        // stay: see the README).
        ctx.forget(&p);
        return Ok(Action::await_change());
    }
    let p = ctx.newest(p);
    let cache = ctx
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or(Error::NotRunning)?;
    cache.ready().await.map_err(Error::NotListed)?;
    let (pods, claims) = list_relays(&p, &ns, &cache);
    // The relays' reports come from their ConfigMap (the only thing their Role may write);
    // the decisions below read them as the status' `relays`.
    let from_map = read_relay_reports(&p, &ns, &cache);
    // The verdict comes from the consistency ConfigMap only (written under the check's own
    // ServiceAccount), never from anything a relay's token may write.
    let verdict = read_consistency(&p, &ns, &cache);
    let as_stored = p;
    let p = Arc::new(with_reports(&as_stored, &from_map, verdict));
    let existing = owned::cached::<StatefulSet>(&cache, &ns, &resources::relay_name(&p.name_any()))
        .map(|s| (*s).clone());
    // Nothing applied (an invalid spec, or a refusal before the StatefulSet): the StatefulSet
    // keeps its replicas (a hold included).
    let unchanged = || Applied {
        rollout_queued: None,
        replicas: existing
            .as_ref()
            .map_or(resources::replicas(&p), scale::running_replicas),
        scale: None,
    };
    let mut changes = Vec::new();
    let (applied, refused) = if p.spec.validate().is_ok() {
        let decision = decide_scale(&p, &ctx.settings, existing.as_ref(), &claims);
        let pipeline_version = owned::pipeline_version(&*p);
        let replicas = decision.replicas;
        // Time moves a scale decision only while a hold is in force (and a slot only while
        // its rollout runs): then the objects are always compared.
        let timeless = !decision.holding()
            && decision.transition.is_none()
            && !ctx.holds_rollout_slot(&key(&p));
        let unchanged_inputs = timeless
            && pipeline_version.as_deref().is_some_and(|version| {
                ctx.inputs_unchanged(&key(&p), version, replicas, &cache, &ns)
            });
        let result = if unchanged_inputs {
            Ok(Applied {
                rollout_queued: None,
                replicas,
                scale: Some(decision),
            })
        } else {
            ctx.metrics
                .owned_compares
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            apply_owned(
                &p,
                &ns,
                &ctx,
                &cache,
                existing.as_ref(),
                decision,
                &mut changes,
            )
            .await
        };
        // Every object as wanted, each decided from the cache alone: the next reconcile with
        // the same inputs need not compare them again.
        let recorded = match (&result, pipeline_version) {
            (Ok(applied), Some(pipeline)) if timeless && !unchanged_inputs => {
                let objects: Option<Vec<owned::RecordedObject>> = changes
                    .iter()
                    .map(|(_, _, change)| match change {
                        Change::Cached(seen) => Some(seen.clone()),
                        _ => None,
                    })
                    .collect();
                // Decisions above read `existing` (the legacy Deployment's clean-up too): if the
                // StatefulSet moved since, the version recorded is not the one they saw.
                let seen_version =
                    |s: Option<&StatefulSet>| s.and_then(|s| s.metadata.resource_version.clone());
                let statefulset_moved = seen_version(existing.as_ref())
                    != seen_version(
                        owned::cached::<StatefulSet>(
                            &cache,
                            &ns,
                            &resources::relay_name(&p.name_any()),
                        )
                        .as_deref(),
                    );
                objects
                    .filter(|_| applied.rollout_queued.is_none() && !statefulset_moved)
                    .map(|objects| owned::ApplyInputs {
                        pipeline,
                        replicas,
                        objects,
                    })
            }
            _ => None,
        };
        if !unchanged_inputs {
            ctx.record_applied_inputs(&key(&p), recorded);
        }
        publish_changes(&ctx, &p, changes).await;
        match result {
            Ok(applied) => (applied, None),
            Err(e) => match refusal(&e) {
                Some(why) => {
                    tracing::warn!(pipeline = %key(&p), "{why}");
                    (unchanged(), Some((why, e)))
                }
                None => return Err(e),
            },
        }
    } else {
        (unchanged(), None)
    };
    let held =
        applied.rollout_queued.is_some() || applied.scale.as_ref().is_some_and(|d| d.holding());
    let apply_failed = refused.as_ref().map(|(why, _)| why.clone());
    let observed = observe_relays(&p, &pods, &claims, applied, apply_failed);
    let next = status::next_status(&p, &ctx.settings, &observed, Timestamp::now());
    for event in next.events {
        publish_event(&ctx, &ctx.recorder, &p, event).await;
    }
    let api: Api<DualWritePipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = next.status;
    // The verdict the decisions read: the ConfigMap's (checked), else the one already there.
    status.consistency = p.status.as_ref().and_then(|s| s.consistency.clone());
    let gone = gone_for_long(&from_map, &ctx.settings, Timestamp::now());
    status.relays = from_map
        .into_iter()
        .filter(|r| !gone.contains(&r.name))
        .collect();
    // Never send the request (a requester's field; `kept` copies the previous migration status
    // when the spec is invalid): an apply must not own it, nor write back a stale one.
    if let Some(m) = status.migration.as_mut() {
        m.request = None;
    }
    let consumed = consumed_request(&as_stored, &status);
    if let Some(request) = consumed.filter(|r| r.action == MigrationAction::Verify) {
        start_verify_job(&ctx, &p, &ns, request, &mut status).await?;
    }
    // At rest the status computed equals the one stored: no write (compared as the JSON the
    // API server keeps, where times have whole seconds; a request is not the operator's).
    if status_changed(as_stored.status.as_ref(), &status) {
        ctx.metrics.wrote();
        let written = crate::api::apply_status(&api, &p.name_any(), MANAGER, &status).await?;
        ctx.wrote(&written);
    }
    if let Some(request) = consumed {
        ctx.metrics.wrote();
        clear_request(&api, &as_stored, request).await?;
    }
    prune_gone_relays(&api, &as_stored, &ctx).await?;
    prune_gone_reports(&p, &ns, &ctx, &gone).await?;
    if let Some((_, e)) = refused {
        // Status says why; the error policy retries with backoff.
        return Err(e);
    }
    ctx.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key(&p));
    // A held rollout looks for a free slot, and a held scale-down at its limit, sooner than
    // the resync (a relay's report of its drained backlog triggers a reconcile of its own).
    let after = if held {
        ctx.settings.resync.min(HELD_RETRY)
    } else {
        ctx.settings.resync
    };
    Ok(Action::requeue(after))
}

/// How soon a pipeline whose rollout waits for a slot, or whose scale-down waits for a backlog,
/// looks again.
const HELD_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Relay reports this much older than the staleness limit belong to pods that are gone: they
/// are removed so the status does not grow with every rollout.
const PRUNE_AFTER_STALE: u32 = 4;

/// The data of the ConfigMap `name` in `ns` (empty when it has none), or `None` when it does not
/// exist yet, from the cache.
fn config_map_data(
    ns: &str,
    name: &str,
    cache: &OwnedCache,
) -> Option<std::collections::BTreeMap<String, String>> {
    owned::cached::<ConfigMap>(cache, ns, name).map(|m| m.data.clone().unwrap_or_default())
}

/// Whether `next` differs from the status the API server holds.
fn status_changed(
    stored: Option<&DualWritePipelineStatus>,
    next: &DualWritePipelineStatus,
) -> bool {
    let Some(stored) = stored else {
        return true;
    };
    // A request in the stored status is a requester's field, never in `next`.
    let mut stored = stored.clone();
    if let Some(m) = stored.migration.as_mut() {
        m.request = None;
    }
    // Compared as serialized bytes: the same type serializes its fields in one order and its
    // maps sorted, so equal bytes are equal JSON, without building two `Value` trees (which
    // was most of a resync's cost once the owned objects are no longer compared).
    match (serde_json::to_vec(&stored), serde_json::to_vec(next)) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

/// The reports in the pipeline's reports ConfigMap (none when it does not exist yet). A
/// verdict there ([`crate::api::VERDICT_KEY`]) is neither a report nor a verdict: a relay's
/// token can write that ConfigMap.
fn read_relay_reports(p: &DualWritePipeline, ns: &str, cache: &OwnedCache) -> Vec<RelayReport> {
    let Some(data) = config_map_data(ns, &crate::api::relay_reports_name(&p.name_any()), cache)
    else {
        return Vec::new();
    };
    let (reports, unreadable) = crate::api::parse_relay_reports(&data);
    if !unreadable.is_empty() {
        tracing::warn!(pipeline = %key(p), relays = ?unreadable, "relay reports that cannot be read are left out (a relay of another version?)");
    }
    reports
}

/// The `dualwrite verify` verdict in the pipeline's consistency ConfigMap, if there is one and
/// it passes [`crate::api::read_verdict`].
fn read_consistency(
    p: &DualWritePipeline,
    ns: &str,
    cache: &OwnedCache,
) -> Option<ConsistencyStatus> {
    let data = config_map_data(ns, &crate::api::consistency_name(&p.name_any()), cache)?;
    let providers: Vec<&str> = p.spec.providers.iter().map(|x| x.name.as_str()).collect();
    let verdict = crate::api::read_verdict(&data, &providers, Timestamp::now());
    if verdict.is_none() && data.contains_key(crate::api::VERDICT_KEY) {
        tracing::warn!(pipeline = %key(p), "the consistency verdict is left out: it names a provider the pipeline lacks, fewer than two, or a time in the future");
    }
    verdict
}

/// `p` with the reports of the ConfigMap in place of the status' copy of them, and the
/// ConfigMap's verdict (when it passed) in place of the status' consistency.
fn with_reports(
    p: &DualWritePipeline,
    from_map: &[RelayReport],
    verdict: Option<ConsistencyStatus>,
) -> DualWritePipeline {
    let mut p = p.clone();
    let status = p.status.get_or_insert_with(Default::default);
    status.relays = crate::api::merge_relay_reports(from_map, &status.relays);
    if verdict.is_some() {
        status.consistency = verdict;
    }
    p
}

/// The relays among `reports` gone for long (`PRUNE_AFTER_STALE` × stale-after).
fn gone_for_long(reports: &[RelayReport], settings: &Settings, now: Timestamp) -> Vec<String> {
    let limit = signed(settings.stale_after * PRUNE_AFTER_STALE);
    reports
        .iter()
        .filter(|r| now.duration_since(r.reported_at.0) > limit)
        // A relay that stopped with a backlog on its disk (a scale-down that timed out) stays
        // listed: that backlog holds the gates until the relay returns and replays it.
        .filter(|r| !(r.stopped && r.providers.iter().any(|x| x.backlog > 0)))
        .map(|r| r.name.clone())
        .collect()
}

/// Removes the keys of relays gone for long from the reports ConfigMap; a merge patch that
/// names the resourceVersion it read, so a relay writing at the same moment makes it fail
/// harmlessly (retried next reconcile).
async fn prune_gone_reports(
    p: &DualWritePipeline,
    ns: &str,
    ctx: &Context,
    gone: &[String],
) -> Result<(), Error> {
    if gone.is_empty() {
        return Ok(());
    }
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let name = crate::api::relay_reports_name(&p.name_any());
    let Some(map) = maps.get_opt(&name).await? else {
        return Ok(());
    };
    let data: serde_json::Map<String, serde_json::Value> = gone
        .iter()
        .map(|pod| (pod.clone(), serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": map.resource_version()},
        "data": data,
    });
    ctx.metrics.wrote();
    match maps
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(pipeline = %key(p), relays = ?gone, "removed reports of relays gone for long");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The request in the stored status that `next` records as acted on (its `lastRequest`): the
/// one to remove once `next` is written.
fn consumed_request<'a>(
    stored: &'a DualWritePipeline,
    next: &crate::api::DualWritePipelineStatus,
) -> Option<&'a MigrationRequest> {
    let request = stored
        .status
        .as_ref()?
        .migration
        .as_ref()?
        .request
        .as_ref()?;
    let handled = next.migration.as_ref()?.last_request.as_ref()?;
    (&handled.request == request).then_some(request)
}

/// Starts the consistency check a Verify request asked for: [`resources::verify_job`] under
/// `<pipeline>-verify`, owned by the pipeline, named after the request (created again by a
/// retried reconcile: a 409, the same Job), and names it in the outcome the status records.
/// The operator, not the requester, creates it: a requester able to create Jobs could run any
/// pod as `<pipeline>-verify` and write the verdict itself.
async fn start_verify_job(
    ctx: &Context,
    p: &DualWritePipeline,
    ns: &str,
    request: &MigrationRequest,
    status: &mut DualWritePipelineStatus,
) -> Result<(), Error> {
    let name = resources::verify_request_job_name(&p.name_any(), request);
    let job = resources::verify_job(p, &ctx.settings.relay_image, &name);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    ctx.metrics.wrote();
    let refused = match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => None,
        Err(kube::Error::Api(e)) if e.code == 409 => None,
        // Refused (RBAC, a quota, a policy): the request's outcome says so, and the rest of the
        // status is still written; a transient failure is retried with the request pending.
        Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 429 => Some(format!(
            "the API server refused job.batch/{name} ({} {}): {}",
            e.code, e.reason, e.message
        )),
        Err(e) => return Err(e.into()),
    };
    if let Some(outcome) = status
        .migration
        .as_mut()
        .and_then(|m| m.last_request.as_mut())
    {
        match refused {
            None => {
                outcome.message = format!(
                    "{}; job.batch/{name} started; its verdict goes into status.consistency",
                    outcome.message
                );
                outcome.job = Some(name);
            }
            Some(why) => {
                tracing::warn!(pipeline = %key(p), "{why}");
                outcome.accepted = false;
                outcome.message = format!("the consistency check was not started: {why}");
            }
        }
    }
    Ok(())
}

/// Removes `status.migration.request` after the operator acted on it: a JSON patch that tests
/// the request is still exactly the one acted on, so one written meanwhile survives (the patch
/// fails harmlessly and the next reconcile acts on the new request).
async fn clear_request(
    api: &Api<DualWritePipeline>,
    p: &DualWritePipeline,
    request: &MigrationRequest,
) -> Result<(), Error> {
    let patch = serde_json::from_value(super::step::clear_request_patch(request))
        .expect("a JSON patch of test/remove ops");
    match api
        .patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // A newer request replaced it (or it is gone): it stays for the next reconcile.
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes reports of relays gone for long (`PRUNE_AFTER_STALE` × stale-after). A JSON patch
/// with a `test` per entry: a relay writing its entry at the same moment makes the patch fail
/// harmlessly (retried next reconcile) instead of removing the wrong entry.
async fn prune_gone_relays(
    api: &Api<DualWritePipeline>,
    p: &DualWritePipeline,
    ctx: &Context,
) -> Result<(), Error> {
    let settings = &ctx.settings;
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
    ctx.metrics.wrote();
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

async fn publish_event(
    ctx: &Context,
    recorder: &Recorder,
    p: &DualWritePipeline,
    event: PipelineEvent,
) {
    // kube's recorder folds Events with the same (reason, action, object) into one series and
    // keeps the first note; an action derived from the note keeps each distinct change (another
    // kind created, another strategy flip) its own Event. The API caps action at 128 bytes.
    let action: String = event.note.chars().take(100).collect();
    let event = Event {
        type_: event.type_,
        reason: event.reason.into(),
        note: Some(event.note),
        action,
        secondary: None,
    };
    ctx.metrics.wrote();
    if let Err(e) = recorder.publish(&event, &p.object_ref(&())).await {
        tracing::warn!(pipeline = %key(p), error = %e, "could not record an Event");
    }
}

#[derive(Debug)]
enum Change {
    Created,
    Updated,
    Deleted,
    /// Read afresh (or applied) and found as wanted.
    Unchanged,
    /// The cached copy holds what the operator wants (or, for an object it wants absent, the
    /// cache holds none): no request was made. A reconcile that finds every object so records
    /// them ([`owned::ApplyInputs`]).
    Cached(owned::RecordedObject),
}

/// What Stalled says of an owned object the API server refused (a 4xx other than a conflict or
/// throttling: a quota, an admission webhook, a policy, a field the server rejects), or `None`
/// for a failure a retry may cure.
fn refusal(e: &Error) -> Option<String> {
    let Error::Apply {
        kind,
        name,
        source: kube::Error::Api(status),
    } = e
    else {
        return None;
    };
    let refused = (400..500).contains(&status.code) && ![409, 429].contains(&status.code);
    refused.then(|| {
        format!(
            "{kind} {name} not applied: the API server refused it ({} {}): {}",
            status.code, status.reason, status.message
        )
    })
}

/// Server-side applies `obj` unless the cached copy already holds it ([`owned::needs_apply`]),
/// and says what it applied (kind and name, for its Event) and whether that created or changed
/// it (an error names it). An unchanged object costs no request; a changed or missing one is
/// read afresh first (the cache may not hold this operator's own last apply yet, which would
/// otherwise be applied again and reported twice).
async fn apply_named<K>(
    ctx: &Context,
    cache: &OwnedCache,
    ns: &str,
    obj: &K,
) -> Result<(&'static str, String, Change), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + owned::Cached
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    let name = obj.meta().name.clone().unwrap_or_default();
    let (desired, _) = owned::annotated(obj);
    if let Some(live) = owned::cached::<K>(cache, ns, &name) {
        if !owned::needs_apply(&desired, &*live) {
            let seen = owned::RecordedObject::new::<K>(&name, Some(live.version()));
            return Ok((kind, name, Change::Cached(seen)));
        }
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let failed = |source| Error::Apply {
        kind,
        name: name.clone(),
        source,
    };
    let before = api.get_opt(&name).await.map_err(failed)?;
    if before
        .as_ref()
        .is_some_and(|b| !owned::needs_apply(&desired, b))
    {
        return Ok((kind, name, Change::Unchanged));
    }
    ctx.metrics.wrote();
    let after = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(failed)?;
    let change = match before {
        None => Change::Created,
        Some(b) if b.resource_version() != after.resource_version() => Change::Updated,
        Some(_) => Change::Unchanged,
    };
    Ok((kind, name, change))
}

/// What [`apply_owned`] did with the StatefulSet.
struct Applied {
    /// Why a new pod template waits for a rollout slot, if it does (the StatefulSet was left
    /// as it was).
    rollout_queued: Option<String>,
    /// The StatefulSet's replicas after this reconcile.
    replicas: i32,
    /// The scale decision applied with it (`None` when the StatefulSet was left as it was).
    scale: Option<ScaleDecision>,
}

/// Applies the owned objects in order, recording each one's change in `changes` as it goes (so
/// that the objects applied before a failure keep their Events).
async fn apply_owned(
    p: &DualWritePipeline,
    ns: &str,
    ctx: &Context,
    cache: &OwnedCache,
    existing: Option<&StatefulSet>,
    decision: ScaleDecision,
    changes: &mut Vec<(&'static str, String, Change)>,
) -> Result<Applied, Error> {
    let name = resources::relay_name(&p.name_any());
    let mut desired = resources::statefulset(p, &ctx.settings.relay_image);
    scale::apply_to(&mut desired, &decision);
    let admission = admit_rollout(p, ctx, existing, &desired);
    changes.push(apply_named(ctx, cache, ns, &resources::service_account(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::role(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::relay_reports(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::role_binding(p)).await?);
    // The consistency check's identity, apart from the relay's (see `resources::verify_role`).
    changes.push(apply_named(ctx, cache, ns, &resources::verify_service_account(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::verify_role(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::consistency(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::verify_role_binding(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::service(p)).await?);
    changes.push(apply_named(ctx, cache, ns, &resources::pods_service(p)).await?);
    let applied = match admission {
        rollout::Admission::Apply => {
            changes.push(apply_named(ctx, cache, ns, &desired).await?);
            if decision.holding() {
                tracing::info!(pipeline = %key(p), replicas = decision.replicas, desired = decision.desired, waiting = ?decision.waiting, "scale-down held for a backlog");
            }
            Applied {
                rollout_queued: None,
                replicas: decision.replicas,
                scale: Some(decision),
            }
        }
        rollout::Admission::Hold { rolling } => {
            let why = format!(
                "a new relay pod template from the operator waits: {} pipeline(s) are rolling out ({}), at most {} at a time",
                rolling.len(),
                rolling.join(", "),
                rollout::MAX_CONCURRENT_ROLLOUTS
            );
            tracing::info!(pipeline = %key(p), "{why}");
            Applied {
                rollout_queued: Some(why),
                replicas: existing.map_or(resources::replicas(p), scale::running_replicas),
                scale: None,
            }
        }
    };
    match resources::pod_disruption_budget(p) {
        Some(pdb) => changes.push(apply_named(ctx, cache, ns, &pdb).await?),
        None => {
            // Only a PodDisruptionBudget the cache holds is looked up and deleted.
            if owned::cached::<PodDisruptionBudget>(cache, ns, &name).is_none() {
                let absent = owned::RecordedObject::new::<PodDisruptionBudget>(&name, None);
                changes.push(("PodDisruptionBudget", name.clone(), Change::Cached(absent)));
            } else if delete_owned::<PodDisruptionBudget>(ctx, ns, &name, p).await? {
                changes.push(("PodDisruptionBudget", name.clone(), Change::Deleted));
            } else {
                // Not this pipeline's (or going): left alone, and compared again next time.
                changes.push(("PodDisruptionBudget", name.clone(), Change::Unchanged));
            }
        }
    }
    // An operator before StatefulSets ran the relays as a Deployment of the same name: it goes
    // once the StatefulSet's relays are Ready (no gap in ingest; the Service selects both
    // meanwhile). Its pods drain on SIGTERM; a backlog left on their emptyDir is lost.
    // Looked up once per pipeline and process: a Deployment is never created again.
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let checked = |ctx: &Context| {
        ctx.no_legacy_deployment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&uid)
    };
    if existing.is_some_and(|s| relays_ready(p, s)) && !checked(ctx) {
        if delete_owned::<Deployment>(ctx, ns, &name, p).await? {
            changes.push(("Deployment", name.clone(), Change::Deleted));
        } else {
            ctx.no_legacy_deployment
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid);
        }
    }
    // The scheduled check, while `spec.consistency.schedule` asks for it; last, so that a
    // schedule the API server refuses (a minute of 60) holds back none of the relay's objects.
    match resources::verify_cron_job(p, &ctx.settings.relay_image) {
        Some(cron) => changes.push(apply_named(ctx, cache, ns, &cron).await?),
        None => {
            // Only a CronJob the cache holds is looked up and deleted.
            let verify = resources::verify_name(&p.name_any());
            if owned::cached::<CronJob>(cache, ns, &verify).is_none() {
                let absent = owned::RecordedObject::new::<CronJob>(&verify, None);
                changes.push(("CronJob", verify, Change::Cached(absent)));
            } else if delete_owned::<CronJob>(ctx, ns, &verify, p).await? {
                changes.push(("CronJob", verify, Change::Deleted));
            } else {
                changes.push(("CronJob", verify, Change::Unchanged));
            }
        }
    }
    Ok(applied)
}

/// The Events of what [`apply_owned`] created, changed or deleted.
async fn publish_changes(
    ctx: &Context,
    p: &DualWritePipeline,
    changes: Vec<(&'static str, String, Change)>,
) {
    // "Created" Events go through a recorder of their own, made only when there is one and
    // dropped with its cache at the end: an object is created once, so kube's series cache
    // (which keeps every Event published for 6 minutes and prunes only on a later publish)
    // would only hold them: the 11,000 Events of 1,000 pipelines created at once stayed in the
    // operator's memory at rest. Updates and deletions keep the shared recorder, which folds a
    // change repeated within those minutes (something reverting a field the operator sets)
    // into one Event with a count.
    let mut created_recorder = None;
    for (kind, name, change) in changes {
        let (reason, verb) = match change {
            Change::Created => (reason::CREATED, "created"),
            Change::Updated => (reason::UPDATED, "updated"),
            Change::Deleted => (reason::DELETED, "deleted"),
            Change::Unchanged | Change::Cached(_) => continue,
        };
        let recorder = if reason == reason::CREATED {
            &*created_recorder
                .get_or_insert_with(|| Recorder::new(ctx.client.clone(), ctx.reporter.clone()))
        } else {
            &ctx.recorder
        };
        tracing::info!(pipeline = %key(p), kind, name = %name, "{verb}");
        let event = PipelineEvent {
            type_: EventType::Normal,
            reason,
            note: format!("{kind} {name} {verb}"),
        };
        publish_event(ctx, recorder, p, event).await;
    }
}

/// How many relays the StatefulSet keeps on this reconcile ([`scale::decide_scale`] over the
/// relays' fresh reports, the claims and the hold recorded on the StatefulSet).
fn decide_scale(
    p: &DualWritePipeline,
    settings: &Settings,
    existing: Option<&StatefulSet>,
    claims: &[String],
) -> ScaleDecision {
    let now = Timestamp::now();
    let desired = resources::replicas(p);
    let running = existing.map(scale::running_replicas);
    let reports = p.status.as_ref().map_or(&[][..], |s| &s.relays[..]);
    let held_since = existing.and_then(scale::held_since);
    // The operator first sees a scale-down now unless a hold already records when it did.
    let requested_at = held_since.unwrap_or(now);
    let leaving = scale::leaving_relays(
        &p.name_any(),
        desired,
        running.unwrap_or(desired),
        reports,
        claims,
        requested_at,
        now,
        signed(settings.stale_after),
    );
    scale::decide_scale(&scale::ScaleInput {
        desired,
        running,
        leaving: &leaving,
        held_since,
        now,
        limit: signed(scale::DRAIN_LIMIT),
    })
}

/// Whether the StatefulSet may take the template the operator wants now ([`rollout`]).
fn admit_rollout(
    p: &DualWritePipeline,
    ctx: &Context,
    existing: Option<&StatefulSet>,
    desired: &StatefulSet,
) -> rollout::Admission {
    let annotation = |s: &StatefulSet| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(resources::TEMPLATE_ANNOTATION))
            .cloned()
    };
    let change = rollout::classify(
        existing.map(annotation).as_ref().map(Option::as_deref),
        &annotation(desired).unwrap_or_default(),
    );
    let rolling = existing.is_some_and(|s| !rollout::rolled_out(s));
    ctx.rollouts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(
            &key(p),
            change,
            rolling,
            Timestamp::now(),
            signed(ctx.settings.resync * 3),
            rollout::MAX_CONCURRENT_ROLLOUTS,
        )
}

/// Every relay the pipeline asks for is Ready.
fn relays_ready(p: &DualWritePipeline, sts: &StatefulSet) -> bool {
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    ready >= resources::replicas(p)
}

/// Deletes `name` if this pipeline controls it; whether it did.
async fn delete_owned<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
    p: &DualWritePipeline,
) -> Result<bool, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let ours = obj
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == p.metadata.uid.as_ref());
    if !ours || obj.meta().deletion_timestamp.is_some() {
        return Ok(false);
    }
    ctx.metrics.wrote();
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The relay pods of `p`, and the names of its claims, from the cache (both watched with the
/// operator's `managed-by` label).
fn list_relays(p: &DualWritePipeline, ns: &str, cache: &OwnedCache) -> (Vec<Pod>, Vec<String>) {
    let name = p.name_any();
    let ours = |meta: &kube::api::ObjectMeta| {
        meta.namespace.as_deref() == Some(ns)
            && meta
                .labels
                .as_ref()
                .and_then(|l| l.get("dualwrite.io/pipeline"))
                == Some(&name)
    };
    let pods = cache
        .pods
        .state()
        .into_iter()
        .filter(|pod| ours(&pod.metadata))
        .map(|pod| (*pod).clone())
        .collect();
    let mut claims: Vec<String> = cache
        .claims
        .state()
        .into_iter()
        .filter(|c| ours(&c.metadata))
        // A claim being deleted holds nothing a relay will replay.
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| c.name_any())
        .collect();
    claims.sort();
    (pods, claims)
}

/// What the relay pods and claims of `p` show: the most telling pod failure, the claims of
/// relays scaled away (ordinals at or past the StatefulSet's replicas after this reconcile: a
/// relay a held scale-down keeps still uses its claim), what `applied` did, and the refusal
/// that stopped the apply, if one did.
fn observe_relays(
    p: &DualWritePipeline,
    pods: &[Pod],
    claims: &[String],
    applied: Applied,
    apply_failed: Option<String>,
) -> RelayObservation {
    RelayObservation {
        apply_failed,
        failure: pods::relay_failure(pods),
        retained_claims: pods::retained_claims(&p.name_any(), applied.replicas, claims),
        rollout_queued: applied.rollout_queued,
        scale: applied.scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: "refused for a reason".into(),
            ..kube::core::Status::failure("refused for a reason", reason)
        }))
    }

    #[test]
    fn a_status_changes_when_its_json_does() {
        let stored: DualWritePipelineStatus = serde_json::from_value(serde_json::json!({
            "observedGeneration": 2,
            "strategy": "FailFast",
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllProvidersHealthy",
                "message": "", "lastTransitionTime": "2026-11-27T10:00:00Z"}],
        }))
        .unwrap();
        assert!(!status_changed(Some(&stored), &stored.clone()));
        assert!(status_changed(None, &stored));
        let mut next = stored.clone();
        next.observed_generation = Some(3);
        assert!(status_changed(Some(&stored), &next));
        let mut next = stored.clone();
        next.conditions[0].status = "False".into();
        assert!(status_changed(Some(&stored), &next));
    }

    #[test]
    fn refusals_stall_and_transient_failures_only_retry() {
        let apply = |code, reason| Error::Apply {
            kind: "Service",
            name: "p-relay".into(),
            source: api_error(code, reason),
        };
        // (error, stalls)
        let cases = [
            (apply(403, "Forbidden"), true),  // a quota, RBAC
            (apply(400, "BadRequest"), true), // an admission webhook's denial
            (apply(422, "Invalid"), true),    // a field the server rejects
            (apply(409, "Conflict"), false),  // another writer: retried
            (apply(429, "TooManyRequests"), false),
            (apply(500, "InternalError"), false),
            (Error::Kube(api_error(403, "Forbidden")), false), // not an apply
        ];
        for (e, stalls) in cases {
            assert_eq!(refusal(&e).is_some(), stalls, "{e}");
        }
        assert_eq!(
            refusal(&apply(403, "Forbidden")).unwrap(),
            "Service p-relay not applied: the API server refused it (403 Forbidden): refused for a reason"
        );
    }
}
