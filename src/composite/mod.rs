//! The composite provider: one publish fans out to every provider at once, and a [`Strategy`]
//! decides what the caller is told.
//!
//! ```text
//!               ┌──► lane "nats"  ──► NatsProvider   (timeout, latency, timeouts)
//! publish(msg) ─┤
//!               └──► lane "kafka" ──► KafkaProvider
//! ```
//!
//! - **FailFast**: all writes run concurrently; the first failure fails the publish at once and
//!   names the provider (the other writes are abandoned; the id is stable, so a client retry is
//!   de-duplicated by the brokers).
//! - **BestEffort**: all writes run concurrently and are all awaited; failures are logged and
//!   counted; the publish succeeds when at least one provider accepted the message. A message
//!   that went nowhere is never reported as accepted.
//!
//! The composite is itself a [`Provider`], so code that used one broker can use several.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::handoff::Backlog;
use crate::latency::{Histogram, LatencySummary};
use crate::message::DataMessage;
use crate::provider::{Health, MessageStream, Provider, ProviderError, ProviderKind, Stats};

/// Deadline for one provider write when nothing else is configured.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many recent ids the merged subscription remembers to drop duplicates.
/// Enough to cover the skew between two brokers delivering the same message (seconds of
/// traffic at thousands per second) while keeping memory bounded (~100 bytes per id).
pub const MERGE_DEDUP_WINDOW: usize = 65_536;

/// What a publish requires of the providers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Every provider must acknowledge; the first failure fails the publish.
    #[default]
    FailFast,
    /// At least one provider must acknowledge; failures are logged and counted.
    BestEffort,
}

impl Strategy {
    /// The spelling used by `COMPOSITE_STRATEGY` and logs.
    pub fn as_kebab(self) -> &'static str {
        match self {
            Strategy::FailFast => "fail-fast",
            Strategy::BestEffort => "best-effort",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Strategy::FailFast => 0,
            Strategy::BestEffort => 1,
        }
    }

    fn from_u8(v: u8) -> Self {
        if v == 1 {
            Strategy::BestEffort
        } else {
            Strategy::FailFast
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::FailFast => "FailFast",
            Strategy::BestEffort => "BestEffort",
        })
    }
}

impl FromStr for Strategy {
    type Err = String;

    /// Accepts the seed's `fail-fast` / `best-effort` and the resource's `FailFast` / `BestEffort`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "failfast" => Ok(Strategy::FailFast),
            "besteffort" => Ok(Strategy::BestEffort),
            _ => Err(format!(
                "unknown strategy {s:?}: use fail-fast or best-effort (FailFast / BestEffort in a manifest)"
            )),
        }
    }
}

/// Whether the providers' health satisfies the strategy: FailFast needs every provider healthy,
/// BestEffort at least one.
pub fn strategy_satisfied(strategy: Strategy, healthy: &[bool]) -> bool {
    match strategy {
        Strategy::FailFast => !healthy.is_empty() && healthy.iter().all(|h| *h),
        Strategy::BestEffort => healthy.iter().any(|h| *h),
    }
}

/// Why a composite publish failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// FailFast: this provider failed first.
    #[error("fail-fast: {0}")]
    Failed(ProviderError),
    /// BestEffort: no provider accepted the message.
    #[error("best-effort: no provider accepted the message: {}", join_errors(.0))]
    AllFailed(Vec<ProviderError>),
    #[error("the pipeline is closed")]
    Closed,
}

