//! The reconciler's I/O: one reconcile applies the relay's owned objects with server-side apply,
//! records the Events the decisions call for, writes the status [`status::next_status`]
//! computed, and prunes the reports of relays gone for long.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    key, reason, resources, signed, status, Context, Error, PipelineEvent, Settings, MANAGER,
};
use crate::api::DualWritePipeline;

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
        // Owned objects go with their owner through garbage collection.
        return Ok(Action::await_change());
    }
    if p.spec.validate().is_ok() {
        apply_owned(&p, &ns, &ctx).await?;
    }
    let next = status::next_status(&p, &ctx.settings, Timestamp::now());
    for event in next.events {
        publish_event(&ctx, &p, event).await;
    }
    let api: Api<DualWritePipeline> = Api::namespaced(ctx.client.clone(), &ns);
    crate::api::apply_status(&api, &p.name_any(), MANAGER, &next.status).await?;
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

async fn publish_event(ctx: &Context, p: &DualWritePipeline, event: PipelineEvent) {
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
            Change::Created => (reason::CREATED, "created"),
            Change::Updated => (reason::UPDATED, "updated"),
            Change::Unchanged => continue,
        };
        tracing::info!(pipeline = %key(p), kind, name = %name, "{verb}");
        let event = PipelineEvent {
            type_: EventType::Normal,
            reason,
            note: format!("{kind} {name} {verb}"),
        };
        publish_event(ctx, p, event).await;
    }
    Ok(())
}
