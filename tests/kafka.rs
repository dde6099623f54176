//! The Kafka provider against a real broker (`KAFKA_BROKERS`): round trip, the exact record
//! (key, headers, JSON value), topic creation, deadlines, close, concurrency.
//! Each test uses its own topic and group, so they run in parallel and repeatedly.

mod common;

use std::time::{Duration, Instant};

use dualwrite::message::DataMessage;
use dualwrite::provider::kafka::KafkaConfig;
use dualwrite::provider::kafka::KafkaProvider;
use dualwrite::provider::{Provider, ProviderError};
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Allowed lateness of an error past the publish deadline (scheduling, not waiting).
const MARGIN: Duration = Duration::from_millis(500);
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
async fn round_trip_in_order() {
    common::init_tracing();
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let p = KafkaProvider::connect("kafka-rt", &spec(&brokers), TIMEOUT)
        .await
        .unwrap();
    assert!(p.health().healthy, "{:?}", p.health());
    assert_eq!(p.health().reason, "Connected");

    let sent: Vec<DataMessage> = (0..5).map(message).collect();
    for m in &sent {
        p.publish(m).await.unwrap();
    }
    let mut sub = p.subscribe().await.unwrap();
    for want in &sent {
        let got = tokio::time::timeout(READ_TIMEOUT, sub.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("decodes");
        assert_eq!(&got, want);
    }
    let s = p.stats();
    assert_eq!((s.published, s.failed, s.consumed), (5, 0, 5));
    p.close().await.unwrap();
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

#[tokio::test]
async fn many_concurrent_publishes_share_one_producer() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let p = KafkaProvider::connect("kafka-conc", &spec(&brokers), TIMEOUT)
        .await
        .unwrap();
    const N: usize = 5000;
    let msgs: Vec<DataMessage> = (0..N).map(message).collect();
    // Warm up (the idempotent producer fetches its producer id on first use).
    p.publish(&message(0)).await.unwrap();
    let started = Instant::now();
    let results = futures::stream::iter(&msgs)
        .map(|m| p.publish(m))
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await;
    let took = started.elapsed();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    eprintln!(
        "kafka: {N} publishes, 512 in flight: {took:?} ({:.0}/s)",
        N as f64 / took.as_secs_f64()
    );
    assert_eq!(p.stats().published, N as u64 + 1);

    // Sequential, for the latency one caller sees (linger.ms included).
    let started = Instant::now();
    for m in msgs.iter().take(20) {
        p.publish(m).await.unwrap();
    }
    eprintln!(
        "kafka: sequential publish latency {:?} each",
        started.elapsed() / 20
    );
    p.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_broker_starts_unhealthy_and_fails_within_the_deadline() {
    // No broker needed: nothing listens on port 1.
    let s = KafkaConfig {
        brokers: vec!["127.0.0.1:1".into()],
        topic: "dwtest-unreachable".into(),
        partitions: None,
        replication_factor: None,
        group_id: None,
        config: Default::default(),
    };
    let started = Instant::now();
    let p = KafkaProvider::connect("kafka-down", &s, TIMEOUT)
        .await
        .unwrap();
    let connect_took = started.elapsed();
    let h = p.health();
    assert!(!h.healthy);
    assert_eq!(h.reason, "Unavailable", "{h:?}");

    let started = Instant::now();
    let err = p.publish(&message(1)).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("kafka: connect to a closed port took {connect_took:?}; publish failed after {took:?}: {err}");
    assert!(connect_took < Duration::from_secs(10), "{connect_took:?}");
    assert!(took <= TIMEOUT + MARGIN, "took {took:?}");
    assert_eq!(err.provider(), "kafka-down");
    assert!(err.to_string().contains("kafka-down"), "{err}");
    assert_eq!(p.stats().failed, 1);
    // Health keeps the broker's answer rather than a generic publish failure.
    assert_eq!(p.health().reason, "Unavailable", "{:?}", p.health());
    let started = Instant::now();
    let err = p
        .subscribe()
        .await
        .err()
        .expect("no subscription without a broker");
    assert!(
        started.elapsed() <= TIMEOUT + MARGIN,
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, ProviderError::Subscribe { .. }), "{err}");
    assert_eq!(err.provider(), "kafka-down");
    p.close().await.unwrap();
}

#[tokio::test]
async fn close_is_idempotent_and_publish_after_close_fails() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let p = KafkaProvider::connect("kafka-close", &spec(&brokers), TIMEOUT)
        .await
        .unwrap();
    p.publish(&message(1)).await.unwrap();
    let mut sub = p.subscribe().await.unwrap();
    let first = tokio::time::timeout(READ_TIMEOUT, sub.next())
        .await
        .expect("in time");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");

    let started = Instant::now();
    p.close().await.unwrap();
    p.close().await.unwrap();
    eprintln!("kafka: close took {:?}", started.elapsed());
    let err = p.publish(&message(2)).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Closed {
            provider: "kafka-close".into()
        }
    );
    assert!(p.subscribe().await.is_err());
    let h = p.health();
    assert!(!h.healthy);
    assert_eq!(h.reason, "Closed");
    // The open subscription ends instead of hanging.
    let end = tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("ends in time");
    assert!(end.is_none(), "{end:?}");
}