fn join_errors(errors: &[ProviderError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl PublishError {
    /// Names of the providers that failed.
    pub fn failed_providers(&self) -> Vec<String> {
        match self {
            PublishError::Failed(e) => vec![e.provider().to_string()],
            PublishError::AllFailed(errs) => {
                errs.iter().map(|e| e.provider().to_string()).collect()
            }
            PublishError::Closed => Vec::new(),
        }
    }
}

/// What a successful publish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Providers that acknowledged the message.
    pub accepted: Vec<String>,
    /// BestEffort only: providers that will get the message from their hinted-handoff backlog
    /// (stored durably on the relay, replayed in order when the provider is back).
    pub deferred: Vec<String>,
    /// BestEffort only: providers that failed (already logged and counted).
    pub failed: Vec<ProviderError>,
}

/// One provider inside the composite, with what the composite measures of it.
struct Lane {
    provider: Arc<dyn Provider>,
    latency: Histogram,
    /// Writes the composite abandoned at its deadline (the provider never answered).
    timeouts: AtomicU64,
    /// Hinted handoff: where BestEffort keeps the writes this provider missed.
    backlog: Option<Arc<Backlog>>,
}

/// How one provider took one message.
enum LaneOutcome {
    Acked,
    /// Stored in the provider's backlog, to be replayed.
    Deferred,
    Failed(ProviderError),
}

impl Lane {
    /// Writes to the provider, or (BestEffort, with hinted handoff) to its backlog: behind a
    /// non-empty backlog so the provider receives messages in ingest order, or after a failed
    /// write.
    async fn publish_with_handoff(
        &self,
        msg: &DataMessage,
        deadline: Duration,
        strategy: Strategy,
    ) -> LaneOutcome {
        let Some(backlog) = &self.backlog else {
            return match self.publish(msg, deadline).await {
                Ok(()) => LaneOutcome::Acked,
                Err(e) => LaneOutcome::Failed(e),
            };
        };
        let name = self.provider.name();
        if !backlog.is_empty() {
            if strategy == Strategy::FailFast {
                // Writing past the backlog would reorder the provider's messages; FailFast needs
                // an acknowledgement now, so it waits for the replay to catch up.
                return LaneOutcome::Failed(ProviderError::Unavailable {
                    provider: name.to_string(),
                    reason: format!(
                        "replaying {} missed message(s) first; retry shortly",
                        backlog.len()
                    ),
                });
            }
            return self.defer(backlog, msg, None).await;
        }
        match self.publish(msg, deadline).await {
            Ok(()) => LaneOutcome::Acked,
            // A message the provider refuses for itself (too large, say) would fail every
            // replay too and block the backlog behind it: fail the lane instead.
            Err(e @ ProviderError::Rejected { .. }) => LaneOutcome::Failed(e),
            Err(e) if strategy == Strategy::BestEffort => self.defer(backlog, msg, Some(e)).await,
            Err(e) => LaneOutcome::Failed(e),
        }
    }

    async fn defer(
        &self,
        backlog: &Backlog,
        msg: &DataMessage,
        cause: Option<ProviderError>,
    ) -> LaneOutcome {
        match backlog.append(msg).await {
            Ok(()) => LaneOutcome::Deferred,
            Err(e) => {
                let provider = self.provider.name().to_string();
                let reason = match cause {
                    Some(c) => format!("{c}; and its backlog refused the message: {e}"),
                    None => format!("its backlog refused the message: {e}"),
                };
                LaneOutcome::Failed(ProviderError::Unavailable { provider, reason })
            }
        }
    }

    async fn publish(&self, msg: &DataMessage, deadline: Duration) -> Result<(), ProviderError> {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(deadline, self.provider.publish(msg)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(ProviderError::Timeout {
                    provider: self.provider.name().to_string(),
                    after: deadline,
                })
            }
        };
        if outcome.is_ok() {
            self.latency.record(started.elapsed());
        }
        outcome
    }
}

/// A provider's row in the composite's stats.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRow {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    #[serde(flatten)]
    pub stats: Stats,
    pub timeouts: u64,
    pub latency: LatencySummary,
    pub health: Health,
    /// The provider's backlog passed its limits: replay alone cannot make it complete.
    pub needs_reconciliation: bool,
}

/// Stats of the whole composite: a row per provider, in pipeline order, and their sum.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeStats {
    pub strategy: Strategy,
    pub providers: Vec<ProviderRow>,
    pub total: Stats,
}

/// Permits of the in-flight gate: each publish holds one, [`Composite::drain`] takes them all.
/// Far above any real concurrency (the HTTP server bounds it long before).
const INFLIGHT_PERMITS: u32 = 1 << 20;

/// Several providers behind one [`Provider`].
pub struct Composite {
    lanes: Vec<Lane>,
    strategy: AtomicU8,
    publish_timeout: Duration,
    closed: AtomicBool,
    inflight: tokio::sync::Semaphore,
    /// Stops the replay tasks; they are joined on close.
    replay_stop: tokio::sync::watch::Sender<bool>,
    replayers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Composite {
    /// A composite over `providers` (in order; the first is the default read provider).
    /// Provider names must be unique and the list non-empty.
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        strategy: Strategy,
        publish_timeout: Duration,
    ) -> Result<Self, String> {
        if providers.is_empty() {
            return Err("a composite needs at least one provider".into());
        }
        let mut seen = HashSet::new();
        for p in &providers {
            if !seen.insert(p.name().to_string()) {
                return Err(format!(
                    "provider name {:?} is used twice; give each provider a unique name",
                    p.name()
                ));
            }
        }
        Ok(Self {
            lanes: providers
                .into_iter()
                .map(|provider| Lane {
                    provider,
                    latency: Histogram::default(),
                    timeouts: AtomicU64::new(0),
                    backlog: None,
                })
                .collect(),
            strategy: AtomicU8::new(strategy.to_u8()),
            publish_timeout,
            closed: AtomicBool::new(false),
            inflight: tokio::sync::Semaphore::new(INFLIGHT_PERMITS as usize),
            replay_stop: tokio::sync::watch::channel(false).0,
            replayers: std::sync::Mutex::default(),
        })
    }

