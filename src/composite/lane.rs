//! A lane: one provider inside the composite, with what the composite measures of it (latency,
//! timeouts) and, under BestEffort, its hinted-handoff backlog. A lane decides, per message,
//! whether the write goes to the provider now or behind its backlog; it does not append to the
//! backlog itself: it says the message needs deferral, and the composite appends once it knows
//! the message is accepted (so a refused message is never left in a backlog to appear later).
//! A lane also counts what its provider missed of accepted messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::breaker::{Admit, Breaker};
use super::{ProviderRow, Strategy};
use crate::handoff::{Backlog, HandoffError};
use crate::latency::Histogram;
use crate::message::{DataMessage, Outgoing};
use crate::provider::{BatchError, Provider, ProviderError};

/// One provider inside the composite, with what the composite measures of it.
pub(super) struct Lane {
    pub(super) provider: Arc<dyn Provider>,
    pub(super) latency: Histogram,
    /// Writes the composite abandoned at its deadline (the provider never answered).
    pub(super) timeouts: AtomicU64,
    /// Hinted handoff: where BestEffort keeps the writes this provider missed.
    pub(super) backlog: Option<Arc<Backlog>>,
    /// Refuses writes at once while the provider is known down (see `breaker`).
    pub(super) breaker: Breaker,
    /// Accepted messages this provider did not get and that no backlog holds for it (refused by
    /// the broker for good, a backlog that could not write, no backlog), since the relay started.
    missed: AtomicU64,
    /// Of `missed`, those no backlog could count persistently (no backlog, or its disk failed):
    /// they mark the provider for reconciliation until the relay restarts.
    missed_unrecorded: AtomicU64,
    /// Appends the backlog failed with a storage error (disk full, I/O error).
    backlog_errors: AtomicU64,
    /// Why the provider last missed a message (shown with `needsReconciliation`). A std Mutex:
    /// held for a clone, never across an await.
    last_miss: Mutex<Option<String>>,
}

/// How one provider took one message.
pub(super) enum LaneOutcome {
    Acked,
    /// BestEffort with a backlog: the message is for the backlog (behind a non-empty one, or
    /// after the failed write `cause`); the composite appends it once the message is accepted.
    NeedsDeferral(Option<ProviderError>),
    Failed(ProviderError),
}

/// Why a deferral failed: the error for the caller, and whether the backlog already counted the
/// miss itself (a full backlog counts its refusals persistently).
pub(super) struct DeferFailed {
    pub(super) error: ProviderError,
    pub(super) counted: bool,
}

impl Lane {
    /// A lane without a backlog, its measurements at zero.
    pub(super) fn new(provider: Arc<dyn Provider>) -> Self {
        Self {
            breaker: Breaker::new(provider.name()),
            provider,
            latency: Histogram::default(),
            timeouts: AtomicU64::new(0),
            backlog: None,
            missed: AtomicU64::new(0),
            missed_unrecorded: AtomicU64::new(0),
            backlog_errors: AtomicU64::new(0),
            last_miss: Mutex::new(None),
        }
    }

    /// The lane's row in the composite's stats: the provider's own numbers, with the backlog
    /// length from the handoff store (the provider cannot know it).
    pub(super) fn row(&self) -> ProviderRow {
        let mut stats = self.provider.stats();
        if let Some(b) = &self.backlog {
            stats.backlog = b.len();
        }
        let backlog_says = self
            .backlog
            .as_ref()
            .is_some_and(|b| b.needs_reconciliation());
        let needs_reconciliation =
            backlog_says || self.missed_unrecorded.load(Ordering::Relaxed) > 0;
        let reconciliation_reason = needs_reconciliation.then(|| {
            let last = self
                .last_miss
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            last.unwrap_or_else(|| {
                "its hinted-handoff backlog passed its limits (maxMessages or maxAge)".to_string()
            })
        });
        ProviderRow {
            name: self.provider.name().to_string(),
            kind: self.provider.kind(),
            stats,
            timeouts: self.timeouts.load(Ordering::Relaxed),
            latency: self.latency.summary(),
            health: self.provider.health(),
            breaker: self.breaker.row(),
            missed: self.missed.load(Ordering::Relaxed),
            backlog_errors: self.backlog_errors.load(Ordering::Relaxed),
            needs_reconciliation,
            reconciliation_reason,
        }
    }

