//! The spec of a `DualWritePipeline`: the providers, the strategy and the migration, as a user
//! writes them. Plain data; [`super::validate`] checks it and turns it into the core's types.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::{
    CRON_SCHEDULE, DNS_LABEL, DURATION, DURATION_MS, KAFKA_BROKER, KAFKA_KEY, KAFKA_TOPIC,
    NATS_SUBJECT, NATS_URLS, SECRET_KEY, SECRET_NAME, TIMEOUT,
};
use super::validate::{
    KAFKA_CONFIG_MESSAGE, KAFKA_CONFIG_RULE, KAFKA_MIN_ISR_MESSAGE, KAFKA_MIN_ISR_RULE,
    PIPELINE_NAME_MESSAGE, PIPELINE_NAME_RULE, SCHEDULED_NAME_MESSAGE, SCHEDULED_NAME_RULE,
};
use super::{Acceptance, DualWritePipelineStatus, ProviderKind, Strategy};

/// `spec.relay.storage` is the StatefulSet's volume claim template, which Kubernetes does not
/// let change: a transition rule refuses a change at apply time instead of leaving the operator
/// failing to apply the StatefulSet.
const STORAGE_FIXED_RULE: &str = "has(oldSelf.relay) && has(oldSelf.relay.storage) ? (has(self.relay) && has(self.relay.storage) && self.relay.storage == oldSelf.relay.storage) : !(has(self.relay) && has(self.relay.storage))";
/// Acceptance on the relay's disk needs the disk backlog (the one validator checks the same).
const RELAY_DISK_RULE: &str =
    "!has(self.acceptance) || self.acceptance != 'RelayDisk' || !has(self.enabled) || self.enabled";
/// The message of [`RELAY_DISK_RULE`], shared with the validator.
pub(super) const RELAY_DISK_MESSAGE: &str = "spec.handoff.acceptance: RelayDisk needs hinted handoff (the relay's disk backlog): remove spec.handoff.enabled: false, or use acceptance BrokerAck";
const STORAGE_FIXED_MESSAGE: &str = "spec.relay.storage cannot change once the pipeline exists (a StatefulSet's volume claim template is immutable): keep the old value, or delete and re-create the pipeline (the relays' claims are retained: see the README on removing them)";

/// A pipeline that writes every ingested message to several brokers at once.
// The printer columns repeat `type_ = ...`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dualwrite.io",
    version = "v1alpha1",
    kind = "DualWritePipeline",
    doc = "A relay that writes every message it ingests to several brokers (memory, NATS JetStream, Kafka) under a strategy, with a durable backlog per broker, and migrates between brokers step by step. The operator runs the relays (a StatefulSet and a Service) and reports their health, counts and the migration in status.",
    shortname = "dwp",
    category = "dualwrite",
    namespaced,
    // The name names the relay's objects (`<name>-relay`: a Service, a DNS-1035 label, and a
    // StatefulSet whose revision label adds 11 characters under the 63 of a label value), so it
    // must start with a letter and leave room for those suffixes.
    validation = Rule::new(PIPELINE_NAME_RULE).message(PIPELINE_NAME_MESSAGE),
    validation = Rule::new(SCHEDULED_NAME_RULE).message(SCHEDULED_NAME_MESSAGE),
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
    // The provider consumers read from now: the current step's, else the first provider.
    printcolumn(name = "Read From", type_ = "string", json_path = ".status.readFrom"),
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
    // Messages the pipeline accepted: once each (not once per provider), never backwards
    // across relay restarts (status.publishedRetired).
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
#[x_kube(validation = Rule::new(STORAGE_FIXED_RULE).message(STORAGE_FIXED_MESSAGE))]
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
    /// The relay's HTTP ingest API: port, TLS, authentication, limits.
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
    /// The scheduled consistency check (`dualwrite verify --pipeline` as a CronJob the operator
    /// owns), whose verdict the migration gate `consistent: true` reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencySpec>,
}

