//! The status of a `DualWritePipeline`: what the operator and the relays observed, and the one
//! helper that writes a part of it with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::Api;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::composite::ProviderRow;

use super::{Acceptance, DualWritePipeline, ProviderKind, Strategy};

/// What the operator and the relays observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DualWritePipelineStatus {
    /// The `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The strategy in force now (the spec's, a migration step's, or the fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// What BestEffort needs to accept a message (`spec.handoff.acceptance`): BrokerAck (a
    /// broker acknowledged it) or RelayDisk (the relay's disk backlog is enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<Acceptance>,
    /// Providers written now (all, or the current migration step's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_providers: Option<Vec<String>>,
    /// Provider consumers should read from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_from: Option<String>,
    /// Relay pods that reported recently.
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the relay pods (for the scale subresource, e.g. an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Messages the pipeline accepted (answered 202; an idempotent retry counts once), over
    /// every relay and across relay restarts: a message written to three providers counts once,
    /// and the count never goes backwards when a relay restarts (see `publishedByRelay`).
    /// Per-provider acknowledgements are in `providers[].published`.
    #[serde(default)]
    pub published: u64,
    /// What `published` keeps of relay incarnations that ended (a restart, a relay scaled
    /// away): their last reported count, added up by the operator.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub published_retired: u64,
    /// The last count of each running relay incarnation, as the operator last saw it: when a
    /// relay's `startedAt` changes or its report goes, its count moves into
    /// `publishedRetired`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub published_by_relay: Vec<RelayCount>,
    /// Messages waiting in backlogs, summed.
    #[serde(default)]
    pub backlog: u64,
    /// `name=published` per provider, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// A row per provider, aggregated over fresh relay reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub providers: Vec<ProviderStatus>,
    /// Where the migration stands: its current step, why, and the steps before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// The automatic fallback (FailFast relaxed to BestEffort while a provider is down): in
    /// force or not, and its last flip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackStatus>,
    /// The last `dualwrite verify` verdict: what each provider holds and misses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyStatus>,
    /// PersistentVolumeClaims of relays scaled away (ordinal ≥ the StatefulSet's replicas; a
    /// scale-down waits, bounded, for a leaving relay's backlog to drain first). Each may still
    /// hold a backlog that no relay replays until the relays scale back up to that ordinal; the
    /// operator never deletes them (see the README's hinted-handoff section).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained_claims: Vec<String>,
    /// Each relay's report (one entry per pod): the operator's copy of the relays' reports
    /// ConfigMap ([`super::relay_reports_name`]); a relay of an earlier version wrote its entry
    /// here itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub relays: Vec<RelayReport>,
    /// Ready, Reconciling, Stalled, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Whether a provider is ready, or whether a condition holds: the three values of a Kubernetes
/// condition status, written exactly `True`, `False` and `Unknown` (what `kubectl`, kstatus and
/// the printer columns read).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Readiness {
    True,
    False,
    /// Not known yet (no fresh report), never a guess either way.
    #[default]
    Unknown,
}

