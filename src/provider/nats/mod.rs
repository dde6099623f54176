//! The NATS JetStream provider: publishes each message as its JSON wire form on one subject,
//! with header `Nats-Msg-Id: <id>` so JetStream de-duplicates retries inside the stream's
//! duplicate window, and returns only once the stream's PubAck arrived (a `duplicate` ack counts
//! as success: the message is stored once). The stream is created when missing and reused when
//! present.
//!
//! Lifecycle, and why it is shaped this way:
//! - `connect` fails only on configuration errors that only the client or the server can
//!   detect (a URL async-nats cannot parse, credentials the server refuses, a stream that cannot
//!   hold the subject); the rest of [`NatsConfig`] was checked by the pipeline's validator
//!   (`api`) before it got here. An unreachable server does not fail it: the relay must start
//!   when one broker is down (BestEffort), so the provider is built with its health down and
//!   its supervisor task (`supervisor.rs`, in the probe loop shared with Kafka) dials again
//!   every [`PROBE_INTERVAL`]. Once connected, async-nats reconnects by itself after any later
//!   loss (no reconnect limit). The first connection is not left to async-nats'
//!   `retry_on_initial_connect`: a client closed before it ever connected would keep that
//!   background connect loop running forever.
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
//! - Credentials (TLS files, a `.creds` file, an nkey seed, a password, a token; or the URL's
//!   user-info) are read from their Secret files at every dial, and URL user-info is handed to
//!   the client as options, never inside an address; URLs in messages are redacted. A key that
//!   cannot be read (`SecretMissing`) or credentials the server refuses (`AuthenticationFailed`)
//!   do not fail `connect`: the provider starts down and its supervisor dials again every round,
//!   so creating or fixing the Secret heals it. Once connected, the supervisor notices when a
//!   Secret file's content changes (the kubelet rewrites a rotated Secret in place), dials a
//!   fresh connection with the new value and swaps it in: only this provider reconnects, and
//!   the old connection is drained once the publishes running on it have their PubAck. A
//!   subscription opened on the old connection ends with it (subscribe again).
//! - Every external call is bounded: the whole publish (connect wait, stream check, send, PubAck)
//!   by `publish_timeout`; setup, probes, acks and close by the constants below.
//!
//! Files: this one holds the configuration, `connect` and the [`Provider`] impl; `connection`
//! the shared state, connection events, dials and stream setup; `security` TLS and
//! authentication options; `publish` one publish; `consumer` the subscription; `supervisor` the
//! health rounds.

mod connection;
mod consumer;
mod publish;
mod security;
mod supervisor;
#[cfg(test)]
mod tests;

pub use security::{client_options, ClientSetupError};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use async_nats::Subject;
use async_trait::async_trait;

use self::connection::{Conn, ConnSlot, DialError, Dialer, Shared};
use self::security::{parse_servers, ClientSetupError as SetupError};
use self::supervisor::NatsProbe;
use super::secret::{
    redact_url, NatsAuth, SecretFile, SecretWatch, TlsFiles, REASON_SECRET_MISSING,
};
use super::supervise::{run_probe_loop, EnsureError, Supervisor};
use super::{
    BatchError, Health, MessageLimit, MessageStream, Provider, ProviderError, ProviderKind, Stats,
    REASON_AUTH_FAILED,
};
use crate::message::{DataMessage, Outgoing};

pub use super::supervise::PROBE_INTERVAL;

/// Bound on one TCP + TLS + NATS handshake attempt (async-nats `connection_timeout`).
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on what `connect` and `subscribe` wait for: the first connection attempt's outcome,
/// and the JetStream requests that check or create the stream and the consumer.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one supervisor check (one JetStream API request).
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

/// Health reasons this provider reports (besides `PublishFailed` and `Closed`).
const REASON_CONNECTED: &str = "Connected";
const REASON_CONNECTING: &str = "Connecting";
const REASON_DISCONNECTED: &str = "Disconnected";
const REASON_STREAM: &str = "StreamUnavailable";
/// The TLS settings made from the Secret files cannot be used.
const REASON_INVALID: &str = "InvalidConfiguration";

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
    /// Replicas of a stream the relay creates (default 1); an existing stream keeps its own.
    pub replicas: Option<usize>,
    /// TLS: CAs to trust and an optional client certificate (mutual TLS).
    pub tls: Option<TlsFiles>,
    pub auth: Option<NatsAuth>,
}

impl NatsConfig {
    /// Every Secret file this provider reads.
    pub fn secret_files(&self) -> Vec<&SecretFile> {
        let mut out = self.tls.as_ref().map(TlsFiles::files).unwrap_or_default();
        out.extend(self.auth.as_ref().map(NatsAuth::files).unwrap_or_default());
        out
    }

    /// Every Secret file this provider reads (to re-root them, and to watch them for rotation).
    pub fn secret_files_mut(&mut self) -> Vec<&mut SecretFile> {
        let mut out = self
            .tls
            .as_mut()
            .map(TlsFiles::files_mut)
            .unwrap_or_default();
        out.extend(
            self.auth
                .as_mut()
                .map(NatsAuth::files_mut)
                .unwrap_or_default(),
        );
        out
    }

