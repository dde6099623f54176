//! The ingest API closed and hard to exhaust, over real HTTP on 127.0.0.1 with in-process
//! providers (no outside service): bearer tokens (401), TLS (a test CA made with the `openssl`
//! command at test time), the probe port, slowloris connections, the connection cap, the cap on
//! requests in flight (503 + `Retry-After`), the request timeout (408/503), and the `dualwrite`
//! binary draining a request in flight on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::eventually;
use dualwrite::composite::{Composite, Strategy};
use dualwrite::provider::secret::{CertAndKey, SecretFile};
use dualwrite::provider::{self, Provider};
use dualwrite::relay::listener::IngestServer;
use dualwrite::relay::pipeline::IngestConfig;
use dualwrite::relay::{self, PipelineConfig, Relay};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "tok-3f9a1c0e-right";
const BODY: &str = r#"{"source":"test","data":"secured"}"#;

/// A relay served on 127.0.0.1:0 (and a probe port when asked), stopped on drop of `stop`.
struct Running {
    /// `http://` or `https://` and the ingest address.
    base: String,
    /// `http://` and the probe address, when the probes have a port of their own.
    probes: Option<String>,
    relay: Arc<Relay>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }

    fn ingest_url(&self) -> String {
        format!("{}/api/v1/ingest", self.base)
    }

    fn addr(&self) -> String {
        self.base.rsplit('/').next().unwrap().to_string()
    }
}

