//! Black-box tests of the ingest API over real HTTP, on memory providers (no outside service).

use std::sync::Arc;
use std::time::Duration;

use dualwrite::composite::Strategy;
use dualwrite::relay::{self, config, Relay};
use serde_json::Value;

struct Running {
    base: String,
    relay: Arc<Relay>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(spec: dualwrite::api::DualWritePipelineSpec) -> Running {
    let config = relay::PipelineConfig::try_from(&spec).unwrap();
    let composite = relay::build_composite(&config).await.unwrap();
    let relay = Relay::new(composite, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay::serve(relay.clone(), listener, async {
        let _ = rx.await;
    }));
    Running {
        base,
        relay,
        stop: Some(tx),
        server,
    }
}

impl Running {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn seed_request_is_accepted_and_counted_on_both_providers() {
    let r = start(config::default_spec()).await;
    let resp = client()
        .post(format!("{}/api/v1/ingest", r.base))
        .json(&serde_json::json!({"source": "test", "data": "dual-write test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert!(!body["messageId"].as_str().unwrap().is_empty());

    let stats: Value = client()
        .get(format!("{}/stats", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = stats["providers"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["published"], 1, "{row}");
        assert_eq!(row["type"], "memory");
    }
    assert_eq!(stats["total"]["published"], 2);

    let metrics = client()
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "dualwrite_provider_published_total{provider=\"memory-1\",type=\"memory\"} 1"
        ),
        "{metrics}"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let r = start(config::default_spec()).await;
    let url = format!("{}/api/v1/ingest", r.base);
    let c = client();

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (c.post(&url).body("{not json"), 400, "malformed JSON"),
        // serde would read an array as the struct's fields in order: only an object is a message.
        (
            c.post(&url).body(r#"["test","dual-write test"]"#),
            400,
            "must be a JSON object",
        ),
        (
            c.post(&url).body(r#""just a string""#),
            400,
            "must be a JSON object",
        ),
        (c.post(&url).body("[not json"), 400, "malformed JSON"),
        (
            c.post(&url).body(r#"{"source":"x"}"#),
            400,
            "missing field `data`",
        ),
        (
            c.post(&url).body(r#"{"source":"x","data":1}"#),
            400,
            "invalid request",
        ),
        (
            c.post(&url).body(r#"{"source":"x","data":"y","extra":1}"#),
            400,
            "unknown field `extra`",
        ),
        (
            c.post(&url)
                .body(r#"{"source":"x","data":"y","id":"has space"}"#),
            400,
            "id contains",
        ),
        (
            c.post(&url).body(vec![b'a'; 10 * 1024 * 1024]),
            413,
            "larger than",
        ),
        (c.get(&url), 405, "use POST"),
        (c.get(format!("{}/nope", r.base)), 404, "no such endpoint"),
    ];
    for (req, status, text) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        if status == 405 {
            assert_eq!(resp.headers()["allow"], "POST");
        }
        let body: Value = resp.json().await.expect("error bodies are JSON");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(text), "{status}: {msg}");
    }
    // Nothing reached the providers.
    let stats: Value = c
        .get(format!("{}/stats", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["total"]["published"], 0);
    assert_eq!(stats["total"]["failed"], 0);
    r.shutdown().await;
}

#[tokio::test]
async fn fail_fast_answers_503_naming_the_full_provider_and_best_effort_202() {
    let mut spec = config::default_spec();
    spec.providers[1].memory.as_mut().unwrap().capacity = Some(1);
    let r = start(spec).await;
    let url = format!("{}/api/v1/ingest", r.base);
    let send = |id: &str| {
        client()
            .post(&url)
            .json(&serde_json::json!({"source": "t", "data": "x", "id": id}))
            .send()
    };
    assert_eq!(send("m1").await.unwrap().status(), 202);
    // memory-2 is now full.
    let resp = send("m2").await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["failedProviders"], serde_json::json!(["memory-2"]));
    assert_eq!(body["messageId"], "m2");
    assert!(
        body["error"].as_str().unwrap().contains("queue full"),
        "{body}"
    );
    let ready = client()
        .get(format!("{}/ready", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "memory providers stay healthy when full"
    );

    r.relay.composite().set_strategy(Strategy::BestEffort);
    let resp = send("m3").await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["providers"], serde_json::json!(["memory-1"]));
    assert_eq!(body["failedProviders"], serde_json::json!(["memory-2"]));
    r.shutdown().await;
}

/// Total published over the providers, from `/stats`.
async fn published(base: &str) -> Value {
    let stats: Value = client()
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["total"]["published"].clone()
}

#[tokio::test]
async fn a_retry_is_a_202_duplicate_and_a_reused_id_a_409() {
    let r = start(config::default_spec()).await;
    let url = format!("{}/api/v1/ingest", r.base);
    let send = |body: Value| client().post(&url).json(&body).send();
    let one =
        serde_json::json!({"source": "orders", "data": "one", "id": "o-1", "metadata": {"k": "v"}});

    let resp = send(one.clone()).await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["duplicate"],
        Value::Null,
        "a first write is no duplicate: {body}"
    );
    assert_eq!(
        body["providers"],
        serde_json::json!(["memory-1", "memory-2"])
    );

    // The client's retry: answered 202, marked, not written again.
    let resp = send(one.clone()).await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["duplicate"], true, "{body}");
    assert_eq!(body["messageId"], "o-1");
    assert_eq!(body["status"], "accepted");

    // The id reused for other content (data, source or metadata): 409 naming the id.
    for other in [
        serde_json::json!({"source": "orders", "data": "two", "id": "o-1", "metadata": {"k": "v"}}),
        serde_json::json!({"source": "billing", "data": "one", "id": "o-1", "metadata": {"k": "v"}}),
        serde_json::json!({"source": "orders", "data": "one", "id": "o-1"}),
    ] {
        let resp = send(other).await.unwrap();
        assert_eq!(resp.status(), 409);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["messageId"], "o-1");
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains("\"o-1\"") && msg.contains("different content") && msg.contains("2m"),
            "{msg}"
        );
    }
    // Each provider holds o-1 once, with the first content.
    assert_eq!(published(&r.base).await, 2);
    let composite = r.relay.composite();
    for provider in composite.providers() {
        let mut stream = provider.subscribe().await.unwrap();
        let got = futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.id.as_str(), &got.payload[..], got.source.as_str()),
            ("o-1", &b"one"[..], "orders"),
            "{}",
            provider.name()
        );
    }
    let metrics = client()
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "dualwrite_ingest_requests_total{outcome=\"duplicate\"} 1",
        "dualwrite_ingest_requests_total{outcome=\"conflict\"} 3",
        "dualwrite_ingest_requests_total{outcome=\"accepted\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    r.shutdown().await;
}

/// A publish that failed (503) may still have reached a broker: its retry is written again (not
/// answered as a duplicate), and the id with other content is refused.
#[tokio::test]
async fn after_a_503_the_retry_is_written_again_and_other_content_refused() {
    let mut spec = config::default_spec();
    spec.providers[1].memory.as_mut().unwrap().capacity = Some(1);
    let r = start(spec).await;
    let url = format!("{}/api/v1/ingest", r.base);
    let send = |data: &str| {
        client()
            .post(&url)
            .json(&serde_json::json!({"source": "t", "data": data, "id": "m2"}))
            .send()
    };
    let fill = client()
        .post(&url)
        .json(&serde_json::json!({"source": "t", "data": "x", "id": "m1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fill.status(), 202);
    // memory-2 is full: m2 reaches memory-1 only, and FailFast answers 503.
    assert_eq!(send("x").await.unwrap().status(), 503);
    let resp = send("y").await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("may be stored"),
        "{body}"
    );
    // The retry with the same content is published again (and fails again: memory-2 is full).
    assert_eq!(send("x").await.unwrap().status(), 503);
    r.shutdown().await;
}

/// Requests with one id at once, half with other content: exactly one is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_id_write_it_once() {
    let r = start(config::default_spec()).await;
    let url = format!("{}/api/v1/ingest", r.base);
    let requests = (0..32).map(|i| {
        let data = if i % 2 == 0 { "one" } else { "two" };
        let req = client()
            .post(&url)
            .json(&serde_json::json!({"source": "t", "data": data, "id": "o-1"}));
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (data, status, body["duplicate"] == true)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let written: Vec<_> = answers
        .iter()
        .filter(|(_, s, dup)| *s == 202 && !dup)
        .collect();
    assert_eq!(written.len(), 1, "{answers:?}");
    let content = written[0].0;
    for (data, status, duplicate) in &answers {
        match status {
            202 => assert!(*data == content, "{answers:?}"),
            409 => assert!(*data != content && !duplicate, "{answers:?}"),
            other => panic!("unexpected {other}: {answers:?}"),
        }
    }
    assert_eq!(
        published(&r.base).await,
        2,
        "one message on each of two providers"
    );
    r.shutdown().await;
}

/// A provider whose publish waits for the test's go-ahead, and that records whether it was
/// closed while a publish was still running.
struct Gated {
    started: tokio::sync::Notify,
    release: tokio::sync::Notify,
    in_flight: std::sync::atomic::AtomicBool,
    closed_while_in_flight: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl dualwrite::provider::Provider for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn kind(&self) -> dualwrite::provider::ProviderKind {
        dualwrite::provider::ProviderKind::Memory
    }
    async fn publish(
        &self,
        _m: &dualwrite::message::DataMessage,
    ) -> Result<(), dualwrite::provider::ProviderError> {
        use std::sync::atomic::Ordering;
        self.in_flight.store(true, Ordering::SeqCst);
        self.started.notify_one();
        self.release.notified().await;
        self.in_flight.store(false, Ordering::SeqCst);
        Ok(())
    }
    async fn subscribe(
        &self,
    ) -> Result<dualwrite::provider::MessageStream, dualwrite::provider::ProviderError> {
        Err(dualwrite::provider::ProviderError::Subscribe {
            provider: "gated".into(),
            reason: "none".into(),
        })
    }
    fn stats(&self) -> dualwrite::provider::Stats {
        Default::default()
    }
    fn health(&self) -> dualwrite::provider::Health {
        dualwrite::provider::Health::up("Connected", "ok")
    }
    async fn close(&self) -> Result<(), dualwrite::provider::ProviderError> {
        use std::sync::atomic::Ordering;
        if self.in_flight.load(Ordering::SeqCst) {
            self.closed_while_in_flight.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_before_closing_providers() {
    use std::sync::atomic::Ordering;
    let gated = Arc::new(Gated {
        started: Default::default(),
        release: Default::default(),
        in_flight: Default::default(),
        closed_while_in_flight: Default::default(),
    });
    let composite = dualwrite::composite::Composite::new(
        vec![gated.clone()],
        Strategy::FailFast,
        Duration::from_secs(30),
    )
    .unwrap();
    let relay = Relay::new(composite, relay::PipelineConfig::two_memory_queues());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/ingest", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay::serve(relay, listener, async {
        let _ = stop_rx.await;
    }));
    let request = tokio::spawn(async move {
        client()
            .post(url)
            .json(&serde_json::json!({"source": "t", "data": "x"}))
            .send()
            .await
            .unwrap()
            .status()
    });
    gated.started.notified().await; // the publish is running
    stop_tx.send(()).unwrap(); // SIGTERM, as far as the server knows
    tokio::task::yield_now().await;
    assert!(
        !server.is_finished(),
        "the server waits for the request in flight"
    );
    gated.release.notify_one();
    assert_eq!(
        request.await.unwrap(),
        202,
        "the in-flight request is answered"
    );
    server.await.unwrap().unwrap();
    assert!(
        !gated.closed_while_in_flight.load(Ordering::SeqCst),
        "providers closed only after the publish finished"
    );
}

#[tokio::test]
async fn health_ready_and_graceful_shutdown() {
    let r = start(config::default_spec()).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/health", r.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = c
        .get(format!("{}/ready", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let composite = r.relay.composite();
    r.shutdown().await;
    // Shutdown closed the providers.
    assert!(composite
        .stats_detailed()
        .providers
        .iter()
        .all(|p| !p.health.healthy));
}

/// A memory queue that reports a broker limit, as NATS (`max_payload`) and Kafka
/// (`max.message.bytes`) do.
struct Limited(dualwrite::provider::memory::MemoryProvider);

#[async_trait::async_trait]
impl dualwrite::provider::Provider for Limited {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn kind(&self) -> dualwrite::provider::ProviderKind {
        dualwrite::provider::ProviderKind::Nats
    }
    async fn publish(
        &self,
        m: &dualwrite::message::DataMessage,
    ) -> Result<(), dualwrite::provider::ProviderError> {
        self.0.publish(m).await
    }
    async fn subscribe(
        &self,
    ) -> Result<dualwrite::provider::MessageStream, dualwrite::provider::ProviderError> {
        self.0.subscribe().await
    }
    fn stats(&self) -> dualwrite::provider::Stats {
        self.0.stats()
    }
    fn health(&self) -> dualwrite::provider::Health {
        self.0.health()
    }
    fn message_limit(&self) -> Option<dualwrite::provider::MessageLimit> {
        Some(dualwrite::provider::MessageLimit {
            bytes: 1024,
            setting: "max_payload of the test server".into(),
        })
    }
    async fn close(&self) -> Result<(), dualwrite::provider::ProviderError> {
        self.0.close().await
    }
}

// Issue 11 item 2: a message above the smallest broker limit is a 413 naming the broker and the
// limit, and nothing is written anywhere.
#[tokio::test]
async fn a_message_too_large_for_a_broker_is_413_naming_it_and_its_limit() {
    use dualwrite::provider::memory::MemoryProvider;
    use dualwrite::provider::Provider;
    let open = Arc::new(MemoryProvider::new("memory-1", 10));
    let small = Arc::new(Limited(MemoryProvider::new("small", 10)));
    let providers: Vec<Arc<dyn Provider>> = vec![open.clone(), small.clone()];
    let composite = dualwrite::composite::Composite::new(
        providers,
        Strategy::BestEffort,
        Duration::from_secs(5),
    )
    .unwrap();
    let relay = Relay::new(composite, relay::PipelineConfig::two_memory_queues());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay::serve(relay.clone(), listener, async {
        let _ = rx.await;
    }));
    let r = Running {
        base,
        relay,
        stop: Some(tx),
        server,
    };
    let url = format!("{}/api/v1/ingest", r.base);
    let send = |data: String| {
        client()
            .post(&url)
            .json(&serde_json::json!({"source": "t", "data": data}))
            .send()
    };
    // 900 bytes of data are 1200 in base64: above 1024 once encoded, though the body is small.
    let resp = send("x".repeat(900)).await.unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("provider small")
            && error.contains("1024 bytes")
            && error.contains("max_payload of the test server"),
        "{body}"
    );
    assert_eq!(body["failedProviders"], serde_json::json!(["small"]));
    assert_eq!(
        (open.stats().published, small.stats().published),
        (0, 0),
        "refused before any write"
    );
    let resp = send("x".repeat(100)).await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(small.stats().published, 1);

    // Nothing of a 413 was written, so its id is free: the same client id, shrunk, is accepted
    // (not a 409 conflict with content no broker holds).
    let send_id = |data: String| {
        client()
            .post(&url)
            .json(&serde_json::json!({"source": "t", "data": data, "id": "shrunk-1"}))
            .send()
    };
    assert_eq!(send_id("x".repeat(900)).await.unwrap().status(), 413);
    let resp = send_id("x".repeat(100)).await.unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    assert_eq!(small.stats().published, 2);
    r.shutdown().await;
}
