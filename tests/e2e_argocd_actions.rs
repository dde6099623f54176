//! End to end against the real API server: the example migration (`examples/`) driven with only
//! the Argo CD resource actions (`docs/argocd/actions/`), run as Argo CD runs them. The action's
//! Lua runs under gopher-lua (the harness of `hack/check-argocd-health`, in its one-action mode)
//! on the live object; the object it returns is diffed against the live one as a JSON merge
//! patch and, since the patch touches `status`, sent whole to the status subresource, then any
//! rest to the resource itself, exactly as argo-cd's `patchResource` does. Discovery runs on
//! the live object before each action and must offer it. The operator runs beside it as the
//! other `e2e_*` tests run it. No relay, no broker.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::{
    admin_client, install_crd, kube_env, kubectl_ok, namespace, start_operator, KubeEnv, Proc, REPO,
};
use common::{eventually, under_ci};
use dualwrite::api::DualWritePipeline;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{Map, Value};

const NAME: &str = "orders";

/// The gopher-lua harness, built once into `dir`; `None` (a loud skip, a failure under CI)
/// without Go.
fn build_harness(dir: &Path) -> Option<PathBuf> {
    let has_go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_go {
        assert!(
            !under_ci(),
            "go is not installed and CI=true: the Argo CD actions need it"
        );
        eprintln!(
            "\n*** SKIPPED: go is not installed; the Argo CD actions run under gopher-lua ***\n"
        );
        return None;
    }
    let bin = dir.join("argocd-check");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(format!("{REPO}/docs/argocd/check"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build of docs/argocd/check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

/// RFC 7386: the merge patch that turns `old` into `new` (what argo-cd computes with
/// `jsonpatch.CreateMergePatch`).
fn merge_patch(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_patch(ov, nv) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ => (old != new).then(|| new.clone()),
    }
}

struct Argo {
    harness: PathBuf,
    dir: PathBuf,
    env: KubeEnv,
    ns: String,
}

impl Argo {
    fn live(&self) -> Value {
        serde_json::from_str(&kubectl_ok(
            &self.env,
            &["get", "dwp", NAME, "-n", &self.ns, "-o", "json"],
            None,
        ))
        .unwrap()
    }

    fn write_live(&self, live: &Value) -> PathBuf {
        let path = self.dir.join("live.json");
        std::fs::write(&path, live.to_string()).unwrap();
        path
    }

    /// The verbs discovery offers (enabled) for the live object.
    fn offered(&self) -> Vec<String> {
        let live = self.write_live(&self.live());
        let out = Command::new(&self.harness)
            .args([
                "-dir",
                &format!("{REPO}/docs/argocd"),
                "-run-discovery",
                "-obj",
            ])
            .arg(&live)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|v| v.strip_suffix("(disabled=false)").map(String::from))
            .collect()
    }

    /// Runs action `verb` as Argo CD does; Err carries the action's error message.
    async fn run(&self, verb: &str) -> Result<Value, String> {
        let live = self.live();
        let path = self.write_live(&live);
        let out = Command::new(&self.harness)
            .args([
                "-dir",
                &format!("{REPO}/docs/argocd"),
                "-run-action",
                verb,
                "-obj",
            ])
            .arg(&path)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let new: Value = serde_json::from_slice(&out.stdout).unwrap();
        let Some(patch) = merge_patch(&live, &new) else {
            return Ok(Value::Null);
        };
        // argo-cd's patchResource: a patch that touches status goes whole to the status
        // subresource; what is not status then goes to the resource.
        assert!(patch.get("status").is_some(), "{verb}: {patch}");
        let api: Api<DualWritePipeline> = Api::namespaced(admin_client(&self.env).await, &self.ns);
        api.patch_status(NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("{verb}: status patch {patch}: {e}"));
        let mut rest = patch.as_object().unwrap().clone();
        rest.remove("status");
        assert!(
            rest.is_empty(),
            "{verb}: the action changed more than the status: {rest:?}"
        );
        Ok(new["status"]["migration"]["request"].clone())
    }

    /// Runs `verb` and waits for the operator's outcome of the request it wrote.
    async fn act(&self, verb: &str, operator: &Proc) -> Value {
        assert!(
            self.offered().iter().any(|v| v == verb),
            "discovery does not offer {verb}: {:?}",
            self.offered()
        );
        let request = self
            .run(verb)
            .await
            .unwrap_or_else(|e| panic!("{verb}: {e}"));
        eventually(
            Duration::from_secs(20),
            "the operator acted on the request",
            || async {
                let m = self.live()["status"]["migration"].clone();
                if m["lastRequest"]["request"] == request && m.get("request").is_none() {
                    Ok(m)
                } else {
                    Err(format!("{m}\noperator log:\n{}", operator.log_text()))
                }
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_migration_driven_with_argocd_actions() {
    let Some(env) = kube_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(harness) = build_harness(dir.path()) else {
        return;
    };
    install_crd(&env);
    let ns = namespace(&env, "argo-actions");
    // A resync far beyond the test: a request is noticed through the watch on the pipeline
    // (a status change), not by a periodic reconcile.
    let operator = start_operator(
        &env,
        &dir.path().join("operator"),
        &[
            "--namespace",
            &ns,
            "--resync",
            "10m",
            "--relay-image",
            "example.org/dualwrite:e2e",
        ],
    );
    let text =
        std::fs::read_to_string(format!("{REPO}/examples/nats-to-kafka-migration.yaml")).unwrap();
    let mut example: Value = serde_yaml::from_str(&text).unwrap();
    example["metadata"]["namespace"] = Value::String(ns.clone());
    kubectl_ok(&env, &["apply", "-f", "-"], Some(&example.to_string()));
    let argo = Argo {
        harness,
        dir: dir.path().to_path_buf(),
        env: env.clone(),
        ns: ns.clone(),
    };
    eventually(Duration::from_secs(30), "the migration started", || async {
        let m = argo.live()["status"]["migration"].clone();
        if m["currentStep"] == 0 && m["reason"] == "MinDurationNotReached" {
            Ok(())
        } else {
            Err(format!("{m}\noperator log:\n{}", operator.log_text()))
        }
    })
    .await;
    let before = argo.live();
    assert_eq!(
        argo.offered(),
        ["abort", "pause", "promote", "promote-full", "verify"],
        "at the first step: no rollback, no resume"
    );

    let m = argo.act("promote", &operator).await;
    assert_eq!(m["currentStep"], 1, "{m}");
    assert_eq!(m["lastRequest"]["accepted"], true, "{m}");
    assert_eq!(
        m["history"].as_array().unwrap().last().unwrap()["requestedBy"],
        "argocd"
    );

    let m = argo.act("pause", &operator).await;
    assert_eq!(
        (&m["currentStep"], &m["held"]["reason"]),
        (&Value::from(1), &Value::from("Paused")),
        "{m}"
    );
    assert!(!argo.offered().contains(&"pause".to_string()));
    let m = argo.act("resume", &operator).await;
    assert_eq!(m.get("held"), None, "{m}");

    let m = argo.act("promote-full", &operator).await;
    assert_eq!(m["currentStep"], 4, "{m}");
    assert_eq!(
        argo.offered(),
        ["abort", "rollback", "verify"],
        "at the last step"
    );

    let m = argo.act("rollback", &operator).await;
    assert_eq!(
        (&m["currentStep"], &m["held"]["reason"]),
        (&Value::from(3), &Value::from("RolledBack")),
        "{m}"
    );

    let m = argo.act("abort", &operator).await;
    assert_eq!(
        (&m["currentStep"], &m["held"]["reason"]),
        (&Value::from(0), &Value::from("Aborted")),
        "{m}"
    );
    assert_eq!(
        argo.offered(),
        ["promote", "promote-full", "resume", "verify"],
        "aborted at the first step"
    );

    // Nothing of it reached the spec: an Argo CD diff against Git sees no change.
    let after = argo.live();
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(
        after["metadata"]["generation"],
        before["metadata"]["generation"]
    );

    // Git wins: with a targetStep in the spec, discovery offers nothing and the action fails
    // naming the field.
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
    assert_eq!(argo.offered(), ["verify"], "a check moves no step");
    let err = argo.run("promote").await.unwrap_err();
    assert!(
        err.contains("spec.migration.targetStep=2 pins this migration: change it in Git"),
        "{err}"
    );
    // verify: the operator starts the check's Job and names it; the step stays pinned.
    let m = argo.act("verify", &operator).await;
    assert_eq!(m["lastRequest"]["accepted"], true, "{m}");
    let job = m["lastRequest"]["job"].as_str().expect("lastRequest.job");
    assert!(job.starts_with("orders-verify-"), "{m}");
    let sa = kubectl_ok(
        &env,
        &[
            "get",
            "job",
            job,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.serviceAccountName}",
        ],
        None,
    );
    assert_eq!(sa, "orders-verify");

    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
