//! The `DualWritePipeline` resource (`dualwrite.io/v1alpha1`): spec, status and validation.
//!
//! The spec is plain data that the relay also reads from a manifest file, so the same YAML works
//! with `kubectl apply` and with `dualwrite relay -f`. The CRD schema carries CEL rules that
//! reject bad manifests at apply time; [`DualWritePipelineSpec::validate`] applies the same rules
//! where no API server is involved (a manifest file, the seed's environment variables).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::composite::Strategy;

/// The API group of every resource here.
pub const GROUP: &str = "dualwrite.io";
/// Most providers one pipeline may hold (bounds the CEL rules' cost, too).
pub const MAX_PROVIDERS: usize = 8;

/// A pipeline that writes every ingested message to several brokers at once.
// The printer columns repeat `type_ = ...`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dualwrite.io",
    version = "v1alpha1",
    kind = "DualWritePipeline",
    shortname = "dwp",
    category = "dualwrite",
    namespaced,
    status = "DualWritePipelineStatus",
    scale(
        spec_replicas_path = ".spec.relay.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Strategy", type_ = "string", json_path = ".status.strategy"),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.migration.stepName"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].status",
        priority = 1
    ),
    printcolumn(name = "Providers", type_ = "string", json_path = ".status.summary"),
    printcolumn(name = "Published", type_ = "integer", json_path = ".status.published"),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        json_path = ".status.backlog",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.providers.all(p, self.providers.exists_one(q, q.name == p.name))").message("spec.providers: provider names must be unique"))]
#[x_kube(validation = Rule::new("!has(self.migration) || self.migration.steps.all(s, !has(s.readFrom) || self.providers.exists(p, p.name == s.readFrom))").message("spec.migration.steps[].readFrom must name a provider listed in spec.providers"))]
#[x_kube(validation = Rule::new("!has(self.migration) || self.migration.steps.all(s, !has(s.providers) || s.providers.all(n, self.providers.exists(p, p.name == n)))").message("spec.migration.steps[].providers may only name providers listed in spec.providers"))]
#[serde(rename_all = "camelCase")]
pub struct DualWritePipelineSpec {
    /// The brokers to write to, in order; the first is the default read provider.
    #[schemars(length(min = 1, max = 8))]
    pub providers: Vec<ProviderSpec>,
    /// What a publish requires: FailFast (every provider acknowledges) or BestEffort (at least one).
    /// During a migration the current step's strategy applies instead.
    #[serde(default)]
    pub strategy: Strategy,
    /// Deadline of one write to one provider, e.g. `5s` or `750ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]*[1-9][0-9]*(ms|s|m))+$"))]
    pub publish_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelaySpec>,
    /// Hinted handoff: writes missed by a provider under BestEffort are kept and replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffSpec>,
    /// A broker migration as an ordered list of steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationSpec>,
}

/// One broker the pipeline writes to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'kafka' || has(self.kafka)").message("a provider of type kafka needs a kafka block with brokers and topic"))]
#[x_kube(validation = Rule::new("self.type != 'nats' || has(self.nats)").message("a provider of type nats needs a nats block with url and subject"))]
#[x_kube(validation = Rule::new("!has(self.kafka) || self.type == 'kafka'").message("kafka settings are only allowed on a provider of type kafka"))]
#[x_kube(validation = Rule::new("!has(self.nats) || self.type == 'nats'").message("nats settings are only allowed on a provider of type nats"))]
#[x_kube(validation = Rule::new("!has(self.memory) || self.type == 'memory'").message("memory settings are only allowed on a provider of type memory"))]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Unique within the pipeline; a DNS label (lower case, digits, '-').
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    Memory,
    Nats,
    Kafka,
}

impl std::str::FromStr for ProviderType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(ProviderType::Memory),
            "nats" => Ok(ProviderType::Nats),
            "kafka" => Ok(ProviderType::Kafka),
            _ => Err(format!(
                "unknown provider type {s:?}: use memory, nats or kafka"
            )),
        }
    }
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderType::Memory => "memory",
            ProviderType::Nats => "nats",
            ProviderType::Kafka => "kafka",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemorySpec {
    /// Most messages the queue holds; a full queue refuses writes ("queue full").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub capacity: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// Server URL(s), e.g. `nats://nats:4222` (comma-separated for several).
    #[schemars(length(min = 1, max = 1024))]
    pub url: String,
    /// Subject the messages are published on (no wildcards, no spaces).
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s*>]+$"))]
    pub subject: String,
    /// JetStream stream holding the subject; created when missing. Default: the subject in upper
    /// case with '.' and '-' turned into '_'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub stream: Option<String>,
    /// Durable consumer name used by `subscribe`. Default: `dualwrite-<provider name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub durable: Option<String>,
    /// JetStream de-duplication window for `Nats-Msg-Id`, e.g. `2m` (the server's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub duplicate_window: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap servers, `host:port`.
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = r"^[^\s,]+:[0-9]+$")))]
    pub brokers: Vec<String>,
    /// Letters, digits, '.', '_' and '-' (Kafka's rule).
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
    /// Partitions when the topic is created (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,
    /// Replication factor when the topic is created (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,
    /// Consumer group used by `subscribe`. Default: `dualwrite-<provider name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Extra librdkafka settings (e.g. `security.protocol`), applied last.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestSpec {
    /// Port of the HTTP ingest API (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Largest accepted request body in bytes (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_body_bytes: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// Relay pods (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Relay image; default: the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoffSpec {
    /// Keep missed writes and replay them (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Most messages kept per provider before it is marked as needing reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages: Option<u64>,
    /// Oldest kept message before the provider is marked as needing reconciliation, e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub max_age: Option<String>,
}

