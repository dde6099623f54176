//! The NATS connection and the JetStream stream behind it: the state the provider, the
//! async-nats event callback, the supervisor and subscriptions share ([`Shared`]), how health
//! follows connection events, the first dial ([`Dialer`]), and the stream check/creation
//! ([`StreamSetup`]) with the rule that tells a configuration error from a passing one.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event, ServerAddr};
use tokio::sync::{watch, Notify};

use super::{
    subject_matches, CONNECT_ATTEMPT_TIMEOUT, MAX_RECONNECT_DELAY, REASON_CONNECTING,
    REASON_DISCONNECTED, SETUP_TIMEOUT,
};
use crate::provider::supervise::EnsureError;
use crate::provider::{Counters, Health, HealthTracker};

/// The connection as the event callback last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    Up,
    Down,
}

/// State shared by the provider, the connection's event callback, the supervisor task and
/// subscription streams.
pub(super) struct Shared {
    pub(super) name: String,
    /// The URL(s) from the spec, for messages a person reads.
    pub(super) url: String,
    pub(super) health: HealthTracker,
    pub(super) counters: Counters,
    /// The stream exists and captures the subject (as far as we last knew).
    pub(super) stream_ready: AtomicBool,
    pub(super) link: watch::Sender<Link>,
    /// Wakes the supervisor before its next tick (reconnected, stream lost).
    pub(super) kick: Notify,
}

impl Shared {
    /// A provider that is not connected yet.
    pub(super) fn new(name: &str, url: &str) -> Self {
        let (link, _) = watch::channel(Link::Down);
        Self {
            name: name.to_string(),
            url: url.to_string(),
            health: HealthTracker::new(Health::down(
                REASON_CONNECTING,
                format!("connecting to {url}"),
            )),
            counters: Counters::default(),
            stream_ready: AtomicBool::new(false),
            link,
            kick: Notify::new(),
        }
    }

    /// Runs on the async-nats event task; must not block.
    fn on_event(&self, event: Event) {
        if self.health.is_closed() {
            return;
        }
        match event {
            Event::Connected => {
                self.link.send_replace(Link::Up);
                tracing::info!(provider = %self.name, url = %self.url, "nats: connected");
                // Health turns up only once the supervisor saw JetStream answer.
                self.kick.notify_one();
            }
            Event::Disconnected => {
                self.link.send_replace(Link::Down);
                tracing::warn!(provider = %self.name, url = %self.url, "nats: disconnected; reconnecting");
                self.health.set(
                    false,
                    REASON_DISCONNECTED,
                    format!("lost the connection to {}; reconnecting", self.url),
                );
            }
            Event::Closed => {
                self.link.send_replace(Link::Down);
                self.health.set(
                    false,
                    REASON_DISCONNECTED,
                    format!("connection to {} closed", self.url),
                );
            }
            Event::ClientError(e) => {
                // Emitted for each failed (re)connect attempt.
                if *self.link.borrow() != Link::Up {
                    self.link.send_replace(Link::Down);
                    tracing::debug!(provider = %self.name, url = %self.url, error = %e, "nats: connect attempt failed");
                    self.health.set(
                        false,
                        REASON_DISCONNECTED,
                        format!("cannot connect to {}: {e}", self.url),
                    );
                } else {
                    tracing::warn!(provider = %self.name, error = %e, "nats: client error");
                }
            }
            Event::LameDuckMode => {
                tracing::warn!(provider = %self.name, url = %self.url, "nats: server entered lame duck mode; it will close the connection soon")
            }
            Event::ServerError(e) => {
                tracing::warn!(provider = %self.name, error = %e, "nats: server error")
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!(provider = %self.name, sid, "nats: slow consumer")
            }
            Event::Draining => tracing::debug!(provider = %self.name, "nats: draining"),
        }
    }
}

/// Client options: bounded attempts, reconnect forever with a capped backoff, and connection
/// events turned into health through `shared`.
pub(super) fn connect_options(name: &str, shared: &Arc<Shared>) -> ConnectOptions {
    let events = Arc::clone(shared);
    ConnectOptions::new()
        .name(format!("dualwrite-{name}"))
        .connection_timeout(CONNECT_ATTEMPT_TIMEOUT)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let shared = events.clone();
            async move { shared.on_event(event) }
        })
}

