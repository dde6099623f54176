//! End to end on the real node (`hack/test-env up node`, `hack/build-image --import`): the
//! operator runs as a local process under the chart's RBAC, and its relay StatefulSet's pods
//! really run from the project's image on the node, with a PersistentVolumeClaim each, reading
//! their pipeline through the API server and writing to the brokers of `hack/test-env` at the
//! node's address. Messages go in by the pods' IPs (no kube-proxy here) and are read back with
//! plain clients on 127.0.0.1.
//!
//! - a pipeline applied with kubectl: relay pods Running and Ready, 202s, ids on both brokers;
//! - Kafka stopped under BestEffort: the backlog survives `kubectl delete pod` and
//!   `kubectl rollout restart` (same claim), then drains: `dualwrite verify` finds nothing missing;
//! - scale 2 → 1 while the relay being removed holds a backlog: nothing missing after Kafka
//!   returns;
//! - an unreachable broker and an image that does not exist are named by `kubectl describe dwp`
//!   within 30 s.
//! - a migration step with the `consistent` gate advances by itself once the operator's
//!   CronJob (`spec.consistency.schedule: "* * * * *"`) has run `dualwrite verify` on the node.
//!
//! They stop and start Kafka and each runs an operator that reconciles every namespace: run
//! them one at a time (`cargo test --test e2e_node -- --test-threads=1`, as `hack/test-all`
//! does). A missing node, image or broker fails them under `CI=true`.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::brokers::{kafka_ids, nats_ids};
use common::cluster::{install_crd, kubectl, kubectl_ok, namespace, start_operator, Proc, BIN};
use common::node::{
    backlog_of, describe_relay_pods, http, node_env, pipeline, post_accepted, ready_relay,
    relay_pods, stats, NamespaceGuard, NodeEnv, RelayPod,
};
use common::{eventually, unique, StoppedService};
use dualwrite::provider::nats::default_stream_name;
use serde_json::Value;

/// The relay's ingest port in these pipelines.
const PORT: u16 = 8080;

/// The first start of a relay pod: scheduling, claim provisioning, image unpack, readiness
/// probe (every 10 s).
const POD_READY: Duration = Duration::from_secs(120);

/// A relay pod replaced while a broker is down: its predecessor drains for up to the grace
/// period (45 s with the defaults) before the StatefulSet makes the new one.
const POD_REPLACED: Duration = Duration::from_secs(150);

/// One test's pipeline, namespace and operator.
struct Case {
    env: NodeEnv,
    ns: String,
    subject: String,
    topic: String,
    dir: tempfile::TempDir,
    started: Instant,
    // Dropped in this order: the namespace goes (not waited for), then the operator stops.
    _namespace: NamespaceGuard,
    operator: Proc,
}

impl Case {
    async fn new(prefix: &str) -> Option<Self> {
        let env = node_env()?;
        install_crd(&env.kube);
        let ns = namespace(&env.kube, prefix);
        let dir = tempfile::tempdir().unwrap();
        let operator = start_operator(&env.kube, dir.path(), &[]);
        let id = unique("n");
        Some(Self {
            subject: format!("e2e.node.{id}"),
            topic: format!("e2e-node-{id}"),
            _namespace: NamespaceGuard {
                env: env.kube.clone(),
                ns: ns.clone(),
            },
            env,
            ns,
            dir,
            started: Instant::now(),
            operator,
        })
    }

    fn elapsed(&self) -> String {
        format!("{:.1} s", self.started.elapsed().as_secs_f64())
    }

    /// A BestEffort or FailFast pipeline `name` over NATS and Kafka at the node's addresses
    /// (or `nats_url` instead), with `replicas` relays and a hinted-handoff backlog on each
    /// relay's claim; `image` overrides the relay image.
    fn manifest(
        &self,
        name: &str,
        strategy: &str,
        replicas: i32,
        nats_url: Option<&str>,
        image: Option<&str>,
    ) -> String {
        let nats = nats_url.unwrap_or(&self.env.nats_node_url);
        let image = image.map_or(String::new(), |i| format!("\n    image: {i}"));
        format!(
            r#"apiVersion: dualwrite.io/v1alpha1
kind: DualWritePipeline
metadata:
  name: {name}
  namespace: {ns}
spec:
  strategy: {strategy}
  publishTimeout: 2s
  handoff: {{enabled: true}}
  ingest: {{port: {PORT}}}
  relay:
    replicas: {replicas}
    storage: {{size: 16Mi}}{image}
  providers:
  - name: nats
    type: nats
    nats: {{url: "{nats}", subject: {subject}}}
  - name: kafka
    type: kafka
    kafka: {{brokers: ["{kafka}"], topic: {topic}}}
"#,
            ns = self.ns,
            subject = self.subject,
            kafka = self.env.kafka_node_brokers,
            topic = self.topic,
        )
    }

