//! The Kafka provider: one idempotent `acks=all` producer (librdkafka, via rdkafka's
//! `FutureProducer`) shared by every concurrent publish, writing the message's JSON wire form
//! with the record key of [`KafkaKey`] (the id by default) and headers `message_id` and
//! `source`; a publish returns once the delivery report arrived, and an ordered batch
//! (`publish_batch`) is enqueued in order and its reports awaited in order. The topic is created
//! with the AdminClient when missing (with `partitions`, `replication_factor` and
//! `min_insync_replicas`) and never altered when it exists.
//!
//! Lifecycle, and why it is shaped this way:
//! - `connect` fails only on configuration errors that only librdkafka or the cluster can detect
//!   (a property librdkafka rejects, a topic the cluster refuses as specified); the rest of
//!   [`KafkaConfig`] (brokers listed, a legal topic name, partitions ≥ 1) was checked by the
//!   pipeline's validator (`api`) before it got here. An unreachable broker does not fail it:
//!   the relay must start while one broker is down (BestEffort). The provider is then built with
//!   health down (`Unavailable`) and a supervisor task (`supervisor.rs`, in the probe loop
//!   shared with NATS) creates the topic once the broker answers. Until the topic is known to exist, publishes fail at once: writing
//!   before would let a broker with `auto.create.topics.enable` create it with its defaults
//!   instead of the spec's partitions.
//! - Health: librdkafka's `AllBrokersDown` (through the client context) marks the provider down
//!   at once, a failed publish marks it down (`PublishFailed`), and while it is down the
//!   supervisor probes the topic's metadata every [`PROBE_INTERVAL`] and marks it up when the
//!   broker answers — librdkafka reports no "broker is back" event, and waiting for a successful
//!   publish would deadlock a handoff backlog that waits for "healthy" before replaying.
//! - Deadlines: `message.timeout.ms` = publish timeout, so librdkafka itself gives up on a
//!   message for a dead broker (no hang, and no late "ghost" delivery long after the caller was
//!   told it failed); the whole `send` is also bounded by the publish timeout.
//! - A fatal producer error (the idempotence guarantee broke) leaves librdkafka's producer
//!   unusable; the supervisor replaces it with a fresh one.
//! - Credentials (TLS files, the SASL password) are read from their Secret files when the
//!   clients are made. A key that cannot be read does not fail `connect`: the provider starts
//!   with no clients and health down (`SecretMissing`, naming the Secret and key), and the
//!   supervisor reads again every round. It also notices when a file's content changes (the
//!   kubelet rewrites a rotated Secret in place) and then makes fresh clients and swaps them in:
//!   only this provider reconnects, a publish running on the old producer still gets its
//!   delivery report, and nothing else in the relay restarts. A refused login marks the
//!   provider down with `AuthenticationFailed`.
//!
//! Files: this one holds the configuration, `connect` and the [`Provider`] impl; `client` the
//! librdkafka clients, their callbacks and settings; `security` TLS and SASL settings; `topic`
//! topic creation; `publish` one publish; `consumer` the subscription; `supervisor` the health
//! rounds.

mod client;
mod consumer;
mod publish;
mod security;
mod supervisor;
#[cfg(test)]
mod tests;
mod topic;

pub use security::apply_security;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::AdminClient;
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;

use self::client::{ClientConfigs, Clients, HealthContext, KafkaProducer, ProducerSlot, Shared};
use self::supervisor::KafkaProbe;
use self::topic::{ensure_topic_at_start, read_topic_limit, TopicSpec};
use super::secret::{KafkaAuth, SecretFile, SecretMissing, SecretWatch, TlsFiles};
use super::supervise::{run_probe_loop, EnsureError, Supervisor};
use super::{
    BatchError, Health, MessageLimit, MessageStream, Provider, ProviderError, ProviderKind, Stats,
    REASON_AUTH_FAILED,
};
use crate::message::{DataMessage, Outgoing};

pub use super::supervise::PROBE_INTERVAL;

/// Bound on what `connect` waits for the topic check/creation. An unreachable broker usually
/// ends it much earlier (librdkafka reports `AllBrokersDown` within milliseconds).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one metadata probe or topic creation attempt by the supervisor.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on `close`: stopping the supervisor, then on top of the publish timeout for the flush.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Producer batching delay. Concurrent publishes share one producer; a few milliseconds of
/// linger lets librdkafka put many of them in one ProduceRequest (far fewer round trips under
/// load) at the cost of up to this much extra latency per publish when traffic is light.
pub const LINGER_MS: f64 = 5.0;
/// Shortest `message.timeout.ms` handed to librdkafka (0 would mean "never time out").
const MIN_MESSAGE_TIMEOUT_MS: u128 = 10;

