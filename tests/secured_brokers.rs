//! The providers against the secured brokers of the test environment (Kafka SASL_SSL with
//! SCRAM-SHA-512, NATS over TLS with user/password), with credentials as Secret files under a
//! temporary secrets directory laid out as `<dir>/<secretName>/<key>`:
//! publish and read back with plain clients over TLS; a refused password; a missing Secret key
//! that heals once the file appears; rotation without a relay restart; and the planted-string
//! test: one marker in every credential, driven through the `dualwrite` binary in success and
//! failure, found in no log line, HTTP answer or `verify` output.
//!
//! Needs `. target/test-env/env.sh` of a test environment with the secured listeners
//! (KAFKA_SASL_SSL_BROKERS, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, NATS_TLS_URL, NATS_USER,
//! NATS_PASSWORD, TEST_CA_FILE).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, require_env, unique};
use dualwrite::message::DataMessage;
use dualwrite::provider::kafka::{KafkaConfig, KafkaProvider};
use dualwrite::provider::nats::{NatsConfig, NatsProvider};
use dualwrite::provider::secret::{KafkaAuth, NatsAuth, SaslMechanism, SecretFile, TlsFiles};
use dualwrite::provider::Provider;

const BIN: &str = env!("CARGO_BIN_EXE_dualwrite");
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Recovery bound: a supervisor round is 1s; a fresh SASL/TLS handshake takes well under that.
const HEAL: Duration = Duration::from_secs(30);

/// The secured brokers' addresses and credentials, from the environment.
struct Secured {
    kafka: String,
    kafka_user: String,
    kafka_password: String,
    nats_url: String,
    nats_user: String,
    nats_password: String,
    ca: String,
}

fn secured() -> Option<Secured> {
    Some(Secured {
        kafka: require_env("KAFKA_SASL_SSL_BROKERS")?,
        kafka_user: require_env("KAFKA_SASL_USERNAME")?,
        kafka_password: require_env("KAFKA_SASL_PASSWORD")?,
        nats_url: require_env("NATS_TLS_URL")?,
        nats_user: require_env("NATS_USER")?,
        nats_password: require_env("NATS_PASSWORD")?,
        ca: std::fs::read_to_string(require_env("TEST_CA_FILE")?).expect("read TEST_CA_FILE"),
    })
}

/// A secrets directory as the operator mounts one: `<dir>/<secretName>/<key>`.
struct Secrets(tempfile::TempDir);

impl Secrets {
    fn new(env: &Secured) -> Self {
        let s = Secrets(tempfile::tempdir().unwrap());
        s.write("test-ca", "ca.crt", &env.ca);
        s
    }

    fn dir(&self) -> &Path {
        self.0.path()
    }

    fn file(&self, secret: &str, key: &str) -> SecretFile {
        SecretFile::new(self.dir(), secret, key)
    }

    /// Writes a key the way the kubelet does: a new file moved into place, never half written.
    fn write(&self, secret: &str, key: &str, value: &str) {
        let path = self.dir().join(secret).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    fn tls(&self) -> TlsFiles {
        TlsFiles {
            trusted_certificates: vec![self.file("test-ca", "ca.crt")],
            client: None,
        }
    }
}

fn kafka_spec(env: &Secured, secrets: &Secrets, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: vec![env.kafka.clone()],
        topic: topic.into(),
        partitions: None,
        replication_factor: None,
        min_insync_replicas: None,
        key: Default::default(),
        group_id: None,
        config: Default::default(),
        tls: Some(secrets.tls()),
        auth: Some(KafkaAuth::Sasl {
            mechanism: SaslMechanism::ScramSha512,
            username: env.kafka_user.clone(),
            password: secrets.file("kafka-relay", "password"),
        }),
    }
}

fn nats_spec(env: &Secured, secrets: &Secrets, subject: &str) -> NatsConfig {
    NatsConfig {
        url: env.nats_url.clone(),
        subject: subject.into(),
        stream: None,
        durable: None,
        duplicate_window: None,
        replicas: None,
        tls: Some(secrets.tls()),
        auth: Some(NatsAuth::UserPassword {
            username: env.nats_user.clone(),
            password: secrets.file("nats-relay", "password"),
        }),
    }
}

