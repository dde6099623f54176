//! A lane: one provider inside the composite, with what the composite measures of it (latency,
//! timeouts) and, under BestEffort, its hinted-handoff backlog. A lane decides, per message,
//! whether the write goes to the provider now or behind its backlog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ProviderRow, Strategy};
use crate::handoff::Backlog;
use crate::latency::Histogram;
use crate::message::DataMessage;
use crate::provider::{Provider, ProviderError};

/// One provider inside the composite, with what the composite measures of it.
pub(super) struct Lane {
    pub(super) provider: Arc<dyn Provider>,
    pub(super) latency: Histogram,
    /// Writes the composite abandoned at its deadline (the provider never answered).
    pub(super) timeouts: AtomicU64,
    /// Hinted handoff: where BestEffort keeps the writes this provider missed.
    pub(super) backlog: Option<Arc<Backlog>>,
}

/// How one provider took one message.
pub(super) enum LaneOutcome {
    Acked,
    /// Stored in the provider's backlog, to be replayed.
    Deferred,
    Failed(ProviderError),
}

impl Lane {
    /// A lane without a backlog, its measurements at zero.
    pub(super) fn new(provider: Arc<dyn Provider>) -> Self {
        Self {
            provider,
            latency: Histogram::default(),
            timeouts: AtomicU64::new(0),
            backlog: None,
        }
    }

    /// The lane's row in the composite's stats: the provider's own numbers, with the backlog
    /// length from the handoff store (the provider cannot know it).
    pub(super) fn row(&self) -> ProviderRow {
        let mut stats = self.provider.stats();
        if let Some(b) = &self.backlog {
            stats.backlog = b.len();
        }
        ProviderRow {
            name: self.provider.name().to_string(),
            kind: self.provider.kind(),
            stats,
            timeouts: self.timeouts.load(Ordering::Relaxed),
            latency: self.latency.summary(),
            health: self.provider.health(),
            needs_reconciliation: self
                .backlog
                .as_ref()
                .is_some_and(|b| b.needs_reconciliation()),
        }
    }

    /// Writes to the provider, or (BestEffort, with hinted handoff) to its backlog: behind a
    /// non-empty backlog so the provider receives messages in ingest order, or after a failed
    /// write.
    pub(super) async fn publish_with_handoff(
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
