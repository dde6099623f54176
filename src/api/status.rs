//! The status of a `DualWritePipeline`: what the operator and the relays observed, and the one
//! helper that writes a part of it with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::Api;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DualWritePipeline, Strategy};

/// What the operator and the relays observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DualWritePipelineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The strategy in force now (the spec's, a migration step's, or the fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
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
    /// Messages acknowledged, summed over providers and fresh relays.
    #[serde(default)]
    pub published: u64,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyStatus>,
    /// Each relay's own report, written by that relay (one entry per pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub relays: Vec<RelayReport>,
    /// Ready, Reconciling, Stalled, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// "True", "False" or "Unknown".
    pub ready: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default)]
    pub published: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub backlog: u64,
    /// 99th percentile publish latency in milliseconds (bucket bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    /// The backlog passed its limits: replay cannot guarantee completeness; reconcile by hand.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_reconciliation: bool,
}

/// One relay pod's numbers, written by the relay itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayReport {
    /// The pod name.
    pub name: String,
    pub reported_at: Time,
    /// The strategy the relay applies.
    pub strategy: Strategy,
    /// The spec generation the relay runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default)]
    pub providers: Vec<ProviderReport>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderReport {
    pub name: String,
    pub healthy: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// Since when `healthy` has had its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    #[serde(default)]
    pub published: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub backlog: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_reconciliation: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    pub current_step: u32,
    pub step_name: String,
    /// Why the pipeline is in this step (e.g. GatesPassed, Promoted, RolledBack, Paused).
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub step_started_at: Time,
    /// Earlier steps, oldest first (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StepRecord>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub step: u32,
    pub name: String,
    pub strategy: Strategy,
    pub reason: String,
    pub entered_at: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackStatus {
    /// Automatic fallback to BestEffort is in force.
    pub active: bool,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyStatus {
    pub checked_at: Time,
    /// Messages looked at per provider.
    #[serde(default)]
    pub seen: BTreeMap<String, u64>,
    /// Ids present on some provider but missing on this one.
    #[serde(default)]
    pub missing: BTreeMap<String, u64>,
    #[serde(default)]
    pub duplicates: BTreeMap<String, u64>,
    pub consistent: bool,
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