/// Serves `composite` (two memory queues when `None`) with these ingest settings.
async fn start(ingest: IngestConfig, composite: Option<Composite>, probe_port: bool) -> Running {
    let mut config = PipelineConfig::two_memory_queues();
    config.ingest = ingest;
    let composite = match composite {
        Some(c) => c,
        None => relay::build_composite(&config).await.unwrap(),
    };
    let tls = config.ingest.tls.is_some();
    let relay = Relay::new(composite, config);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probes = match probe_port {
        true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        false => None,
    };
    let server = IngestServer::new(relay.clone(), tcp, probes).unwrap();
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", server.local_addr().unwrap());
    let probes = server.probe_addr().map(|a| format!("http://{a}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay::serve_with(server, async {
        let _ = rx.await;
    }));
    Running {
        base,
        probes,
        relay,
        stop: Some(tx),
        server,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A Secret key as the relay reads it: `<dir>/<secret>/<key>`.
fn secret_file(dir: &Path, secret: &str, key: &str, content: &[u8]) -> SecretFile {
    let f = SecretFile::new(dir, secret, key);
    std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
    std::fs::write(&f.path, content).unwrap();
    f
}

fn with_tokens(dir: &Path) -> IngestConfig {
    IngestConfig {
        tokens: Some(secret_file(
            dir,
            "ingest-tokens",
            "tokens",
            format!("other-token\n{TOKEN}\n").as_bytes(),
        )),
        ..IngestConfig::default()
    }
}

async fn metrics_text(url: &str, token: Option<&str>) -> String {
    let mut req = client().get(format!("{url}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn without_the_right_bearer_token_ingest_is_refused_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(with_tokens(dir.path()), None, false).await;
    let c = client();
    let send = |token: Option<&'static str>, header: Option<&'static str>| {
        let mut req = c.post(r.ingest_url()).body(BODY);
        req = req.header("content-type", "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        req.send()
    };

    for (token, header, challenge) in [
        (None, None, "Bearer realm=\"dualwrite\""),
        (
            None,
            Some("Basic dXNlcjpwYXNz"),
            "Bearer realm=\"dualwrite\"",
        ),
        (
            Some("tok-3f9a1c0e-wrong"),
            None,
            "Bearer realm=\"dualwrite\", error=\"invalid_token\"",
        ),
        (
            Some("tok-3f9a1c0e-righ"),
            None,
            "Bearer realm=\"dualwrite\", error=\"invalid_token\"",
        ),
    ] {
        let resp = send(token, header).await.unwrap();
        assert_eq!(resp.status(), 401, "{token:?} {header:?}");
        assert_eq!(resp.headers()["www-authenticate"], challenge);
        let body: Value = resp.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("token"), "{error}");
        assert!(!error.contains("tok-3f9a1c0e"), "{error}");
    }
    let resp = send(Some(TOKEN), None).await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "accepted");
    let resp = send(Some("other-token"), None).await.unwrap();
    assert_eq!(resp.status(), 202, "every token in the file is accepted");

    // Probes need no token (a kubelet has none); stats and metrics do.
    for path in ["/health", "/ready"] {
        let resp = c.get(format!("{}{path}", r.base)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    for path in ["/stats", "/metrics"] {
        let resp = c.get(format!("{}{path}", r.base)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    let text = metrics_text(&r.base, Some(TOKEN)).await;
    for line in [
        "dualwrite_ingest_rejected_total{reason=\"unauthorized\"} 6",
        "dualwrite_ingest_requests_total{outcome=\"accepted\"} 2",
    ] {
        assert!(has_line(&text, line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("tok-3f9a1c0e"));
    r.shutdown().await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the `openssl` command:
/// (CA certificate PEM, server certificate PEM, server key PEM).
fn test_certificates(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the `openssl` command is needed to make the test certificates (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    run(&[
        &["req", "-x509", "-nodes", "-days", "2"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=dualwrite test CA",
        ],
    ]
    .concat());
    run(&[
        &["req", "-nodes"][..],
        &ec,
        &[
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "tls.crt",
        "-extfile",
        "ext.cnf",
    ]);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    (read("ca.crt"), read("tls.crt"), read("tls.key"))
}

#[tokio::test]
async fn tls_and_tokens_on_ingest_with_plain_probes_on_their_own_port() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let secrets = dir.path().join("secrets");
    let mut ingest = with_tokens(&secrets);
    ingest.tls = Some(CertAndKey {
        certificate: secret_file(&secrets, "ingest-tls", "tls.crt", &cert),
        key: secret_file(&secrets, "ingest-tls", "tls.key", &key),
    });
    let r = start(ingest, None, true).await;
    assert!(r.base.starts_with("https://"));
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let resp = https
        .post(r.ingest_url())
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = https.post(r.ingest_url()).body(BODY).send().await.unwrap();
    assert_eq!(resp.status(), 401, "TLS does not replace the token");

    // Plain HTTP to the TLS port gets no answer; a client that does not trust the CA neither.
    let plain = format!("http://{}/api/v1/ingest", r.addr());
    let err = client()
        .post(&plain)
        .bearer_auth(TOKEN)
        .body(BODY)
        .send()
        .await;
    assert!(err.is_err(), "plain HTTP to the TLS port: {err:?}");
    assert!(client().post(r.ingest_url()).send().await.is_err());

    // The probe port: plain HTTP, no token; the ingest port no longer serves the probes.
    let probes = r.probes.clone().unwrap();
    for path in ["/health", "/ready", "/stats", "/metrics"] {
        let resp = client()
            .get(format!("{probes}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} on the probe port");
    }
    let resp = client()
        .post(format!("{probes}/api/v1/ingest"))
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "no ingest on the probe port");
    let resp = https
        .get(format!("{}/health", r.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    let port = probes.rsplit(':').next().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains(port),
        "the 404 names the probe port: {body}"
    );

    let text = metrics_text(&probes, None).await;
    assert!(
        has_line(
            &text,
            "dualwrite_ingest_requests_total{outcome=\"accepted\"} 1"
        ),
        "{text}"
    );
    let handshakes = r
        .relay
        .metrics
        .rejected
        .tls_handshake
        .load(Ordering::Relaxed);
    assert!(handshakes >= 2, "failed handshakes counted: {handshakes}");
    r.shutdown().await;
}

/// Opens a connection that sends a request's headers one byte at a time (`trickle`) or nothing
/// at all, and returns how long the server kept it open (giving up after 10 s).
async fn slow_connection(addr: String, trickle: bool) -> Duration {
    let opened = Instant::now();
    let give_up = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(give_up);
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let headers = b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut next = 0;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = &mut give_up => return opened.elapsed(),
            read = s.read(&mut buf) => match read {
                // Closed by the server (or an answer it sends before closing: read on).
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            },
            // The slowloris pace, not a synchronisation.
            _ = tokio::time::sleep(Duration::from_millis(100)), if trickle => {
                let byte = headers[next % headers.len()];
                next += 1;
                if s.write_all(&[byte]).await.is_err() {
                    return opened.elapsed();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_a_normal_client_is_served_within_a_second() {
    const SLOW: usize = 200;
    let header_timeout = Duration::from_secs(2);
    let r = start(
        IngestConfig {
            header_timeout,
            ..IngestConfig::default()
        },
        None,
        false,
    )
    .await;
    let slow: Vec<_> = (0..SLOW)
        .map(|i| tokio::spawn(slow_connection(r.addr(), i % 2 == 0)))
        .collect();
    let metrics = &r.relay.metrics;
    eventually(
        Duration::from_secs(5),
        "the slow connections are open",
        || async {
            let open = metrics.connections.load(Ordering::Relaxed);
            if open as usize >= SLOW {
                Ok(())
            } else {
                Err(format!("{open} open"))
            }
        },
    )
    .await;

    let started = Instant::now();
    let resp = client()
        .post(r.ingest_url())
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    let latency = started.elapsed();
    assert_eq!(resp.status(), 202);
    assert!(
        latency < Duration::from_secs(1),
        "a normal client waited {latency:?} behind {SLOW} slow connections"
    );
    assert!(
        metrics.connections.load(Ordering::Relaxed) as usize >= SLOW,
        "the slow connections were still open while the normal client was served"
    );

    for held in futures::future::join_all(slow).await {
        let held = held.unwrap();
        assert!(
            held >= header_timeout - Duration::from_millis(100)
                && held < header_timeout + Duration::from_secs(3),
            "a slow connection was held {held:?} (header timeout {header_timeout:?})"
        );
    }
    eventually(
        Duration::from_secs(5),
        "the cut connections are counted",
        || async {
            let text = metrics_text(&r.base, None).await;
            let line =
                format!("dualwrite_ingest_rejected_total{{reason=\"header_timeout\"}} {SLOW}");
            if has_line(&text, &line) {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;
    r.shutdown().await;
}

#[tokio::test]
async fn past_the_connection_cap_a_client_waits_for_a_free_slot_instead_of_a_reset() {
    let header_timeout = Duration::from_secs(1);
    let r = start(
        IngestConfig {
            max_connections: 2,
            header_timeout,
            ..IngestConfig::default()
        },
        None,
        false,
    )
    .await;
    // Two silent connections take both slots.
    let hogs: Vec<_> = (0..2)
        .map(|_| tokio::spawn(slow_connection(r.addr(), false)))
        .collect();
    let metrics = &r.relay.metrics;
    eventually(Duration::from_secs(5), "both slots taken", || async {
        match metrics.connections.load(Ordering::Relaxed) {
            2 => Ok(()),
            n => Err(format!("{n} open")),
        }
    })
    .await;
    let started = Instant::now();
    let resp = client()
        .post(r.ingest_url())
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), 202, "served once a slot was free");
    assert!(
        waited >= header_timeout - Duration::from_millis(100),
        "served after a silent connection was cut, not before: {waited:?}"
    );
    for h in hogs {
        h.await.unwrap();
    }
    r.shutdown().await;
}

/// A provider whose publishes wait until the test lets them through.
struct Gated {
    started: AtomicUsize,
    open: tokio::sync::Semaphore,
}

impl Gated {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: AtomicUsize::new(0),
            open: tokio::sync::Semaphore::new(0),
        })
    }

    fn composite(self: &Arc<Self>) -> Composite {
        Composite::new(
            vec![self.clone()],
            Strategy::FailFast,
            Duration::from_secs(30),
        )
        .unwrap()
    }

    async fn wait_started(&self, n: usize) {
        eventually(Duration::from_secs(5), "publishes started", || async {
            match self.started.load(Ordering::SeqCst) {
                s if s >= n => Ok(()),
                s => Err(format!("{s} of {n}")),
            }
        })
        .await;
    }
}

#[async_trait::async_trait]
impl Provider for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn kind(&self) -> provider::ProviderKind {
        provider::ProviderKind::Memory
    }
    async fn publish(
        &self,
        _m: &dualwrite::message::DataMessage,
    ) -> Result<(), provider::ProviderError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.open.acquire().await.unwrap().forget();
        Ok(())
    }
    async fn subscribe(&self) -> Result<provider::MessageStream, provider::ProviderError> {
        Err(provider::ProviderError::Subscribe {
            provider: "gated".into(),
            reason: "none".into(),
        })
    }
    fn stats(&self) -> provider::Stats {
        Default::default()
    }
    fn health(&self) -> provider::Health {
        provider::Health::up("Connected", "ok")
    }
    async fn close(&self) -> Result<(), provider::ProviderError> {
        Ok(())
    }
}

fn post(url: String) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    client()
        .post(url)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
}

#[tokio::test]
async fn past_max_in_flight_the_answer_is_503_with_retry_after_at_once() {
    let gated = Gated::new();
    let r = start(
        IngestConfig {
            max_in_flight: 2,
            ..IngestConfig::default()
        },
        Some(gated.composite()),
        false,
    )
    .await;
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(post(r.ingest_url()))).collect();
    gated.wait_started(2).await;

    let started = Instant::now();
    let resp = post(r.ingest_url()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("maxInFlight"),
        "{body}"
    );
    // Probes and scraping are not capped.
    let health = client()
        .get(format!("{}/health", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let text = metrics_text(&r.base, None).await;
    for line in [
        "dualwrite_ingest_rejected_total{reason=\"overloaded\"} 1",
        "dualwrite_ingest_in_flight 2",
    ] {
        assert!(has_line(&text, line), "missing {line:?} in\n{text}");
    }

    gated.open.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 202);
    }
    // Slots are given back.
    gated.open.add_permits(1);
    assert_eq!(post(r.ingest_url()).await.unwrap().status(), 202);
    r.shutdown().await;
}

#[tokio::test]
async fn a_request_past_the_request_timeout_gets_408_for_a_slow_body_and_503_for_a_slow_publish() {
    let gated = Gated::new();
    let request_timeout = Duration::from_millis(500);
    let r = start(
        IngestConfig {
            request_timeout,
            ..IngestConfig::default()
        },
        Some(gated.composite()),
        false,
    )
    .await;
    // A body that never finishes.
    let mut s = tokio::net::TcpStream::connect(r.addr()).await.unwrap();
    s.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"source\"")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("requestTimeout"), "{answer}");

    // A publish that does not finish in time.
    let resp = post(r.ingest_url()).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("same \"id\""),
        "{body}"
    );
    let text = metrics_text(&r.base, None).await;
    for line in [
        "dualwrite_ingest_rejected_total{reason=\"body_timeout\"} 1",
        "dualwrite_ingest_rejected_total{reason=\"request_timeout\"} 1",
    ] {
        assert!(has_line(&text, line), "missing {line:?} in\n{text}");
    }
    r.shutdown().await;
}

#[tokio::test]
async fn a_request_that_outlives_the_drain_grace_is_cut_and_the_server_still_stops() {
    let gated = Gated::new();
    let r = start(IngestConfig::default(), Some(gated.composite()), false).await;
    let stuck = tokio::spawn(post(r.ingest_url()));
    gated.wait_started(1).await;
    let stopping = Instant::now();
    let server = {
        let Running {
            mut stop, server, ..
        } = r;
        let _ = stop.take().unwrap().send(());
        server
    };
    // The request is cut at the drain grace (its connection closed), but the write it started
    // runs in its own task and is bounded by the publish timeout (30 s here): the providers
    // close once it has ended, so what it wrote is accounted for (the pod's termination grace
    // allows for it).
    tokio::time::timeout(
        relay::listener::DRAIN_GRACE + Duration::from_secs(30 + 5),
        server,
    )
    .await
    .expect("the server stops once the cut request's write has ended")
    .unwrap()
    .unwrap();
    let took = stopping.elapsed();
    assert!(
        took >= relay::listener::DRAIN_GRACE - Duration::from_millis(100),
        "the request in flight had its grace: {took:?}"
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck request's connection is closed"
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_dualwrite");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The relay binary with the built-in pipeline (memory providers) on `port`.
fn relay_process(args: &[&str], port: u16, log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("relay")
        .args(args)
        .env("API_PORT", port.to_string())
        .env("API_BIND", "127.0.0.1")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    for k in [
        "QUEUE_TYPE",
        "COMPOSITE_PROVIDERS",
        "COMPOSITE_STRATEGY",
        "QUEUE_SIZE",
        "DUALWRITE_STATE_DIR",
    ] {
        cmd.env_remove(k);
    }
    cmd.stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills the child if the test fails before it exits.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_0_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("relay.log");
    let port = free_port();
    let mut child = Reap(relay_process(&[], port, &log));
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    eventually(Duration::from_secs(20), "the relay is up", || async {
        client().get(format!("{base}/health")).send().await
    })
    .await;

    // A request in flight: headers and half of the body sent.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (first, rest) = BODY.split_at(BODY.len() / 2);
    write!(
        s,
        "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        BODY.len()
    )
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "the request is in flight",
        || async {
            let text = metrics_text(&base, None).await;
            if has_line(&text, "dualwrite_ingest_in_flight 1") {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;

    let terminated = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    eventually(
        Duration::from_secs(10),
        "the relay stops accepting",
        || async {
            match tokio::net::TcpStream::connect(&addr).await {
                Err(_) => Ok(()),
                Ok(_) => Err("still accepting"),
            }
        },
    )
    .await;

    s.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "the request in flight is answered: {answer}"
    );
    assert!(answer.contains("\"accepted\""), "{answer}");

    let status = eventually(Duration::from_secs(30), "the relay exits", || {
        let status = child.0.try_wait();
        async move {
            match status {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err("still running".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    let took = terminated.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}; log:\n{text}");
    assert!(
        took < Duration::from_secs(30),
        "exited {took:?} after SIGTERM, past the pod's grace period"
    );
}

#[test]
fn an_unreadable_ingest_certificate_stops_the_relay_with_exit_2_naming_the_secret_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("tls.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: t}\nspec:\n  providers: [{name: a, type: memory}]\n  ingest:\n    tls: {secretName: ingest-tls-9c1d, certificate: tls.crt, key: tls.key}\n",
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let mut child = Reap(relay_process(
        &["-f", manifest.to_str().unwrap()],
        free_port(),
        &log,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the relay did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(
        text.contains("spec.ingest.tls")
            && text.contains("\"ingest-tls-9c1d\"")
            && text.contains("\"tls.crt\""),
        "{text}"
    );
}
