//! The provider contract (DESIGN.md, "The provider contract"), one set of cases run against
//! every provider: memory always, NATS JetStream against `NATS_URL` and Kafka against
//! `KAFKA_BROKERS` (real brokers; without the variable a case is skipped loudly, and fails under
//! `CI=true`). The cases: publish returns after the acknowledgement and is counted, subscribe
//! reads back in order with ids and contents intact, concurrent publishes are all stored once,
//! close is idempotent and ends open subscriptions, a publish after close fails, and (brokers
//! only) an unreachable broker turns into an error naming the provider within the deadline.
//!
//! Broker-specific behaviour (the exact bytes on the wire, NATS de-duplication, stream and topic
//! creation) stays in `tests/nats.rs` and `tests/kafka.rs`. Each case builds its own provider
//! on its own subject/topic/group, so cases run in parallel and repeatedly.

mod common;

use std::time::{Duration, Instant};

use common::brokers::{kafka_records, nats_stream_messages};
use dualwrite::message::DataMessage;
use dualwrite::provider::kafka::{KafkaConfig, KafkaProvider};
use dualwrite::provider::memory::{MemoryProvider, DEFAULT_CAPACITY};
use dualwrite::provider::nats::{default_stream_name, NatsConfig, NatsProvider};
use dualwrite::provider::{Provider, ProviderError};
use futures::StreamExt;

/// Allowed lateness of an error past the publish deadline (scheduling, not waiting).
const MARGIN: Duration = Duration::from_millis(500);
/// Bound on `connect` when the broker is unreachable (it must not wait for the broker).
const CONNECT_BOUND: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    Nats,
    Kafka,
}

/// Where a provider's messages are kept, to count them without the provider.
enum Store {
    Memory,
    NatsStream { url: String, stream: String },
    KafkaTopic { brokers: String, topic: String },
}

/// A provider under test and what the cases need to know about it.
struct Under {
    provider: Box<dyn Provider>,
    name: String,
    /// The publish deadline it was built with (memory has none; used as a bound).
    timeout: Duration,
    /// Bound on reading a message back (a fresh Kafka group takes seconds to join).
    read_timeout: Duration,
    /// Its health reason while it is up.
    up_reason: &'static str,
    store: Store,
}

impl Under {
    /// How many messages the provider's store holds, asked without the provider.
    async fn stored(&self) -> u64 {
        match &self.store {
            Store::Memory => self.provider.stats().depth,
            Store::NatsStream { url, stream } => nats_stream_messages(url, stream).await,
            Store::KafkaTopic { brokers, topic } => kafka_records(brokers, topic).await,
        }
    }
}

fn nats_config(url: &str) -> NatsConfig {
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

fn kafka_config(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.split(',').map(str::to_string).collect(),
        topic: common::unique("dwtest"),
        partitions: None,
        replication_factor: None,
        min_insync_replicas: None,
        key: Default::default(),
        group_id: Some(common::unique("dwtest-group")),
        config: Default::default(),
        tls: None,
        auth: None,
    }
}

/// A fresh provider of `kind` named `name`, or `None` when its broker is not configured (the
/// case returns; under CI `require_env` fails it instead).
async fn connect(kind: Kind, name: &str) -> Option<Under> {
    let under = match kind {
        Kind::Memory => Under {
            provider: Box::new(MemoryProvider::new(name, DEFAULT_CAPACITY)),
            name: name.into(),
            timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            up_reason: "InProcess",
            store: Store::Memory,
        },
        Kind::Nats => {
            let url = common::require_env("NATS_URL")?;
            let spec = nats_config(&url);
            let timeout = Duration::from_secs(2);
            let p = NatsProvider::connect(name, &spec, timeout).await.unwrap();
            assert_eq!(p.stream_name(), default_stream_name(&spec.subject));
            Under {
                provider: Box::new(p),
                name: name.into(),
                timeout,
                read_timeout: timeout * 5,
                up_reason: "Connected",
                store: Store::NatsStream {
                    url,
                    stream: default_stream_name(&spec.subject),
                },
            }
        }
        Kind::Kafka => {
            let brokers = common::require_env("KAFKA_BROKERS")?;
            let spec = kafka_config(&brokers);
            let timeout = Duration::from_secs(3);
            let p = KafkaProvider::connect(name, &spec, timeout).await.unwrap();
            Under {
                provider: Box::new(p),
                name: name.into(),
                timeout,
                read_timeout: Duration::from_secs(30),
                up_reason: "Connected",
                store: Store::KafkaTopic {
                    brokers,
                    topic: spec.topic,
                },
            }
        }
    };
    Some(under)
}

