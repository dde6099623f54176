//! End to end against the real API server: the operator tells what stops it. An owned object
//! the API server refuses (a ResourceQuota of `services: 0`) leaves `Stalled=True` reason
//! `ApplyFailed` naming the object and the API server's words, with a Warning Event, and clears
//! once the quota is gone. An operator whose identity may not list/watch its pipelines is not
//! ready (`/readyz` 503 naming the resource) and logs at warn what to grant; it becomes ready
//! once RBAC allows it, without a restart. Memory providers only: no broker is needed.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{
    admin_token, enforced_zero_quota, free_port, install_crd, kube_env, kubectl, kubectl_ok,
    namespace, start_operator, write_kubeconfig, KubeEnv, Proc, BIN,
};
use common::eventually;
use serde_json::Value;

fn condition(env: &KubeEnv, ns: &str, name: &str, type_: &str) -> (String, String, String) {
    let out = kubectl(env, &["get", "dwp", name, "-n", ns, "-o", "json"], None);
    let p: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let c = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("status"), s("reason"), s("message"))
}

#[tokio::test]
async fn a_service_refused_by_a_quota_stalls_with_a_warning_event_until_the_quota_goes() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "refused");
    enforced_zero_quota(
        &env,
        &ns,
        "no-services",
        "services",
        &["service", "clusterip", "--tcp=80:80"],
        "service",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let operator = start_operator(&env, dir.path(), &["--namespace", &ns, "--resync", "2s"]);
    let pipeline = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: quota, namespace: {ns}}}\nspec:\n  providers: [{{name: a, type: memory}}, {{name: b, type: memory}}]\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&pipeline));

    let message = eventually(
        Duration::from_secs(60),
        "Stalled=True ApplyFailed names the refused Service",
        || async {
            match condition(&env, &ns, "quota", "Stalled") {
                (s, r, m) if s == "True" && r == "ApplyFailed" => Ok(m),
                other => Err(format!(
                    "Stalled {other:?}; operator log:\n{}",
                    operator.log_text()
                )),
            }
        },
    )
    .await;
    assert!(
        message.starts_with("Service quota-relay not applied: the API server refused it (403")
            && message.contains("quota"),
        "{message}"
    );
    // Not an empty status: Ready says the same, and the strategy in force is there.
    let (ready, reason, _) = condition(&env, &ns, "quota", "Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "ApplyFailed"));
    let strategy = kubectl_ok(
        &env,
        &[
            "get",
            "dwp",
            "quota",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.strategy}",
        ],
        None,
    );
    assert_eq!(strategy, "FailFast");
    eventually(
        Duration::from_secs(30),
        "a Warning Event ApplyFailed on the pipeline",
        || async {
            let out = kubectl_ok(
                &env,
                &[
                    "get",
                    "events",
                    "-n",
                    &ns,
                    "--field-selector",
                    "reason=ApplyFailed,type=Warning,involvedObject.name=quota",
                    "-o",
                    "json",
                ],
                None,
            );
            let events: Value = serde_json::from_str(&out).unwrap();
            match events["items"].as_array() {
                Some(items)
                    if items.iter().any(|e| {
                        e["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("Service quota-relay not applied"))
                    }) =>
                {
                    Ok(())
                }
                _ => Err(out),
            }
        },
    )
    .await;

    // The quota goes: the next retry applies everything and Stalled clears.
    kubectl_ok(
        &env,
        &["delete", "resourcequota", "no-services", "-n", &ns],
        None,
    );
    eventually(
        Duration::from_secs(90),
        "Stalled clears and the relay's objects exist",
        || async {
            let stalled = condition(&env, &ns, "quota", "Stalled");
            let sts = kubectl(
                &env,
                &["get", "statefulset", "quota-relay", "-n", &ns],
                None,
            );
            if stalled.0 == "False" && sts.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "Stalled {stalled:?}; operator log:\n{}",
                    operator.log_text()
                ))
            }
        },
    )
    .await;
    drop(operator);
    let _ = kubectl(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// `dualwrite operator` as `user` (the admin token impersonating it), its probes on `port`.
fn start_operator_as(
    env: &KubeEnv,
    dir: &std::path::Path,
    user: &str,
    ns: &str,
    port: u16,
) -> Proc {
    let kubeconfig = dir.join("operator.kubeconfig");
    write_kubeconfig(env, &kubeconfig, &admin_token(env), Some(user));
    let mut cmd = Command::new(BIN);
    cmd.args(["operator", "--http-port", &port.to_string()])
        .args(["--namespace", ns, "--resync", "2s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-health")
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "info,kube=warn");
    Proc::spawn(cmd, dir.join("operator.log"))
}

/// A Role granting `resources` of `group` to `user` in `ns` (read and watch only).
fn grant(env: &KubeEnv, ns: &str, name: &str, user: &str, rules: &str) {
    let doc = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}, namespace: {ns}}}\nrules:\n{rules}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}\n"
    );
    kubectl_ok(env, &["apply", "-f", "-"], Some(&doc));
}

async fn readyz(port: u16) -> Result<(u16, String), String> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    Ok((code, r.text().await.map_err(|e| e.to_string())?))
}

#[tokio::test]
async fn readyz_is_not_ready_and_says_what_to_grant_until_rbac_allows_the_watches() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "noperm");
    let user = common::unique("e2e-noperm");
    // Everything the operator watches but its pipelines.
    let read = "verbs: [get, list, watch]";
    grant(
        &env,
        &ns,
        "owned",
        &user,
        &format!(
            "- {{apiGroups: [apps], resources: [statefulsets], {read}}}\n- {{apiGroups: [\"\"], resources: [services, pods, serviceaccounts, configmaps, persistentvolumeclaims], {read}}}\n- {{apiGroups: [policy], resources: [poddisruptionbudgets], {read}}}\n- {{apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], {read}}}\n- {{apiGroups: [batch], resources: [cronjobs], {read}}}\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let operator = start_operator_as(&env, dir.path(), &user, &ns, port);
    let want = format!("lacks list/watch on dualwritepipelines.dualwrite.io in namespace {ns}");
    let body = eventually(
        Duration::from_secs(60),
        "/readyz answers 503 naming the resource to grant",
        || async {
            match readyz(port).await {
                Ok((503, body)) if body.contains(&want) => Ok(body),
                other => Err(format!("{other:?}; log:\n{}", operator.log_text())),
            }
        },
    )
    .await;
    assert!(
        !body.contains("pods"),
        "only the pipelines are missing: {body}"
    );
    let log = operator.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains(&want)),
        "a warn line says what to grant:\n{log}"
    );

    // RBAC fixed: ready, without a restart.
    grant(
        &env,
        &ns,
        "pipelines",
        &user,
        &format!("- {{apiGroups: [dualwrite.io], resources: [dualwritepipelines], {read}}}\n"),
    );
    eventually(Duration::from_secs(60), "/readyz answers 200", || async {
        match readyz(port).await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}; log:\n{}", operator.log_text())),
        }
    })
    .await;
    let mut operator = operator;
    assert!(
        operator.child.try_wait().unwrap().is_none(),
        "the operator keeps running:\n{}",
        operator.log_text()
    );
    let _ = kubectl(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