/// A migration: ordered steps, each with a strategy and gates to leave it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.targetStep) || self.targetStep < size(self.steps)").message("spec.migration.targetStep must name an existing step: 0 to the number of steps - 1"))]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    #[schemars(length(min = 1, max = 16))]
    pub steps: Vec<MigrationStep>,
    /// Stop advancing (the current step stays in force).
    #[serde(default)]
    pub paused: bool,
    /// Move to exactly this step (0-based), ignoring gates: a higher index promotes, a lower one
    /// rolls back. Unset: advance step by step as the gates open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 15))]
    pub target_step: Option<u32>,
    /// Under FailFast, a provider down this long flips the pipeline to BestEffort until it is
    /// healthy and its backlog is empty, e.g. `2m`. Unset: no automatic fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub fallback_after: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.providers) || !has(self.readFrom) || self.readFrom in self.providers").message("spec.migration.steps[].readFrom must be one of the step's providers"))]
#[serde(rename_all = "camelCase")]
pub struct MigrationStep {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    pub strategy: Strategy,
    /// The providers written in this step (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub providers: Option<Vec<String>>,
    /// The provider consumers should read from in this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_from: Option<String>,
    /// Conditions to leave this step for the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<StepGates>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepGates {
    /// Least time in the step, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub min_duration: Option<String>,
    /// Every provider healthy (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_healthy: Option<bool>,
    /// Every backlog empty (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_empty: Option<bool>,
    /// The last consistency check found nothing missing (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent: Option<bool>,
    /// Never leave automatically; only `targetStep` moves on (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<bool>,
}

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

/// Parses a duration such as `5s`, `750ms`, `2m` or `1h30m`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{field}: {text:?} is not a duration like 5s, 750ms or 2m ({e})"))
}

