//! The Kafka provider's supervisor rounds (the loop around them is
//! [`run_probe_loop`](crate::provider::supervise::run_probe_loop)): make fresh clients when a
//! Secret file appeared or changed, replace a producer after a fatal error, create the topic
//! when it could not be created at start, and re-check an unhealthy provider's topic metadata
//! until the broker answers (librdkafka reports no "broker is back" event).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::producer::Producer;
use tokio::sync::Notify;

use super::client::{HealthContext, ProducerSlot, Shared};
use super::topic::{ensure_topic, read_topic_limit, TopicSpec};
use super::{
    BuildError, ClientMaker, PROBE_TIMEOUT, REASON_CONNECTED, REASON_CONNECTING, REASON_INVALID,
};
use crate::provider::secret::{SecretCheck, SecretWatch};
use crate::provider::supervise::Probe;

/// What the Kafka supervisor owns.
pub(super) struct KafkaProbe {
    pub(super) shared: Arc<Shared>,
    pub(super) producer: Arc<ProducerSlot>,
    /// `None` while the provider has no clients (a Secret key could not be read yet).
    pub(super) admin: Option<AdminClient<HealthContext>>,
    pub(super) topic: TopicSpec,
    pub(super) maker: ClientMaker,
    /// The Secret files the clients in force were made from.
    pub(super) secrets: SecretWatch,
}

impl Probe for KafkaProbe {
    fn kick(&self) -> &Notify {
        &self.shared.kick
    }

    fn closed(&self) -> bool {
        self.shared.health.is_closed()
    }

    async fn round(&mut self) {
        // Reading a few small files each round is cheap next to the broker request a round may
        // make, and lets a rotated Secret take effect within a round of the kubelet's rewrite.
        self.follow_secrets();
        if self.admin.is_none() || !self.replace_fatal_producer() {
            return;
        }
        if !self.shared.topic_ready.load(Ordering::Acquire) {
            self.create_topic().await;
            return;
        }
        if !self.shared.health.get().healthy {
            self.probe_leaders().await;
        }
        if self.shared.topic_max_bytes.load(Ordering::Acquire) == 0 {
            if let Some(admin) = &self.admin {
                read_topic_limit(&self.shared, admin).await;
            }
        }
    }
}

impl KafkaProbe {
    /// Makes fresh clients when the Secret files changed since the ones in force were made (or
    /// could be read for the first time), and swaps them in. A file that cannot be read keeps
    /// the clients in force (they still work with what they read); with none, health says which
    /// Secret key is missing.
    fn follow_secrets(&mut self) {
        let shared = &self.shared;
        let fingerprint = match self.secrets.check() {
            SecretCheck::Unchanged => return,
            SecretCheck::Changed(f) => f,
            SecretCheck::Missing(missing) => {
                if self.admin.is_none() {
                    shared.set_secret_missing(&missing);
                } else {
                    tracing::debug!(provider = %shared.name, error = %missing, "kafka: a Secret key cannot be read; keeping the clients in force");
                }
                return;
            }
        };
        match self.maker.make() {
            Ok((clients, admin)) => {
                let first = self.admin.is_none();
                self.maker.install(&self.producer, clients);
                self.admin = Some(admin);
                self.secrets.built(fingerprint);
                if first {
                    tracing::info!(provider = %shared.name, "kafka: the Secret keys can be read; connecting");
                } else {
                    tracing::info!(provider = %shared.name, "kafka: a Secret changed; reconnected with the new value");
                }
                if !shared.health.get().healthy {
                    // The old cause (a refused login, a missing key) is for the old clients.
                    shared.health.set(
                        false,
                        REASON_CONNECTING,
                        format!(
                            "connecting to {} with the current Secret values",
                            shared.brokers
                        ),
                    );
                }
            }
            Err(BuildError::Secret(missing)) if self.admin.is_none() => {
                shared.set_secret_missing(&missing)
            }
            Err(BuildError::Secret(_)) => {}
            Err(BuildError::Config(reason)) => {
                tracing::error!(provider = %shared.name, %reason, "kafka: the changed Secret values make a configuration librdkafka refuses; keeping the clients in force");
                if self.admin.is_none() {
                    shared.health.set(false, REASON_INVALID, reason);
                }
                // Not retried until the files change again.
                self.secrets.built(fingerprint);
            }
        }
    }

    /// Swaps in a fresh producer when librdkafka reports a fatal error on the current one.
    /// False when that was needed and failed (nothing else is worth checking this round).
    fn replace_fatal_producer(&self) -> bool {
        let Some(producer) = self.producer.get() else {
            return false;
        };
        let Some((code, reason)) = producer.client().fatal_error() else {
            return true;
        };
        let name = &self.shared.name;
        match self.producer.rebuild() {
            Ok(()) => {
                tracing::warn!(provider = %name, %code, %reason, "kafka: replaced the producer after a fatal error");
                true
            }
            Err(e) => {
                tracing::error!(provider = %name, error = %e, "kafka: could not rebuild the producer");
                false
            }
        }
    }

    /// Creates the topic (or finds it); the provider turns healthy once it exists.
    async fn create_topic(&self) {
        let (shared, topic) = (&self.shared, &self.topic);
        let Some(admin) = &self.admin else {
            return;
        };
        let outcome =
            tokio::time::timeout(PROBE_TIMEOUT, ensure_topic(admin, topic, PROBE_TIMEOUT)).await;
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
            Ok(Err(e)) => shared.set_unavailable(e.reason().to_string()),
            Err(_) => shared.set_unavailable(format!(
                "no answer from {} within {}ms",
                shared.brokers,
                PROBE_TIMEOUT.as_millis()
            )),
        }
    }

    /// Asks for the topic's metadata; healthy again when every partition has a leader.
    async fn probe_leaders(&self) {
        let shared = &self.shared;
        // fetch_metadata blocks its thread (bounded by its own timeout): run it off the runtime.
        let Some(client) = self.producer.get() else {
            return;
        };
        let name = self.topic.name.clone();
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
        match tokio::time::timeout(PROBE_TIMEOUT + Duration::from_secs(1), probe).await {
            Ok(Ok(Ok(true))) => {
                tracing::info!(provider = %shared.name, "kafka: broker reachable again; provider healthy");
                shared.health.set(
                    true,
                    REASON_CONNECTED,
                    format!(
                        "connected to {}; topic {} has leaders",
                        shared.brokers, self.topic.name
                    ),
                );
            }
            Ok(Ok(Ok(false))) => shared.set_unavailable(format!(
                "topic {} has partitions without a leader",
                self.topic.name
            )),
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
