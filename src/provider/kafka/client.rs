//! The Kafka provider's librdkafka clients: the state shared with librdkafka's callbacks
//! ([`Shared`]), the client context that turns those callbacks into health and log lines, the
//! replaceable producer, and the three client configurations (producer, admin, consumer) built
//! from one [`KafkaConfig`] and one reading of its Secret files.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use tokio::sync::{watch, Notify};

use super::security::security_settings;
use super::{
    KafkaConfig, LINGER_MS, MIN_MESSAGE_TIMEOUT_MS, REASON_CONNECTING, REASON_FATAL,
    REASON_UNAVAILABLE,
};
use crate::provider::secret::{SecretMissing, REASON_SECRET_MISSING};
use crate::provider::{Counters, Health, HealthTracker, REASON_AUTH_FAILED};

/// State shared by the provider, librdkafka's callbacks, the supervisor and subscriptions.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) brokers: String,
    pub(super) topic: String,
    pub(super) health: HealthTracker,
    pub(super) counters: Counters,
    /// The topic exists (created by us or found); publishing is allowed.
    pub(super) topic_ready: AtomicBool,
    /// Bumped on every `AllBrokersDown`; `connect` watches it to stop waiting early.
    pub(super) brokers_down: watch::Sender<u64>,
    /// Wakes the supervisor before its next tick.
    pub(super) kick: Notify,
    /// Which set of clients is in force; callbacks of clients replaced since (a rotated Secret)
    /// no longer touch health.
    pub(super) generation: AtomicU64,
    /// The topic's `max.message.bytes` once read (0: not yet), see `KafkaProvider::message_limit`.
    pub(super) topic_max_bytes: AtomicU64,
}

impl Shared {
    /// A provider that has not reached its broker yet.
    pub(super) fn new(name: &str, brokers: &str, topic: &str) -> Self {
        let (brokers_down, _) = watch::channel(0u64);
        Self {
            name: name.to_string(),
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            health: HealthTracker::new(Health::down(
                REASON_CONNECTING,
                format!("connecting to {brokers}"),
            )),
            counters: Counters::default(),
            topic_ready: AtomicBool::new(false),
            brokers_down,
            kick: Notify::new(),
            generation: AtomicU64::new(0),
            topic_max_bytes: AtomicU64::new(0),
        }
    }

    /// Marks the provider down as unreachable, unless it already says authentication failed:
    /// librdkafka follows a refused login with "all brokers down", and the person reading the
    /// status needs the first, more specific cause.
    pub(super) fn set_unavailable(&self, message: String) {
        let now = self.health.get();
        if !now.healthy && now.reason == REASON_AUTH_FAILED {
            return;
        }
        self.health.set(false, REASON_UNAVAILABLE, message);
    }

    /// Marks the provider down because a Secret key it needs cannot be read.
    pub(super) fn set_secret_missing(&self, missing: &SecretMissing) {
        if self.health.get().reason != REASON_SECRET_MISSING {
            tracing::warn!(provider = %self.name, error = %missing, "kafka: a Secret key cannot be read; the provider stays down and reads it again every round");
        }
        self.health
            .set(false, REASON_SECRET_MISSING, missing.to_string());
    }
}

/// `message.timeout.ms` and `linger.ms` for a publish deadline (librdkafka requires
/// `linger.ms < message.timeout.ms`).
pub(super) fn producer_timeouts(publish_timeout: Duration) -> (u128, f64) {
    let timeout_ms = publish_timeout
        .as_millis()
        .clamp(MIN_MESSAGE_TIMEOUT_MS, i32::MAX as u128);
    let linger = LINGER_MS.min(timeout_ms as f64 / 2.0);
    (timeout_ms, linger)
}

/// The configurations of the provider's three librdkafka clients.
pub(super) struct ClientConfigs {
    pub(super) producer: ClientConfig,
    pub(super) admin: ClientConfig,
    pub(super) consumer: ClientConfig,
}

