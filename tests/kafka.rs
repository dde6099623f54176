//! What only the Kafka provider does, against a real broker (`KAFKA_BROKERS`): the exact record
//! (key, headers, JSON value), topic creation and reuse, a topic the cluster refuses.
//! What every provider does (round trip, concurrency, deadlines, close) is in
//! `tests/provider_contract.rs`. Each test uses its own topic and group, so they run in
//! parallel and repeatedly.

mod common;

use std::time::Duration;

use dualwrite::message::DataMessage;
use dualwrite::provider::kafka::KafkaConfig;
use dualwrite::provider::kafka::KafkaProvider;
use dualwrite::provider::{Provider, ProviderError};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on reading back (a fresh consumer group joins and fetches).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn spec(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.split(',').map(str::to_string).collect(),
        topic: common::unique("dwtest"),
        partitions: None,
        replication_factor: None,
        group_id: Some(common::unique("dwtest-group")),
        config: Default::default(),
        tls: None,
        auth: None,
    }
}

fn message(n: usize) -> DataMessage {
    let mut m = DataMessage::new("kafka-test", format!("payload {n}"));
    m.metadata.insert("n".into(), n.to_string());
    m
}

/// A plain rdkafka consumer reading partition 0 of `topic` from the beginning.
fn raw_consumer(brokers: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", common::unique("dwtest-raw"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    c
}

#[tokio::test]
async fn record_is_keyed_by_id_with_headers_and_the_design_json() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let p = KafkaProvider::connect("kafka-raw", &spec(&brokers), TIMEOUT)
        .await
        .unwrap();
    let m = message(7);
    p.publish(&m).await.unwrap();

    let c = raw_consumer(&brokers, p.topic());
    let r = tokio::time::timeout(READ_TIMEOUT, c.recv())
        .await
        .expect("a record in time")
        .unwrap();
    assert_eq!(r.key(), Some(m.id.as_bytes()));
    assert_eq!(r.payload(), Some(&m.to_wire()[..]));
    let expected = format!(
        r#"{{"id":"{}","timestamp":{},"source":"kafka-test","payload":"cGF5bG9hZCA3","metadata":{{"n":"7"}}}}"#,
        m.id, m.timestamp
    );
    assert_eq!(std::str::from_utf8(r.payload().unwrap()).unwrap(), expected);
    let headers: Vec<(String, Vec<u8>)> = r
        .headers()
        .expect("headers")
        .iter()
        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
        .collect();
    assert_eq!(
        headers,
        vec![
            ("message_id".to_string(), m.id.as_bytes().to_vec()),
            ("source".to_string(), b"kafka-test".to_vec()),
            (
                "Dualwrite-Digest".to_string(),
                m.content_digest().to_string().into_bytes()
            ),
        ]
    );
    p.close().await.unwrap();
}

#[tokio::test]
async fn topic_is_created_with_the_spec_partitions_and_reused() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let mut s = spec(&brokers);
    s.partitions = Some(3);
    let first = KafkaProvider::connect("kafka-create", &s, TIMEOUT)
        .await
        .unwrap();
    first.publish(&message(1)).await.unwrap();
    // A second provider (another relay replica) finds the topic and writes to it.
    let second = KafkaProvider::connect("kafka-create-2", &s, TIMEOUT)
        .await
        .unwrap();
    assert!(second.health().healthy, "{:?}", second.health());
    second.publish(&message(2)).await.unwrap();

    let c = raw_consumer(&brokers, &s.topic);
    let topic = s.topic.clone();
    let md = tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&topic), READ_TIMEOUT))
        .await
        .unwrap()
        .unwrap();
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == s.topic)
        .expect("topic listed");
    assert_eq!(t.partitions().len(), 3);
    first.close().await.unwrap();
    second.close().await.unwrap();
}

/// Topic names are checked by the pipeline's validator; one that slips past it anyway is
/// refused (InvalidTopic), and that refusal is a configuration error, not an outage.
#[tokio::test]
async fn a_topic_the_cluster_refuses_is_a_config_error() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let mut s = spec(&brokers);
    s.topic = format!("{} with spaces", s.topic);
    let err = KafkaProvider::connect("kafka-bad-topic", &s, TIMEOUT)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ProviderError::Config { .. }), "{err}");
    assert_eq!(err.provider(), "kafka-bad-topic");
}