/// librdkafka's default `message.max.bytes` (the producer refuses a larger record locally).
const PRODUCER_MAX_BYTES_DEFAULT: u64 = 1_000_000;
/// What a record adds to its value, at most, on the wire (record batch v2): the batch header
/// (61 bytes, one record per batch in the worst case), the record's varint fields, and the
/// varint lengths of the key and of each header. The key and header bytes are added apart.
const RECORD_FRAMING_BYTES: u64 = 61 + 40 + 2 * 10;

/// Record header carrying the message id (the record key carries it too).
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Record header carrying the message's source.
pub const HEADER_SOURCE: &str = "source";

const REASON_CONNECTED: &str = "Connected";
const REASON_CONNECTING: &str = "Connecting";
const REASON_UNAVAILABLE: &str = "Unavailable";
const REASON_FATAL: &str = "ProducerFatal";
/// librdkafka refused the settings made from a changed Secret file (e.g. a CA that is not PEM).
const REASON_INVALID: &str = "InvalidConfiguration";

/// What a record's key is (`kafka.key`): Kafka keeps order per partition, and the key picks the
/// partition, so the key is the unit of order on a topic with several partitions. The message
/// id is always in the `message_id` header (for de-duplication), whatever the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KafkaKey {
    /// The message id (the default): no order across messages on a topic with several
    /// partitions.
    #[default]
    Id,
    /// The message's `source`: every message of one source in one partition, in order.
    Source,
    /// This metadata field's value; a message without the field is keyed by its id.
    Metadata(String),
}

impl KafkaKey {
    /// The spelling in a manifest: `id`, `source` or `metadata:<field>`.
    pub const METADATA_PREFIX: &'static str = "metadata:";

    /// The record key of `msg`.
    pub fn of<'a>(&self, msg: &'a DataMessage) -> &'a str {
        match self {
            KafkaKey::Id => &msg.id,
            KafkaKey::Source => &msg.source,
            KafkaKey::Metadata(field) => msg.metadata.get(field).unwrap_or(&msg.id),
        }
    }
}

impl std::str::FromStr for KafkaKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "id" => Ok(KafkaKey::Id),
            "source" => Ok(KafkaKey::Source),
            _ => match s.strip_prefix(Self::METADATA_PREFIX) {
                Some(field) if !field.is_empty() => Ok(KafkaKey::Metadata(field.to_string())),
                _ => Err(format!(
                    "{s:?} is not a record key: use id, source or metadata:<field>"
                )),
            },
        }
    }
}

impl fmt::Display for KafkaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KafkaKey::Id => f.write_str("id"),
            KafkaKey::Source => f.write_str("source"),
            KafkaKey::Metadata(field) => write!(f, "{}{field}", Self::METADATA_PREFIX),
        }
    }
}

/// What a Kafka provider is built from. The pipeline's validator (`api`) checks it before a
/// provider sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port`.
    pub brokers: Vec<String>,
    pub topic: String,
    /// Partitions when the topic is created (default 1).
    pub partitions: Option<i32>,
    /// Replication factor when the topic is created (default 1).
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of a topic the relay creates (default: the broker's, 1 unless set).
    pub min_insync_replicas: Option<i32>,
    /// What a record's key is (default: the message id).
    pub key: KafkaKey,
    /// Consumer group used by `subscribe`; default `dualwrite-<provider name>`.
    pub group_id: Option<String>,
    /// librdkafka tuning settings from the allowlist, applied last.
    pub config: std::collections::BTreeMap<String, String>,
    /// TLS: CAs to trust (`security.protocol` SSL, or SASL_SSL with SASL).
    pub tls: Option<TlsFiles>,
    pub auth: Option<KafkaAuth>,
}

impl KafkaConfig {
    /// Every Secret file this provider reads (to re-root them, and to watch them for rotation).
    pub fn secret_files_mut(&mut self) -> Vec<&mut SecretFile> {
        let mut out = self
            .tls
            .as_mut()
            .map(TlsFiles::files_mut)
            .unwrap_or_default();
        out.extend(
            self.auth
                .as_mut()
                .map(KafkaAuth::files_mut)
                .unwrap_or_default(),
        );
        out
    }

