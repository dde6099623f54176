//! The NATS JetStream provider: publishes each message as its JSON wire form on one subject,
//! with header `Nats-Msg-Id: <id>` so JetStream de-duplicates retries inside the stream's
//! duplicate window, and returns only once the stream's PubAck arrived (a `duplicate` ack counts
//! as success: the message is stored once). The stream is created when missing and reused when
//! present.
//!
//! Lifecycle, and why it is shaped this way:
//! - `connect` fails only on configuration errors (a bad URL or subject, a stream that cannot
//!   hold the subject). An unreachable server does not fail it: the relay must start when one
//!   broker is down (BestEffort), so the provider is built with its health down and its
//!   supervisor task dials again every [`PROBE_INTERVAL`]. Once connected, async-nats reconnects
//!   by itself after any later loss (no reconnect limit). The first connection is not left to
//!   async-nats' `retry_on_initial_connect`: a client closed before it ever connected would keep
//!   that background connect loop running forever.
//! - Health follows the connection: a `Disconnected` event marks it down at once; after a
//!   `Connected` event a small supervisor task verifies JetStream answers (and creates the stream
//!   if it could not be created before) and only then marks it up. A failed publish marks it
//!   down (`PublishFailed`); the supervisor re-checks an unhealthy provider every
//!   [`PROBE_INTERVAL`], so health recovers by itself even when nothing publishes (a handoff
//!   backlog waits for "healthy" before it replays, so waiting for a successful publish would
//!   deadlock).
//! - While disconnected, a publish waits at most [`RECONNECT_GRACE`] for the link to return and
//!   then fails with `Unavailable`, rather than queueing in the client and burning the whole
//!   deadline: under BestEffort every ingest request would otherwise take `publishTimeout` for
//!   as long as the outage lasts, and a queued message could reach the stream long after the
//!   caller was told it failed.
//! - Every external call is bounded: the whole publish (connect wait, stream check, send, PubAck)
//!   by `publish_timeout`; setup, probes, acks and close by the constants below.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::{self, stream, AckKind};
use async_nats::{ConnectOptions, Event, HeaderMap, ServerAddr, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{watch, Notify};

use super::{
    Counters, Health, HealthTracker, MessageStream, Provider, ProviderError, ProviderKind, Stats,
    Supervisor,
};
use crate::message::DataMessage;

/// Bound on one TCP + TLS + NATS handshake attempt (async-nats `connection_timeout`).
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on what `connect` and `subscribe` wait for: the first connection attempt's outcome,
/// and the JetStream requests that check or create the stream and the consumer.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor re-checks an unhealthy provider (one JetStream API request).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one supervisor check.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a publish waits for a lost connection to come back before failing (a blip is
/// bridged; an outage fails fast instead of costing every caller the whole deadline).
pub const RECONNECT_GRACE: Duration = Duration::from_millis(250);
/// Longest pause between reconnect attempts. The async-nats default (4s) would add up to 4s to
/// every recovery; one TCP connect per second to a dead server costs nothing.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Bound on acknowledging one consumed message (a plain publish on the ack subject).
pub const CONSUMER_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on `close`: stopping the supervisor, then draining the connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The header JetStream de-duplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Health reasons this provider reports (besides `Connected` and `PublishFailed`).
const REASON_CONNECTED: &str = "Connected";
const REASON_CONNECTING: &str = "Connecting";
const REASON_DISCONNECTED: &str = "Disconnected";
const REASON_STREAM: &str = "StreamUnavailable";

/// The stream name used when the spec gives none: the subject in upper case, with every
/// character a stream name cannot hold ('.', '-', '*', '>', whitespace, '/', …) turned into '_'.
/// `orders.created` → `ORDERS_CREATED`.
pub fn default_stream_name(subject: &str) -> String {
    subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether the NATS subject filter `filter` (which may hold `*` and `>`) captures `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let (mut f, mut s) = (filter.split('.'), subject.split('.'));
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A concrete subject: non-empty dot-separated tokens, no wildcards, no whitespace.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("nats.subject is empty; give the subject messages are published on".into());
    }
    if subject.chars().any(|c| c.is_whitespace()) {
        return Err(format!("nats.subject {subject:?} contains whitespace"));
    }
    if subject.split('.').any(|t| t.is_empty()) {
        return Err(format!(
            "nats.subject {subject:?} has an empty token (leading, trailing or double '.')"
        ));
    }
    if subject
        .split('.')
        .any(|t| t.contains('*') || t.contains('>'))
    {
        return Err(format!(
            "nats.subject {subject:?} holds a wildcard; messages are published on one concrete \
             subject (e.g. orders.created)"
        ));
    }
    Ok(())
}

/// The connection as the event callback last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    Down,
}

/// Why the connection or the stream could not be set up: a configuration problem (fail
/// `connect`) or a passing condition (keep the provider, retry later).
#[derive(Debug)]
enum EnsureError {
    Config(String),
    Transient(String),
}

impl EnsureError {
    fn reason(&self) -> &str {
        match self {
            EnsureError::Config(r) | EnsureError::Transient(r) => r,
        }
    }
}

/// State shared by the provider, the connection's event callback, the supervisor task and
/// subscription streams.
struct Shared {
    name: String,
    /// The URL(s) from the spec, for messages a person reads.
    url: String,
    health: HealthTracker,
    counters: Counters,
    /// The stream exists and captures the subject (as far as we last knew).
    stream_ready: AtomicBool,
    link: watch::Sender<Link>,
    /// Wakes the supervisor before its next tick (reconnected, stream lost).
    kick: Notify,
}

impl Shared {
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

/// What the provider needs to (re)create its stream; cloned into the supervisor.
#[derive(Clone)]
struct StreamSetup {
    js: jetstream::Context,
    config: stream::Config,
    subject: String,
}

impl StreamSetup {
    /// Gets the stream, creating it when missing, and checks it captures the subject.
    async fn ensure(&self) -> Result<(), EnsureError> {
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

/// A live connection and what the stream needs; set once the first connection succeeded.
struct Conn {
    client: async_nats::Client,
    setup: StreamSetup,
}

/// Makes the first connection (async-nats reconnects by itself after that).
struct Dialer {
    options: ConnectOptions,
    addrs: Vec<ServerAddr>,
    publish_timeout: Duration,
    stream: stream::Config,
    subject: String,
}

impl Dialer {
    /// One round of connection attempts over the configured servers, bounded by
    /// [`SETUP_TIMEOUT`] (each server by [`CONNECT_ATTEMPT_TIMEOUT`]).
    async fn dial(&self) -> Result<Conn, EnsureError> {
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

/// What a NATS provider is built from. The pipeline's validator (`api`) checks it before a
/// provider sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NatsConfig {
    /// Server URL(s), e.g. `nats://nats:4222` (comma-separated for several).
    pub url: String,
    /// The one concrete subject messages are published on.
    pub subject: String,
    /// JetStream stream holding the subject; default [`default_stream_name`] of the subject.
    pub stream: Option<String>,
    /// Durable consumer used by `subscribe`; default `dualwrite-<provider name>`.
    pub durable: Option<String>,
    /// JetStream de-duplication window; the server's default (2 minutes) when unset.
    pub duplicate_window: Option<Duration>,
}

/// A NATS JetStream provider. See the module documentation.
pub struct NatsProvider {
    name: String,
    subject: Subject,
    stream_name: String,
    durable: String,
    publish_timeout: Duration,
    /// Empty until the first connection succeeded (at `connect` or later by the supervisor).
    conn: Arc<OnceLock<Conn>>,
    shared: Arc<Shared>,
    /// The health supervisor; its stop signal also ends subscription streams.
    supervisor: Supervisor,
}

impl NatsProvider {
    /// Connects to NATS (in the background when the server is unreachable), ensures the stream
    /// and starts the health supervisor. Fails only on configuration errors.
    pub async fn connect(
        name: &str,
        spec: &NatsConfig,
        publish_timeout: Duration,
    ) -> Result<NatsProvider, ProviderError> {
        let config_err = |reason: String| ProviderError::Config {
            provider: name.to_string(),
            reason,
        };
        let subject = spec.subject.trim().to_string();
        check_subject(&subject).map_err(config_err)?;
        let addrs = spec
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<ServerAddr>().map_err(|e| {
                    format!("nats.url {u:?} is not a NATS URL like nats://host:4222 ({e})")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(config_err)?;
        if addrs.is_empty() {
            return Err(config_err(
                "nats.url is empty; give e.g. nats://nats:4222".into(),
            ));
        }
        let stream_name = spec
            .stream
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map_or_else(|| default_stream_name(&subject), str::to_string);
        // Zero leaves the server default (2 minutes).
        let duplicate_window = spec.duplicate_window.unwrap_or(Duration::ZERO);
        let durable = spec
            .durable
            .clone()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| format!("dualwrite-{name}"));
        if publish_timeout.is_zero() {
            return Err(config_err("publishTimeout must be more than 0".into()));
        }

        let (link, _) = watch::channel(Link::Down);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            url: spec.url.clone(),
            health: HealthTracker::new(Health::down(
                REASON_CONNECTING,
                format!("connecting to {}", spec.url),
            )),
            counters: Counters::default(),
            stream_ready: AtomicBool::new(false),
            link,
            kick: Notify::new(),
        });

        let events = shared.clone();
        let options = ConnectOptions::new()
            .name(format!("dualwrite-{name}"))
            .connection_timeout(CONNECT_ATTEMPT_TIMEOUT)
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let shared = events.clone();
                async move { shared.on_event(event) }
            });
        let dialer = Dialer {
            options,
            addrs,
            publish_timeout,
            stream: stream::Config {
                name: stream_name.clone(),
                subjects: vec![subject.clone()],
                duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            },
            subject: subject.clone(),
        };

        let conn = Arc::new(OnceLock::new());
        match dialer.dial().await {
            Ok(c) => {
                match tokio::time::timeout(SETUP_TIMEOUT, c.setup.ensure()).await {
                    Ok(Ok(())) => {
                        shared.stream_ready.store(true, Ordering::Release);
                        shared.health.set(
                            true,
                            REASON_CONNECTED,
                            format!("connected to {}; stream {stream_name} ready", spec.url),
                        );
                    }
                    Ok(Err(EnsureError::Config(reason))) => {
                        // Close the connection we opened; the caller gets no provider to close.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, c.client.drain()).await;
                        return Err(config_err(reason));
                    }
                    Ok(Err(EnsureError::Transient(reason))) => {
                        tracing::warn!(provider = %name, %reason, "nats: stream not ready yet; will retry");
                        shared.health.set(false, REASON_STREAM, reason);
                    }
                    Err(_) => {
                        let reason = format!(
                            "JetStream did not answer within {}ms when checking stream {stream_name}",
                            SETUP_TIMEOUT.as_millis()
                        );
                        tracing::warn!(provider = %name, %reason, "nats: stream not ready yet; will retry");
                        shared.health.set(false, REASON_STREAM, reason);
                    }
                }
                let _ = conn.set(c);
            }
            Err(EnsureError::Config(reason)) => {
                return Err(config_err(format!("nats.url {:?}: {reason}", spec.url)));
            }
            Err(EnsureError::Transient(e)) => {
                tracing::warn!(
                    provider = %name,
                    url = %spec.url,
                    error = %e,
                    "nats: server unreachable at start; the provider starts unhealthy and keeps dialing"
                );
                shared.health.set(
                    false,
                    REASON_DISCONNECTED,
                    format!("cannot connect to {}: {e}", spec.url),
                );
            }
        }

        let supervisor = {
            let (shared, conn) = (shared.clone(), conn.clone());
            Supervisor::spawn(move |stop| supervise(shared, conn, dialer, stop))
        };

        Ok(NatsProvider {
            name: name.to_string(),
            subject: Subject::from(subject),
            stream_name,
            durable,
            publish_timeout,
            conn,
            shared,
            supervisor,
        })
    }

    /// The JetStream stream this provider writes to.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The subject messages are published on.
    pub fn subject(&self) -> &str {
        self.subject.as_str()
    }

    /// The durable consumer `subscribe` reads with.
    pub fn durable_name(&self) -> &str {
        &self.durable
    }

    /// The deadline of one publish.
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    fn closed_error(&self) -> ProviderError {
        ProviderError::Closed {
            provider: self.name.clone(),
        }
    }

    fn unavailable(&self, reason: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The connection once it is up; waits at most [`RECONNECT_GRACE`] for a lost one to come
    /// back, then fails with `Unavailable`.
    async fn connection(&self) -> Result<&Conn, ProviderError> {
        let not_connected = || {
            self.unavailable(format!(
                "not connected to {} ({})",
                self.shared.url,
                self.shared.health.get().message
            ))
        };
        let conn = self.conn.get().ok_or_else(not_connected)?;
        if conn.client.connection_state() == State::Connected {
            return Ok(conn);
        }
        let mut link = self.shared.link.subscribe();
        let wait = async {
            // The event callback trails the client's own state a little; re-check the state on
            // every link change instead of trusting either alone.
            while conn.client.connection_state() != State::Connected {
                if link.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(RECONNECT_GRACE, wait).await;
        if conn.client.connection_state() == State::Connected {
            Ok(conn)
        } else {
            Err(not_connected())
        }
    }

    /// Publish and PubAck, without the overall deadline (the caller applies it).
    async fn publish_acked(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        let conn = self.connection().await?;
        if !self.shared.stream_ready.load(Ordering::Acquire) {
            // Idempotent on the server, so concurrent publishes racing here are harmless.
            conn.setup
                .ensure()
                .await
                .map_err(|e| self.unavailable(e.reason().to_string()))?;
            self.shared.stream_ready.store(true, Ordering::Release);
        }
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, msg.id.as_str());
        let ack = conn
            .setup
            .js
            .publish_with_headers(self.subject.clone(), headers, Bytes::from(msg.to_wire()))
            .await
            .map_err(|e| self.publish_error(e))?
            .await
            .map_err(|e| self.publish_error(e))?;
        if ack.duplicate {
            // A retry of a message the stream already holds: stored once, which is success.
            tracing::debug!(provider = %self.name, id = %msg.id, seq = ack.sequence, "nats: duplicate acknowledged");
        }
        Ok(())
    }

    fn publish_error(&self, e: PublishError) -> ProviderError {
        match e.kind() {
            PublishErrorKind::TimedOut => ProviderError::Timeout {
                provider: self.name.clone(),
                after: self.publish_timeout,
            },
            PublishErrorKind::StreamNotFound => {
                // The stream vanished (deleted, or a server restarted without its data), or
                // JetStream is still starting: check it again on the next publish / probe.
                self.shared.stream_ready.store(false, Ordering::Release);
                self.shared.kick.notify_one();
                self.unavailable(format!(
                    "no JetStream stream answered for subject {} (expected stream {})",
                    self.subject, self.stream_name
                ))
            }
            PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence => ProviderError::Rejected {
                provider: self.name.clone(),
                reason: e.to_string(),
            },
            _ => self.unavailable(format!("publish on {} failed: {e}", self.subject)),
        }
    }
}

/// Reconnect backoff: immediately, then doubling from 1ms, capped at [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    Duration::from_millis(1u64 << exp).min(MAX_RECONNECT_DELAY)
}

