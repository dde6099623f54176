//! The Kafka topic: created with the AdminClient when missing ("already exists" is success),
//! and the rule that tells a refusal no retry can fix (a configuration error that fails
//! `connect`) from a passing one (the supervisor retries).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::watch;

use super::client::{HealthContext, Shared};
use super::SETUP_TIMEOUT;
use crate::provider::supervise::EnsureError;

/// What creating the topic needs.
#[derive(Clone)]
pub(super) struct TopicSpec {
    pub(super) name: String,
    pub(super) partitions: i32,
    pub(super) replication_factor: i32,
    /// `min.insync.replicas` of the created topic; the broker's default when unset.
    pub(super) min_insync_replicas: Option<i32>,
}

/// Creates the topic; "already exists" is success, and an existing topic is never altered
/// (its partitions, replication and configuration are the cluster owner's).
pub(super) async fn ensure_topic(
    admin: &AdminClient<HealthContext>,
    topic: &TopicSpec,
    timeout: Duration,
) -> Result<(), EnsureError> {
    let min_isr = topic.min_insync_replicas.map(|n| n.to_string());
    let mut new = NewTopic::new(
        &topic.name,
        topic.partitions,
        TopicReplication::Fixed(topic.replication_factor),
    );
    if let Some(n) = &min_isr {
        new = new.set("min.insync.replicas", n);
    }
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
                min_insync_replicas = ?topic.min_insync_replicas,
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

/// The topic check at `connect`, bounded by [`SETUP_TIMEOUT`] and cut short when librdkafka
/// reports every broker down (`brokers_down` changes) rather than waiting the whole bound.
pub(super) async fn ensure_topic_at_start(
    admin: &AdminClient<HealthContext>,
    topic: &TopicSpec,
    brokers: &str,
    mut brokers_down: watch::Receiver<u64>,
) -> Result<(), EnsureError> {
    tokio::select! {
        r = tokio::time::timeout(SETUP_TIMEOUT, ensure_topic(admin, topic, SETUP_TIMEOUT)) => {
            r.unwrap_or_else(|_| Err(EnsureError::Transient(format!(
                "no answer from {brokers} within {}ms", SETUP_TIMEOUT.as_millis()
            ))))
        }
        _ = brokers_down.changed() => {
            Err(EnsureError::Transient(format!("no broker reachable at {brokers}")))
        }
    }
}

/// The topic's `max.message.bytes` as the cluster reports it (the broker's `message.max.bytes`
/// when the topic does not override it): the largest record batch the topic takes.
pub(super) async fn topic_max_message_bytes(
    admin: &AdminClient<HealthContext>,
    topic: &str,
    timeout: Duration,
) -> Result<u64, String> {
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await
        .map_err(|e| format!("describing topic {topic}: {e}"))?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| format!("describing topic {topic}: no answer"))?
        .map_err(|code| format!("describing topic {topic}: {code}"))?;
    let value = resource
        .get("max.message.bytes")
        .and_then(|e| e.value.as_deref())
        .ok_or_else(|| format!("topic {topic} reports no max.message.bytes"))?;
    value
        .trim()
        .parse()
        .map_err(|e| format!("topic {topic}: max.message.bytes {value:?}: {e}"))
}

/// Reads the topic's `max.message.bytes` into `shared` (once it is known it stays: a later
/// change of the topic's setting is picked up when the relay restarts). A failure is logged and
/// retried by the supervisor's next round; until then the producer's own limit applies.
pub(super) async fn read_topic_limit(shared: &Shared, admin: &AdminClient<HealthContext>) {
    use std::sync::atomic::Ordering;
    let read = tokio::time::timeout(
        super::PROBE_TIMEOUT,
        topic_max_message_bytes(admin, &shared.topic, super::PROBE_TIMEOUT),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "describing topic {}: no answer in time",
            shared.topic
        ))
    });
    match read {
        Ok(bytes) => {
            tracing::info!(provider = %shared.name, topic = %shared.topic, max_message_bytes = bytes, "kafka: topic limit read");
            shared.topic_max_bytes.store(bytes, Ordering::Release);
        }
        Err(reason) => {
            tracing::warn!(provider = %shared.name, %reason, "kafka: cannot read the topic's max.message.bytes yet; retrying")
        }
    }
}
