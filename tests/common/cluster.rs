//! Helpers for tests against the real kube-apiserver of `hack/test-env up kube`: kubectl as a
//! user runs it, kubeconfigs for other identities (the operator's token, the relay's service
//! account by impersonation), the CRD, throwaway namespaces, and child processes that are
//! killed when the test ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::Value;

use super::require_env;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const BIN: &str = env!("CARGO_BIN_EXE_dualwrite");

/// The API server of the test environment.
#[derive(Clone, Debug)]
pub struct KubeEnv {
    pub kubeconfig: String,
    pub server: String,
    pub ca_file: String,
    pub operator_token: String,
}

/// The API server's coordinates, or `None` (a loud skip; a failure under CI).
pub fn kube_env() -> Option<KubeEnv> {
    Some(KubeEnv {
        kubeconfig: require_env("KUBECONFIG")?,
        server: require_env("KUBE_APISERVER_URL")?,
        ca_file: require_env("KUBE_CA_FILE")?,
        operator_token: require_env("KUBE_OPERATOR_TOKEN")?,
    })
}

/// Runs kubectl with the admin kubeconfig, optionally feeding `stdin`.
pub fn kubectl(env: &KubeEnv, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", &env.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl is installed");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// kubectl that must succeed; returns stdout.
pub fn kubectl_ok(env: &KubeEnv, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(env, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs the CRD from `crds/` and waits until the API server serves it.
pub fn install_crd(env: &KubeEnv) {
    kubectl_ok(
        env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &format!("{REPO}/crds/"),
        ],
        None,
    );
    // `kubectl wait --for=condition=Established` fails at once, rather than waiting, while the
    // CRD has no conditions yet (right after a change applied by a test running in parallel):
    // poll the condition instead, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = kubectl(
            env,
            &[
                "get",
                "crd/dualwritepipelines.dualwrite.io",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ],
            None,
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "True" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CRD did not become Established within 60 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Creates a namespace with a unique name.
pub fn namespace(env: &KubeEnv, prefix: &str) -> String {
    let ns = super::unique(prefix);
    let ns = ns[..ns.len().min(50)].to_string();
    kubectl_ok(env, &["create", "namespace", &ns], None);
    ns
}

/// Writes a kubeconfig for `token`, optionally impersonating `as_user`.
pub fn write_kubeconfig(env: &KubeEnv, path: &Path, token: &str, as_user: Option<&str>) {
    let impersonate = as_user.map_or(String::new(), |u| format!("    as: {u}\n"));
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\n{impersonate}contexts:\n- name: c\n  context: {{cluster: test, user: u}}\ncurrent-context: c\n",
            env.server, env.ca_file
        ),
    )
    .unwrap();
}

/// The admin token of the test environment (from its kubeconfig).
pub fn admin_token(env: &KubeEnv) -> String {
    let text = std::fs::read_to_string(&env.kubeconfig).unwrap();
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("token:")
                .map(|t| t.trim().trim_matches('"').to_string())
        })
        .expect("the admin kubeconfig has a token")
}