/// Makes the first connection when `connect` could not, and keeps health honest while it is
/// down: once connected, checks that JetStream answers and the stream exists (creating it when
/// it could not be created before), then marks the provider healthy. Stops when `shutdown`
/// turns true or its sender is dropped.
async fn supervise(
    shared: Arc<Shared>,
    conn: Arc<OnceLock<Conn>>,
    dialer: Dialer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = shared.kick.notified() => {}
            _ = tick.tick() => {}
        }
        if shared.health.is_closed() {
            break;
        }
        let c = match conn.get() {
            Some(c) => c,
            None => {
                let dialed = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    r = dialer.dial() => r,
                };
                match dialed {
                    Ok(c) => {
                        tracing::info!(provider = %shared.name, url = %shared.url, "nats: first connection made");
                        // Only this task sets it after `connect`, so this cannot be taken.
                        conn.get_or_init(|| c)
                    }
                    Err(e) => {
                        shared.health.set(
                            false,
                            REASON_DISCONNECTED,
                            format!("cannot connect to {}: {}", shared.url, e.reason()),
                        );
                        continue;
                    }
                }
            }
        };
        let ready = shared.stream_ready.load(Ordering::Acquire);
        if ready && shared.health.get().healthy {
            continue;
        }
        if c.client.connection_state() != State::Connected {
            // The event callback already reports why; nothing to probe.
            continue;
        }
        let outcome = tokio::select! {
            // Stop promptly even mid-probe.
            _ = shutdown.wait_for(|s| *s) => break,
            r = tokio::time::timeout(PROBE_TIMEOUT, c.setup.ensure()) => r,
        };
        if shared.health.is_closed() {
            break;
        }
        let stream = &c.setup.config.name;
        match outcome {
            Ok(Ok(())) => {
                shared.stream_ready.store(true, Ordering::Release);
                if !shared.health.get().healthy {
                    tracing::info!(provider = %shared.name, %stream, "nats: healthy again");
                }
                shared.health.set(
                    true,
                    REASON_CONNECTED,
                    format!("connected to {}; stream {stream} ready", shared.url),
                );
            }
            Ok(Err(e)) => shared
                .health
                .set(false, REASON_STREAM, e.reason().to_string()),
            Err(_) => shared.health.set(
                false,
                REASON_STREAM,
                format!(
                    "JetStream did not answer within {}ms when checking stream {stream}",
                    PROBE_TIMEOUT.as_millis()
                ),
            ),
        }
    }
}

