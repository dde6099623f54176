//! End to end against the real API server: the example migration (`examples/`) driven with
//! only `kubectl dualwrite` verbs, the real plugin binary run as a person bound to the chart's
//! `…-migration-operator` ClusterRole and nothing else, the operator running beside it as the
//! other `e2e_*` tests run it (under the chart's RBAC). Promote passes a step's gates once and
//! a manual gate; pause and rollback hold the step; resume lifts the hold; abort goes back to
//! the first step; the spec pins win with a message naming the field; a person without the
//! role gets a 403 that names what is missing; `verify` is a request the operator turns into the
//! check's Job (the person may not create Jobs), also while the spec pins the migration.
//! No relay runs (the step machine does not need one to act on requests), so no broker is
//! needed either.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::{
    admin_token, enforced_zero_quota, install_crd, kube_env, kubectl_ok, namespace,
    operator_in_namespace, write_kubeconfig, KubeEnv, OperatorInNamespace, Proc, REPO,
};
use common::eventually;
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-dualwrite");
const NAME: &str = "orders";

/// The example migration, in namespace `ns`.
fn example(ns: &str) -> String {
    let text =
        std::fs::read_to_string(format!("{REPO}/examples/nats-to-kafka-migration.yaml")).unwrap();
    let mut v: Value = serde_yaml::from_str(&text).unwrap();
    v["metadata"]["namespace"] = Value::String(ns.into());
    serde_json::to_string(&v).unwrap()
}