    /// Every Secret file this provider reads.
    pub fn secret_files(&self) -> Vec<&SecretFile> {
        let mut out = self.tls.as_ref().map(TlsFiles::files).unwrap_or_default();
        out.extend(self.auth.as_ref().map(KafkaAuth::files).unwrap_or_default());
        out
    }

    /// The bootstrap servers as librdkafka takes them: `host:port,host:port`.
    fn bootstrap_servers(&self) -> String {
        let brokers: Vec<&str> = self.brokers.iter().map(|b| b.trim()).collect();
        brokers.join(",")
    }

    /// The consumer group `subscribe` reads with.
    fn group_id(&self, provider: &str) -> String {
        self.group_id
            .clone()
            .filter(|g| !g.trim().is_empty())
            .unwrap_or_else(|| format!("dualwrite-{provider}"))
    }

    /// The topic as it is created when missing (an existing one is used as it is).
    fn topic_spec(&self) -> TopicSpec {
        TopicSpec {
            name: self.topic.trim().to_string(),
            partitions: self.partitions.unwrap_or(1),
            replication_factor: self.replication_factor.unwrap_or(1),
            min_insync_replicas: self.min_insync_replicas,
        }
    }
}

/// A Kafka provider. See the module documentation.
pub struct KafkaProvider {
    name: String,
    topic: String,
    key: KafkaKey,
    group_id: String,
    publish_timeout: Duration,
    /// The producer's `message.max.bytes` (librdkafka refuses a larger record itself).
    producer_max_bytes: u64,
    producer: Arc<ProducerSlot>,
    shared: Arc<Shared>,
    /// The health supervisor; its stop signal also ends subscription streams.
    supervisor: Supervisor,
}

/// Why a set of clients could not be made.
enum BuildError {
    Secret(SecretMissing),
    /// librdkafka refused a setting.
    Config(String),
}

/// Makes the provider's clients from its settings and the Secret files as they are now; kept by
/// the supervisor to make them again when a file changes.
struct ClientMaker {
    name: String,
    brokers: String,
    group_id: String,
    spec: KafkaConfig,
    publish_timeout: Duration,
    shared: Arc<Shared>,
}

impl ClientMaker {
    /// A producer and an admin client, under a new generation (callbacks of the clients they
    /// replace stop driving health once these are installed).
    fn make(&self) -> Result<(Clients, AdminClient<HealthContext>), BuildError> {
        let configs = ClientConfigs::new(
            &self.name,
            &self.brokers,
            &self.group_id,
            &self.spec,
            self.publish_timeout,
        )
        .map_err(BuildError::Secret)?;
        let generation = self.shared.generation.load(Ordering::Acquire) + 1;
        let context = HealthContext {
            shared: self.shared.clone(),
            drives_health: true,
            generation,
        };
        let producer: KafkaProducer = configs
            .producer
            .create_with_context(context.clone())
            .map_err(|e| BuildError::Config(format!("kafka producer: {e}")))?;
        let admin: AdminClient<HealthContext> = configs
            .admin
            .create_with_context(HealthContext {
                drives_health: false,
                ..context.clone()
            })
            .map_err(|e| BuildError::Config(format!("kafka admin client: {e}")))?;
        let clients = Clients {
            producer,
            producer_config: configs.producer,
            consumer_config: configs.consumer,
            context,
        };
        Ok((clients, admin))
    }

    /// Puts clients made by [`make`](Self::make) in force.
    fn install(&self, slot: &ProducerSlot, clients: Clients) {
        self.shared
            .generation
            .store(clients.context.generation, Ordering::Release);
        slot.install(clients);
    }
}