/// Waits until `p`'s health has `reason` (and is down), and returns its message.
async fn reason_becomes(p: &dyn Provider, reason: &str) -> String {
    eventually(
        HEAL,
        &format!("{} health reason {reason}", p.name()),
        || async {
            let h = p.health();
            if !h.healthy && h.reason == reason {
                Ok(h.message)
            } else {
                Err(format!("{h:?}"))
            }
        },
    )
    .await
}

async fn becomes_healthy(p: &dyn Provider) -> Duration {
    let started = Instant::now();
    eventually(HEAL, &format!("{} healthy", p.name()), || async {
        let h = p.health();
        if h.healthy {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await;
    started.elapsed()
}

/// Publishes one message and returns its id.
async fn publish_one(p: &dyn Provider) -> String {
    let msg = DataMessage::new("secured-test", "hello over TLS");
    p.publish(&msg)
        .await
        .unwrap_or_else(|e| panic!("publish to {}: {e}", p.name()));
    msg.id
}

#[tokio::test]
async fn secured_providers_publish_and_read_back_over_tls() {
    common::init_tracing();
    let Some(env) = secured() else { return };
    let secrets = Secrets::new(&env);
    secrets.write(
        "kafka-relay",
        "password",
        &format!("{}\n", env.kafka_password),
    );
    secrets.write("nats-relay", "password", &env.nats_password);
    let (topic, subject) = (unique("secured"), unique("secured"));
    let kspec = kafka_spec(&env, &secrets, &topic);
    let nspec = nats_spec(&env, &secrets, &subject);
    let kafka = KafkaProvider::connect("kafka-sasl", &kspec, PUBLISH_TIMEOUT)
        .await
        .unwrap();
    let nats = NatsProvider::connect("nats-tls", &nspec, PUBLISH_TIMEOUT)
        .await
        .unwrap();
    becomes_healthy(&kafka).await;
    becomes_healthy(&nats).await;
    let (kid, nid) = (publish_one(&kafka).await, publish_one(&nats).await);

    // Read back with plain clients (the verify readers) over TLS, with the same credentials.
    let on_kafka = dualwrite::verify::kafka_ids(&kspec, None, i64::MAX)
        .await
        .unwrap();
    let on_nats = dualwrite::verify::nats_ids(&nspec, None, i64::MAX)
        .await
        .unwrap();
    assert_eq!(on_kafka, [kid]);
    assert_eq!(on_nats, [nid]);
    kafka.close().await.unwrap();
    nats.close().await.unwrap();
}

#[tokio::test]
async fn a_refused_password_is_authentication_failed_and_never_shown() {
    common::init_tracing();
    let Some(env) = secured() else { return };
    let secrets = Secrets::new(&env);
    let wrong = unique("wrong-password");
    secrets.write("kafka-relay", "password", &wrong);
    secrets.write("nats-relay", "password", &wrong);
    let kafka = KafkaProvider::connect(
        "kafka-sasl",
        &kafka_spec(&env, &secrets, &unique("refused")),
        PUBLISH_TIMEOUT,
    )
    .await
    .expect("a refused login does not fail connect");
    let nats = NatsProvider::connect(
        "nats-tls",
        &nats_spec(&env, &secrets, &unique("refused")),
        PUBLISH_TIMEOUT,
    )
    .await
    .expect("a refused login does not fail connect");
    for p in [&kafka as &dyn Provider, &nats] {
        let message = reason_becomes(p, "AuthenticationFailed").await;
        assert!(message.contains(p.name()), "{message}");
        assert!(!message.contains(&wrong), "{message}");
        let err = p
            .publish(&DataMessage::new("t", "x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(p.name()) && !err.contains(&wrong), "{err}");
        assert_eq!(
            p.health().reason,
            "AuthenticationFailed",
            "a publish keeps the cause"
        );
    }
    kafka.close().await.unwrap();
    nats.close().await.unwrap();
}

#[tokio::test]
async fn a_missing_secret_key_heals_when_the_file_appears() {
    common::init_tracing();
    let Some(env) = secured() else { return };
    let secrets = Secrets::new(&env);
    let kafka = KafkaProvider::connect(
        "kafka-sasl",
        &kafka_spec(&env, &secrets, &unique("missing")),
        PUBLISH_TIMEOUT,
    )
    .await
    .expect("a missing key does not fail connect");
    let nats = NatsProvider::connect(
        "nats-tls",
        &nats_spec(&env, &secrets, &unique("missing")),
        PUBLISH_TIMEOUT,
    )
    .await
    .expect("a missing key does not fail connect");
    for p in [&kafka as &dyn Provider, &nats] {
        let message = reason_becomes(p, "SecretMissing").await;
        assert!(
            message.contains("\"kafka-relay\"") || message.contains("\"nats-relay\""),
            "{message}"
        );
        assert!(message.contains("\"password\""), "{message}");
    }
    secrets.write("kafka-relay", "password", &env.kafka_password);
    secrets.write("nats-relay", "password", &env.nats_password);
    for p in [&kafka as &dyn Provider, &nats] {
        let took = becomes_healthy(p).await;
        eprintln!(
            "{}: healthy {took:?} after the Secret key appeared",
            p.name()
        );
        publish_one(p).await;
    }
    kafka.close().await.unwrap();
    nats.close().await.unwrap();
}

/// A wrong password fixed in place heals the provider; a rewrite of a working Secret (same
/// password, new file content) reconnects it while publishes run, and none of them fails.
#[tokio::test]
async fn rotation_reconnects_the_provider_and_loses_nothing() {
    common::init_tracing();
    let Some(env) = secured() else { return };
    let secrets = Secrets::new(&env);
    secrets.write("kafka-relay", "password", "wrong");
    secrets.write("nats-relay", "password", "wrong");
    let kspec = kafka_spec(&env, &secrets, &unique("rotation"));
    let nspec = nats_spec(&env, &secrets, &unique("rotation"));
    let kafka = Arc::new(
        KafkaProvider::connect("kafka-sasl", &kspec, PUBLISH_TIMEOUT)
            .await
            .unwrap(),
    );
    let nats = Arc::new(
        NatsProvider::connect("nats-tls", &nspec, PUBLISH_TIMEOUT)
            .await
            .unwrap(),
    );
    let providers: [Arc<dyn Provider>; 2] = [kafka.clone(), nats.clone()];
    for p in &providers {
        reason_becomes(p.as_ref(), "AuthenticationFailed").await;
    }
    secrets.write("kafka-relay", "password", &env.kafka_password);
    secrets.write("nats-relay", "password", &env.nats_password);
    for p in &providers {
        let took = becomes_healthy(p.as_ref()).await;
        eprintln!(
            "{}: healthy {took:?} after the password file was fixed",
            p.name()
        );
    }

    // Publish continuously while both Secrets are rewritten (same password, trailing newline:
    // new content, so each provider reconnects).
    let mut ids: [Vec<String>; 2] = Default::default();
    let writers: Vec<_> = providers
        .iter()
        .map(|p| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..60 {
                    let msg = DataMessage::new("rotation", format!("m{i}"));
                    p.publish(&msg)
                        .await
                        .unwrap_or_else(|e| panic!("publish during rotation: {e}"));
                    ids.push(msg.id);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ids
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    secrets.write(
        "kafka-relay",
        "password",
        &format!("{}\n", env.kafka_password),
    );
    secrets.write(
        "nats-relay",
        "password",
        &format!("{}\n", env.nats_password),
    );
    for (i, w) in writers.into_iter().enumerate() {
        ids[i] = w.await.unwrap();
    }
    let on_kafka = dualwrite::verify::kafka_ids(&kspec, None, i64::MAX)
        .await
        .unwrap();
    let on_nats = dualwrite::verify::nats_ids(&nspec, None, i64::MAX)
        .await
        .unwrap();
    assert_eq!(on_kafka, ids[0], "every Kafka write stored once, in order");
    assert_eq!(on_nats, ids[1], "every NATS write stored once, in order");
    kafka.close().await.unwrap();
    nats.close().await.unwrap();
}

// ---- the relay binary --------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay child process; killed on drop. Its stdout and stderr are collected.
struct RelayProcess {
    child: Child,
    port: u16,
    output: Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl RelayProcess {
    fn spawn(manifest: &Path, secrets: &Path, log_format: &str) -> Self {
        let port = free_port();
        let mut child = Command::new(BIN)
            .args(["relay", "-f"])
            .arg(manifest)
            .arg("--secrets-dir")
            .arg(secrets)
            .env("API_PORT", port.to_string())
            .env("API_BIND", "127.0.0.1")
            .env("LOG_FORMAT", log_format)
            // Trace, the most verbose level: the promise holds at every level.
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .env_remove("DUALWRITE_STATE_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(std::sync::Mutex::new(String::new()));
        let mut readers = Vec::new();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        Self {
            child,
            port,
            output,
            readers,
        }
    }

    /// Stops the relay with SIGTERM and returns everything it printed.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let out = self.output.lock().unwrap().clone();
        out
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to the relay; the status and the raw body (None: not listening yet).
fn request(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The health reasons of the relay's providers, by name, from `/stats`.
fn reasons(port: u16) -> Result<Vec<(String, String)>, String> {
    let (_, body) = request(port, "GET", "/stats", "").ok_or("not listening yet")?;
    let stats: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(stats["providers"]
        .as_array()
        .ok_or(body.clone())?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["health"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

/// A pipeline manifest with the given providers (YAML list items), FailFast.
fn manifest(dir: &Path, providers: &str) -> PathBuf {
    let path = dir.join(format!("{}.yaml", unique("pipeline")));
    let yaml = format!(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata:\n  name: secured\nspec:\n  strategy: FailFast\n  publishTimeout: 3s\n  providers:\n{providers}"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn kafka_item(name: &str, brokers: &str, user: &str, topic: &str) -> String {
    format!(
        "    - name: {name}\n      type: kafka\n      kafka:\n        brokers: [\"{brokers}\"]\n        topic: {topic}\n        tls:\n          trustedCertificates: [{{secretName: test-ca, certificate: ca.crt}}]\n        authentication:\n          type: scram-sha-512\n          username: {user}\n          passwordSecret: {{secretName: kafka-relay, password: password}}\n"
    )
}

fn nats_item(name: &str, url: &str, subject: &str, auth: &str) -> String {
    format!(
        "    - name: {name}\n      type: nats\n      nats:\n        url: \"{url}\"\n        subject: {subject}\n        tls:\n          trustedCertificates: [{{secretName: test-ca, certificate: ca.crt}}]\n{auth}"
    )
}

fn user_password(user: &str) -> String {
    format!("        authentication:\n          type: user-password\n          username: {user}\n          passwordSecret: {{secretName: nats-relay, password: password}}\n")
}

/// `tls://host:port` → `tls://<userinfo>@host:port`.
fn with_user_info(url: &str, userinfo: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    format!("{scheme}://{userinfo}@{rest}")
}

/// Runs `dualwrite verify -f manifest --secrets-dir dir` and returns its output (both streams).
fn verify_output(manifest: &Path, secrets: &Path) -> String {
    let out = Command::new(BIN)
        .args(["verify", "--settle", "0s", "-f"])
        .arg(manifest)
        .arg("--secrets-dir")
        .arg(secrets)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything a person can see of a running relay: the HTTP answers of every endpoint and of an
/// ingest request.
fn http_surface(port: u16) -> String {
    let mut seen = String::new();
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/ingest",
            r#"{"source":"planted","data":"x"}"#,
        ),
        (
            "POST",
            "/api/v1/ingest/batch",
            r#"[{"source":"planted","data":"y"}]"#,
        ),
        ("GET", "/ready", ""),
        ("GET", "/stats", ""),
        ("GET", "/metrics", ""),
        ("GET", "/health", ""),
        ("POST", "/api/v1/ingest", "not json"),
    ] {
        let (status, answer) = request(port, method, path, body).expect("relay answers");
        seen.push_str(&format!("{method} {path} -> {status}\n{answer}\n"));
    }
    seen
}

/// Wrong password under FailFast: 503 naming the provider; fixing the Secret file heals the
/// running relay (no restart) and the next message is stored.
#[tokio::test]
async fn relay_answers_503_naming_the_provider_and_heals_when_the_secret_is_fixed() {
    let Some(env) = secured() else { return };
    let secrets = Secrets::new(&env);
    secrets.write("kafka-relay", "password", "wrong");
    secrets.write("nats-relay", "password", "wrong");
    let (topic, subject) = (unique("relay-rotation"), unique("relay-rotation"));
    let providers = format!(
        "{}{}",
        kafka_item("kafka-sasl", &env.kafka, &env.kafka_user, &topic),
        nats_item(
            "nats-tls",
            &env.nats_url,
            &subject,
            &user_password(&env.nats_user)
        )
    );
    let manifest = manifest(secrets.dir(), &providers);
    let relay = RelayProcess::spawn(&manifest, secrets.dir(), "text");
    let port = relay.port;
    eventually(HEAL, "both providers AuthenticationFailed", || async {
        let r = reasons(port)?;
        if r.len() == 2 && r.iter().all(|(_, reason)| reason == "AuthenticationFailed") {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    let (status, body) = request(
        port,
        "POST",
        "/api/v1/ingest",
        r#"{"source":"s","data":"d"}"#,
    )
    .expect("relay answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("kafka-sasl") || body.contains("nats-tls"),
        "{body}"
    );
    let (status, _) = request(port, "GET", "/ready", "").unwrap();
    assert_eq!(status, 503);

    let pid = relay.child.id();
    secrets.write("kafka-relay", "password", &env.kafka_password);
    secrets.write("nats-relay", "password", &env.nats_password);
    let fixed = Instant::now();
    eventually(HEAL, "relay ready after the Secret was fixed", || async {
        match request(port, "GET", "/ready", "") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!(
        "relay ready {:?} after the password files were fixed",
        fixed.elapsed()
    );
    let (status, body) = request(
        port,
        "POST",
        "/api/v1/ingest",
        r#"{"source":"s","data":"after"}"#,
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["messageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(relay.child.id(), pid, "the same relay process");
    let kspec = kafka_spec(&env, &secrets, &topic);
    let nspec = nats_spec(&env, &secrets, &subject);
    assert_eq!(
        dualwrite::verify::kafka_ids(&kspec, None, i64::MAX)
            .await
            .unwrap(),
        std::slice::from_ref(&id)
    );
    assert_eq!(
        dualwrite::verify::nats_ids(&nspec, None, i64::MAX)
            .await
            .unwrap(),
        [id]
    );
    let log = relay.stop();
    assert!(
        log.contains("reconnected with the new value") || log.contains("first connection made"),
        "{log}"
    );
}

/// A run of the planted-string test: its name, its providers (manifest items), the Secret values
/// written for it (secret, key, value), and the strings that must appear nowhere.
type Phase<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str, &'a str)],
    Vec<&'a str>,
);

/// The planted-string test, relay side: one marker in every credential (Kafka password, NATS
/// password, NATS token, NATS nkey seed, a NATS URL's user-info), the relay driven through
/// success and failure (wrong credentials, brokers down) with text and JSON logs; the marker
/// (and, in the success run, the real passwords) appear in no log line, HTTP answer or
/// `dualwrite verify` output.
#[tokio::test]
async fn planted_credentials_are_never_shown() {
    let Some(env) = secured() else { return };
    let marker = format!("PLANTED{}", uuid::Uuid::new_v4().simple());
    let secrets = Secrets::new(&env);
    let subject = || unique("planted");
    let token_auth = "        authentication:\n          type: token\n          tokenSecret: {secretName: nats-token, key: token}\n";
    let nkey_auth = "        authentication:\n          type: nkey\n          seedSecret: {secretName: nats-nkey, key: seed}\n";
    let dead_port = free_port(); // nothing listens there

    // (phase, providers, Secret values, the strings that must not appear)
    let refused = format!(
        "{}{}{}{}{}",
        kafka_item(
            "kafka-sasl",
            &env.kafka,
            &env.kafka_user,
            &unique("planted")
        ),
        nats_item(
            "nats-password",
            &env.nats_url,
            &subject(),
            &user_password(&env.nats_user)
        ),
        nats_item("nats-token", &env.nats_url, &subject(), token_auth),
        nats_item("nats-nkey", &env.nats_url, &subject(), nkey_auth),
        nats_item(
            "nats-url-userinfo",
            &with_user_info(&env.nats_url, &format!("{}:{marker}", env.nats_user)),
            &subject(),
            ""
        ),
    );
    let down = format!(
        "{}{}",
        kafka_item(
            "kafka-down",
            &format!("127.0.0.1:{dead_port}"),
            &env.kafka_user,
            &unique("planted")
        ),
        nats_item(
            "nats-down",
            &format!("tls://{}:{marker}@127.0.0.1:{dead_port}", env.nats_user),
            &subject(),
            ""
        ),
    );
    let working = format!(
        "{}{}",
        kafka_item(
            "kafka-sasl",
            &env.kafka,
            &env.kafka_user,
            &unique("planted")
        ),
        nats_item(
            "nats-password",
            &env.nats_url,
            &subject(),
            &user_password(&env.nats_user)
        ),
    );
    let planted = [
        ("kafka-relay", "password", marker.as_str()),
        ("nats-relay", "password", marker.as_str()),
        ("nats-token", "token", marker.as_str()),
        ("nats-nkey", "seed", marker.as_str()),
    ];
    let real = [
        ("kafka-relay", "password", env.kafka_password.as_str()),
        ("nats-relay", "password", env.nats_password.as_str()),
    ];
    let phases: [Phase; 3] = [
        ("refused", refused.as_str(), &planted, vec![marker.as_str()]),
        ("down", down.as_str(), &planted, vec![marker.as_str()]),
        (
            "working",
            working.as_str(),
            &real,
            vec![env.kafka_password.as_str(), env.nats_password.as_str()],
        ),
    ];
    for (phase, providers, values, hidden) in phases {
        for (secret, key, value) in values {
            secrets.write(secret, key, value);
        }
        let manifest = manifest(secrets.dir(), providers);
        let count = providers.matches("- name:").count();
        for format in ["text", "json"] {
            let relay = RelayProcess::spawn(&manifest, secrets.dir(), format);
            let port = relay.port;
            // Wait until every provider has been through its connect path and settled.
            let settled = eventually(
                HEAL,
                &format!("{phase}/{format}: providers settled"),
                || async {
                    let r = reasons(port)?;
                    let done = r.len() == count
                        && r.iter().all(|(_, reason)| match phase {
                            "working" => reason == "Connected",
                            _ => reason != "Connecting",
                        });
                    if done {
                        Ok(r)
                    } else {
                        Err(format!("{r:?}"))
                    }
                },
            )
            .await;
            let mut seen = http_surface(port);
            seen.push_str(&verify_output(&manifest, secrets.dir()));
            let log = relay.stop();
            eprintln!(
                "{phase}/{format}: {settled:?}; {} log lines",
                log.lines().count()
            );
            // The failure and success paths really ran (the checks below are not vacuous).
            if phase == "refused" {
                for (name, reason) in &settled {
                    assert_eq!(reason, "AuthenticationFailed", "{phase}/{format}: {name}");
                }
                assert!(
                    seen.contains("-> 503") && seen.contains("refused"),
                    "{seen}"
                );
            }
            if phase == "working" {
                assert!(seen.contains("-> 202"), "{phase}/{format}: {seen}");
                assert!(seen.contains("\"consistent\""), "verify ran: {seen}");
            } else {
                assert!(
                    seen.contains("error:"),
                    "verify failed with a message: {seen}"
                );
            }
            for h in &hidden {
                assert!(
                    !seen.contains(h),
                    "{phase}/{format}: a secret in HTTP answers or verify output:\n{seen}"
                );
                assert!(
                    !log.contains(h),
                    "{phase}/{format}: a secret in the logs:\n{log}"
                );
            }
            assert!(!log.is_empty(), "the relay logged something");
        }
    }
}
