//! The contract every broker adapter fulfils, and the adapters themselves.
//!
//! A [`Provider`] publishes a [`DataMessage`] and returns only once the broker acknowledged it,
//! streams messages back, and reports its own [`Stats`] and [`Health`]. The composite
//! (`crate::composite`) implements the same trait over several providers.
//!
//! Submodules: [`memory`] (a bounded in-process queue), [`nats`] (JetStream), [`kafka`], and
//! `supervise`, the background task and probe loop the two broker adapters share.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Serialize;

use crate::message::{DataMessage, Outgoing};

pub mod kafka;
pub mod memory;
pub mod nats;
pub mod secret;
mod supervise;

pub use supervise::{Supervisor, PROBE_INTERVAL};

/// Messages read back from a provider, in the provider's order.
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<DataMessage, ProviderError>> + Send>>;

/// An ordered batch publish ([`Provider::publish_batch`]) that stopped at its first failure.
///
/// The first `acked` messages of the batch are stored, in order. The message at index `acked`
/// was not acknowledged, for `error`; the messages after it may or may not have reached the
/// broker (they were sent, or queued to be sent, before the failure was known). To resume
/// without reordering, send again from index `acked` on, in order and with the same ids:
/// JetStream drops what it already stored (`Nats-Msg-Id` in its duplicate window); Kafka stores a
/// resent record again, after the first copy (its idempotent producer removes only its own
/// internal retries), so a reader keeping the first record per `message_id` still sees ingest
/// order. A `Rejected` error is about that
/// one message (e.g. too large): the caller may drop it and resume from the next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {acked} acknowledged messages of the batch)")]
pub struct BatchError {
    /// How many leading messages of the batch were acknowledged.
    pub acked: usize,
    /// Why the message at index `acked` was not.
    pub error: ProviderError,
}

/// Which broker a provider talks to: the `type` of a provider in a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Memory,
    Nats,
    Kafka,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Memory => "memory",
            ProviderKind::Nats => "nats",
            ProviderKind::Kafka => "kafka",
        })
    }
}

/// A provider type that is not memory, nats or kafka.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider type {0:?}: use memory, nats or kafka")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for ProviderKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(ProviderKind::Memory),
            "nats" => Ok(ProviderKind::Nats),
            "kafka" => Ok(ProviderKind::Kafka),
            _ => Err(UnknownKind(s.to_string())),
        }
    }
}

/// Why a provider operation failed. Every variant names the provider, so an error that reaches
/// a person (an HTTP 503, a log line) says which broker is at fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("provider {provider}: queue full ({capacity} messages); consume from it or raise its capacity")]
    QueueFull { provider: String, capacity: usize },
    #[error("provider {provider}: closed")]
    Closed { provider: String },
    #[error("provider {provider}: no acknowledgement within {}ms", .after.as_millis())]
    Timeout { provider: String, after: Duration },
    #[error("provider {provider}: unavailable: {reason}")]
    Unavailable { provider: String, reason: String },
    #[error("provider {provider}: rejected the message: {reason}")]
    Rejected { provider: String, reason: String },
    #[error("provider {provider}: {reason}")]
    Subscribe { provider: String, reason: String },
    #[error("provider {provider}: invalid configuration: {reason}")]
    Config { provider: String, reason: String },
}

impl ProviderError {
    /// The provider the error is about.
    pub fn provider(&self) -> &str {
        match self {
            ProviderError::QueueFull { provider, .. }
            | ProviderError::Closed { provider }
            | ProviderError::Timeout { provider, .. }
            | ProviderError::Unavailable { provider, .. }
            | ProviderError::Rejected { provider, .. }
            | ProviderError::Subscribe { provider, .. }
            | ProviderError::Config { provider, .. } => provider,
        }
    }

    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProviderError::QueueFull { .. } => "queue_full",
            ProviderError::Closed { .. } => "closed",
            ProviderError::Timeout { .. } => "timeout",
            ProviderError::Unavailable { .. } => "unavailable",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::Subscribe { .. } => "subscribe",
            ProviderError::Config { .. } => "config",
        }
    }
}

/// A provider's numbers at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Messages the broker acknowledged.
    pub published: u64,
    /// Publishes that failed (including timeouts).
    pub failed: u64,
    /// Messages handed out by `subscribe`.
    pub consumed: u64,
    /// Messages waiting in the provider (memory queue depth; 0 for brokers).
    pub depth: u64,
    /// Messages waiting in this provider's hinted-handoff backlog.
    pub backlog: u64,
}

impl Stats {
    /// Adds `other` into `self` (the composite's total is the sum of its rows).
    pub fn add(&mut self, other: &Stats) {
        self.published += other.published;
        self.failed += other.failed;
        self.consumed += other.consumed;
        self.depth += other.depth;
        self.backlog += other.backlog;
    }
}

