//! The Kafka provider: one idempotent `acks=all` producer (librdkafka, via rdkafka's
//! `FutureProducer`) shared by every concurrent publish, writing the message's JSON wire form
//! with record key = id and headers `message_id` and `source`; a publish returns once the
//! delivery report arrived. The topic is created with the AdminClient when missing.
//!
//! Lifecycle, and why it is shaped this way:
//! - `connect` fails only on configuration errors (no brokers, a bad topic name, a librdkafka
//!   property it rejects, a topic the cluster refuses as specified). An unreachable broker does
//!   not fail it: the relay must start while one broker is down (BestEffort). The provider is
//!   then built with health down (`Unavailable`) and a supervisor task creates the topic once
//!   the broker answers. Until the topic is known to exist, publishes fail at once: writing
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::{watch, Notify};

use super::{
    Counters, Health, HealthTracker, MessageStream, Provider, ProviderError, ProviderKind, Stats,
    Supervisor,
};
use crate::message::DataMessage;

/// Bound on what `connect` waits for the topic check/creation. An unreachable broker usually
/// ends it much earlier (librdkafka reports `AllBrokersDown` within milliseconds).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor re-checks an unhealthy provider (one metadata request).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
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

/// Record header carrying the message id (the record key carries it too).
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Record header carrying the message's source.
pub const HEADER_SOURCE: &str = "source";

const REASON_CONNECTED: &str = "Connected";
const REASON_CONNECTING: &str = "Connecting";
const REASON_UNAVAILABLE: &str = "Unavailable";
const REASON_FATAL: &str = "ProducerFatal";
const REASON_AUTH: &str = "AuthenticationFailed";

/// A legal Kafka topic name: 1–249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err(format!(
            "kafka.topic {topic:?} must be 1 to 249 characters long"
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("kafka.topic {topic:?} is not a legal topic name"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "kafka.topic {topic:?} contains {c:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// `message.timeout.ms` and `linger.ms` for a publish deadline (librdkafka requires
/// `linger.ms < message.timeout.ms`).
fn producer_timeouts(publish_timeout: Duration) -> (u128, f64) {
    let timeout_ms = publish_timeout
        .as_millis()
        .clamp(MIN_MESSAGE_TIMEOUT_MS, i32::MAX as u128);
    let linger = LINGER_MS.min(timeout_ms as f64 / 2.0);
    (timeout_ms, linger)
}

/// Why the topic could not be ensured: a configuration problem (fail `connect`) or a passing
/// condition (keep the provider, retry later).
#[derive(Debug)]
enum EnsureError {
    Config(String),
    Transient(String),
}

impl EnsureError {
    fn reason(&self) -> &str {
        match self {
            EnsureError::Config(r) | EnsureError::Transient(r) => r,
        }
    }
}

/// State shared by the provider, librdkafka's callbacks, the supervisor and subscriptions.
struct Shared {
    name: String,
    brokers: String,
    topic: String,
    health: HealthTracker,
    counters: Counters,
    /// The topic exists (created by us or found); publishing is allowed.
    topic_ready: AtomicBool,
    /// Bumped on every `AllBrokersDown`; `connect` watches it to stop waiting early.
    brokers_down: watch::Sender<u64>,
    /// Wakes the supervisor before its next tick.
    kick: Notify,
}

/// librdkafka client context: turns its error callbacks into health (for the producer) or
/// into log lines (for the admin client, whose idle connection closing says nothing about
/// whether writes work).
#[derive(Clone)]
struct HealthContext {
    shared: Arc<Shared>,
    drives_health: bool,
}

// The consumer of `subscribe` uses this context too (with `drives_health: false`) so its
// librdkafka logs and errors go through the same filtering.
impl rdkafka::consumer::ConsumerContext for HealthContext {}

impl ClientContext for HealthContext {
    // Called on librdkafka's own threads: only non-blocking work here.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let s = &self.shared;
        // librdkafka logs every failed reconnect attempt (here up to once a second per client)
        // at error level. The first one of an outage is worth a warning; the rest, while the
        // provider is already reported down, only at debug.
        if fac == "FAIL" {
            if self.drives_health && s.health.get().healthy {
                tracing::warn!(target: "librdkafka", provider = %s.name, "{fac}: {log_message}");
            } else {
                tracing::debug!(target: "librdkafka", provider = %s.name, "{fac}: {log_message}");
            }
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", provider = %s.name, "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", provider = %s.name, "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", provider = %s.name, "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", provider = %s.name, "{fac}: {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let s = &self.shared;
        let code = error.rdkafka_error_code();
        if !self.drives_health {
            tracing::debug!(provider = %s.name, error = %error, %reason, "kafka admin client");
            return;
        }
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                s.brokers_down.send_modify(|n| *n += 1);
                // librdkafka repeats this while brokers stay down (and while one restarts):
                // warn on the transition only.
                if s.health.get().healthy {
                    tracing::warn!(provider = %s.name, brokers = %s.brokers, %reason, "kafka: all brokers down");
                } else {
                    tracing::debug!(provider = %s.name, brokers = %s.brokers, %reason, "kafka: all brokers down");
                }
                s.health.set(
                    false,
                    REASON_UNAVAILABLE,
                    format!("no broker reachable at {}: {reason}", s.brokers),
                );
            }
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(provider = %s.name, %reason, "kafka: fatal producer error; replacing the producer");
                s.health.set(
                    false,
                    REASON_FATAL,
                    format!("fatal producer error: {reason}"),
                );
                s.kick.notify_one();
            }
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                tracing::error!(provider = %s.name, %reason, "kafka: authentication failed");
                s.health.set(
                    false,
                    REASON_AUTH,
                    format!("authentication failed: {reason}"),
                );
            }
            // A single connection closing (brokers close idle ones) is routine.
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!(provider = %s.name, %reason, "kafka: broker connection closed")
            }
            _ => tracing::warn!(provider = %s.name, error = %error, %reason, "kafka: client error"),
        }
    }
}

