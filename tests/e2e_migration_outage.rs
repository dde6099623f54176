//! The migration end to end: the NATS→Kafka pipeline walks every step while a load generator
//! sends messages continuously; Kafka is stopped for a while in the BestEffort step and the
//! relay process is killed (SIGKILL) and restarted once; at the end both brokers are read with
//! plain clients and every message answered 202 must be on every broker the relay named.
//! Stops Kafka, so it runs in the serial outage step.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::brokers::{kafka_ids, nats_ids};
use common::cluster::{
    free_port, install_crd, kube_env, kubectl_ok, namespace, relay_kubeconfig, relay_statefulset,
    start_operator, start_relay_from_pod_template, KubeEnv, BIN,
};
use common::{eventually, outage_tests_enabled, require_env, unique, StoppedService};
use dualwrite::provider::nats::default_stream_name;
use serde_json::Value;

/// One 202: the id and the brokers the relay said hold it (acknowledged or kept for replay).
#[derive(Clone, Debug)]
struct Accepted {
    id: String,
    brokers: Vec<String>,
}

fn manifest(ns: &str, port: u16, nats: &str, kafka: &str, subject: &str, topic: &str) -> String {
    format!(
        r#"apiVersion: dualwrite.io/v1alpha1
kind: DualWritePipeline
metadata: {{name: orders, namespace: {ns}}}
spec:
  publishTimeout: 2s
  ingest: {{port: {port}}}
  handoff: {{enabled: true}}
  providers:
  - {{name: nats, type: nats, nats: {{url: "{nats}", subject: {subject}}}}}
  - {{name: kafka, type: kafka, kafka: {{brokers: ["{kafka}"], topic: {topic}}}}}
  migration:
    steps:
    - {{name: nats-only, strategy: FailFast, providers: [nats], readFrom: nats, gates: {{minDuration: 3s}}}}
    - {{name: shadow-kafka, strategy: BestEffort, readFrom: nats, gates: {{manual: true}}}}
    - {{name: dual-write, strategy: FailFast, readFrom: nats, gates: {{minDuration: 2s, consistent: true}}}}
    - {{name: read-kafka, strategy: FailFast, readFrom: kafka, gates: {{minDuration: 2s}}}}
    - {{name: kafka-only, strategy: FailFast, providers: [kafka], readFrom: kafka}}
"#
    )
}

