//! Issue 11, item 4: a replayed stretch reaches each broker in ingest order. A backlog of a few
//! thousand messages is built while no provider is attached (as BestEffort queues them while a
//! broker is down), replayed into a real broker (`NATS_URL`, `KAFKA_BROKERS`), and read back with
//! a plain client; the ids must come back in the order they were queued. No broker outage: the
//! NATS case deletes the stream before the replay, so the first window fails and the next one
//! passes through the stream check, which is where concurrent publishes used to overtake each
//! other (ids displaced by up to a window's width).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dualwrite::handoff::{replay, Backlog, HandoffStore, Limits};
use dualwrite::message::DataMessage;
use dualwrite::provider::kafka::KafkaProvider;
use dualwrite::provider::nats::NatsProvider;
use dualwrite::provider::Provider;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Messages in the stretch: a dozen replay batches, many windows each.
const STRETCH: usize = 3000;
/// Bound on the whole replay (thousands of messages, pipelined: seconds, not minutes).
const REPLAY_DEADLINE: Duration = Duration::from_secs(60);

/// A backlog holding `STRETCH` messages, and their ids in the order they were queued.
async fn backlog(dir: &std::path::Path, provider: &str) -> (Arc<Backlog>, Vec<String>) {
    let store = HandoffStore::open(dir).unwrap();
    let b = store.backlog(provider, Limits::default()).unwrap();
    let run = common::unique("ord");
    let mut ids = Vec::with_capacity(STRETCH);
    for i in 0..STRETCH {
        let mut m = DataMessage::new("order-test", format!("payload {i}"));
        m.id = format!("{run}-{i:05}");
        b.append(&m).await.unwrap();
        ids.push(m.id);
    }
    (b, ids)
}

/// Replays `b` into `provider` until it is empty; returns how long that took.
async fn drain(b: &Arc<Backlog>, provider: Arc<dyn Provider>) -> Duration {
    let started = Instant::now();
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(Arc::clone(b), provider, TIMEOUT, stop.clone()));
    common::eventually(REPLAY_DEADLINE, "the backlog drains", || async {
        if b.is_empty() {
            Ok(())
        } else {
            Err(format!("{} left", b.len()))
        }
    })
    .await;
    let took = started.elapsed();
    stop.cancel();
    task.await.unwrap();
    took
}

/// The first place where `got` leaves `want`'s order, for a readable failure.
fn first_difference(got: &[String], want: &[String]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(i) => format!(
            "position {i}: got {:?}, expected {:?} ({} read, {} queued)",
            &got[i..(i + 5).min(got.len())],
            &want[i..(i + 5).min(want.len())],
            got.len(),
            want.len()
        ),
        None => format!("{} read, {} queued", got.len(), want.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stretch_replayed_to_nats_arrives_in_ingest_order() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    common::init_tracing();
    let spec = common::brokers::nats_config(
        &url,
        &format!("dwtest.{}", common::unique("order")),
        &common::unique("DWORDER").replace('-', "_"),
    );
    let provider = Arc::new(
        NatsProvider::connect("nats-order", &spec, TIMEOUT)
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (b, queued) = backlog(dir.path(), "nats-order").await;

    // The stream goes away behind the provider's back: the first window fails, and the replay
    // goes through the stream check again before the stretch lands.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream(provider.stream_name()).await.unwrap();

    let took = drain(&b, provider.clone()).await;
    let stream = provider.stream_name().to_string();
    let subject = provider.subject().to_string();
    provider.close().await.unwrap();
    let stored = common::brokers::nats_ids(&url, &subject, &stream).await;
    assert!(
        stored == queued,
        "NATS holds the stretch out of ingest order: {}",
        first_difference(&stored, &queued)
    );
    eprintln!("replayed {STRETCH} messages to NATS in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stretch_replayed_to_kafka_arrives_in_ingest_order() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    common::init_tracing();
    let spec = common::brokers::kafka_config(&brokers, &common::unique("dworder"));
    let provider = Arc::new(
        KafkaProvider::connect("kafka-order", &spec, TIMEOUT)
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (b, queued) = backlog(dir.path(), "kafka-order").await;
    let took = drain(&b, provider.clone()).await;
    provider.close().await.unwrap();
    // One partition: its order is the topic's order.
    let stored = common::brokers::kafka_ids(&brokers, &spec.topic).await;
    assert!(
        stored == queued,
        "Kafka holds the stretch out of ingest order: {}",
        first_difference(&stored, &queued)
    );
    eprintln!("replayed {STRETCH} messages to Kafka in {took:?}");
}
