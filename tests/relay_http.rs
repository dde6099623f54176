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

// Issue 12 item 2: the batch ingest API.

async fn post_batch(base: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .post(format!("{base}/api/v1/ingest/batch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

/// Ids a provider holds, in its order (memory providers: read from their queue).
async fn held(relay: &Relay, n: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for provider in relay.composite().providers() {
        let mut stream = provider.subscribe().await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..n {
            let m = tokio::time::timeout(
                Duration::from_secs(5),
                futures::StreamExt::next(&mut stream),
            )
            .await
            .expect("the provider holds fewer messages than expected")
            .unwrap()
            .unwrap();
            ids.push(m.id);
        }
        out.push(ids);
    }
    out
}

#[tokio::test]
async fn a_batch_as_array_or_ndjson_is_written_in_order_and_answered_per_message() {
    let r = start(config::default_spec()).await;
    let (status, body) = post_batch(
        &r.base,
        serde_json::json!([
            {"source": "s", "data": "a"},
            {"source": "s", "data": "b", "id": "client-1", "metadata": {"k": "v"}},
            {"source": "s", "data": "c"},
        ]),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["failed"].as_u64()),
        (Some(3), Some(0))
    );
    let rows = body["results"].as_array().unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["index"], i);
        assert_eq!(row["status"], "accepted");
        assert_eq!(
            row["providers"],
            serde_json::json!(["memory-1", "memory-2"])
        );
        assert!(
            !row["messageId"].as_str().unwrap().is_empty(),
            "minted ids are returned"
        );
    }
    assert_eq!(rows[1]["messageId"], "client-1");
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["messageId"].as_str().unwrap().into())
        .collect();

    let resp = client()
        .post(format!("{}/api/v1/ingest/batch", r.base))
        .header("content-type", "application/x-ndjson")
        .body("{\"source\":\"s\",\"data\":\"d\",\"id\":\"nd-1\"}\n{\"source\":\"s\",\"data\":\"e\",\"id\":\"nd-2\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(statuses(&body), ["accepted", "accepted"]);
    ids.extend(["nd-1".to_string(), "nd-2".to_string()]);

    assert_eq!(held(&r.relay, 5).await, vec![ids.clone(), ids]);
    let metrics = client()
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "dualwrite_ingest_batches_total 2",
        "dualwrite_ingest_batch_messages_total 5",
        "dualwrite_ingest_requests_total{outcome=\"accepted\"} 5",
        "dualwrite_provider_published_total{provider=\"memory-1\",type=\"memory\"} 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    assert_eq!(published(&r.base).await, 10);
    r.shutdown().await;
}

