//! End to end against the real API server, the operator under the chart's RBAC only: the relay
//! StatefulSet and its companions (headless Service, PodDisruptionBudget with more than one
//! relay), relay pod failures in the pipeline's status and as Warning Events, claims of relays
//! scaled away in the status, the Deployment of an operator before StatefulSets deleted once
//! the StatefulSet's relays are Ready, and a scale-down held while the relay it removes reports
//! a backlog. There is no kubelet or controller manager here: the test writes the pod, claim
//! and StatefulSet statuses and the relay reports those would write. Memory providers only: no
//! broker is needed.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    install_crd, kube_env, kubectl, kubectl_ok, namespace, start_operator, KubeEnv,
};
use common::eventually;
use serde_json::Value;

const NAME: &str = "pods";

fn get(env: &KubeEnv, ns: &str, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-n", ns, "-o", "json"]);
    let out = kubectl(env, &args, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn ready_condition(env: &KubeEnv, ns: &str) -> (String, String, String) {
    let p = get(env, ns, &["dwp", NAME]).unwrap_or(Value::Null);
    let c = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("status"), s("reason"), s("message"))
}

/// Writes the relay container's status into pod `pod` as the kubelet would.
fn set_container_status(env: &KubeEnv, ns: &str, pod: &str, status: Value) {
    let patch = serde_json::json!({"status": {"phase": "Pending", "containerStatuses": [status]}});
    kubectl_ok(
        env,
        &[
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
}

/// Waits (at most 30 s, the promise) for Ready=False with `reason`, and a Warning Event with it.
async fn failure_shows(
    env: &KubeEnv,
    ns: &str,
    reason: &str,
    needle: &str,
    operator: &common::cluster::Proc,
) {
    let since = Instant::now();
    eventually(
        Duration::from_secs(30),
        &format!("Ready=False {reason}"),
        || async {
            let (status, r, message) = ready_condition(env, ns);
            let events = get(
                env,
                ns,
                &["events", "--field-selector", &format!("reason={reason}")],
            )
            .unwrap_or(Value::Null);
            let warned = events["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["type"] == "Warning" && e["message"].as_str().unwrap_or("").contains(needle)
                })
            });
            if status == "False" && r == reason && message.contains(needle) && warned {
                Ok(())
            } else {
                Err(format!(
                    "Ready {status} {r}: {message}; warned {warned}\noperator log:\n{}",
                    operator.log_text()
                ))
            }
        },
    )
    .await;
    println!("{reason} in status and Events after {:?}", since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_companions_pod_failures_retained_claims_and_the_old_deployment() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "relay-pods");
    let dir = tempfile::tempdir().unwrap();
    let operator = start_operator(
        &env,
        dir.path(),
        &[
            "--namespace",
            &ns,
            "--resync",
            "2s",
            "--relay-image",
            "example.org/dualwrite:e2e",
        ],
    );
    let manifest = |replicas: i32| {
        format!(
            "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {NAME}, namespace: {ns}}}\nspec:\n  providers: [{{name: a, type: memory}}]\n  relay: {{replicas: {replicas}}}\n"
        )
    };
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest(2)));

    // 1. The StatefulSet, its headless Service, the ingest Service and, with 2 relays, a budget.
    let sts = eventually(
        Duration::from_secs(60),
        "the relay StatefulSet and companions",
        || async {
            let found = (
                get(&env, &ns, &["statefulset", "pods-relay"]),
                get(&env, &ns, &["service", "pods-relay-pods"]),
                get(&env, &ns, &["service", "pods-relay"]),
                get(&env, &ns, &["pdb", "pods-relay"]),
            );
            match found {
                (Some(s), Some(h), Some(_), Some(_)) => Ok((s, h)),
                other => Err(format!(
                    "{:?}\noperator log:\n{}",
                    other.0.is_some(),
                    operator.log_text()
                )),
            }
        },
    )
    .await;
    let (sts, headless) = sts;
    assert_eq!(sts["spec"]["serviceName"], "pods-relay-pods");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "state"
    );
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let uid = get(&env, &ns, &["dwp", NAME]).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    // 2. One relay: the budget goes.
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest(1)));
    eventually(
        Duration::from_secs(30),
        "the PodDisruptionBudget is deleted",
        || async {
            match get(&env, &ns, &["pdb", "pods-relay"]) {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        },
    )
    .await;

    // 3. A relay pod whose image cannot be pulled, then one that stops on a configuration error.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pods-relay-0\n  namespace: {ns}\n  labels: {{dualwrite.io/pipeline: {NAME}, app.kubernetes.io/managed-by: dualwrite-operator}}\nspec:\n  containers: [{{name: relay, image: 'example.org/dualwrite:nope'}}]\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&pod));
    set_container_status(
        &env,
        &ns,
        "pods-relay-0",
        serde_json::json!({"name": "relay", "image": "example.org/dualwrite:nope", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"example.org/dualwrite:nope\""}}}),
    );
    failure_shows(
        &env,
        &ns,
        "RelayImagePullFailed",
        "example.org/dualwrite:nope",
        &operator,
    )
    .await;
    set_container_status(
        &env,
        &ns,
        "pods-relay-0",
        serde_json::json!({"name": "relay", "image": "example.org/dualwrite:e2e", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "ConfigError: cannot reach the Kubernetes API (in-cluster or KUBECONFIG): boom\n"}}}),
    );
    failure_shows(
        &env,
        &ns,
        "RelayConfigError",
        "pod pods-relay-0: ConfigError: cannot reach the Kubernetes API",
        &operator,
    )
    .await;
    let describe = kubectl_ok(&env, &["describe", "dwp", NAME, "-n", &ns], None);
    assert!(describe.contains("RelayConfigError"), "{describe}");

    // 4. The claim of a relay scaled away (ordinal 3 with one relay) shows in the status.
    let claim = format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: state-pods-relay-3\n  namespace: {ns}\n  labels: {{dualwrite.io/pipeline: {NAME}, app.kubernetes.io/managed-by: dualwrite-operator}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&claim));
    eventually(
        Duration::from_secs(30),
        "status.retainedClaims lists the claim",
        || async {
            let p = get(&env, &ns, &["dwp", NAME]).unwrap();
            if p["status"]["retainedClaims"] == serde_json::json!(["state-pods-relay-3"]) {
                Ok(())
            } else {
                Err(format!("{}", p["status"]))
            }
        },
    )
    .await;

    // 5. The Deployment of an older operator stays while the StatefulSet's relays are not
    //    Ready, and goes once they are.
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: pods-relay\n  namespace: {ns}\n  ownerReferences: [{{apiVersion: dualwrite.io/v1alpha1, kind: DualWritePipeline, name: {NAME}, uid: {uid}, controller: true}}]\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{old: relay}}}}\n  template:\n    metadata: {{labels: {{old: relay}}}}\n    spec: {{containers: [{{name: relay, image: old}}]}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&deployment));
    // Two reconciles later (a status change each), the Deployment is still there.
    kubectl_ok(
        &env,
        &[
            "delete",
            "pvc",
            "state-pods-relay-3",
            "-n",
            &ns,
            "--wait=false",
        ],
        None,
    );
    eventually(
        Duration::from_secs(30),
        "retainedClaims empties",
        || async {
            let p = get(&env, &ns, &["dwp", NAME]).unwrap();
            if p["status"]["retainedClaims"].is_null() {
                Ok(())
            } else {
                Err(format!("{}", p["status"]["retainedClaims"]))
            }
        },
    )
    .await;
    assert!(
        get(&env, &ns, &["deployment", "pods-relay"]).is_some(),
        "the old Deployment stays until the StatefulSet's relays are Ready"
    );
    kubectl_ok(
        &env,
        &[
            "patch",
            "statefulset",
            "pods-relay",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":1,"readyReplicas":1}}"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(30),
        "the old Deployment is deleted",
        || async {
            match get(&env, &ns, &["deployment", "pods-relay"]) {
                None => Ok(()),
                Some(d) if d["metadata"]["deletionTimestamp"].is_string() => Ok(()),
                Some(_) => Err(format!(
                    "still there\noperator log:\n{}",
                    operator.log_text()
                )),
            }
        },
    )
    .await;
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// Writes relay `pod`'s report (now, `backlog` on provider `a`) under its key of the
/// pipeline's reports ConfigMap, as the relay does, with the relay's ServiceAccount.
fn relay_reports(env: &KubeEnv, ns: &str, pipeline: &str, pod: &str, backlog: u64) {
    let report = serde_json::json!({
        "name": pod,
        "reportedAt": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "strategy": "BestEffort",
        "generation": 2,
        "providers": [
            {"name": "a", "healthy": backlog == 0, "backlog": backlog},
            {"name": "b", "healthy": true, "backlog": 0}
        ]
    });
    let patch = serde_json::json!({"data": {pod: report.to_string()}});
    kubectl_ok(
        env,
        &[
            &format!("--as=system:serviceaccount:{ns}:{pipeline}-relay"),
            "patch",
            "configmap",
            &format!("{pipeline}-relay-reports"),
            "-n",
            ns,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
}

/// `(status, reason, message)` of condition `type_` of pipeline `name`.
fn condition(env: &KubeEnv, ns: &str, name: &str, type_: &str) -> (String, String, String) {
    let p = get(env, ns, &["dwp", name]).unwrap_or(Value::Null);
    let c = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("status"), s("reason"), s("message"))
}

/// Notes of the Events of `reason` and `type_` in `ns`.
fn event_notes(env: &KubeEnv, ns: &str, type_: &str, reason: &str) -> Vec<String> {
    let events = get(
        env,
        ns,
        &[
            "events",
            "--field-selector",
            &format!("reason={reason},type={type_}"),
        ],
    )
    .unwrap_or(Value::Null);
    events["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|e| e["message"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `(spec.replicas, the hold annotation)` of the relay StatefulSet `name`.
fn statefulset_scale(env: &KubeEnv, ns: &str, name: &str) -> (i64, Option<String>) {
    let s = get(env, ns, &["statefulset", name]).unwrap_or(Value::Null);
    (
        s["spec"]["replicas"].as_i64().unwrap_or(-1),
        s["metadata"]["annotations"]["dualwrite.io/scale-down-held-since"]
            .as_str()
            .map(String::from),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_waits_until_the_removed_relay_has_replayed_its_backlog() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "relay-scale");
    let name = "drain";
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--namespace",
        ns.as_str(),
        "--resync",
        "2s",
        "--relay-image",
        "example.org/dualwrite:e2e",
    ];
    let mut operator = start_operator(&env, &dir.path().join("first"), &args);
    let manifest = |replicas: i32| {
        format!(
            "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  strategy: BestEffort\n  providers: [{{name: a, type: memory}}, {{name: b, type: memory}}]\n  relay: {{replicas: {replicas}}}\n"
        )
    };
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest(2)));
    eventually(
        Duration::from_secs(60),
        "the StatefulSet runs 2 relays",
        || async {
            match statefulset_scale(&env, &ns, "drain-relay") {
                (2, None) => Ok(()),
                other => Err(format!("{other:?}\noperator log:\n{}", operator.log_text())),
            }
        },
    )
    .await;
    // Both relays report; relay 1 holds a backlog for a provider that is down (b stays up, so
    // BestEffort still takes messages: the pipeline is draining, not Stalled). Its claim exists,
    // as the StatefulSet controller would have made it.
    relay_reports(&env, &ns, name, "drain-relay-0", 0);
    relay_reports(&env, &ns, name, "drain-relay-1", 5);
    let claim = format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: state-drain-relay-1\n  namespace: {ns}\n  labels: {{dualwrite.io/pipeline: {name}, app.kubernetes.io/managed-by: dualwrite-operator}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&claim));

    // 1. Spec 2 → 1: the StatefulSet stays at 2, Reconciling says why, a Normal Event says the
    //    hold began (the reports from before the request count as unknown), and the held
    //    relay's claim is not listed as retained (it is in use). The relays go on reporting,
    //    as they do every interval; relay 1's report after the request names its backlog.
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest(1)));
    let since = eventually(
        Duration::from_secs(30),
        "the scale-down is held with ScaleDownDraining",
        || async {
            relay_reports(&env, &ns, name, "drain-relay-1", 5);
            let (status, reason, message) = condition(&env, &ns, name, "Reconciling");
            let sts = statefulset_scale(&env, &ns, "drain-relay");
            let started = event_notes(&env, &ns, "Normal", "ScaleDownDraining");
            let p = get(&env, &ns, &["dwp", name]).unwrap_or(Value::Null);
            match (&sts, started.as_slice()) {
                ((2, Some(since)), [note])
                    if status == "True"
                        && reason == "ScaleDownDraining"
                        && message.contains("drain-relay-1 (backlog 5)")
                        && note.contains("drain-relay-1 (backlog")
                        && p["metadata"]["generation"] == p["status"]["observedGeneration"]
                        && p["status"]["retainedClaims"].is_null() =>
                {
                    Ok(since.clone())
                }
                _ => Err(format!(
                    "Reconciling {status} {reason}: {message}; StatefulSet {sts:?}; events {started:?}; status {}\noperator log:\n{}",
                    p["status"],
                    operator.log_text()
                )),
            }
        },
    )
    .await;
    // The scale subresource: spec is the desired count, status the relays that run and report.
    let scale: Value = serde_json::from_str(&kubectl_ok(
        &env,
        &[
            "get",
            "--raw",
            &format!("/apis/dualwrite.io/v1alpha1/namespaces/{ns}/dualwritepipelines/{name}/scale"),
        ],
        None,
    ))
    .unwrap();
    assert_eq!(
        (&scale["spec"]["replicas"], &scale["status"]["replicas"]),
        (&Value::from(1), &Value::from(2)),
        "{scale}"
    );

    // 2. An operator restart keeps the hold and its start, and does not announce it again.
    operator.terminate();
    let operator = start_operator(&env, &dir.path().join("second"), &args);
    eventually(
        Duration::from_secs(30),
        "the new operator holds the scale-down too",
        || async {
            if operator
                .log_text()
                .contains("scale-down held for a backlog")
            {
                Ok(())
            } else {
                Err(format!("operator log:\n{}", operator.log_text()))
            }
        },
    )
    .await;
    assert_eq!(
        statefulset_scale(&env, &ns, "drain-relay"),
        (2, Some(since))
    );
    assert_eq!(
        event_notes(&env, &ns, "Normal", "ScaleDownDraining").len(),
        1,
        "the hold's start is announced once"
    );

    // 3. The broker is back and relay 1 has replayed its backlog: the scale-down proceeds, the
    //    hold's annotation goes, and its claim is retained (reported empty: a Normal Event).
    relay_reports(&env, &ns, name, "drain-relay-1", 0);
    eventually(
        Duration::from_secs(30),
        "the StatefulSet goes to 1 relay",
        || async {
            let sts = statefulset_scale(&env, &ns, "drain-relay");
            let (_, reason, _) = condition(&env, &ns, name, "Reconciling");
            let drained = event_notes(&env, &ns, "Normal", "ScaleDownDrained");
            let retained = event_notes(&env, &ns, "Normal", "ClaimsRetained");
            let p = get(&env, &ns, &["dwp", name]).unwrap_or(Value::Null);
            if sts == (1, None)
                && reason != "ScaleDownDraining"
                && drained.len() == 1
                && retained.len() == 1
                && p["status"]["retainedClaims"] == serde_json::json!(["state-drain-relay-1"])
            {
                Ok(())
            } else {
                Err(format!(
                    "StatefulSet {sts:?}; Reconciling {reason}; drained {drained:?}; retained {retained:?}; status {}\noperator log:\n{}",
                    p["status"],
                    operator.log_text()
                ))
            }
        },
    )
    .await;
    assert!(
        event_notes(&env, &ns, "Warning", "ClaimsRetained").is_empty(),
        "an empty claim is no Warning"
    );
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
