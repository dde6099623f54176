//! End to end against the real API server: an operator at rest is quiet. Once a pipeline has
//! its objects and its status, its reconciles (a `--resync` of 2 s) make no write at all: the
//! operator's own count of API writes stands still and no object of the pipeline gets a new
//! resourceVersion over several resyncs, and those reconciles do not even build and compare the
//! owned objects again (nothing they depend on changed; a relay's report neither). Quiet does not mean blind: an owned object edited or
//! deleted by hand is put back, and a spec change reaches the status well under a second.
//! Memory providers only; the relay pod stays Pending (a nodeSelector no node has), so no
//! image is pulled and the pod's status does not change under the test.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{
    admin_client, free_port, grant_chart_rbac, install_crd, kube_env, kubectl, kubectl_ok,
    namespace, write_kubeconfig, KubeEnv, Proc, BIN,
};
use common::eventually;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::Value;

/// `dualwrite operator` with the chart's permissions, its probes on `port`.
fn start_operator_on(env: &KubeEnv, dir: &std::path::Path, ns: &str, port: u16) -> Proc {
    grant_chart_rbac(env);
    let kubeconfig = dir.join("operator.kubeconfig");
    write_kubeconfig(env, &kubeconfig, &env.operator_token, None);
    let mut cmd = Command::new(BIN);
    cmd.args(["operator", "--http-port", &port.to_string()])
        .args(["--namespace", ns, "--resync", "2s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-quiet")
        .env("RUST_LOG", "info,kube=warn");
    Proc::spawn(cmd, dir.join("operator.log"))
}

/// The operator's counters: (reconciles started, API writes).
async fn counters(port: u16) -> Result<(u64, u64), String> {
    counters3(port).await.map(|(r, w, _)| (r, w))
}

/// The operator's counters: (reconciles started, API writes, reconciles that built the owned
/// objects and compared them with the cache).
async fn counters3(port: u16) -> Result<(u64, u64, u64), String> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let read = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in /metrics:\n{body}"))
    };
    Ok((
        read("dualwrite_operator_reconciles_total ")?,
        read("dualwrite_operator_api_writes_total ")?,
        read("dualwrite_operator_owned_compares_total ")?,
    ))
}

