//! Issue 12 item 3 against a real broker that fails after the relay connected: a private
//! `nats-server` (its own port and store directory; the shared brokers are never touched) under
//! a FailFast relay (NATS + memory, `publishTimeout: 30s`).
//!
//! 1. The server hangs (SIGSTOP: the connection stays open, nothing is acknowledged). The first
//!    writes wait out the publish timeout; the next one gets its 503 from the open breaker at
//!    once, and `/stats` and `/metrics` show it. Before the breaker, every request
//!    waited the full 30 s.
//! 2. The server resumes (SIGCONT): the breaker closes on an acknowledged probe; messages flow.
//! 3. The server is killed: once the relay's health says Disconnected (`/ready` 503), the 503
//!    comes from the breaker at once; after a restart on the same port and store, messages flow
//!    again.
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

    /// Sends `signal` (e.g. `STOP`, `CONT`) to this server (a process this test started).
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} failed");
        // `kill` returns before the process has stopped (or resumed): wait until its state
        // says so, so that no write races the signal.
        let stopped = signal == "STOP";
        let stat = format!("/proc/{}/stat", self.0.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&stat).expect("read the server's /proc stat");
            // The state follows the command name in parentheses: "pid (comm) S ...".
            let state = text
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if (state == Some("T")) == stopped {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kill -{signal}: state still {state:?}"
            );
            std::thread::yield_now();
        }
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
        // Shorter than the publish timeout: the listener answers the hung requests first, and
        // the writes they started must still reach the breaker (they run in their own task).
        "ingest": {"requestTimeout": "10s"},
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

    // 1. A hung broker: three concurrent writes wait out the publish timeout, and open the
    //    breaker (if health has not opened it first).
    server.signal("STOP");
    let hung = futures::future::join_all((1..=3).map(|i| async move {
        let started = Instant::now();
        let resp = send(i).await.unwrap();
        (
            resp.status().as_u16(),
            started.elapsed(),
            resp.text().await.unwrap(),
        )
    }))
    .await;
    for (status, took, body) in &hung {
        assert_eq!(*status, 503, "{body}");
        assert!(
            body.contains("no answer within 10s (spec.ingest.requestTimeout)"),
            "the listener's request timeout answers first: {body}"
        );
        assert!(
            *took < PUBLISH_TIMEOUT,
            "the request timeout, not the publish timeout, bounds the answer: {took:?}"
        );
        eprintln!("hung broker: first writes: 503 (request timeout) in {took:?}");
    }
    // The three writes go on after their requests were answered; when the publish timeout
    // ends them, they open the breaker (if health has not opened it first).
    common::eventually(
        PUBLISH_TIMEOUT * 2,
        "the breaker opens after the writes of the timed-out requests fail",
        || async {
            let (_, stats) = get(&client, format!("{base}/stats")).await;
            let stats: Value = serde_json::from_str(&stats).unwrap();
            match &stats["providers"][0]["breaker"]["state"] {
                s if s == "open" || s == "halfOpen" => Ok(()),
                other => Err(format!("breaker {other}")),
            }
        },
    )
    .await;
    // Then five at once: the open breaker lets at most one probe a second through (the
    //    breaker may have opened on health long before the timeouts, so one of these may be
    //    that probe and wait); the others are refused at once. The probe is not awaited.
    let fast = PUBLISH_TIMEOUT / 10;
    let next: Vec<_> = (4..9)
        .map(|i| {
            let sent = send(i);
            tokio::spawn(async move {
                let started = Instant::now();
                let resp = sent.await.unwrap();
                let took = started.elapsed();
                (
                    resp.status().as_u16(),
                    took,
                    resp.json::<Value>().await.unwrap(),
                )
            })
        })
        .collect();
    let mut refused = Vec::new();
    for answer in next {
        if let Ok(answer) = tokio::time::timeout(fast, answer).await {
            refused.push(answer.unwrap());
        }
    }
    assert!(
        refused.len() >= 4,
        "at most one of five requests may wait (the probe); {} answered within {fast:?}: {refused:?}",
        refused.len()
    );
    for (status, took, body) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("circuit breaker open since")),
            "{body}"
        );
        assert_eq!(body["failedProviders"], json!(["nats"]), "{body}");
        eprintln!("hung broker: then 503 from the open breaker in {took:?} (publish timeout {PUBLISH_TIMEOUT:?})");
    }

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

    // 2. The broker answers again. With no request arriving, the relay is ready again (its
    //    readiness follows the provider's health, which its supervisor brings back) while the
    //    breaker is still open: a relay out of its Service would never get the write that
    //    closes the breaker. Then a probe closes it.
    server.signal("CONT");
    common::eventually(
        Duration::from_secs(60),
        "/ready says ready again with no request sent",
        || async {
            match get(&client, format!("{base}/ready")).await {
                (200, _) => Ok(()),
                (status, text) => Err(format!("{status}: {text}")),
            }
        },
    )
    .await;
    let (_, stats) = get(&client, format!("{base}/stats")).await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_ne!(
        stats["providers"][0]["breaker"]["state"], "closed",
        "nothing was written since the breaker opened: {stats}"
    );
    let next = std::sync::atomic::AtomicUsize::new(100);
    let flows = || async {
        match send(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).await {
            Ok(r) if r.status() == 202 => Ok(()),
            Ok(r) => Err(format!(
                "{}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        }
    };
    common::eventually(
        Duration::from_secs(60),
        "messages flow after SIGCONT",
        flows,
    )
    .await;
    let (_, stats) = get(&client, format!("{base}/stats")).await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["providers"][0]["breaker"]["state"], "closed",
        "{stats}"
    );

    // 3. A killed broker: once the relay knows (its health says Disconnected, and `/ready`
    //    says not ready), the 503 comes from the breaker at once, without a write timing out.
    server.kill();
    common::eventually(
        Duration::from_secs(30),
        "/ready says the relay knows",
        || async {
            match get(&client, format!("{base}/ready")).await {
                (503, _) => Ok(()),
                (status, text) => Err(format!("{status}: {text}")),
            }
        },
    )
    .await;
    let started = Instant::now();
    let resp = send(200).await.unwrap();
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("circuit breaker open since")),
        "{body}"
    );
    assert!(took < PUBLISH_TIMEOUT / 10, "the 503 took {took:?}: {body}");
    assert_eq!(body["failedProviders"], json!(["nats"]), "{body}");
    eprintln!("killed broker: 503 from the open breaker in {took:?}");

    // The broker comes back (same port and store): a probe closes the breaker.
    let _server = PrivateNats::start(&bin, port, store.path());
    common::eventually(
        Duration::from_secs(60),
        "messages flow after the restart",
        flows,
    )
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
