//! A relay restarted while the Kubernetes API server is unreachable starts from the last
//! pipeline it saw (kept in its state directory), keeps serving, and reports once the API
//! answers again. Stops the shared API server: runs with the other outage tests, one at a time.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{free_port, install_crd, kube_env, kubectl_ok, namespace, Proc, BIN};
use common::{eventually, outage_tests_enabled, StoppedService};

fn start_relay(kubeconfig: &str, pipeline: &str, port: u16, state: &std::path::Path) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "relay",
        "--pipeline",
        pipeline,
        "--pod-name",
        "api-outage-0",
    ])
    .arg("--state-dir")
    .arg(state)
    .env("KUBECONFIG", kubeconfig)
    .env("API_PORT", port.to_string())
    .env("API_BIND", "127.0.0.1")
    .env("REPORT_INTERVAL", "1s")
    .env("RUST_LOG", "info");
    Proc::spawn(
        cmd,
        state.with_extension(format!("{}.log", common::unique("relay"))),
    )
}

async fn http(port: u16, method: &str, path: &str, body: &str) -> Result<u16, String> {
    let c = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}{path}");
    let req = if method == "POST" {
        c.post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
    } else {
        c.get(url)
    };
    req.timeout(Duration::from_secs(2))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// The time of this relay's report in the pipeline's reports ConfigMap, if any (no operator
/// runs here to copy it into the status).
fn reported_at(kubeconfig: &str, ns: &str) -> Option<String> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args([
            "get",
            "configmap",
            "api-outage-relay-reports",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.api-outage-0}",
        ])
        .output()
        .ok()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let t = report["reportedAt"].as_str()?.to_string();
    out.status.success().then_some(t)
}

#[tokio::test]
async fn a_relay_restarted_without_the_api_server_runs_its_last_pipeline() {
    if !outage_tests_enabled() {
        return;
    }
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "api-outage");
    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: api-outage, namespace: {ns}}}\nspec:\n  strategy: FailFast\n  providers:\n  - {{name: a, type: memory}}\n  - {{name: b, type: memory}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest));
    // The reports ConfigMap the operator would create (no operator runs here).
    kubectl_ok(
        &env,
        &["create", "configmap", "api-outage-relay-reports", "-n", &ns],
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let pipeline = format!("{ns}/api-outage");

    // First start, API server up: the relay serves and reports.
    let port = free_port();
    let mut relay = start_relay(&env.kubeconfig, &pipeline, port, &state);
    eventually(Duration::from_secs(30), "the relay reports", || async {
        reported_at(&env.kubeconfig, &ns).ok_or("no report yet")
    })
    .await;
    relay.terminate();

    // Restart while the API server is down: it starts from the kept pipeline and serves.
    let kube = StoppedService::stop("kube").await;
    let port = free_port();
    let mut relay = start_relay(&env.kubeconfig, &pipeline, port, &state);
    eventually(
        Duration::from_secs(30),
        "the relay answers /health",
        || async {
            match http(port, "GET", "/health", "").await {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}; log:\n{}", relay.log_text())),
            }
        },
    )
    .await;
    let status = http(
        port,
        "POST",
        "/api/v1/ingest",
        r#"{"source":"api-outage","data":"accepted while the API server is down"}"#,
    )
    .await;
    assert_eq!(status, Ok(202), "log:\n{}", relay.log_text());
    assert!(
        relay
            .log_text()
            .contains("starting from the pipeline kept in the state directory"),
        "{}",
        relay.log_text()
    );
    let before = reported_at(&env.kubeconfig, &ns);
    assert!(before.is_none(), "the API server should be down");

    // The API server returns: the relay's report resumes, newer than the one before the outage.
    kube.start().await;
    let first = eventually(
        Duration::from_secs(60),
        "a report after the outage",
        || async { reported_at(&env.kubeconfig, &ns).ok_or("no report yet") },
    )
    .await;
    eventually(Duration::from_secs(60), "a fresh report", || async {
        match reported_at(&env.kubeconfig, &ns) {
            Some(t) if t != first => Ok(()),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
    relay.terminate();
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
