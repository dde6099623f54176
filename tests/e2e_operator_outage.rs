//! End to end: the operator under the chart's RBAC only, a real API server, real NATS and Kafka,
//! and the relay run as a local process exactly as the StatefulSet's pod template says (there is
//! no kubelet here). Stops and starts Kafka, so it runs in the serial outage step.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::cluster::{
    admin_client, free_port, install_crd, kube_env, kubectl, kubectl_ok, namespace,
    relay_kubeconfig, relay_statefulset, start_operator, start_relay_from_pod_template, KubeEnv,
};
use common::{eventually, outage_tests_enabled, require_env, unique, StoppedService};
use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::Value;

/// A BestEffort pipeline over NATS and Kafka.
fn pipeline_manifest(
    ns: &str,
    name: &str,
    port: u16,
    nats: &str,
    kafka: &str,
    subject: &str,
    topic: &str,
) -> String {
    format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  strategy: BestEffort\n  publishTimeout: 2s\n  ingest: {{port: {port}}}\n  relay: {{replicas: 1}}\n  providers:\n  - name: nats\n    type: nats\n    nats: {{url: \"{nats}\", subject: {subject}}}\n  - name: kafka\n    type: kafka\n    kafka: {{brokers: [\"{kafka}\"], topic: {topic}}}\n"
    )
}

async fn status(env: &KubeEnv, ns: &str, name: &str) -> Value {
    let out = kubectl_ok(env, &["get", "dwp", name, "-n", ns, "-o", "json"], None);
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

fn condition(status: &Value, type_: &str) -> String {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn provider_row<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["providers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .unwrap_or(&Value::Null)
}

async fn post(port: u16, id: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
        .timeout(Duration::from_secs(10))
        .json(&serde_json::json!({"source": "e2e", "data": format!("message {id}"), "id": id}))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_reports_status_and_follows_strategy_changes() {
    if !outage_tests_enabled() {
        return;
    }
    let Some(env) = kube_env() else { return };
    let (Some(nats), Some(kafka)) = (require_env("NATS_URL"), require_env("KAFKA_BROKERS")) else {
        return;
    };
    install_crd(&env);
    let ns = namespace(&env, "e2e");
    let dir = tempfile::tempdir().unwrap();

    // The operator, with only the chart's permissions.
    let operator = start_operator(
        &env,
        dir.path(),
        &[
            "--resync",
            "2s",
            "--stale-after",
            "20s",
            "--relay-image",
            "example.org/dualwrite:e2e",
        ],
    );

    let name = "orders";
    let port = free_port();
    let (subject, topic) = (unique("e2e.orders").replace('-', "_"), unique("e2e-orders"));
    kubectl_ok(
        &env,
        &["apply", "-f", "-"],
        Some(&pipeline_manifest(
            &ns, name, port, &nats, &kafka, &subject, &topic,
        )),
    );

    // 1. Owned objects appear with owner references, args and ports.
    let d = relay_statefulset(&env, &ns, name, &operator).await;
    let statefulsets: kube::Api<StatefulSet> = kube::Api::namespaced(admin_client(&env).await, &ns);
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("DualWritePipeline", name, Some(true))
    );
    let c = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        c.args.as_ref().unwrap(),
        &[
            "relay".to_string(),
            "--pipeline".into(),
            format!("{ns}/{name}")
        ]
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, i32::from(port));
    assert_eq!(c.image.as_deref(), Some("example.org/dualwrite:e2e"));
    for kind in ["service", "serviceaccount", "role", "rolebinding"] {
        let obj: Value = serde_json::from_str(&kubectl_ok(
            &env,
            &["get", kind, "orders-relay", "-n", &ns, "-o", "json"],
            None,
        ))
        .unwrap();
        assert_eq!(
            obj["metadata"]["ownerReferences"][0]["name"], name,
            "{kind} owner"
        );
    }
    let svc: Value = serde_json::from_str(&kubectl_ok(
        &env,
        &["get", "service", "orders-relay", "-n", &ns, "-o", "json"],
        None,
    ))
    .unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], port);

    // A report of a relay gone for long (here: one hour old, written as a relay would, under its
    // own field manager) is pruned by the operator, and never counts toward health or backlog.
    let gone = serde_json::json!({
        "apiVersion": "dualwrite.io/v1alpha1",
        "kind": "DualWritePipeline",
        "status": {"relays": [{
            "name": "gone-relay",
            "reportedAt": (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "strategy": "BestEffort",
            "providers": [{"name": "kafka", "healthy": false, "backlog": 99}]
        }]}
    });
    kubectl_ok(
        &env,
        &[
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=dualwrite-relay-gone",
            "-f",
            "-",
        ],
        Some(&format!(
            "{}\n",
            serde_json::to_string(&{
                let mut g = gone.clone();
                g["metadata"] = serde_json::json!({"name": name, "namespace": ns});
                g
            })
            .unwrap()
        )),
    );
    eventually(
        Duration::from_secs(30),
        "the operator prunes the report of a relay gone for long",
        || async {
            let st = status(&env, &ns, name).await;
            let names: Vec<String> = st["relays"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|x| x["name"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            if names.iter().any(|n| n == "gone-relay") {
                Err(format!("relays: {names:?}"))
            } else if !operator
                .log_text()
                .contains("removed reports of relays gone for long")
            {
                // Proves the entry was written and then pruned, not never written.
                Err("the operator has not logged the pruning yet".to_string())
            } else if st["backlog"] != 0 {
                Err(format!("backlog {}", st["backlog"]))
            } else {
                Ok(())
            }
        },
    )
    .await;

    // Changing the spec updates the owned objects.
    kubectl_ok(
        &env,
        &[
            "patch",
            "dwp",
            name,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"relay":{"replicas":2}}}"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(30),
        "the StatefulSet follows spec.relay.replicas",
        || async {
            let d = statefulsets
                .get("orders-relay")
                .await
                .map_err(|e| e.to_string())?;
            let r = d.spec.unwrap().replicas;
            if r == Some(2) {
                Ok(())
            } else {
                Err(format!("replicas {r:?}"))
            }
        },
    )
    .await;
    kubectl_ok(
        &env,
        &[
            "patch",
            "dwp",
            name,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"relay":{"replicas":1}}}"#,
        ],
        None,
    );

    // 2. The relay, as the pod template says, under its own ServiceAccount's Role.
    let relay_kubeconfig = relay_kubeconfig(&env, &ns, "orders", dir.path());
    let d = statefulsets.get("orders-relay").await.unwrap();
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

    const N: u64 = 20;
    for i in 0..N {
        let (code, body) = post(port, &format!("m-{i}")).await;
        assert_eq!(code, 202, "{body}");
    }
    let st = eventually(
        Duration::from_secs(60),
        "status counts every message on both brokers, Ready=True",
        || async {
            let st = status(&env, &ns, name).await;
            let ok = provider_row(&st, "nats")["published"] == N
                && provider_row(&st, "kafka")["published"] == N
                && condition(&st, "Ready") == "True";
            if ok {
                Ok(st)
            } else {
                Err(format!("status: {st}\nrelay log:\n{}", relay.log_text()))
            }
        },
    )
    .await;
    // PUBLISHED counts messages the pipeline accepted, once each (not once per provider).
    assert_eq!(st["published"], N);
    assert_eq!(st["replicas"], 1);
    let get = kubectl_ok(&env, &["get", "dwp", name, "-n", &ns], None);
    println!("$ kubectl get dwp\n{get}");
    assert!(get.contains(&format!("nats={N} kafka={N}")), "{get}");
    assert!(get.contains("BestEffort") && get.contains("True"), "{get}");
    let describe = kubectl_ok(&env, &["describe", "dwp", name, "-n", &ns], None);
    println!("$ kubectl describe dwp\n{describe}");
    for needle in [
        "Conditions:",
        "Ready",
        "Degraded",
        "Reconciling",
        "Stalled",
        "Published:",
        "e2e-relay-0",
    ] {
        assert!(
            describe.contains(needle),
            "describe lacks {needle:?}:\n{describe}"
        );
    }

    // 3. Kafka stops: the row turns unhealthy and Degraded=True; BestEffort keeps answering 202.
    let kafka_down = StoppedService::stop("kafka").await;
    let mut i = N;
    let (env_ref, ns_ref) = (&env, &ns);
    let st = eventually(
        Duration::from_secs(60),
        "kafka marked down and Degraded=True",
        || {
            i += 1;
            let id = format!("m-{i}");
            let (env, ns) = (env_ref, ns_ref);
            async move {
                let (code, body) = post(port, &id).await;
                if code != 202 {
                    return Err(format!("best-effort answered {code}: {body}"));
                }
                let st = status(env, ns, name).await;
                if provider_row(&st, "kafka")["ready"] == "False"
                    && condition(&st, "Degraded") == "True"
                {
                    Ok(st)
                } else {
                    Err(format!("status: {st}"))
                }
            }
        },
    )
    .await;
    println!("kafka down: {}", provider_row(&st, "kafka"));

    // Patching spec.strategy with kubectl switches the relay to FailFast: 503 naming kafka.
    kubectl_ok(
        &env,
        &[
            "patch",
            "dwp",
            name,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"strategy":"FailFast"}}"#,
        ],
        None,
    );
    let attempt = AtomicU32::new(0);
    let body = eventually(
        Duration::from_secs(30),
        "fail-fast answers 503 naming kafka",
        || async {
            // A fresh id per attempt: an attempt answered 202 before the relay switched would
            // make every retry of its id a duplicate (202), never the 503 awaited here.
            let id = format!("ff-1-{}", attempt.fetch_add(1, Ordering::Relaxed));
            let (code, body) = post(port, &id).await;
            if code == 503 {
                Ok(body)
            } else {
                Err(format!("{code}: {body}"))
            }
        },
    )
    .await;
    assert_eq!(
        body["failedProviders"],
        serde_json::json!(["kafka"]),
        "{body}"
    );
    let events = kubectl_ok(&env, &["get", "events", "-n", &ns, "-o", "json"], None);
    assert!(
        events.contains("StrategyChanged") && events.contains("BestEffort → FailFast"),
        "{events}"
    );

    // 4. Kafka returns: the same relay publishes again and the pipeline is Ready again.
    kafka_down.start().await;
    eventually(
        Duration::from_secs(90),
        "fail-fast accepts again after kafka returned",
        || async {
            let (code, body) = post(port, "ff-2").await;
            if code == 202 {
                Ok(())
            } else {
                Err(format!("{code}: {body}"))
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "Ready=True and Degraded=False again",
        || async {
            let st = status(&env, &ns, name).await;
            if condition(&st, "Ready") == "True"
                && condition(&st, "Degraded") == "False"
                && st["strategy"] == "FailFast"
            {
                Ok(())
            } else {
                Err(format!("status: {st}"))
            }
        },
    )
    .await;

    relay.terminate();
    assert!(
        relay.log_text().contains("closing providers"),
        "graceful stop:\n{}",
        relay.log_text()
    );
    drop(operator);
    let _ = kubectl(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
