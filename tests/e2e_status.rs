//! End to end against the real API server: what a person and a GitOps tool read of a pipeline
//! whose provider is down. A relay (a local process with exactly the relay's credentials)
//! writes to a memory provider and to a NATS provider at an address where nothing listens; the
//! operator records a Warning Event `ProviderUnavailable` naming the provider, once, and, with
//! FailFast and no automatic fallback, says `Stalled=True` at once (kstatus: Failed), not after
//! the stall limit. No broker is needed (and none is stopped).

mod common;

use std::time::Duration;

use common::cluster::{
    free_port, kube_env, kubectl, kubectl_ok, operator_in_namespace, relay_kubeconfig,
    relay_statefulset, start_relay_from_pod_template, KubeEnv, OperatorInNamespace,
};
use common::{eventually, unique};
use serde_json::Value;

const NAME: &str = "down";

fn pipeline(env: &KubeEnv, ns: &str) -> Value {
    let out = kubectl(env, &["get", "dwp", NAME, "-n", ns, "-o", "json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn condition(p: &Value, type_: &str) -> (String, String) {
    let c = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("status"), s("reason"))
}

/// The Events of the pipeline with reason `reason`: (type, note, count).
fn events(env: &KubeEnv, ns: &str, reason: &str) -> Vec<(String, String, u64)> {
    let out = kubectl_ok(
        env,
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("reason={reason},involvedObject.name={NAME}"),
            "-o",
            "json",
        ],
        None,
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            // A series keeps one Event object whose count (or series.count) grows.
            let count = e["series"]["count"]
                .as_u64()
                .or(e["count"].as_u64())
                .unwrap_or(1);
            (s("type"), s("message"), count)
        })
        .collect()
}

#[tokio::test]
async fn a_provider_going_down_yields_one_warning_event_and_stalled_at_once() {
    let Some(env) = kube_env() else { return };
    let OperatorInNamespace { ns, dir, operator } =
        operator_in_namespace(&env, "status-down", "2s");
    // Nothing listens on a port just found free on the loopback: connection refused.
    let unreachable = format!("nats://127.0.0.1:{}", free_port());
    let subject = unique("status-down");
    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {NAME}, namespace: {ns}}}\nspec:\n  strategy: FailFast\n  publishTimeout: 1s\n  ingest: {{port: {}}}\n  providers:\n  - {{name: mem, type: memory}}\n  - {{name: nats, type: nats, nats: {{url: \"{unreachable}\", subject: {subject}, stream: {subject}}}}}\n",
        free_port()
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest));
    let sts = relay_statefulset(&env, &ns, NAME, &operator).await;
    let kubeconfig = relay_kubeconfig(&env, &ns, NAME, dir.path());
    let relay = start_relay_from_pod_template(&sts, &dir.path().join("relay"), &kubeconfig);

    eventually(
        Duration::from_secs(60),
        "a Warning ProviderUnavailable Event names the nats provider",
        || async {
            let got = events(&env, &ns, "ProviderUnavailable");
            match got.as_slice() {
                [(type_, note, _)]
                    if type_ == "Warning" && note.contains("provider nats is down") =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "events: {got:?}; relay log:\n{}\noperator log:\n{}",
                    relay.log_text(),
                    operator.log_text()
                )),
            }
        },
    )
    .await;

    // FailFast with no fallback refuses every message: Stalled now, not after 5 minutes.
    // (When the shared API server has a node, the StatefulSet's own pod may be unschedulable
    // there: a relay pod that cannot run is Stalled too, and Ready names it first.)
    let p = pipeline(&env, &ns);
    let (stalled, why) = condition(&p, "Stalled");
    assert!(
        stalled == "True" && ["FailFastBlocked", "RelayUnschedulable"].contains(&why.as_str()),
        "{}",
        p["status"]
    );
    assert_eq!(condition(&p, "Reconciling").0, "False", "{}", p["status"]);
    assert_eq!(condition(&p, "Ready").0, "False", "{}", p["status"]);

    // `kubectl get dwp`: READ FROM names the first provider (no migration); PUBLISHED counts
    // accepted messages (none: FailFast refuses every one while nats is down).
    let table = kubectl_ok(&env, &["get", "dwp", NAME, "-n", &ns], None);
    // Columns are cut where their headers begin (an empty cell, such as STEP here, leaves
    // only spaces).
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    let row = lines.next().unwrap_or("");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|(i, c)| *c != ' ' && (*i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .filter(|i| *i == 0 || header[..*i].ends_with("  "))
        .collect();
    let column = |name: &str| {
        let k = starts.iter().position(|s| header[*s..].starts_with(name))?;
        let end = starts
            .get(k + 1)
            .copied()
            .unwrap_or(row.len())
            .min(row.len());
        row.get(starts[k]..end).map(str::trim)
    };
    assert_eq!(column("READ FROM"), Some("mem"), "{table}");
    assert_eq!(column("PUBLISHED"), Some("0"), "{table}");
    assert_eq!(column("STRATEGY"), Some("FailFast"), "{table}");

    // A new generation (publishTimeout 1s → 2s) makes the operator reconcile and the relay
    // report again with kafka still down: no new Event (a series would grow its count).
    kubectl_ok(
        &env,
        &[
            "patch",
            "dwp",
            NAME,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"publishTimeout":"2s"}}"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(60),
        "the relay reported generation 2 and the operator aggregated it",
        || async {
            let p = pipeline(&env, &ns);
            let st = &p["status"];
            if st["observedGeneration"] == 2 && st["relays"][0]["generation"] == 2 {
                Ok(())
            } else {
                Err(format!("status: {st}"))
            }
        },
    )
    .await;
    let got = events(&env, &ns, "ProviderUnavailable");
    assert!(
        got.len() == 1 && got[0].2 == 1,
        "one Event, never repeated while nothing changed: {got:?}"
    );
    let notes: Vec<String> = got.into_iter().map(|e| e.1).collect();
    assert!(
        notes.iter().all(|n| !n.to_lowercase().contains("token")),
        "{notes:?}"
    );
}

