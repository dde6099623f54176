//! The spec of a `DualWritePipeline`: the providers, the strategy and the migration, as a user
//! writes them. Plain data; [`super::validate`] checks it and turns it into the core's types.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::{
    DNS_LABEL, DURATION, DURATION_MS, KAFKA_BROKER, KAFKA_TOPIC, NATS_SUBJECT, NATS_URLS, TIMEOUT,
};
use super::{DualWritePipelineStatus, ProviderKind, Strategy};

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
    #[schemars(regex(pattern = TIMEOUT))]
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
        regex(pattern = DNS_LABEL)
    )]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
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
    #[schemars(length(min = 1, max = 1024), regex(pattern = NATS_URLS))]
    pub url: String,
    /// Subject the messages are published on (no wildcards, no spaces).
    #[schemars(length(min = 1, max = 255), regex(pattern = NATS_SUBJECT))]
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
    #[schemars(regex(pattern = DURATION_MS))]
    pub duplicate_window: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.topic != '.' && self.topic != '..'").message("kafka.topic: '.' and '..' are not legal topic names"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap servers, `host:port`.
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = KAFKA_BROKER)))]
    pub brokers: Vec<String>,
    /// Letters, digits, '.', '_' and '-' (Kafka's rule).
    #[schemars(length(min = 1, max = 249), regex(pattern = KAFKA_TOPIC))]
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
    #[schemars(regex(pattern = DURATION))]
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
    #[schemars(regex(pattern = DURATION))]
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
    #[schemars(regex(pattern = DURATION))]
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
