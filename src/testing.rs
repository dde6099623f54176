//! Test-only helpers shared by the unit tests: one configurable fake [`Provider`] (slow, failing,
//! hanging, rejecting, recording) instead of a small hand-written provider per test module, and
//! numbered messages. Real brokers are exercised by the integration tests under `tests/`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::message::DataMessage;
use crate::provider::{
    BatchError, Counters, Health, MessageLimit, MessageStream, Provider, ProviderError,
    ProviderKind,
};

/// A message with the id `msg-0007` for `i = 7`, so tests can name messages and check order.
pub fn numbered(i: usize) -> DataMessage {
    let mut m = DataMessage::new("test", format!("payload {i}"));
    m.id = format!("msg-{i:04}");
    m
}

/// The ids of backlog entries, in order.
pub fn ids(entries: &[(u64, DataMessage)]) -> Vec<String> {
    entries.iter().map(|(_, m)| m.id.clone()).collect()
}

/// A provider whose behaviour a test scripts and whose every publish it can observe.
///
/// A publish records its start, then never answers while `hang` is set, waits `delay`, and then
/// rejects the message for good (ids passed to [`FakeProvider::rejecting`], or every message
/// after [`FakeProvider::rejecting_everything`]), fails as unavailable while `fail` is set, or
/// acknowledges it. Health follows `fail`. Build with [`FakeProvider::named`] and the chained
/// setters, then [`FakeProvider::arc`].
pub struct FakeProvider {
    name: String,
    kind: ProviderKind,
    delay: Duration,
    rejects: HashSet<String>,
    reject_everything: bool,
    /// The broker limit it reports (`Provider::message_limit`).
    limit: Option<u64>,
    /// Publishes fail with `Unavailable` while set; health reads down.
    pub fail: AtomicBool,
    /// Publishes never answer while set (to test that a stop or a deadline does not wait).
    pub hang: AtomicBool,
    counters: Counters,
    /// Publishes that got past `hang` and `delay` (answered, whatever the answer).
    pub attempts: AtomicU64,
    /// `close` calls.
    pub closes: AtomicU64,
    /// Ids in the order their publishes started.
    started: Mutex<Vec<String>>,
    /// Ids acknowledged, in order.
    received: Mutex<Vec<String>>,
    /// What the "broker" holds, in the order it stored it: each id once (a resend of a stored id
    /// is dropped, as `Nats-Msg-Id` and the idempotent producer do).
    stored: Mutex<Vec<String>>,
    /// Ids whose next send fails (`Unavailable`) before it reaches the broker, once each.
    fail_once: Mutex<HashSet<String>>,
    /// How long a single `publish` of a `fail_once` id takes to fail (as a publish that waits
    /// for a reconnect, then gives up), on top of `delay`.
    fail_once_after: Duration,
    in_flight: AtomicU64,
    /// The most publishes that were in flight at once.
    pub max_in_flight: AtomicU64,
    /// Woken after every answered publish.
    changed: Notify,
}

impl FakeProvider {
    /// A healthy memory-kind provider that acknowledges at once.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: ProviderKind::Memory,
            delay: Duration::ZERO,
            rejects: HashSet::new(),
            reject_everything: false,
            limit: None,
            fail: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            counters: Counters::default(),
            attempts: AtomicU64::new(0),
            closes: AtomicU64::new(0),
            started: Mutex::default(),
            received: Mutex::default(),
            stored: Mutex::default(),
            fail_once: Mutex::default(),
            fail_once_after: Duration::ZERO,
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// Each publish takes `delay_ms` (virtual time under a paused clock).
    pub fn delay_ms(mut self, delay_ms: u64) -> Self {
        self.delay = Duration::from_millis(delay_ms);
        self
    }

    /// Starts failing (until `fail` is cleared) when `fail` is true.
    pub fn failing_if(self, fail: bool) -> Self {
        self.fail.store(fail, Ordering::Release);
        self
    }

    pub fn kind(mut self, kind: ProviderKind) -> Self {
        self.kind = kind;
        self
    }

    /// Rejects these ids for good (as a broker refuses a message too large for it).
    pub fn rejecting(mut self, ids: impl IntoIterator<Item = String>) -> Self {
        self.rejects.extend(ids);
        self
    }

