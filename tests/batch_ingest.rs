//! Issue 12 item 2 against the real brokers (`NATS_URL`, `KAFKA_BROKERS`): batches sent to
//! `POST /api/v1/ingest/batch` of a relay writing to NATS JetStream and Kafka under FailFast are
//! read back from both brokers with plain clients, every message once and in request order.

mod common;

use std::time::Duration;

use dualwrite::relay::{self, Relay};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_nats_and_kafka_in_order() {
    let (Some(nats), Some(kafka)) = (
        common::require_env("NATS_URL"),
        common::require_env("KAFKA_BROKERS"),
    ) else {
        return;
    };
    common::init_tracing();
    let subject = format!("dwtest.{}", common::unique("batch"));
    let stream = common::unique("DWBATCH").replace('-', "_");
    let topic = common::unique("dwbatch");
    let spec: dualwrite::api::DualWritePipelineSpec = serde_json::from_value(json!({
        "providers": [
            {"name": "nats", "type": "nats", "nats": {"url": nats, "subject": subject, "stream": stream}},
            {"name": "kafka", "type": "kafka", "kafka": {"brokers": kafka.split(',').collect::<Vec<_>>(), "topic": topic}},
        ],
        "strategy": "FailFast",
    }))
    .unwrap();
    let config = relay::PipelineConfig::try_from(&spec).unwrap();
    let composite = relay::build_composite(&config).await.unwrap();
    let relay = Relay::new(composite, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/v1/ingest/batch",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay::serve(relay.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    common::eventually(
        Duration::from_secs(30),
        "both brokers connected",
        || async { relay.composite().readiness().map_err(|e| e.to_string()) },
    )
    .await;

    let run = common::unique("b");
    let mut sent = Vec::new();
    for b in 0..5 {
        let batch: Vec<Value> = (0..200)
            .map(|i| json!({"source": "batch-test", "data": format!("payload {b}/{i}"), "id": format!("{run}-{b}-{i:03}")}))
            .collect();
        let resp = client.post(&url).json(&batch).send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 202, "batch {b}: {body}");
        assert_eq!(body["accepted"], 200);
        for (row, want) in body["results"].as_array().unwrap().iter().zip(&batch) {
            assert_eq!(row["messageId"], want["id"]);
            assert_eq!(row["providers"], json!(["nats", "kafka"]), "{row}");
        }
        sent.extend(batch.iter().map(|m| m["id"].as_str().unwrap().to_string()));
    }
    // One NDJSON batch with relay-minted ids, which the answer returns.
    let ndjson: String = (0..50)
        .map(|i| format!("{{\"source\":\"batch-test\",\"data\":\"nd {i}\"}}\n"))
        .collect();
    let resp = client
        .post(&url)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    sent.extend(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messageId"].as_str().unwrap().to_string()),
    );

    let composite = relay.composite();
    let stats = composite.stats_detailed();
    for row in &stats.providers {
        assert_eq!(row.stats.published, sent.len() as u64, "{}", row.name);
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    composite.close_all().await.unwrap();
    let on_nats = common::brokers::nats_ids(&nats, &subject, &stream).await;
    assert_eq!(
        on_nats, sent,
        "NATS holds every message once, in request order"
    );
    let on_kafka = common::brokers::kafka_ids(&kafka, &topic).await;
    assert_eq!(
        on_kafka, sent,
        "Kafka holds every message once, in request order"
    );
}