impl Readiness {
    /// The text of a metav1 `Condition`'s status.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::True => "True",
            Readiness::False => "False",
            Readiness::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's row in the status: what the relays report of it, aggregated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// The provider's name in spec.providers.
    pub name: String,
    /// The provider's type: memory, nats or kafka.
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    /// "True", "False" or "Unknown".
    pub ready: Readiness,
    /// Why it is (not) ready, one CamelCase word (e.g. ReportedUp, AuthenticationFailed).
    pub reason: String,
    /// The same for people: which relay found what.
    #[serde(default)]
    pub message: String,
    /// When `ready` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Messages this provider acknowledged, summed over the relays' reports.
    #[serde(default)]
    pub published: u64,
    /// Writes to this provider that failed, summed over the relays' reports.
    #[serde(default)]
    pub failed: u64,
    /// Messages waiting in the relays' hinted-handoff backlogs for this provider.
    #[serde(default)]
    pub backlog: u64,
    /// 99th percentile publish latency in milliseconds (interpolated within its histogram bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    /// Accepted messages this provider missed for good (refused by the broker, or its backlog
    /// could not keep them), summed over the relays since they started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed: u64,
    /// Backlog appends that failed with a storage error (disk full, I/O error), summed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backlog_errors: u64,
    /// Replay cannot make the provider complete (its backlog passed its limits, or it missed an
    /// accepted message): reconcile by hand.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_reconciliation: bool,
    /// Why it needs reconciliation, as a relay reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation_reason: Option<String>,
    /// Misses recorded up to this time are reconciled (a clean `dualwrite verify` or the
    /// `dualwrite.io/reconciled` annotation): the relays clear their needs-reconciliation flag
    /// for misses up to it. Written by the operator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled_through: Option<Time>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ProviderStatus {
    /// The row of a provider no relay has reported yet: readiness Unknown, every number zero.
    pub fn new(name: impl Into<String>, kind: ProviderKind) -> Self {
        Self {
            name: name.into(),
            kind,
            ready: Readiness::Unknown,
            reason: String::new(),
            message: String::new(),
            last_transition_time: None,
            published: 0,
            failed: 0,
            backlog: 0,
            latency_p99_ms: None,
            missed: 0,
            backlog_errors: 0,
            needs_reconciliation: false,
            reconciliation_reason: None,
            reconciled_through: None,
        }
    }

    /// Adds one relay's running totals: every report counts, fresh or not, since each relay
    /// counts only what it wrote itself.
    pub fn add_totals(&mut self, report: &ProviderReport) {
        self.published += report.published;
        self.failed += report.failed;
        self.missed += report.missed;
        self.backlog_errors += report.backlog_errors;
    }