    /// Counts a message that was accepted without this provider: it missed it for good (replay
    /// will not bring it), so the provider needs reconciliation. `counted`: the backlog already
    /// counted it persistently; otherwise the backlog (if any) is asked to, and what cannot be
    /// kept on disk marks the provider in memory.
    pub(super) async fn record_miss(&self, cause: &ProviderError, counted: bool) {
        self.missed.fetch_add(1, Ordering::Relaxed);
        *self.last_miss.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("missed an accepted message: {cause}"));
        tracing::error!(provider = self.provider.name(), error = %cause,
            "an accepted message was not written to this provider and is not in its backlog; it needs reconciliation");
        if counted {
            return;
        }
        let persisted = match &self.backlog {
            Some(b) => b.count_missed(1).await.is_ok(),
            None => false,
        };
        if !persisted {
            self.missed_unrecorded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes to the provider, or (BestEffort, with hinted handoff) says the message needs
    /// deferral to its backlog: behind a non-empty backlog so the provider receives messages in
    /// ingest order, or after a failed write.
    pub(super) async fn publish_with_handoff(
        &self,
        msg: &Outgoing<'_>,
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
            return LaneOutcome::NeedsDeferral(None);
        }
        match self.publish(msg, deadline).await {
            Ok(()) => LaneOutcome::Acked,
            // A message the provider refuses for itself (too large, say) would fail every
            // replay too and block the backlog behind it: fail the lane instead.
            Err(e @ ProviderError::Rejected { .. }) => LaneOutcome::Failed(e),
            Err(e) if strategy == Strategy::BestEffort => LaneOutcome::NeedsDeferral(Some(e)),
            Err(e) => LaneOutcome::Failed(e),
        }
    }

    /// The batch form of [`Lane::publish_with_handoff`]: one outcome per message of `msgs`, in
    /// order. The provider gets the batch through its pipelined [`Provider::publish_batch`]
    /// (one flush, acknowledgements awaited together). A message the broker rejects for itself
    /// fails alone and the rest of the batch is sent on; any other failure stops the batch (see
    /// [`BatchError`]): the unacknowledged rest fails with the same cause, or, under BestEffort
    /// with a backlog, goes to the backlog behind it, in order.
    pub(super) async fn publish_batch_with_handoff(
        &self,
        msgs: &[DataMessage],
        deadline: Duration,
        strategy: Strategy,
    ) -> Vec<LaneOutcome> {
        let defers = self.backlog.is_some() && strategy == Strategy::BestEffort;
        if let Some(backlog) = self.backlog.as_ref().filter(|b| !b.is_empty()) {
            // As a single publish: behind the backlog (BestEffort) or not now (FailFast).
            let reason = format!(
                "replaying {} missed message(s) first; retry shortly",
                backlog.len()
            );
            return msgs
                .iter()
                .map(|_| {
                    if defers {
                        LaneOutcome::NeedsDeferral(None)
                    } else {
                        LaneOutcome::Failed(ProviderError::Unavailable {
                            provider: self.provider.name().to_string(),
                            reason: reason.clone(),
                        })
                    }
                })
                .collect();
        }
        let mut out = Vec::with_capacity(msgs.len());
        let mut from = 0;
        while from < msgs.len() {
            let Err(BatchError { acked, error }) =
                self.publish_batch(&msgs[from..], deadline).await
            else {
                out.extend((from..msgs.len()).map(|_| LaneOutcome::Acked));
                break;
            };
            out.extend((0..acked).map(|_| LaneOutcome::Acked));
            let at = from + acked;
            if let ProviderError::Rejected { .. } = error {
                // About that one message (too large, say): the rest can still go.
                out.push(LaneOutcome::Failed(error));
                from = at + 1;
                continue;
            }
            out.extend((at..msgs.len()).map(|_| {
                if defers {
                    LaneOutcome::NeedsDeferral(Some(error.clone()))
                } else {
                    LaneOutcome::Failed(error.clone())
                }
            }));
            break;
        }
        out
    }

    /// Appends `msg` to the backlog (the composite calls this once the message is accepted).
    /// A storage failure (disk full, I/O error) is counted in `backlog_errors`.
    pub(super) async fn defer(
        &self,
        msg: &DataMessage,
        cause: Option<&ProviderError>,
    ) -> Result<(), DeferFailed> {
        let provider = self.provider.name().to_string();
        let Some(backlog) = &self.backlog else {
            // Only a lane with a backlog asks for deferral.
            return Err(DeferFailed {
                error: ProviderError::Unavailable {
                    provider,
                    reason: "no hinted-handoff backlog".into(),
                },
                counted: false,
            });
        };
        let Err(e) = backlog.append(msg).await else {
            return Ok(());
        };
        let counted = matches!(e, HandoffError::Full { .. });
        if let HandoffError::Storage { .. } = e {
            self.backlog_errors.fetch_add(1, Ordering::Relaxed);
        }
        let reason = match cause {
            Some(c) => format!("{c}; and its backlog could not keep the message: {e}"),
            None => format!("its backlog could not keep the message: {e}"),
        };
        Err(DeferFailed {
            error: ProviderError::Unavailable { provider, reason },
            counted,
        })
    }