/// Decodes one consumed message and acknowledges it; undecodable messages are terminated (never
/// redelivered) and reported as an error item.
async fn decode_and_ack(
    shared: &Shared,
    stream: &str,
    item: Result<jetstream::Message, pull::MessagesError>,
) -> Result<DataMessage, ProviderError> {
    let subscribe_err = |reason: String| ProviderError::Subscribe {
        provider: shared.name.clone(),
        reason,
    };
    let m = item.map_err(|e| subscribe_err(format!("reading stream {stream}: {e}")))?;
    let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
    match DataMessage::from_wire(&m.payload) {
        Ok(msg) => {
            match tokio::time::timeout(CONSUMER_ACK_TIMEOUT, m.ack()).await {
                Ok(Ok(())) => {}
                // Not fatal: JetStream redelivers after the consumer's ack wait.
                Ok(Err(e)) => {
                    tracing::warn!(provider = %shared.name, seq, error = %e, "nats: ack failed; the message will be redelivered")
                }
                Err(_) => {
                    tracing::warn!(provider = %shared.name, seq, "nats: ack timed out; the message will be redelivered")
                }
            }
            shared.counters.consumed();
            Ok(msg)
        }
        Err(e) => {
            let _ = tokio::time::timeout(CONSUMER_ACK_TIMEOUT, m.ack_with(AckKind::Term)).await;
            Err(subscribe_err(format!(
                "stream {stream} message {seq} is not a DataMessage ({e}); skipped"
            )))
        }
    }
}

