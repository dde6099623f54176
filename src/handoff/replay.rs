//! The replay task: drains one provider's backlog into the provider, in order, once it accepts
//! writes again.
//!
//! Each turn of the loop, in order:
//! 1. backlog empty → sleep until the next committed append;
//! 2. read a batch of the oldest entries;
//! 3. send it, pipelined, taking outcomes in order up to the first failure;
//! 4. remove the acknowledged prefix (and what can never be delivered, counted as missed);
//! 5. after a failure, back off (100 ms doubling to 5 s, reset by a success) and start again
//!    from the oldest entry.
//!
//! Lifecycle: one task per backlog, started by the composite and stopped through a
//! [`CancellationToken`]; the token is watched in every wait (for an append, a disk read, a
//! publish in flight, a backoff pause), so stopping never waits for a hung broker. The owner
//! keeps a drop guard of the token, so a composite dropped without being closed still stops its
//! replayers. The acknowledged prefix of a batch is removed even when stopping, so a restart does
//! not send it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::backlog::{Backlog, Entry};
use super::entry::EntryError;
use crate::message::DataMessage;
use crate::provider::{Provider, ProviderError};

/// Messages `replay` reads from disk at a time (one removal, one fsync, per batch).
pub const REPLAY_BATCH: usize = 256;

/// Replay publishes in flight at once: replay must outpace ingest or a backlog never drains
/// (new messages queue behind it), and one-at-a-time replay is capped at 1 / broker latency.
pub const REPLAY_WINDOW: usize = 64;

/// First pause after a failed replay attempt; doubles up to [`REPLAY_BACKOFF_MAX`].
pub const REPLAY_BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between replay attempts.
pub const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// At most one warning per provider this often while replay keeps failing (a broker that is down
/// for an hour must not write thousands of lines).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Replays `backlog` to `provider` until `stop` is cancelled.
///
/// Sleeps until the backlog has entries, then sends them in order, [`REPLAY_BATCH`] read at a
/// time and [`REPLAY_WINDOW`] in flight,
/// each publish bounded by `publish_timeout`; the acknowledged prefix of a batch is removed.
/// The first failure ends the batch and the loop pauses (100 ms doubling to 5 s, reset by any
/// success) before trying again from the oldest entry — the provider's own reconnect is what
/// makes a later attempt succeed. Messages go out whole, with their original id, so a message
/// sent again after a partial success is de-duplicated by the broker.
pub async fn replay(
    backlog: Arc<Backlog>,
    provider: Arc<dyn Provider>,
    publish_timeout: Duration,
    stop: CancellationToken,
) {
    let name = backlog.provider().to_string();
    let mut replayer = Replayer {
        backlog,
        provider,
        publish_timeout,
        stop,
        name,
        backoff: REPLAY_BACKOFF_START,
        trouble: Trouble::default(),
        drain: None,
    };
    replayer.run().await;
    info!(provider = %replayer.name, backlog = replayer.backlog.len(), "hinted handoff: replay stopped");
}

/// The replay task's state between batches.
struct Replayer {
    backlog: Arc<Backlog>,
    provider: Arc<dyn Provider>,
    publish_timeout: Duration,
    stop: CancellationToken,
    name: String,
    /// The pause before the next attempt after a failure.
    backoff: Duration,
    trouble: Trouble,
    /// The drain under way, if the backlog is not empty.
    drain: Option<Drain>,
}

/// What sending one batch did.
#[derive(Default)]
struct Batch {
    /// The last sequence number that may be removed (acknowledged, or undeliverable for good).
    acked: Option<u64>,
    delivered: u64,
    /// Entries dropped as undeliverable (counted as missed when removed).
    lost: u64,
    /// Why the batch ended early, if a publish (or the removal) failed.
    failure: Option<String>,
    /// The stop signal came while the batch was in flight.
    stopped: bool,
}

impl Replayer {
    /// The loop: wait for work, read a batch, send it, remove what was acknowledged, back off
    /// after a failure. Returns when stopped.
    async fn run(&mut self) {
        while !self.stop.is_cancelled() {
            if self.backlog.is_empty() {
                self.end_drain();
                if !self.wait_for_append().await {
                    return;
                }
                continue;
            }
            self.begin_drain();
            let read = tokio::select! {
                read = self.backlog.read(REPLAY_BATCH) => read,
                () = self.stop.cancelled() => return,
            };
            let entries = match read {
                // The counter says non-empty but the table is empty (a removal raced the read):
                // wait for the next append instead of spinning.
                Ok(entries) if entries.is_empty() => {
                    if !self.wait_for_append().await {
                        return;
                    }
                    continue;
                }
                Ok(entries) => entries,
                Err(e) => {
                    if !self.back_off(&e.to_string()).await {
                        return;
                    }
                    continue;
                }
            };
            let batch = self.send(entries).await;
            let batch = self.remove_acked(batch).await;
            if batch.stopped {
                return;
            }
            if batch.delivered > 0 {
                self.backoff = REPLAY_BACKOFF_START;
                self.trouble.recovered(&self.name);
            }
            if let Some(reason) = batch.failure {
                if !self.back_off(&reason).await {
                    return;
                }
            }
        }
    }