/// kind/name → resourceVersion of the pipeline and of every object labelled with it.
async fn versions(client: &kube::Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let params = ListParams::default().labels(&format!("dualwrite.io/pipeline={name}"));
    let mut out = BTreeMap::new();
    macro_rules! kind {
        ($k:ty) => {
            for o in Api::<$k>::namespaced(client.clone(), ns)
                .list(&params)
                .await
                .unwrap()
            {
                out.insert(
                    format!("{}/{}", stringify!($k), o.name_any()),
                    o.resource_version().unwrap_or_default(),
                );
            }
        };
    }
    kind!(StatefulSet);
    kind!(Service);
    kind!(ServiceAccount);
    kind!(Role);
    kind!(RoleBinding);
    kind!(ConfigMap);
    let p = kubectl_ok(
        &kube_env().unwrap(),
        &[
            "get",
            "dwp",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
        None,
    );
    out.insert(format!("DualWritePipeline/{name}"), p);
    out
}

fn pipeline_json(env: &KubeEnv, ns: &str, name: &str) -> Value {
    let out = kubectl(env, &["get", "dwp", name, "-n", ns, "-o", "json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits for `reconciles` more reconciles; the writes and versions before and after.
async fn window(
    client: &kube::Client,
    port: u16,
    ns: &str,
    name: &str,
    reconciles: u64,
) -> (
    (u64, BTreeMap<String, String>),
    (u64, BTreeMap<String, String>),
) {
    let (r0, w0) = counters(port).await.unwrap();
    let v0 = versions(client, ns, name).await;
    eventually(
        Duration::from_secs(60),
        "the operator reconciles again (resync)",
        || async {
            match counters(port).await {
                Ok((r, _)) if r >= r0 + reconciles => Ok(()),
                other => Err(format!("{other:?}, from {r0}")),
            }
        },
    )
    .await;
    let v1 = versions(client, ns, name).await;
    let (_, w1) = counters(port).await.unwrap();
    ((w0, v0), (w1, v1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_at_rest_writes_nothing_yet_repairs_drift_and_follows_a_spec_change() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "quiet");
    let client = admin_client(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let operator = start_operator_on(&env, dir.path(), &ns, port);
    let name = "quiet";
    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  strategy: FailFast\n  providers: [{{name: a, type: memory}}, {{name: b, type: memory}}]\n  relay: {{nodeSelector: {{dualwrite.io/quiet-test: no-such-node}}}}\n"
    );
    kubectl_ok(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest),
    );
    eventually(
        Duration::from_secs(60),
        "the pipeline has its StatefulSet and a status for its generation",
        || async {
            let p = pipeline_json(&env, &ns, name);
            let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
                .get_opt(&format!("{name}-relay"))
                .await
                .map_err(|e| e.to_string())?;
            if sts.is_some()
                && p["status"]["observedGeneration"] == p["metadata"]["generation"]
                && p["status"]["conditions"].is_array()
            {
                Ok(())
            } else {
                Err(format!(
                    "status {}; log:\n{}",
                    p["status"],
                    operator.log_text()
                ))
            }
        },
    )
    .await;

    // Each object created has its Event (recorded through a recorder of its own, which keeps
    // no copy of them once published).
    eventually(
        Duration::from_secs(30),
        "a Created Event for every owned object",
        || async {
            let out = kubectl(
                &env,
                &[
                    "get",
                    "events",
                    "-n",
                    &ns,
                    "--field-selector",
                    "reason=Created",
                    "-o",
                    "jsonpath={range .items[*]}{.note}{.message}{\"\\n\"}{end}",
                ],
                None,
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let created = text.lines().filter(|l| l.ends_with(" created")).count();
            if created >= 9 {
                Ok(())
            } else {
                Err(format!("{created} Created Events: {text}"))
            }
        },
    )
    .await;

    // Settles: a window of three reconciles without a write (the pod's Pending conditions,
    // the Events of creation and the first status may take a few reconciles).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ((w0, v0), (w1, v1)) = window(&client, port, &ns, name, 3).await;
        if w0 == w1 && v0 == v1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator never came to rest: {} writes over 3 reconciles; versions before {v0:?} after {v1:?}; log:\n{}",
            w1 - w0,
            operator.log_text()
        );
    }
    // At rest: five more reconciles (at least 8 s of 2 s resyncs), not one write, not one new
    // resourceVersion; and none of them builds and compares the owned objects again (their
    // inputs are as they were when last found as wanted).
    let started = Instant::now();
    let (_, _, compares_before) = counters3(port).await.unwrap();
    let ((w0, v0), (w1, v1)) = window(&client, port, &ns, name, 5).await;
    let (_, _, compares_after) = counters3(port).await.unwrap();
    assert_eq!(
        compares_after - compares_before,
        0,
        "owned objects compared again at rest; log:\n{}",
        operator.log_text()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "resyncs, not a burst of triggers"
    );
    assert_eq!(
        w1 - w0,
        0,
        "API writes at rest; log:\n{}",
        operator.log_text()
    );
    assert_eq!(v0, v1, "objects changed at rest");
    assert!(v0.len() >= 9, "every owned object was watched: {v0:?}");

    // A relay report (a relay writes its key in the reports ConfigMap) reaches the status
    // without re-applying the owned objects, nor even comparing them again (the ConfigMap's
    // data is the relays', no input of the owned objects): a write or two (the status, perhaps
    // an Event of a condition it flips), not the dozen of a full apply.
    let (_, w0, compares0) = counters3(port).await.unwrap();
    let v0 = versions(&client, &ns, name).await;
    let report = serde_json::json!({
        "name": format!("{name}-relay-0"),
        "reportedAt": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "strategy": "FailFast",
        "generation": 1,
        "providers": [
            {"name": "a", "healthy": true, "published": 7},
            {"name": "b", "healthy": true, "published": 7},
        ],
    });
    let patch = serde_json::json!({"data": {format!("{name}-relay-0"): report.to_string()}});
    kubectl_ok(
        &env,
        &[
            "patch",
            "configmap",
            &format!("{name}-relay-reports"),
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    eventually(
        Duration::from_secs(30),
        "the report reaches the status",
        || async {
            let p = pipeline_json(&env, &ns, name);
            let relays = p["status"]["relays"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if relays
                .iter()
                .any(|r| r["name"] == format!("{name}-relay-0"))
            {
                Ok(())
            } else {
                Err(format!("status {}", p["status"]))
            }
        },
    )
    .await;
    // Whatever the report set off has finished once the operator is at rest again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ((w1, v1), (w2, v2)) = window(&client, port, &ns, name, 2).await;
        if w1 == w2 && v1 == v2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator never came to rest after a report: {} writes over 2 reconciles; log:\n{}",
            w2 - w1,
            operator.log_text()
        );
    }
    let (_, w1, compares1) = counters3(port).await.unwrap();
    let v1 = versions(&client, &ns, name).await;
    assert_eq!(
        compares1 - compares0,
        0,
        "a report made the owned objects compared again; log:\n{}",
        operator.log_text()
    );
    assert!(
        w1 - w0 <= 3,
        "{} writes for one report; log:\n{}",
        w1 - w0,
        operator.log_text()
    );
    let owned = |v: &BTreeMap<String, String>| {
        v.iter()
            .filter(|(k, _)| !k.starts_with("DualWritePipeline/") && !k.ends_with("-relay-reports"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(owned(&v0), owned(&v1), "owned objects changed for a report");

    // Drift of an owned object is put back: the Service's selector edited by hand (it would
    // send ingest nowhere), a Role deleted.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = format!("{name}-relay");
    let selector_of = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get("dualwrite.io/pipeline").cloned())
    };
    assert_eq!(
        selector_of(&services.get(&svc).await.unwrap()).as_deref(),
        Some(name)
    );
    kubectl_ok(
        &env,
        &[
            "patch",
            "service",
            &svc,
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/selector/dualwrite.io~1pipeline","value":"elsewhere"}]"#,
        ],
        None,
    );
    kubectl_ok(&env, &["delete", "role", &svc, "-n", &ns], None);
    eventually(
        Duration::from_secs(30),
        "the operator puts the Service's selector back and recreates the Role",
        || async {
            let got = selector_of(&services.get(&svc).await.map_err(|e| e.to_string())?);
            let role = Api::<Role>::namespaced(client.clone(), &ns)
                .get_opt(&svc)
                .await
                .map_err(|e| e.to_string())?;
            if got.as_deref() == Some(name) && role.is_some() {
                Ok(())
            } else {
                Err(format!(
                    "selector {got:?}, role {}; log:\n{}",
                    role.is_some(),
                    operator.log_text()
                ))
            }
        },
    )
    .await;

    // A spec change reaches the status promptly (the resync is no part of it: 2 s here).
    let changed = Instant::now();
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
            r#"{"spec":{"strategy":"BestEffort"}}"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(30),
        "the status shows the new strategy for the new generation",
        || async {
            let p = pipeline_json(&env, &ns, name);
            if p["status"]["strategy"] == "BestEffort"
                && p["status"]["observedGeneration"] == p["metadata"]["generation"]
            {
                Ok(())
            } else {
                Err(format!("status {}", p["status"]))
            }
        },
    )
    .await;
    let took = changed.elapsed();
    eprintln!("spec change → status: {took:?}");
    // Generous for a shared machine (kubectl's own start is part of it); the scale script
    // measures it precisely.
    assert!(
        took < Duration::from_secs(3),
        "spec change → status took {took:?}"
    );
    let _ = kubectl(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