type KafkaProducer = FutureProducer<HealthContext>;

/// The producer, replaceable after a fatal error. std RwLock: held only to clone or swap the
/// handle (an `Arc` inside), never across an await.
struct ProducerSlot {
    config: ClientConfig,
    context: HealthContext,
    current: RwLock<KafkaProducer>,
}

impl ProducerSlot {
    fn get(&self) -> KafkaProducer {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Builds a fresh producer and swaps it in; the old one is dropped on a blocking thread
    /// (its drop purges, flushes for up to 500ms and joins its poll thread).
    fn rebuild(&self) -> Result<(), KafkaError> {
        let fresh: KafkaProducer = self.config.create_with_context(self.context.clone())?;
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        // Finishes by itself within librdkafka's bounded drop; nothing to shut down.
        drop(tokio::task::spawn_blocking(move || drop(old)));
        Ok(())
    }
}

/// What creating the topic needs.
#[derive(Clone)]
struct TopicSpec {
    name: String,
    partitions: i32,
    replication_factor: i32,
}

/// Creates the topic; "already exists" is success.
async fn ensure_topic(
    admin: &AdminClient<HealthContext>,
    topic: &TopicSpec,
    timeout: Duration,
) -> Result<(), EnsureError> {
    let new = NewTopic::new(
        &topic.name,
        topic.partitions,
        TopicReplication::Fixed(topic.replication_factor),
    );
    let opts = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| EnsureError::Transient(format!("creating topic {}: {e}", topic.name)))?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(
                topic = %topic.name,
                partitions = topic.partitions,
                replication_factor = topic.replication_factor,
                "kafka: topic created"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                let text = format!("creating topic {}: {code}", topic.name);
                // Refusals that no retry can fix. (InvalidReplicationFactor is not among them:
                // it also means "fewer brokers up than the factor", which passes.)
                return Err(match code {
                    RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::InvalidConfig
                    | RDKafkaErrorCode::InvalidRequest
                    | RDKafkaErrorCode::PolicyViolation
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed => EnsureError::Config(text),
                    _ => EnsureError::Transient(text),
                });
            }
        }
    }
    Ok(())
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
    /// Consumer group used by `subscribe`; default `dualwrite-<provider name>`.
    pub group_id: Option<String>,
    /// Extra librdkafka settings, applied last.
    pub config: std::collections::BTreeMap<String, String>,
}

