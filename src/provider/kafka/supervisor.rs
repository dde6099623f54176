//! The Kafka provider's supervisor rounds (the loop around them is
//! [`run_probe_loop`](crate::provider::supervise::run_probe_loop)): replace a producer after a
//! fatal error, create the topic when it could not be created at start, and re-check an
//! unhealthy provider's topic metadata until the broker answers (librdkafka reports no "broker
//! is back" event).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::producer::Producer;
use tokio::sync::Notify;

use super::client::{HealthContext, ProducerSlot, Shared};
use super::topic::{ensure_topic, TopicSpec};
use super::{PROBE_TIMEOUT, REASON_CONNECTED, REASON_UNAVAILABLE};
use crate::provider::supervise::Probe;

/// What the Kafka supervisor owns.
pub(super) struct KafkaProbe {
    pub(super) shared: Arc<Shared>,
    pub(super) producer: Arc<ProducerSlot>,
    pub(super) admin: AdminClient<HealthContext>,
    pub(super) topic: TopicSpec,
}

impl Probe for KafkaProbe {
    fn kick(&self) -> &Notify {
        &self.shared.kick
    }

    fn closed(&self) -> bool {
        self.shared.health.is_closed()
    }

    async fn round(&mut self) {
        if !self.replace_fatal_producer() {
            return;
        }
        if !self.shared.topic_ready.load(Ordering::Acquire) {
            self.create_topic().await;
            return;
        }
        if !self.shared.health.get().healthy {
            self.probe_leaders().await;
        }
    }
}

impl KafkaProbe {
    /// Swaps in a fresh producer when librdkafka reports a fatal error on the current one.
    /// False when that was needed and failed (nothing else is worth checking this round).
    fn replace_fatal_producer(&self) -> bool {
        let Some((code, reason)) = self.producer.get().client().fatal_error() else {
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
        let outcome = tokio::time::timeout(
            PROBE_TIMEOUT,
            ensure_topic(&self.admin, topic, PROBE_TIMEOUT),
        )
        .await;
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
    }

    /// Asks for the topic's metadata; healthy again when every partition has a leader.
    async fn probe_leaders(&self) {
        let shared = &self.shared;
        // fetch_metadata blocks its thread (bounded by its own timeout): run it off the runtime.
        let (client, name) = (self.producer.get(), self.topic.name.clone());
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
            Ok(Ok(Ok(false))) => shared.health.set(
                false,
                REASON_UNAVAILABLE,
                format!("topic {} has partitions without a leader", self.topic.name),
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