    /// Adds what a fresh report says of now: its backlog, whether it needs reconciliation, and
    /// its latency (the worst relay's p99 stands for the provider).
    pub fn add_current(&mut self, report: &ProviderReport) {
        self.backlog += report.backlog;
        self.needs_reconciliation |= report.needs_reconciliation;
        if self.reconciliation_reason.is_none() {
            self.reconciliation_reason = report.reconciliation_reason.clone();
        }
        self.latency_p99_ms = match (self.latency_p99_ms, report.latency_p99_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One relay incarnation's count of accepted messages, as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayCount {
    /// The relay pod.
    pub name: String,
    /// When that relay process started (its incarnation); absent for a relay that does not
    /// say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Messages it had accepted at its last report.
    pub accepted: u64,
}

/// One relay pod's numbers, written by the relay itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayReport {
    /// The pod name.
    pub name: String,
    /// When the relay wrote this report.
    pub reported_at: Time,
    /// The strategy the relay applies.
    pub strategy: Strategy,
    /// The spec generation the relay runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The relay's last report before it stopped (providers closed, backlog as left on disk):
    /// once stale, its backlog is still known, where a report that just went stale says
    /// nothing of now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// When this relay process started: another value under the same pod name is a new
    /// incarnation whose counters began at zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Messages this relay process accepted (answered 202; an idempotent retry counts once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    /// Each provider as this relay sees it.
    #[serde(default)]
    pub providers: Vec<ProviderReport>,
}

/// One provider as one relay sees it: the composite's [`ProviderRow`] (counters, latency,
/// health) in the shape a relay writes into status. The operator sums these rows into a
/// [`ProviderStatus`] per provider; the four types are the four layers a provider's numbers pass
/// through (provider `Stats` → composite row → relay report → pipeline status).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderReport {
    /// The provider's name in spec.providers.
    pub name: String,
    /// The relay can write to the provider now.
    pub healthy: bool,
    /// Why it is (not) healthy, one CamelCase word (e.g. Connected, Disconnected).
    #[serde(default)]
    pub reason: String,
    /// The same for people (the broker's last error, without credentials).
    #[serde(default)]
    pub message: String,
    /// Since when `healthy` has had its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Messages this relay wrote to the provider and it acknowledged, since the relay started.
    #[serde(default)]
    pub published: u64,
    /// Writes of this relay to the provider that failed, since the relay started.
    #[serde(default)]
    pub failed: u64,
    /// Messages waiting in this relay's backlog for the provider.
    #[serde(default)]
    pub backlog: u64,
    /// 99th percentile publish latency in milliseconds (interpolated within its histogram
    /// bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    /// Accepted messages the provider missed for good on this relay (see the provider row).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed: u64,
    /// Backlog appends that failed with a storage error on this relay.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backlog_errors: u64,
    /// Replay cannot make the provider complete on this relay: reconcile by hand.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_reconciliation: bool,
    /// Why it needs reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation_reason: Option<String>,
    /// The relay no longer writes this provider (a migration step or a rollback removed it),
    /// but its backlog file still holds `backlog` messages for it: counted toward the backlog,
    /// never toward health.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orphaned: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// The index (0-based) of the step in force in spec.migration.steps.
    pub current_step: u32,
    /// Its name.
    pub step_name: String,
    /// Why the pipeline is in this step (e.g. GatesPassed, Promoted, RolledBack, Paused).
    pub reason: String,
    /// What the step waits for, or why it moved, for people.
    #[serde(default)]
    pub message: String,
    /// When the step began.
    pub step_started_at: Time,
    /// Earlier steps, oldest first (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StepRecord>,
    /// A request from a person or a tool (`kubectl dualwrite`, an Argo CD action) that the
    /// operator has not acted on yet. Written only by requesters through the status
    /// subresource, never by the operator's apply (it never sends this field, so it never
    /// clobbers a newer request); the operator acts on it once and removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<MigrationRequest>,
    /// The step is held by a request (pause, rollback, abort): the gates do not advance it
    /// until a `resume` (or a `promote`) request. Written by the operator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<MigrationHold>,
    /// The last request the operator acted on, and what came of it. Written by the operator
    /// only; a request equal to this one is not acted on again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<RequestOutcome>,
}

/// What a migration request asks for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MigrationAction {
    /// Pass the current step's gates once (a manual gate included), or go to `toStep`.
    Promote,
    /// Go to the last step, past every gate.
    PromoteFull,
    /// Hold the current step: the gates do not advance it.
    Pause,
    /// Lift a hold made by Pause, Rollback or Abort (not `spec.migration.paused`).
    Resume,
    /// Go back to the previous step (or `toStep`) and hold there.
    Rollback,
    /// Go back to the first step and hold there.
    Abort,
    /// Run the consistency check now: the operator starts a Job (`dualwrite verify --pipeline`
    /// under `<pipeline>-verify`) and names it in `lastRequest.job`; the step does not change.
    Verify,
}

/// A request to the migration's step machine, written to the status subresource (as Argo
/// Rollouts' promote and abort are): Git and Argo CD self-heal never see it, and it pins nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRequest {
    /// What to do: Promote, PromoteFull, Pause, Resume, Rollback, Abort or Verify.
    pub action: MigrationAction,
    /// The 0-based step Promote or Rollback goes to (default: the next or previous step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_step: Option<u32>,
    /// When it was requested (RFC 3339), kept as written: the operator removes the request only
    /// while it is still exactly the one it acted on.
    pub requested_at: String,
    /// Who asked (a user name, `argocd`), for the history and the Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Tells two otherwise equal requests apart (`requestedAt` has whole seconds): the
    /// pipeline's resourceVersion when it was requested, or any string unique to the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// A hold the operator keeps on the current step after a pause, rollback or abort request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationHold {
    /// The request that made it: Paused, RolledBack or Aborted.
    pub reason: String,
    /// Since when the step has been held.
    pub since: Time,
}