    async fn publish(&self, msg: &Outgoing<'_>, deadline: Duration) -> Result<(), ProviderError> {
        let probe = match self.breaker.admit(|| self.provider.health()) {
            Admit::Write => None,
            Admit::Probe(p) => Some(p),
            Admit::Refuse(e) => return Err(e),
        };
        let outcome = self.publish_now(msg, deadline).await;
        match probe {
            Some(p) => p.done(outcome.as_ref().copied()),
            None => self.breaker.record(outcome.as_ref().copied()),
        }
        outcome
    }

    async fn publish_now(
        &self,
        msg: &Outgoing<'_>,
        deadline: Duration,
    ) -> Result<(), ProviderError> {
        let started = Instant::now();
        let outcome = if self.bounded_by_provider(deadline) {
            // The provider's own deadline bounds the write and its Timeout names it and the
            // duration: a second timer here would only cost (two per message and provider).
            let outcome = self.provider.publish_outgoing(msg).await;
            if let Err(ProviderError::Timeout { .. }) = outcome {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            outcome
        } else {
            match tokio::time::timeout(deadline, self.provider.publish_outgoing(msg)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                    Err(ProviderError::Timeout {
                        provider: self.provider.name().to_string(),
                        after: deadline,
                    })
                }
            }
        };
        if outcome.is_ok() {
            self.latency.record(started.elapsed());
        }
        outcome
    }

    /// One pipelined batch under the deadline; its acknowledged messages are measured with the
    /// batch's latency, and a batch abandoned at the deadline counts a timeout per message.
    async fn publish_batch(
        &self,
        msgs: &[DataMessage],
        deadline: Duration,
    ) -> Result<(), BatchError> {
        // The whole batch is one write for the breaker (refused at once, or one probe).
        let probe = match self.breaker.admit(|| self.provider.health()) {
            Admit::Write => None,
            Admit::Probe(p) => Some(p),
            Admit::Refuse(error) => return Err(BatchError { acked: 0, error }),
        };
        let outcome = self.publish_batch_now(msgs, deadline).await;
        let seen = match &outcome {
            Ok(()) => Ok(()),
            // Acknowledged messages say the broker is reachable, whatever stopped the batch.
            Err(e) if e.acked > 0 => Ok(()),
            Err(e) => Err(&e.error),
        };
        match probe {
            Some(p) => p.done(seen),
            None => self.breaker.record(seen),
        }
        outcome
    }

    async fn publish_batch_now(
        &self,
        msgs: &[DataMessage],
        deadline: Duration,
    ) -> Result<(), BatchError> {
        let started = Instant::now();
        let outcome = if self.bounded_by_provider(deadline) {
            // As for one message: the provider's deadline bounds the whole batch.
            let outcome = self.provider.publish_batch(msgs).await;
            if let Err(BatchError {
                acked,
                error: ProviderError::Timeout { .. },
            }) = &outcome
            {
                self.timeouts
                    .fetch_add((msgs.len() - acked) as u64, Ordering::Relaxed);
            }
            outcome
        } else {
            self.publish_batch_under(msgs, deadline).await
        };
        let acked = match &outcome {
            Ok(()) => msgs.len(),
            Err(e) => e.acked,
        };
        let elapsed = started.elapsed();
        for _ in 0..acked {
            self.latency.record(elapsed);
        }
        outcome
    }

    /// The batch under the lane's own deadline (a provider without one, or with a longer one).
    async fn publish_batch_under(
        &self,
        msgs: &[DataMessage],
        deadline: Duration,
    ) -> Result<(), BatchError> {
        match tokio::time::timeout(deadline, self.provider.publish_batch(msgs)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.timeouts
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                Err(BatchError {
                    acked: 0,
                    error: ProviderError::Timeout {
                        provider: self.provider.name().to_string(),
                        after: deadline,
                    },
                })
            }
        }
    }

    /// Whether the provider's own deadline already bounds a write within `deadline`.
    fn bounded_by_provider(&self, deadline: Duration) -> bool {
        self.provider
            .publish_deadline()
            .is_some_and(|own| own <= deadline)
    }
}