fn pipeline(env: &KubeEnv, ns: &str) -> Value {
    serde_json::from_str(&kubectl_ok(
        env,
        &["get", "dwp", NAME, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap()
}

/// `kubectl dualwrite ARGS` with `kubeconfig`: (exit code, stdout, stderr).
fn plugin(kubeconfig: &Path, ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PLUGIN)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("the plugin runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The verb must succeed; returns its stdout.
fn plugin_ok(kubeconfig: &Path, ns: &str, args: &[&str], operator: &Proc) -> String {
    let (code, out, err) = plugin(kubeconfig, ns, args);
    assert_eq!(
        code,
        0,
        "kubectl dualwrite {args:?}: {out}{err}\noperator log:\n{}",
        operator.log_text()
    );
    out
}

fn migration(env: &KubeEnv, ns: &str) -> Value {
    pipeline(env, ns)["status"]["migration"].clone()
}

/// The request is removed once acted on (a JSON patch after the status apply).
async fn request_removed(env: &KubeEnv, ns: &str) {
    eventually(
        Duration::from_secs(20),
        "the request was removed",
        || async {
            let m = migration(env, ns);
            if m.get("request").is_none() {
                Ok(())
            } else {
                Err(format!("{m}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_migration_driven_with_kubectl_dualwrite_only() {
    let Some(env) = kube_env() else { return };
    // A resync far beyond the test: a request is noticed through the watch on the pipeline
    // (a status change), not by a periodic reconcile.
    let OperatorInNamespace { ns, dir, operator } = operator_in_namespace(&env, "verbs", "10m");
    // A person bound (in this namespace) to the chart's role for migration operators only.
    kubectl_ok(
        &env,
        &[
            "create",
            "rolebinding",
            "alice-migrates",
            "-n",
            &ns,
            "--clusterrole=dw-dualwrite-operator-migration-operator",
            "--user=alice",
        ],
        None,
    );
    let alice = dir.path().join("alice.kubeconfig");
    write_kubeconfig(&env, &alice, &admin_token(&env), Some("alice"));
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&example(&ns)));
    eventually(
        Duration::from_secs(30),
        "the operator started the migration at step 0 and judged its gates",
        || async {
            let m = migration(&env, &ns);
            if m["currentStep"] == 0 && m["reason"] == "MinDurationNotReached" {
                Ok(())
            } else {
                Err(format!("{m}\noperator log:\n{}", operator.log_text()))
            }
        },
    )
    .await;

    // status: the steps, their gates, what the current one waits for.
    let out = plugin_ok(&alice, &ns, &["status", NAME], &operator);
    for want in [
        "Migration:  step 0 (nats-only)",
        "->0    nats-only",
        "read-kafka",
        "manual, minDuration 24h",
        "Waiting for: MinDurationNotReached",
        "Providers:",
        "Consistency: no check has run",
    ] {
        assert!(out.contains(want), "status lacks {want:?}:\n{out}");
    }

    // promote: step 0's gates (minDuration 1m, not reached) are passed once.
    let out = plugin_ok(&alice, &ns, &["promote", NAME], &operator);
    assert!(
        out.contains(
            "promoted by request of alice from step 0 (nats-only) to step 1 (shadow-kafka)"
        ),
        "{out}"
    );
    let m = migration(&env, &ns);
    assert_eq!(m["currentStep"], 1, "{m}");
    let last = m["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["reason"], &last["requestedBy"]),
        (&Value::from("Promoted"), &Value::from("alice")),
        "{m}"
    );
    request_removed(&env, &ns).await;
    assert_eq!(
        pipeline(&env, &ns)["spec"]["migration"].get("targetStep"),
        None,
        "the spec is untouched: nothing pins the migration"
    );
    let events = kubectl_ok(
        &env,
        &[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=Promoted",
            "-o",
            "json",
        ],
        None,
    );
    assert!(
        events.contains("requested by alice"),
        "no Promoted Event: {events}"
    );

    // The operator's status apply never owns the request (so it can never clobber one).
    let managed: Value = serde_json::from_str(&kubectl_ok(
        &env,
        &[
            "get",
            "dwp",
            NAME,
            "-n",
            &ns,
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    ))
    .unwrap();
    let managed = managed["metadata"]["managedFields"].clone();
    let operator_status = managed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["manager"] == "dualwrite-operator" && f["subresource"] == "status")
        .unwrap_or_else(|| panic!("no status entry of the operator: {managed}"));
    let owned = operator_status["fieldsV1"]["f:status"]["f:migration"].clone();
    assert!(owned.get("f:lastRequest").is_some(), "{owned}");
    assert!(
        owned.get("f:request").is_none(),
        "the operator owns the request: {owned}"
    );

    // pause holds the step; status says so; resume lifts it; a second resume is refused.
    let out = plugin_ok(&alice, &ns, &["pause", NAME], &operator);
    assert!(out.contains("paused by request of alice"), "{out}");
    eventually(Duration::from_secs(20), "the step is held", || async {
        let m = migration(&env, &ns);
        if m["held"]["reason"] == "Paused" && m["reason"] == "Held" {
            Ok(())
        } else {
            Err(format!("{m}"))
        }
    })
    .await;
    let out = plugin_ok(&alice, &ns, &["status", NAME], &operator);
    assert!(out.contains("Held:     Paused since"), "{out}");
    assert!(out.contains("Waiting for: a resume"), "{out}");
    plugin_ok(&alice, &ns, &["resume", NAME], &operator);
    let m = migration(&env, &ns);
    assert_eq!(
        (m.get("held"), &m["currentStep"]),
        (None, &Value::from(1)),
        "{m}"
    );
    let (code, _, err) = plugin(&alice, &ns, &["resume", NAME]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing to resume"), "{err}");

    // promote --to the manual step, then promote through its manual gate.
    plugin_ok(&alice, &ns, &["promote", NAME, "--to", "3"], &operator);
    eventually(
        Duration::from_secs(20),
        "step 3 waits for a promotion",
        || async {
            let m = migration(&env, &ns);
            if m["currentStep"] == 3 && m["reason"] == "AwaitingPromotion" {
                Ok(())
            } else {
                Err(format!("{m}"))
            }
        },
    )
    .await;
    let out = plugin_ok(&alice, &ns, &["promote", NAME], &operator);
    assert!(
        out.contains("to step 4 (kafka-only): the gates of step 3 (read-kafka) were passed once"),
        "{out}"
    );

    // rollback: the previous step, held there.
    let out = plugin_ok(&alice, &ns, &["rollback", NAME], &operator);
    assert!(
        out.contains("from step 4 (kafka-only) to step 3 (read-kafka)"),
        "{out}"
    );
    let m = migration(&env, &ns);
    assert_eq!(
        (&m["currentStep"], &m["held"]["reason"]),
        (&Value::from(3), &Value::from("RolledBack")),
        "{m}"
    );

    // A step out of range is refused by the plugin, before anything is written.
    let (code, _, err) = plugin(&alice, &ns, &["rollback", NAME, "--to", "9"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("step 9 is out of range: orders has 5 steps (0 to 4)"),
        "{err}"
    );

    // abort: the first step (its safe strategy), held.
    plugin_ok(&alice, &ns, &["abort", NAME], &operator);
    let p = pipeline(&env, &ns);
    assert_eq!(
        (
            &p["status"]["migration"]["currentStep"],
            &p["status"]["migration"]["held"]["reason"]
        ),
        (&Value::from(0), &Value::from("Aborted")),
        "{}",
        p["status"]
    );
    eventually(
        Duration::from_secs(20),
        "step 0's strategy is in force",
        || async {
            let s = pipeline(&env, &ns)["status"].clone();
            if s["strategy"] == "FailFast" && s["activeProviders"] == serde_json::json!(["nats"]) {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        },
    )
    .await;

    // Git wins: a targetStep in the spec pins the migration; the plugin says which field.
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
            r#"{"spec":{"migration":{"targetStep":2}}}"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(20),
        "targetStep moved the migration",
        || async {
            let m = migration(&env, &ns);
            if m["currentStep"] == 2 {
                Ok(())
            } else {
                Err(format!("{m}"))
            }
        },
    )
    .await;
    let (code, _, err) = plugin(&alice, &ns, &["promote", NAME]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("spec.migration.targetStep=2 pins this migration: change it in Git"),
        "{err}"
    );

    // verify: a request; the operator (not alice, who may not create Jobs) starts the check's
    // Job from its builder, owned by the pipeline, under the check's ServiceAccount, and names
    // it in lastRequest.job. (No node runs it here: the plugin says no verdict came.)
    assert!(
        !common::cluster::can_i(&env, "create", "jobs", &ns, "alice"),
        "the migration-operator role grants no verb on jobs"
    );
    let (code, out, err) = plugin(&alice, &ns, &["verify", NAME, "--timeout", "5s"]);
    assert_eq!(
        code,
        2,
        "{out}{err}\noperator log:\n{}",
        operator.log_text()
    );
    assert!(out.contains("started by the operator"), "{out}");
    assert!(
        err.contains("no verdict from job.batch/orders-verify-"),
        "{err}"
    );
    let last = &migration(&env, &ns)["lastRequest"];
    assert_eq!(last["request"]["action"], "Verify", "{last}");
    assert_eq!(last["accepted"], true, "{last}");
    let job_name = last["job"].as_str().expect("lastRequest.job").to_string();
    assert_eq!(
        migration(&env, &ns)["currentStep"],
        2,
        "verify moves no step"
    );
    let job: Value = serde_json::from_str(&kubectl_ok(
        &env,
        &["get", "job", &job_name, "-n", &ns, "-o", "json"],
        None,
    ))
    .unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "orders-verify", "{job}");
    assert_eq!(
        pod["containers"][0]["args"],
        serde_json::json!(["verify", "--pipeline", format!("{ns}/orders")]),
        "{job}"
    );
    assert_eq!(
        pod["containers"][0]["image"], "example.org/dualwrite:e2e",
        "the relay's image"
    );
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("DualWritePipeline"), Some(NAME)),
        "{job}"
    );
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600, "{job}");

    // Without the role: a 403 that names the verb and the resource.
    let bob = dir.path().join("bob.kubeconfig");
    write_kubeconfig(&env, &bob, &admin_token(&env), Some("bob"));
    let (code, _, err) = plugin(&bob, &ns, &["pause", NAME]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("forbidden: you may not get dualwritepipelines.dualwrite.io in namespace"),
        "{err}"
    );
    // An unknown pipeline, with KUBECONFIG (not --kubeconfig) as kubectl would pass it.
    let out = Command::new(PLUGIN)
        .args(["-n", &ns, "status", "nope"])
        .env("KUBECONFIG", &alice)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("no DualWritePipeline nope in namespace {ns}")),
        "{err}"
    );

    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// The operator removes a request it acted on with a JSON patch that first tests the request is
/// still the one it acted on: against the real API server, a request written meanwhile makes
/// that patch fail (422) and survives; the request acted on is removed and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_request_spares_one_written_meanwhile() {
    use dualwrite::api::{DualWritePipeline, MigrationAction, MigrationRequest};
    use dualwrite::controller::step::clear_request_patch;
    use kube::api::{Patch, PatchParams};

    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "verbs-clear");
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&example(&ns)));
    let api: kube::Api<DualWritePipeline> =
        kube::Api::namespaced(common::cluster::admin_client(&env).await, &ns);
    let request = |action, at: &str| MigrationRequest {
        action,
        to_step: None,
        requested_at: at.into(),
        requested_by: Some("alice".into()),
        nonce: None,
    };
    let acted_on = request(MigrationAction::Promote, "2026-11-27T12:00:00Z");
    let newer = request(MigrationAction::Pause, "2026-11-27T12:00:01Z");
    let status = serde_json::json!({"status": {"migration": {
        "currentStep": 1, "stepName": "shadow-kafka", "reason": "Promoted",
        "stepStartedAt": "2026-11-27T12:00:00Z", "request": newer,
    }}});
    api.patch_status(NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    let remove = |r: &MigrationRequest| {
        Patch::<()>::Json(serde_json::from_value(clear_request_patch(r)).unwrap())
    };
    match api
        .patch_status(NAME, &PatchParams::default(), &remove(&acted_on))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("removing a request other than the one there must fail: {other:?}"),
    }
    let m = migration(&env, &ns);
    assert_eq!(
        m["request"]["action"], "Pause",
        "the newer request survives: {m}"
    );

    api.patch_status(NAME, &PatchParams::default(), &remove(&newer))
        .await
        .unwrap();
    let m = migration(&env, &ns);
    assert_eq!(m.get("request"), None, "{m}");
    assert_eq!(
        (&m["currentStep"], &m["reason"]),
        (&Value::from(1), &Value::from("Promoted"))
    );

    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// A Job the API server refuses (here a quota of no Jobs) is the Verify request's outcome,
/// refused with the API server's words; the operator does not stall on it: the request is
/// removed and the next request is acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_job_the_api_server_refuses_is_the_requests_outcome() {
    let Some(env) = kube_env() else { return };
    let OperatorInNamespace { ns, dir, operator } =
        operator_in_namespace(&env, "verbs-quota", "10m");
    enforced_zero_quota(
        &env,
        &ns,
        "no-jobs",
        "count/jobs.batch",
        &["job", "--image=example.org/probe"],
        "job",
    )
    .await;
    let admin = dir.path().join("admin.kubeconfig");
    write_kubeconfig(&env, &admin, &admin_token(&env), None);
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&example(&ns)));
    eventually(
        Duration::from_secs(30),
        "the operator started the migration",
        || async {
            let m = migration(&env, &ns);
            if m["currentStep"] == 0 {
                Ok(())
            } else {
                Err(format!("{m}\noperator log:\n{}", operator.log_text()))
            }
        },
    )
    .await;
    let (code, out, err) = plugin(&admin, &ns, &["verify", NAME, "--timeout", "30s"]);
    assert_eq!(
        code,
        1,
        "{out}{err}\noperator log:\n{}",
        operator.log_text()
    );
    assert!(
        err.contains("the consistency check was not started: the API server refused job.batch/orders-verify-")
            && err.contains("exceeded quota"),
        "{err}"
    );
    request_removed(&env, &ns).await;
    let out = plugin_ok(&admin, &ns, &["pause", NAME], &operator);
    assert!(out.contains("paused by request of"), "{out}");
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