    /// Sends one batch: up to [`REPLAY_WINDOW`] publishes in flight, started in backlog order
    /// (one connection keeps the order of sends: librdkafka's idempotent producer per partition,
    /// JetStream per subject) and their outcomes taken in that order. Only the acknowledged
    /// prefix counts; after a failure the rest is sent again later with the same ids.
    async fn send(&self, entries: Vec<Entry>) -> Batch {
        let mut outcomes = futures::stream::iter(entries.into_iter().map(|(seq, entry)| {
            let provider = Arc::clone(&self.provider);
            let timeout = self.publish_timeout;
            async move { (seq, replay_one(provider, timeout, entry).await) }
        }))
        .buffered(REPLAY_WINDOW);
        let mut batch = Batch::default();
        loop {
            let next = tokio::select! {
                next = outcomes.next() => next,
                () = self.stop.cancelled() => {
                    batch.stopped = true;
                    return batch;
                }
            };
            let Some((seq, outcome)) = next else {
                return batch;
            };
            match outcome {
                Ok(()) => {
                    batch.acked = Some(seq);
                    batch.delivered += 1;
                }
                // Neither can ever be delivered; keeping them would block the provider forever.
                Err(Replayed::Undecodable(reason)) => {
                    error!(provider = %self.name, seq, %reason,
                        "hinted handoff: dropping an undecodable entry; counted as missed");
                    batch.lost += 1;
                    batch.acked = Some(seq);
                }
                Err(Replayed::Rejected(reason)) => {
                    error!(provider = %self.name, seq, %reason,
                        "hinted handoff: the provider rejects this message for good; dropped from the backlog and counted as missed");
                    batch.lost += 1;
                    batch.acked = Some(seq);
                }
                Err(Replayed::Failed(reason)) => {
                    batch.failure = Some(reason);
                    return batch;
                }
            }
        }
    }

    /// Removes the acknowledged prefix of a sent batch, even when stopping: otherwise it would
    /// be sent again after a restart (harmless, de-duplicated, but avoidable). A failed removal
    /// counts as the batch's failure.
    async fn remove_acked(&mut self, mut batch: Batch) -> Batch {
        let Some(seq) = batch.acked else {
            return batch;
        };
        match self.backlog.remove_through_lost(seq, batch.lost).await {
            Ok(()) => {
                if let Some(d) = &mut self.drain {
                    d.delivered += batch.delivered;
                    d.lost += batch.lost;
                }
            }
            Err(e) => {
                batch.failure.get_or_insert_with(|| e.to_string());
            }
        }
        batch
    }

    /// Logs the failure (rate-limited), pauses for the current backoff, then doubles it.
    /// False when stopped during the pause.
    async fn back_off(&mut self, reason: &str) -> bool {
        self.trouble
            .failed(&self.name, reason, self.backlog.len(), self.backoff);
        let paused = self
            .stop
            .run_until_cancelled(tokio::time::sleep(self.backoff))
            .await;
        if paused.is_none() {
            return false;
        }
        self.backoff = (self.backoff * 2).min(REPLAY_BACKOFF_MAX);
        true
    }

    /// Sleeps until the next committed append; false when stopped first.
    async fn wait_for_append(&self) -> bool {
        self.stop
            .run_until_cancelled(self.backlog.notify().notified())
            .await
            .is_some()
    }

    fn begin_drain(&mut self) {
        if self.drain.is_none() {
            info!(provider = %self.name, backlog = self.backlog.len(), "hinted handoff: replaying backlog");
            self.drain = Some(Drain {
                started: Instant::now(),
                delivered: 0,
                lost: 0,
            });
        }
    }

    fn end_drain(&mut self) {
        if let Some(d) = self.drain.take() {
            info!(
                provider = %self.name,
                delivered = d.delivered,
                lost = d.lost,
                elapsed_ms = u64::try_from(d.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "hinted handoff: backlog drained"
            );
        }
    }
}

/// How one replayed entry went.
enum Replayed {
    Undecodable(EntryError),
    /// The provider refuses this message itself (e.g. too large): retrying cannot help.
    Rejected(String),
    /// The provider is unavailable or slow: retry later.
    Failed(String),
}

/// Publishes one stored entry, bounded by `timeout`.
async fn replay_one(
    provider: Arc<dyn Provider>,
    timeout: Duration,
    entry: Result<DataMessage, EntryError>,
) -> Result<(), Replayed> {
    let msg = entry.map_err(Replayed::Undecodable)?;
    match tokio::time::timeout(timeout, provider.publish(&msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ ProviderError::Rejected { .. })) => Err(Replayed::Rejected(e.to_string())),
        Ok(Err(e)) => Err(Replayed::Failed(e.to_string())),
        Err(_) => Err(Replayed::Failed(
            ProviderError::Timeout {
                provider: provider.name().to_string(),
                after: timeout,
            }
            .to_string(),
        )),
    }
}

/// Rate-limits replay warnings: the first failure of a streak, then one every `WARN_EVERY`.
#[derive(Default)]
struct Trouble {
    streak: u64,
    last_warn: Option<Instant>,
}

impl Trouble {
    fn failed(&mut self, provider: &str, reason: &str, backlog: u64, retry_in: Duration) {
        self.streak += 1;
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warn = Some(Instant::now());
            warn!(
                provider,
                error = reason,
                failed_attempts = self.streak,
                backlog,
                retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
                "hinted handoff: replay failed; retrying with backoff"
            );
        }
    }

    fn recovered(&mut self, provider: &str) {
        if self.streak > 0 {
            info!(
                provider,
                failed_attempts = self.streak,
                "hinted handoff: provider accepts replayed messages again"
            );
            *self = Trouble::default();
        }
    }
}

/// Progress of one drain (from non-empty to empty), for the log line at its end.
struct Drain {
    started: Instant,
    delivered: u64,
    lost: u64,
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
