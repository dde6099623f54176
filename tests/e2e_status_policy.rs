//! The attacks a holder of the chart's `…-migration-operator` role could try, against the real
//! API server with the chart's ValidatingAdmissionPolicy installed (bound to this test's
//! namespace only, so the tests of others running beside it are not touched): writing the
//! operator's decisions into the status (the current step, the conditions) is refused with the
//! policy's message; writing `status.migration.request` passes and the operator, exempt, still
//! writes its status; creating a Job (which could run as `<pipeline>-verify` and forge the
//! consistency verdict) is forbidden. And the policy fails closed: on a CRD of this test's own
//! whose status has a field the policy never names, a change to that field is refused too.

mod common;

use std::time::Duration;

use common::cluster::{
    can_i, helm, kube_env, kubectl, kubectl_ok, namespace, operator_in_namespace, KubeEnv,
    OperatorInNamespace, OPERATOR_USER, REPO,
};
use common::eventually;
use serde_json::Value;

const NAME: &str = "orders";
const REFUSED: &str = "only status.migration.request may be written";

/// Deletes the cluster-scoped objects a test made (kind/name pairs) when it ends, however.
struct ClusterScoped<'a> {
    env: &'a KubeEnv,
    objects: Vec<String>,
}

impl Drop for ClusterScoped<'_> {
    fn drop(&mut self) {
        for o in &self.objects {
            let _ = kubectl(self.env, &["delete", o, "--ignore-not-found"], None);
        }
    }
}

