//! Unit tests of the NATS provider's pure parts and of the configuration errors it detects
//! itself (no server needed).

use std::time::Duration;

use super::connection::reconnect_delay;
use super::*;

#[test]
fn default_stream_names() {
    for (subject, want) in [
        ("orders.created", "ORDERS_CREATED"),
        ("dual-write.events", "DUAL_WRITE_EVENTS"),
        ("a.*.>", "A____"),
        ("x", "X"),
    ] {
        assert_eq!(default_stream_name(subject), want, "{subject}");
    }
}

#[test]
fn subject_matching() {
    for (filter, subject, want) in [
        ("a.b", "a.b", true),
        ("a.*", "a.b", true),
        ("a.>", "a.b.c", true),
        ("a.>", "a", false),
        ("a.*", "a.b.c", false),
        ("a.b", "a.c", false),
        (">", "x", true),
        ("a.b.c", "a.b", false),
    ] {
        assert_eq!(
            subject_matches(filter, subject),
            want,
            "{filter} ~ {subject}"
        );
    }
}

#[test]
fn reconnect_backoff_is_capped() {
    assert_eq!(reconnect_delay(1), Duration::ZERO);
    assert_eq!(reconnect_delay(2), Duration::from_millis(2));
    assert_eq!(reconnect_delay(1_000_000), MAX_RECONNECT_DELAY);
}

/// Subject rules (concrete, no wildcard, no empty token) are the validator's (`api`); only what
/// the client library decides is checked here.
#[tokio::test]
async fn bad_configuration_is_a_config_error() {
    let spec = |url: &str, subject: &str| NatsConfig {
        url: url.into(),
        subject: subject.into(),
        stream: None,
        durable: None,
        duplicate_window: None,
        replicas: None,
        tls: None,
        auth: None,
    };
    let t = Duration::from_secs(1);
    for (s, want) in [
        (spec("", "a"), "nats.url is empty"),
        (spec("http://127.0.0.1:1", "a"), "is not a NATS URL"),
        (spec("nats://127.0.0.1:1", "a"), ""),
    ] {
        match NatsProvider::connect("n", &s, t).await {
            Err(e) => {
                assert!(matches!(e, ProviderError::Config { .. }), "{e}");
                assert!(!want.is_empty() && e.to_string().contains(want), "{e}");
            }
            // An unreachable server is not a configuration error.
            Ok(p) => {
                assert!(want.is_empty(), "expected {want:?}");
                assert!(!p.health().healthy);
                p.close().await.unwrap();
            }
        }
    }
}
