//! Issue 11 item 2 against the real brokers (`NATS_URL`, `KAFKA_BROKERS`): the relay reads each
//! broker's message limit after connecting (NATS's `max_payload` from the server INFO, the
//! Kafka topic's `max.message.bytes` with the admin client) and refuses a message larger than
//! the smallest with 413 before any write, naming the broker and the limit.

mod common;

use std::time::Duration;

use dualwrite::provider::kafka::KafkaProvider;
use dualwrite::provider::Provider;
use dualwrite::relay::{self, Relay};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;

/// Runs the relay of `manifest` on a free port; returns its base URL, the relay and the stop.
async fn serve(
    manifest: &str,
) -> (
    String,
    std::sync::Arc<Relay>,
    tokio::sync::oneshot::Sender<()>,
) {
    let config = relay::config::pipeline_from_manifest(manifest).unwrap();
    let composite = relay::build_composite(&config).await.unwrap();
    let relay = Relay::new(composite, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(relay::serve(relay.clone(), listener, async {
        let _ = rx.await;
    }));
    (base, relay, tx)
}

async fn ingest(base: &str, data: String) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/ingest"))
        .json(&serde_json::json!({"source": "limits", "data": data}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn nats_max_payload_is_read_from_the_server_and_a_larger_message_is_413() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let subject = common::unique("limits").replace('-', "_");
    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: limits}}\nspec:\n  strategy: BestEffort\n  providers:\n  - {{name: nats, type: nats, nats: {{url: \"{url}\", subject: {subject}}}}}\n  - {{name: memory, type: memory}}\n"
    );
    let (base, relay, stop) = serve(&manifest).await;
    let composite = relay.composite();
    let nats = composite.providers().next().unwrap().clone();
    let limit = common::eventually(Duration::from_secs(20), "nats connected", || {
        let nats = nats.clone();
        async move { nats.message_limit().ok_or("no limit yet") }
    })
    .await;
    // The server's default max_payload (hack/test-env does not change it): 1 MiB.
    assert_eq!(limit.bytes, 1024 * 1024, "{limit:?}");
    assert!(limit.setting.contains("max_payload"), "{limit:?}");
    // 800 KB of data is about 1.07 MB in base64: a body under the ingest limit (1 MiB), a
    // message over the server's.
    let (status, body) = ingest(&base, "x".repeat(800 * 1024)).await;
    assert_eq!(status, 413, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("provider nats")
            && error.contains("1048576 bytes")
            && error.contains("max_payload"),
        "{body}"
    );
    let rows = composite.stats_detailed().providers;
    assert_eq!(
        rows.iter()
            .map(|r| r.stats.published + r.stats.failed)
            .sum::<u64>(),
        0,
        "refused before any write: {rows:?}"
    );
    let (status, body) = ingest(&base, "x".repeat(100 * 1024)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["providers"].as_array().unwrap().len(), 2, "{body}");
    let _ = stop.send(());
}

#[tokio::test]
async fn kafka_topic_max_message_bytes_is_read_and_a_larger_message_is_413() {
    let Some(brokers) = common::require_env("KAFKA_BROKERS") else {
        return;
    };
    // A topic made with a small limit, as an operator of the cluster might.
    let topic = common::unique("dwlimits");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let new =
        NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "20000");
    let created = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let spec = common::brokers::kafka_config(&brokers, &topic);
    let kafka = KafkaProvider::connect("kafka", &spec, Duration::from_secs(5))
        .await
        .unwrap();
    let limit = kafka.message_limit().unwrap();
    assert_eq!(limit.bytes, 20_000, "{limit:?}");
    assert_eq!(limit.setting, format!("max.message.bytes of topic {topic}"));
    kafka.close().await.unwrap();

    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: limits}}\nspec:\n  strategy: BestEffort\n  providers:\n  - {{name: memory, type: memory}}\n  - {{name: kafka, type: kafka, kafka: {{brokers: [\"{brokers}\"], topic: {topic}}}}}\n"
    );
    let (base, relay, stop) = serve(&manifest).await;
    let (status, body) = ingest(&base, "x".repeat(30_000)).await;
    assert_eq!(status, 413, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("provider kafka")
            && error.contains("20000 bytes")
            && error.contains("max.message.bytes"),
        "{body}"
    );
    assert_eq!(body["failedProviders"], serde_json::json!(["kafka"]));
    let (status, body) = ingest(&base, "x".repeat(1_000)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        common::brokers::kafka_records(&brokers, &topic).await,
        1,
        "only the message that fits reached the topic"
    );
    drop(relay);
    let _ = stop.send(());
}