/// The chart's policy and binding, rendered for release `release`, exempting the user the
/// operator runs as in these tests and bound to namespace `ns` only.
fn rendered_policy(release: &str, ns: &str) -> Vec<Value> {
    let out = std::process::Command::new(helm())
        .args([
            "template",
            release,
            &format!("{REPO}/charts/dualwrite-operator"),
            "--set",
            "crds.enabled=false",
            "--set",
            &format!("rbac.statusPolicy.exemptUsers={{{OPERATOR_USER}}}"),
            "--set-string",
            &format!("rbac.statusPolicy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={ns}"),
            "--show-only",
            "templates/status-policy.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .filter(|d| d.contains("kind:"))
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

fn apply(env: &KubeEnv, doc: &Value) {
    kubectl_ok(env, &["apply", "-f", "-"], Some(&doc.to_string()));
}

/// `kubectl patch KIND NAME --subresource=status` as `user` (impersonated by the admin):
/// Ok(stdout) or Err(stderr).
fn patch_status_as(
    env: &KubeEnv,
    user: &str,
    ns: &str,
    kind: &str,
    patch: &str,
) -> Result<String, String> {
    patch_status(env, user, ns, kind, patch, false)
}

/// [`patch_status_as`], with `--dry-run=server` when `dry_run` (admission runs, nothing is
/// stored).
fn patch_status(
    env: &KubeEnv,
    user: &str,
    ns: &str,
    kind: &str,
    patch: &str,
    dry_run: bool,
) -> Result<String, String> {
    let dry = if dry_run {
        "--dry-run=server"
    } else {
        "--dry-run=none"
    };
    let out = kubectl(
        env,
        &[
            dry,
            "patch",
            kind,
            NAME,
            "-n",
            ns,
            "--as",
            user,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ],
        None,
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until the policy (loaded by the API server a moment after it is created) refuses
/// `patch` as `user` in a server dry run (so nothing is written while it is not yet in force),
/// then checks the real write is refused too, and returns that refusal.
async fn refused(env: &KubeEnv, user: &str, ns: &str, kind: &str, patch: &str) -> String {
    eventually(
        Duration::from_secs(30),
        &format!("the policy refuses {patch}"),
        || async {
            match patch_status(env, user, ns, kind, patch, true) {
                Err(e) if e.contains(REFUSED) => Ok(()),
                Err(e) => Err(format!("refused, but not by the policy: {e}")),
                Ok(out) => Err(format!("allowed: {out}")),
            }
        },
    )
    .await;
    match patch_status_as(env, user, ns, kind, patch) {
        Err(e) if e.contains(REFUSED) => e,
        other => panic!("the dry run was refused, the write was not: {other:?}"),
    }
}

fn migration(env: &KubeEnv, ns: &str) -> Value {
    let p: Value = serde_json::from_str(&kubectl_ok(
        env,
        &["get", "dwp", NAME, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap();
    p["status"]["migration"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_operator_may_write_a_request_and_nothing_else() {
    let Some(env) = kube_env() else { return };
    let OperatorInNamespace {
        ns,
        dir: _dir,
        operator,
    } = operator_in_namespace(&env, "stpolicy", "10m");
    let docs = rendered_policy(&ns, &ns);
    let _cleanup = ClusterScoped {
        env: &env,
        objects: docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap().to_lowercase(),
                    d["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect(),
    };
    for d in &docs {
        apply(&env, d);
    }
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
    let text =
        std::fs::read_to_string(format!("{REPO}/examples/nats-to-kafka-migration.yaml")).unwrap();
    let mut example: Value = serde_yaml::from_str(&text).unwrap();
    example["metadata"]["namespace"] = Value::String(ns.clone());
    apply(&env, &example);
    eventually(
        Duration::from_secs(30),
        "the operator started the migration at step 0",
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

    // The attack of finding 1: a Job that runs as the check's ServiceAccount.
    assert!(
        !can_i(&env, "create", "jobs", &ns, "alice"),
        "alice may not create Jobs"
    );
    let job = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "forged-verdict", "namespace": ns},
        "spec": {"template": {"spec": {
            "serviceAccountName": "orders-verify", "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}
    });
    let out = kubectl(
        &env,
        &["create", "--as", "alice", "-f", "-"],
        Some(&job.to_string()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("forbidden"),
        "creating a Job as alice: {err}"
    );

    // The attacks of finding 2: the operator's decisions, written by alice.
    let err = refused(
        &env,
        "alice",
        &ns,
        "dwp",
        r#"{"status":{"migration":{"currentStep":2}}}"#,
    )
    .await;
    assert!(
        err.contains("refused for alice, who changed status.migration.currentStep"),
        "{err}"
    );
    let err = refused(&env, "alice", &ns, "dwp", r#"{"status":{"conditions":[]}}"#).await;
    assert!(err.contains("who changed status.conditions"), "{err}");
    let err = refused(
        &env,
        "alice",
        &ns,
        "dwp",
        r#"{"status":{"migration":{"held":{"reason":"Paused","since":"2026-11-27T12:00:00Z"}}}}"#,
    )
    .await;
    assert!(err.contains("status.migration.held"), "{err}");
    // A request smuggling a decision along is refused whole.
    let err = refused(
        &env,
        "alice",
        &ns,
        "dwp",
        r#"{"status":{"strategy":"BestEffort","migration":{"request":{"action":"Pause","requestedAt":"2026-11-27T12:00:00Z","nonce":"x0"}}}}"#,
    )
    .await;
    assert!(err.contains("who changed status.strategy"), "{err}");
    assert_eq!(migration(&env, &ns)["currentStep"], 0);

    // A request alone passes, and the operator (exempt) acts on it: its status writes and the
    // removal of the request pass.
    patch_status_as(
        &env,
        "alice",
        &ns,
        "dwp",
        r#"{"status":{"migration":{"request":{"action":"Pause","requestedAt":"2026-11-27T12:00:00Z","requestedBy":"alice","nonce":"x1"}}}}"#,
    )
    .expect("a request alone is allowed");
    eventually(
        Duration::from_secs(30),
        "the operator acted on alice's request",
        || async {
            let m = migration(&env, &ns);
            let acted = m["lastRequest"]["request"]["nonce"] == "x1"
                && m["lastRequest"]["accepted"] == true
                && m["held"]["reason"] == "Paused"
                && m.get("request").is_none();
            if acted {
                Ok(())
            } else {
                Err(format!("{m}\noperator log:\n{}", operator.log_text()))
            }
        },
    )
    .await;
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// The policy names no status field but `migration` and `request`: a field added to the status
/// later is guarded without a change to it. Shown on a CRD of this test's own (a group no one
/// else uses) whose status has `futureField`, with the chart's rule matched to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_field_the_policy_does_not_name_is_refused() {
    let Some(env) = kube_env() else { return };
    let ns = namespace(&env, "stpolicy-new");
    let group = format!("{ns}.dualwrite.test");
    let crd = serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("things.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "status": {"type": "object", "properties": {
                        "futureField": {"type": "string"},
                        "migration": {"type": "object", "properties": {
                            "currentStep": {"type": "integer"},
                            "request": {"type": "object",
                                "x-kubernetes-preserve-unknown-fields": true}
                        }}
                    }}
                }}}
            }]
        }
    });
    let mut docs = rendered_policy(&ns, &ns);
    let policy_name = format!("{ns}-future-field");
    for d in docs.iter_mut() {
        d["metadata"]["name"] = Value::String(policy_name.clone());
        if d["kind"] == "ValidatingAdmissionPolicy" {
            let rule = &mut d["spec"]["matchConstraints"]["resourceRules"][0];
            rule["apiGroups"] = serde_json::json!([group]);
            rule["resources"] = serde_json::json!(["things/status"]);
        } else {
            d["spec"]["policyName"] = Value::String(policy_name.clone());
        }
    }
    let _cleanup = ClusterScoped {
        env: &env,
        objects: vec![
            format!("crd/things.{group}"),
            format!("validatingadmissionpolicy/{policy_name}"),
            format!("validatingadmissionpolicybinding/{policy_name}"),
        ],
    };
    apply(&env, &crd);
    kubectl_ok(
        &env,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/things.{group}"),
        ],
        None,
    );
    for d in &docs {
        apply(&env, d);
    }
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: things-status, namespace: {ns}}}\nrules:\n- {{apiGroups: [{group}], resources: [things/status], verbs: [get, patch]}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&role));
    for user in ["alice", OPERATOR_USER] {
        kubectl_ok(
            &env,
            &[
                "create",
                "rolebinding",
                &format!("things-{user}"),
                "-n",
                &ns,
                "--role=things-status",
                &format!("--user={user}"),
            ],
            None,
        );
    }
    let thing = format!(
        "apiVersion: {group}/v1\nkind: Thing\nmetadata: {{name: {NAME}, namespace: {ns}}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&thing));
    let kind = format!("things.{group}");

    let err = refused(
        &env,
        "alice",
        &ns,
        &kind,
        r#"{"status":{"futureField":"forged"}}"#,
    )
    .await;
    assert!(
        err.contains("refused for alice, who changed status.futureField"),
        "{err}"
    );
    patch_status_as(
        &env,
        "alice",
        &ns,
        &kind,
        r#"{"status":{"migration":{"request":{"action":"Pause"}}}}"#,
    )
    .expect("a request alone is allowed");
    patch_status_as(
        &env,
        OPERATOR_USER,
        &ns,
        &kind,
        r#"{"status":{"futureField":"the operator's","migration":{"currentStep":1}}}"#,
    )
    .expect("the operator's user is exempt");
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
