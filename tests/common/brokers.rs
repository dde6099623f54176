//! Reading what the relay wrote with plain broker clients (not the relay's providers), through
//! the consistency check's readers: every message id on a JetStream stream and on a Kafka
//! topic, duplicates kept; and how many messages a stream or topic holds.

use dualwrite::provider::{kafka::KafkaConfig, nats::NatsConfig};

/// A plaintext NATS provider's settings for `subject` on the stream `stream`, the rest defaults.
pub fn nats_config(url: &str, subject: &str, stream: &str) -> NatsConfig {
    NatsConfig {
        url: url.into(),
        subject: subject.into(),
        stream: Some(stream.into()),
        durable: None,
        duplicate_window: None,
        replicas: None,
        tls: None,
        auth: None,
    }
}

/// A plaintext Kafka provider's settings for `topic` on `brokers` (comma-separated), the rest
/// defaults.
pub fn kafka_config(brokers: &str, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.split(',').map(str::to_string).collect(),
        topic: topic.into(),
        partitions: None,
        replication_factor: None,
        min_insync_replicas: None,
        key: Default::default(),
        group_id: None,
        config: Default::default(),
        tls: None,
        auth: None,
    }
}

/// Every message id on `subject`'s stream (named `stream`), in stream order.
pub async fn nats_ids(url: &str, subject: &str, stream: &str) -> Vec<String> {
    let spec = nats_config(url, subject, stream);
    dualwrite::verify::nats_ids(&spec, None, i64::MAX)
        .await
        .expect("read the NATS stream")
}

/// Every record's id on `topic` (all partitions, partition order).
pub async fn kafka_ids(brokers: &str, topic: &str) -> Vec<String> {
    let spec = kafka_config(brokers, topic);
    dualwrite::verify::kafka_ids(&spec, None, i64::MAX)
        .await
        .expect("read the Kafka topic")
}

/// How many messages the JetStream stream `stream` holds, asked with a plain async-nats client.
pub async fn nats_stream_messages(url: &str, stream: &str) -> u64 {
    let client = tokio::time::timeout(std::time::Duration::from_secs(10), async_nats::connect(url))
        .await
        .expect("connect in time")
        .expect("plain async-nats client connects");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.expect("stream exists");
    s.info().await.expect("stream info").state.messages
}

/// How many records `topic` holds over all its partitions (high minus low watermark), asked
/// with a plain rdkafka client.
pub async fn kafka_records(brokers: &str, topic: &str) -> u64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let timeout = std::time::Duration::from_secs(30);
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("a plain rdkafka client");
        let md = c.fetch_metadata(Some(&topic), timeout).expect("metadata");
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .expect("topic listed");
        t.partitions()
            .iter()
            .map(|p| {
                let (low, high) = c
                    .fetch_watermarks(&topic, p.id(), timeout)
                    .expect("watermarks");
                u64::try_from(high - low).expect("high >= low")
            })
            .sum()
    })
    .await
    .expect("watermark task")
}
