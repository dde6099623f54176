//! Issue 12 item 3 against a real broker that dies after the relay connected: a private
//! `nats-server` (its own port and store directory; the shared brokers are never touched) is
//! started, a FailFast relay (NATS + memory, `publishTimeout: 30s`) connects to it, the server is
//! killed, and a request must get its 503 from the circuit breaker long before the publish
//! timeout; `/ready`, `/stats` and `/metrics` show the open breaker. After the server comes
//! back, the breaker closes on an acknowledged probe and messages flow again.
//!
//! The server binary: `NATS_SERVER_BIN`, else the one `hack/test-env` built next to `NATS_CLI`
//! (`<cache>/nats/<version>/bin/nats-server`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dualwrite::relay::{self, Relay};
use serde_json::{json, Value};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

fn nats_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    // <cache>/natscli/<version>/bin/nats → <cache>/nats/*/bin/nats-server
    let cli = PathBuf::from(common::require_env("NATS_CLI")?);
    let cache = cli.ancestors().nth(4)?.to_path_buf();
    let found = std::fs::read_dir(cache.join("nats"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/nats-server"))
        .find(|p| p.is_file());
    if found.is_none() && common::under_ci() {
        panic!(
            "no nats-server binary under {}: {}",
            cache.display(),
            common::SETUP_HINT
        );
    }
    found
}

/// A private nats-server; killed when dropped.
struct PrivateNats(Child);

impl PrivateNats {
    fn start(bin: &Path, port: u16, store: &Path) -> Self {
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the private nats-server");
        Self(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
    let resp = client.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_answers_503_at_once_while_the_broker_is_down_and_recovers() {
    let Some(bin) = nats_server_bin() else {
        return;
    };
    common::init_tracing();
    let store = tempfile::tempdir().unwrap();
    let port = common::cluster::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut server = PrivateNats::start(&bin, port, store.path());

    let spec: dualwrite::api::DualWritePipelineSpec = serde_json::from_value(json!({
        "providers": [
            {"name": "nats", "type": "nats", "nats": {"url": url, "subject": "breaker.test", "stream": "BREAKER_TEST"}},
            {"name": "memory", "type": "memory", "memory": {"capacity": 100000}},
        ],
        "strategy": "FailFast",
        "publishTimeout": "30s",
    }))
    .unwrap();
    let config = relay::PipelineConfig::try_from(&spec).unwrap();
    let composite = relay::build_composite(&config).await.unwrap();
    assert_eq!(composite.publish_timeout(), PUBLISH_TIMEOUT);
    let relay = Relay::new(composite, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(relay::serve(relay.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(PUBLISH_TIMEOUT * 2)
        .build()
        .unwrap();
    let ingest = format!("{base}/api/v1/ingest");
    let send = |i: usize| {
        client
            .post(&ingest)
            .json(&json!({"source": "breaker-test", "data": format!("m{i}")}))
            .send()
    };
    common::eventually(
        Duration::from_secs(30),
        "the relay is connected",
        || async {
            match send(0).await {
                Ok(r) if r.status() == 202 => Ok(()),
                Ok(r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;

    server.kill();
    // The first writes after the kill may wait (bounded by the publish timeout) until the relay
    // knows the broker is down; from then on FailFast answers from the breaker.
    let mut i = 1;
    let (took, body) = loop {
        let started = Instant::now();
        let resp = send(i).await.unwrap();
        let took = started.elapsed();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert!(
            took <= PUBLISH_TIMEOUT + Duration::from_secs(5),
            "a write took {took:?}"
        );
        if body["error"]
            .as_str()
            .is_some_and(|e| e.contains("circuit breaker open since"))
        {
            assert_eq!(status, 503, "{body}");
            break (took, body);
        }
        assert_ne!(status, 202, "written with the broker killed: {body}");
        i += 1;
        assert!(
            i <= 10,
            "the breaker did not open after {i} failed writes: {body}"
        );
    };
    assert!(
        took < PUBLISH_TIMEOUT / 10,
        "the 503 took {took:?}, not well under the {PUBLISH_TIMEOUT:?} publish timeout"
    );
    assert_eq!(body["failedProviders"], json!(["nats"]), "{body}");
    eprintln!("503 from the open breaker in {took:?} (publish timeout {PUBLISH_TIMEOUT:?})");

    let (ready, text) = get(&client, format!("{base}/ready")).await;
    assert_eq!(ready, 503, "{text}");
    assert!(text.contains("nats"), "{text}");
    let (_, stats) = get(&client, format!("{base}/stats")).await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let breaker = &stats["providers"][0]["breaker"];
    assert!(
        breaker["state"] == "open" || breaker["state"] == "halfOpen",
        "{stats}"
    );
    assert!(breaker["since"].is_string(), "{stats}");
    let (_, metrics) = get(&client, format!("{base}/metrics")).await;
    assert!(
        metrics.contains("dualwrite_provider_breaker_open{provider=\"nats\",type=\"nats\"} 1"),
        "{metrics}"
    );

    // The broker comes back (same port and store): a probe closes the breaker.
    let _server = PrivateNats::start(&bin, port, store.path());
    let next = std::sync::atomic::AtomicUsize::new(i + 1);
    common::eventually(Duration::from_secs(60), "messages flow again", || async {
        match send(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).await {
            Ok(r) if r.status() == 202 => Ok(()),
            Ok(r) => Err(format!(
                "{}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let (_, stats) = get(&client, format!("{base}/stats")).await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["providers"][0]["breaker"]["state"], "closed",
        "{stats}"
    );
    for j in 0..5 {
        assert_eq!(send(1000 + j).await.unwrap().status(), 202);
    }
    let (ready, text) = get(&client, format!("{base}/ready")).await;
    assert_eq!(ready, 200, "{text}");

    let _ = stop.send(());
    http.await.unwrap().unwrap();
    relay.composite().close_all().await.unwrap();
}