fn message(kind: Kind, n: usize) -> DataMessage {
    let mut m = DataMessage::new(format!("{kind:?}-test"), format!("payload {n}"));
    m.metadata.insert("n".into(), n.to_string());
    m.metadata.insert("tenant".into(), "acme".into());
    m
}

async fn round_trip_in_order(kind: Kind) {
    common::init_tracing();
    let Some(u) = connect(kind, &format!("{kind:?}-rt").to_lowercase()).await else {
        return;
    };
    let p = &u.provider;
    let h = p.health();
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.reason, u.up_reason);

    let sent: Vec<DataMessage> = (0..5).map(|n| message(kind, n)).collect();
    for m in &sent {
        p.publish(m).await.unwrap();
    }
    let mut sub = p.subscribe().await.unwrap();
    for want in &sent {
        let got = tokio::time::timeout(u.read_timeout, sub.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("decodes");
        assert_eq!(got.id, want.id, "the id is carried");
        assert_eq!(&got, want);
    }
    let s = p.stats();
    assert_eq!((s.published, s.failed, s.consumed), (5, 0, 5));
    p.close().await.unwrap();
}

async fn close_is_idempotent_and_publish_after_close_fails(kind: Kind) {
    let Some(u) = connect(kind, &format!("{kind:?}-close").to_lowercase()).await else {
        return;
    };
    let p = &u.provider;
    p.publish(&message(kind, 1)).await.unwrap();
    let mut sub = p.subscribe().await.unwrap();
    let first = tokio::time::timeout(u.read_timeout, sub.next())
        .await
        .expect("in time");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");

    let started = Instant::now();
    p.close().await.unwrap();
    p.close().await.unwrap();
    eprintln!("{kind:?}: close took {:?}", started.elapsed());
    let err = p.publish(&message(kind, 2)).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Closed {
            provider: u.name.clone()
        }
    );
    assert!(p.subscribe().await.is_err());
    let h = p.health();
    assert!(!h.healthy);
    assert_eq!(h.reason, "Closed");
    // The open subscription ends instead of hanging.
    let end = tokio::time::timeout(u.timeout, sub.next())
        .await
        .expect("ends in time");
    assert!(end.is_none(), "{end:?}");
}