async fn post(port: u16, id: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
        .timeout(Duration::from_secs(10))
        .json(&serde_json::json!({"source": "e2e", "data": format!("message {id}"), "id": id}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `status.published` (PUBLISHED) counts each accepted message once, not once per provider, and
/// keeps counting across a relay restart (the same pod name, a new process): 3 messages to two
/// providers read 3; after a restart and 2 more, 5, never less than 3 on the way.
#[tokio::test]
async fn published_counts_accepted_messages_once_and_survives_a_relay_restart() {
    const RESTART: &str = "restart";
    let Some(env) = kube_env() else { return };
    let OperatorInNamespace { ns, dir, operator } =
        operator_in_namespace(&env, "status-published", "2s");
    let port = free_port();
    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {RESTART}, namespace: {ns}}}\nspec:\n  strategy: FailFast\n  ingest: {{port: {port}}}\n  providers: [{{name: a, type: memory}}, {{name: b, type: memory}}]\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest));
    let sts = relay_statefulset(&env, &ns, RESTART, &operator).await;
    let kubeconfig = relay_kubeconfig(&env, &ns, RESTART, dir.path());
    let relay_dir = dir.path().join("relay");
    let status = || {
        let out = kubectl(
            &env,
            &["get", "dwp", RESTART, "-n", &ns, "-o", "json"],
            None,
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)["status"].clone()
    };
    let published_reaches = |want: u64, relay: &common::cluster::Proc| {
        let log = relay.log_text();
        let status = &status;
        async move {
            eventually(
                Duration::from_secs(60),
                &format!("status.published reaches {want}"),
                || async {
                    let st = status();
                    match st["published"].as_u64() {
                        Some(n) if n == want => Ok(st),
                        _ => Err(format!("status: {st}\nrelay log:\n{log}")),
                    }
                },
            )
            .await
        }
    };

    let mut relay = start_relay_from_pod_template(&sts, &relay_dir, &kubeconfig);
    eventually(
        Duration::from_secs(30),
        "the relay takes messages",
        || async {
            match post(port, "m-0").await {
                202 => Ok(()),
                code => Err(format!("answer {code}; log:\n{}", relay.log_text())),
            }
        },
    )
    .await;
    for i in 1..3 {
        assert_eq!(post(port, &format!("m-{i}")).await, 202);
    }
    let st = published_reaches(3, &relay).await;
    // Each provider acknowledged all 3: the rows say 3 each, PUBLISHED 3 (not 6).
    let rows = st["providers"].as_array().cloned().unwrap_or_default();
    assert!(rows.iter().all(|r| r["published"] == 3), "{st}");

    // A restart: the same pod name, a new process whose counters begin at zero.
    relay.terminate();
    drop(relay);
    let relay = start_relay_from_pod_template(&sts, &relay_dir, &kubeconfig);
    eventually(
        Duration::from_secs(30),
        "the new relay takes messages",
        || async {
            match post(port, "n-0").await {
                202 => Ok(()),
                code => Err(format!("answer {code}; log:\n{}", relay.log_text())),
            }
        },
    )
    .await;
    assert_eq!(post(port, "n-1").await, 202);
    let lowest = std::cell::Cell::new(u64::MAX);
    let st = eventually(
        Duration::from_secs(60),
        "status.published reaches 5 across the restart",
        || async {
            let st = status();
            let n = st["published"].as_u64().unwrap_or(0);
            lowest.set(lowest.get().min(n));
            if n == 5 {
                Ok(st)
            } else {
                Err(format!("status: {st}\nrelay log:\n{}", relay.log_text()))
            }
        },
    )
    .await;
    let lowest = lowest.get();
    assert!(lowest >= 3, "PUBLISHED went back to {lowest}: {st}");
    assert_eq!(st["publishedRetired"], 3, "{st}");
}