    /// `kubectl apply -f <file>` of `manifest`, as a user would.
    fn apply(&self, name: &str, manifest: &str) {
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        kubectl_ok(
            &self.env.kube,
            &["apply", "-f", file.to_str().unwrap()],
            None,
        );
    }

    fn operator_log_tail(&self) -> String {
        let log = self.operator.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every id on the NATS stream and the Kafka topic, read with plain clients on 127.0.0.1.
    async fn on_brokers(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let nats = nats_ids(
            &self.env.nats_url,
            &self.subject,
            &default_stream_name(&self.subject),
        )
        .await;
        let kafka = kafka_ids(&self.env.kafka_brokers, &self.topic).await;
        (nats.into_iter().collect(), kafka.into_iter().collect())
    }

    /// Waits until every id in `accepted` is on both brokers.
    async fn all_on_both_brokers(&self, accepted: &[String], timeout: Duration) {
        eventually(timeout, "every accepted id on NATS and Kafka", || async {
            let (nats, kafka) = self.on_brokers().await;
            let missing_nats: Vec<_> = accepted.iter().filter(|i| !nats.contains(*i)).collect();
            let missing_kafka: Vec<_> = accepted.iter().filter(|i| !kafka.contains(*i)).collect();
            if missing_nats.is_empty() && missing_kafka.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} missing on NATS, {} on Kafka (e.g. {:?})",
                    missing_nats.len(),
                    accepted.len(),
                    missing_kafka.len(),
                    missing_kafka
                        .iter()
                        .chain(&missing_nats)
                        .take(3)
                        .collect::<Vec<_>>()
                ))
            }
        })
        .await;
    }

    /// `dualwrite verify --pipeline NS/NAME` (the pipeline's providers, the verify readers):
    /// asserts it exits 0 and reports nothing missing; returns its report.
    fn verify(&self, name: &str) -> Value {
        let out = Command::new(BIN)
            .args([
                "verify",
                "--pipeline",
                &format!("{}/{name}", self.ns),
                "--settle",
                "0s",
            ])
            .env("KUBECONFIG", &self.env.kube.kubeconfig)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("$ dualwrite verify --pipeline {}/{name}\n{text}", self.ns);
        assert!(
            out.status.success(),
            "dualwrite verify: the brokers disagree or it failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The report is the JSON document after the log lines (which also go to stdout).
        let json = text.find("\n{").map_or(text.as_str(), |at| &text[at + 1..]);
        let report: Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("verify prints a JSON report ({e}): {text}"));
        for (provider, n) in report["missing"].as_object().unwrap() {
            assert_eq!(n, 0, "verify finds ids missing on {provider}: {report}");
        }
        report
    }

    /// The relay's `/stats` backlog of `provider` on pod `pod`, awaited until `check` holds.
    async fn backlog_until(
        &self,
        pod: &RelayPod,
        provider: &str,
        what: &str,
        check: impl Fn(u64) -> bool,
        timeout: Duration,
    ) -> u64 {
        let client = http();
        let ip = pod.ip.clone().unwrap();
        eventually(timeout, what, || async {
            let s = stats(&client, &ip, PORT).await?;
            match backlog_of(&s, provider) {
                Some(b) if check(b) => Ok(b),
                other => Err(format!("{} {provider} backlog {other:?}", pod.name)),
            }
        })
        .await
    }
}