impl KafkaProvider {
    /// Builds the producer, ensures the topic (bounded; in the background when the broker is
    /// unreachable) and starts the health supervisor. Fails only on configuration errors; a
    /// Secret key that cannot be read leaves the provider down until it can.
    pub async fn connect(
        name: &str,
        spec: &KafkaConfig,
        publish_timeout: Duration,
    ) -> Result<KafkaProvider, ProviderError> {
        let brokers = spec.bootstrap_servers();
        let topic = spec.topic_spec();
        let group_id = spec.group_id(name);
        let shared = Arc::new(Shared::new(name, &brokers, &topic.name));
        // Subscribed before any client exists, so an early AllBrokersDown is not missed.
        let brokers_down = shared.brokers_down.subscribe();
        let maker = ClientMaker {
            name: name.to_string(),
            brokers: brokers.clone(),
            group_id: group_id.clone(),
            spec: spec.clone(),
            publish_timeout,
            shared: shared.clone(),
        };
        let slot = Arc::new(ProducerSlot::default());
        let mut secrets = SecretWatch::new(spec.secret_files());
        let made = match secrets.fingerprint() {
            Ok(fingerprint) => maker.make().map(|m| (m, fingerprint)),
            Err(missing) => Err(BuildError::Secret(missing)),
        };
        let admin = match made {
            Ok(((clients, admin), fingerprint)) => {
                maker.install(&slot, clients);
                secrets.built(fingerprint);
                let first = ensure_topic_at_start(&admin, &topic, &brokers, brokers_down).await;
                record_topic_at_start(&shared, first)?;
                if shared.topic_ready.load(Ordering::Acquire) {
                    read_topic_limit(&shared, &admin).await;
                }
                Some(admin)
            }
            Err(BuildError::Secret(missing)) => {
                shared.set_secret_missing(&missing);
                None
            }
            Err(BuildError::Config(reason)) => {
                return Err(ProviderError::Config {
                    provider: name.to_string(),
                    reason,
                })
            }
        };
        let probe = KafkaProbe {
            shared: Arc::clone(&shared),
            producer: Arc::clone(&slot),
            admin,
            topic: topic.clone(),
            maker,
            secrets,
        };
        let producer_max_bytes = spec
            .config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(PRODUCER_MAX_BYTES_DEFAULT);
        Ok(KafkaProvider {
            name: name.to_string(),
            topic: topic.name,
            producer_max_bytes,
            key: spec.key.clone(),
            group_id,
            publish_timeout,
            producer: slot,
            shared,
            supervisor: Supervisor::spawn(|stop| run_probe_loop(probe, stop)),
        })
    }

    /// The topic this provider writes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group `subscribe` reads with.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The deadline of one publish.
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }
}

impl KafkaProvider {
    /// Why nothing can be written now (closed, or the topic is not known to exist), if so. Not
    /// observed as a publish failure: health already says why and keeps saying it.
    fn not_writable(&self) -> Option<ProviderError> {
        if self.shared.health.is_closed() {
            return Some(ProviderError::Closed {
                provider: self.name.clone(),
            });
        }
        if !self.shared.topic_ready.load(Ordering::Acquire) {
            // Fail at once: writing before the topic exists would let a broker with
            // `auto.create.topics.enable` create it with its defaults.
            self.shared.kick.notify_one();
            return Some(self.unavailable(format!(
                "topic {} is not created yet ({})",
                self.topic,
                self.shared.health.get().message
            )));
        }
        None
    }
}

/// Records the topic check at `connect` in health. Errs only when the cluster refused the topic
/// as configured; a broker that does not answer leaves health down for the supervisor.
fn record_topic_at_start(
    shared: &Shared,
    outcome: Result<(), EnsureError>,
) -> Result<(), ProviderError> {
    match outcome {
        Ok(()) => {
            shared.topic_ready.store(true, Ordering::Release);
            shared.health.set(
                true,
                REASON_CONNECTED,
                format!(
                    "connected to {}; topic {} ready",
                    shared.brokers, shared.topic
                ),
            );
        }
        Err(EnsureError::Config(reason)) => {
            return Err(ProviderError::Config {
                provider: shared.name.clone(),
                reason,
            })
        }
        // A refused login was logged as such by the client context; health keeps that cause.
        Err(EnsureError::Transient(reason)) if shared.health.get().reason == REASON_AUTH_FAILED => {
            shared.set_unavailable(reason);
        }
        Err(EnsureError::Transient(reason)) => {
            tracing::warn!(
                provider = %shared.name,
                %reason,
                "kafka: broker not ready at start; the provider starts unhealthy and creates the topic once the broker answers"
            );
            shared.set_unavailable(reason);
        }
    }
    Ok(())
}

