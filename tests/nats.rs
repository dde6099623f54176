//! What only the NATS JetStream provider does, against a real nats-server (`NATS_URL`): the
//! exact bytes and header on the stream, de-duplication of retries, stream creation and reuse.
//! What every provider does (round trip, concurrency, deadlines, close) is in
//! `tests/provider_contract.rs`. Each test uses its own subject and stream, so they run in
//! parallel and repeatedly.

mod common;

use std::time::Duration;

use common::brokers::nats_stream_messages;
use dualwrite::message::DataMessage;
use dualwrite::provider::nats::NatsConfig;
use dualwrite::provider::nats::NatsProvider;
use dualwrite::provider::{Provider, ProviderError};

const TIMEOUT: Duration = Duration::from_secs(2);

fn spec(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        subject: format!("dwtest.{}", common::unique("s")),
        stream: None,
        durable: None,
        duplicate_window: None,
        replicas: None,
        tls: None,
        auth: None,
    }
}

fn message(n: usize) -> DataMessage {
    let mut m = DataMessage::new("nats-test", format!("payload {n}"));
    m.metadata.insert("n".into(), n.to_string());
    m.metadata.insert("tenant".into(), "acme".into());
    m
}

async fn plain_jetstream(url: &str) -> async_nats::jetstream::Context {
    let client = tokio::time::timeout(TIMEOUT * 5, async_nats::connect(url))
        .await
        .expect("connect in time")
        .expect("plain async-nats client connects");
    async_nats::jetstream::new(client)
}

#[tokio::test]
async fn bytes_on_the_stream_are_the_design_json_with_msg_id_and_digest_headers() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let p = NatsProvider::connect("nats-raw", &spec(&url), TIMEOUT)
        .await
        .unwrap();
    let m = message(7);
    p.publish(&m).await.unwrap();

    // Read back with a plain async-nats client, not through the provider.
    let js = plain_jetstream(&url).await;
    let stream = js.get_stream(p.stream_name()).await.unwrap();
    let raw = stream.get_raw_message(1).await.unwrap();
    assert_eq!(raw.subject.as_str(), p.subject());
    assert_eq!(&raw.payload[..], &m.to_wire()[..]);
    assert_eq!(
        raw.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(m.id.as_str())
    );
    // The content's digest beside the JSON, which stays byte for byte what Go reads.
    assert_eq!(
        raw.headers
            .get("Dualwrite-Digest")
            .map(|v| v.as_str().to_string()),
        Some(m.content_digest().to_string())
    );
    // Exactly the DESIGN keys, in the Go order, payload base64.
    let text = String::from_utf8(raw.payload.to_vec()).unwrap();
    let expected = format!(
        r#"{{"id":"{}","timestamp":{},"source":"nats-test","payload":"cGF5bG9hZCA3","metadata":{{"n":"7","tenant":"acme"}}}}"#,
        m.id, m.timestamp
    );
    assert_eq!(text, expected);
    p.close().await.unwrap();
}

#[tokio::test]
async fn a_retried_publish_is_stored_once() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let p = NatsProvider::connect("nats-dedup", &spec(&url), TIMEOUT)
        .await
        .unwrap();
    let m = message(1);
    p.publish(&m).await.unwrap();
    // The retry is acknowledged (duplicate=true) and therefore a success.
    p.publish(&m).await.unwrap();
    p.publish(&m.clone()).await.unwrap();
    assert_eq!(nats_stream_messages(&url, p.stream_name()).await, 1);
    assert_eq!(p.stats().published, 3);
    p.close().await.unwrap();
}

#[tokio::test]
async fn stream_is_created_with_the_spec_and_reused() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let mut s = spec(&url);
    s.stream = Some(common::unique("DWTEST").replace('-', "_"));
    s.duplicate_window = Some(Duration::from_secs(45));
    let first = NatsProvider::connect("nats-create", &s, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(first.stream_name(), s.stream.as_deref().unwrap());
    first.publish(&message(1)).await.unwrap();

    let js = plain_jetstream(&url).await;
    let mut stream = js.get_stream(first.stream_name()).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![s.subject.clone()]);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(45));

    // A second provider (another relay replica) reuses the stream and its data.
    let second = NatsProvider::connect("nats-create-2", &s, TIMEOUT)
        .await
        .unwrap();
    second.publish(&message(2)).await.unwrap();
    assert_eq!(nats_stream_messages(&url, first.stream_name()).await, 2);
    first.close().await.unwrap();
    second.close().await.unwrap();

    // Without a stream name: the subject, upper-cased, '.' and '-' as '_'.
    let d = spec(&url);
    let p = NatsProvider::connect("nats-default", &d, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        p.stream_name(),
        d.subject.to_uppercase().replace(['.', '-'], "_")
    );
    p.close().await.unwrap();
}

#[tokio::test]
async fn a_stream_that_does_not_capture_the_subject_is_a_config_error() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let a = spec(&url);
    let p = NatsProvider::connect("nats-a", &a, TIMEOUT).await.unwrap();
    let mut b = spec(&url);
    b.stream = Some(p.stream_name().to_string());
    let err = NatsProvider::connect("nats-b", &b, TIMEOUT)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ProviderError::Config { .. }), "{err}");
    assert!(
        err.to_string().contains("does not capture subject"),
        "{err}"
    );
    p.close().await.unwrap();
}

/// Item 5: a stream the relay creates has the requested replicas (1: the test server is not
/// clustered); an existing stream with other settings is written to and left exactly as it was,
/// even when the spec asks for another duplicate window and replica count.
#[tokio::test]
async fn a_created_stream_has_its_replicas_and_an_existing_one_is_left_unchanged() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let js = plain_jetstream(&url).await;

    let mut s = spec(&url);
    s.replicas = Some(1);
    let p = NatsProvider::connect("nats-created", &s, TIMEOUT)
        .await
        .unwrap();
    p.publish(&message(1)).await.unwrap();
    let info = js
        .get_stream(p.stream_name())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.num_replicas, 1);
    p.close().await.unwrap();

    // A stream someone else made: its own limits, duplicate window and storage.
    let mut s = spec(&url);
    let name = common::unique("DWEXISTING").replace('-', "_");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![s.subject.clone()],
        max_messages: 1000,
        duplicate_window: Duration::from_secs(30),
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let config = |js: async_nats::jetstream::Context, name: String| async move {
        js.get_stream(&name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone()
    };
    let before = config(js.clone(), name.clone()).await;
    s.stream = Some(name.clone());
    s.duplicate_window = Some(Duration::from_secs(90));
    s.replicas = Some(3);
    let p = NatsProvider::connect("nats-existing", &s, TIMEOUT)
        .await
        .unwrap();
    assert!(p.health().healthy, "{:?}", p.health());
    p.publish(&message(2)).await.unwrap();
    p.close().await.unwrap();
    let after = config(js.clone(), name.clone()).await;
    assert_eq!(after, before, "the existing stream is unchanged");
    assert_eq!(
        (
            after.max_messages,
            after.duplicate_window,
            after.num_replicas
        ),
        (1000, Duration::from_secs(30), 1)
    );
    js.delete_stream(&name).await.unwrap();
}
