//! End to end with secured brokers: Kafka SCRAM-SHA-512 over TLS and NATS over TLS with a user
//! and password, their credentials and CA in Secrets the test creates. The operator runs under
//! the chart's RBAC only (no access to Secrets, checked with `kubectl auth can-i`); each relay
//! runs as its pod template says, its Secret volumes written as the kubelet would.
//!
//! Three pipelines in one namespace:
//! - `secured`: the right credentials; 202s reach both brokers, read back with plain clients
//!   over TLS (rdkafka and async-nats configured here, not the relay's providers);
//! - `wrong`: a wrong Kafka password; the Kafka row is `ready: False` with a reason naming
//!   authentication, and FailFast answers 503 naming the provider;
//! - `planted`: every credential wrong and carrying one unique marker (Kafka and NATS
//!   passwords, the NATS URL's user-info);
//! - `missing`: a Kafka password Secret that does not exist; the relay still starts (the
//!   volume is optional) and the Kafka row reads `SecretMissing`, naming the Secret and key.
//!
//! Then the planted-string check: neither the marker nor the real passwords appear in any
//! pipeline's status, the namespace's Events, the operator's log or a relay's log.
//!
//! Needs `hack/test-env up` with the secured listeners and the API server (env.sh exports
//! `KAFKA_SASL_SSL_BROKERS`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `NATS_TLS_URL`,
//! `NATS_USER`, `NATS_PASSWORD`, `TEST_CA_FILE`, `KUBECONFIG`, ...).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{
    can_i, free_port, install_chart_service_account_rbac, install_crd, kube_env, kubectl_ok,
    namespace, relay_kubeconfig, relay_statefulset, remove_chart_service_account_rbac,
    start_operator_logged, start_relay_logged, KubeEnv, Proc, OPERATOR_USER,
};
use common::{eventually, require_env, unique};
use dualwrite::message::DataMessage;
use dualwrite::provider::nats::default_stream_name;
use serde_json::Value;

/// The secured brokers of the test environment.
struct Secured {
    kafka: String,
    kafka_user: String,
    kafka_password: String,
    nats_url: String,
    nats_user: String,
    nats_password: String,
    ca_file: String,
}

impl Secured {
    fn from_env() -> Option<Self> {
        Some(Self {
            kafka: require_env("KAFKA_SASL_SSL_BROKERS")?,
            kafka_user: require_env("KAFKA_SASL_USERNAME")?,
            kafka_password: require_env("KAFKA_SASL_PASSWORD")?,
            nats_url: require_env("NATS_TLS_URL")?,
            nats_user: require_env("NATS_USER")?,
            nats_password: require_env("NATS_PASSWORD")?,
            ca_file: require_env("TEST_CA_FILE")?,
        })
    }
}

/// Where a pipeline's providers find their credentials: the Secrets holding the Kafka and NATS
/// passwords, and the NATS URL.
struct Credentials<'a> {
    kafka_secret: &'a str,
    nats_secret: &'a str,
    nats_url: String,
}

fn pipeline_manifest(
    ns: &str,
    name: &str,
    port: u16,
    s: &Secured,
    c: &Credentials,
    subject: &str,
    topic: &str,
) -> String {
    format!(
        r#"apiVersion: dualwrite.io/v1alpha1
kind: DualWritePipeline
metadata: {{name: {name}, namespace: {ns}}}
spec:
  strategy: FailFast
  publishTimeout: 5s
  ingest: {{port: {port}}}
  relay: {{replicas: 1}}
  providers:
  - name: kafka
    type: kafka
    kafka:
      brokers: ["{kafka}"]
      topic: {topic}
      tls:
        trustedCertificates: [{{secretName: test-ca, certificate: ca.crt}}]
      authentication:
        type: scram-sha-512
        username: {kafka_user}
        passwordSecret: {{secretName: {kafka_secret}, password: password}}
  - name: nats
    type: nats
    nats:
      url: "{nats_url}"
      subject: {subject}
      tls:
        trustedCertificates: [{{secretName: test-ca, certificate: ca.crt}}]
      authentication:
        type: user-password
        username: {nats_user}
        passwordSecret: {{secretName: {nats_secret}, password: password}}
"#,
        kafka = s.kafka,
        kafka_user = s.kafka_user,
        nats_user = s.nats_user,
        kafka_secret = c.kafka_secret,
        nats_secret = c.nats_secret,
        nats_url = c.nats_url,
    )
}

/// A Secret with one key `password`, made with kubectl from a file (the value never appears on
/// a command line).
fn password_secret(env: &KubeEnv, ns: &str, name: &str, value: &str, dir: &Path) {
    let file = dir.join(format!("{name}.password"));
    std::fs::write(&file, value).unwrap();
    kubectl_ok(
        env,
        &[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            &format!("--from-file=password={}", file.display()),
        ],
        None,
    );
    std::fs::remove_file(file).unwrap();
}

