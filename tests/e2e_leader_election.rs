//! Two operator replicas with `--leader-elect`, under only the chart's permissions (its
//! ClusterRole and its leader-election Role): one leads and reconciles, the other waits; when the
//! leader stops, it releases the Lease and the other takes over and reconciles.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{
    helm, install_crd, kube_env, kubectl_ok, namespace, start_operator_named, KubeEnv, REPO,
};
use common::eventually;

const LEASE: &str = "e2e-dualwrite-operator";

/// The chart's leader-election Role in `ns`, bound to the operator token's user.
fn grant_lease_rbac(env: &KubeEnv, ns: &str) {
    let rendered = Command::new(helm())
        .args([
            "template",
            "dw",
            &format!("{REPO}/charts/dualwrite-operator"),
            "-n",
            ns,
        ])
        .args(["--set", "crds.enabled=false,leaderElection.enabled=true"])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let text = String::from_utf8(rendered.stdout).unwrap();
    let role = text
        .split("\n---")
        .find(|doc| doc.contains("kind: Role\n") && doc.contains("leases"))
        .expect("the chart renders a leader-election Role");
    kubectl_ok(env, &["apply", "-f", "-"], Some(role));
    let name = serde_yaml::from_str::<serde_json::Value>(role).unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: e2e-leader, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: dualwrite-operator}}\n"
    );
    kubectl_ok(env, &["apply", "-f", "-"], Some(&binding));
}

fn holder(env: &KubeEnv, ns: &str) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", &env.kubeconfig)
        .args([
            "get",
            "lease",
            LEASE,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn replicas(env: &KubeEnv, ns: &str) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", &env.kubeconfig)
        .args([
            "get",
            "statefulset",
            "demo-relay",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "lease");
    grant_lease_rbac(&env, &ns);
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--leader-elect",
        "--lease-name",
        LEASE,
        "--pod-namespace",
        &ns,
        "--namespace",
        &ns,
        "--resync",
        "2s",
    ];
    let mut a = start_operator_named(&env, &dir.path().join("a"), "op-a", &args);
    let leader = eventually(Duration::from_secs(60), "op-a holds the Lease", || async {
        match holder(&env, &ns).as_str() {
            "op-a" => Ok("op-a"),
            other => Err(format!("holder {other:?}; log:\n{}", a.log_text())),
        }
    })
    .await;
    let mut b = start_operator_named(&env, &dir.path().join("b"), "op-b", &args);
    eventually(
        Duration::from_secs(30),
        "op-b waits as a follower",
        || async {
            if b.log_text().contains("waiting to become the leader") {
                Ok(())
            } else {
                Err(b.log_text())
            }
        },
    )
    .await;
    assert_eq!(leader, "op-a");

    let pipeline = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: demo, namespace: {ns}}}\nspec:\n  providers: [{{name: a, type: memory}}, {{name: b, type: memory}}]\n  relay: {{replicas: 1}}\n"
    );
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&pipeline));
    eventually(Duration::from_secs(30), "the leader reconciles", || async {
        if replicas(&env, &ns) == "1" {
            Ok(())
        } else {
            Err(format!("log a:\n{}", a.log_text()))
        }
    })
    .await;
    assert!(
        !b.log_text().contains("leading"),
        "the follower does not reconcile:\n{}",
        b.log_text()
    );

    // The leader stops: it releases the Lease and op-b takes over and reconciles.
    a.terminate();
    eventually(Duration::from_secs(60), "op-b holds the Lease", || async {
        match holder(&env, &ns).as_str() {
            "op-b" => Ok(()),
            other => Err(format!("holder {other:?}; log b:\n{}", b.log_text())),
        }
    })
    .await;
    kubectl_ok(
        &env,
        &[
            "patch",
            "dwp",
            "demo",
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
        "the new leader reconciles",
        || async {
            if replicas(&env, &ns) == "2" {
                Ok(())
            } else {
                Err(format!("log b:\n{}", b.log_text()))
            }
        },
    )
    .await;
    b.terminate();
    let _ = kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
