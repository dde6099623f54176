//! The NATS JetStream provider against a real nats-server (`NATS_URL`): round trip, the exact
//! bytes on the stream, de-duplication of retries, stream creation, deadlines, close.
//! Each test uses its own subject and stream, so they run in parallel and repeatedly.

mod common;

use std::time::{Duration, Instant};

use dualwrite::message::DataMessage;
use dualwrite::provider::nats::NatsConfig;
use dualwrite::provider::nats::NatsProvider;
use dualwrite::provider::{Provider, ProviderError};
use futures::StreamExt;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Allowed lateness of an error past the publish deadline (scheduling, not waiting).
const MARGIN: Duration = Duration::from_millis(500);

fn spec(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        subject: format!("dwtest.{}", common::unique("s")),
        stream: None,
        durable: None,
        duplicate_window: None,
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

async fn stream_messages(url: &str, stream: &str) -> u64 {
    let js = plain_jetstream(url).await;
    let mut s = js.get_stream(stream).await.expect("stream exists");
    s.info().await.expect("stream info").state.messages
}

#[tokio::test]
async fn round_trip_in_order() {
    common::init_tracing();
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let p = NatsProvider::connect("nats-rt", &spec(&url), TIMEOUT)
        .await
        .unwrap();
    assert!(p.health().healthy, "{:?}", p.health());
    assert_eq!(p.health().reason, "Connected");

    let sent: Vec<DataMessage> = (0..5).map(message).collect();
    for m in &sent {
        p.publish(m).await.unwrap();
    }
    let mut sub = p.subscribe().await.unwrap();
    for want in &sent {
        let got = tokio::time::timeout(TIMEOUT * 5, sub.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("decodes");
        assert_eq!(&got, want);
    }
    let s = p.stats();
    assert_eq!((s.published, s.failed, s.consumed), (5, 0, 5));
    p.close().await.unwrap();
}

#[tokio::test]
async fn bytes_on_the_stream_are_the_design_json_with_msg_id_header() {
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
    assert_eq!(stream_messages(&url, p.stream_name()).await, 1);
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
    assert_eq!(stream_messages(&url, first.stream_name()).await, 2);
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

#[tokio::test]
async fn many_concurrent_publishes_share_one_connection() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let p = NatsProvider::connect("nats-conc", &spec(&url), TIMEOUT)
        .await
        .unwrap();
    const N: usize = 2000;
    let msgs: Vec<DataMessage> = (0..N).map(message).collect();
    let started = Instant::now();
    let results = futures::stream::iter(&msgs)
        .map(|m| p.publish(m))
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    let took = started.elapsed();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    eprintln!(
        "nats: {N} publishes, 256 in flight: {took:?} ({:.0}/s)",
        N as f64 / took.as_secs_f64()
    );
    assert_eq!(stream_messages(&url, p.stream_name()).await, N as u64);
    p.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_fails_within_the_deadline_naming_the_provider() {
    // No broker needed: nothing listens on port 1.
    let s = NatsConfig {
        url: "nats://127.0.0.1:1".into(),
        subject: "dwtest.unreachable".into(),
        stream: None,
        durable: None,
        duplicate_window: None,
    };
    let started = Instant::now();
    let p = NatsProvider::connect("nats-down", &s, TIMEOUT)
        .await
        .unwrap();
    let connect_took = started.elapsed();
    let h = p.health();
    assert!(!h.healthy);
    assert_eq!(h.reason, "Disconnected", "{h:?}");

    let started = Instant::now();
    let err = p.publish(&message(1)).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("nats: connect to a closed port took {connect_took:?}; publish failed after {took:?}: {err}");
    assert!(took <= TIMEOUT + MARGIN, "took {took:?}");
    assert_eq!(err.provider(), "nats-down");
    assert!(err.to_string().contains("nats-down"), "{err}");
    assert!(
        matches!(
            err,
            ProviderError::Unavailable { .. } | ProviderError::Timeout { .. }
        ),
        "{err}"
    );
    assert_eq!(p.stats().failed, 1);
    assert!(!p.health().healthy);
    let started = Instant::now();
    let err = p
        .subscribe()
        .await
        .err()
        .expect("no subscription without a server");
    assert!(
        started.elapsed() <= TIMEOUT + MARGIN,
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, ProviderError::Subscribe { .. }), "{err}");
    assert_eq!(err.provider(), "nats-down");
    p.close().await.unwrap();
}

#[tokio::test]
async fn close_is_idempotent_and_publish_after_close_fails() {
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let p = NatsProvider::connect("nats-close", &spec(&url), TIMEOUT)
        .await
        .unwrap();
    p.publish(&message(1)).await.unwrap();
    let mut sub = p.subscribe().await.unwrap();
    assert!(sub.next().await.unwrap().is_ok());

    p.close().await.unwrap();
    p.close().await.unwrap();
    let err = p.publish(&message(2)).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Closed {
            provider: "nats-close".into()
        }
    );
    assert!(p.subscribe().await.is_err());
    let h = p.health();
    assert!(!h.healthy);
    assert_eq!(h.reason, "Closed");
    // The open subscription ends instead of hanging.
    let end = tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("ends in time");
    assert!(end.is_none(), "{end:?}");
}
