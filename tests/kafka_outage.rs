//! Kafka outage and recovery with the same provider instance: the shared broker of
//! `hack/test-env` is stopped and started again (same port, same data).
//!
//! These tests disturb the broker every other test uses, so they run only when asked
//! (`DUALWRITE_OUTAGE_TESTS=1`, or always under `CI=true`), one at a time, and never in parallel
//! with the other test binaries:
//!
//! ```text
//! DUALWRITE_OUTAGE_TESTS=1 cargo test --test kafka_outage -- --test-threads=1
//! ```

mod common;

use std::time::{Duration, Instant};

use common::StoppedService;
use dualwrite::message::DataMessage;
use dualwrite::provider::kafka::KafkaConfig;
use dualwrite::provider::kafka::KafkaProvider;
use dualwrite::provider::Provider;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Allowed lateness of an error past the publish deadline (scheduling, not waiting).
const MARGIN: Duration = Duration::from_millis(500);
/// Bound on noticing a stopped broker / recovering after a restart.
const NOTICE: Duration = Duration::from_secs(30);
const RECOVER: Duration = Duration::from_secs(60);

/// Even if someone forgets `--test-threads=1`, the tests of this binary take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.split(',').map(str::to_string).collect(),
        topic: common::unique("dwoutage"),
        partitions: None,
        replication_factor: None,
        min_insync_replicas: None,
        key: Default::default(),
        group_id: Some(common::unique("dwoutage-group")),
        config: Default::default(),
        tls: None,
        auth: None,
    }
}

/// The next message of `sub` within [`RECOVER`], skipping error items (counted).
async fn next_message(sub: &mut dualwrite::provider::MessageStream) -> (DataMessage, usize) {
    let deadline = tokio::time::Instant::now() + RECOVER;
    let mut errors = 0;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => panic!("no message within {RECOVER:?} ({errors} errors seen)"),
            Ok(Some(Ok(m))) => return (m, errors),
            Ok(Some(Err(e))) => {
                eprintln!("subscription error: {e}");
                errors += 1;
            }
            Ok(None) => panic!("the subscription ended"),
        }
    }
}

async fn healthy(p: &KafkaProvider) -> Result<(), String> {
    let h = p.health();
    if h.healthy {
        Ok(())
    } else {
        Err(format!("{h:?}"))
    }
}

async fn unhealthy(p: &KafkaProvider) -> Result<String, String> {
    let h = p.health();
    if h.healthy {
        Err(format!("{h:?}"))
    } else {
        Ok(h.reason)
    }
}

#[tokio::test]
async fn the_same_provider_recovers_after_the_broker_restarts() {
    if !common::outage_tests_enabled() {
        return;
    }
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    common::init_tracing();

    let p = KafkaProvider::connect("kafka-outage", &spec(&brokers), TIMEOUT)
        .await
        .unwrap();
    let before = DataMessage::new("outage", "before");
    p.publish(&before).await.unwrap();
    // A subscription opened before the outage must carry on after it by itself.
    let mut sub = p.subscribe().await.unwrap();
    assert_eq!(next_message(&mut sub).await.0, before);

    let stopped = StoppedService::stop("kafka").await;
    // librdkafka reports AllBrokersDown: no publish needed to notice.
    let reason = common::eventually(NOTICE, "health down after the broker stopped", || {
        unhealthy(&p)
    })
    .await;
    eprintln!("kafka: health down with reason {reason}");

    let started = Instant::now();
    let err = p
        .publish(&DataMessage::new("outage", "during"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("kafka: publish to the stopped broker failed after {took:?}: {err}");
    assert!(took <= TIMEOUT + MARGIN, "took {took:?}");
    assert_eq!(err.provider(), "kafka-outage");
    assert!(err.to_string().contains("kafka-outage"), "{err}");

    stopped.start().await;
    let started = Instant::now();
    // Health comes back by itself (the supervisor's metadata probe), before any publish.
    common::eventually(RECOVER, "healthy again after the restart", || healthy(&p)).await;
    eprintln!(
        "kafka: healthy {:?} after the broker was ready again",
        started.elapsed()
    );
    let started = Instant::now();
    let after = DataMessage::new("outage", "after");
    p.publish(&after).await.unwrap();
    eprintln!(
        "kafka: first publish after recovery took {:?}",
        started.elapsed()
    );

    // The same subscription delivers what was written after the restart (errors it reported
    // while the broker was away are skipped), and nothing else was stored in between.
    let (got, errors) = next_message(&mut sub).await;
    assert_eq!(got, after);
    eprintln!("kafka: the subscription reported {errors} errors during the outage");

    let s = p.stats();
    assert_eq!((s.published, s.failed), (2, 1));
    p.close().await.unwrap();
}

#[tokio::test]
async fn a_provider_started_while_the_broker_is_down_creates_its_topic_later() {
    if !common::outage_tests_enabled() {
        return;
    }
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    common::init_tracing();

    let stopped = StoppedService::stop("kafka").await;
    let mut s = spec(&brokers);
    s.partitions = Some(2);
    let started = Instant::now();
    // The relay must start while a broker is down: connect succeeds, unhealthy.
    let p = KafkaProvider::connect("kafka-late", &s, TIMEOUT)
        .await
        .unwrap();
    eprintln!(
        "kafka: connect with the broker down took {:?}",
        started.elapsed()
    );
    assert_eq!(p.health().reason, "Unavailable", "{:?}", p.health());
    let started = Instant::now();
    let err = p
        .publish(&DataMessage::new("late", "early"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() <= TIMEOUT + MARGIN,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.provider(), "kafka-late");

    stopped.start().await;
    common::eventually(RECOVER, "healthy once the broker is up", || healthy(&p)).await;
    p.publish(&DataMessage::new("late", "first")).await.unwrap();

    // Created by the provider with the spec's partitions (not by broker auto-creation).
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let topic = s.topic.clone();
    let md = tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&topic), RECOVER))
        .await
        .unwrap()
        .unwrap();
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == s.topic)
        .expect("topic listed");
    assert_eq!(t.partitions().len(), 2);
    p.close().await.unwrap();
}
