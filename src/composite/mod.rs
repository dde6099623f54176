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
//!   counted; the publish succeeds when at least one broker acknowledged the message (or, with
//!   [`Acceptance::RelayDisk`], when a hinted-handoff backlog holds it). A message that went
//!   nowhere is never reported as accepted, and a refused message is never kept in a backlog:
//!   lanes only say a message needs deferral, and the composite appends it to the backlogs once
//!   it knows the message is accepted. A provider that misses an accepted message for good (the
//!   broker refused it, its backlog could not keep it) is counted and marked as needing
//!   reconciliation.
//! - Under either strategy a message larger than the smallest limit of the providers' brokers
//!   ([`Provider::message_limit`]) is refused before any write ([`PublishError::TooLarge`]).
//!
//! The composite is itself a [`Provider`], so code that used one broker can use several.
//!
//! The parts: this file holds the fan-out ([`Composite`]: publish, stats, readiness, close);
//! `lane` holds one provider's lane (its deadline, latency, timeouts and hinted-handoff
//! backlog); `strategy` holds [`Strategy`] and [`strategy_satisfied`]; `merge` the
//! de-duplicating merged subscription.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::handoff::Backlog;
use crate::latency::{Histogram, LatencySummary};
use crate::message::{DataMessage, Outgoing};
use crate::provider::{
    Health, MessageLimit, MessageStream, Provider, ProviderError, ProviderKind, Stats,
};

mod breaker;
mod lane;
mod merge;
mod strategy;

pub use breaker::{BreakerRow, BreakerState, BREAKER_PROBE_INTERVAL, FAILURES_TO_OPEN};
use lane::{DeferFailed, Lane, LaneOutcome};
pub use merge::MERGE_DEDUP_WINDOW;
pub use strategy::{strategy_satisfied, Acceptance, Strategy};

/// Deadline for one provider write when nothing else is configured.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a composite cannot be built, a strategy cannot be parsed, or the composite is not ready.
/// (A failed publish is a [`PublishError`]: the caller matches on it to answer the client.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompositeError {
    #[error("a composite needs at least one provider")]
    NoProviders,
    #[error("provider name {name:?} is used twice; give each provider a unique name")]
    DuplicateProvider { name: String },
    #[error(
        "unknown strategy {given:?}: use fail-fast or best-effort (FailFast / BestEffort in a manifest)"
    )]
    UnknownStrategy { given: String },
    /// The providers' health does not satisfy the strategy.
    #[error("{strategy} needs more providers up; down: {}", join_down(.down))]
    NotReady {
        strategy: Strategy,
        down: Vec<DownProvider>,
    },
}

/// A provider that is down, and what its health says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownProvider {
    pub name: String,
    pub message: String,
}

fn join_down(down: &[DownProvider]) -> String {
    down.iter()
        .map(|d| format!("{}: {}", d.name, d.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a composite publish failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// FailFast: this provider failed first.
    #[error("fail-fast: {0}")]
    Failed(ProviderError),
    /// BestEffort: no provider accepted the message (no broker acknowledged it, and, unless
    /// acceptance is RelayDisk, nothing of it was kept in a backlog).
    #[error("best-effort: no broker acknowledged the message, so it was not accepted and nothing of it was kept: {}", join_errors(.0))]
    AllFailed(Vec<ProviderError>),
    /// The message is larger than a provider's broker takes; nothing was written.
    #[error(
        "message too large for provider {provider}: {size} bytes as encoded for it, above its \
         limit of {} bytes ({}); nothing was written: send a smaller message or raise the \
         broker's limit", .limit.bytes, .limit.setting
    )]
    TooLarge {
        provider: String,
        size: u64,
        limit: MessageLimit,
    },
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
            PublishError::TooLarge { provider, .. } => vec![provider.clone()],
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
    /// Its circuit breaker: open while the provider is known down (writes refused at once).
    pub breaker: BreakerRow,
    /// Accepted messages this provider missed for good (not written, not in its backlog),
    /// since the relay started.
    pub missed: u64,
    /// Appends its backlog failed with a storage error (disk full, I/O error).
    pub backlog_errors: u64,
    /// Replay alone cannot make the provider complete: its backlog passed its limits, or it
    /// missed an accepted message.
    pub needs_reconciliation: bool,
    /// Why it needs reconciliation (set only when it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciliation_reason: Option<String>,
}

