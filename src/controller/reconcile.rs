//! The reconciler's I/O: one reconcile applies the relay's owned objects with server-side apply
//! where they differ from what the operator wants ([`apply`]), lists the relay pods and claims
//! ([`pods`]), records the Events the decisions call for, writes the status
//! [`status::next_status`] computed, and prunes the reports of relays gone for long.
//!
//! An owned object the API server refuses (a quota, an admission webhook, a policy) does not
//! end the reconcile before the status: the objects applied before it keep their Events, the
//! status is written with Stalled and Ready saying which object and what the API server said
//! (and a Warning Event), then the reconcile fails so that it is retried with backoff. A
//! transient failure (a conflict, throttling, a server error, no connection) is only retried.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, Recorder};
use kube::{Api, Resource, ResourceExt};

use self::apply::Applied;
use super::owned::{self, OwnedCache};
use super::pods::{self, RelayObservation};
use super::scale;
use super::{key, resources, signed, status, Context, Error, PipelineEvent, Settings, MANAGER};
use crate::api::{
    ConsistencyStatus, DualWritePipeline, DualWritePipelineStatus, MigrationAction,
    MigrationRequest, RelayReport,
};

mod apply;

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
    let (applied, refused) = if p.spec.validate().is_ok() {
        match apply::apply_or_skip(&p, &ns, &ctx, &cache, existing.as_ref(), &claims).await {
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