fn status(env: &KubeEnv, ns: &str) -> Value {
    let out = kubectl_ok(env, &["get", "dwp", "orders", "-n", ns, "-o", "json"], None);
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

async fn wait_step(env: &KubeEnv, ns: &str, step: u64, timeout: Duration) -> Value {
    eventually(
        timeout,
        &format!("migration reaches step {step}"),
        || async {
            let st = status(env, ns);
            if st["migration"]["currentStep"] == step && st["strategy"].is_string() {
                Ok(st)
            } else {
                Err(format!("status: {}", st["migration"]))
            }
        },
    )
    .await
}

/// Sends messages back to back until stopped, as a well-behaved producer does: a refused message
/// (503 while a broker is down under FailFast, or the relay restarting) is retried with the
/// same id, which the brokers de-duplicate. Records every 202 with the brokers it names, and
/// the reasons of the refusals.
fn load_generator(
    port: u16,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Vec<Accepted>, u64, Vec<String>)> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut accepted = Vec::new();
        let mut refusals = Vec::new();
        let mut gave_up = 0u64;
        let mut n = 0u64;
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        while !*stop.borrow() {
            pace.tick().await;
            n += 1;
            let id = format!("load-{n}");
            let mut done = false;
            // Retry for up to 30 s: long enough for a relay restart on a loaded machine.
            let give_up_at = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < give_up_at {
                let resp = client
                    .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
                    .json(&serde_json::json!({"source": "load", "data": format!("message {n}"), "id": id}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 202 => {
                        let body: Value = r.json().await.unwrap();
                        let mut brokers: Vec<String> = Vec::new();
                        // A retry of a request that got its 202 after the client gave up is
                        // answered as a duplicate, naming no brokers.
                        for key in ["providers", "deferredProviders"] {
                            for b in body[key].as_array().into_iter().flatten() {
                                brokers.push(b.as_str().unwrap().to_string());
                            }
                        }
                        accepted.push(Accepted {
                            id: id.clone(),
                            brokers,
                        });
                        done = true;
                        break;
                    }
                    Ok(r) => refusals.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => refusals.push(format!("connection: {e}")),
                }
                pace.tick().await;
            }
            if !done {
                gave_up += 1;
            }
        }
        (accepted, gave_up, refusals)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_walks_every_step_under_load_without_losing_a_message() {
    if !outage_tests_enabled() {
        return;
    }
    let Some(env) = kube_env() else { return };
    let (Some(nats), Some(kafka)) = (require_env("NATS_URL"), require_env("KAFKA_BROKERS")) else {
        return;
    };
    install_crd(&env);
    let ns = namespace(&env, "mig");
    let dir = tempfile::tempdir().unwrap();

    let operator = start_operator(
        &env,
        dir.path(),
        &["--resync", "1s", "--stale-after", "30s"],
    );

    let port = free_port();
    let (subject, topic) = (unique("mig.orders").replace('-', "_"), unique("mig-orders"));
    kubectl_ok(
        &env,
        &["apply", "-f", "-"],
        Some(&manifest(&ns, port, &nats, &kafka, &subject, &topic)),
    );

    let d = relay_statefulset(&env, &ns, "orders", &operator).await;
    let relay_kubeconfig = relay_kubeconfig(&env, &ns, "orders", dir.path());
    // The state directory (the pod's volume) is the same across the relay restart below.
    let mut relay = start_relay_from_pod_template(&d, dir.path(), &relay_kubeconfig);
    eventually(
        Duration::from_secs(30),
        "the relay serves ingest",
        || async {
            reqwest::get(format!("http://127.0.0.1:{port}/health"))
                .await
                .map_err(|e| format!("{e}; relay log:\n{}", relay.log_text()))
        },
    )
    .await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = load_generator(port, stop_rx);

    // Step 0 → 1 by its gate (3 s); the relay follows to BestEffort over both brokers.
    let st = wait_step(&env, &ns, 1, Duration::from_secs(60)).await;
    assert_eq!(st["strategy"], "BestEffort");
    eventually(
        Duration::from_secs(30),
        "the relay writes both brokers",
        || async {
            let s: Value = reqwest::get(format!("http://127.0.0.1:{port}/stats"))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if s["providers"].as_array().map(|r| r.len()) == Some(2) {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        },
    )
    .await;

    // Kafka down for a while: BestEffort keeps accepting, kafka's misses go to its backlog.
    let kafka_down = StoppedService::stop("kafka").await;
    eventually(Duration::from_secs(30), "kafka's backlog grows", || async {
        let s: Value = reqwest::get(format!("http://127.0.0.1:{port}/stats"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let backlog = s["providers"][1]["backlog"].as_u64().unwrap_or(0);
        if backlog >= 20 {
            Ok(())
        } else {
            Err(format!("kafka backlog {backlog}"))
        }
    })
    .await;

    // The relay is killed (no graceful stop) and started again from the same pod template and
    // state directory: the backlog on its disk survives.
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    relay = start_relay_from_pod_template(&d, dir.path(), &relay_kubeconfig);
    let backlog_after_restart = eventually(
        Duration::from_secs(30),
        "the restarted relay serves with its backlog",
        || async {
            let s: Value = reqwest::get(format!("http://127.0.0.1:{port}/stats"))
                .await
                .map_err(|e| format!("{e}; log:\n{}", relay.log_text()))?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            match s["providers"]
                .as_array()
                .and_then(|r| r.iter().find(|p| p["name"] == "kafka"))
                .and_then(|p| p["backlog"].as_u64())
            {
                Some(b) if b > 0 => Ok(b),
                other => Err(format!("kafka backlog {other:?}: {s}")),
            }
        },
    )
    .await;
    println!("kafka backlog after the relay restart: {backlog_after_restart}");

    // Kafka returns: the backlog replays in order and drains; the status shows it empty.
    kafka_down.start().await;
    eventually(
        Duration::from_secs(90),
        "kafka's backlog replayed",
        || async {
            let st = status(&env, &ns);
            let row = st["providers"]
                .as_array()
                .and_then(|r| r.iter().find(|p| p["name"] == "kafka"))
                .cloned()
                .unwrap_or_default();
            if row["ready"] == "True" && row["backlog"] == 0 && st["backlog"] == 0 {
                Ok(())
            } else {
                Err(format!("kafka row {row}"))
            }
        },
    )
    .await;

    // Promote past the manual gate from "Git" (the spec), then hand control back to the gates.
    kubectl_ok(
        &env,
        &[
            "patch",
            "dwp",
            "orders",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"migration":{"targetStep":2}}}"#,
        ],
        None,
    );
    let st = wait_step(&env, &ns, 2, Duration::from_secs(30)).await;
    let entered = st["migration"]["history"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        (entered["step"].as_u64(), entered["reason"].as_str()),
        (Some(2), Some("Promoted")),
        "{entered}"
    );
    kubectl_ok(
        &env,
        &[
            "patch",
            "dwp",
            "orders",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"migration":{"targetStep":null}}}"#,
        ],
        None,
    );

    // Step 2 waits for a consistency check run after it started: run `dualwrite verify`.
    let st = status(&env, &ns);
    assert_eq!(
        st["migration"]["currentStep"], 2,
        "held by the consistency gate: {}",
        st["migration"]
    );
    let verify = Command::new(BIN)
        .args([
            "verify",
            "--pipeline",
            &format!("{ns}/orders"),
            "--window",
            "10m",
            "--settle",
            "3s",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .unwrap();
    println!(
        "$ dualwrite verify --pipeline {ns}/orders\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // Messages of step 0 went to NATS only, so the whole-window check reports them missing on
    // Kafka; a check limited to the dual-write phase is what the gate wants: re-run it with a
    // window starting after step 1 began (the first 202 that named both brokers).
    let step1_started = st["migration"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["step"] == 1)
        .map(|h| h["enteredAt"].as_str().unwrap().to_string())
        .unwrap();
    let since = chrono::DateTime::parse_from_rfc3339(&step1_started).unwrap();
    let window = (chrono::Utc::now() - since.with_timezone(&chrono::Utc)).num_seconds() - 5;
    let verify = Command::new(BIN)
        .args([
            "verify",
            "--pipeline",
            &format!("{ns}/orders"),
            "--window",
            &format!("{window}s"),
            "--settle",
            "3s",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    println!("$ dualwrite verify --window {window}s\n{report}");
    assert!(
        verify.status.success(),
        "the brokers agree on the dual-write phase: {report}{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The gates then carry the migration through steps 3 and 4.
    wait_step(&env, &ns, 3, Duration::from_secs(60)).await;
    let st = wait_step(&env, &ns, 4, Duration::from_secs(60)).await;
    assert_eq!(st["activeProviders"], serde_json::json!(["kafka"]));
    // Some messages on kafka-only before stopping the load.
    eventually(
        Duration::from_secs(30),
        "the relay writes kafka only",
        || async {
            let s: Value = reqwest::get(format!("http://127.0.0.1:{port}/stats"))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let rows = s["providers"].as_array().cloned().unwrap_or_default();
            if rows.len() == 1
                && rows[0]["name"] == "kafka"
                && rows[0]["published"].as_u64() > Some(5)
            {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        },
    )
    .await;
    stop_tx.send(true).unwrap();
    let (accepted, gave_up, refusals) = load.await.unwrap();

    let describe = kubectl_ok(&env, &["describe", "dwp", "orders", "-n", &ns], None);
    println!("$ kubectl describe dwp orders\n{describe}");
    for needle in [
        "History:",
        "shadow-kafka",
        "Promoted",
        "GatesPassed",
        "Backlog:",
        "Consistency:",
        "kafka-only",
    ] {
        assert!(describe.contains(needle), "describe lacks {needle:?}");
    }

    // Read both brokers with plain clients.
    let on_nats = nats_ids(&nats, &subject, &default_stream_name(&subject)).await;
    let on_kafka = kafka_ids(&kafka, &topic).await;
    let (nats_set, kafka_set): (HashSet<&str>, HashSet<&str>) = (
        on_nats.iter().map(String::as_str).collect(),
        on_kafka.iter().map(String::as_str).collect(),
    );
    let dup = |ids: &[String]| ids.len() - ids.iter().collect::<HashSet<_>>().len();
    let lost: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut both = 0;
    for a in &accepted {
        if a.brokers.len() == 2 {
            both += 1;
        }
        for b in &a.brokers {
            let present = if b == "nats" {
                nats_set.contains(a.id.as_str())
            } else {
                kafka_set.contains(a.id.as_str())
            };
            if !present {
                lost.lock()
                    .unwrap()
                    .push(format!("{} missing on {b}", a.id));
            }
        }
    }
    println!(
        "accepted (202): {}, of which written to both brokers: {both}; refusals retried: {}; given up: {gave_up}\n\
         present on nats: {} ({} duplicates), on kafka: {} ({} duplicates)",
        accepted.len(),
        refusals.len(),
        on_nats.len(),
        dup(&on_nats),
        on_kafka.len(),
        dup(&on_kafka)
    );
    let mut reasons: Vec<String> = refusals
        .iter()
        .map(|r| r.chars().take(160).collect())
        .collect();
    reasons.dedup();
    println!("refusal reasons (deduplicated runs): {reasons:#?}");
    let lost = lost.lock().unwrap().clone();
    assert!(
        lost.is_empty(),
        "messages answered 202 but missing: {lost:?}"
    );
    assert_eq!(dup(&on_nats), 0, "NATS holds no duplicates");
    assert_eq!(gave_up, 0, "every message was accepted in the end");
    assert!(both > 50, "the dual-write phase carried real load ({both})");
    relay.terminate();
    drop(operator);
}