/// A Kafka provider. See the module documentation.
pub struct KafkaProvider {
    name: String,
    topic: String,
    group_id: String,
    publish_timeout: Duration,
    consumer_config: ClientConfig,
    producer: Arc<ProducerSlot>,
    shared: Arc<Shared>,
    /// The health supervisor; its stop signal also ends subscription streams.
    supervisor: Supervisor,
}

impl KafkaProvider {
    /// Builds the producer, ensures the topic (bounded; in the background when the broker is
    /// unreachable) and starts the health supervisor. Fails only on configuration errors.
    pub async fn connect(
        name: &str,
        spec: &KafkaConfig,
        publish_timeout: Duration,
    ) -> Result<KafkaProvider, ProviderError> {
        let config_err = |reason: String| ProviderError::Config {
            provider: name.to_string(),
            reason,
        };
        let brokers: Vec<&str> = spec.brokers.iter().map(|b| b.trim()).collect();
        if brokers.is_empty() || brokers.iter().any(|b| b.is_empty()) {
            return Err(config_err(
                "kafka.brokers: list at least one broker as host:port".into(),
            ));
        }
        let brokers = brokers.join(",");
        let topic = spec.topic.trim().to_string();
        check_topic(&topic).map_err(config_err)?;
        let partitions = spec.partitions.unwrap_or(1);
        let replication_factor = spec.replication_factor.unwrap_or(1);
        if partitions < 1 || replication_factor < 1 {
            return Err(config_err(
                "kafka.partitions and kafka.replicationFactor must be at least 1".into(),
            ));
        }
        if publish_timeout.is_zero() {
            return Err(config_err("publishTimeout must be more than 0".into()));
        }
        let group_id = spec
            .group_id
            .clone()
            .filter(|g| !g.trim().is_empty())
            .unwrap_or_else(|| format!("dualwrite-{name}"));

        let (brokers_down, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            brokers: brokers.clone(),
            topic: topic.clone(),
            health: HealthTracker::new(Health::down(
                REASON_CONNECTING,
                format!("connecting to {brokers}"),
            )),
            counters: Counters::default(),
            topic_ready: AtomicBool::new(false),
            brokers_down,
            kick: Notify::new(),
        });
        // Subscribed before any client exists, so an early AllBrokersDown is not missed.
        let mut down_rx = shared.brokers_down.subscribe();