impl ClientConfigs {
    /// The provider's settings for `brokers` (already joined), TLS and authentication from
    /// `spec` (its Secret files read now), and the user's `spec.config` applied last to all
    /// three. Errs when a Secret file cannot be read.
    pub(super) fn new(
        name: &str,
        brokers: &str,
        group_id: &str,
        spec: &KafkaConfig,
        publish_timeout: Duration,
    ) -> Result<Self, SecretMissing> {
        let (message_timeout_ms, linger_ms) = producer_timeouts(publish_timeout);
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", brokers)
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
        let mut admin = ClientConfig::new();
        admin
            .set("bootstrap.servers", brokers)
            .set("client.id", format!("dualwrite-{name}-admin"))
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000");
        let mut consumer = ClientConfig::new();
        consumer
            .set("bootstrap.servers", brokers)
            .set("client.id", format!("dualwrite-{name}-consumer"))
            .set("group.id", group_id)
            .set("auto.offset.reset", "earliest")
            // Offsets are stored as each message is handed out and committed in the
            // background: the same "acknowledged once decoded" as the NATS consumer.
            .set("enable.auto.commit", "true")
            .set("enable.partition.eof", "false");
        for (k, v) in security_settings(spec)? {
            producer.set(k, v.clone());
            admin.set(k, v.clone());
            consumer.set(k, v);
        }
        // The user's tuning settings (compression.type, batch.size, …) come last; the
        // validator's allowlist keeps security and delivery keys out of them.
        for (k, v) in &spec.config {
            producer.set(k, v);
            admin.set(k, v);
            consumer.set(k, v);
        }
        Ok(Self {
            producer,
            admin,
            consumer,
        })
    }
}

/// librdkafka client context: turns its error callbacks into health (for the producer) or
/// into log lines (for the admin client, whose idle connection closing says nothing about
/// whether writes work).
#[derive(Clone)]
pub(super) struct HealthContext {
    pub(super) shared: Arc<Shared>,
    pub(super) drives_health: bool,
    /// The [`Shared::generation`] this client belongs to.
    pub(super) generation: u64,
}

impl HealthContext {
    /// Whether this client's errors may change health: the producer's, while it is in force.
    fn drives_health(&self) -> bool {
        self.drives_health && self.shared.generation.load(Ordering::Acquire) == self.generation
    }
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
            if self.drives_health() && s.health.get().healthy {
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
        if !self.drives_health() {
            tracing::debug!(provider = %s.name, error = %error, %reason, "kafka admin client, consumer or replaced producer");
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
                s.set_unavailable(format!("no broker reachable at {}: {reason}", s.brokers));
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
            // librdkafka's text names the broker and the mechanism, never the password.
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                if s.health.get().reason != REASON_AUTH_FAILED {
                    tracing::error!(provider = %s.name, %reason, "kafka: authentication failed; check the credentials Secret");
                }
                s.health.set(
                    false,
                    REASON_AUTH_FAILED,
                    format!(
                        "provider {}: authentication to {} failed: {reason}",
                        s.name, s.brokers
                    ),
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

pub(super) type KafkaProducer = FutureProducer<HealthContext>;

/// The producer and the configurations it and a subscription's consumer were made from: what
/// one reading of the Secret files gives.
#[derive(Clone)]
pub(super) struct Clients {
    pub(super) producer: KafkaProducer,
    pub(super) producer_config: ClientConfig,
    pub(super) consumer_config: ClientConfig,
    pub(super) context: HealthContext,
}

/// The producer in force, replaced after a fatal error or when a Secret file changed; empty
/// while a Secret key cannot be read. std RwLock: held only to clone or swap the handles (an
/// `Arc` inside), never across an await.
#[derive(Default)]
pub(super) struct ProducerSlot {
    current: RwLock<Option<Clients>>,
}

impl ProducerSlot {
    fn read(&self) -> Option<Clients> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The producer in force. Clones the handle alone (an `Arc`): it is taken on every publish,
    /// and cloning the whole [`Clients`] copied both configurations' maps each time.
    pub(super) fn get(&self) -> Option<KafkaProducer> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|c| c.producer.clone())
    }

    /// The configuration a subscription's consumer is made from.
    pub(super) fn consumer_config(&self) -> Option<ClientConfig> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|c| c.consumer_config.clone())
    }

    /// Puts `fresh` in force. A publish still running on the old producer holds its own handle
    /// and gets its delivery report; the slot's handle is dropped on a blocking thread (a
    /// producer's drop flushes for up to 500ms and joins its poll thread).
    pub(super) fn install(&self, fresh: Clients) {
        let old = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(fresh);
        if let Some(old) = old {
            // Finishes by itself within librdkafka's bounded drop; nothing to shut down.
            drop(tokio::task::spawn_blocking(move || drop(old)));
        }
    }

    /// Builds a fresh producer from the same configuration and swaps it in (after a fatal
    /// error, which leaves librdkafka's producer unusable).
    pub(super) fn rebuild(&self) -> Result<(), KafkaError> {
        let Some(mut clients) = self.read() else {
            return Ok(());
        };
        clients.producer = clients
            .producer_config
            .create_with_context(clients.context.clone())?;
        self.install(clients);
        Ok(())
    }
}
