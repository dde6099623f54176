//! What only the Kafka provider does, against a real broker (`KAFKA_BROKERS`): the exact record
//! (key per `kafka.key`, headers, JSON value), topic creation with the requested settings, an
//! existing topic left unchanged, a topic the cluster refuses.
//! What every provider does (round trip, concurrency, deadlines, close) is in
//! `tests/provider_contract.rs`. Each test uses its own topic and group, so they run in
//! parallel and repeatedly.

mod common;

use std::time::Duration;

use dualwrite::message::DataMessage;
use dualwrite::provider::kafka::KafkaConfig;
use dualwrite::provider::kafka::{KafkaKey, KafkaProvider};
use dualwrite::provider::{Provider, ProviderError};
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
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
        min_insync_replicas: None,
        key: Default::default(),
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

/// `kafka.key`: the record key is the source, or a metadata field (the id when the message has
/// no such field); the id stays in the `message_id` header whatever the key.
#[tokio::test]
async fn record_key_follows_kafka_key() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    for (key, expect_with, expect_without) in [
        (KafkaKey::Source, "kafka-test", "kafka-test"),
        (KafkaKey::Metadata("tenant".into()), "acme", ""),
    ] {
        let mut s = spec(&brokers);
        s.key = key.clone();
        let p = KafkaProvider::connect("kafka-key", &s, TIMEOUT)
            .await
            .unwrap();
        let mut with = message(1);
        with.metadata.insert("tenant".into(), "acme".into());
        let without = message(2);
        p.publish_batch(&[with.clone(), without.clone()])
            .await
            .unwrap();
        let c = raw_consumer(&brokers, p.topic());
        for (m, expected) in [(&with, expect_with), (&without, expect_without)] {
            let r = tokio::time::timeout(READ_TIMEOUT, c.recv())
                .await
                .expect("a record in time")
                .unwrap();
            let expected = if expected.is_empty() {
                m.id.as_str()
            } else {
                expected
            };
            assert_eq!(r.key(), Some(expected.as_bytes()), "key {key}");
            let id = r
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "message_id"))
                .and_then(|h| h.value);
            assert_eq!(id, Some(m.id.as_bytes()), "the id stays in a header");
        }
        p.close().await.unwrap();
    }
}

/// A plain admin client on `brokers`.
fn plain_admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// `topic`'s partition count, replication factor and the given config entries (value, and
/// whether it was set on the topic rather than inherited from the broker).
async fn topic_settings(
    brokers: &str,
    topic: &str,
    keys: &[&str],
) -> (usize, usize, Vec<(Option<String>, bool)>) {
    let admin = plain_admin(brokers);
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let entries = keys
        .iter()
        .map(|k| {
            let e = resource.get(k).unwrap_or_else(|| panic!("{k} described"));
            (e.value.clone(), e.source == ConfigSource::DynamicTopic)
        })
        .collect();
    let c = raw_consumer(brokers, topic);
    let t = topic.to_string();
    let md = tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&t), READ_TIMEOUT))
        .await
        .unwrap()
        .unwrap();
    let t = md.topics().iter().find(|t| t.name() == topic).unwrap();
    let rf = t.partitions()[0].replicas().len();
    (t.partitions().len(), rf, entries)
}

/// Item 5: a topic the relay creates has the requested replication factor and
/// `min.insync.replicas` (RF 1 on the single test broker); an existing topic with other settings
/// is written to and left exactly as it was.
#[tokio::test]
async fn a_created_topic_has_the_requested_settings_and_an_existing_one_is_left_unchanged() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let keys = ["min.insync.replicas", "retention.ms"];

    let mut s = spec(&brokers);
    s.partitions = Some(2);
    s.replication_factor = Some(1);
    s.min_insync_replicas = Some(1);
    let p = KafkaProvider::connect("kafka-created", &s, TIMEOUT)
        .await
        .unwrap();
    p.publish(&message(1)).await.unwrap();
    p.close().await.unwrap();
    let (partitions, rf, entries) = topic_settings(&brokers, &s.topic, &keys).await;
    assert_eq!((partitions, rf), (2, 1));
    assert_eq!(
        entries[0],
        (Some("1".to_string()), true),
        "min.insync.replicas set on the created topic"
    );

    // A topic someone else made: 3 partitions, its own retention, the broker's min ISR.
    let existing = common::unique("dwtest-existing");
    let admin = plain_admin(&brokers);
    let new =
        NewTopic::new(&existing, 3, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    for r in admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let before = topic_settings(&brokers, &existing, &keys).await;
    let mut s = spec(&brokers);
    s.topic = existing.clone();
    s.partitions = Some(6);
    s.min_insync_replicas = Some(1);
    let p = KafkaProvider::connect("kafka-existing", &s, TIMEOUT)
        .await
        .unwrap();
    p.publish(&message(2)).await.unwrap();
    p.close().await.unwrap();
    let after = topic_settings(&brokers, &existing, &keys).await;
    assert_eq!(after, before, "the existing topic is unchanged");
    assert_eq!(before.0, 3);
    assert_eq!(before.2[1], (Some("3600000".to_string()), true));
    assert!(!before.2[0].1, "min.insync.replicas stays the broker's");
}