#[async_trait]
impl Provider for KafkaProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Kafka
    }

    /// Every write runs under `publish_timeout` (a batch shares one), so the composite adds no
    /// timer of its own.
    fn publish_deadline(&self) -> Option<Duration> {
        Some(self.publish_timeout)
    }

    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        self.publish_outgoing(&msg.outgoing()).await
    }

    async fn publish_outgoing(&self, msg: &Outgoing<'_>) -> Result<(), ProviderError> {
        if let Some(refused) = self.not_writable() {
            let refused = Err(refused);
            self.shared.counters.record(&refused);
            return refused;
        }
        let outcome = match tokio::time::timeout(self.publish_timeout, self.send(msg)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Timeout {
                provider: self.name.clone(),
                after: self.publish_timeout,
            }),
        };
        self.shared.counters.record(&outcome);
        self.shared.health.observe(&outcome);
        outcome
    }

    /// Enqueues the whole batch in order into the idempotent producer, then awaits the delivery
    /// reports in order; the batch shares one publish deadline.
    async fn publish_batch(&self, msgs: &[DataMessage]) -> Result<(), BatchError> {
        if msgs.is_empty() {
            return Ok(());
        }
        if let Some(error) = self.not_writable() {
            self.shared.counters.failed();
            return Err(BatchError { acked: 0, error });
        }
        let mut acked = 0;
        let send = self.send_batch(msgs, &mut acked);
        let outcome = (self.shared.health)
            .bounded_batch(
                &self.shared.counters,
                &self.name,
                self.publish_timeout,
                send,
            )
            .await;
        outcome.map_err(|error| BatchError { acked, error })
    }

    /// Reads the topic with the consumer group (from the earliest offset when the group has
    /// none), in partition order. Offsets are committed as messages are handed out.
    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        if self.shared.health.is_closed() {
            return Err(ProviderError::Closed {
                provider: self.name.clone(),
            });
        }
        self.open_subscription().await
    }

    /// The smaller of the topic's `max.message.bytes` (read with the admin client once the
    /// topic exists) and the producer's `message.max.bytes`.
    fn message_limit_bytes(&self) -> Option<u64> {
        let topic = self.shared.topic_max_bytes.load(Ordering::Acquire);
        Some(if topic != 0 && topic < self.producer_max_bytes {
            topic
        } else {
            self.producer_max_bytes
        })
    }

    fn message_limit(&self) -> Option<MessageLimit> {
        let topic = self.shared.topic_max_bytes.load(Ordering::Acquire);
        Some(if topic != 0 && topic < self.producer_max_bytes {
            MessageLimit {
                bytes: topic,
                setting: format!("max.message.bytes of topic {}", self.topic),
            }
        } else {
            MessageLimit {
                bytes: self.producer_max_bytes,
                setting: "the producer's message.max.bytes".to_string(),
            }
        })
    }

    /// The record as the broker counts it: value, key (the id), headers and framing.
    fn encoded_size(&self, msg: &DataMessage, wire_len: usize) -> u64 {
        let key = self.key.of(msg).len();
        let headers = HEADER_MESSAGE_ID.len()
            + msg.id.len()
            + HEADER_SOURCE.len()
            + msg.source.len()
            + crate::message::DIGEST_HEADER.len()
            + crate::message::ContentDigest::TEXT_LEN;
        (wire_len + key + headers) as u64 + RECORD_FRAMING_BYTES
    }

    fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    fn health(&self) -> Health {
        self.shared.health.get()
    }

    async fn close(&self) -> Result<(), ProviderError> {
        if !self.shared.health.close() {
            return Ok(()); // already closed
        }
        self.supervisor.stop(CLOSE_TIMEOUT).await;
        // Deliver what is queued. Nothing queued can outlive message.timeout.ms (= the publish
        // timeout), so that plus a margin bounds the flush; flush blocks, so off the runtime.
        let Some(producer) = self.producer.get() else {
            return Ok(()); // never had clients (a Secret key was missing)
        };
        let flush_timeout = self.publish_timeout + Duration::from_secs(1);
        let flush =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(flush_timeout)));
        match tokio::time::timeout(flush_timeout + CLOSE_TIMEOUT, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(provider = %self.name, error = %e, "kafka: flush on close failed")
            }
            Ok(Err(e)) => {
                tracing::warn!(provider = %self.name, error = %e, "kafka: flush task failed")
            }
            Err(_) => {
                tracing::warn!(provider = %self.name, "kafka: flush on close did not finish in time")
            }
        }
        Ok(())
    }
}