/// Lock-free counters a provider keeps for its [`Stats`].
#[derive(Debug, Default)]
pub struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    consumed: AtomicU64,
}

impl Counters {
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts the outcome of one publish.
    pub fn record<T, E>(&self, outcome: &Result<T, E>) {
        match outcome {
            Ok(_) => self.published(),
            Err(_) => self.failed(),
        }
    }
    /// The counters as [`Stats`] (depth and backlog left at zero for the caller to fill).
    pub fn snapshot(&self) -> Stats {
        Stats {
            published: self.published.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            ..Stats::default()
        }
    }
}

/// Whether a provider can take writes now, and since when that has been so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub healthy: bool,
    /// A CamelCase reason, e.g. `Connected`, `PublishFailed`, `Closed`.
    pub reason: String,
    /// The last error, or a short description of the healthy state.
    pub message: String,
    /// When `healthy` last changed.
    pub since: DateTime<Utc>,
}

impl Health {
    pub fn up(reason: &str, message: impl Into<String>) -> Self {
        Self {
            healthy: true,
            reason: reason.into(),
            message: message.into(),
            since: Utc::now(),
        }
    }
    pub fn down(reason: &str, message: impl Into<String>) -> Self {
        Self {
            healthy: false,
            reason: reason.into(),
            message: message.into(),
            since: Utc::now(),
        }
    }
}

impl Health {
    /// Whether this says the broker cannot be reached now (disconnected, unreachable, refused
    /// credentials, closed), as opposed to "not connected yet" (`Connecting`, at start) or "the
    /// last write failed" (`PublishFailed`, which the composite's breaker counts by itself).
    pub fn says_unreachable(&self) -> bool {
        !self.healthy && self.reason != REASON_CONNECTING && self.reason != REASON_PUBLISH_FAILED
    }
}

/// The health reason of a provider that has not connected yet.
pub const REASON_CONNECTING: &str = "Connecting";
/// The health reason after a failed write ([`HealthTracker::observe`]).
pub const REASON_PUBLISH_FAILED: &str = "PublishFailed";
/// The health reason of a closed provider.
pub const REASON_CLOSED: &str = "Closed";
/// The health reason of a provider whose broker refused its credentials (the message names the
/// provider and the broker, never the credentials).
pub const REASON_AUTH_FAILED: &str = "AuthenticationFailed";

/// Health that follows publish outcomes: the first failure marks the provider down, the next
/// success marks it up again, and `since` moves only when `healthy` flips. Once [`closed`],
/// it reads `Closed` for good and ignores every later update.
///
/// [`closed`]: HealthTracker::close
#[derive(Debug)]
pub struct HealthTracker {
    // A std Mutex: the critical sections are a few field writes and never await.
    state: Mutex<Health>,
    /// Written under `state`'s lock; read without it on the publish path.
    closed: AtomicBool,
}

impl HealthTracker {
    pub fn new(initial: Health) -> Self {
        Self {
            state: Mutex::new(initial),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new state; `since` is kept when `healthy` did not change. No effect once closed.
    pub fn set(&self, healthy: bool, reason: &str, message: impl Into<String>) {
        let mut h = self.lock();
        if self.is_closed() {
            return;
        }
        if h.healthy != healthy {
            h.since = Utc::now();
        }
        h.healthy = healthy;
        h.reason = reason.to_string();
        h.message = message.into();
    }

    /// Records a publish outcome. A message-specific rejection (too large) says nothing about
    /// the broker, so it leaves health alone.
    pub fn observe<T>(&self, outcome: &Result<T, ProviderError>) {
        match outcome {
            Ok(_) => {
                // Read under the lock, not cloned: this runs on every publish.
                let healthy = self.lock().healthy;
                if !healthy {
                    self.set(true, "Connected", "publishing again");
                }
            }
            Err(ProviderError::Rejected { .. }) => {}
            Err(e) => self.set(false, REASON_PUBLISH_FAILED, e.to_string()),
        }
    }

    /// Runs one ordered batch send under the publish `deadline`, then counts a failure and
    /// feeds health as a single publish does. The caller pairs the error with how many leading
    /// messages the send acknowledged ([`BatchError`]).
    pub async fn bounded_batch(
        &self,
        counters: &Counters,
        provider: &str,
        deadline: Duration,
        send: impl std::future::Future<Output = Result<(), ProviderError>>,
    ) -> Result<(), ProviderError> {
        let outcome = match tokio::time::timeout(deadline, send).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Timeout {
                provider: provider.to_string(),
                after: deadline,
            }),
        };
        if outcome.is_err() {
            counters.failed();
        }
        self.observe(&outcome);
        outcome
    }