    /// Rejects every message for good.
    pub fn rejecting_everything(mut self) -> Self {
        self.reject_everything = true;
        self
    }

    /// Reports a broker limit of `bytes` (the size it counts is the wire JSON's).
    pub fn message_limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// The next send of each of these ids fails (`Unavailable`, not stored), once; a single
    /// `publish` of one takes `after_ms` longer to fail than others take to succeed.
    pub fn failing_once(mut self, ids: impl IntoIterator<Item = String>, after_ms: u64) -> Self {
        lock(&self.fail_once).extend(ids);
        self.fail_once_after = Duration::from_millis(after_ms);
        self
    }

    /// What the broker holds, in the order it stored it, each id once.
    pub fn stored(&self) -> Vec<String> {
        lock(&self.stored).clone()
    }

    pub fn arc(self) -> Arc<Self> {
        Arc::new(self)
    }

    /// Ids acknowledged so far, in order.
    pub fn received(&self) -> Vec<String> {
        lock(&self.received).clone()
    }

    /// Ids whose publish started, in order.
    pub fn started(&self) -> Vec<String> {
        lock(&self.started).clone()
    }

    /// Waits until `n` messages were acknowledged (at most 10 s).
    pub async fn wait_for(&self, n: usize) {
        self.wait_until(&format!("{n} acknowledged"), |p| p.received().len() >= n)
            .await;
    }

    /// Waits (without polling) until `cond` holds, or panics after 10 s.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let wait = async {
            loop {
                // Created before the check: notify_waiters reaches it from creation on.
                let changed = self.changed.notified();
                if cond(self) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            panic!("timed out waiting until {what}");
        }
    }

    /// Wakes on the next answered publish (for loops that also watch something else).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn answer(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        if lock(&self.fail_once).remove(&msg.id) {
            return Err(ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: "scripted failure, once".into(),
            });
        }
        if self.reject_everything || self.rejects.contains(&msg.id) {
            return Err(ProviderError::Rejected {
                provider: self.name.clone(),
                reason: "message too large".into(),
            });
        }
        if self.fail.load(Ordering::Acquire) {
            return Err(ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: "scripted failure".into(),
            });
        }
        lock(&self.received).push(msg.id.clone());
        let mut stored = lock(&self.stored);
        if !stored.contains(&msg.id) {
            stored.push(msg.id.clone());
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        self.kind
    }

    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        lock(&self.started).push(msg.id.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if lock(&self.fail_once).contains(&msg.id) {
            tokio::time::sleep(self.fail_once_after).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let outcome = self.answer(msg);
        self.counters.record(&outcome);
        self.changed.notify_waiters();
        outcome
    }

    /// A broker connection: the messages go out in order, all of them in flight together (one
    /// `delay` for the window), and sending stops at the first that fails.
    async fn publish_batch(&self, msgs: &[DataMessage]) -> Result<(), BatchError> {
        let n = msgs.len() as u64;
        let now = self.in_flight.fetch_add(n, Ordering::SeqCst) + n;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.in_flight.fetch_sub(n, Ordering::SeqCst);
        let mut outcome = Ok(());
        for (acked, msg) in msgs.iter().enumerate() {
            lock(&self.started).push(msg.id.clone());
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let answer = self.answer(msg);
            self.counters.record(&answer);
            if let Err(error) = answer {
                outcome = Err(BatchError { acked, error });
                break;
            }
        }
        self.changed.notify_waiters();
        outcome
    }

    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        Ok(futures::stream::empty().boxed())
    }

    fn message_limit(&self) -> Option<MessageLimit> {
        self.limit.map(|bytes| MessageLimit {
            bytes,
            setting: format!("test limit of {}", self.name),
        })
    }

    fn stats(&self) -> crate::provider::Stats {
        self.counters.snapshot()
    }

    fn health(&self) -> Health {
        if self.fail.load(Ordering::Acquire) {
            Health::down("PublishFailed", "scripted failure")
        } else {
            Health::up("Connected", "ok")
        }
    }

    async fn close(&self) -> Result<(), ProviderError> {
        self.closes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