#[tokio::test]
async fn a_bad_element_refuses_the_whole_batch_naming_it_and_nothing_is_written() {
    let mut spec = config::default_spec();
    spec.ingest = Some(
        serde_json::from_value(serde_json::json!({"maxBatchMessages": 3, "maxBodyBytes": 2048}))
            .unwrap(),
    );
    let r = start(spec).await;
    let ok = serde_json::json!({"source": "s", "data": "a"});
    for (body, want_status, want) in [
        (
            serde_json::json!([ok, ok, {"source": "s"}]),
            400,
            "[2]: invalid request: missing field `data`",
        ),
        (
            serde_json::json!([ok, {"source": "s", "data": "b", "id": "has space"}]),
            400,
            "[1]: invalid request",
        ),
        (
            serde_json::json!([ok, ["s", "a"]]),
            400,
            "[1]: invalid request",
        ),
        (serde_json::json!(ok), 400, "not a JSON array"),
        (serde_json::json!([]), 400, "empty"),
        (
            serde_json::json!([ok, ok, ok, ok]),
            413,
            "more than 3 messages",
        ),
        (
            serde_json::json!([ok, {"source": "s", "data": "x".repeat(3000)}]),
            413,
            "larger than 2048 bytes",
        ),
    ] {
        let (status, answer) = post_batch(&r.base, body.clone()).await;
        assert_eq!(status, want_status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(want),
            "{body}: {answer}"
        );
    }
    let resp = client()
        .post(format!("{}/api/v1/ingest/batch", r.base))
        .header("content-type", "application/x-ndjson")
        .body("{\"source\":\"s\",\"data\":\"d\"}\n{\"source\":\"s\",\"data\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["index"], 1);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("[1]: malformed JSON"),
        "{answer}"
    );
    assert_eq!(
        published(&r.base).await,
        0,
        "nothing of a refused batch is written"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn an_element_too_large_for_a_broker_is_413_naming_it_and_nothing_is_written() {
    use dualwrite::provider::memory::MemoryProvider;
    use dualwrite::provider::Provider;
    let open = Arc::new(MemoryProvider::new("memory-1", 10));
    let small = Arc::new(Limited(MemoryProvider::new("small", 10)));
    let providers: Vec<Arc<dyn Provider>> = vec![open.clone(), small.clone()];
    let composite =
        dualwrite::composite::Composite::new(providers, Strategy::FailFast, Duration::from_secs(5))
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
    let (status, body) = post_batch(
        &r.base,
        serde_json::json!([
            {"source": "s", "data": "small"},
            {"source": "s", "data": "x".repeat(900)},
        ]),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["index"], 1);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("[1]: ") && error.contains("provider small"),
        "{error}"
    );
    assert_eq!((open.stats().published, small.stats().published), (0, 0));
    r.shutdown().await;
}

#[tokio::test]
async fn duplicates_and_conflicts_inside_and_across_batches() {
    let r = start(config::default_spec()).await;
    let one = serde_json::json!({"source": "s", "data": "one", "id": "d-1"});
    let two = serde_json::json!({"source": "s", "data": "two", "id": "d-2"});
    let two_other = serde_json::json!({"source": "s", "data": "other", "id": "d-2"});
    let (status, body) = post_batch(&r.base, serde_json::json!([one, two, one, two_other])).await;
    assert_eq!(status, 409, "only conflicts failed: {body}");
    assert_eq!(
        statuses(&body),
        ["accepted", "accepted", "duplicate", "conflict"]
    );
    assert_eq!(
        (body["accepted"].as_u64(), body["failed"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(
        body["results"][3]["error"]
            .as_str()
            .unwrap()
            .contains("[1] of this batch"),
        "{body}"
    );

    // A retry of the whole batch with the same ids: duplicates, nothing written twice.
    let (status, body) = post_batch(&r.base, serde_json::json!([one, two])).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(statuses(&body), ["duplicate", "duplicate"]);
    let three = serde_json::json!({"source": "s", "data": "three", "id": "d-3"});
    let (status, body) = post_batch(&r.base, serde_json::json!([three, two_other])).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(statuses(&body), ["accepted", "conflict"]);
    assert!(
        body["results"][1]["error"]
            .as_str()
            .unwrap()
            .contains("different content"),
        "{body}"
    );
    // The single endpoint sees the batch's ids too.
    let resp = client()
        .post(format!("{}/api/v1/ingest", r.base))
        .json(&one)
        .send()
        .await
        .unwrap();
    let single: Value = resp.json().await.unwrap();
    assert_eq!(single["duplicate"], true, "{single}");
    assert_eq!(
        published(&r.base).await,
        6,
        "d-1, d-2 and d-3, once on each provider"
    );
    let ids = vec!["d-1".to_string(), "d-2".into(), "d-3".into()];
    assert_eq!(held(&r.relay, 3).await, vec![ids.clone(), ids]);
    r.shutdown().await;
}

#[tokio::test]
async fn a_partial_failure_is_503_with_a_result_per_message() {
    let mut spec = config::default_spec();
    spec.providers[1].memory.as_mut().unwrap().capacity = Some(2);
    let r = start(spec).await;
    let batch: Vec<Value> = (0..4)
        .map(
            |i| serde_json::json!({"source": "s", "data": format!("m{i}"), "id": format!("p-{i}")}),
        )
        .collect();
    let (status, body) = post_batch(&r.base, Value::Array(batch.clone())).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        statuses(&body),
        ["accepted", "accepted", "failed", "failed"]
    );
    assert_eq!(
        (body["accepted"].as_u64(), body["failed"].as_u64()),
        (Some(2), Some(2))
    );
    for row in &body["results"].as_array().unwrap()[2..] {
        assert_eq!(
            row["failedProviders"],
            serde_json::json!(["memory-2"]),
            "{row}"
        );
        assert!(
            row["error"].as_str().unwrap().contains("queue full"),
            "{row}"
        );
    }
    // The retry of the whole batch (client ids): the accepted two are duplicates, the failed
    // two are written again (and fail again: memory-2 is still full).
    let (status, body) = post_batch(&r.base, Value::Array(batch)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        statuses(&body),
        ["duplicate", "duplicate", "failed", "failed"]
    );
    r.shutdown().await;
}
