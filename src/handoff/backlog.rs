//! One provider's durable backlog: the handle the composite appends to and the replay drains,
//! its limits, and the judgement whether replay alone can still make the provider complete.
//!
//! Everything the hot path asks (`len`, `needs_reconciliation`) is an atomic that the store's
//! writer keeps up to date, never a disk read. A backlog that reached its `max_messages` refuses
//! further messages rather than dropping old ones: the refusal is returned to the caller, logged,
//! and counted in a persistent `missed` counter, and the provider then reports that it needs
//! reconciliation. The same holds when the oldest entry is older than `max_age`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableDatabase, TableError};
use tokio::sync::Notify;
use tracing::error;

use super::entry::{decode_entry, encode_entry, EntryError};
use super::store::{table_def, HandoffStore, OpKind, Outcome};
use super::{millis_or_unset, now_millis, storage_error, HandoffError, REPLAY_BATCH, UNSET};
use crate::message::DataMessage;

/// How much a provider's backlog may hold before it needs reconciliation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Past this many messages, appends are refused (and counted as missed).
    pub max_messages: Option<u64>,
    /// An entry older than this means replay has fallen too far behind to be trusted alone.
    pub max_age: Option<Duration>,
}

/// What the writer and the readers share about one provider's backlog.
pub(super) struct State {
    pub(super) provider: String,
    pub(super) table: String,
    pub(super) seq_key: String,
    pub(super) missed_key: String,
    pub(super) missed_at_key: String,
    pub(super) max_messages: AtomicU64,
    pub(super) max_age_ms: AtomicU64,
    pub(super) len: AtomicU64,
    /// Highest sequence number ever assigned (persisted in `meta`, so numbers never repeat).
    pub(super) last_seq: AtomicU64,
    pub(super) missed: AtomicU64,
    /// When the last miss was counted, unix millis (persisted in `meta`); `UNSET` when unknown.
    pub(super) missed_at_ms: AtomicU64,
    /// Enqueue time of the oldest entry, unix millis; `UNSET` when empty.
    pub(super) oldest_ms: AtomicU64,
    pub(super) last_full_log_ms: AtomicU64,
    pub(super) appended: Notify,
}

impl State {
    pub(super) fn new(provider: &str) -> Self {
        Self {
            provider: provider.to_string(),
            table: format!("backlog/{provider}"),
            seq_key: format!("seq/{provider}"),
            missed_key: format!("missed/{provider}"),
            missed_at_key: format!("missed-at/{provider}"),
            max_messages: AtomicU64::new(UNSET),
            max_age_ms: AtomicU64::new(UNSET),
            len: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            missed_at_ms: AtomicU64::new(UNSET),
            oldest_ms: AtomicU64::new(UNSET),
            last_full_log_ms: AtomicU64::new(0),
            appended: Notify::new(),
        }
    }

    pub(super) fn set_limits(&self, limits: Limits) {
        self.max_messages
            .store(limits.max_messages.unwrap_or(UNSET), Ordering::Release);
        let age = limits.max_age.map_or(UNSET, millis_or_unset);
        self.max_age_ms.store(age, Ordering::Release);
    }
}

/// One provider's durable backlog. Cheap to clone the `Arc`; all handles for a provider share
/// one state.
pub struct Backlog {
    store: Arc<HandoffStore>,
    pub(super) state: Arc<State>,
}

impl fmt::Debug for Backlog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backlog")
            .field("provider", &self.state.provider)
            .field("len", &self.len())
            .field("missed", &self.missed())
            .finish_non_exhaustive()
    }
}

/// One stored entry as read back: the message, or why it could not be decoded.
pub(super) type Entry = (u64, Result<DataMessage, EntryError>);

impl Backlog {
    pub(super) fn new(store: Arc<HandoffStore>, state: Arc<State>) -> Self {
        Self { store, state }
    }

    /// The provider this backlog is for.
    pub fn provider(&self) -> &str {
        &self.state.provider
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        let max = self.state.max_messages.load(Ordering::Acquire);
        let age = self.state.max_age_ms.load(Ordering::Acquire);
        Limits {
            max_messages: (max != UNSET).then_some(max),
            max_age: (age != UNSET).then(|| Duration::from_millis(age)),
        }
    }

    /// Stores `msg` at the end of the backlog; durable on disk when this returns.
    ///
    /// A backlog already holding `max_messages` refuses with [`HandoffError::Full`], and the
    /// refusal is counted in [`missed`](Self::missed) (persistently) and logged.
    pub async fn append(&self, msg: &DataMessage) -> Result<(), HandoffError> {
        self.append_at(msg, now_millis()).await.map(|_| ())
    }

    /// [`append`](Self::append) with an explicit enqueue time; returns the sequence number.
    pub(super) async fn append_at(
        &self,
        msg: &DataMessage,
        enqueued_ms: u64,
    ) -> Result<u64, HandoffError> {
        // Encoded here, on the caller's thread, so the single writer only does disk work.
        let value = encode_entry(enqueued_ms, &msg.to_wire());
        match self
            .store
            .submit(&self.state, OpKind::Append { value, enqueued_ms })
            .await?
        {
            Outcome::Appended(seq) => Ok(seq),
            Outcome::Refused { max } => Err(HandoffError::Full {
                provider: self.state.provider.clone(),
                max,
            }),
            Outcome::Done => Err(storage_error(
                &self.store.path,
                "append",
                "the writer answered an append with another outcome",
            )),
        }
    }