    /// The stream to write to: the configured one, else [`default_stream_name`] of the subject.
    fn stream_name(&self) -> String {
        self.stream
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map_or_else(|| default_stream_name(self.subject.trim()), str::to_string)
    }

    /// The durable consumer `subscribe` reads with.
    fn durable_name(&self, provider: &str) -> String {
        self.durable
            .clone()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| format!("dualwrite-{provider}"))
    }

    /// The stream created when it is missing. An existing one is reused as it is, never updated:
    /// its limits, replicas and retention are its owner's.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream_name(),
            subjects: vec![self.subject.trim().to_string()],
            // Zero leaves the server default (2 minutes).
            duplicate_window: self.duplicate_window.unwrap_or(Duration::ZERO),
            storage: stream::StorageType::File,
            num_replicas: self.replicas.unwrap_or(1),
            ..Default::default()
        }
    }
}

/// A NATS JetStream provider. See the module documentation.
pub struct NatsProvider {
    name: String,
    subject: Subject,
    stream_name: String,
    durable: String,
    publish_timeout: Duration,
    /// Empty until the first connection succeeded (at `connect` or later by the supervisor);
    /// replaced when a Secret changed.
    conn: Arc<ConnSlot>,
    shared: Arc<Shared>,
    /// The health supervisor; its stop signal also ends subscription streams.
    supervisor: Supervisor,
}

impl NatsProvider {
    /// Connects to NATS (in the background when the server is unreachable, refuses the
    /// credentials or a Secret key cannot be read), ensures the stream and starts the health
    /// supervisor. Fails only on configuration errors.
    pub async fn connect(
        name: &str,
        spec: &NatsConfig,
        publish_timeout: Duration,
    ) -> Result<NatsProvider, ProviderError> {
        let servers = parse_servers(&spec.url).map_err(|reason| ProviderError::Config {
            provider: name.to_string(),
            reason,
        })?;
        let subject = spec.subject.trim().to_string();
        let shared = Arc::new(Shared::new(name, &redact_url(&spec.url)));
        let dialer = Dialer {
            shared: Arc::clone(&shared),
            addrs: servers.addrs,
            url_auth: servers.url_auth,
            tls: spec.tls.clone(),
            auth: spec.auth.clone(),
            publish_timeout,
            stream: spec.stream_config(),
            subject: subject.clone(),
        };
        let conn = Arc::new(ConnSlot::default());
        let mut secrets = SecretWatch::new(spec.secret_files());
        // Read before the dial: a change made during it is seen on the next round.
        match secrets.fingerprint() {
            Ok(fingerprint) => {
                if let Some(c) = first_connection(&dialer, &shared).await? {
                    conn.replace(c);
                    secrets.built(fingerprint);
                }
            }
            Err(missing) => {
                record_dial_failure(&shared, &DialError::Setup(SetupError::Secret(missing)))
            }
        }
        let probe = NatsProbe {
            shared: Arc::clone(&shared),
            conn: Arc::clone(&conn),
            dialer,
            secrets,
            refused: None,
        };
        Ok(NatsProvider {
            name: name.to_string(),
            subject: Subject::from(subject),
            stream_name: spec.stream_name(),
            durable: spec.durable_name(name),
            publish_timeout,
            conn,
            shared,
            supervisor: Supervisor::spawn(|stop| run_probe_loop(probe, stop)),
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
}

/// The first dial at `connect`: a connection with its stream checked (health up), a connection
/// whose stream is not ready yet, or none when the server is unreachable, refuses the
/// credentials or a Secret key cannot be read (health down, saying which; the supervisor keeps
/// dialing). Errs only on configuration errors.
async fn first_connection(dialer: &Dialer, shared: &Shared) -> Result<Option<Conn>, ProviderError> {
    match dialer.dial(0).await {
        Ok(c) => {
            if let Err(e) = ensure_stream_at_start(&c, shared).await {
                // Close the connection we opened; the caller gets no provider to close.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, c.client.drain()).await;
                return Err(e);
            }
            Ok(Some(c))
        }
        Err(DialError::Config(reason)) => Err(ProviderError::Config {
            provider: shared.name.clone(),
            reason: format!("nats.url {:?}: {reason}", shared.url),
        }),
        Err(e) => {
            record_dial_failure(shared, &e);
            Ok(None)
        }
    }
}

/// Records in health why a dial gave no connection (the supervisor dials again next round).
/// Logs once per change of reason.
fn record_dial_failure(shared: &Shared, e: &DialError) {
    let (reason, message) = match e {
        DialError::Setup(SetupError::Secret(missing)) => {
            (REASON_SECRET_MISSING, missing.to_string())
        }
        DialError::Setup(other) => (REASON_INVALID, other.to_string()),
        DialError::Auth(e) => (
            REASON_AUTH_FAILED,
            format!(
                "provider {}: {} refused the credentials ({e}); check the credentials Secret",
                shared.name, shared.url
            ),
        ),
        DialError::Config(e) | DialError::Transient(e) => (
            REASON_DISCONNECTED,
            format!("cannot connect to {}: {e}", shared.url),
        ),
    };
    if shared.health.get().reason != reason {
        tracing::warn!(provider = %shared.name, url = %shared.url, reason, %message, "nats: no connection; dialing again every round");
    }
    shared.health.set(false, reason, message);
}

/// Checks or creates the stream on a fresh connection and records the outcome in health. Errs
/// only when the stream cannot hold the subject as configured; a passing problem leaves health
/// down for the supervisor to retry.
async fn ensure_stream_at_start(c: &Conn, shared: &Shared) -> Result<(), ProviderError> {
    let stream = &c.setup.config.name;
    let reason = match tokio::time::timeout(SETUP_TIMEOUT, c.setup.ensure()).await {
        Ok(Ok(())) => {
            shared.stream_ready.store(true, Ordering::Release);
            shared.health.set(
                true,
                REASON_CONNECTED,
                format!("connected to {}; stream {stream} ready", shared.url),
            );
            return Ok(());
        }
        Ok(Err(EnsureError::Config(reason))) => {
            return Err(ProviderError::Config {
                provider: shared.name.clone(),
                reason,
            })
        }
        Ok(Err(EnsureError::Transient(reason))) => reason,
        Err(_) => format!(
            "JetStream did not answer within {}ms when checking stream {stream}",
            SETUP_TIMEOUT.as_millis()
        ),
    };
    tracing::warn!(provider = %shared.name, %reason, "nats: stream not ready yet; will retry");
    shared.health.set(false, REASON_STREAM, reason);
    Ok(())
}

#[async_trait]
impl Provider for NatsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Nats
    }

    /// Every write runs under `publish_timeout` (a batch shares one), so the composite adds no
    /// timer of its own.
    fn publish_deadline(&self) -> Option<Duration> {
        Some(self.publish_timeout)
    }

    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        self.publish_outgoing(&msg.outgoing()).await
    }