/// The scheduled consistency check: with a `schedule`, the operator owns a CronJob
/// `<name>-verify` that runs `dualwrite verify --pipeline` under the ServiceAccount
/// `<name>-verify` (not the relay's: a relay's token cannot write the verdict) with the relay's
/// Secret files, and writes its verdict into the ConfigMap `<name>-consistency`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencySpec {
    /// When to check, as a CronJob schedule in the cluster's time zone: five fields (minute hour
    /// day-of-month month day-of-week), e.g. `*/15 * * * *`, or `@hourly`, `@daily`, ... Unset: no
    /// scheduled check (a removed schedule removes the CronJob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = CRON_SCHEDULE))]
    pub schedule: Option<String>,
    /// Compare only the messages ingested within this span before each check, e.g. `1h`
    /// (`dualwrite verify --window`). Unset: everything the brokers hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub window: Option<String>,
    /// Leave out messages younger than this, whose writes may still be in flight, e.g. `30s`
    /// (`dualwrite verify --settle`; default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub settle: Option<String>,
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
    /// The broker: `memory` (in the relay, for trials), `nats` (JetStream) or `kafka`; the
    /// block of the same name holds its settings.
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    /// Settings of a `memory` provider (a bounded in-relay queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySpec>,
    /// Settings of a `nats` provider: server URL, subject, stream, TLS and authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
    /// Settings of a `kafka` provider: brokers, topic, TLS, authentication and tuning.
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
    /// Replicas of the stream when the relay creates it (default 1: a single server or a test
    /// cluster; use 3 on a production cluster of three or more servers). An existing stream is
    /// never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: Option<u8>,
    /// TLS to the servers (a `tls://` URL or a server that requires TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Credentials, from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<NatsAuthenticationSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.topic != '.' && self.topic != '..'").message("kafka.topic: '.' and '..' are not legal topic names"))]
#[x_kube(validation = Rule::new(KAFKA_CONFIG_RULE).message(Message::Expression(KAFKA_CONFIG_MESSAGE.into())))]
#[x_kube(validation = Rule::new(KAFKA_MIN_ISR_RULE).message(KAFKA_MIN_ISR_MESSAGE))]
#[x_kube(validation = Rule::new("!has(self.authentication) || self.authentication.type != 'tls' || has(self.tls)").message("kafka.authentication: type tls needs a tls block"))]
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
    /// Replication factor when the relay creates the topic (default 1: a single broker or a
    /// test cluster; use 3 on a production cluster). An existing topic is never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of a topic the relay creates (default: the broker's, 1 unless the
    /// cluster sets it; use 2 with a replication factor of 3, so an `acks=all` write survives
    /// the loss of a broker). At most `replicationFactor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub min_insync_replicas: Option<i32>,
    /// The record key, which picks the partition and so the unit of order: `id` (default; no
    /// order across messages on several partitions), `source`, or `metadata:<field>` (that
    /// metadata field's value; a message without the field is keyed by its id). The id is
    /// always in the `message_id` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 263), regex(pattern = KAFKA_KEY))]
    pub key: Option<String>,
    /// Consumer group used by `subscribe`. Default: `dualwrite-<provider name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// librdkafka tuning settings (batching, linger, compression, buffering, timeouts,
    /// `client.id`, ...), applied last. Only keys on the allowlist in the README are accepted:
    /// security goes through `tls` and `authentication`, and the delivery guarantees (`acks=all`,
    /// idempotence, a finite message timeout) cannot be changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub config: BTreeMap<String, String>,
    /// TLS to the brokers (`security.protocol` SSL, or SASL_SSL with SASL authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Credentials, from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<KafkaAuthenticationSpec>,
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
    /// Serve the ingest API over TLS with this certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<CertAndKeySecretSource>,
    /// Require `Authorization: Bearer <token>` on the ingest API; the Secret key holds the
    /// accepted tokens, one a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<IngestAuthenticationSpec>,
    /// Port of `/health`, `/ready`, `/stats` and `/metrics` when they should not share the ingest
    /// listener (so probes and scraping need neither TLS nor a token). Unset: the ingest port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub probe_port: Option<u16>,
    /// Most requests served at once; past it, 503 with `Retry-After` (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight: Option<u32>,
    /// Most open connections; past it new ones wait to be accepted (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections: Option<u32>,
    /// Time a client has to send a request's headers (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TIMEOUT))]
    pub header_timeout: Option<String>,
    /// Time a whole request may take, body and publish included (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TIMEOUT))]
    pub request_timeout: Option<String>,
    /// How long each relay remembers an accepted message id: a request with that id and the same
    /// content is answered 202 as a duplicate, with other content 409 (default 2m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TIMEOUT))]
    pub duplicate_window: Option<String>,
    /// How many accepted ids each relay remembers at most, oldest forgotten first (default
    /// 100000, about 13 MiB: some 130 bytes an id, whatever its length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub duplicate_window_ids: Option<u32>,
    /// Most messages in one `POST /api/v1/ingest/batch` request (default 1000); a larger batch
    /// is refused with 413 before any write. The whole body also stays under `maxBodyBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_batch_messages: Option<u32>,
}