        let (message_timeout_ms, linger_ms) = producer_timeouts(publish_timeout);
        let mut producer_config = ClientConfig::new();
        producer_config
            .set("bootstrap.servers", &brokers)
            .set("client.id", format!("dualwrite-{name}"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // librdkafka gives up on a message after this long: a dead broker becomes a
            // delivery error within the publish deadline, and the message is not delivered
            // after the caller was told it failed. (librdkafka checks these timeouts about
            // once a second, so the send is bounded by the publish timeout as well.)
            .set("message.timeout.ms", message_timeout_ms.to_string())
            .set("linger.ms", linger_ms.to_string())
            // Reconnect quickly after an outage: the default backoff grows to 10s, which would
            // add up to 10s to every recovery. Attempts to a dead broker cost next to nothing.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000");
        let mut admin_config = ClientConfig::new();
        admin_config
            .set("bootstrap.servers", &brokers)
            .set("client.id", format!("dualwrite-{name}-admin"))
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000");
        let mut consumer_config = ClientConfig::new();
        consumer_config
            .set("bootstrap.servers", &brokers)
            .set("client.id", format!("dualwrite-{name}-consumer"))
            .set("group.id", &group_id)
            .set("auto.offset.reset", "earliest")
            // Offsets are stored as each message is handed out and committed in the
            // background: the same "acknowledged once decoded" as the NATS consumer.
            .set("enable.auto.commit", "true")
            .set("enable.partition.eof", "false");
        // The user's settings (security.protocol, sasl.*, compression.type, …) win.
        for (k, v) in &spec.config {
            producer_config.set(k, v);
            admin_config.set(k, v);
            consumer_config.set(k, v);
        }

        let producer_context = HealthContext {
            shared: shared.clone(),
            drives_health: true,
        };
        let producer: KafkaProducer = producer_config
            .create_with_context(producer_context.clone())
            .map_err(|e| config_err(format!("kafka producer: {e}")))?;
        let admin: AdminClient<HealthContext> = admin_config
            .create_with_context(HealthContext {
                shared: shared.clone(),
                drives_health: false,
            })
            .map_err(|e| config_err(format!("kafka admin client: {e}")))?;
        let topic_spec = TopicSpec {
            name: topic.clone(),
            partitions,
            replication_factor,
        };

        let first = tokio::select! {
            r = tokio::time::timeout(SETUP_TIMEOUT, ensure_topic(&admin, &topic_spec, SETUP_TIMEOUT)) => {
                r.unwrap_or_else(|_| Err(EnsureError::Transient(format!(
                    "no answer from {brokers} within {}ms", SETUP_TIMEOUT.as_millis()
                ))))
            }
            _ = down_rx.changed() => Err(EnsureError::Transient(format!("no broker reachable at {brokers}"))),
        };
        match first {
            Ok(()) => {
                shared.topic_ready.store(true, Ordering::Release);
                shared.health.set(
                    true,
                    REASON_CONNECTED,
                    format!("connected to {brokers}; topic {topic} ready"),
                );
            }
            Err(EnsureError::Config(reason)) => return Err(config_err(reason)),
            Err(EnsureError::Transient(reason)) => {
                tracing::warn!(
                    provider = %name,
                    %reason,
                    "kafka: broker not ready at start; the provider starts unhealthy and creates the topic once the broker answers"
                );
                shared.health.set(false, REASON_UNAVAILABLE, reason);
            }
        }

        let slot = Arc::new(ProducerSlot {
            config: producer_config,
            context: producer_context,
            current: RwLock::new(producer),
        });
        let supervisor = {
            let (shared, slot) = (shared.clone(), slot.clone());
            Supervisor::spawn(move |stop| supervise(shared, slot, admin, topic_spec, stop))
        };

        Ok(KafkaProvider {
            name: name.to_string(),
            topic,
            group_id,
            publish_timeout,
            consumer_config,
            producer: slot,
            shared,
            supervisor,
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

    fn unavailable(&self, reason: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Writes one record and awaits its delivery report (the caller applies the deadline).
    async fn send(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        let producer = self.producer.get();
        let payload = msg.to_wire();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: HEADER_MESSAGE_ID,
                value: Some(msg.id.as_str()),
            })
            .insert(Header {
                key: HEADER_SOURCE,
                value: Some(msg.source.as_str()),
            });
        let record = FutureRecord::to(&self.topic)
            .key(msg.id.as_str())
            .payload(&payload)
            .headers(headers);
        // The queue timeout only matters when librdkafka's local queue is full; the delivery
        // itself is bounded by message.timeout.ms and, around both, by the caller's deadline.
        match producer
            .send(record, Timeout::After(self.publish_timeout))
            .await
        {
            Ok(_delivery) => Ok(()),
            Err((e, _)) => Err(self.delivery_error(e)),
        }
    }

    fn delivery_error(&self, e: KafkaError) -> ProviderError {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut) => ProviderError::Timeout {
                provider: self.name.clone(),
                after: self.publish_timeout,
            },
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord,
            ) => ProviderError::Rejected {
                provider: self.name.clone(),
                reason: e.to_string(),
            },
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                // Deleted behind our back: create it again before the next write.
                self.shared.topic_ready.store(false, Ordering::Release);
                self.shared.kick.notify_one();
                self.unavailable(format!("topic {} does not exist: {e}", self.topic))
            }
            Some(RDKafkaErrorCode::QueueFull) => self.unavailable(format!(
                "librdkafka's producer queue is full (queue.buffering.max.messages/kbytes): {e}"
            )),
            _ => self.unavailable(format!("delivery to topic {} failed: {e}", self.topic)),
        }
    }
}