/// Stats of the whole composite: a row per provider, in pipeline order, and their sum.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeStats {
    pub strategy: Strategy,
    /// What BestEffort needs to accept a message.
    pub acceptance: Acceptance,
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
    acceptance: AtomicU8,
    publish_timeout: Duration,
    closed: AtomicBool,
    inflight: tokio::sync::Semaphore,
    /// Stops the replay tasks; they are joined on close.
    replay_stop: CancellationToken,
    /// A composite dropped without being closed still stops its replayers (two replayers of one
    /// backlog, the old and its successor's, would send messages twice).
    _stop_replay_on_drop: DropGuard,
    replayers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Composite {
    /// A composite over `providers` (in order; the first is the default read provider).
    /// Provider names must be unique and the list non-empty.
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        strategy: Strategy,
        publish_timeout: Duration,
    ) -> Result<Self, CompositeError> {
        if providers.is_empty() {
            return Err(CompositeError::NoProviders);
        }
        let mut seen = HashSet::new();
        for p in &providers {
            if !seen.insert(p.name().to_string()) {
                return Err(CompositeError::DuplicateProvider {
                    name: p.name().to_string(),
                });
            }
        }
        let replay_stop = CancellationToken::new();
        Ok(Self {
            lanes: providers.into_iter().map(Lane::new).collect(),
            strategy: AtomicU8::new(strategy.to_u8()),
            acceptance: AtomicU8::new(Acceptance::default().to_u8()),
            publish_timeout,
            closed: AtomicBool::new(false),
            inflight: tokio::sync::Semaphore::new(INFLIGHT_PERMITS as usize),
            _stop_replay_on_drop: replay_stop.clone().drop_guard(),
            replay_stop,
            replayers: std::sync::Mutex::default(),
        })
    }

    /// Gives each provider a hinted-handoff backlog (`backlogs` by provider name; providers not
    /// named get none). Replay starts with [`Composite::start_replay`].
    pub fn with_backlogs(mut self, mut backlogs: HashMap<String, Arc<Backlog>>) -> Self {
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
                    self.replay_stop.child_token(),
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
        self.replay_stop.cancel();
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

    /// What BestEffort needs to accept a message (default [`Acceptance::BrokerAck`]).
    pub fn acceptance(&self) -> Acceptance {
        Acceptance::from_u8(self.acceptance.load(Ordering::Acquire))
    }

    /// Sets what BestEffort needs; publishes already under way finish under the old rule.
    pub fn set_acceptance(&self, acceptance: Acceptance) {
        self.acceptance.store(acceptance.to_u8(), Ordering::Release);
    }

    /// The same composite with `acceptance`.
    pub fn with_acceptance(self, acceptance: Acceptance) -> Self {
        self.set_acceptance(acceptance);
        self
    }

    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// Refuses a message larger than some provider's broker takes ([`PublishError::TooLarge`],
    /// naming the provider with the smallest limit the message exceeds).
    pub fn check_size(&self, msg: &Outgoing<'_>) -> Result<(), PublishError> {
        // Only the bytes on the way: the setting's text is built for a refusal alone. The wire
        // form is encoded (once, for the providers too) only when some provider has a limit.
        let exceeded = self
            .lanes
            .iter()
            .filter_map(|l| l.provider.message_limit_bytes().map(|bytes| (l, bytes)))
            .map(|(l, bytes)| (l, l.provider.encoded_size(msg, msg.wire().len()), bytes))
            .filter(|(_, size, bytes)| size > bytes)
            .min_by_key(|(_, _, bytes)| *bytes);
        match exceeded {
            None => Ok(()),
            Some((lane, size, bytes)) => Err(PublishError::TooLarge {
                provider: lane.provider.name().to_string(),
                size,
                limit: lane.provider.message_limit().unwrap_or(MessageLimit {
                    bytes,
                    setting: "the broker's limit".into(),
                }),
            }),
        }
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.lanes.iter().map(|l| &l.provider)
    }

    /// Writes `msg` to every provider concurrently and applies the strategy.
    pub async fn publish_detailed(&self, msg: &DataMessage) -> Result<PublishReport, PublishError> {
        self.publish_outgoing_detailed(&msg.outgoing()).await
    }

    /// [`publish_detailed`](Composite::publish_detailed) of a message whose encodings the
    /// caller may already have computed (its digest, say): the wire form is computed at most
    /// once for every provider and the size check.
    pub async fn publish_outgoing_detailed(
        &self,
        msg: &Outgoing<'_>,
    ) -> Result<PublishReport, PublishError> {
        let Ok(_inflight) = self.inflight.acquire().await else {
            return Err(PublishError::Closed);
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        self.check_size(msg)?;
        let strategy = self.strategy();
        if strategy == Strategy::FailFast {
            // A provider known down fails the message before any provider is written.
            if let Some(e) = self.refused_by_a_breaker() {
                return Err(PublishError::Failed(e));
            }
        }
        let mut writes: FuturesUnordered<_> = self
            .lanes
            .iter()
            .map(|lane| async move {
                (
                    lane,
                    lane.publish_with_handoff(msg, self.publish_timeout, strategy)
                        .await,
                )
            })
            .collect();
        let mut outcomes = Vec::with_capacity(self.lanes.len());
        while let Some((lane, outcome)) = writes.next().await {
            if let (LaneOutcome::Failed(e), Strategy::FailFast) = (&outcome, strategy) {
                tracing::warn!(provider = lane.provider.name(), error = %e, message_id = %msg.id, "fail-fast publish failed");
                // Dropping `writes` abandons the other writes: the caller hears at once.
                return Err(PublishError::Failed(e.clone()));
            }
            outcomes.push((lane, outcome));
        }
        drop(writes);
        self.settle(msg, strategy, outcomes).await
    }

    /// Writes `msgs` to every provider, each provider getting the whole batch in order through
    /// its pipelined [`Provider::publish_batch`] (one flush, not a round trip per message), and
    /// decides each message as [`Composite::publish_detailed`] does: one result per message, in
    /// order. A provider with a backlog gets the batch behind it, as a single publish would.
    /// Unlike a single FailFast publish, every provider's batch is awaited (each message needs
    /// its own answer). A message too large for a broker is refused alone; the rest are written.
    pub async fn publish_batch_detailed(
        &self,
        msgs: &[DataMessage],
    ) -> Vec<Result<PublishReport, PublishError>> {
        let closed = || msgs.iter().map(|_| Err(PublishError::Closed)).collect();
        let Ok(_inflight) = self.inflight.acquire().await else {
            return closed();
        };
        if self.closed.load(Ordering::Acquire) {
            return closed();
        }
        let sizes: Vec<Result<(), PublishError>> = msgs
            .iter()
            .map(|m| self.check_size(&m.outgoing()))
            .collect();
        if sizes.iter().any(Result::is_err) {
            // Rare (the ingest API checks sizes before it calls): write the rest, in order.
            let fitting: Vec<DataMessage> = msgs
                .iter()
                .zip(&sizes)
                .filter(|(_, s)| s.is_ok())
                .map(|(m, _)| m.clone())
                .collect();
            let mut written = self.publish_batch_fitting(&fitting).await.into_iter();
            return sizes
                .into_iter()
                .map(|s| match s {
                    Ok(()) => written.next().unwrap_or(Err(PublishError::Closed)),
                    Err(e) => Err(e),
                })
                .collect();
        }
        self.publish_batch_fitting(msgs).await
    }

    /// As [`Composite::publish_batch_detailed`] for messages the caller already checked with
    /// [`Composite::check_size`] on this composite (the ingest API checks every element before
    /// any write): the size of each is not computed a second time.
    pub async fn publish_batch_checked(
        &self,
        msgs: &[DataMessage],
    ) -> Vec<Result<PublishReport, PublishError>> {
        let Ok(_inflight) = self.inflight.acquire().await else {
            return msgs.iter().map(|_| Err(PublishError::Closed)).collect();
        };
        if self.closed.load(Ordering::Acquire) {
            return msgs.iter().map(|_| Err(PublishError::Closed)).collect();
        }
        self.publish_batch_fitting(msgs).await
    }

    /// The refusal of the first provider whose breaker is open with no probe due.
    fn refused_by_a_breaker(&self) -> Option<ProviderError> {
        self.lanes
            .iter()
            .find_map(|l| l.breaker.refusal_now(|| l.provider.health()))
    }

    async fn publish_batch_fitting(
        &self,
        msgs: &[DataMessage],
    ) -> Vec<Result<PublishReport, PublishError>> {
        if msgs.is_empty() {
            return Vec::new();
        }
        let strategy = self.strategy();
        if strategy == Strategy::FailFast {
            // A provider known down fails the batch before any provider is written.
            if let Some(e) = self.refused_by_a_breaker() {
                return msgs
                    .iter()
                    .map(|_| Err(PublishError::Failed(e.clone())))
                    .collect();
            }
        }
        let per_lane = futures::future::join_all(
            self.lanes
                .iter()
                .map(|lane| lane.publish_batch_with_handoff(msgs, self.publish_timeout, strategy)),
        )
        .await;
        let mut per_lane: Vec<_> = per_lane.into_iter().map(Vec::into_iter).collect();
        let mut results = Vec::with_capacity(msgs.len());
        // Message by message, in order: a provider's backlog takes the deferred ones in order.
        for msg in msgs {
            let mut outcomes = Vec::with_capacity(self.lanes.len());
            for (lane, lane_outcomes) in self.lanes.iter().zip(per_lane.iter_mut()) {
                // A lane answers once per message; a missing answer would be a bug, read as a failure.
                let outcome = lane_outcomes.next().unwrap_or_else(|| {
                    LaneOutcome::Failed(ProviderError::Unavailable {
                        provider: lane.provider.name().to_string(),
                        reason: "no answer for this message of the batch".into(),
                    })
                });
                outcomes.push((lane, outcome));
            }
            results.push(self.settle(msg, strategy, outcomes).await);
        }
        results
    }

    /// Applies the strategy to how each provider took `msg`: the report, or why it was not
    /// accepted; under BestEffort appends the message to the backlogs that should keep it, and
    /// counts what providers missed for good.
    async fn settle(
        &self,
        msg: &DataMessage,
        strategy: Strategy,
        outcomes: Vec<(&Lane, LaneOutcome)>,
    ) -> Result<PublishReport, PublishError> {
        let mut report = PublishReport::default();
        // Providers that did not get the message: (lane, error, already counted as missed).
        let mut missing: Vec<(&Lane, ProviderError, bool)> = Vec::new();
        let mut to_defer: Vec<(&Lane, Option<ProviderError>)> = Vec::new();
        for (lane, outcome) in outcomes {
            let name = lane.provider.name();
            match outcome {
                LaneOutcome::Acked => report.accepted.push(name.to_string()),
                LaneOutcome::NeedsDeferral(cause) => to_defer.push((lane, cause)),
                LaneOutcome::Failed(e) if strategy == Strategy::FailFast => {
                    tracing::warn!(provider = name, error = %e, message_id = %msg.id, "fail-fast publish failed");
                    return Err(PublishError::Failed(e));
                }
                LaneOutcome::Failed(e) => {
                    tracing::warn!(provider = name, error = %e, message_id = %msg.id, "best-effort write failed; continuing with the other providers");
                    missing.push((lane, e, false));
                }
            }
        }
        // Backlogs take the message only once it is accepted: a refused message must not be
        // replayed later. (Requests in flight at the same time have no order between them, so
        // appending after the other writes answered keeps every provider's order of accepted
        // messages.)
        if !report.accepted.is_empty() || self.acceptance() == Acceptance::RelayDisk {
            let appends = to_defer.into_iter().map(|(lane, cause)| async move {
                let outcome = lane.defer(msg, cause.as_ref()).await;
                (lane, outcome)
            });
            for (lane, outcome) in futures::future::join_all(appends).await {
                match outcome {
                    Ok(()) => {
                        tracing::debug!(provider = lane.provider.name(), message_id = %msg.id, "kept in the provider's backlog for replay");
                        report.deferred.push(lane.provider.name().to_string());
                    }
                    Err(DeferFailed { error, counted }) => {
                        tracing::warn!(provider = lane.provider.name(), error = %error, message_id = %msg.id, "best-effort: the backlog could not keep the message");
                        missing.push((lane, error, counted));
                    }
                }
            }
        } else {
            for (lane, cause) in to_defer {
                let error = cause.unwrap_or_else(|| ProviderError::Unavailable {
                    provider: lane.provider.name().to_string(),
                    reason: "not written: its backlog is still replaying, and a message goes \
                             behind it"
                        .into(),
                });
                missing.push((lane, error, false));
            }
        }
        if report.accepted.is_empty() && report.deferred.is_empty() {
            return Err(PublishError::AllFailed(
                missing.into_iter().map(|(_, e, _)| e).collect(),
            ));
        }
        // Accepted: every provider that has neither the message nor a backlog entry for it
        // missed it for good.
        for (lane, error, counted) in missing {
            lane.record_miss(&error, counted).await;
            report.failed.push(error);
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
        Ok(merge::merge(streams))
    }

    /// A row per provider and the total.
    pub fn stats_detailed(&self) -> CompositeStats {
        let mut total = Stats::default();
        let providers = self
            .lanes
            .iter()
            .map(|lane| {
                let row = lane.row();
                total.add(&row.stats);
                row
            })
            .collect();
        CompositeStats {
            strategy: self.strategy(),
            acceptance: self.acceptance(),
            providers,
            total,
        }
    }

    /// Latency histograms per provider, for `/metrics`.
    pub fn latency_histograms(&self) -> impl Iterator<Item = (&str, &Histogram)> {
        self.lanes.iter().map(|l| (l.provider.name(), &l.latency))
    }

    /// Ok when the providers' health satisfies the current strategy; otherwise
    /// [`CompositeError::NotReady`], naming the providers that are down.
    pub fn readiness(&self) -> Result<(), CompositeError> {
        // Health alone, not the breaker: a breaker closes only on a write that gets through,
        // and a relay out of its Service (a readiness probe failing on the breaker) would never
        // be sent that write. The providers' supervisors bring health back by themselves.
        let health: Vec<(&str, Health)> = self
            .lanes
            .iter()
            .map(|l| (l.provider.name(), l.provider.health()))
            .collect();
        let healthy: Vec<bool> = health.iter().map(|(_, h)| h.healthy).collect();
        let strategy = self.strategy();
        if strategy_satisfied(strategy, &healthy) {
            return Ok(());
        }
        let down = health
            .into_iter()
            .filter(|(_, h)| !h.healthy)
            .map(|(name, h)| DownProvider {
                name: name.to_string(),
                message: h.message,
            })
            .collect();
        Err(CompositeError::NotReady { strategy, down })
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
            Err(e @ PublishError::TooLarge { .. }) => Err(ProviderError::Rejected {
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
            Err(why) => Health::down("StrategyNotSatisfied", why.to_string()),
        }
    }

    async fn close(&self) -> Result<(), ProviderError> {
        self.close_all().await
    }
}

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod breaker_tests;
#[cfg(test)]
mod tests;
