//! Helpers for tests on the real node of `hack/test-env up node`: relay pods that really run
//! from the project's image, reached by pod IP from the host (no kube-proxy here), and the
//! brokers at the addresses the node's pods use (`NATS_NODE_URL`, `KAFKA_NODE_BROKERS`) next to
//! the loopback ones the host's plain clients use.

use std::time::Duration;

use serde_json::Value;

use super::cluster::{kube_env, kubectl, kubectl_ok, KubeEnv, BIN};
use super::{require_env, under_ci, SETUP_HINT};

/// The cluster with a node, the relay image on it, and the brokers from both sides.
#[derive(Clone, Debug)]
pub struct NodeEnv {
    pub kube: KubeEnv,
    /// The image the operator runs relays from by default (its `--relay-image` default).
    pub relay_image: String,
    /// NATS and Kafka as the node's pods reach them (the node's bridge address).
    pub nats_node_url: String,
    pub kafka_node_brokers: String,
    /// The same brokers on 127.0.0.1, for plain clients on the host.
    pub nats_url: String,
    pub kafka_brokers: String,
}

/// What a missing piece means: a failure under CI, a loud skip elsewhere.
fn missing(what: &str) -> Option<NodeEnv> {
    let msg = format!(
        "{what}; these tests need the node and the relay image: {SETUP_HINT}, then \
         `hack/test-env up node && hack/build-image --import && . target/test-env/env.sh`"
    );
    if under_ci() {
        panic!("{msg} (CI=true)");
    }
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    None
}

