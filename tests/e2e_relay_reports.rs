//! End to end against the real API server, the operator under the chart's RBAC only: a relay's
//! credentials cannot write what the operator decides. The relay's ServiceAccount (by
//! impersonation, exactly the Role the operator made for it) is refused every write to the
//! pipeline's status (migration step, strategy, fallback, consistency, conditions) and to any
//! object but its reports ConfigMap, the consistency verdict's ConfigMap included; a verdict it
//! writes into its reports ConfigMap is ignored; a real relay run with those credentials still
//! gets its report into the status. The consistency check's own ServiceAccount
//! (`<pipeline>-verify`) may write its verdict, which reaches `status.consistency`, and nothing
//! else. Memory providers only: no broker is needed, except for the last test, which runs
//! `dualwrite verify --pipeline` itself against NATS and Kafka under each account.

mod common;

use std::time::Duration;

use common::cluster::{
    admin_client, free_port, kube_env, kubectl, kubectl_ok, operator_in_namespace,
    relay_kubeconfig, relay_statefulset, start_relay_from_pod_template, verify_kubeconfig, KubeEnv,
    OperatorInNamespace, BIN,
};
use common::{eventually, require_env, unique};
use dualwrite::api::DualWritePipeline;
use serde_json::Value;

const NAME: &str = "steer";