/// Many publishes in flight at once on one provider (one connection, one producer): every one
/// is acknowledged, counted, and stored exactly once.
async fn concurrent_publishes_are_acknowledged_and_stored_once(kind: Kind) {
    let Some(u) = connect(kind, &format!("{kind:?}-conc").to_lowercase()).await else {
        return;
    };
    let p = &u.provider;
    let (n, in_flight) = match kind {
        Kind::Kafka => (5000, 512),
        Kind::Memory | Kind::Nats => (2000, 256),
    };
    let msgs: Vec<DataMessage> = (0..n).map(|i| message(kind, i)).collect();
    // Warm up (the idempotent Kafka producer fetches its producer id on first use).
    p.publish(&message(kind, 0)).await.unwrap();
    let started = Instant::now();
    let results = futures::stream::iter(&msgs)
        .map(|m| p.publish(m))
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await;
    let took = started.elapsed();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    eprintln!(
        "{kind:?}: {n} publishes, {in_flight} in flight: {took:?} ({:.0}/s)",
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(p.stats().published, n as u64 + 1);
    assert_eq!(u.stored().await, n as u64 + 1);

    // Sequential, for the latency one caller sees (Kafka's linger.ms included).
    let started = Instant::now();
    for m in msgs.iter().take(20) {
        p.publish(m).await.unwrap();
    }
    eprintln!(
        "{kind:?}: sequential publish latency {:?} each",
        started.elapsed() / 20
    );
    p.close().await.unwrap();
}

/// A provider whose broker does not listen (port 1): it is built anyway (the relay starts
/// while a broker is down), reports itself down, and a publish or subscribe fails within the
/// deadline with an error naming the provider. No broker needed.
async fn unreachable_broker_fails_within_the_deadline_naming_the_provider(kind: Kind) {
    let name = format!("{kind:?}-down").to_lowercase();
    let started = Instant::now();
    let (p, timeout, down_reason): (Box<dyn Provider>, _, _) = match kind {
        Kind::Nats => {
            let mut s = nats_config("nats://127.0.0.1:1");
            s.subject = "dwtest.unreachable".into();
            let t = Duration::from_secs(2);
            let p = NatsProvider::connect(&name, &s, t).await.unwrap();
            (Box::new(p), t, "Disconnected")
        }
        Kind::Kafka => {
            let mut s = kafka_config("127.0.0.1:1");
            s.topic = "dwtest-unreachable".into();
            s.group_id = None;
            let t = Duration::from_secs(3);
            let p = KafkaProvider::connect(&name, &s, t).await.unwrap();
            (Box::new(p), t, "Unavailable")
        }
        Kind::Memory => unreachable!("memory has no broker"),
    };
    let connect_took = started.elapsed();
    assert!(connect_took < CONNECT_BOUND, "{connect_took:?}");
    let h = p.health();
    assert!(!h.healthy);
    assert_eq!(h.reason, down_reason, "{h:?}");

    let started = Instant::now();
    let err = p.publish(&message(kind, 1)).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("{kind:?}: connect to a closed port took {connect_took:?}; publish failed after {took:?}: {err}");
    assert!(took <= timeout + MARGIN, "took {took:?}");
    assert_eq!(err.provider(), name);
    assert!(err.to_string().contains(&name), "{err}");
    assert!(
        matches!(
            err,
            ProviderError::Unavailable { .. } | ProviderError::Timeout { .. }
        ),
        "{err}"
    );
    assert_eq!(p.stats().failed, 1);
    assert!(!p.health().healthy);
    if kind == Kind::Kafka {
        // Health keeps the broker's answer rather than a generic publish failure.
        assert_eq!(p.health().reason, "Unavailable", "{:?}", p.health());
    }
    let started = Instant::now();
    let err = p
        .subscribe()
        .await
        .err()
        .expect("no subscription without a broker");
    assert!(
        started.elapsed() <= timeout + MARGIN,
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, ProviderError::Subscribe { .. }), "{err}");
    assert_eq!(err.provider(), name);
    p.close().await.unwrap();
}

/// One `#[tokio::test]` per case for a provider kind, named `<kind>::<case>`.
macro_rules! contract {
    ($kind:ident: $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                super::$case(super::Kind::$kind).await
            }
        )+
    };
}

mod memory {
    contract!(Memory:
        round_trip_in_order,
        close_is_idempotent_and_publish_after_close_fails,
        concurrent_publishes_are_acknowledged_and_stored_once,
    );
}

mod nats {
    contract!(Nats:
        round_trip_in_order,
        close_is_idempotent_and_publish_after_close_fails,
        concurrent_publishes_are_acknowledged_and_stored_once,
        unreachable_broker_fails_within_the_deadline_naming_the_provider,
    );
}

mod kafka {
    contract!(Kafka:
        round_trip_in_order,
        close_is_idempotent_and_publish_after_close_fails,
        concurrent_publishes_are_acknowledged_and_stored_once,
        unreachable_broker_fails_within_the_deadline_naming_the_provider,
    );
}