/// Creates the topic when it could not be created at start, replaces a producer after a fatal
/// error, and re-checks an unhealthy provider until the broker answers. Stops when `shutdown`
/// turns true or its sender is dropped.
async fn supervise(
    shared: Arc<Shared>,
    producer: Arc<ProducerSlot>,
    admin: AdminClient<HealthContext>,
    topic: TopicSpec,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = shared.kick.notified() => {}
            _ = tick.tick() => {}
        }
        if shared.health.is_closed() {
            break;
        }

        if let Some((code, reason)) = producer.get().client().fatal_error() {
            match producer.rebuild() {
                Ok(()) => {
                    tracing::warn!(provider = %shared.name, %code, %reason, "kafka: replaced the producer after a fatal error")
                }
                Err(e) => {
                    tracing::error!(provider = %shared.name, error = %e, "kafka: could not rebuild the producer");
                    continue;
                }
            }
        }

        if !shared.topic_ready.load(Ordering::Acquire) {
            let outcome = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                r = tokio::time::timeout(PROBE_TIMEOUT, ensure_topic(&admin, &topic, PROBE_TIMEOUT)) => r,
            };
            match outcome {
                Ok(Ok(())) => {
                    shared.topic_ready.store(true, Ordering::Release);
                    tracing::info!(provider = %shared.name, topic = %topic.name, "kafka: topic ready; provider healthy");
                    shared.health.set(
                        true,
                        REASON_CONNECTED,
                        format!(
                            "connected to {}; topic {} ready",
                            shared.brokers, topic.name
                        ),
                    );
                }
                Ok(Err(e)) => shared
                    .health
                    .set(false, REASON_UNAVAILABLE, e.reason().to_string()),
                Err(_) => shared.health.set(
                    false,
                    REASON_UNAVAILABLE,
                    format!(
                        "no answer from {} within {}ms",
                        shared.brokers,
                        PROBE_TIMEOUT.as_millis()
                    ),
                ),
            }
            continue;
        }

        if shared.health.get().healthy {
            continue;
        }
        // fetch_metadata blocks its thread (bounded by its own timeout): run it off the runtime.
        let (client, name) = (producer.get(), topic.name.clone());
        let probe = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(Some(&name), PROBE_TIMEOUT)
                .map(|md| {
                    md.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
        });
        let outcome = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = tokio::time::timeout(PROBE_TIMEOUT + Duration::from_secs(1), probe) => r,
        };
        match outcome {
            Ok(Ok(Ok(true))) => {
                tracing::info!(provider = %shared.name, "kafka: broker reachable again; provider healthy");
                shared.health.set(
                    true,
                    REASON_CONNECTED,
                    format!(
                        "connected to {}; topic {} has leaders",
                        shared.brokers, topic.name
                    ),
                );
            }
            Ok(Ok(Ok(false))) => shared.health.set(
                false,
                REASON_UNAVAILABLE,
                format!("topic {} has partitions without a leader", topic.name),
            ),
            // Keep the more specific reason set by the error callback or the failed publish.
            Ok(Ok(Err(e))) => {
                tracing::debug!(provider = %shared.name, error = %e, "kafka: probe failed")
            }
            Ok(Err(e)) => {
                tracing::warn!(provider = %shared.name, error = %e, "kafka: probe task failed")
            }
            Err(_) => tracing::debug!(provider = %shared.name, "kafka: probe timed out"),
        }
    }
}

/// Connection-level consumer errors that librdkafka recovers from by itself.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
    )
}

/// Decodes one consumed record (its offset is stored for commit when it is handed out).
fn decode(shared: &Shared, m: &impl Message) -> Result<DataMessage, ProviderError> {
    match DataMessage::from_wire(m.payload().unwrap_or_default()) {
        Ok(msg) => {
            shared.counters.consumed();
            Ok(msg)
        }
        Err(e) => Err(ProviderError::Subscribe {
            provider: shared.name.clone(),
            reason: format!(
                "topic {} partition {} offset {} is not a DataMessage ({e}); skipped",
                m.topic(),
                m.partition(),
                m.offset()
            ),
        }),
    }
}