/// What the operator did with a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestOutcome {
    /// The request as it was written.
    pub request: MigrationRequest,
    /// The request was carried out (false: refused, `message` says why).
    pub accepted: bool,
    /// What was done, or why not.
    pub message: String,
    /// When the operator acted on it.
    pub handled_at: Time,
    /// The Job a Verify request started (in the pipeline's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// The step's index (0-based).
    pub step: u32,
    /// The step's name.
    pub name: String,
    /// The strategy it ran.
    pub strategy: Strategy,
    /// Why it was entered (e.g. GatesPassed, Promoted, RolledBack).
    pub reason: String,
    /// When it was entered.
    pub entered_at: Time,
    /// Set when a request made this record (`kubectl dualwrite`, an Argo CD action): who asked,
    /// or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackStatus {
    /// Automatic fallback to BestEffort is in force.
    pub active: bool,
    /// Why: ProviderDown (in force), Recovered or Disabled (ended).
    pub reason: String,
    /// When it last flipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyStatus {
    /// When the check ran.
    pub checked_at: Time,
    /// Messages looked at per provider.
    #[serde(default)]
    pub seen: BTreeMap<String, u64>,
    /// Ids present on some provider but missing on this one.
    #[serde(default)]
    pub missing: BTreeMap<String, u64>,
    /// Ids this provider holds more than once.
    #[serde(default)]
    pub duplicates: BTreeMap<String, u64>,
    /// Ids this provider holds whose content differs from another copy of the id.
    #[serde(default)]
    pub conflicting: BTreeMap<String, u64>,
    /// Every provider holds every message of the window, once and alike (the `consistent`
    /// gate reads this).
    pub consistent: bool,
    /// The check read messages ingested from this time (`--window`); absent: everything the
    /// brokers held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// The check read messages ingested before this time (its start less `--settle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Time>,
}

/// Writes `status` (the fields this field manager owns, and only those) into the pipeline's
/// status with server-side apply under `manager`, taking ownership from any other manager.
/// The one place that knows the apply body's shape.
pub async fn apply_status(
    api: &Api<DualWritePipeline>,
    name: &str,
    manager: &str,
    status: &impl Serialize,
) -> Result<DualWritePipeline, kube::Error> {
    let body = serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", super::GROUP),
        "kind": "DualWritePipeline",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&body),
    )
    .await
}

impl From<&ProviderRow> for ProviderReport {
    fn from(row: &ProviderRow) -> Self {
        let since =
            k8s_openapi::jiff::Timestamp::from_microsecond(row.health.since.timestamp_micros())
                .ok()
                .map(Time);
        ProviderReport {
            name: row.name.clone(),
            healthy: row.health.healthy,
            reason: row.health.reason.clone(),
            message: row.health.message.clone(),
            since,
            published: row.stats.published,
            failed: row.stats.failed,
            backlog: row.stats.backlog,
            latency_p99_ms: (row.latency.count > 0).then_some(row.latency.p99_ms),
            missed: row.missed,
            backlog_errors: row.backlog_errors,
            needs_reconciliation: row.needs_reconciliation,
            reconciliation_reason: row.reconciliation_reason.clone(),
            orphaned: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status JSON (and so `kubectl`, kstatus and the printer columns) reads the same words
    /// as when readiness and the provider type were strings.
    #[test]
    fn provider_rows_serialize_as_plain_words() {
        for (ready, word) in [
            (Readiness::True, "True"),
            (Readiness::False, "False"),
            (Readiness::Unknown, "Unknown"),
        ] {
            let row = ProviderStatus {
                ready,
                ..ProviderStatus::new("k", ProviderKind::Kafka)
            };
            let json = serde_json::to_value(&row).unwrap();
            assert_eq!(json["ready"], word);
            assert_eq!(json["type"], "kafka");
            assert_eq!(ready.to_string(), word);
            assert_eq!(serde_json::from_value::<ProviderStatus>(json).unwrap(), row);
        }
    }
}