/// The claim and its volume of relay pod `pod`.
fn claim_and_volume(c: &Case, pod: &RelayPod) -> (String, String) {
    let claim = pod
        .claim
        .clone()
        .unwrap_or_else(|| panic!("{} mounts a claim as its state volume", pod.name));
    let volume = kubectl_ok(
        &c.env.kube,
        &[
            "get",
            "pvc",
            &claim,
            "-n",
            &c.ns,
            "-o",
            "jsonpath={.spec.volumeName}",
        ],
        None,
    );
    (claim, volume)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_pods_take_messages_to_both_brokers() {
    common::init_tracing();
    let Some(c) = Case::new("e2e-node-a").await else {
        return;
    };
    c.apply("orders", &c.manifest("orders", "FailFast", 1, None, None));
    let pod = ready_relay(
        &c.env.kube,
        &c.ns,
        "orders",
        "orders-relay-0",
        None,
        POD_READY,
    )
    .await;
    println!(
        "[{}] relay pod {} Ready at {:?}",
        c.elapsed(),
        pod.name,
        pod.ip
    );
    let image = kubectl_ok(
        &c.env.kube,
        &[
            "get",
            "pod",
            &pod.name,
            "-n",
            &c.ns,
            "-o",
            "jsonpath={.spec.containers[0].image} {.status.phase}",
        ],
        None,
    );
    assert_eq!(
        image,
        format!("{} Running", c.env.relay_image),
        "the pod runs the operator's default image"
    );

    let accepted = post_accepted(&http(), pod.ip.as_deref().unwrap(), PORT, "a", 20).await;
    println!("[{}] 20 × 202 from the pod", c.elapsed());
    c.all_on_both_brokers(&accepted, Duration::from_secs(30))
        .await;
    println!("[{}] every id on NATS and Kafka", c.elapsed());

    // The relay read its pipeline and reports through the API server from inside the pod.
    eventually(
        Duration::from_secs(60),
        "Ready=True from the pod's report",
        || async {
            let p = pipeline(&c.env.kube, &c.ns, "orders");
            let ready = p["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
                .unwrap_or(Value::Null);
            let reported = p["status"]["relays"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["name"] == pod.name.as_str()));
            if ready["status"] == "True" && reported {
                Ok(())
            } else {
                Err(format!(
                    "Ready {ready}, relays {}; operator log:\n{}",
                    p["status"]["relays"],
                    c.operator_log_tail()
                ))
            }
        },
    )
    .await;
    println!("[{}] done", c.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_survives_pod_deletion_and_rollout_restart() {
    common::init_tracing();
    let Some(c) = Case::new("e2e-node-b").await else {
        return;
    };
    let kube = &c.env.kube;
    c.apply("orders", &c.manifest("orders", "BestEffort", 1, None, None));
    let pod = ready_relay(kube, &c.ns, "orders", "orders-relay-0", None, POD_READY).await;
    let (claim, volume) = claim_and_volume(&c, &pod);
    println!(
        "[{}] {} Ready at {:?}, claim {claim} on {volume}",
        c.elapsed(),
        pod.name,
        pod.ip
    );
    let client = http();
    let mut accepted = post_accepted(&client, pod.ip.as_deref().unwrap(), PORT, "b-up", 10).await;

    let kafka = StoppedService::stop("kafka").await;
    let while_down = post_accepted(&client, pod.ip.as_deref().unwrap(), PORT, "b-down", 30).await;
    accepted.extend(while_down);
    let backlog = c
        .backlog_until(
            &pod,
            "kafka",
            "kafka's backlog holds the 30 messages",
            |b| b >= 30,
            Duration::from_secs(30),
        )
        .await;
    println!("[{}] Kafka stopped, backlog {backlog}", c.elapsed());

    // The pod goes; the StatefulSet makes a new one on the same claim.
    kubectl_ok(
        kube,
        &["delete", "pod", &pod.name, "-n", &c.ns, "--wait=false"],
        None,
    );
    let second = ready_relay(
        kube,
        &c.ns,
        "orders",
        "orders-relay-0",
        Some(&pod.uid),
        POD_REPLACED,
    )
    .await;
    assert_eq!(
        claim_and_volume(&c, &second),
        (claim.clone(), volume.clone()),
        "the new pod has the same claim and volume"
    );
    let after_delete = c
        .backlog_until(
            &second,
            "kafka",
            "the new pod holds the backlog",
            |b| b > 0,
            Duration::from_secs(30),
        )
        .await;
    println!(
        "[{}] after kubectl delete pod: {} at {:?}, backlog {after_delete}",
        c.elapsed(),
        second.name,
        second.ip
    );
    assert_eq!(after_delete, backlog, "the whole backlog came back");

    // A rollout restart replaces it again, the StatefulSet's way.
    kubectl_ok(
        kube,
        &[
            "rollout",
            "restart",
            "statefulset/orders-relay",
            "-n",
            &c.ns,
        ],
        None,
    );
    let third = ready_relay(
        kube,
        &c.ns,
        "orders",
        "orders-relay-0",
        Some(&second.uid),
        POD_REPLACED,
    )
    .await;
    assert_eq!(
        claim_and_volume(&c, &third),
        (claim.clone(), volume.clone()),
        "the restarted pod has the same claim and volume"
    );
    let after_restart = c
        .backlog_until(
            &third,
            "kafka",
            "the restarted pod holds the backlog",
            |b| b > 0,
            Duration::from_secs(30),
        )
        .await;
    println!(
        "[{}] after rollout restart: {} at {:?}, backlog {after_restart}",
        c.elapsed(),
        third.name,
        third.ip
    );
    assert_eq!(after_restart, backlog, "the whole backlog came back again");

    kafka.start().await;
    c.backlog_until(
        &third,
        "kafka",
        "kafka's backlog replayed",
        |b| b == 0,
        Duration::from_secs(90),
    )
    .await;
    println!("[{}] Kafka back, backlog replayed", c.elapsed());
    c.all_on_both_brokers(&accepted, Duration::from_secs(30))
        .await;
    c.verify("orders");
    println!(
        "[{}] done: {} accepted, none missing",
        c.elapsed(),
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_keeps_the_removed_relays_backlog() {
    common::init_tracing();
    let Some(c) = Case::new("e2e-node-c").await else {
        return;
    };
    let kube = &c.env.kube;
    c.apply("orders", &c.manifest("orders", "BestEffort", 2, None, None));
    let r0 = ready_relay(kube, &c.ns, "orders", "orders-relay-0", None, POD_READY).await;
    let r1 = ready_relay(kube, &c.ns, "orders", "orders-relay-1", None, POD_READY).await;
    println!(
        "[{}] relays Ready at {:?} and {:?}",
        c.elapsed(),
        r0.ip,
        r1.ip
    );
    let client = http();
    let mut accepted = post_accepted(&client, r0.ip.as_deref().unwrap(), PORT, "c0", 10).await;
    accepted.extend(post_accepted(&client, r1.ip.as_deref().unwrap(), PORT, "c1", 10).await);

    let kafka = StoppedService::stop("kafka").await;
    accepted.extend(post_accepted(&client, r1.ip.as_deref().unwrap(), PORT, "c1-down", 30).await);
    let backlog = c
        .backlog_until(
            &r1,
            "kafka",
            "relay-1 holds kafka's backlog",
            |b| b >= 30,
            Duration::from_secs(30),
        )
        .await;
    println!("[{}] Kafka stopped, relay-1 backlog {backlog}", c.elapsed());
    // The operator knows a relay's backlog from the relay's reports in status, which follow
    // `/stats` within one report interval (README, hinted handoff): the scale-down is asked for
    // once relay-1 has reported it.
    eventually(
        Duration::from_secs(60),
        "relay-1 reports its backlog into the status",
        || async {
            let p = pipeline(kube, &c.ns, "orders");
            let reported: u64 = p["status"]["relays"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["name"] == "orders-relay-1")
                .flat_map(|r| r["providers"].as_array().cloned().unwrap_or_default())
                .filter_map(|row| row["backlog"].as_u64())
                .sum();
            if reported > 0 {
                Ok(reported)
            } else {
                Err("relay-1's report shows no backlog yet".to_string())
            }
        },
    )
    .await;

    kubectl_ok(
        kube,
        &["scale", "dwp/orders", "-n", &c.ns, "--replicas=1"],
        None,
    );
    // The operator has seen the scale-down once the status observed the new generation and the
    // StatefulSet says what it made of it: scaled to 1, or held at 2 for relay-1's backlog.
    let held = eventually(
        Duration::from_secs(60),
        "the operator acts on the scale-down",
        || async {
            let p = pipeline(kube, &c.ns, "orders");
            let observed = p["status"]["observedGeneration"] == p["metadata"]["generation"];
            let sts: Value = serde_json::from_str(&kubectl_ok(
                kube,
                &[
                    "get",
                    "statefulset",
                    "orders-relay",
                    "-n",
                    &c.ns,
                    "-o",
                    "json",
                ],
                None,
            ))
            .unwrap();
            let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(-1);
            let held = sts["metadata"]["annotations"]
                .get("dualwrite.io/scale-down-held-since")
                .is_some();
            if observed && (replicas == 1 || held) {
                Ok((replicas, held))
            } else {
                Err(format!(
                    "observed {observed}, StatefulSet replicas {replicas}, held {held}"
                ))
            }
        },
    )
    .await;
    let pods = relay_pods(kube, &c.ns, "orders");
    println!(
        "[{}] scale-down seen: StatefulSet replicas {}, held {}, pods {:?}",
        c.elapsed(),
        held.0,
        held.1,
        pods.iter()
            .map(|p| (&p.name, p.terminating))
            .collect::<Vec<_>>()
    );
    assert!(
        held.1 && held.0 == 2 && pods.iter().any(|p| p.name == "orders-relay-1" && !p.terminating),
        "the operator removed relay-1 while it held a backlog of {backlog} (StatefulSet replicas {}, \
         pods {pods:?}): its messages would wait on its retained claim until a scale-up",
        held.0
    );

    kafka.start().await;
    eventually(
        Duration::from_secs(120),
        "relay-1 drained and scaled away",
        || async {
            let pods = relay_pods(kube, &c.ns, "orders");
            if pods.iter().any(|p| p.name == "orders-relay-1") {
                Err(format!(
                    "pods {pods:?}; operator log:\n{}",
                    c.operator_log_tail()
                ))
            } else {
                Ok(())
            }
        },
    )
    .await;
    println!("[{}] relay-1 gone after draining", c.elapsed());
    c.all_on_both_brokers(&accepted, Duration::from_secs(30))
        .await;
    c.verify("orders");
    println!(
        "[{}] done: {} accepted, none missing",
        c.elapsed(),
        accepted.len()
    );
}

/// The `Ready` condition's reason and message, and `kubectl describe dwp NAME`.
fn ready_and_describe(c: &Case, name: &str) -> (String, String, String) {
    let p = pipeline(&c.env.kube, &c.ns, name);
    let ready = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    let out = kubectl(&c.env.kube, &["describe", "dwp", name, "-n", &c.ns], None);
    (
        ready["reason"].as_str().unwrap_or("").to_string(),
        ready["message"].as_str().unwrap_or("").to_string(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_names_an_unreachable_broker_and_a_missing_image() {
    common::init_tracing();
    let Some(c) = Case::new("e2e-node-d").await else {
        return;
    };
    // Nothing listens on port 1 of the node's address: the relay's NATS connection is refused.
    let node_ip = c
        .env
        .nats_node_url
        .trim_start_matches("nats://")
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    let unreachable = format!("nats://{node_ip}:1");
    let applied = Instant::now();
    c.apply(
        "unreachable",
        &c.manifest("unreachable", "FailFast", 1, Some(&unreachable), None),
    );
    c.apply(
        "noimage",
        &c.manifest(
            "noimage",
            "FailFast",
            1,
            None,
            Some("dualwrite.test/nope:0"),
        ),
    );

    let (reason, message, describe) = eventually(
        Duration::from_secs(30),
        "kubectl describe dwp unreachable names the unreachable broker",
        || async {
            let (reason, message, describe) = ready_and_describe(&c, "unreachable");
            // The spec shows the address too: look at what describe says under Status.
            let status = describe.split_once("\nStatus:").map_or("", |(_, s)| s);
            if reason == "ProvidersNotReady"
                && message.contains(&unreachable)
                && status.contains(&unreachable)
                && status.to_lowercase().contains("refused")
            {
                Ok((reason, message, describe))
            } else {
                Err(format!(
                    "Ready {reason}: {message}\n{describe}\n{}",
                    describe_relay_pods(&c.env.kube, &c.ns, "unreachable")
                ))
            }
        },
    )
    .await;
    println!(
        "[{:.1} s after apply] unreachable broker: Ready {reason}: {message}\n{describe}",
        applied.elapsed().as_secs_f64()
    );

    let (reason, message, describe) = eventually(
        Duration::from_secs(30)
            .saturating_sub(applied.elapsed())
            .max(Duration::from_secs(1)),
        "kubectl describe dwp noimage names the image that cannot be pulled",
        || async {
            let (reason, message, describe) = ready_and_describe(&c, "noimage");
            let status = describe.split_once("\nStatus:").map_or("", |(_, s)| s);
            if reason == "RelayImagePullFailed" && status.contains("dualwrite.test/nope:0") {
                Ok((reason, message, describe))
            } else {
                Err(format!(
                    "Ready {reason}: {message}\n{describe}\n{}",
                    describe_relay_pods(&c.env.kube, &c.ns, "noimage")
                ))
            }
        },
    )
    .await;
    println!(
        "[{:.1} s after apply] missing image: Ready {reason}: {message}\n{describe}",
        applied.elapsed().as_secs_f64()
    );
    assert!(
        describe.contains("Warning") && describe.contains("RelayImagePullFailed"),
        "a Warning Event names the pull failure:\n{describe}"
    );
}

/// A migration step with the `consistent` gate advances by itself once the operator's CronJob
/// has run `dualwrite verify --pipeline` on the node and found the brokers agree: no Job
/// written by hand. Without `spec.consistency.schedule` the gate holds ("no consistency check
/// has run yet"); with `* * * * *` the next minute's run opens it; the CronJob goes with the
/// pipeline (garbage collection on its owner reference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_check_opens_the_consistent_gate_by_itself() {
    common::init_tracing();
    let Some(c) = Case::new("e2e-node-sched").await else {
        return;
    };
    let name = "checked";
    let migration = "  migration:\n    steps:\n    - {name: dual-write, strategy: FailFast, gates: {consistent: true}}\n    - {name: read-kafka, strategy: FailFast, readFrom: kafka}\n";
    let without = c.manifest(name, "FailFast", 1, None, None) + migration;
    c.apply(name, &without);
    let pod = ready_relay(&c.env.kube, &c.ns, name, "checked-relay-0", None, POD_READY).await;
    let accepted = post_accepted(&http(), pod.ip.as_deref().unwrap(), PORT, "s", 20).await;
    c.all_on_both_brokers(&accepted, Duration::from_secs(30))
        .await;
    println!("[{}] 20 ids on NATS and Kafka", c.elapsed());
    let step = |p: &Value| {
        (
            p["status"]["migration"]["currentStep"].as_u64(),
            p["status"]["migration"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    };
    eventually(
        Duration::from_secs(60),
        "without a schedule the consistent gate holds the first step",
        || async {
            let (at, message) = step(&pipeline(&c.env.kube, &c.ns, name));
            if at == Some(0) && message.contains("no consistency check has run yet") {
                Ok(())
            } else {
                Err(format!("step {at:?}: {message}"))
            }
        },
    )
    .await;

    let scheduled = without + "  consistency: {schedule: '* * * * *', settle: 5s}\n";
    c.apply(name, &scheduled);
    let scheduled_at = Instant::now();
    let p = eventually(
        Duration::from_secs(240),
        "the scheduled check opens the consistent gate",
        || async {
            let p = pipeline(&c.env.kube, &c.ns, name);
            match step(&p) {
                (Some(1), _) => Ok(p),
                (at, message) => Err(format!(
                    "step {at:?}: {message}\njobs:\n{}\noperator log:\n{}",
                    kubectl_ok(
                        &c.env.kube,
                        &["get", "jobs,pods", "-n", &c.ns, "-o", "wide"],
                        None
                    ),
                    c.operator_log_tail()
                )),
            }
        },
    )
    .await;
    println!(
        "[{}] step read-kafka {:.1} s after the schedule was applied: {}",
        c.elapsed(),
        scheduled_at.elapsed().as_secs_f64(),
        p["status"]["migration"]["message"]
    );
    let verdict = &p["status"]["consistency"];
    assert_eq!(verdict["consistent"], true, "{verdict}");
    for provider in ["nats", "kafka"] {
        assert!(
            verdict["seen"][provider].as_u64().unwrap_or(0) >= 20,
            "the check read the 20 messages on {provider}: {verdict}"
        );
    }
    // Every Job in the namespace is the CronJob's, and one of them succeeds (the verdict is
    // written before the pod exits: the Job's status follows).
    eventually(
        Duration::from_secs(60),
        "the CronJob's Job succeeds, and no other Job exists",
        || async {
            let jobs: Value = serde_json::from_str(&kubectl_ok(
                &c.env.kube,
                &["get", "jobs", "-n", &c.ns, "-o", "json"],
                None,
            ))
            .unwrap();
            let jobs = jobs["items"].as_array().cloned().unwrap_or_default();
            for job in &jobs {
                let owner = &job["metadata"]["ownerReferences"][0];
                assert_eq!(
                    (owner["kind"].as_str(), owner["name"].as_str()),
                    (Some("CronJob"), Some("checked-verify")),
                    "{job}"
                );
            }
            if jobs.iter().any(|j| j["status"]["succeeded"] == 1) {
                Ok(())
            } else {
                Err(format!(
                    "no Job succeeded yet: {:?}",
                    jobs.iter().map(|j| &j["status"]).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;

    kubectl_ok(&c.env.kube, &["delete", "dwp", name, "-n", &c.ns], None);
    eventually(
        Duration::from_secs(60),
        "the CronJob goes with its pipeline",
        || async {
            let out = kubectl(
                &c.env.kube,
                &["get", "cronjob", "checked-verify", "-n", &c.ns],
                None,
            );
            if out.status.success() {
                Err("still there".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    println!("[{}] done", c.elapsed());
}
