//! Reading what the relay wrote, with plain broker clients (not the project's providers): every
//! message id on a JetStream stream, and on a Kafka topic, with duplicates kept so tests can
//! count them.

use std::collections::HashMap;
use std::time::Duration;

use dualwrite::message::DataMessage;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

/// Every message's id on `stream`, in stream order (one entry per stored message).
pub async fn nats_ids(url: &str, stream: &str) -> Vec<String> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(url))
        .await
        .expect("connect in time")
        .expect("async-nats connects");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let total = s.info().await.expect("stream info").state.messages;
    let consumer = s
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut ids = Vec::with_capacity(total as usize);
    let mut messages = consumer.messages().await.expect("message stream");
    while (ids.len() as u64) < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream delivers its stored messages")
            .expect("stream open")
            .expect("message");
        ids.push(DataMessage::from_wire(&m.payload).expect("DESIGN JSON").id);
    }
    ids
}

/// Every record's id on `topic` (all partitions), read from the beginning until `quiet` passes
/// with nothing new after at least `expect_at_least` records (or 60 s in all).
pub async fn kafka_ids(
    brokers: &str,
    topic: &str,
    expect_at_least: usize,
    quiet: Duration,
) -> Vec<String> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", super::unique("dwtest-read"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ids = Vec::new();
    loop {
        let wait = if ids.len() >= expect_at_least {
            quiet
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(wait, c.recv()).await {
            Ok(Ok(m)) => {
                let payload = m.payload().expect("record has a payload");
                let msg = DataMessage::from_wire(payload).expect("DESIGN JSON");
                assert_eq!(m.key(), Some(msg.id.as_bytes()), "record key is the id");
                ids.push(msg.id);
            }
            Ok(Err(e)) => panic!("kafka consumer error: {e}"),
            Err(_) if ids.len() >= expect_at_least => break,
            Err(_) if tokio::time::Instant::now() > deadline => break,
            Err(_) => {}
        }
    }
    ids
}

/// How many ids occur more than once.
pub fn duplicates(ids: &[String]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts.values().filter(|c| **c > 1).count()
}