fn status(env: &KubeEnv, ns: &str, name: &str) -> Value {
    let out = kubectl_ok(env, &["get", "dwp", name, "-n", ns, "-o", "json"], None);
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

fn provider_row(status: &Value, name: &str) -> Value {
    status["providers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn post(port: u16, id: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
        .timeout(Duration::from_secs(15))
        .json(&serde_json::json!({"source": "e2e-secured", "data": format!("message {id}"), "id": id}))
        .send()
        .await;
    match resp {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A relay started from pipeline `name`'s pod template, in a directory of its own.
async fn start_relay(env: &KubeEnv, ns: &str, name: &str, dir: &Path, operator: &Proc) -> Proc {
    let d = relay_statefulset(env, ns, name, operator).await;
    let relay_dir = dir.join(name);
    std::fs::create_dir_all(&relay_dir).unwrap();
    let kubeconfig = relay_kubeconfig(env, ns, name, &relay_dir);
    start_relay_logged(&d, &relay_dir, &kubeconfig, VERBOSE)
}

/// The logs searched for secrets are written at their most verbose (the dependencies' too, but
/// for the byte-level traces of rustls and the HTTP clients, which log no values, only sizes).
const VERBOSE: &str = "trace,rustls=debug,hyper=debug,hyper_util=debug,h2=debug,tower=debug";

/// Every record key (the message id) on `topic`, read with a plain rdkafka consumer over
/// SASL_SSL with SCRAM-SHA-512.
async fn kafka_ids(s: &Secured, topic: &str) -> Result<Vec<String>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let (brokers, user, password, ca) = (
        s.kafka.clone(),
        s.kafka_user.clone(),
        s.kafka_password.clone(),
        s.ca_file.clone(),
    );
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(20);
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", &user)
            .set("sasl.password", &password)
            .set("ssl.ca.location", &ca)
            .set("group.id", unique("e2e-secured-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let md = c
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or("topic not listed")?
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut remaining = 0i64;
        for p in &partitions {
            let (low, high) = c
                .fetch_watermarks(&topic, *p, timeout)
                .map_err(|e| e.to_string())?;
            remaining += high - low;
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        c.assign(&tpl).map_err(|e| e.to_string())?;
        let mut ids = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        while remaining > 0 && std::time::Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(500)) {
                let m = m.map_err(|e| e.to_string())?;
                ids.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
                remaining -= 1;
            }
        }
        Ok(ids)
    })
    .await
    .unwrap()
}

/// Every message id on `subject`'s stream, read with a plain async-nats client over TLS with
/// the user and password.
async fn nats_ids(s: &Secured, subject: &str) -> Result<Vec<String>, String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let client = async_nats::ConnectOptions::new()
        .user_and_password(s.nats_user.clone(), s.nats_password.clone())
        .add_root_certificates(PathBuf::from(&s.ca_file))
        .require_tls(true)
        .connection_timeout(Duration::from_secs(10))
        .connect(s.nats_url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(default_stream_name(subject))
        .await
        .map_err(|e| e.to_string())?;
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mut ids = Vec::new();
    if last == 0 {
        return Ok(ids);
    }
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
        let m = m.map_err(|e| e.to_string())?;
        let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
        ids.push(
            DataMessage::from_wire(&m.payload)
                .map(|d| d.id)
                .map_err(|e| e.to_string())?,
        );
        if seq >= last {
            break;
        }
    }
    Ok(ids)
}

/// `scheme://host:port` → `scheme://<user>:<password>@host:port`.
fn with_user_info(url: &str, user: &str, password: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{user}:{password}@{rest}"),
        None => format!("{user}:{password}@{url}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_brokers_run_under_the_operator_and_no_secret_shows() {
    let Some(env) = kube_env() else { return };
    let Some(s) = Secured::from_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "secured");
    let dir = tempfile::tempdir().unwrap();
    let marker = unique("planted");

    // The Secrets: the CA, the right passwords, a wrong Kafka password and the planted ones.
    kubectl_ok(
        &env,
        &[
            "create",
            "secret",
            "generic",
            "test-ca",
            "-n",
            &ns,
            &format!("--from-file=ca.crt={}", s.ca_file),
        ],
        None,
    );
    password_secret(&env, &ns, "kafka-relay", &s.kafka_password, dir.path());
    password_secret(&env, &ns, "nats-relay", &s.nats_password, dir.path());
    password_secret(
        &env,
        &ns,
        "kafka-wrong",
        &format!("{marker}-kafka-wrong"),
        dir.path(),
    );
    password_secret(
        &env,
        &ns,
        "kafka-planted",
        &format!("{marker}-kafka"),
        dir.path(),
    );
    password_secret(
        &env,
        &ns,
        "nats-planted",
        &format!("{marker}-nats"),
        dir.path(),
    );

    let operator = start_operator_logged(
        &env,
        &dir.path().join("operator"),
        "operator-e2e",
        &["--resync", "2s", "--namespace", &ns],
        VERBOSE,
    );

    let secured_port = free_port();
    let (subject, topic) = (
        unique("e2e.secured").replace('-', "_"),
        unique("e2e-secured"),
    );
    let pipelines = [
        (
            "secured",
            secured_port,
            Credentials {
                kafka_secret: "kafka-relay",
                nats_secret: "nats-relay",
                nats_url: s.nats_url.clone(),
            },
        ),
        (
            "wrong",
            free_port(),
            Credentials {
                kafka_secret: "kafka-wrong",
                nats_secret: "nats-relay",
                nats_url: s.nats_url.clone(),
            },
        ),
        (
            "planted",
            free_port(),
            Credentials {
                kafka_secret: "kafka-planted",
                nats_secret: "nats-planted",
                nats_url: with_user_info(
                    &s.nats_url,
                    &format!("{marker}-user"),
                    &format!("{marker}-url"),
                ),
            },
        ),
        (
            "missing",
            free_port(),
            Credentials {
                kafka_secret: "no-such-secret",
                nats_secret: "nats-relay",
                nats_url: s.nats_url.clone(),
            },
        ),
    ];
    for (name, port, creds) in &pipelines {
        kubectl_ok(
            &env,
            &["apply", "-f", "-"],
            Some(&pipeline_manifest(
                &ns, name, *port, &s, creds, &subject, &topic,
            )),
        );
    }

    // The pod template mounts exactly the referenced keys, one optional volume per Secret.
    let d = relay_statefulset(&env, &ns, "secured", &operator).await;
    let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let mut mounted: Vec<(String, Vec<String>, Option<bool>)> = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.secret)
        .map(|s| {
            (
                s.secret_name.unwrap(),
                s.items.unwrap().into_iter().map(|i| i.key).collect(),
                s.optional,
            )
        })
        .collect();
    mounted.sort();
    let password = vec!["password".to_string()];
    assert_eq!(
        mounted,
        vec![
            ("kafka-relay".into(), password.clone(), Some(true)),
            ("nats-relay".into(), password, Some(true)),
            ("test-ca".into(), vec!["ca.crt".to_string()], Some(true)),
        ]
    );

    // Neither the operator (the user it runs as here, and the chart's own ServiceAccount) nor a
    // relay may read a Secret through the API; each may do its own work (the control).
    let release = format!("e2e-{}", &unique("r")[2..14]);
    let chart_account = install_chart_service_account_rbac(&env, &ns, &release);
    for (who, allowed) in [
        (OPERATOR_USER.to_string(), "statefulsets"),
        (chart_account, "statefulsets"),
        (
            format!("system:serviceaccount:{ns}:secured-relay"),
            "dualwritepipelines/secured",
        ),
    ] {
        assert!(
            can_i(&env, "get", allowed, &ns, &who),
            "{who} can get {allowed}"
        );
        for verb in ["get", "list", "watch"] {
            assert!(
                !can_i(&env, verb, "secrets", &ns, &who),
                "{who} can {verb} secrets"
            );
        }
    }
    remove_chart_service_account_rbac(&env, &release);

    let mut relays = Vec::new();
    for (name, _, _) in &pipelines {
        relays.push(start_relay(&env, &ns, name, dir.path(), &operator).await);
    }

    // (a) The right credentials: 202s, and every message on both brokers.
    let ids: Vec<String> = (0..5).map(|i| format!("{}-{i}", unique("m"))).collect();
    let first = &ids[0];
    eventually(
        Duration::from_secs(90),
        "the secured relay accepts a message",
        || async {
            match post(secured_port, first).await {
                (202, _) => Ok(()),
                (code, body) => Err(format!(
                    "{code} {body}; relay log:\n{}",
                    relays[0].log_text()
                )),
            }
        },
    )
    .await;
    for id in &ids[1..] {
        let (code, body) = post(secured_port, id).await;
        assert_eq!(code, 202, "{body}");
    }
    let on_kafka = eventually(Duration::from_secs(30), "the messages on Kafka", || async {
        let got = kafka_ids(&s, &topic).await?;
        if ids.iter().all(|id| got.contains(id)) {
            Ok(got)
        } else {
            Err(format!("read {got:?}"))
        }
    })
    .await;
    let on_nats = eventually(Duration::from_secs(30), "the messages on NATS", || async {
        let got = nats_ids(&s, &subject).await?;
        if ids.iter().all(|id| got.contains(id)) {
            Ok(got)
        } else {
            Err(format!("read {got:?}"))
        }
    })
    .await;
    eprintln!(
        "read back over TLS: {} on Kafka, {} on NATS",
        on_kafka.len(),
        on_nats.len()
    );
    eventually(
        Duration::from_secs(60),
        "both rows of the secured pipeline are ready",
        || async {
            let st = status(&env, &ns, "secured");
            let ready = ["kafka", "nats"].map(|p| provider_row(&st, p)["ready"] == "True");
            if ready == [true, true] {
                Ok(())
            } else {
                Err(format!("status {st}"))
            }
        },
    )
    .await;

    // (b) A wrong Kafka password: the row names authentication, FailFast refuses naming Kafka.
    let kafka_row = eventually(
        Duration::from_secs(90),
        "the wrong pipeline's Kafka row is not ready, for authentication",
        || async {
            let row = provider_row(&status(&env, &ns, "wrong"), "kafka");
            let reason = row["reason"].as_str().unwrap_or("").to_lowercase();
            if row["ready"] == "False" && reason.contains("auth") {
                Ok(row)
            } else {
                Err(format!("row {row}; relay log:\n{}", relays[1].log_text()))
            }
        },
    )
    .await;
    eprintln!("wrong password, Kafka row: {kafka_row}");
    let wrong_port = pipelines[1].1;
    let refused = eventually(
        Duration::from_secs(30),
        "FailFast answers 503 naming kafka",
        || async {
            match post(wrong_port, &unique("w")).await {
                (503, body) if body.contains("kafka") => Ok(body),
                (code, body) => Err(format!("{code} {body}")),
            }
        },
    )
    .await;
    eprintln!("wrong password, POST: 503 {refused}");

    // (c) Every credential wrong and planted: both rows go not ready.
    eventually(
        Duration::from_secs(90),
        "the planted pipeline's rows are not ready",
        || async {
            let st = status(&env, &ns, "planted");
            let down = ["kafka", "nats"].map(|p| provider_row(&st, p)["ready"] == "False");
            if down == [true, true] {
                Ok(())
            } else {
                Err(format!("status {st}; relay log:\n{}", relays[2].log_text()))
            }
        },
    )
    .await;
    // (d) A Secret that does not exist: the optional volume lets the relay start, and the Kafka
    // row says which Secret and key are missing.
    let missing = eventually(
        Duration::from_secs(60),
        "the missing Secret is the Kafka row's reason",
        || async {
            let row = provider_row(&status(&env, &ns, "missing"), "kafka");
            let message = row["message"].as_str().unwrap_or("");
            if row["reason"] == "SecretMissing"
                && message.contains("no-such-secret")
                && message.contains("password")
            {
                Ok(row)
            } else {
                Err(format!("row {row}; relay log:\n{}", relays[3].log_text()))
            }
        },
    )
    .await;
    eprintln!("missing Secret, Kafka row: {missing}");

    let planted_file = dir
        .path()
        .join("planted/var/run/secrets/dualwrite/kafka-planted/password");
    assert!(
        std::fs::read_to_string(&planted_file).is_ok_and(|v| v.contains(&marker)),
        "the planted password reached the relay as its mounted file"
    );
    let (code, _) = post(pipelines[2].1, &unique("p")).await;
    eprintln!(
        "planted: POST {code}; rows {}",
        status(&env, &ns, "planted")["providers"]
    );

    // Nothing secret anywhere the operator or a relay writes.
    let statuses = kubectl_ok(
        &env,
        &["get", "dwp", "-n", &ns, "-o", "jsonpath={.items[*].status}"],
        None,
    );
    let core_events = kubectl_ok(&env, &["get", "events", "-n", &ns, "-o", "json"], None);
    let events = kubectl_ok(
        &env,
        &["get", "events.events.k8s.io", "-n", &ns, "-o", "json"],
        None,
    );
    let mut places = vec![
        ("the pipelines' status", statuses),
        ("the core Events", core_events),
        ("the events.k8s.io Events", events),
        ("the operator's log", operator.log_text()),
    ];
    for ((name, _, _), relay) in pipelines.iter().zip(&relays) {
        places.push((name, relay.log_text()));
    }
    assert!(
        places[0].1.contains("kafka") && !places[3].1.is_empty(),
        "the places searched hold what they should"
    );
    let mut secrets = vec![marker.clone()];
    // The real passwords too, when long enough not to match by chance.
    secrets.extend(
        [&s.kafka_password, &s.nats_password]
            .into_iter()
            .filter(|p| p.len() >= 8)
            .cloned(),
    );
    for (place, text) in &places {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a credential value appears in {place}"
            );
        }
    }
    eprintln!(
        "searched {} places ({} bytes) for {} secret strings: none found",
        places.len(),
        places.iter().map(|(_, t)| t.len()).sum::<usize>(),
        secrets.len()
    );

    drop(relays);
    drop(operator);
    let _ = kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}