/// Helm, installed (cached) by `hack/install-helm`.
pub fn helm() -> PathBuf {
    if let Ok(h) = std::env::var("HELM") {
        return PathBuf::from(h);
    }
    let out = Command::new(format!("{REPO}/hack/install-helm"))
        .output()
        .expect("hack/install-helm runs");
    assert!(
        out.status.success(),
        "hack/install-helm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    )
}

/// A child process killed when dropped; its output goes to a log file the test can read.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (the process finishes in-flight work and exits).
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The chart's ClusterRole(s), bound to the user of the operator's token: the operator gets
/// exactly what the chart grants.
pub fn grant_chart_rbac(env: &KubeEnv) {
    let rendered = Command::new(helm())
        .args([
            "template",
            "dw",
            &format!("{REPO}/charts/dualwrite-operator"),
            "--set",
            "crds.enabled=false",
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let text = String::from_utf8(rendered.stdout).unwrap();
    let roles: Vec<&str> = text
        .split("\n---")
        .filter(|doc| doc.contains("kind: ClusterRole\n"))
        .collect();
    assert!(!roles.is_empty(), "the chart renders a ClusterRole");
    for doc in &roles {
        kubectl_ok(env, &["apply", "-f", "-"], Some(doc));
    }
    let operator_role = roles
        .iter()
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap())
        .find(|v| {
            let rules = v["rules"].to_string();
            // Not the role for people who operate migrations (`kubectl dualwrite`).
            let for_people = v["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-migration-operator"));
            !for_people && rules.contains("statefulsets") && rules.contains("dualwritepipelines")
        })
        .expect("the operator's ClusterRole");
    let name = operator_role["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: e2e-dualwrite-operator}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {name}}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: dualwrite-operator}}\n"
    );
    kubectl_ok(env, &["apply", "-f", "-"], Some(&binding));
}

/// Env variables of the template whose value is a path inside the pod: a local run maps them
/// under its temp dir, where [`write_secret_volumes`] puts the Secret files and where the
/// `state` claim's mount lands ([`map_state_claim`]).
const POD_PATH_VARS: [&str; 2] = ["DUALWRITE_STATE_DIR", "DUALWRITE_SECRETS_DIR"];

/// Does what the StatefulSet controller and the kubelet do for the relay's backlog: the
/// container mounts the `state` claim (from the StatefulSet's volume claim template, a PVC per
/// relay) at the state directory; here that mount is a directory under `root`, the same for
/// every start with the same `root`, as a relay's PVC is the same across its pod's restarts.
/// Panics if the template no longer mounts a claim there (the test would no longer say what
/// the pod does).
fn map_state_claim(sts: &StatefulSet, root: &Path) {
    let spec = sts.spec.as_ref().unwrap();
    let claims: Vec<&str> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let mounts = spec.template.spec.as_ref().unwrap().containers[0]
        .volume_mounts
        .clone()
        .unwrap_or_default();
    let state = mounts
        .iter()
        .find(|m| claims.contains(&m.name.as_str()))
        .expect("the relay mounts a claim from the StatefulSet's volume claim template");
    std::fs::create_dir_all(root.join(state.mount_path.trim_start_matches('/'))).unwrap();
}

/// Does what the kubelet does for the template's `secret` volumes: for each one mounted into
/// the relay container, reads the Secret with the admin kubeconfig and writes the listed items
/// under `<root>/<mountPath>/<path>` (mode 0440). The volumes are optional, as the operator
/// writes them: a missing Secret leaves an empty directory, a missing key no file. Run it again
/// to emulate the kubelet rewriting the files after a Secret changed.
pub fn write_secret_volumes(env: &KubeEnv, d: &StatefulSet, root: &Path) {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let ns = d
        .metadata
        .namespace
        .as_deref()
        .expect("a namespaced StatefulSet");
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volumes = pod.volumes.clone().unwrap_or_default();
    for m in pod.containers[0].volume_mounts.clone().unwrap_or_default() {
        let Some(source) = volumes
            .iter()
            .find(|v| v.name == m.name)
            .and_then(|v| v.secret.clone())
        else {
            continue;
        };
        let secret = source
            .secret_name
            .expect("a secret volume names its Secret");
        let at = root.join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&at).unwrap();
        let out = kubectl(
            env,
            &["get", "secret", &secret, "-n", ns, "-o", "json"],
            None,
        );
        let data = if out.status.success() {
            serde_json::from_slice::<Value>(&out.stdout).unwrap()["data"].clone()
        } else {
            assert_eq!(
                source.optional,
                Some(true),
                "Secret {secret} is missing and its volume is not optional: the pod would not start"
            );
            Value::Null
        };
        for item in source.items.unwrap_or_default() {
            let file = at.join(&item.path);
            let _ = std::fs::remove_file(&file);
            let Some(encoded) = data[&item.key].as_str() else {
                continue;
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            std::fs::write(&file, bytes).unwrap();
            let mode = item.mode.or(source.default_mode).unwrap_or(0o644);
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode as u32)).unwrap();
        }
    }
}

