//! The seed's manual scenario, automated against the built binary and real brokers:
//! `QUEUE_TYPE=composite COMPOSITE_PROVIDERS=nats,kafka COMPOSITE_STRATEGY=fail-fast dualwrite relay`,
//! messages in over HTTP, both adapters created, counters growing for both brokers, the messages
//! really on both; then Kafka stopped: fail-fast answers 503 naming kafka, best-effort 202 and
//! NATS keeps receiving. Stops Kafka, so it runs in the serial outage step.

mod common;

use std::process::Command;
use std::time::Duration;

use common::brokers::{kafka_ids, nats_ids};
use common::cluster::{free_port, Proc, BIN};
use common::{eventually, outage_tests_enabled, require_env, unique, StoppedService};
use dualwrite::provider::nats::default_stream_name;
use serde_json::Value;

fn relay(
    strategy: &str,
    nats: &str,
    kafka: &str,
    subject: &str,
    topic: &str,
    port: u16,
    dir: &std::path::Path,
) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("relay")
        .env("QUEUE_TYPE", "composite")
        .env("COMPOSITE_PROVIDERS", "nats,kafka")
        .env("COMPOSITE_STRATEGY", strategy)
        .env("NATS_URL", nats)
        .env("NATS_SUBJECT", subject)
        .env("KAFKA_BROKERS", kafka)
        .env("KAFKA_TOPIC", topic)
        .env("PUBLISH_TIMEOUT", "2s")
        .env("API_PORT", port.to_string())
        .env("API_BIND", "127.0.0.1")
        .env("RUST_LOG", "info");
    Proc::spawn(cmd, dir.join(format!("relay-{strategy}.log")))
}

async fn post(port: u16, n: usize) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
        .timeout(Duration::from_secs(10))
        .json(&serde_json::json!({"source": "test", "data": format!("dual-write test {n}")}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn stats(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn published(stats: &Value, provider: &str) -> u64 {
    stats["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == provider)
        .unwrap()["published"]
        .as_u64()
        .unwrap()
}

async fn wait_ready(p: &Proc, port: u16) {
    eventually(
        Duration::from_secs(30),
        "the relay serves ingest",
        || async {
            reqwest::get(format!("http://127.0.0.1:{port}/health"))
                .await
                .map_err(|e| format!("{e}; log:\n{}", p.log_text()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_fail_fast_then_kafka_down() {
    if !outage_tests_enabled() {
        return;
    }
    let (Some(nats), Some(kafka)) = (require_env("NATS_URL"), require_env("KAFKA_BROKERS")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let subject = unique("seed.orders").replace('-', "_");
    let topic = unique("seed-orders");

    // Fail-fast, both brokers up.
    let port = free_port();
    let mut ff = relay(
        "fail-fast",
        &nats,
        &kafka,
        &subject,
        &topic,
        port,
        dir.path(),
    );
    wait_ready(&ff, port).await;
    let log = ff.log_text();
    assert!(log.contains("nats adapter created"), "{log}");
    assert!(log.contains("kafka adapter created"), "{log}");

    let mut accepted = Vec::new();
    for n in 0..5 {
        let (code, body) = post(port, n).await;
        assert_eq!(code, 202, "{body}");
        accepted.push(body["messageId"].as_str().unwrap().to_string());
        let s = stats(port).await;
        assert_eq!(
            published(&s, "nats"),
            n as u64 + 1,
            "counters grow for nats"
        );
        assert_eq!(
            published(&s, "kafka"),
            n as u64 + 1,
            "counters grow for kafka"
        );
    }
    let on_nats = nats_ids(&nats, &subject, &default_stream_name(&subject)).await;
    let on_kafka = kafka_ids(&kafka, &topic).await;
    assert_eq!(on_nats, accepted, "every message on NATS, in order");
    assert_eq!(on_kafka, accepted, "every message on Kafka, in order");

    // Kafka stops: fail-fast answers 503 naming kafka, within the publish timeout.
    let kafka_down = StoppedService::stop("kafka").await;
    let started = std::time::Instant::now();
    let (code, body) = post(port, 100).await;
    let took = started.elapsed();
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body["failedProviders"],
        serde_json::json!(["kafka"]),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("kafka"), "{body}");
    assert!(
        took < Duration::from_secs(4),
        "failed in {took:?}, publishTimeout is 2s"
    );
    println!("fail-fast with kafka down: 503 in {took:?}: {body}");
    ff.terminate();

    // The same pipeline with best-effort: 202, and NATS keeps receiving.
    let port = free_port();
    let be = relay(
        "best-effort",
        &nats,
        &kafka,
        &subject,
        &topic,
        port,
        dir.path(),
    );
    wait_ready(&be, port).await;
    let mut during_outage = Vec::new();
    for n in 0..3 {
        let (code, body) = post(port, 200 + n).await;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body["providers"], serde_json::json!(["nats"]), "{body}");
        assert_eq!(
            body["failedProviders"],
            serde_json::json!(["kafka"]),
            "{body}"
        );
        during_outage.push(body["messageId"].as_str().unwrap().to_string());
    }
    let s = stats(port).await;
    assert_eq!(published(&s, "nats"), 3);
    let on_nats = nats_ids(&nats, &subject, &default_stream_name(&subject)).await;
    assert!(
        during_outage.iter().all(|id| on_nats.contains(id)),
        "NATS received every best-effort message"
    );
    println!(
        "best-effort with kafka down: 3 × 202, nats stream holds {} messages",
        on_nats.len()
    );
    kafka_down.start().await;
}
