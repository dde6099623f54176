//! NATS outage and recovery with the same provider instance: the shared nats-server of
//! `hack/test-env` is stopped and started again.
//!
//! These tests disturb the broker every other test uses, so they run only when asked
//! (`DUALWRITE_OUTAGE_TESTS=1`, or always under `CI=true`), one at a time, and never in parallel
//! with the other test binaries:
//!
//! ```text
//! DUALWRITE_OUTAGE_TESTS=1 cargo test --test nats_outage -- --test-threads=1
//! ```

mod common;

use std::time::{Duration, Instant};

use common::StoppedService;
use dualwrite::message::DataMessage;
use dualwrite::provider::nats::NatsConfig;
use dualwrite::provider::nats::NatsProvider;
use dualwrite::provider::Provider;
use futures::StreamExt;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Allowed lateness of an error past the publish deadline (scheduling, not waiting).
const MARGIN: Duration = Duration::from_millis(500);
/// Bound on noticing a stopped server / recovering after a restart.
const NOTICE: Duration = Duration::from_secs(15);
const RECOVER: Duration = Duration::from_secs(30);

/// Even if someone forgets `--test-threads=1`, the tests of this binary take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        subject: format!("dwoutage.{}", common::unique("s")),
        stream: None,
        durable: None,
        duplicate_window: None,
        replicas: None,
        tls: None,
        auth: None,
    }
}

/// The next message of `sub` within [`RECOVER`], skipping error items (counted).
async fn next_message(sub: &mut dualwrite::provider::MessageStream) -> (DataMessage, usize) {
    let deadline = tokio::time::Instant::now() + RECOVER;
    let mut errors = 0;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => panic!("no message within {RECOVER:?} ({errors} errors seen)"),
            Ok(Some(Ok(m))) => return (m, errors),
            Ok(Some(Err(e))) => {
                eprintln!("subscription error: {e}");
                errors += 1;
            }
            Ok(None) => panic!("the subscription ended"),
        }
    }
}

async fn healthy(p: &NatsProvider) -> Result<(), String> {
    let h = p.health();
    if h.healthy {
        Ok(())
    } else {
        Err(format!("{h:?}"))
    }
}

async fn unhealthy(p: &NatsProvider) -> Result<String, String> {
    let h = p.health();
    if h.healthy {
        Err(format!("{h:?}"))
    } else {
        Ok(h.reason)
    }
}

#[tokio::test]
async fn the_same_provider_recovers_after_the_server_restarts() {
    if !common::outage_tests_enabled() {
        return;
    }
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    common::init_tracing();

    let p = NatsProvider::connect("nats-outage", &spec(&url), TIMEOUT)
        .await
        .unwrap();
    let before = DataMessage::new("outage", "before");
    p.publish(&before).await.unwrap();
    // A subscription opened before the outage must carry on after it by itself.
    let mut sub = p.subscribe().await.unwrap();
    assert_eq!(next_message(&mut sub).await.0, before);

    let stopped = StoppedService::stop("nats").await;
    // Health follows the connection: no publish needed to notice.
    let reason = common::eventually(NOTICE, "health down after the server stopped", || {
        unhealthy(&p)
    })
    .await;
    assert_eq!(reason, "Disconnected");

    let started = Instant::now();
    let err = p
        .publish(&DataMessage::new("outage", "during"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("nats: publish to the stopped server failed after {took:?}: {err}");
    assert!(took <= TIMEOUT + MARGIN, "took {took:?}");
    assert_eq!(err.provider(), "nats-outage");
    assert!(err.to_string().contains("nats-outage"), "{err}");

    stopped.start().await;
    let started = Instant::now();
    // Health comes back by itself, before anything is published.
    common::eventually(RECOVER, "healthy again after the restart", || healthy(&p)).await;
    eprintln!(
        "nats: healthy {:?} after the server was ready again",
        started.elapsed()
    );
    let after = DataMessage::new("outage", "after");
    p.publish(&after).await.unwrap();

    // The same subscription delivers what was written after the restart (errors it reported
    // while the broker was away are skipped), and nothing else was stored in between.
    let (got, errors) = next_message(&mut sub).await;
    assert_eq!(got, after);
    eprintln!("nats: the subscription reported {errors} errors during the outage");

    let s = p.stats();
    assert_eq!((s.published, s.failed), (2, 1));
    p.close().await.unwrap();
}

#[tokio::test]
async fn a_provider_started_while_the_server_is_down_creates_its_stream_later() {
    if !common::outage_tests_enabled() {
        return;
    }
    let Some(url) = common::require_env("NATS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    common::init_tracing();

    let stopped = StoppedService::stop("nats").await;
    let started = Instant::now();
    // The relay must start while a broker is down: connect succeeds, unhealthy.
    let p = NatsProvider::connect("nats-late", &spec(&url), TIMEOUT)
        .await
        .unwrap();
    eprintln!(
        "nats: connect with the server down took {:?}",
        started.elapsed()
    );
    assert_eq!(p.health().reason, "Disconnected", "{:?}", p.health());
    let started = Instant::now();
    let err = p
        .publish(&DataMessage::new("late", "early"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() <= TIMEOUT + MARGIN,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.provider(), "nats-late");

    stopped.start().await;
    common::eventually(RECOVER, "healthy once the server is up", || healthy(&p)).await;
    let m = DataMessage::new("late", "first");
    p.publish(&m).await.unwrap();

    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(p.stream_name())
        .await
        .expect("stream created by the provider");
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    p.close().await.unwrap();
}