    /// Marks the provider closed. True the first time, false when it already was.
    pub fn close(&self) -> bool {
        let mut h = self.lock();
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        *h = Health::down(REASON_CLOSED, "provider closed");
        true
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Health {
        self.lock().clone()
    }
}

/// The largest message a broker takes, and which setting says so (shown in the 413 a client
/// gets, e.g. `max.message.bytes of topic orders`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageLimit {
    /// Bytes, counted as [`Provider::encoded_size`] counts them.
    pub bytes: u64,
    /// The broker setting the limit comes from.
    pub setting: String,
}

/// A broker adapter: memory, NATS JetStream or Kafka.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's unique name in its pipeline (e.g. `nats-main`).
    fn name(&self) -> &str;
    /// Which broker this is.
    fn kind(&self) -> ProviderKind;
    /// Writes one message; returns after the broker acknowledged it, or an error within the
    /// provider's publish deadline.
    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError>;
    /// [`publish`](Provider::publish) of a message whose wire form and digest may already be
    /// computed (the composite encodes a message once for all its providers). The default
    /// ignores them; the broker adapters, which write the wire form, override it.
    async fn publish_outgoing(&self, msg: &Outgoing<'_>) -> Result<(), ProviderError> {
        self.publish(msg.message()).await
    }
    /// Writes `msgs` in this order and returns once every one was acknowledged, or at the first
    /// that was not: the broker receives them in slice order, pipelined where it can (many in
    /// flight, one round trip for the window rather than one per message), and the
    /// acknowledgements are taken in that order. See [`BatchError`] for what a failure means
    /// and how to resume.
    ///
    /// The default sends one message at a time through [`publish`](Provider::publish), which
    /// keeps the order trivially; the broker adapters override it with a pipelined send.
    async fn publish_batch(&self, msgs: &[DataMessage]) -> Result<(), BatchError> {
        for (acked, msg) in msgs.iter().enumerate() {
            self.publish(msg)
                .await
                .map_err(|error| BatchError { acked, error })?;
        }
        Ok(())
    }
    /// The deadline this provider puts on each of its own writes, if it has one: past it,
    /// [`publish_outgoing`](Provider::publish_outgoing) and
    /// [`publish_batch`](Provider::publish_batch) answer a [`ProviderError::Timeout`] naming
    /// the provider and this duration (and its health and counters see it). The composite arms
    /// no timer of its own around a provider bounded at least as tightly as its own deadline:
    /// one deadline per write instead of two nested ones.
    fn publish_deadline(&self) -> Option<Duration> {
        None
    }
    /// The provider's messages, in order.
    async fn subscribe(&self) -> Result<MessageStream, ProviderError>;
    fn stats(&self) -> Stats;
    fn health(&self) -> Health;
    /// The largest message the broker takes, once known (read from the broker after
    /// connecting); `None`: no limit known (memory, or not connected yet).
    fn message_limit(&self) -> Option<MessageLimit> {
        None
    }
    /// The bytes of [`Provider::message_limit`] alone: what the composite checks on every
    /// publish, so the adapters answer it without building the setting's text.
    fn message_limit_bytes(&self) -> Option<u64> {
        self.message_limit().map(|l| l.bytes)
    }
    /// What `msg` weighs against [`Provider::message_limit`]: its wire JSON (`wire_len` bytes,
    /// computed once by the caller) plus whatever else the broker counts (headers, key, framing).
    fn encoded_size(&self, msg: &DataMessage, wire_len: usize) -> u64 {
        let _ = msg;
        wire_len as u64
    }
    /// Releases the broker connection. Idempotent; a publish after close is an error.
    async fn close(&self) -> Result<(), ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_tracker_follows_outcomes_until_closed() {
        let h = HealthTracker::new(Health::down("Connecting", "starting"));
        h.observe::<()>(&Ok(()));
        assert!(h.get().healthy);
        let rejected = ProviderError::Rejected {
            provider: "p".into(),
            reason: "too large".into(),
        };
        h.observe::<()>(&Err(rejected));
        assert!(
            h.get().healthy,
            "a rejected message says nothing about the broker"
        );
        h.observe::<()>(&Err(ProviderError::Unavailable {
            provider: "p".into(),
            reason: "down".into(),
        }));
        assert_eq!(h.get().reason, "PublishFailed");
        assert!(h.close());
        assert!(!h.close(), "close is reported once");
        h.set(true, "Connected", "late event");
        h.observe::<()>(&Ok(()));
        let closed = h.get();
        assert_eq!(
            (closed.healthy, closed.reason.as_str()),
            (false, REASON_CLOSED)
        );
        assert!(h.is_closed());
    }
}
