//! The scheduled consistency check against the real API server, the operator under the chart's
//! RBAC only: with `spec.consistency.schedule` the operator owns a CronJob `<name>-verify`
//! (built from the verify Job: the check's own ServiceAccount, `--window`/`--settle` from the
//! spec), changes it with the spec, puts it back when someone deletes it, reports a schedule the
//! API server refuses as Stalled (after applying the relay's objects), and deletes it when the
//! schedule is removed. Memory providers only: no CronJob runs here (that is
//! `tests/e2e_node.rs`, `the_scheduled_check_opens_the_consistent_gate_by_itself`).

mod common;

use std::time::Duration;

use common::cluster::{kube_env, kubectl, kubectl_ok, operator_in_namespace, OperatorInNamespace};
use common::eventually;
use serde_json::Value;

const NAME: &str = "scheduled";

fn manifest(ns: &str, consistency: &str) -> String {
    format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: {NAME}, namespace: {ns}}}\nspec:\n  providers:\n  - {{name: a, type: memory}}\n  - {{name: b, type: memory}}\n{consistency}"
    )
}

/// The CronJob `<NAME>-verify` in `ns`, if there is one.
fn cron_job(env: &common::cluster::KubeEnv, ns: &str) -> Option<Value> {
    let out = kubectl(
        env,
        &[
            "get",
            "cronjob",
            &format!("{NAME}-verify"),
            "-n",
            ns,
            "-o",
            "json",
        ],
        None,
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// (schedule, container args) of a CronJob.
fn schedule_and_args(c: &Value) -> (String, Vec<String>) {
    let spec = &c["spec"];
    let args = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (spec["schedule"].as_str().unwrap().to_string(), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_keeps_the_scheduled_checks_cron_job_in_step_with_the_spec() {
    let Some(env) = kube_env() else { return };
    let OperatorInNamespace {
        ns,
        dir: _dir,
        operator,
    } = operator_in_namespace(&env, "scheduled-check", "60s");
    let log = || operator.log_text();

    // A schedule, a window and a settle: the CronJob runs the check with them.
    kubectl_ok(
        &env,
        &["apply", "-f", "-"],
        Some(&manifest(
            &ns,
            "  consistency: {schedule: '*/5 * * * *', window: 1h, settle: 30s}\n",
        )),
    );
    let created = eventually(
        Duration::from_secs(60),
        "the operator creates the CronJob",
        || async {
            cron_job(&env, &ns).ok_or_else(|| format!("none yet; operator log:\n{}", log()))
        },
    )
    .await;
    let want_args = |extra: &[&str]| {
        let mut a: Vec<String> = ["verify", "--pipeline", &format!("{ns}/{NAME}")]
            .map(String::from)
            .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    assert_eq!(
        schedule_and_args(&created),
        (
            "*/5 * * * *".to_string(),
            want_args(&["--window", "1h", "--settle", "30s"])
        )
    );
    let spec = &created["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert_eq!(spec["startingDeadlineSeconds"], 300);
    assert_eq!(spec["successfulJobsHistoryLimit"], 3);
    assert_eq!(spec["failedJobsHistoryLimit"], 3);
    let job = &spec["jobTemplate"]["spec"];
    assert_eq!(job["activeDeadlineSeconds"], 1800);
    assert_eq!(
        job["template"]["spec"]["serviceAccountName"],
        "scheduled-verify"
    );
    assert_eq!(
        job["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let uid = kubectl_ok(
        &env,
        &[
            "get",
            "dwp",
            NAME,
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    let owner = &created["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["uid"], &owner["controller"]),
        (
            &Value::from("DualWritePipeline"),
            &Value::from(uid.trim()),
            &Value::from(true)
        ),
        "deleted with its pipeline by the garbage collector"
    );

    // Another schedule, no window: the CronJob follows.
    kubectl_ok(
        &env,
        &["apply", "-f", "-"],
        Some(&manifest(&ns, "  consistency: {schedule: '@hourly'}\n")),
    );
    eventually(
        Duration::from_secs(60),
        "the operator updates the CronJob",
        || async {
            let got = cron_job(&env, &ns).map(|c| schedule_and_args(&c));
            if got == Some(("@hourly".to_string(), want_args(&[]))) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;

    // Deleted by hand: the operator, which watches the CronJobs it owns, puts it back.
    let before = cron_job(&env, &ns).unwrap()["metadata"]["uid"].clone();
    kubectl_ok(
        &env,
        &["delete", "cronjob", &format!("{NAME}-verify"), "-n", &ns],
        None,
    );
    eventually(
        Duration::from_secs(30),
        "the operator re-creates the deleted CronJob (the resync is 60 s: the watch does it)",
        || async {
            match cron_job(&env, &ns) {
                Some(c) if c["metadata"]["uid"] != before => Ok(()),
                other => Err(format!("{:?}", other.map(|c| c["metadata"]["uid"].clone()))),
            }
        },
    )
    .await;

    // A schedule of the right shape whose minute is out of range passes the CRD; the API server
    // refuses the CronJob: Stalled says so, and the relay's objects of a new pipeline are
    // applied all the same (the CronJob comes last).
    let refused = manifest(&ns, "  consistency: {schedule: '60 * * * *'}\n")
        .replace(&format!("name: {NAME},"), "name: refused,");
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&refused));
    eventually(
        Duration::from_secs(60),
        "Stalled names the refused CronJob, and the relay's StatefulSet exists",
        || async {
            let p: Value = serde_json::from_str(&kubectl_ok(
                &env,
                &["get", "dwp", "refused", "-n", &ns, "-o", "json"],
                None,
            ))
            .unwrap();
            let stalled = p["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Stalled").cloned())
                .unwrap_or(Value::Null);
            let message = stalled["message"].as_str().unwrap_or("");
            let sts = kubectl(
                &env,
                &["get", "statefulset", "refused-relay", "-n", &ns],
                None,
            );
            if stalled["status"] == "True"
                && message.contains("CronJob refused-verify not applied")
                && message.contains("spec.schedule")
                && sts.status.success()
            {
                Ok(())
            } else {
                Err(format!(
                    "Stalled: {stalled}; StatefulSet there: {}",
                    sts.status.success()
                ))
            }
        },
    )
    .await;

    // The schedule removed (the block kept, with a window): the CronJob goes, with an Event.
    kubectl_ok(
        &env,
        &["apply", "-f", "-"],
        Some(&manifest(&ns, "  consistency: {window: 1h}\n")),
    );
    eventually(
        Duration::from_secs(60),
        "the operator deletes the CronJob",
        || async {
            match cron_job(&env, &ns) {
                None => Ok(()),
                Some(c) if !c["metadata"]["deletionTimestamp"].is_null() => Ok(()),
                Some(_) => Err(format!("still there; operator log:\n{}", log())),
            }
        },
    )
    .await;
    let events = kubectl_ok(
        &env,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            &ns,
            "-o",
            "jsonpath={range .items[*]}{.note}{\"\\n\"}{end}",
        ],
        None,
    );
    assert!(
        events.contains("CronJob scheduled-verify deleted"),
        "events:\n{events}"
    );
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
