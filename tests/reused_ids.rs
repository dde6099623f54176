//! A message id reused for other content, end to end against the real brokers (`NATS_URL`,
//! `KAFKA_BROKERS`): the relay answers a retry as a 202 duplicate and a reused id with 409, so
//! each broker holds the id once, with the first content and its `Dualwrite-Digest` header; and
//! `dualwrite verify` names an id whose content differs between the brokers (one copy written
//! by another tool, without the header). Each test has its own subject, stream and topic.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dualwrite::message::{DataMessage, DIGEST_HEADER};
use dualwrite::provider::kafka::{KafkaConfig, KafkaProvider};
use dualwrite::provider::nats::{NatsConfig, NatsProvider};
use dualwrite::provider::Provider;
use dualwrite::relay::{self, Relay};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_dualwrite");
const TIMEOUT: Duration = Duration::from_secs(5);

struct Names {
    subject: String,
    stream: String,
    topic: String,
}

impl Names {
    fn new() -> Self {
        let id = common::unique("ids");
        Self {
            subject: format!("dwtest.{id}"),
            stream: id.replace('-', "_").to_uppercase(),
            topic: common::unique("dwtest-ids"),
        }
    }

    /// A FailFast pipeline over NATS (`nats`) and Kafka (`kafka`), as a manifest.
    fn manifest(&self, nats_url: &str, brokers: &str) -> String {
        format!(
            "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: ids}}\n\
             spec:\n  strategy: FailFast\n  providers:\n\
             \x20   - {{name: nats, type: nats, nats: {{url: '{nats_url}', subject: {}, stream: {}}}}}\n\
             \x20   - {{name: kafka, type: kafka, kafka: {{brokers: ['{brokers}'], topic: {}}}}}\n",
            self.subject, self.stream, self.topic
        )
    }

    fn nats(&self, url: &str) -> NatsConfig {
        common::brokers::nats_config(url, &self.subject, &self.stream)
    }

    fn kafka(&self, brokers: &str) -> KafkaConfig {
        common::brokers::kafka_config(brokers, &self.topic)
    }
}

