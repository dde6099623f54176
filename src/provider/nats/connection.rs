//! The NATS connection and the JetStream stream behind it: the state the provider, the
//! async-nats event callback, the supervisor and subscriptions share ([`Shared`]), how health
//! follows connection events, a dial ([`Dialer`]: the first connection, and a fresh one when a
//! Secret changed), the connection in force ([`ConnSlot`]), and the stream check/creation
//! ([`StreamSetup`]) with the rule that tells a configuration error from a passing one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event, ServerAddr};
use tokio::sync::{watch, Notify};

use super::security::{secure, ClientSetupError, UrlAuth};
use super::{
    subject_matches, CONNECT_ATTEMPT_TIMEOUT, MAX_RECONNECT_DELAY, REASON_CONNECTING,
    REASON_DISCONNECTED, SETUP_TIMEOUT,
};
use crate::provider::secret::{NatsAuth, TlsFiles};
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
    /// The URL(s) from the spec with any user-info redacted, for messages a person reads.
    pub(super) url: String,
    pub(super) health: HealthTracker,
    pub(super) counters: Counters,
    /// The stream exists and captures the subject (as far as we last knew).
    pub(super) stream_ready: AtomicBool,
    pub(super) link: watch::Sender<Link>,
    /// Wakes the supervisor before its next tick (reconnected, stream lost).
    pub(super) kick: Notify,
    /// Which connection's events count: a connection replaced after a Secret changed still
    /// reports while it drains, and must not touch health.
    pub(super) generation: AtomicU64,
}

impl Shared {
    /// A provider that is not connected yet. `url` is shown as it is: redact it first.
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
            generation: AtomicU64::new(0),
        }
    }

    /// Runs on the async-nats event task; must not block.
    fn on_event(&self, generation: u64, event: Event) {
        if self.health.is_closed() || self.generation.load(Ordering::Acquire) != generation {
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
/// events turned into health through `shared` while `generation` is the one in force.
pub(super) fn connect_options(shared: &Arc<Shared>, generation: u64) -> ConnectOptions {
    let events = Arc::clone(shared);
    ConnectOptions::new()
        .name(format!("dualwrite-{}", shared.name))
        .connection_timeout(CONNECT_ATTEMPT_TIMEOUT)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let shared = events.clone();
            async move { shared.on_event(generation, event) }
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

/// A live connection and what the stream needs.
pub(super) struct Conn {
    pub(super) client: async_nats::Client,
    pub(super) setup: StreamSetup,
}

/// The connection in force: empty until the first connection succeeded, replaced when a Secret
/// changed. A publish holds its own `Arc` for as long as it runs. std RwLock: held only to clone
/// or swap the `Arc`, never across an await.
#[derive(Default)]
pub(super) struct ConnSlot(RwLock<Option<Arc<Conn>>>);

impl ConnSlot {
    pub(super) fn get(&self) -> Option<Arc<Conn>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `conn` in force; returns the one it replaces.
    pub(super) fn replace(&self, conn: Conn) -> Option<Arc<Conn>> {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Arc::new(conn))
    }
}

/// Why a dial did not give a connection.
#[derive(Debug)]
pub(super) enum DialError {
    /// A Secret key cannot be read or used, or the URL cannot: no dial was made.
    Setup(ClientSetupError),
    /// The server refused the credentials.
    Auth(String),
    /// Retrying cannot fix it (the server list cannot be used).
    Config(String),
    /// Unreachable, timed out, TLS handshake failed…: try again later.
    Transient(String),
}

/// Makes a connection (async-nats reconnects by itself after that, with the same credentials).
pub(super) struct Dialer {
    pub(super) shared: Arc<Shared>,
    /// The servers without user-info.
    pub(super) addrs: Vec<ServerAddr>,
    pub(super) url_auth: Option<UrlAuth>,
    pub(super) tls: Option<TlsFiles>,
    pub(super) auth: Option<NatsAuth>,
    pub(super) publish_timeout: Duration,
    pub(super) stream: stream::Config,
    pub(super) subject: String,
}

impl Dialer {
    /// One round of connection attempts over the configured servers, bounded by
    /// [`SETUP_TIMEOUT`] (each server by [`CONNECT_ATTEMPT_TIMEOUT`]), with the Secret files
    /// read now. Its events count while `generation` is the one in force.
    pub(super) async fn dial(&self, generation: u64) -> Result<Conn, DialError> {
        let options = secure(
            connect_options(&self.shared, generation),
            self.tls.as_ref(),
            self.auth.as_ref(),
            self.url_auth.as_ref(),
        )
        .map_err(DialError::Setup)?;
        let client = tokio::time::timeout(SETUP_TIMEOUT, options.connect(self.addrs.clone()))
            .await
            .map_err(|_| {
                DialError::Transient(format!("no answer within {}ms", SETUP_TIMEOUT.as_millis()))
            })?
            // async-nats' connect errors name the kind of failure, never an address.
            .map_err(|e| match e.kind() {
                async_nats::ConnectErrorKind::Authentication
                | async_nats::ConnectErrorKind::AuthorizationViolation => {
                    DialError::Auth(e.to_string())
                }
                async_nats::ConnectErrorKind::ServerParse => DialError::Config(e.to_string()),
                _ => DialError::Transient(e.to_string()),
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