    /// Gives each provider a hinted-handoff backlog (`backlogs` by provider name; providers not
    /// named get none). Replay starts with [`Composite::start_replay`].
    pub fn with_backlogs(
        mut self,
        mut backlogs: std::collections::HashMap<String, Arc<Backlog>>,
    ) -> Self {
        for lane in &mut self.lanes {
            lane.backlog = backlogs.remove(lane.provider.name());
        }
        self
    }

    /// Starts one replay task per backlog (stopped and joined by [`Composite::close_all`]).
    /// Separate from construction so that a composite being replaced stops replaying before its
    /// successor starts: two replayers of one backlog would send messages twice.
    pub fn start_replay(&self) {
        let mut tasks = self.replayers.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.is_empty() {
            return;
        }
        for lane in &self.lanes {
            if let Some(backlog) = &lane.backlog {
                tasks.push(tokio::spawn(crate::handoff::replay(
                    backlog.clone(),
                    lane.provider.clone(),
                    self.publish_timeout,
                    self.replay_stop.subscribe(),
                )));
            }
        }
    }

    /// Waits until every backlog is empty, at most `grace`.
    async fn wait_for_backlogs(&self, grace: Duration) {
        let left = || -> u64 {
            self.lanes
                .iter()
                .filter_map(|l| l.backlog.as_ref())
                .map(|b| b.len())
                .sum()
        };
        if grace.is_zero()
            || left() == 0
            || self
                .replayers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            return;
        }
        tracing::info!(backlog = left(), grace = ?grace, "stopping: giving the replay time to empty the backlogs");
        let deadline = tokio::time::Instant::now() + grace;
        while left() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(backlog = left(), "stopping with messages still in backlogs: they stay in the state directory for the next start");
                return;
            }
            // Replay removes whole batches; a coarse look at its counter is enough here.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!("backlogs empty");
    }

    /// Stops the replay tasks and waits for them.
    async fn stop_replay(&self) {
        let _ = self.replay_stop.send(true);
        let tasks = std::mem::take(&mut *self.replayers.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Waits until every publish that has started has finished (used before closing a composite
    /// that was swapped out, so no in-flight message is cut off).
    pub async fn drain(&self) {
        // The semaphore is never closed, so acquiring cannot fail.
        if let Ok(all) = self.inflight.acquire_many(INFLIGHT_PERMITS).await {
            drop(all);
        }
    }

    pub fn strategy(&self) -> Strategy {
        Strategy::from_u8(self.strategy.load(Ordering::Acquire))
    }

    /// Switches the strategy; publishes already under way finish under the one they started with.
    pub fn set_strategy(&self, strategy: Strategy) {
        self.strategy.store(strategy.to_u8(), Ordering::Release);
    }

    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.lanes.iter().map(|l| &l.provider)
    }

    /// Writes `msg` to every provider concurrently and applies the strategy.
    pub async fn publish_detailed(&self, msg: &DataMessage) -> Result<PublishReport, PublishError> {
        let Ok(_inflight) = self.inflight.acquire().await else {
            return Err(PublishError::Closed);
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let strategy = self.strategy();
        let mut writes: FuturesUnordered<_> = self
            .lanes
            .iter()
            .map(|lane| async move {
                (
                    lane.provider.name(),
                    lane.publish_with_handoff(msg, self.publish_timeout, strategy)
                        .await,
                )
            })
            .collect();
        let mut report = PublishReport::default();
        while let Some((name, outcome)) = writes.next().await {
            match outcome {
                LaneOutcome::Acked => report.accepted.push(name.to_string()),
                LaneOutcome::Deferred => {
                    tracing::debug!(provider = name, message_id = %msg.id, "kept in the provider's backlog for replay");
                    report.deferred.push(name.to_string());
                }
                LaneOutcome::Failed(e) if strategy == Strategy::FailFast => {
                    tracing::warn!(provider = name, error = %e, message_id = %msg.id, "fail-fast publish failed");
                    // Dropping `writes` abandons the other writes: the caller hears at once.
                    return Err(PublishError::Failed(e));
                }
                LaneOutcome::Failed(e) => {
                    tracing::warn!(provider = name, error = %e, message_id = %msg.id, "best-effort write failed; continuing with the other providers");
                    report.failed.push(e);
                }
            }
        }
        // A message counts as accepted once a provider or a durable backlog holds it.
        if report.accepted.is_empty() && report.deferred.is_empty() {
            return Err(PublishError::AllFailed(report.failed));
        }
        Ok(report)
    }

    /// The default read provider's stream (the first provider's).
    pub async fn subscribe_first(&self) -> Result<MessageStream, ProviderError> {
        self.lanes[0].provider.subscribe().await
    }

    /// Every provider's stream merged, each message id delivered once (within a window of
    /// [`MERGE_DEDUP_WINDOW`] recent ids).
    pub async fn subscribe_merged(&self) -> Result<MessageStream, ProviderError> {
        let mut streams = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            streams.push(lane.provider.subscribe().await?);
        }
        let mut seen = RecentIds::new(MERGE_DEDUP_WINDOW);
        Ok(futures::stream::select_all(streams)
            .filter(move |item| {
                let keep = match item {
                    Ok(msg) => seen.insert(&msg.id),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed())
    }

    /// A row per provider and the total.
    pub fn stats_detailed(&self) -> CompositeStats {
        let mut total = Stats::default();
        let providers = self
            .lanes
            .iter()
            .map(|lane| {
                let mut stats = lane.provider.stats();
                if let Some(b) = &lane.backlog {
                    stats.backlog = b.len();
                }
                total.add(&stats);
                ProviderRow {
                    name: lane.provider.name().to_string(),
                    kind: lane.provider.kind(),
                    stats,
                    timeouts: lane.timeouts.load(Ordering::Relaxed),
                    latency: lane.latency.summary(),
                    health: lane.provider.health(),
                    needs_reconciliation: lane
                        .backlog
                        .as_ref()
                        .is_some_and(|b| b.needs_reconciliation()),
                }
            })
            .collect();
        CompositeStats {
            strategy: self.strategy(),
            providers,
            total,
        }
    }

    /// Latency histograms per provider, for `/metrics`.
    pub fn latency_histograms(&self) -> impl Iterator<Item = (&str, &Histogram)> {
        self.lanes.iter().map(|l| (l.provider.name(), &l.latency))
    }

    /// Ok when the providers' health satisfies the current strategy; otherwise says which are down.
    pub fn readiness(&self) -> Result<(), String> {
        let health: Vec<(String, Health)> = self
            .lanes
            .iter()
            .map(|l| (l.provider.name().to_string(), l.provider.health()))
            .collect();
        let healthy: Vec<bool> = health.iter().map(|(_, h)| h.healthy).collect();
        if strategy_satisfied(self.strategy(), &healthy) {
            return Ok(());
        }
        let down = health
            .iter()
            .filter(|(_, h)| !h.healthy)
            .map(|(n, h)| format!("{n}: {}", h.message))
            .collect::<Vec<_>>()
            .join("; ");
        Err(format!(
            "{} needs more providers up; down: {down}",
            self.strategy()
        ))
    }

    /// Refuses new publishes, waits for the running ones, stops replay, then closes every
    /// provider (concurrently). Idempotent.
    pub async fn close_all(&self) -> Result<(), ProviderError> {
        self.close_with_grace(Duration::ZERO).await
    }

    /// As [`Composite::close_all`], but first gives the replay up to `grace` to empty the
    /// backlogs, so a relay that is shut down (a rollout, a scale-down) hands its missed writes
    /// to the providers rather than leaving them on a disk that may go with the pod.
    pub async fn close_with_grace(&self, grace: Duration) -> Result<(), ProviderError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // New publishes are refused from here (a relay retries them on its new composite);
        // the ones already running finish before any provider closes.
        self.drain().await;
        self.wait_for_backlogs(grace).await;
        self.stop_replay().await;
        let results =
            futures::future::join_all(self.lanes.iter().map(|l| l.provider.close())).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }
}

#[async_trait]
impl Provider for Composite {
    fn name(&self) -> &str {
        "composite"
    }

    /// The kind of the default read provider.
    fn kind(&self) -> ProviderKind {
        self.lanes[0].provider.kind()
    }

    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        match self.publish_detailed(msg).await {
            Ok(_) => Ok(()),
            Err(PublishError::Failed(e)) => Err(e),
            Err(e @ PublishError::AllFailed(_)) => Err(ProviderError::Unavailable {
                provider: "composite".into(),
                reason: e.to_string(),
            }),
            Err(PublishError::Closed) => Err(ProviderError::Closed {
                provider: "composite".into(),
            }),
        }
    }

    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        self.subscribe_first().await
    }

    /// The sum over all providers (see [`Composite::stats_detailed`] for the rows).
    fn stats(&self) -> Stats {
        self.stats_detailed().total
    }

    fn health(&self) -> Health {
        match self.readiness() {
            Ok(()) => Health::up(
                "StrategySatisfied",
                format!("{} satisfied", self.strategy()),
            ),
            Err(why) => Health::down("StrategyNotSatisfied", why),
        }
    }

    async fn close(&self) -> Result<(), ProviderError> {
        self.close_all().await
    }
}

/// A bounded set of recently seen ids: inserting past the capacity forgets the oldest.
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// True when `id` was not seen within the window.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::memory::MemoryProvider;

    /// A test provider that waits, then succeeds or fails, counting what it did.
    struct Scripted {
        name: String,
        delay: Duration,
        fail: AtomicBool,
        counters: crate::provider::Counters,
        closes: AtomicU64,
        /// Ids acknowledged, in order, and a wake-up for each.
        received: std::sync::Mutex<Vec<String>>,
        arrived: tokio::sync::Notify,
    }

    impl Scripted {
        fn new(name: &str, delay_ms: u64, fail: bool) -> Arc<Self> {
            Arc::new(Self {
                name: name.into(),
                delay: Duration::from_millis(delay_ms),
                fail: AtomicBool::new(fail),
                counters: Default::default(),
                closes: AtomicU64::new(0),
                received: Default::default(),
                arrived: Default::default(),
            })
        }

        fn received(&self) -> Vec<String> {
            self.received.lock().unwrap().clone()
        }

        /// Waits until `n` messages were acknowledged.
        async fn wait_for(&self, n: usize) {
            loop {
                let notified = self.arrived.notified();
                if self.received.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        }
    }

    #[async_trait]
    impl Provider for Scripted {
        fn name(&self) -> &str {
            &self.name
        }
        fn kind(&self) -> ProviderKind {
            ProviderKind::Memory
        }
        async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
            tokio::time::sleep(self.delay).await;
            let outcome = if self.fail.load(Ordering::Acquire) {
                Err(ProviderError::Unavailable {
                    provider: self.name.clone(),
                    reason: "scripted failure".into(),
                })
            } else {
                self.received.lock().unwrap().push(msg.id.clone());
                self.arrived.notify_waiters();
                Ok(())
            };
            self.counters.record(&outcome);
            outcome
        }
        async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
            Ok(futures::stream::empty().boxed())
        }
        fn stats(&self) -> Stats {
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

    fn composite(providers: Vec<Arc<dyn Provider>>, strategy: Strategy) -> Composite {
        Composite::new(providers, strategy, Duration::from_secs(5)).unwrap()
    }

    // S9, first half: two memory providers + FailFast → the message is in both (seen through stats).
    #[tokio::test]
    async fn fail_fast_writes_to_both_memory_providers() {
        let a = Arc::new(MemoryProvider::new("a", 10));
        let b = Arc::new(MemoryProvider::new("b", 10));
        let c = composite(vec![a.clone(), b.clone()], Strategy::FailFast);
        let report = c
            .publish_detailed(&DataMessage::new("test", "x"))
            .await
            .unwrap();
        assert_eq!(report.accepted.len(), 2);
        assert_eq!(a.stats().published, 1);
        assert_eq!(b.stats().published, 1);
        assert_eq!(a.stats().depth, 1);
        assert_eq!(b.stats().depth, 1);
        let stats = c.stats_detailed();
        assert_eq!(stats.total.published, 2);
        assert_eq!(
            stats
                .providers
                .iter()
                .map(|r| (r.name.as_str(), r.stats.published))
                .collect::<Vec<_>>(),
            vec![("a", 1), ("b", 1)]
        );
    }

    // S9, second half: one provider always fails + BestEffort → publish succeeds, failure counted.
    #[tokio::test]
    async fn best_effort_succeeds_when_one_provider_always_fails() {
        let good = Arc::new(MemoryProvider::new("good", 10));
        let bad = Scripted::new("bad", 0, true);
        let c = composite(vec![good.clone(), bad.clone()], Strategy::BestEffort);
        let report = c
            .publish_detailed(&DataMessage::new("test", "x"))
            .await
            .unwrap();
        assert_eq!(report.accepted, vec!["good".to_string()]);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].provider(), "bad");
        assert_eq!(good.stats().published, 1);
        assert_eq!(bad.stats().failed, 1);
        assert_eq!(c.stats().failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_run_concurrently() {
        let c = composite(
            vec![
                Scripted::new("a", 200, false),
                Scripted::new("b", 200, false),
            ],
            Strategy::FailFast,
        );
        let started = tokio::time::Instant::now();
        c.publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap();
        // Sequential writes would take 400 ms of virtual time.
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_returns_the_first_failure_at_once_and_names_it() {
        let c = composite(
            vec![
                Scripted::new("slow", 1_000, false),
                Scripted::new("broken", 10, true),
            ],
            Strategy::FailFast,
        );
        let started = tokio::time::Instant::now();
        let err = c
            .publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap_err();
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(10),
            "did not wait for the slow one"
        );
        assert_eq!(err.failed_providers(), vec!["broken".to_string()]);
        assert!(err.to_string().contains("broken"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn best_effort_waits_for_all_and_fails_when_none_accepted() {
        let c = composite(
            vec![Scripted::new("x", 50, true), Scripted::new("y", 300, true)],
            Strategy::BestEffort,
        );
        let started = tokio::time::Instant::now();
        let err = c
            .publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let mut names = err.failed_providers();
        names.sort();
        assert_eq!(names, vec!["x".to_string(), "y".to_string()]);
        assert!(matches!(err, PublishError::AllFailed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_provider_becomes_a_timeout_error_naming_it() {
        let c = Composite::new(
            vec![
                Scripted::new("hung", 3_600_000, false),
                Scripted::new("ok", 0, false),
            ],
            Strategy::FailFast,
            Duration::from_millis(250),
        )
        .unwrap();
        let started = tokio::time::Instant::now();
        let err = c
            .publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(
            matches!(err, PublishError::Failed(ProviderError::Timeout { ref provider, .. }) if provider == "hung")
        );
        assert_eq!(c.stats_detailed().providers[0].timeouts, 1);
    }

    #[tokio::test]
    async fn strategy_switch_applies_to_the_next_publish() {
        let c = composite(
            vec![
                Arc::new(MemoryProvider::new("m", 10)),
                Scripted::new("bad", 0, true),
            ],
            Strategy::FailFast,
        );
        assert!(c
            .publish_detailed(&DataMessage::new("t", "1"))
            .await
            .is_err());
        assert!(c.readiness().is_err());
        c.set_strategy(Strategy::BestEffort);
        assert!(c
            .publish_detailed(&DataMessage::new("t", "2"))
            .await
            .is_ok());
        assert!(c.readiness().is_ok());
    }

    #[tokio::test]
    async fn subscribe_reads_the_first_provider() {
        let a = Arc::new(MemoryProvider::new("a", 10));
        let b = Arc::new(MemoryProvider::new("b", 10));
        let c = composite(vec![a.clone(), b.clone()], Strategy::FailFast);
        let msg = DataMessage::new("t", "x");
        c.publish(&msg).await.unwrap();
        let mut s = c.subscribe().await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), msg);
        assert_eq!(a.stats().consumed, 1);
        assert_eq!(b.stats().consumed, 0);
    }

    #[tokio::test]
    async fn merged_subscribe_delivers_each_id_once() {
        let a = Arc::new(MemoryProvider::new("a", 10));
        let b = Arc::new(MemoryProvider::new("b", 10));
        let c = composite(vec![a.clone(), b.clone()], Strategy::BestEffort);
        let both = DataMessage::new("t", "both");
        c.publish(&both).await.unwrap();
        // One message only on b (as after a failed write to a).
        let only_b = DataMessage::new("t", "only-b");
        b.publish(&only_b).await.unwrap();
        c.close().await.unwrap(); // the memory streams end once drained
        let mut ids: Vec<String> = c
            .subscribe_merged()
            .await
            .unwrap()
            .map(|m| m.unwrap().id)
            .collect()
            .await;
        ids.sort();
        let mut expected = vec![both.id, only_b.id];
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!(
            a.stats().consumed + b.stats().consumed,
            3,
            "the duplicate was read, then dropped"
        );
    }

    #[tokio::test]
    async fn close_closes_every_provider_once_and_later_publishes_fail() {
        let a = Scripted::new("a", 0, false);
        let b = Scripted::new("b", 0, false);
        let c = composite(vec![a.clone(), b.clone()], Strategy::FailFast);
        c.close().await.unwrap();
        c.close().await.unwrap();
        assert_eq!(a.closes.load(Ordering::Relaxed), 1);
        assert_eq!(b.closes.load(Ordering::Relaxed), 1);
        assert_eq!(
            c.publish_detailed(&DataMessage::new("t", "x"))
                .await
                .unwrap_err(),
            PublishError::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_in_flight_publishes() {
        let c = Arc::new(composite(
            vec![Scripted::new("slow", 100, false)],
            Strategy::FailFast,
        ));
        let publisher = {
            let c = c.clone();
            tokio::spawn(async move { c.publish_detailed(&DataMessage::new("t", "x")).await })
        };
        tokio::task::yield_now().await; // let the publish start
        let started = tokio::time::Instant::now();
        c.drain().await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert!(publisher.await.unwrap().is_ok());
    }

    fn with_handoff(
        providers: Vec<Arc<dyn Provider>>,
        strategy: Strategy,
        dir: &std::path::Path,
    ) -> Composite {
        let store = crate::handoff::HandoffStore::open(dir).unwrap();
        let backlogs = providers
            .iter()
            .map(|p| {
                (
                    p.name().to_string(),
                    store.backlog(p.name(), Default::default()).unwrap(),
                )
            })
            .collect();
        composite(providers, strategy).with_backlogs(backlogs)
    }

    #[tokio::test]
    async fn best_effort_keeps_missed_writes_and_replays_them_in_ingest_order() {
        let dir = tempfile::tempdir().unwrap();
        let good = Scripted::new("good", 0, false);
        let flaky = Scripted::new("flaky", 0, true);
        let c = with_handoff(
            vec![good.clone(), flaky.clone()],
            Strategy::BestEffort,
            dir.path(),
        );
        let ids: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        for id in &ids[..3] {
            let mut m = DataMessage::new("t", "x");
            m.id = id.clone();
            let report = c.publish_detailed(&m).await.unwrap();
            assert_eq!(report.accepted, ["good"]);
            assert_eq!(report.deferred, ["flaky"]);
        }
        assert_eq!(c.stats_detailed().providers[1].stats.backlog, 3);
        flaky.fail.store(false, Ordering::Release);
        // While flaky still has a backlog, new messages for it go behind the backlog.
        for id in &ids[3..] {
            let mut m = DataMessage::new("t", "x");
            m.id = id.clone();
            let report = c.publish_detailed(&m).await.unwrap();
            assert_eq!(report.deferred, ["flaky"], "goes behind the backlog");
        }
        c.start_replay();
        flaky.wait_for(5).await;
        assert_eq!(
            flaky.received(),
            ids,
            "flaky received every message in ingest order"
        );
        assert_eq!(good.received(), ids);
        c.close_all().await.unwrap();
        assert_eq!(c.stats_detailed().providers[1].stats.backlog, 0);
    }

    #[tokio::test]
    async fn closing_with_grace_lets_the_replay_empty_the_backlogs_first() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Scripted::new("flaky", 0, true);
        let c = with_handoff(
            vec![Scripted::new("good", 0, false), flaky.clone()],
            Strategy::BestEffort,
            dir.path(),
        );
        c.start_replay();
        let mut m = DataMessage::new("t", "x");
        m.id = "kept".into();
        assert_eq!(c.publish_detailed(&m).await.unwrap().deferred, ["flaky"]);
        flaky.fail.store(false, Ordering::Release);
        c.close_with_grace(Duration::from_secs(20)).await.unwrap();
        assert_eq!(
            flaky.received(),
            ["kept"],
            "delivered before the providers closed"
        );
        assert_eq!(flaky.closes.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats_detailed().providers[1].stats.backlog, 0);
    }

    #[tokio::test]
    async fn best_effort_with_every_provider_down_succeeds_only_into_backlogs() {
        let dir = tempfile::tempdir().unwrap();
        let c = with_handoff(
            vec![Scripted::new("x", 0, true), Scripted::new("y", 0, true)],
            Strategy::BestEffort,
            dir.path(),
        );
        let report = c
            .publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap();
        assert!(report.accepted.is_empty());
        assert_eq!(report.deferred.len(), 2, "held durably for both");
        // Without handoff the same publish fails: a message that went nowhere is not accepted.
        let bare = composite(vec![Scripted::new("x", 0, true)], Strategy::BestEffort);
        assert!(matches!(
            bare.publish_detailed(&DataMessage::new("t", "x")).await,
            Err(PublishError::AllFailed(_))
        ));
    }

    #[tokio::test]
    async fn a_message_a_provider_rejects_for_good_is_not_kept_for_replay() {
        struct Rejecting;
        #[async_trait]
        impl Provider for Rejecting {
            fn name(&self) -> &str {
                "small"
            }
            fn kind(&self) -> ProviderKind {
                ProviderKind::Nats
            }
            async fn publish(&self, _m: &DataMessage) -> Result<(), ProviderError> {
                Err(ProviderError::Rejected {
                    provider: "small".into(),
                    reason: "message too large".into(),
                })
            }
            async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
                Ok(futures::stream::empty().boxed())
            }
            fn stats(&self) -> Stats {
                Stats::default()
            }
            fn health(&self) -> Health {
                Health::up("Connected", "ok")
            }
            async fn close(&self) -> Result<(), ProviderError> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let c = with_handoff(
            vec![Scripted::new("good", 0, false), Arc::new(Rejecting)],
            Strategy::BestEffort,
            dir.path(),
        );
        let report = c
            .publish_detailed(&DataMessage::new("t", "big"))
            .await
            .unwrap();
        assert_eq!(report.accepted, ["good"]);
        assert!(
            report.deferred.is_empty(),
            "not deferred: it would block the backlog forever"
        );
        assert!(matches!(report.failed[0], ProviderError::Rejected { .. }));
        assert_eq!(c.stats_detailed().providers[1].stats.backlog, 0);
    }

    #[tokio::test]
    async fn fail_fast_refuses_while_a_backlog_is_replaying_rather_than_reorder() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Scripted::new("flaky", 0, true);
        let c = with_handoff(
            vec![Scripted::new("good", 0, false), flaky.clone()],
            Strategy::BestEffort,
            dir.path(),
        );
        c.publish_detailed(&DataMessage::new("t", "missed"))
            .await
            .unwrap();
        flaky.fail.store(false, Ordering::Release);
        c.set_strategy(Strategy::FailFast);
        let err = c
            .publish_detailed(&DataMessage::new("t", "next"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("replaying 1 missed message"),
            "{err}"
        );
        c.start_replay();
        flaky.wait_for(1).await;
        // Replay finished (remove happens after the ack): wait for the backlog to read empty.
        while c.stats_detailed().providers[1].stats.backlog > 0 {
            tokio::task::yield_now().await;
        }
        assert!(c
            .publish_detailed(&DataMessage::new("t", "after"))
            .await
            .is_ok());
    }

    #[test]
    fn construction_rejects_duplicates_and_empty() {
        let dup = Composite::new(
            vec![Scripted::new("a", 0, false), Scripted::new("a", 0, false)],
            Strategy::FailFast,
            DEFAULT_PUBLISH_TIMEOUT,
        );
        assert!(dup.err().unwrap().contains("\"a\" is used twice"));
        assert!(Composite::new(vec![], Strategy::FailFast, DEFAULT_PUBLISH_TIMEOUT).is_err());
    }

    #[test]
    fn strategy_parsing() {
        for (text, want) in [
            ("fail-fast", Strategy::FailFast),
            ("FailFast", Strategy::FailFast),
            ("best-effort", Strategy::BestEffort),
            ("BEST_EFFORT", Strategy::BestEffort),
        ] {
            assert_eq!(text.parse::<Strategy>().unwrap(), want, "{text}");
        }
        let err = "sometimes".parse::<Strategy>().unwrap_err();
        assert!(
            err.contains("fail-fast") && err.contains("best-effort"),
            "{err}"
        );
    }

    #[test]
    fn strategy_satisfaction_table() {
        use Strategy::*;
        for (strategy, healthy, want) in [
            (FailFast, &[true, true][..], true),
            (FailFast, &[true, false][..], false),
            (FailFast, &[][..], false),
            (BestEffort, &[true, false][..], true),
            (BestEffort, &[false, false][..], false),
            (BestEffort, &[][..], false),
        ] {
            assert_eq!(
                strategy_satisfied(strategy, healthy),
                want,
                "{strategy} {healthy:?}"
            );
        }
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::new(2);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c")); // evicts a
        assert!(r.insert("a"));
        assert!(!r.insert("c"));
    }
}