/// Every record of `topic` (one partition, the provider's default), read with a plain client:
/// its JSON value and its `Dualwrite-Digest` header.
async fn kafka_records(brokers: &str, topic: &str) -> Vec<(DataMessage, Option<String>)> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", common::unique("dwtest-raw"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (low, high) = c.fetch_watermarks(&topic, 0, TIMEOUT * 6).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(low))
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        while out.len() < usize::try_from(high - low).unwrap() {
            let r = c.poll(TIMEOUT * 6).expect("a record in time").unwrap();
            let digest = r.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == DIGEST_HEADER)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8(v.to_vec()).unwrap())
            });
            out.push((
                DataMessage::from_wire(r.payload().unwrap()).unwrap(),
                digest,
            ));
        }
        out
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_retry_is_stored_once_and_a_reused_id_refused_on_both_brokers() {
    common::init_tracing();
    let (Some(url), Some(brokers)) = (
        common::require_env("NATS_URL"),
        common::require_env("KAFKA_BROKERS"),
    ) else {
        return;
    };
    let names = Names::new();
    let spec = relay::config::spec_from_manifest(&names.manifest(&url, &brokers)).unwrap();
    let config = relay::PipelineConfig::try_from(&spec).unwrap();
    let relay = Relay::new(relay::build_composite(&config).await.unwrap(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest = format!("http://{}/api/v1/ingest", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay::serve(relay.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut answers = Vec::new();
    for data in ["one", "one", "two"] {
        let resp = client
            .post(&ingest)
            .json(&json!({"source": "orders", "data": data, "id": "o-1"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        println!("o-1 {data:?} -> {status} {body}");
        answers.push((status, body["duplicate"] == true));
    }
    assert_eq!(answers, [(202, false), (202, true), (409, false)]);
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let mut one = DataMessage::new("orders", "one");
    one.id = "o-1".into();
    let digest = one.content_digest().to_string();

    // NATS: one message on the stream, "one", with the digest header.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut stream = js.get_stream(&names.stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let raw = stream.get_raw_message(1).await.unwrap();
    let stored = DataMessage::from_wire(&raw.payload).unwrap();
    assert_eq!(
        (stored.id.as_str(), &stored.payload[..]),
        ("o-1", &b"one"[..])
    );
    assert_eq!(
        raw.headers.get(DIGEST_HEADER).map(|v| v.as_str()),
        Some(digest.as_str())
    );

    // Kafka: one record, "one", with the digest header.
    let records = kafka_records(&brokers, &names.topic).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let (stored, header) = &records[0];
    assert_eq!(
        (stored.id.as_str(), &stored.payload[..]),
        ("o-1", &b"one"[..])
    );
    assert_eq!(header.as_deref(), Some(digest.as_str()));
}

/// Runs `dualwrite verify -f manifest --settle 0s`: its exit code and its report.
fn verify(manifest: &Path) -> (Option<i32>, Value) {
    let out = std::process::Command::new(BIN)
        .args(["verify", "--settle", "0s", "-f"])
        .arg(manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "$ dualwrite verify\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Logs go to stdout too: the report is the JSON that starts on a line of its own.
    let json = stdout
        .find("\n{")
        .map_or(&stdout[..], |at| &stdout[at + 1..]);
    let report = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("verify prints a JSON report ({e}): {stdout}"));
    (out.status.code(), report)
}

#[tokio::test]
async fn verify_names_an_id_whose_content_differs_between_brokers() {
    common::init_tracing();
    let (Some(url), Some(brokers)) = (
        common::require_env("NATS_URL"),
        common::require_env("KAFKA_BROKERS"),
    ) else {
        return;
    };
    let names = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pipeline.yaml");
    std::fs::write(&manifest, names.manifest(&url, &brokers)).unwrap();

    // o-1 and o-2 as the relay writes them (with the digest header) on both brokers, stamped
    // a minute ago so that `--settle 0s` takes them in.
    let nats: Arc<dyn Provider> = Arc::new(
        NatsProvider::connect("nats", &names.nats(&url), TIMEOUT)
            .await
            .unwrap(),
    );
    let kafka: Arc<dyn Provider> = Arc::new(
        KafkaProvider::connect("kafka", &names.kafka(&brokers), TIMEOUT)
            .await
            .unwrap(),
    );
    let message = |id: &str, data: &str| {
        let mut m = DataMessage::new("orders", data.to_string());
        m.id = id.into();
        m.timestamp -= 60;
        m
    };
    for p in [&nats, &kafka] {
        p.publish(&message("o-1", "one")).await.unwrap();
        p.publish(&message("o-2", "same")).await.unwrap();
    }
    let (code, report) = verify(&manifest);
    assert_eq!(code, Some(0), "the brokers agree: {report}");
    assert_eq!(report["conflicting"], json!({"nats": 0, "kafka": 0}));

    // Another tool writes o-1 again to Kafka with other content and no digest header: Kafka now
    // holds o-1 twice, as "one" and as "two".
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let other = message("o-1", "two").to_wire();
    producer
        .send(
            FutureRecord::to(&names.topic).key("o-1").payload(&other),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let (code, report) = verify(&manifest);
    assert_eq!(
        code,
        Some(1),
        "a conflict makes the verdict inconsistent: {report}"
    );
    assert_eq!(report["consistent"], false);
    assert_eq!(report["missing"], json!({"nats": 0, "kafka": 0}));
    assert_eq!(report["conflicting"], json!({"nats": 1, "kafka": 1}));
    let example = &report["conflictingExamples"]["o-1"];
    let digest = |data: &str| message("o-1", data).content_digest().to_string();
    assert_eq!(example["nats"], json!([digest("one")]));
    assert_eq!(example["kafka"], json!([digest("one"), digest("two")]));
    assert!(
        report["conflictingExamples"].get("o-2").is_none(),
        "{report}"
    );
    nats.close().await.unwrap();
    kafka.close().await.unwrap();
}
