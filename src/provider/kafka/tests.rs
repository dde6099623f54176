//! Unit tests of the Kafka provider's pure parts and of the configuration errors it detects
//! itself (no broker needed).

use std::time::Duration;

use super::client::producer_timeouts;
use super::*;

#[test]
fn linger_stays_below_the_message_timeout() {
    assert_eq!(producer_timeouts(Duration::from_secs(5)), (5000, LINGER_MS));
    assert_eq!(producer_timeouts(Duration::from_millis(1)), (10, 5.0));
    assert_eq!(producer_timeouts(Duration::from_millis(8)), (10, 5.0));
    let (t, l) = producer_timeouts(Duration::from_millis(12));
    assert!(l < t as f64);
}

/// Brokers listed and a legal topic name are the validator's (`api`) to check; a property
/// librdkafka refuses is only known to librdkafka, so the adapter reports it.
#[tokio::test]
async fn bad_configuration_is_a_config_error() {
    let spec = |brokers: &[&str], topic: &str| KafkaConfig {
        brokers: brokers.iter().map(|b| b.to_string()).collect(),
        topic: topic.into(),
        partitions: None,
        replication_factor: None,
        min_insync_replicas: None,
        key: Default::default(),
        group_id: None,
        config: Default::default(),
        tls: None,
        auth: None,
    };
    let t = Duration::from_secs(1);
    let mut bad_prop = spec(&["127.0.0.1:1"], "t");
    bad_prop
        .config
        .insert("no.such.property".into(), "1".into());
    let mut bad_value = spec(&["127.0.0.1:1"], "t");
    bad_value
        .config
        .insert("compression.type".into(), "no-such-codec".into());
    for (s, want) in [
        (bad_prop, "no.such.property"),
        (bad_value, "compression.type"),
    ] {
        let err = KafkaProvider::connect("k", &s, t)
            .await
            .err()
            .expect("a config error");
        assert!(matches!(err, ProviderError::Config { .. }), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn configuration_defaults() {
    let spec = KafkaConfig {
        brokers: vec![" a:9092".into(), "b:9092 ".into()],
        topic: " events ".into(),
        partitions: None,
        replication_factor: Some(3),
        min_insync_replicas: None,
        key: Default::default(),
        group_id: Some(" ".into()),
        config: Default::default(),
        tls: None,
        auth: None,
    };
    assert_eq!(spec.bootstrap_servers(), "a:9092,b:9092");
    assert_eq!(spec.group_id("k"), "dualwrite-k");
    let t = spec.topic_spec();
    assert_eq!(
        (t.name.as_str(), t.partitions, t.replication_factor),
        ("events", 1, 3)
    );
}

/// The record key of a message under each `kafka.key`; a message without the metadata field is
/// keyed by its id.
#[test]
fn record_key_of_a_message() {
    let mut m = DataMessage::new("billing", "x");
    m.id = "o-1".into();
    assert_eq!(KafkaKey::Id.of(&m), "o-1");
    assert_eq!(KafkaKey::Source.of(&m), "billing");
    let tenant = KafkaKey::Metadata("tenant".into());
    assert_eq!(tenant.of(&m), "o-1", "no such field: the id");
    m.metadata.insert("tenant".into(), "acme".into());
    assert_eq!(tenant.of(&m), "acme");
    assert_eq!(tenant.to_string(), "metadata:tenant");
}
