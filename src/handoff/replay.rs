//! The replay task: drains one provider's backlog into the provider, in order, once it accepts
//! writes again.
//!
//! Each turn of the loop, in order:
//! 1. backlog empty → sleep until the next committed append;
//! 2. read a batch of the oldest entries;
//! 3. send it in order, [`REPLAY_WINDOW`] messages per ordered batch publish (pipelined on one
//!    connection), taking outcomes in order up to the first failure;
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

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::backlog::{Backlog, Entry};
use crate::message::DataMessage;
use crate::provider::{BatchError, Provider, ProviderError};

/// Messages `replay` reads from disk at a time (one removal, one fsync, per batch).
pub const REPLAY_BATCH: usize = 256;

/// Messages in one ordered batch publish (sent in order, acknowledgements awaited together):
/// replay must outpace ingest or a backlog never drains (new messages queue behind it), and
/// one-at-a-time replay is capped at 1 / broker latency.
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
/// time and [`REPLAY_WINDOW`] per ordered batch publish, bounded by the provider's deadline;
/// the acknowledged prefix of a batch is removed.
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

    /// Sends one batch in backlog order, [`REPLAY_WINDOW`] messages at a time through the
    /// provider's ordered batch publish ([`Provider::publish_batch`]: one connection, sent in
    /// order, acknowledgements taken in order). Only the acknowledged prefix counts. The first
    /// failure ends the batch, and the next attempt starts again from the message that failed,
    /// in order and with the same ids, so a message never lands behind one ingested after it
    /// (JetStream drops what it already stored of the rest; Kafka keeps a second copy after the
    /// first, see [`crate::provider::BatchError`]). A message
    /// the provider rejects for good is dropped (counted as missed) and the window resumes
    /// after it.
    async fn send(&self, entries: Vec<Entry>) -> Batch {
        let mut batch = Batch::default();
        let mut window: Vec<(u64, DataMessage)> = Vec::with_capacity(REPLAY_WINDOW);
        for (seq, entry) in entries {
            match entry {
                Ok(msg) => {
                    window.push((seq, msg));
                    if window.len() == REPLAY_WINDOW
                        && !self.send_window(&mut window, &mut batch).await
                    {
                        return batch;
                    }
                }
                // Can never be delivered; keeping it would block the provider forever. What
                // came before it goes first.
                Err(reason) => {
                    if !self.send_window(&mut window, &mut batch).await {
                        return batch;
                    }
                    error!(provider = %self.name, seq, %reason,
                        "hinted handoff: dropping an undecodable entry; counted as missed");
                    batch.lost += 1;
                    batch.acked = Some(seq);
                }
            }
        }
        self.send_window(&mut window, &mut batch).await;
        batch
    }

    /// Publishes `window` (emptied) as ordered batches, resuming after a message rejected for
    /// good. False when the batch must end: a failure, or the stop signal.
    async fn send_window(&self, window: &mut Vec<(u64, DataMessage)>, batch: &mut Batch) -> bool {
        let (seqs, msgs): (Vec<u64>, Vec<DataMessage>) = std::mem::take(window).into_iter().unzip();
        let mut from = 0;
        while from < msgs.len() {
            let rest = &msgs[from..];
            // The adapters bound a batch by their publish deadline; this bounds any provider at
            // one deadline per message, as one-at-a-time publishing would.
            let deadline = self
                .publish_timeout
                .saturating_mul(u32::try_from(rest.len()).unwrap_or(u32::MAX));
            let sent = tokio::select! {
                sent = tokio::time::timeout(deadline, self.provider.publish_batch(rest)) => sent,
                () = self.stop.cancelled() => {
                    batch.stopped = true;
                    return false;
                }
            };
            let (acked, failure) = match sent {
                Ok(Ok(())) => (rest.len(), None),
                Ok(Err(BatchError { acked, error })) => (acked, Some(error)),
                Err(_) => (
                    0,
                    Some(ProviderError::Timeout {
                        provider: self.provider.name().to_string(),
                        after: deadline,
                    }),
                ),
            };
            if acked > 0 {
                batch.acked = Some(seqs[from + acked - 1]);
                batch.delivered += acked as u64;
            }
            from += acked;
            match failure {
                None => {}
                // The provider refuses this message itself (e.g. too large): retrying cannot
                // help, and keeping it would block the provider forever.
                Some(e @ ProviderError::Rejected { .. }) => {
                    error!(provider = %self.name, seq = seqs[from], reason = %e,
                        "hinted handoff: the provider rejects this message for good; dropped from the backlog and counted as missed");
                    batch.lost += 1;
                    batch.acked = Some(seqs[from]);
                    from += 1;
                }
                Some(e) => {
                    batch.failure = Some(e.to_string());
                    return false;
                }
            }
        }
        true
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