    async fn publish_outgoing(&self, msg: &Outgoing<'_>) -> Result<(), ProviderError> {
        let outcome = if self.shared.health.is_closed() {
            Err(self.closed_error())
        } else if self.conn.get().is_none() {
            // Never connected: fail at once. Health already says why (unreachable, refused
            // credentials, a missing Secret key) and keeps saying it: not observed as a publish
            // failure.
            let never = Err(self.not_connected());
            self.shared.counters.record(&never);
            return never;
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

    /// Sends the whole batch in order on the one connection, each with its `Nats-Msg-Id`, then
    /// awaits the PubAcks in order (pipelined: one round trip for the batch); the batch shares
    /// one publish deadline.
    async fn publish_batch(&self, msgs: &[DataMessage]) -> Result<(), BatchError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let refused = if self.shared.health.is_closed() {
            Some(self.closed_error())
        } else if self.conn.get().is_none() {
            Some(self.not_connected())
        } else {
            None
        };
        if let Some(error) = refused {
            self.shared.counters.failed();
            return Err(BatchError { acked: 0, error });
        }
        let mut acked = 0;
        let send = self.publish_batch_acked(msgs, &mut acked);
        let outcome = (self.shared.health)
            .bounded_batch(
                &self.shared.counters,
                &self.name,
                self.publish_timeout,
                send,
            )
            .await;
        outcome.map_err(|error| BatchError { acked, error })
    }

    /// Reads the stream from its first message through the durable pull consumer
    /// (`DeliverPolicy::All`; a durable that exists resumes where it stopped). Each message is
    /// acknowledged once decoded. Order is the stream's, except that a message whose ack was
    /// lost is redelivered later (at-least-once); consumers de-duplicate by id.
    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        if self.shared.health.is_closed() {
            return Err(self.closed_error());
        }
        self.open_subscription().await
    }

    /// The server's `max_payload` (from its INFO), once connected.
    fn message_limit(&self) -> Option<MessageLimit> {
        self.message_limit_bytes().map(|bytes| MessageLimit {
            bytes,
            setting: format!("max_payload of the NATS server at {}", self.shared.url),
        })
    }

    /// The client's copy of the server's `max_payload` (an atomic read; `server_info()` would
    /// clone the whole INFO on every publish).
    fn message_limit_bytes(&self) -> Option<u64> {
        let max = self.conn.get()?.client.max_payload();
        (max > 0).then_some(max as u64)
    }

    /// The payload and the headers block (`NATS/1.0`, `Nats-Msg-Id: <id>`): the server counts
    /// both against `max_payload`.
    fn encoded_size(&self, msg: &DataMessage, wire_len: usize) -> u64 {
        // "NATS/1.0\r\n", then "Name: value\r\n" per header, then the closing "\r\n".
        let digest =
            crate::message::DIGEST_HEADER.len() + 2 + crate::message::ContentDigest::TEXT_LEN + 2;
        let headers =
            "NATS/1.0\r\n".len() + MSG_ID_HEADER.len() + 2 + msg.id.len() + 2 + digest + 2;
        (headers + wire_len) as u64
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