/// The chart's own ServiceAccount, operator ClusterRole and ClusterRoleBinding, rendered as
/// release `release` in namespace `ns` (so their names are this test's own): the identity the
/// operator has in a real install. Returns that account's user name
/// (`system:serviceaccount:<ns>:<name>`). Remove the cluster-scoped objects with
/// [`remove_chart_service_account_rbac`].
pub fn install_chart_service_account_rbac(env: &KubeEnv, ns: &str, release: &str) -> String {
    let rendered = Command::new(helm())
        .args([
            "template",
            release,
            &format!("{REPO}/charts/dualwrite-operator"),
            "-n",
            ns,
            "--set",
            "crds.enabled=false,rbac.aggregatedRoles=false",
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let text = String::from_utf8(rendered.stdout).unwrap();
    let mut account = None;
    for doc in text.split("\n---") {
        let Ok(v) = serde_yaml::from_str::<Value>(doc) else {
            continue;
        };
        let kind = v["kind"].as_str().unwrap_or("");
        if !["ServiceAccount", "ClusterRole", "ClusterRoleBinding"].contains(&kind) {
            continue;
        }
        if kind == "ServiceAccount" {
            account = v["metadata"]["name"].as_str().map(str::to_string);
        }
        kubectl_ok(env, &["apply", "-n", ns, "-f", "-"], Some(doc));
    }
    format!(
        "system:serviceaccount:{ns}:{}",
        account.expect("the chart renders the operator's ServiceAccount")
    )
}

/// Deletes the cluster-scoped objects of [`install_chart_service_account_rbac`].
pub fn remove_chart_service_account_rbac(env: &KubeEnv, release: &str) {
    let name = format!("{release}-dualwrite-operator");
    let _ = kubectl(
        env,
        &[
            "delete",
            "--ignore-not-found",
            &format!("clusterrolebinding/{name}"),
            &format!("clusterrole/{name}"),
        ],
        None,
    );
}

/// Starts the relay as the StatefulSet's pod template says: its args and env, with the
/// downward API's POD_NAME filled in, the `state` claim's mount mapped to a directory under
/// `dir` ([`map_state_claim`]: the same `dir` is the same PVC) and the Secret volumes written
/// there as the kubelet would ([`write_secret_volumes`]; the Secrets are read with the admin
/// kubeconfig of [`kube_env`]).
pub fn start_relay_from_pod_template(d: &StatefulSet, dir: &Path, relay_kubeconfig: &Path) -> Proc {
    start_relay_logged(d, dir, relay_kubeconfig, "info")
}

/// [`start_relay_from_pod_template`] with the log filter `log_filter` (RUST_LOG).
pub fn start_relay_logged(
    d: &StatefulSet,
    dir: &Path,
    relay_kubeconfig: &Path,
    log_filter: &str,
) -> Proc {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    map_state_claim(d, dir);
    if pod.volumes.iter().flatten().any(|v| v.secret.is_some()) {
        let env = kube_env().expect("the API server the StatefulSet came from");
        write_secret_volumes(&env, d, dir);
    }
    let c = &pod.containers[0];
    let mut cmd = Command::new(BIN);
    cmd.args(c.args.clone().unwrap());
    for e in c.env.clone().unwrap_or_default() {
        let value = match (e.value, e.value_from) {
            (Some(v), _) if POD_PATH_VARS.contains(&e.name.as_str()) => {
                let local = dir.join(v.trim_start_matches('/'));
                std::fs::create_dir_all(&local).unwrap();
                local.to_string_lossy().into_owned()
            }
            (Some(v), _) => v,
            (None, Some(from)) => {
                let path = from
                    .field_ref
                    .expect("only fieldRef env in the template")
                    .field_path;
                assert_eq!(path, "metadata.name");
                "e2e-relay-0".to_string()
            }
            (None, None) => String::new(),
        };
        cmd.env(e.name, value);
    }
    // Outside the pod: the API server comes from a kubeconfig that impersonates the relay's
    // ServiceAccount, so the relay runs with exactly the Role the operator made for it.
    cmd.env("KUBECONFIG", relay_kubeconfig)
        .env("API_BIND", "127.0.0.1")
        .env("REPORT_INTERVAL", "1s")
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", log_filter);
    Proc::spawn(cmd, dir.join(format!("relay-{}.log", unique_suffix())))
}

fn unique_suffix() -> String {
    super::unique("r")
}

/// Starts `dualwrite operator` as a local process with only the chart's permissions (the
/// operator token's user bound to the chart's ClusterRole by [`grant_chart_rbac`]).
pub fn start_operator(env: &KubeEnv, dir: &Path, extra_args: &[&str]) -> Proc {
    start_operator_named(env, dir, "operator-e2e", extra_args)
}

/// A quota `name` in `ns` that allows none of `resource` (a quota key: `services`,
/// `count/jobs.batch`), enforced before this returns. Its status is written as the controller
/// manager's quota controller would (the test environment runs none before the node, and
/// admission enforces only a quota with a status), then `kubectl create <probe> probe -n ns`
/// is tried until the API server refuses it for the quota (a probe let through is deleted as
/// `kind`).
pub async fn enforced_zero_quota(
    env: &KubeEnv,
    ns: &str,
    name: &str,
    resource: &str,
    probe: &[&str],
    kind: &str,
) {
    kubectl_ok(
        env,
        &[
            "create",
            "quota",
            name,
            "-n",
            ns,
            &format!("--hard={resource}=0"),
        ],
        None,
    );
    let status = serde_json::json!({"status": {"hard": {resource: "0"}, "used": {resource: "0"}}});
    kubectl_ok(
        env,
        &[
            "patch",
            "resourcequota",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    );
    super::eventually(
        std::time::Duration::from_secs(30),
        "the API server enforces the quota",
        || async {
            let args: Vec<&str> = ["create"]
                .iter()
                .chain(probe)
                .chain(&["probe", "-n", ns])
                .copied()
                .collect();
            let out = kubectl(env, &args, None);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if !out.status.success() && err.contains("exceeded quota") {
                Ok(())
            } else {
                let _ = kubectl(env, &["delete", kind, "probe", "-n", ns], None);
                Err(format!("not refused yet: {err}"))
            }
        },
    )
    .await;
}

/// What most operator tests start from: the CRD installed, a namespace of their own and an
/// operator watching only it.
pub struct OperatorInNamespace {
    pub ns: String,
    /// Holds the operator's kubeconfig and log (under `operator/`); a test may put its own files
    /// here too. Bind it for as long as the operator runs.
    pub dir: tempfile::TempDir,
    pub operator: Proc,
}

/// Installs the CRD, creates a namespace named after `prefix` and starts an operator on it with
/// `--resync resync` and a placeholder relay image (these tests run no relay from it).
pub fn operator_in_namespace(env: &KubeEnv, prefix: &str, resync: &str) -> OperatorInNamespace {
    install_crd(env);
    let ns = namespace(env, prefix);
    let dir = tempfile::tempdir().unwrap();
    let operator = start_operator(
        env,
        &dir.path().join("operator"),
        &[
            "--namespace",
            &ns,
            "--resync",
            resync,
            "--relay-image",
            "example.org/dualwrite:e2e",
        ],
    );
    OperatorInNamespace { ns, dir, operator }
}

/// [`start_operator`] with a pod name of its own (leader election tells replicas apart by it);
/// its kubeconfig and log go into `dir`.
pub fn start_operator_named(env: &KubeEnv, dir: &Path, pod: &str, extra_args: &[&str]) -> Proc {
    start_operator_logged(env, dir, pod, extra_args, "info,kube=warn")
}

/// [`start_operator_named`] with the log filter `log_filter` (RUST_LOG).
pub fn start_operator_logged(
    env: &KubeEnv,
    dir: &Path,
    pod: &str,
    extra_args: &[&str],
    log_filter: &str,
) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    grant_chart_rbac(env);
    let kubeconfig = dir.join("operator.kubeconfig");
    write_kubeconfig(env, &kubeconfig, &env.operator_token, None);
    let mut cmd = Command::new(BIN);
    cmd.args(["operator", "--http-port", &free_port().to_string()])
        .args(extra_args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", pod)
        .env("RUST_LOG", log_filter);
    Proc::spawn(cmd, dir.join("operator.log"))
}

/// `kubectl auth can-i VERB RESOURCE -n NS --as AS`, asked by the admin: whether `as_user`
/// holds that permission.
pub fn can_i(env: &KubeEnv, verb: &str, resource: &str, ns: &str, as_user: &str) -> bool {
    let out = kubectl(
        env,
        &["auth", "can-i", verb, resource, "-n", ns, "--as", as_user],
        None,
    );
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i answered {answer:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

/// The user the operator runs as in these tests (the operator token's user).
pub const OPERATOR_USER: &str = "dualwrite-operator";

/// A kube client with the admin kubeconfig.
pub async fn admin_client(env: &KubeEnv) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Waits for the relay StatefulSet the operator creates for pipeline `name`.
pub async fn relay_statefulset(
    env: &KubeEnv,
    ns: &str,
    name: &str,
    operator: &Proc,
) -> StatefulSet {
    let statefulsets: kube::Api<StatefulSet> = kube::Api::namespaced(admin_client(env).await, ns);
    let relay = format!("{name}-relay");
    super::eventually(
        std::time::Duration::from_secs(60),
        "the relay StatefulSet exists",
        || async {
            statefulsets
                .get(&relay)
                .await
                .map_err(|e| format!("{e}; operator log:\n{}", operator.log_text()))
        },
    )
    .await
}

/// A kubeconfig (written into `dir`) that impersonates the consistency check's ServiceAccount
/// (`<name>-verify`) the operator made for pipeline `name`: `dualwrite verify` run with it has
/// exactly the Role the operator granted the check.
pub fn verify_kubeconfig(env: &KubeEnv, ns: &str, name: &str, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("verify.kubeconfig");
    let account = format!("system:serviceaccount:{ns}:{name}-verify");
    write_kubeconfig(env, &path, &admin_token(env), Some(&account));
    path
}

/// A kubeconfig (written into `dir`) that impersonates the relay ServiceAccount the operator made
/// for pipeline `name`: a relay run with it has exactly the Role the operator granted.
pub fn relay_kubeconfig(env: &KubeEnv, ns: &str, name: &str, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("relay.kubeconfig");
    let account = format!("system:serviceaccount:{ns}:{name}-relay");
    write_kubeconfig(env, &path, &admin_token(env), Some(&account));
    path
}
