//! Reading what the relay wrote with plain broker clients (not the relay's providers), through
//! the consistency check's readers: every message id on a JetStream stream and on a Kafka
//! topic, duplicates kept.

use dualwrite::provider::{kafka::KafkaConfig, nats::NatsConfig};

/// Every message id on `subject`'s stream (named `stream`), in stream order.
pub async fn nats_ids(url: &str, subject: &str, stream: &str) -> Vec<String> {
    let spec = NatsConfig {
        url: url.into(),
        subject: subject.into(),
        stream: Some(stream.into()),
        durable: None,
        duplicate_window: None,
    };
    dualwrite::verify::nats_ids(&spec, None, i64::MAX)
        .await
        .expect("read the NATS stream")
}

/// Every record's id on `topic` (all partitions, partition order).
pub async fn kafka_ids(brokers: &str, topic: &str) -> Vec<String> {
    let spec = KafkaConfig {
        brokers: vec![brokers.into()],
        topic: topic.into(),
        partitions: None,
        replication_factor: None,
        group_id: None,
        config: Default::default(),
    };
    dualwrite::verify::kafka_ids(&spec, None, i64::MAX)
        .await
        .expect("read the Kafka topic")
}