impl DualWritePipelineSpec {
    /// The same rules the CRD schema enforces, for manifests that reach the relay without an API
    /// server. Returns every problem found, each saying how to fix it.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.providers.is_empty() {
            errs.push("spec.providers: list at least one provider".to_string());
        }
        if self.providers.len() > MAX_PROVIDERS {
            errs.push(format!("spec.providers: at most {MAX_PROVIDERS} providers"));
        }
        let mut names = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = format!("spec.providers[{i}]");
            if !is_dns_label(&p.name) {
                errs.push(format!(
                    "{at}.name: {:?} must be a DNS label (lower case letters, digits and '-', at most 63)",
                    p.name
                ));
            }
            if !names.insert(p.name.as_str()) {
                errs.push(format!(
                    "{at}.name: {:?} is used twice; provider names must be unique",
                    p.name
                ));
            }
            let blocks = [
                (ProviderType::Memory, p.memory.is_some()),
                (ProviderType::Nats, p.nats.is_some()),
                (ProviderType::Kafka, p.kafka.is_some()),
            ];
            for (kind, present) in blocks {
                if present && kind != p.kind {
                    errs.push(format!(
                        "{at}: {kind} settings are only allowed on a provider of type {kind}"
                    ));
                }
            }
            match p.kind {
                ProviderType::Nats => match &p.nats {
                    None => errs.push(format!(
                        "{at}: a provider of type nats needs a nats block with url and subject"
                    )),
                    Some(n) => {
                        if n.url.trim().is_empty() {
                            errs.push(format!(
                                "{at}.nats.url: give the server URL, e.g. nats://nats:4222"
                            ));
                        }
                        if n.subject.trim().is_empty() {
                            errs.push(format!("{at}.nats.subject: give the subject to publish on"));
                        } else if n
                            .subject
                            .contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
                        {
                            errs.push(format!("{at}.nats.subject: {:?} must be one subject, without wildcards or spaces", n.subject));
                        }
                    }
                },
                ProviderType::Kafka => match &p.kafka {
                    None => errs.push(format!(
                        "{at}: a provider of type kafka needs a kafka block with brokers and topic"
                    )),
                    Some(k) => {
                        if k.brokers.is_empty() || k.brokers.iter().any(|b| b.trim().is_empty()) {
                            errs.push(format!(
                                "{at}.kafka.brokers: list at least one broker as host:port"
                            ));
                        }
                        if k.topic.trim().is_empty() {
                            errs.push(format!("{at}.kafka.topic: give the topic to write to"));
                        } else if !k
                            .topic
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                        {
                            errs.push(format!("{at}.kafka.topic: {:?} may hold only letters, digits, '.', '_' and '-'", k.topic));
                        }
                    }
                },
                ProviderType::Memory => {
                    if p.memory.as_ref().and_then(|m| m.capacity) == Some(0) {
                        errs.push(format!("{at}.memory.capacity: must be at least 1"));
                    }
                }
            }
        }
        if let Some(t) = &self.publish_timeout {
            match parse_duration("spec.publishTimeout", t) {
                Ok(d) if d.is_zero() => {
                    errs.push("spec.publishTimeout: must be more than 0".into())
                }
                Ok(_) => {}
                Err(e) => errs.push(e),
            }
        }
        if let Some(m) = &self.migration {
            if m.steps.is_empty() {
                errs.push("spec.migration.steps: list at least one step".into());
            }
            for (i, s) in m.steps.iter().enumerate() {
                let at = format!("spec.migration.steps[{i}]");
                for n in s.providers.iter().flatten().chain(s.read_from.iter()) {
                    if !names.contains(n.as_str()) {
                        errs.push(format!(
                            "{at}: {n:?} is not a provider listed in spec.providers"
                        ));
                    }
                }
                if let Some(min) = s.gates.as_ref().and_then(|g| g.min_duration.as_ref()) {
                    if let Err(e) = parse_duration(&format!("{at}.gates.minDuration"), min) {
                        errs.push(e);
                    }
                }
            }
            if let Some(t) = m.target_step {
                if t as usize >= m.steps.len() {
                    errs.push(format!(
                        "spec.migration.targetStep: {t} is past the last step ({})",
                        m.steps.len().saturating_sub(1)
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The publish deadline (default [`crate::composite::DEFAULT_PUBLISH_TIMEOUT`]).
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
            .as_deref()
            .and_then(|t| parse_duration("spec.publishTimeout", t).ok())
            .unwrap_or(crate::composite::DEFAULT_PUBLISH_TIMEOUT)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The CRD as YAML, exactly as `crds/` holds it.
pub fn crd_yaml() -> String {
    let crd = DualWritePipeline::crd();
    format!(
        "# Generated by `dualwrite crd` from src/api; do not edit by hand.\n{}",
        serde_yaml::to_string(&crd).expect("the CRD serializes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> DualWritePipelineSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/dualwrite.io_dualwritepipelines.yaml"
        ))
        .expect("crds/dualwrite.io_dualwritepipelines.yaml exists");
        assert!(
            committed == crd_yaml(),
            "crds/ drifted from src/api: run `cargo run -- crd > crds/dualwrite.io_dualwritepipelines.yaml`"
        );
    }

    #[test]
    fn crd_carries_the_cel_rules_and_list_map_keys() {
        let yaml = crd_yaml();
        for needle in [
            "provider names must be unique",
            "a provider of type kafka needs a kafka block",
            "x-kubernetes-list-map-keys",
            "shortNames:\n    - dwp",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle:?}");
        }
    }

    #[test]
    fn validation_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("providers: [{name: a, type: memory}]", None),
            ("providers: []", Some("at least one provider")),
            (
                "providers: [{name: a, type: memory}, {name: a, type: memory}]",
                Some("used twice"),
            ),
            ("providers: [{name: A_b, type: memory}]", Some("DNS label")),
            ("providers: [{name: k, type: kafka}]", Some("needs a kafka block")),
            (
                "providers: [{name: k, type: kafka, kafka: {brokers: [], topic: t}}]",
                Some("at least one broker"),
            ),
            ("providers: [{name: n, type: nats}]", Some("needs a nats block")),
            (
                "providers: [{name: n, type: memory, nats: {url: u, subject: s}}]",
                Some("nats settings are only allowed"),
            ),
            (
                "{providers: [{name: a, type: memory}], publishTimeout: soon}",
                Some("is not a duration"),
            ),
            (
                "{providers: [{name: a, type: memory}], migration: {steps: [{name: s, strategy: FailFast, readFrom: zz}]}}",
                Some("\"zz\" is not a provider"),
            ),
            (
                "{providers: [{name: a, type: memory}], migration: {targetStep: 3, steps: [{name: s, strategy: FailFast}]}}",
                Some("past the last step"),
            ),
        ];
        for (yaml, want) in cases {
            let got = spec(yaml).validate();
            match (want, got) {
                (None, Ok(())) => {}
                (Some(w), Err(errs)) => assert!(
                    errs.iter().any(|e| e.contains(w)),
                    "{yaml}: expected {w:?} in {errs:?}"
                ),
                (want, got) => panic!("{yaml}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn unknown_provider_types_are_rejected_when_parsing() {
        let err =
            serde_yaml::from_str::<DualWritePipelineSpec>("providers: [{name: a, type: redis}]")
                .unwrap_err();
        assert!(err.to_string().contains("redis"), "{err}");
    }

    #[test]
    fn publish_timeout_defaults_and_parses() {
        assert_eq!(
            spec("providers: []").publish_timeout(),
            crate::composite::DEFAULT_PUBLISH_TIMEOUT
        );
        assert_eq!(
            spec("{providers: [], publishTimeout: 750ms}").publish_timeout(),
            Duration::from_millis(750)
        );
    }
}