#[async_trait]
impl Provider for NatsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Nats
    }

    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        let outcome = if self.shared.health.is_closed() {
            Err(self.closed_error())
        } else {
            match tokio::time::timeout(self.publish_timeout, self.publish_acked(msg)).await {
                Ok(r) => r,
                Err(_) => Err(ProviderError::Timeout {
                    provider: self.name.clone(),
                    after: self.publish_timeout,
                }),
            }
        };
        self.shared.counters.record(&outcome);
        self.shared.health.observe(&outcome);
        outcome
    }

    /// Reads the stream from its first message through the durable pull consumer
    /// (`DeliverPolicy::All`; a durable that exists resumes where it stopped). Each message is
    /// acknowledged once decoded. Order is the stream's, except that a message whose ack was
    /// lost is redelivered later (at-least-once); consumers de-duplicate by id.
    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        if self.shared.health.is_closed() {
            return Err(self.closed_error());
        }
        let subscribe_err = |reason: String| ProviderError::Subscribe {
            provider: self.name.clone(),
            reason,
        };
        // Not connected: fail now rather than queue JetStream requests until they time out.
        let conn = self.connection().await.map_err(|e| match e {
            ProviderError::Unavailable { reason, .. } => subscribe_err(reason),
            other => other,
        })?;
        let open = async {
            if !self.shared.stream_ready.load(Ordering::Acquire) {
                conn.setup
                    .ensure()
                    .await
                    .map_err(|e| subscribe_err(e.reason().to_string()))?;
                self.shared.stream_ready.store(true, Ordering::Release);
            }
            let stream = conn
                .setup
                .js
                .get_stream(&self.stream_name)
                .await
                .map_err(|e| subscribe_err(format!("stream {}: {e}", self.stream_name)))?;
            let consumer: PullConsumer = stream
                .get_or_create_consumer(
                    &self.durable,
                    pull::Config {
                        durable_name: Some(self.durable.clone()),
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| subscribe_err(format!("consumer {}: {e}", self.durable)))?;
            consumer
                .messages()
                .await
                .map_err(|e| subscribe_err(format!("consumer {}: {e}", self.durable)))
        };
        let messages = tokio::time::timeout(SETUP_TIMEOUT, open)
            .await
            .map_err(|_| {
                subscribe_err(format!(
                    "JetStream did not answer within {}ms when opening consumer {}",
                    SETUP_TIMEOUT.as_millis(),
                    self.durable
                ))
            })??;

        let shared = self.shared.clone();
        let stream = self.stream_name.clone();
        let mut stop = self.supervisor.subscribe();
        Ok(messages
            .then(move |item| {
                let (shared, stream) = (shared.clone(), stream.clone());
                async move { decode_and_ack(&shared, &stream, item).await }
            })
            // Ends when the provider closes or is dropped.
            .take_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .boxed())
    }

    fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    fn health(&self) -> Health {
        self.shared.health.get()
    }

    async fn close(&self) -> Result<(), ProviderError> {
        if !self.shared.health.close() {
            return Ok(()); // already closed
        }
        self.supervisor.stop(CLOSE_TIMEOUT).await;
        // Drain: ends subscriptions and flushes what is buffered. Every acknowledged publish is
        // already stored, so a slow drain loses nothing the caller was told succeeded.
        // Never connected: nothing to drain, and no async-nats task is left behind.
        if let Some(conn) = self.conn.get() {
            match tokio::time::timeout(CLOSE_TIMEOUT, conn.client.drain()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(provider = %self.name, error = %e, "nats: drain failed")
                }
                Err(_) => {
                    tracing::warn!(provider = %self.name, "nats: drain did not finish in time")
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
    fn subjects_must_be_concrete() {
        assert!(check_subject("orders.created").is_ok());
        for bad in ["", "a b", "a..b", ".a", "a.", "a.*", "a.>"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reconnect_backoff_is_capped() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(2));
        assert_eq!(reconnect_delay(1_000_000), MAX_RECONNECT_DELAY);
    }

    #[tokio::test]
    async fn bad_configuration_is_a_config_error() {
        let spec = |url: &str, subject: &str| NatsConfig {
            url: url.into(),
            subject: subject.into(),
            stream: None,
            durable: None,
            duplicate_window: None,
        };
        let t = Duration::from_secs(1);
        for (s, want) in [
            (spec("nats://127.0.0.1:1", "a.>"), "wildcard"),
            (spec("", "a"), "nats.url is empty"),
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
}
