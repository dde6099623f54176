//! The apply phase of a reconcile ([`apply_or_skip`]): the owned objects applied with
//! server-side apply in order (the StatefulSet only when [`rollout`] admits its template, with
//! the replicas [`scale`] decides; the PodDisruptionBudget only with more than one relay; the
//! Deployment of an operator before StatefulSets deleted), each only when the cache says it
//! differs from what the operator wants, and none compared at all when nothing they depend on
//! changed since they were last found as wanted.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::super::owned::{self, OwnedCache};
use super::super::scale::{self, ScaleDecision};
use super::super::{
    key, reason, resources, rollout, signed, Context, Error, PipelineEvent, Settings, MANAGER,
};
use super::publish_event;
use crate::api::DualWritePipeline;

/// The apply phase of a reconcile: the owned objects brought to what `p` wants, or, when
/// nothing they depend on changed since they were last found as wanted
/// ([`owned::ApplyInputs`]), left uncompared; the Events of what changed published either way.
/// Objects applied before a failure keep their Events.
pub(super) async fn apply_or_skip(
    p: &DualWritePipeline,
    ns: &str,
    ctx: &Context,
    cache: &OwnedCache,
    existing: Option<&StatefulSet>,
    claims: &[String],
) -> Result<Applied, Error> {
    let mut changes = Vec::new();
    let decision = decide_scale(p, &ctx.settings, existing, claims);
    let pipeline_version = owned::pipeline_version(p);
    let replicas = decision.replicas;
    // Time moves a scale decision only while a hold is in force (and a slot only while
    // its rollout runs): then the objects are always compared.
    let timeless =
        !decision.holding() && decision.transition.is_none() && !ctx.holds_rollout_slot(&key(p));
    let unchanged_inputs = timeless
        && pipeline_version
            .as_deref()
            .is_some_and(|version| ctx.inputs_unchanged(&key(p), version, replicas, cache, ns));
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
        apply_owned(p, ns, ctx, cache, existing, decision, &mut changes).await
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
            let statefulset_moved = seen_version(existing)
                != seen_version(
                    owned::cached::<StatefulSet>(cache, ns, &resources::relay_name(&p.name_any()))
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
        ctx.record_applied_inputs(&key(p), recorded);
    }
    publish_changes(ctx, p, changes).await;
    result
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
pub(super) struct Applied {
    /// Why a new pod template waits for a rollout slot, if it does (the StatefulSet was left
    /// as it was).
    pub(super) rollout_queued: Option<String>,
    /// The StatefulSet's replicas after this reconcile.
    pub(super) replicas: i32,
    /// The scale decision applied with it (`None` when the StatefulSet was left as it was).
    pub(super) scale: Option<ScaleDecision>,
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