    /// Messages waiting (an atomic; cheap enough for every publish).
    pub fn len(&self) -> u64 {
        self.state.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` entries, oldest first, with their sequence numbers. An entry that cannot be
    /// decoded is logged and left out (replay counts it as missed when it removes it).
    pub async fn peek(&self, max: usize) -> Result<Vec<(u64, DataMessage)>, HandoffError> {
        let entries = self.read(max).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(seq, entry)| match entry {
                Ok(msg) => Some((seq, msg)),
                Err(reason) => {
                    error!(provider = %self.state.provider, seq, %reason,
                        "hinted handoff: a stored entry cannot be decoded");
                    None
                }
            })
            .collect())
    }

    /// Deletes every entry with a sequence number up to and including `seq` (the ones the
    /// provider acknowledged).
    pub async fn remove_through(&self, seq: u64) -> Result<(), HandoffError> {
        self.remove_through_lost(seq, 0).await
    }

    /// [`remove_through`](Self::remove_through), adding `lost` (undecodable entries among the
    /// removed ones) to the missed counter in the same transaction.
    pub(super) async fn remove_through_lost(
        &self,
        seq: u64,
        lost: u64,
    ) -> Result<(), HandoffError> {
        self.store
            .submit(&self.state, OpKind::Remove { through: seq, lost })
            .await
            .map(|_| ())
    }

    /// Counts `n` messages the provider missed that were never in the backlog (a broker refused
    /// them for good), so the provider needs reconciliation, persistently, as for a refusal.
    pub async fn count_missed(&self, n: u64) -> Result<(), HandoffError> {
        self.store
            .submit(&self.state, OpKind::CountMissed(n))
            .await
            .map(|_| ())
    }

    /// Clears the missed counter, once the provider has been reconciled by other means.
    pub async fn reset_missed(&self) -> Result<(), HandoffError> {
        self.store
            .submit(&self.state, OpKind::ResetMissed)
            .await
            .map(|_| ())
    }

    /// Clears the missed counter when every miss it counts happened at or before
    /// `through_unix_millis` (a reconciliation that covers them: a clean `dualwrite verify`, or
    /// a person saying so). A miss after it keeps the counter, so a stale or repeated
    /// clearing never hides a newer loss. Decided by the writer, in the same transaction order
    /// as the misses themselves. Whether it cleared.
    pub async fn reset_missed_through(
        &self,
        through_unix_millis: u64,
    ) -> Result<bool, HandoffError> {
        if self.missed() == 0 {
            return Ok(false);
        }
        let before = self.missed();
        self.store
            .submit(
                &self.state,
                OpKind::ResetMissedThrough {
                    through_ms: through_unix_millis,
                },
            )
            .await?;
        Ok(before > 0 && self.missed() == 0)
    }

    /// When the last miss was counted (unix millis); `None` when none is known.
    pub fn last_missed_at(&self) -> Option<u64> {
        let at = self.state.missed_at_ms.load(Ordering::Acquire);
        (at != UNSET).then_some(at)
    }

    /// True when replay alone cannot make the provider complete: a message was refused (or lost)
    /// since the last reset, or the oldest entry is older than `max_age`.
    pub fn needs_reconciliation(&self) -> bool {
        self.needs_reconciliation_at(now_millis())
    }

    /// [`needs_reconciliation`](Self::needs_reconciliation) as of `now_unix_millis` (enqueue
    /// times are wall-clock, so tests pass the clock in).
    pub fn needs_reconciliation_at(&self, now_unix_millis: u64) -> bool {
        if self.missed() > 0 {
            return true;
        }
        let max_age = self.state.max_age_ms.load(Ordering::Acquire);
        let oldest = self.state.oldest_ms.load(Ordering::Acquire);
        max_age != UNSET && oldest != UNSET && now_unix_millis.saturating_sub(oldest) > max_age
    }

    /// Messages refused (backlog full) or lost (undecodable) since the last reset; survives
    /// restarts.
    pub fn missed(&self) -> u64 {
        self.state.missed.load(Ordering::Acquire)
    }

    /// How long the oldest entry has waited; `None` when the backlog is empty.
    pub fn oldest_age(&self) -> Option<Duration> {
        let oldest = self.state.oldest_ms.load(Ordering::Acquire);
        (oldest != UNSET).then(|| Duration::from_millis(now_millis().saturating_sub(oldest)))
    }

    /// Signalled after every committed append, so a replayer can sleep until there is work.
    /// Holds one permit when nobody waits, so an append between "is it empty?" and `notified()`
    /// is not missed.
    pub fn notify(&self) -> &Notify {
        &self.state.appended
    }

    /// Up to `max` entries, oldest first, decoded or with the reason they are not.
    pub(super) async fn read(&self, max: usize) -> Result<Vec<Entry>, HandoffError> {
        let db = Arc::clone(&self.store.db);
        let table = self.state.table.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<Vec<Entry>, redb::Error> {
            let txn = db.begin_read()?;
            let table = match txn.open_table(table_def(&table)) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut entries = Vec::with_capacity(max.min(REPLAY_BATCH * 4));
            for item in table.range::<u64>(..)?.take(max) {
                let (k, v) = item?;
                entries.push((k.value(), decode_entry(v.value())));
            }
            Ok(entries)
        })
        .await;
        let what = || {
            format!(
                "cannot read the backlog of provider {}",
                self.state.provider
            )
        };
        match read {
            Ok(Ok(entries)) => Ok(entries),
            Ok(Err(e)) => Err(storage_error(&self.store.path, &what(), e)),
            Err(e) => Err(storage_error(&self.store.path, &what(), e)),
        }
    }
}

#[cfg(test)]
#[path = "backlog_tests.rs"]
mod tests;
