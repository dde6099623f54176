//! Hinted handoff: a durable, per-provider backlog of the messages a provider missed, kept on the
//! relay's own disk and replayed to the provider once it accepts writes again (as Cassandra does
//! for a replica that was down).
//!
//! ```text
//!  composite ── write to X failed ──► Backlog "X".append(msg) ──► <dir>/handoff.redb
//!                                            │ notify                table "backlog/X": seq → entry
//!                                            ▼
//!                         replay(X) ── peek 64, publish in order, remove_through(acked) ──► X
//! ```
//!
//! One redb file holds a table per provider (`backlog/<name>`, key = a sequence number that keeps
//! growing across restarts) and a `meta` table with each provider's last sequence number and its
//! `missed` counter. An entry is `[format 1][enqueued-at unix millis, 8 bytes big-endian][the
//! message's wire JSON]`: the message is stored whole, so every replay sends the same id and the
//! brokers de-duplicate a replay that overlaps an earlier partial success (JetStream by
//! `Nats-Msg-Id`, Kafka consumers by key).
//!
//! Writes go through one writer thread that commits whatever is queued in a single redb
//! transaction (group commit): an append is durable (fsynced, redb's `Durability::Immediate`)
//! when it returns, and concurrent appends share one fsync instead of queueing for one each.
//! Reads run on tokio's blocking pool. Everything the hot path asks (`len`, `needs_reconciliation`)
//! is an atomic kept up to date by the writer, never a disk read.
//!
//! A backlog that reached its `max_messages` refuses further messages rather than dropping old
//! ones: the refusal is returned to the caller, logged, and counted in a persistent `missed`
//! counter, and the provider then reports that it needs reconciliation (replay alone cannot make
//! it complete). The same holds when the oldest entry is older than `max_age`.
//!
//! The parts: [`store`] owns the redb file and its single writer thread (group commit);
//! [`backlog`] is the per-provider handle the composite appends to, with its limits and the
//! needs-reconciliation judgement; [`replay`](mod@replay) drains a backlog into its provider;
//! `entry` is the on-disk form of one message.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod backlog;
mod entry;
pub mod replay;
pub mod store;

pub use backlog::{Backlog, Limits};
pub use replay::{replay, REPLAY_BACKOFF_MAX, REPLAY_BACKOFF_START, REPLAY_BATCH, REPLAY_WINDOW};
pub use store::{HandoffStore, FILE_NAME};

/// "No value" for the atomics that hold a limit or a time (no limit, no entry).
const UNSET: u64 = u64::MAX;

/// Why a backlog operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The backlog holds `max` messages already; this one was not kept for the provider.
    #[error(
        "hinted-handoff backlog of provider {provider} is full ({max} messages): the message was \
         not kept for it, so that provider now needs reconciliation; bring it back so the backlog \
         drains, or raise its backlog limit"
    )]
    Full { provider: String, max: u64 },
    /// The handoff file could not be read or written.
    #[error("hinted-handoff store {}: {what}: {cause}", .path.display())]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        what: String,
        /// What redb or the system said (kept as text: redb's errors are neither `Clone` nor
        /// `Eq`, and this error is handed to every waiter of a failed group commit).
        cause: String,
    },
}

fn storage_error(path: &Path, what: &str, cause: impl std::fmt::Display) -> HandoffError {
    HandoffError::Storage {
        path: path.to_path_buf(),
        what: what.to_string(),
        cause: cause.to_string(),
    }
}

/// Wall-clock unix millis: enqueue times must survive a restart, so they cannot be `Instant`s.
fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(UNSET - 1))
}

/// Milliseconds of `d`, or [`UNSET`] when they do not fit.
fn millis_or_unset(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(UNSET)
}
