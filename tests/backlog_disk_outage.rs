//! A backlog that cannot take a write, end to end: the built relay (seed variables, BestEffort,
//! a state directory) in front of the real NATS and Kafka, run under a file-size limit
//! (`ulimit -f`, with SIGXFSZ ignored, so a write past the limit fails with EFBIG as on a full
//! disk). Kafka is stopped, so every message Kafka misses goes to its backlog until the backlog
//! file cannot grow. From then on a 202 must name Kafka as failed — never skip it silently — and
//! the failure is counted and marks Kafka `needsReconciliation`. Stops Kafka, so it runs in the
//! serial outage step.

mod common;

use std::process::Command;
use std::time::Duration;

use common::brokers::nats_ids;
use common::cluster::{free_port, Proc, BIN};
use common::{eventually, outage_tests_enabled, require_env, unique, StoppedService};
use dualwrite::provider::nats::default_stream_name;
use serde_json::Value;

/// The relay's file-size limit, in KiB (bash's `ulimit -f` unit): the empty backlog store is
/// about 72 KiB; a few of the messages below fill the rest.
const FILE_LIMIT_KIB: u64 = 2048;

/// About 400 KB on the wire (base64): under both brokers' 1 MB limits, so size is never the
/// reason a write is refused here.
const DATA_BYTES: usize = 300_000;

fn relay(
    nats: &str,
    kafka: &str,
    subject: &str,
    topic: &str,
    port: u16,
    dir: &std::path::Path,
) -> Proc {
    // An ignored signal stays ignored across exec, so the relay gets EFBIG instead of SIGXFSZ.
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {FILE_LIMIT_KIB}; exec \"$0\" relay"
        ))
        .arg(BIN)
        .env("QUEUE_TYPE", "composite")
        .env("COMPOSITE_PROVIDERS", "nats,kafka")
        .env("COMPOSITE_STRATEGY", "best-effort")
        .env("NATS_URL", nats)
        .env("NATS_SUBJECT", subject)
        .env("KAFKA_BROKERS", kafka)
        .env("KAFKA_TOPIC", topic)
        .env("PUBLISH_TIMEOUT", "2s")
        .env("DUALWRITE_STATE_DIR", dir.join("state"))
        .env("API_PORT", port.to_string())
        .env("API_BIND", "127.0.0.1")
        .env("RUST_LOG", "info");
    Proc::spawn(cmd, dir.join("relay.log"))
}

async fn post(port: u16, n: usize) -> (u16, Value) {
    let data = format!("{n:06}{}", "x".repeat(DATA_BYTES));
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
        .timeout(Duration::from_secs(10))
        .json(&serde_json::json!({"source": "disk-full", "data": data}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn kafka_row(port: u16) -> Value {
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{port}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "kafka")
        .unwrap()
        .clone()
}

fn names(body: &Value, field: &str) -> Vec<String> {
    body[field]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_that_cannot_grow_fails_the_write_loudly() {
    if !outage_tests_enabled() {
        return;
    }
    let (Some(nats), Some(kafka)) = (require_env("NATS_URL"), require_env("KAFKA_BROKERS")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let subject = unique("disk.full").replace('-', "_");
    let topic = unique("disk-full");
    let port = free_port();
    let relay = relay(&nats, &kafka, &subject, &topic, port, dir.path());
    eventually(
        Duration::from_secs(30),
        "the relay serves ingest",
        || async {
            reqwest::get(format!("http://127.0.0.1:{port}/health"))
                .await
                .map_err(|e| format!("{e}; log:\n{}", relay.log_text()))
        },
    )
    .await;

    let kafka_down = StoppedService::stop("kafka").await;
    // Every message: 202 from NATS, Kafka either kept in its backlog (deferred) or named as
    // failed — never neither. Enough messages to fill the backlog file several times over.
    let (mut deferred, mut failed, mut accepted) = (0, 0, Vec::new());
    for n in 0..(4 * FILE_LIMIT_KIB as usize * 1024 / DATA_BYTES) {
        let (code, body) = post(port, n).await;
        assert_eq!(code, 202, "message {n}: {body}");
        assert_eq!(names(&body, "providers"), ["nats"], "message {n}: {body}");
        let kept = names(&body, "deferredProviders") == ["kafka"];
        let named = names(&body, "failedProviders") == ["kafka"];
        assert!(
            kept != named,
            "message {n}: Kafka must be deferred or failed, exactly one: {body}"
        );
        if kept {
            deferred += 1;
        } else {
            failed += 1;
        }
        accepted.push(body["messageId"].as_str().unwrap().to_string());
    }
    println!("kafka down, backlog file limited to {FILE_LIMIT_KIB} KiB: {deferred} deferred, {failed} failed");
    assert!(deferred > 0, "the backlog took messages until it was full");
    assert!(failed > 0, "the full backlog refused messages, loudly");

    let row = kafka_row(port).await;
    println!("kafka row: {row}");
    assert!(
        row["backlogErrors"].as_u64().unwrap_or(0) >= failed,
        "{row}"
    );
    assert!(row["missed"].as_u64().unwrap_or(0) >= failed, "{row}");
    assert_eq!(row["needsReconciliation"], true, "{row}");
    let reason = row["reconciliationReason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{row}");
    let log = relay.log_text();
    assert!(log.contains("kafka"), "{log}");

    // NATS, which acknowledged every 202, holds every message.
    let on_nats = nats_ids(&nats, &subject, &default_stream_name(&subject)).await;
    assert!(
        accepted.iter().all(|id| on_nats.contains(id)),
        "NATS holds every accepted message"
    );
    kafka_down.start().await;
}