/// Bearer-token authentication of the ingest API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestAuthenticationSpec {
    /// The Secret key holding the accepted tokens, one a line.
    pub tokens_secret: SecretKeySource,
}

/// The relays: a StatefulSet of `replicas` pods, each with a PersistentVolumeClaim for its
/// hinted-handoff backlog, and how those pods are placed and sized.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// Relay pods (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Relay image; default: the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of the relay container. Unset: requests 100m CPU and 128Mi memory, a
    /// 512Mi memory limit (Burstable, never BestEffort). Set: used as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The PersistentVolumeClaim of each relay, which holds its hinted-handoff backlog across
    /// restarts, rollouts and rescheduling. Fixed once the pipeline exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<RelayStorageSpec>,
    /// Secrets of type dockerconfigjson for pulling the relay image from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Labels a node must have to run a relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints of nodes the relays may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity of the relay pods, e.g. to spread them over zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the relay pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra annotations on the relay pods (a change rolls the relays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Extra labels on the relay pods (a change rolls the relays). The operator's own labels
    /// (`app.kubernetes.io/name`, `/instance`, `/managed-by`, `dualwrite.io/pipeline`) win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
}

/// The PersistentVolumeClaim template of the relays' backlog.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.size) || (isQuantity(string(self.size)) && quantity(string(self.size)).isGreaterThan(quantity('0')))").message("spec.relay.storage.size must be a positive quantity such as 1Gi or 500Mi"))]
#[serde(rename_all = "camelCase")]
pub struct RelayStorageSpec {
    /// Size of each relay's claim (default 1Gi). A backlog entry is a message plus a few
    /// dozen bytes: size it for the messages a provider may miss during its longest outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// StorageClass of the claims; unset: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(RELAY_DISK_RULE).message(RELAY_DISK_MESSAGE))]
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
    /// What BestEffort needs to accept a message (answer 202). `BrokerAck` (default): at least
    /// one broker acknowledged it; when none did, the answer is 503 and nothing is kept.
    /// `RelayDisk`: the relay's disk backlog is enough (as Cassandra's consistency level ANY):
    /// a message no broker has yet is accepted once the backlogs hold it, and reaches the
    /// brokers when they are back (lost if the relay's volume is lost first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<Acceptance>,
}

/// A migration: ordered steps, each with a strategy and gates to leave it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.targetStep) || self.targetStep < size(self.steps)").message("spec.migration.targetStep must name an existing step: 0 to the number of steps - 1"))]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// The steps in order (at most 16); the migration starts in the first and advances when a
    /// step's gates open (or as `targetStep` says).
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
    /// The step's name, shown in the STEP column and in status.migration.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The strategy in force during this step (replaces spec.strategy).
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
    /// Never leave automatically; only a promote request (`kubectl dualwrite promote`, the Argo CD
    /// action) or `targetStep` moves on (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<bool>,
}

/// A certificate in a Secret (Strimzi's `CertSecretSource`): the key `certificate` of the
/// Secret `secretName`, PEM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertSecretSource {
    /// The Secret, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME))]
    pub secret_name: String,
    /// The key holding the PEM certificate(s), e.g. `ca.crt`.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub certificate: String,
}

