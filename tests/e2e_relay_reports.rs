//! End to end against the real API server, the operator under the chart's RBAC only: a relay's
//! credentials cannot write what the operator decides. The relay's ServiceAccount (by
//! impersonation, exactly the Role the operator made for it) is refused every write to the
//! pipeline's status (migration step, strategy, fallback, consistency, conditions) and to any
//! object but its reports ConfigMap; a real relay run with those credentials still gets its
//! report into the status. Memory providers only: no broker is needed.

mod common;

use std::time::Duration;

use common::cluster::{
    free_port, install_crd, kube_env, kubectl, kubectl_ok, namespace, relay_kubeconfig,
    relay_statefulset, start_operator, start_relay_from_pod_template, KubeEnv,
};
use common::eventually;
use serde_json::Value;

const NAME: &str = "steer";

/// `kubectl ARGS` as the relay's ServiceAccount: (succeeded, stderr).
fn as_relay(env: &KubeEnv, ns: &str, args: &[&str]) -> (bool, String) {
    let who = format!("--as=system:serviceaccount:{ns}:{NAME}-relay");
    let mut all = vec![who.as_str(), "-n", ns];
    all.extend_from_slice(args);
    let out = kubectl(env, &all, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_forbidden(env: &KubeEnv, ns: &str, what: &str, args: &[&str]) {
    let (ok, stderr) = as_relay(env, ns, args);
    assert!(
        !ok && stderr.to_lowercase().contains("forbidden"),
        "{what}: the relay's ServiceAccount must be refused (403), got ok={ok}: {stderr}"
    );
}

fn pipeline(env: &KubeEnv, ns: &str) -> Value {
    serde_json::from_str(&kubectl_ok(
        env,
        &["get", "dwp", NAME, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_token_cannot_steer_the_migration_but_its_report_arrives() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "relay-steer");
    let dir = tempfile::tempdir().unwrap();
    let operator = start_operator(
        &env,
        &dir.path().join("operator"),
        &[
            "--namespace",
            &ns,
            "--resync",
            "2s",
            "--relay-image",
            "example.org/dualwrite:e2e",
        ],
    );
    let port = free_port();
    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {NAME}, namespace: {ns}}}\nspec:\n  ingest: {{port: {port}}}\n  providers: [{{name: a, type: memory}}, {{name: b, type: memory}}]\n  migration:\n    steps:\n    - {{name: both, strategy: FailFast, gates: {{manual: true}}}}\n    - {{name: b-only, strategy: BestEffort, providers: [b], readFrom: b}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest));
    let sts = relay_statefulset(&env, &ns, NAME, &operator).await;
    let reports = format!("{NAME}-relay-reports");
    eventually(
        Duration::from_secs(30),
        "the operator made the reports ConfigMap and decided step 0",
        || async {
            let cm = kubectl(&env, &["get", "configmap", &reports, "-n", &ns], None);
            let p = pipeline(&env, &ns);
            if cm.status.success() && p["status"]["migration"]["currentStep"] == 0 {
                Ok(())
            } else {
                Err(format!(
                    "status {}\noperator log:\n{}",
                    p["status"],
                    operator.log_text()
                ))
            }
        },
    )
    .await;

    // 1. Every write to the status, with each kind of patch a client could try: 403.
    let forged = [
        (
            "migration step",
            r#"{"status":{"migration":{"currentStep":1,"stepName":"b-only","reason":"GatesPassed","stepStartedAt":"2030-01-01T00:00:00Z"}}}"#,
        ),
        (
            "strategy and providers",
            r#"{"status":{"strategy":"BestEffort","activeProviders":["b"]}}"#,
        ),
        (
            "fallback",
            r#"{"status":{"fallback":{"active":true,"reason":"forged"}}}"#,
        ),
        (
            "consistency verdict",
            r#"{"status":{"consistency":{"checkedAt":"2030-01-01T00:00:00Z","consistent":true}}}"#,
        ),
        (
            "conditions",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Forged","message":"","lastTransitionTime":"2030-01-01T00:00:00Z"}]}}"#,
        ),
        (
            "its own report, in the status",
            r#"{"status":{"relays":[{"name":"x","reportedAt":"2030-01-01T00:00:00Z","strategy":"FailFast"}]}}"#,
        ),
    ];
    for (what, patch) in forged {
        assert_forbidden(
            &env,
            &ns,
            what,
            &[
                "patch",
                "dwp",
                NAME,
                "--subresource=status",
                "--type=merge",
                "-p",
                patch,
            ],
        );
    }
    assert_forbidden(
        &env,
        &ns,
        "the spec (targetStep)",
        &[
            "patch",
            "dwp",
            NAME,
            "--type=merge",
            "-p",
            r#"{"spec":{"migration":{"targetStep":1}}}"#,
        ],
    );
    // 2. Objects other than its reports ConfigMap.
    let other_cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {a: b}\n";
    kubectl_ok(&env, &["apply", "-n", &ns, "-f", "-"], Some(other_cm));
    assert_forbidden(
        &env,
        &ns,
        "another ConfigMap",
        &[
            "patch",
            "configmap",
            "other",
            "--type=merge",
            "-p",
            r#"{"data":{"a":"c"}}"#,
        ],
    );
    assert_forbidden(
        &env,
        &ns,
        "creating a ConfigMap",
        &["create", "configmap", "mine"],
    );
    assert_forbidden(
        &env,
        &ns,
        "deleting its reports",
        &["delete", "configmap", &reports],
    );
    assert_forbidden(
        &env,
        &ns,
        "its StatefulSet",
        &[
            "patch",
            "statefulset",
            &format!("{NAME}-relay"),
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    );
    assert_forbidden(
        &env,
        &ns,
        "its Role",
        &[
            "patch",
            "role",
            &format!("{NAME}-relay"),
            "--type=merge",
            "-p",
            r#"{"rules":[]}"#,
        ],
    );
    let (ok, stderr) = as_relay(
        &env,
        &ns,
        &[
            "patch",
            "configmap",
            &reports,
            "--type=merge",
            "-p",
            r#"{"data":{}}"#,
        ],
    );
    assert!(ok, "the relay may patch its reports ConfigMap: {stderr}");

    // Nothing the relay tried moved the operator's decisions.
    let p = pipeline(&env, &ns);
    assert_eq!(
        p["status"]["migration"]["currentStep"], 0,
        "{}",
        p["status"]
    );
    assert_eq!(p["status"]["strategy"], "FailFast", "{}", p["status"]);
    assert!(p["status"]["consistency"].is_null(), "{}", p["status"]);

    // 3. A real relay, run with exactly the relay's credentials, reports; the operator copies
    //    the report into the status and the rows say the providers are up.
    let kubeconfig = relay_kubeconfig(&env, &ns, NAME, dir.path());
    let relay = start_relay_from_pod_template(&sts, &dir.path().join("relay"), &kubeconfig);
    eventually(
        Duration::from_secs(30),
        "the relay's report reaches the status",
        || async {
            let p = pipeline(&env, &ns);
            let st = &p["status"];
            let reported = st["relays"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["name"] == "e2e-relay-0"));
            let rows_up = st["providers"]
                .as_array()
                .is_some_and(|rows| rows.iter().all(|r| r["ready"] == "True"));
            if reported && rows_up {
                Ok(())
            } else {
                Err(format!(
                    "status {st}\nrelay log:\n{}\noperator log:\n{}",
                    relay.log_text(),
                    operator.log_text()
                ))
            }
        },
    )
    .await;
    assert!(
        !relay.log_text().contains("could not report"),
        "{}",
        relay.log_text()
    );
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