/// The node's environment, or `None` (a loud skip; a failure under CI): the API server, a
/// Ready node, the brokers' node addresses, and the operator's default relay image imported
/// into the node's containerd.
pub fn node_env() -> Option<NodeEnv> {
    let kube = kube_env()?;
    let node = require_env("KUBE_NODE_NAME")?;
    let nats_node_url = require_env("NATS_NODE_URL")?;
    let kafka_node_brokers = require_env("KAFKA_NODE_BROKERS")?;
    let nats_url = require_env("NATS_URL")?;
    let kafka_brokers = require_env("KAFKA_BROKERS")?;
    let containerd = require_env("CONTAINERD_ADDRESS")?;
    let ready = kubectl(
        &kube,
        &[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        None,
    );
    if String::from_utf8_lossy(&ready.stdout).trim() != "True" {
        return missing(&format!("node {node} is not Ready"));
    }
    let relay_image = operator_default_relay_image();
    let images = std::process::Command::new("ctr")
        .args([
            "--address",
            &containerd,
            "-n",
            "k8s.io",
            "images",
            "ls",
            "-q",
        ])
        .output();
    let listed = match images {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            return missing(&format!(
                "ctr images ls failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
        Err(e) => return missing(&format!("cannot run ctr: {e}")),
    };
    if !listed.lines().any(|l| l.trim() == relay_image) {
        return missing(&format!(
            "the relay image {relay_image} is not on the node (hack/build-image --import)"
        ));
    }
    Some(NodeEnv {
        kube,
        relay_image,
        nats_node_url,
        kafka_node_brokers,
        nats_url,
        kafka_brokers,
    })
}

/// The operator's `--relay-image` default, from its own `--help`: the image the chart and the
/// operator use unchanged, which `hack/build-image` tags its image with.
pub fn operator_default_relay_image() -> String {
    let out = std::process::Command::new(BIN)
        .args(["operator", "--help"])
        .output()
        .expect("dualwrite operator --help runs");
    let help = String::from_utf8_lossy(&out.stdout);
    let at = help
        .find("--relay-image")
        .expect("the operator has a --relay-image flag");
    let rest = &help[at..];
    let start = rest
        .find("[default: ")
        .expect("--relay-image has a default")
        + 10;
    let end = rest[start..].find(']').unwrap() + start;
    rest[start..end].to_string()
}

/// One relay pod as the API server shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayPod {
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// The claim mounted as the relay's `state` volume.
    pub claim: Option<String>,
}

/// The relay pods of pipeline `name`, sorted by name.
pub fn relay_pods(env: &KubeEnv, ns: &str, name: &str) -> Vec<RelayPod> {
    let out = kubectl_ok(
        env,
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("dualwrite.io/pipeline={name}"),
            "-o",
            "json",
        ],
        None,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut pods: Vec<RelayPod> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| RelayPod {
            name: p["metadata"]["name"].as_str().unwrap_or("").into(),
            uid: p["metadata"]["uid"].as_str().unwrap_or("").into(),
            ip: p["status"]["podIP"].as_str().map(str::to_string),
            ready: p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            terminating: !p["metadata"]["deletionTimestamp"].is_null(),
            claim: p["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "state")
                .and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str())
                .map(str::to_string),
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods
}

/// What `kubectl describe` says of the relay pods of `name` (for failure messages).
pub fn describe_relay_pods(env: &KubeEnv, ns: &str, name: &str) -> String {
    let out = kubectl(
        env,
        &[
            "describe",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("dualwrite.io/pipeline={name}"),
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until relay pod `pod` is Ready (not terminating, and not the pod with uid `not_uid`
/// when given: a replacement) and returns it.
pub async fn ready_relay(
    env: &KubeEnv,
    ns: &str,
    name: &str,
    pod: &str,
    not_uid: Option<&str>,
    timeout: Duration,
) -> RelayPod {
    super::eventually(timeout, &format!("relay pod {pod} Ready"), || async {
        let pods = relay_pods(env, ns, name);
        match pods.iter().find(|p| p.name == pod) {
            Some(p)
                if p.ready
                    && !p.terminating
                    && p.ip.is_some()
                    && not_uid.is_none_or(|u| u != p.uid) =>
            {
                Ok(p.clone())
            }
            other => Err(format!(
                "{pod}: {other:?}\n{}",
                tail(&describe_relay_pods(env, ns, name), 2500)
            )),
        }
    })
    .await
}

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// An HTTP client for pod IPs: no proxy from the environment, short timeouts.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// POSTs one message to the relay at `ip:port`; returns the HTTP status and the body.
pub async fn post(client: &reqwest::Client, ip: &str, port: u16, data: &str) -> (u16, Value) {
    let resp = client
        .post(format!("http://{ip}:{port}/api/v1/ingest"))
        .json(&serde_json::json!({"source": "e2e-node", "data": data}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST to the relay pod at {ip}:{port}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// POSTs `n` messages at once (concurrently: with a broker down each may wait its publish
/// timeout) and returns the ids of those answered 202; panics on any other answer.
pub async fn post_accepted(
    client: &reqwest::Client,
    ip: &str,
    port: u16,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let answers = futures::future::join_all(
        (0..n).map(|i| async move { post(client, ip, port, &format!("{prefix} {i}")).await }),
    )
    .await;
    answers
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 202, "the relay at {ip} accepts: {body}");
            body["messageId"]
                .as_str()
                .expect("a 202 names the message id")
                .to_string()
        })
        .collect()
}

/// The relay's `/stats` on its pod IP.
pub async fn stats(client: &reqwest::Client, ip: &str, port: u16) -> Result<Value, String> {
    client
        .get(format!("http://{ip}:{port}/stats"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// Provider `provider`'s backlog in a `/stats` answer.
pub fn backlog_of(stats: &Value, provider: &str) -> Option<u64> {
    stats["providers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == provider)?["backlog"]
        .as_u64()
}

/// The pipeline as JSON (`kubectl get dwp`).
pub fn pipeline(env: &KubeEnv, ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl_ok(
        env,
        &["get", "dwp", name, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap()
}

/// Deletes a test's namespace when dropped, without waiting (its relay pods take their grace
/// period to drain); kept when `DUALWRITE_KEEP_NAMESPACES=1`, to look at after a failure.
pub struct NamespaceGuard {
    pub env: KubeEnv,
    pub ns: String,
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        if std::env::var("DUALWRITE_KEEP_NAMESPACES").is_ok_and(|v| v == "1") {
            eprintln!(
                "keeping namespace {} (DUALWRITE_KEEP_NAMESPACES=1)",
                self.ns
            );
            return;
        }
        let _ = kubectl(
            &self.env,
            &["delete", "namespace", &self.ns, "--wait=false"],
            None,
        );
    }
}