/// Reconnect backoff: immediately, then doubling from 1ms, capped at [`MAX_RECONNECT_DELAY`].
pub(super) fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    Duration::from_millis(1u64 << exp).min(MAX_RECONNECT_DELAY)
}

/// What the provider needs to (re)create its stream; cloned into the supervisor.
#[derive(Clone)]
pub(super) struct StreamSetup {
    pub(super) js: jetstream::Context,
    pub(super) config: stream::Config,
    pub(super) subject: String,
}

impl StreamSetup {
    /// Gets the stream, creating it when missing, and checks it captures the subject.
    pub(super) async fn ensure(&self) -> Result<(), EnsureError> {
        let stream = self
            .js
            .get_or_create_stream(self.config.clone())
            .await
            .map_err(|e| classify_stream_error(&self.config.name, e))?;
        let info = stream.cached_info();
        if !info
            .config
            .subjects
            .iter()
            .any(|f| subject_matches(f, &self.subject))
        {
            return Err(EnsureError::Config(format!(
                "stream {} exists but does not capture subject {} (its subjects: {:?}); \
                 name another stream in nats.stream or add the subject to it",
                self.config.name, self.subject, info.config.subjects
            )));
        }
        if !self.config.duplicate_window.is_zero()
            && info.config.duplicate_window != self.config.duplicate_window
        {
            tracing::warn!(
                stream = %self.config.name,
                configured = ?self.config.duplicate_window,
                actual = ?info.config.duplicate_window,
                "nats: the existing stream keeps its own duplicate window; update the stream to change it"
            );
        }
        Ok(())
    }
}

fn classify_stream_error(stream: &str, e: CreateStreamError) -> EnsureError {
    let text = format!("stream {stream}: {e}");
    match e.kind() {
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet => EnsureError::Config(text),
        // 400: the server refused the stream as asked (subjects overlap another stream, the
        // name is taken with another configuration, invalid settings): retrying cannot help.
        CreateStreamErrorKind::JetStream(js) if js.code() == 400 => EnsureError::Config(text),
        _ => EnsureError::Transient(text),
    }
}

/// A live connection and what the stream needs; set once the first connection succeeded.
pub(super) struct Conn {
    pub(super) client: async_nats::Client,
    pub(super) setup: StreamSetup,
}

/// Makes the first connection (async-nats reconnects by itself after that).
pub(super) struct Dialer {
    pub(super) options: ConnectOptions,
    pub(super) addrs: Vec<ServerAddr>,
    pub(super) publish_timeout: Duration,
    pub(super) stream: stream::Config,
    pub(super) subject: String,
}

impl Dialer {
    /// One round of connection attempts over the configured servers, bounded by
    /// [`SETUP_TIMEOUT`] (each server by [`CONNECT_ATTEMPT_TIMEOUT`]).
    pub(super) async fn dial(&self) -> Result<Conn, EnsureError> {
        let client = tokio::time::timeout(
            SETUP_TIMEOUT,
            self.options.clone().connect(self.addrs.clone()),
        )
        .await
        .map_err(|_| {
            EnsureError::Transient(format!("no answer within {}ms", SETUP_TIMEOUT.as_millis()))
        })?
        .map_err(|e| match e.kind() {
            // Retrying cannot fix these; `connect` turns them into configuration errors.
            async_nats::ConnectErrorKind::Authentication
            | async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::ServerParse => EnsureError::Config(e.to_string()),
            _ => EnsureError::Transient(e.to_string()),
        })?;
        // The context timeout bounds JetStream API requests and PubAck waits; `ack_timeout`
        // bounds acks whose future was dropped (a publish cut by its deadline), so they do not
        // hold one of the in-flight permits for the default 30s.
        let js = jetstream::ContextBuilder::new()
            .timeout(self.publish_timeout)
            .ack_timeout(self.publish_timeout)
            .build(client.clone());
        Ok(Conn {
            client,
            setup: StreamSetup {
                js,
                config: self.stream.clone(),
                subject: self.subject.clone(),
            },
        })
    }
}