/// `kubectl ARGS` as the ServiceAccount `account`: (succeeded, stderr).
fn as_account(env: &KubeEnv, ns: &str, account: &str, args: &[&str]) -> (bool, String) {
    let who = format!("--as=system:serviceaccount:{ns}:{account}");
    let mut all = vec![who.as_str(), "-n", ns];
    all.extend_from_slice(args);
    let out = kubectl(env, &all, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl ARGS` as the relay's ServiceAccount: (succeeded, stderr).
fn as_relay(env: &KubeEnv, ns: &str, args: &[&str]) -> (bool, String) {
    as_account(env, ns, &format!("{NAME}-relay"), args)
}

fn assert_forbidden(env: &KubeEnv, ns: &str, what: &str, args: &[&str]) {
    assert_forbidden_to(env, ns, &format!("{NAME}-relay"), what, args);
}

fn assert_forbidden_to(env: &KubeEnv, ns: &str, account: &str, what: &str, args: &[&str]) {
    let (ok, stderr) = as_account(env, ns, account, args);
    assert!(
        !ok && stderr.to_lowercase().contains("forbidden"),
        "{what}: the ServiceAccount {account} must be refused (403), got ok={ok}: {stderr}"
    );
}

/// A `kubectl patch --type=merge` body that puts a plausible verdict (providers `a` and `b`,
/// `seen` each, checked now) under the verdict key of a ConfigMap.
fn verdict_patch(seen: u64) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let verdict = serde_json::json!({
        "checkedAt": now,
        "seen": {"a": seen, "b": seen},
        "missing": {"a": 0, "b": 0},
        "consistent": true,
    });
    serde_json::json!({"data": {"consistency.verify": verdict.to_string()}}).to_string()
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
    let OperatorInNamespace { ns, dir, operator } =
        operator_in_namespace(&env, "relay-steer", "2s");
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
            "migration request (what kubectl dualwrite and the Argo CD actions write)",
            r#"{"status":{"migration":{"request":{"action":"PromoteFull","requestedAt":"2030-01-01T00:00:00Z"}}}}"#,
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
    let consistency = format!("{NAME}-consistency");
    eventually(
        Duration::from_secs(30),
        "the operator made the consistency ConfigMap",
        || async {
            let cm = kubectl(&env, &["get", "configmap", &consistency, "-n", &ns], None);
            if cm.status.success() {
                Ok(())
            } else {
                Err(operator.log_text())
            }
        },
    )
    .await;
    assert_forbidden(
        &env,
        &ns,
        "the consistency verdict's ConfigMap",
        &[
            "patch",
            "configmap",
            &consistency,
            "--type=merge",
            "-p",
            &verdict_patch(7),
        ],
    );
    // Its reports ConfigMap it may write, a verdict in it too: the operator must ignore that
    // (checked below, once the relay's report read from the same ConfigMap is in the status).
    let (ok, stderr) = as_relay(
        &env,
        &ns,
        &[
            "patch",
            "configmap",
            &reports,
            "--type=merge",
            "-p",
            &verdict_patch(7),
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
    // The reconcile that took the relay's report from the reports ConfigMap read the verdict
    // the relay's token forged there too, and left it out.
    let p = pipeline(&env, &ns);
    assert!(
        p["status"]["consistency"].is_null(),
        "a verdict written with a relay's token reached the status: {}",
        p["status"]["consistency"]
    );

    // 4. The consistency check's own ServiceAccount: it reads its pipeline and writes its
    //    verdict, which the operator takes into the status; nothing else.
    let verify = format!("{NAME}-verify");
    let (ok, stderr) = as_account(&env, &ns, &verify, &["get", "dwp", NAME]);
    assert!(ok, "the check reads its pipeline: {stderr}");
    let patch_status = |what: &str, patch: &str| {
        assert_forbidden_to(
            &env,
            &ns,
            &verify,
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
        )
    };
    patch_status(
        "the status' consistency",
        r#"{"status":{"consistency":{"checkedAt":"2030-01-01T00:00:00Z","consistent":true}}}"#,
    );
    patch_status(
        "the migration step",
        r#"{"status":{"migration":{"currentStep":1}}}"#,
    );
    for (what, cm) in [
        ("the relays' reports", reports.as_str()),
        ("another ConfigMap", "other"),
    ] {
        assert_forbidden_to(
            &env,
            &ns,
            &verify,
            what,
            &[
                "patch",
                "configmap",
                cm,
                "--type=merge",
                "-p",
                r#"{"data":{"x":"y"}}"#,
            ],
        );
    }
    assert_forbidden_to(
        &env,
        &ns,
        &verify,
        "the spec",
        &[
            "patch",
            "dwp",
            NAME,
            "--type=merge",
            "-p",
            r#"{"spec":{"migration":{"targetStep":1}}}"#,
        ],
    );
    assert_forbidden_to(&env, &ns, &verify, "a Secret", &["get", "secrets"]);
    let (ok, stderr) = as_account(
        &env,
        &ns,
        &verify,
        &[
            "patch",
            "configmap",
            &consistency,
            "--type=merge",
            "-p",
            &verdict_patch(11),
        ],
    );
    assert!(ok, "the check may write its verdict: {stderr}");
    eventually(
        Duration::from_secs(30),
        "the check's verdict reaches status.consistency",
        || async {
            let st = pipeline(&env, &ns)["status"].clone();
            let c = &st["consistency"];
            if c["consistent"] == true && c["seen"]["a"] == 11 && c["seen"]["b"] == 11 {
                Ok(())
            } else {
                Err(format!(
                    "status {st}\noperator log:\n{}",
                    operator.log_text()
                ))
            }
        },
    )
    .await;
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// `dualwrite verify` as the Job the README shows runs it (its arguments from
/// `resources::verify_job`), with the kubeconfig `kubeconfig`: (exit code, stdout, stderr).
fn run_verify(
    p: &DualWritePipeline,
    kubeconfig: &std::path::Path,
) -> (Option<i32>, String, String) {
    let job = dualwrite::controller::resources::verify_job(p, "unused", "verify-e2e");
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name, Some(format!("{CHECKED}-verify")));
    let mut args = pod.containers[0].args.clone().unwrap();
    args.extend(["--settle".into(), "0s".into()]);
    let out = std::process::Command::new(BIN)
        .args(&args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CHECKED: &str = "checked";

/// `dualwrite verify --pipeline`, run as its Job runs it but under each account: under the
/// relay's ServiceAccount it cannot hand its verdict to the operator; under the check's own
/// (`<pipeline>-verify`) it reads the pipeline, writes the verdict, and the verdict reaches
/// `status.consistency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dualwrite_verify_records_its_verdict_only_under_its_own_account() {
    let Some(env) = kube_env() else { return };
    let Some(nats) = require_env("NATS_URL") else {
        return;
    };
    let Some(kafka) = require_env("KAFKA_BROKERS") else {
        return;
    };
    let OperatorInNamespace { ns, dir, operator } =
        operator_in_namespace(&env, "verify-account", "2s");
    let port = free_port();
    let subject = unique("verify").replace('-', "_");
    let topic = unique("verify");
    let manifest = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {CHECKED}, namespace: {ns}}}\nspec:\n  ingest: {{port: {port}}}\n  providers:\n  - {{name: nats, type: nats, nats: {{url: \"{nats}\", subject: {subject}}}}}\n  - {{name: kafka, type: kafka, kafka: {{brokers: [\"{}\"], topic: {topic}}}}}\n",
        kafka.split(',').next().unwrap()
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&manifest));
    let sts = relay_statefulset(&env, &ns, CHECKED, &operator).await;
    let relay = start_relay_from_pod_template(
        &sts,
        &dir.path().join("relay"),
        &relay_kubeconfig(&env, &ns, CHECKED, dir.path()),
    );
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(60),
        "the relay accepts a message",
        || async {
            let r = http
                .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
                .json(&serde_json::json!({"id": "v-1", "source": "e2e", "data": "one"}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() == 202 {
                Ok(())
            } else {
                Err(format!(
                    "{}: {}\nrelay log:\n{}",
                    r.status(),
                    r.text().await.unwrap_or_default(),
                    relay.log_text()
                ))
            }
        },
    )
    .await;
    // The check reads messages stamped (in whole seconds) before the second it starts in.
    let accepted_in = chrono::Utc::now().timestamp();
    eventually(
        Duration::from_secs(5),
        "a second has begun since the message was accepted",
        || async {
            if chrono::Utc::now().timestamp() > accepted_in {
                Ok(())
            } else {
                Err("same second")
            }
        },
    )
    .await;
    let pipelines: kube::Api<DualWritePipeline> =
        kube::Api::namespaced(admin_client(&env).await, &ns);
    let p = pipelines.get(CHECKED).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the operator made the check's account and ConfigMap",
        || async {
            let cm = kubectl(
                &env,
                &[
                    "get",
                    "configmap",
                    &format!("{CHECKED}-consistency"),
                    "-n",
                    &ns,
                ],
                None,
            );
            let rb = kubectl(
                &env,
                &[
                    "get",
                    "rolebinding",
                    &format!("{CHECKED}-verify"),
                    "-n",
                    &ns,
                ],
                None,
            );
            if cm.status.success() && rb.status.success() {
                Ok(())
            } else {
                Err(operator.log_text())
            }
        },
    )
    .await;

    // Under the relay's credentials: the check runs, but its verdict cannot be recorded.
    let (code, stdout, stderr) = run_verify(&p, &dir.path().join("relay.kubeconfig"));
    assert!(
        code != Some(0)
            && stderr.contains("cannot hand the verdict")
            && stderr.to_lowercase().contains("forbidden"),
        "a relay's token must not record a verdict: exit {code:?}\n{stdout}\n{stderr}"
    );
    assert!(pipeline_in(&env, &ns, CHECKED)["status"]["consistency"].is_null());

    // Under its own account: recorded, and the operator takes it into the status.
    let (code, stdout, stderr) = run_verify(&p, &verify_kubeconfig(&env, &ns, CHECKED, dir.path()));
    assert_eq!(
        code,
        Some(0),
        "the brokers agree and the verdict is recorded:\n{stdout}\n{stderr}"
    );
    eventually(
        Duration::from_secs(30),
        "the verdict of dualwrite verify reaches status.consistency",
        || async {
            let st = pipeline_in(&env, &ns, CHECKED)["status"].clone();
            let c = &st["consistency"];
            if c["consistent"] == true && c["seen"]["nats"] == 1 && c["seen"]["kafka"] == 1 {
                Ok(())
            } else {
                Err(format!(
                    "status {st}\noperator log:\n{}",
                    operator.log_text()
                ))
            }
        },
    )
    .await;
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

fn pipeline_in(env: &KubeEnv, ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl_ok(
        env,
        &["get", "dwp", name, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap()
}