/// A client certificate and its private key in one Secret (Strimzi's `CertAndKeySecretSource`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertAndKeySecretSource {
    /// The Secret, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME))]
    pub secret_name: String,
    /// The key holding the PEM certificate, e.g. `tls.crt`.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub certificate: String,
    /// The key holding the PEM private key, e.g. `tls.key`.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

/// A password in a Secret (Strimzi's `PasswordSecretSource`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecretSource {
    /// The Secret, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME))]
    pub secret_name: String,
    /// The key holding the password.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub password: String,
}

/// One key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySource {
    /// The Secret, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME))]
    pub secret_name: String,
    /// The key within the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

/// TLS to the brokers: the CAs to trust (default: the system's) and, for mutual TLS, a client
/// certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// CA certificates the broker's certificate must chain to; unset: the system's CAs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub trusted_certificates: Vec<CertSecretSource>,
    /// A client certificate and key (NATS mutual TLS; for Kafka use `authentication.type: tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_and_key: Option<CertAndKeySecretSource>,
}

/// How the relay authenticates to Kafka (Strimzi's `KafkaClientAuthentication`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'tls' || has(self.certificateAndKey)").message("kafka.authentication: type tls needs certificateAndKey"))]
#[x_kube(validation = Rule::new("self.type == 'tls' || (has(self.username) && has(self.passwordSecret))").message("kafka.authentication: types plain, scram-sha-256 and scram-sha-512 need username and passwordSecret"))]
#[x_kube(validation = Rule::new("self.type == 'tls' || !has(self.certificateAndKey)").message("kafka.authentication: certificateAndKey is only for type tls"))]
#[x_kube(validation = Rule::new("self.type != 'tls' || (!has(self.username) && !has(self.passwordSecret))").message("kafka.authentication: username and passwordSecret are not for type tls"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaAuthenticationSpec {
    #[serde(rename = "type")]
    pub kind: KafkaAuthType,
    /// SASL user name (plain, scram-sha-256, scram-sha-512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub username: Option<String>,
    /// SASL password (plain, scram-sha-256, scram-sha-512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<PasswordSecretSource>,
    /// Client certificate and key (type tls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_and_key: Option<CertAndKeySecretSource>,
}

/// Kafka authentication mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KafkaAuthType {
    /// Mutual TLS with `certificateAndKey`.
    #[serde(rename = "tls")]
    Tls,
    /// SASL PLAIN (only over TLS in production).
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

/// How the relay authenticates to NATS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(self.type == 'creds') == has(self.credsSecret)").message("nats.authentication: credsSecret goes with type creds, and only with it"))]
#[x_kube(validation = Rule::new("(self.type == 'nkey') == has(self.seedSecret)").message("nats.authentication: seedSecret goes with type nkey, and only with it"))]
#[x_kube(validation = Rule::new("(self.type == 'token') == has(self.tokenSecret)").message("nats.authentication: tokenSecret goes with type token, and only with it"))]
#[x_kube(validation = Rule::new("(self.type == 'user-password') == (has(self.username) && has(self.passwordSecret))").message("nats.authentication: username and passwordSecret go with type user-password, and only with it"))]
#[x_kube(validation = Rule::new("self.type == 'user-password' || (!has(self.username) && !has(self.passwordSecret))").message("nats.authentication: username and passwordSecret are only for type user-password"))]
#[serde(rename_all = "camelCase")]
pub struct NatsAuthenticationSpec {
    #[serde(rename = "type")]
    pub kind: NatsAuthType,
    /// A `.creds` file (user JWT and nkey seed), type creds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_secret: Option<SecretKeySource>,
    /// An nkey seed (`SU…`), type nkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_secret: Option<SecretKeySource>,
    /// User name, type user-password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub username: Option<String>,
    /// Password, type user-password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<PasswordSecretSource>,
    /// A token, type token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeySource>,
}

/// NATS authentication mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NatsAuthType {
    Creds,
    Nkey,
    UserPassword,
    Token,
}