#[async_trait]
impl Provider for KafkaProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Kafka
    }

    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        if self.shared.health.is_closed() {
            let closed = Err(ProviderError::Closed {
                provider: self.name.clone(),
            });
            self.shared.counters.record(&closed);
            return closed;
        }
        if !self.shared.topic_ready.load(Ordering::Acquire) {
            // Fail at once; health already says why (`Unavailable`, with the broker's answer)
            // and keeps saying it: this outcome is not observed as a publish failure.
            self.shared.kick.notify_one();
            let not_ready = Err(self.unavailable(format!(
                "topic {} is not created yet ({})",
                self.topic,
                self.shared.health.get().message
            )));
            self.shared.counters.record(&not_ready);
            return not_ready;
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

    /// Reads the topic with the consumer group (from the earliest offset when the group has
    /// none), in partition order. Offsets are committed as messages are handed out.
    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        if self.shared.health.is_closed() {
            return Err(ProviderError::Closed {
                provider: self.name.clone(),
            });
        }
        let subscribe_err = |reason: String| ProviderError::Subscribe {
            provider: self.name.clone(),
            reason,
        };
        if !self.shared.topic_ready.load(Ordering::Acquire) {
            // Subscribing to a missing topic would wait for librdkafka's next metadata refresh
            // (minutes) after the supervisor creates it; better to fail now and be retried.
            self.shared.kick.notify_one();
            return Err(subscribe_err(format!(
                "topic {} is not created yet ({}); subscribe again once the provider is healthy",
                self.topic,
                self.shared.health.get().message
            )));
        }
        let consumer: StreamConsumer<HealthContext> = self
            .consumer_config
            .create_with_context(HealthContext {
                shared: self.shared.clone(),
                drives_health: false,
            })
            .map_err(|e| subscribe_err(format!("kafka consumer: {e}")))?;
        consumer
            .subscribe(&[&self.topic])
            .map_err(|e| subscribe_err(format!("subscribing to topic {}: {e}", self.topic)))?;

        let shared = self.shared.clone();
        let mut stop = self.supervisor.subscribe();
        let stream = futures::stream::unfold(consumer, move |consumer| {
            let shared = shared.clone();
            async move {
                let item = loop {
                    match consumer.recv().await {
                        Ok(m) => break decode(&shared, &m),
                        // librdkafka reports connection trouble through the consumer as well;
                        // it reconnects by itself and the provider's health already says so.
                        // These are not items of the stream.
                        Err(KafkaError::MessageConsumption(code)) if is_transient(code) => {
                            tracing::debug!(provider = %shared.name, %code, "kafka consumer: broker unreachable; retrying");
                        }
                        Err(e) => {
                            break Err(ProviderError::Subscribe {
                                provider: shared.name.clone(),
                                reason: format!("reading topic {}: {e}", shared.topic),
                            })
                        }
                    }
                };
                Some((item, consumer))
            }
        });
        Ok(stream
            // Ends when the provider closes or is dropped.
            .take_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .boxed())
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
        let producer = self.producer.get();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["events", "a.b_c-1", &"t".repeat(249)] {
            assert!(check_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"t".repeat(250)] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn linger_stays_below_the_message_timeout() {
        assert_eq!(producer_timeouts(Duration::from_secs(5)), (5000, LINGER_MS));
        assert_eq!(producer_timeouts(Duration::from_millis(1)), (10, 5.0));
        assert_eq!(producer_timeouts(Duration::from_millis(8)), (10, 5.0));
        let (t, l) = producer_timeouts(Duration::from_millis(12));
        assert!(l < t as f64);
    }

    #[tokio::test]
    async fn bad_configuration_is_a_config_error() {
        let spec = |brokers: &[&str], topic: &str| KafkaConfig {
            brokers: brokers.iter().map(|b| b.to_string()).collect(),
            topic: topic.into(),
            partitions: None,
            replication_factor: None,
            group_id: None,
            config: Default::default(),
        };
        let t = Duration::from_secs(1);
        let mut bad_prop = spec(&["127.0.0.1:1"], "t");
        bad_prop
            .config
            .insert("no.such.property".into(), "1".into());
        for (s, want) in [
            (spec(&[], "t"), "at least one broker"),
            (spec(&["127.0.0.1:1"], "a b"), "contains ' '"),
            (bad_prop, "no.such.property"),
        ] {
            let err = KafkaProvider::connect("k", &s, t)
                .await
                .err()
                .expect("a config error");
            assert!(matches!(err, ProviderError::Config { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }
}
