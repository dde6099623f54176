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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{error, info, warn};

use crate::message::DataMessage;
use crate::provider::{Provider, ProviderError};

/// The database file inside the handoff directory.
pub const FILE_NAME: &str = "handoff.redb";

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
/// At most one error per provider this often while its full backlog refuses messages.
const FULL_LOG_EVERY_MS: u64 = 10_000;

/// Per-provider sequence numbers and `missed` counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Entry layout version, so a later format can be told apart from this one.
const FORMAT_V1: u8 = 1;
/// Version byte + enqueue time.
const HEADER_LEN: usize = 9;

/// Appends and removals waiting for the writer. Bounded: when the disk falls behind, appenders
/// wait here (backpressure) instead of growing memory.
const WRITE_QUEUE: usize = 1024;
/// Most operations the writer puts in one transaction; bounds the work (and the latency) of a
/// single commit.
const MAX_GROUP: usize = 256;

/// redb's page cache. Its default (1 GiB) could exceed a relay pod's memory limit once a large
/// backlog has been written and read back; the backlog is written once and read roughly once,
/// so a small cache costs little.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// "No value" for the atomics below (no limit, no entry).
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
    /// The handoff file could not be read or written (the text names the file).
    #[error("{0}")]
    Storage(String),
}

/// How much a provider's backlog may hold before it needs reconciliation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Past this many messages, appends are refused (and counted as missed).
    pub max_messages: Option<u64>,
    /// An entry older than this means replay has fallen too far behind to be trusted alone.
    pub max_age: Option<Duration>,
}

/// The relay's handoff database: one file, a backlog table per provider.
pub struct HandoffStore {
    path: PathBuf,
    db: Arc<Database>,
    /// `None` only while dropping (closing the queue is what stops the writer).
    queue: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    /// One state per provider, so every `Backlog` handle for a provider shares its counters
    /// and its sequence numbers.
    states: Mutex<HashMap<String, Arc<State>>>,
}

impl fmt::Debug for HandoffStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HandoffStore {
    /// Opens (or creates) `<dir>/handoff.redb`, creating `dir` if needed.
    ///
    /// Fails if another process (or a store in this process not yet dropped) has the file open.
    pub fn open(dir: &Path) -> Result<Arc<HandoffStore>, HandoffError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| {
            HandoffError::Storage(format!(
                "hinted-handoff store {}: cannot create directory {}: {e}",
                path.display(),
                dir.display()
            ))
        })?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| {
                let hint = match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => {
                        " (another relay process, or a store in this one, still has it open)"
                    }
                    _ => "",
                };
                storage_error(&path, "cannot open", format!("{e}{hint}"))
            })?;
        let db = Arc::new(db);
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = {
            let db = Arc::clone(&db);
            let writer_path = path.clone();
            std::thread::Builder::new()
                .name("handoff-writer".into())
                .spawn(move || run_writer(&db, &writer_path, rx))
                .map_err(|e| storage_error(&path, "cannot start the writer thread", e))?
        };
        Ok(Arc::new(HandoffStore {
            path,
            db,
            queue: Some(queue),
            writer: Some(writer),
            states: Mutex::new(HashMap::new()),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backlog of `provider`, with what it held when the relay last stopped.
    ///
    /// Every call for the same provider shares one backlog (counters and sequence numbers);
    /// a later call replaces its limits. Reads the provider's table once (a short blocking
    /// read) the first time, so call it at setup rather than per message.
    pub fn backlog(
        self: &Arc<Self>,
        provider: &str,
        limits: Limits,
    ) -> Result<Arc<Backlog>, HandoffError> {
        // A std Mutex: the critical section is a map lookup and, the first time, one small read
        // transaction; it never awaits. Holding it across the load keeps two first calls for the
        // same provider from creating two states.
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let state = match states.get(provider) {
            Some(state) => Arc::clone(state),
            None => {
                let state = Arc::new(self.load_state(provider)?);
                states.insert(provider.to_string(), Arc::clone(&state));
                if state.len.load(Ordering::Acquire) > 0 || state.missed.load(Ordering::Acquire) > 0
                {
                    info!(
                        provider,
                        backlog = state.len.load(Ordering::Acquire),
                        missed = state.missed.load(Ordering::Acquire),
                        path = %self.path.display(),
                        "hinted handoff: restored a backlog from disk"
                    );
                }
                state
            }
        };
        drop(states);
        state.set_limits(limits);
        Ok(Arc::new(Backlog {
            store: Arc::clone(self),
            state,
        }))
    }

    /// Reads a provider's counters from disk.
    fn load_state(&self, provider: &str) -> Result<State, HandoffError> {
        let state = State::new(provider);
        let read = || -> Result<(), redb::Error> {
            let txn = self.db.begin_read()?;
            let (mut last_seq, mut missed) = (0, 0);
            match txn.open_table(META) {
                Ok(meta) => {
                    if let Some(v) = meta.get(state.seq_key.as_str())? {
                        last_seq = v.value();
                    }
                    if let Some(v) = meta.get(state.missed_key.as_str())? {
                        missed = v.value();
                    }
                }
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
            match txn.open_table(table_def(&state.table)) {
                Ok(table) => {
                    state.len.store(table.len()?, Ordering::Release);
                    if let Some((k, v)) = table.first()? {
                        state
                            .oldest_ms
                            .store(entry_millis(v.value()), Ordering::Release);
                        last_seq = last_seq.max(k.value());
                    }
                    if let Some((k, _)) = table.last()? {
                        last_seq = last_seq.max(k.value());
                    }
                }
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
            state.last_seq.store(last_seq, Ordering::Release);
            state.missed.store(missed, Ordering::Release);
            Ok(())
        };
        read().map_err(|e| {
            storage_error(
                &self.path,
                &format!("cannot read the backlog of provider {provider}"),
                e,
            )
        })?;
        Ok(state)
    }

    /// Hands one operation to the writer and waits until it is committed.
    async fn submit(&self, state: &Arc<State>, kind: OpKind) -> Result<Outcome, HandoffError> {
        let stopped = || storage_error(&self.path, "write failed", "the writer thread has stopped");
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        let (reply, outcome) = oneshot::channel();
        queue
            .send(Op {
                state: Arc::clone(state),
                kind,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

impl Drop for HandoffStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is queued and exit; waiting for it frees
        // the file lock, so a store reopened right after (a restart in-process, a test) can open
        // the file. This blocks for at most one group commit.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            if writer.thread().id() != std::thread::current().id() && writer.join().is_err() {
                error!(path = %self.path.display(), "hinted handoff: the writer thread panicked");
            }
        }
    }
}

/// What the writer and the readers share about one provider's backlog.
struct State {
    provider: String,
    table: String,
    seq_key: String,
    missed_key: String,
    max_messages: AtomicU64,
    max_age_ms: AtomicU64,
    len: AtomicU64,
    /// Highest sequence number ever assigned (persisted in `meta`, so numbers never repeat).
    last_seq: AtomicU64,
    missed: AtomicU64,
    /// Enqueue time of the oldest entry, unix millis; `UNSET` when empty.
    oldest_ms: AtomicU64,
    last_full_log_ms: AtomicU64,
    appended: Notify,
}

impl State {
    fn new(provider: &str) -> Self {
        Self {
            provider: provider.to_string(),
            table: format!("backlog/{provider}"),
            seq_key: format!("seq/{provider}"),
            missed_key: format!("missed/{provider}"),
            max_messages: AtomicU64::new(UNSET),
            max_age_ms: AtomicU64::new(UNSET),
            len: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(UNSET),
            last_full_log_ms: AtomicU64::new(0),
            appended: Notify::new(),
        }
    }

    fn set_limits(&self, limits: Limits) {
        self.max_messages
            .store(limits.max_messages.unwrap_or(UNSET), Ordering::Release);
        let age = limits
            .max_age
            .map_or(UNSET, |d| u64::try_from(d.as_millis()).unwrap_or(UNSET));
        self.max_age_ms.store(age, Ordering::Release);
    }
}

/// One provider's durable backlog. Cheap to clone the `Arc`; all handles for a provider share
/// one state.
pub struct Backlog {
    store: Arc<HandoffStore>,
    state: Arc<State>,
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
type Entry = (u64, Result<DataMessage, String>);

impl Backlog {
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
    async fn append_at(&self, msg: &DataMessage, enqueued_ms: u64) -> Result<u64, HandoffError> {
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
    async fn remove_through_lost(&self, seq: u64, lost: u64) -> Result<(), HandoffError> {
        self.store
            .submit(&self.state, OpKind::Remove { through: seq, lost })
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
    async fn read(&self, max: usize) -> Result<Vec<Entry>, HandoffError> {
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

/// An operation for the writer thread.
struct Op {
    state: Arc<State>,
    kind: OpKind,
    reply: oneshot::Sender<Result<Outcome, HandoffError>>,
}

enum OpKind {
    Append { value: Vec<u8>, enqueued_ms: u64 },
    Remove { through: u64, lost: u64 },
    ResetMissed,
}

#[derive(Debug)]
enum Outcome {
    Appended(u64),
    Refused { max: u64 },
    Done,
}

/// A provider's counters as the current transaction leaves them; published to the atomics only
/// after the commit succeeded.
struct Staged {
    state: Arc<State>,
    len: u64,
    last_seq: u64,
    missed: u64,
    oldest_ms: u64,
    appended: bool,
}

/// The writer thread: takes what is queued (up to `MAX_GROUP`), commits it in one transaction,
/// answers each caller. Exits when the store closes the queue.
fn run_writer(db: &Database, path: &Path, mut queue: mpsc::Receiver<Op>) {
    while let Some(first) = queue.blocking_recv() {
        let mut ops = Vec::with_capacity(16);
        ops.push(first);
        while ops.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        commit_group(db, path, ops);
    }
}

fn commit_group(db: &Database, path: &Path, ops: Vec<Op>) {
    let mut staged: Vec<Staged> = Vec::new();
    let applied = (|| -> Result<Vec<Outcome>, redb::Error> {
        // Default durability (Immediate): the commit returns after fsync, so an acknowledged
        // append survives a crash of the relay or its node.
        let txn = db.begin_write()?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in &ops {
            let i = match staged.iter().position(|s| Arc::ptr_eq(&s.state, &op.state)) {
                Some(i) => i,
                None => {
                    let s = &op.state;
                    staged.push(Staged {
                        state: Arc::clone(s),
                        len: s.len.load(Ordering::Acquire),
                        last_seq: s.last_seq.load(Ordering::Acquire),
                        missed: s.missed.load(Ordering::Acquire),
                        oldest_ms: s.oldest_ms.load(Ordering::Acquire),
                        appended: false,
                    });
                    staged.len() - 1
                }
            };
            outcomes.push(apply(&txn, &mut staged[i], &op.kind)?);
        }
        {
            let mut meta = txn.open_table(META)?;
            for s in &staged {
                meta.insert(s.state.seq_key.as_str(), s.last_seq)?;
                meta.insert(s.state.missed_key.as_str(), s.missed)?;
            }
        }
        txn.commit()?;
        Ok(outcomes)
    })();

    match applied {
        Ok(outcomes) => {
            for s in &staged {
                let st = &s.state;
                st.last_seq.store(s.last_seq, Ordering::Release);
                st.missed.store(s.missed, Ordering::Release);
                st.oldest_ms.store(s.oldest_ms, Ordering::Release);
                st.len.store(s.len, Ordering::Release);
                if s.appended {
                    st.appended.notify_one();
                }
            }
            for (op, outcome) in ops.into_iter().zip(outcomes) {
                if let Outcome::Refused { max } = outcome {
                    log_refusal(&op.state, max);
                }
                // The caller may have given up waiting; the operation is committed either way.
                let _ = op.reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            let err = storage_error(path, "cannot commit to the backlog", e);
            error!(error = %err, operations = ops.len(), "hinted handoff: write failed");
            for op in ops {
                let _ = op.reply.send(Err(err.clone()));
            }
        }
    }
}

fn apply(txn: &WriteTransaction, s: &mut Staged, kind: &OpKind) -> Result<Outcome, redb::Error> {
    let mut table = txn.open_table(table_def(&s.state.table))?;
    match kind {
        OpKind::Append { value, enqueued_ms } => {
            let max = s.state.max_messages.load(Ordering::Acquire);
            if table.len()? >= max {
                s.missed += 1;
                return Ok(Outcome::Refused { max });
            }
            let seq = s.last_seq + 1;
            table.insert(seq, value.as_slice())?;
            s.last_seq = seq;
            s.len = table.len()?;
            if s.oldest_ms == UNSET {
                s.oldest_ms = *enqueued_ms;
            }
            s.appended = true;
            Ok(Outcome::Appended(seq))
        }
        OpKind::Remove { through, lost } => {
            table.retain_in(..=*through, |_, _| false)?;
            s.len = table.len()?;
            s.oldest_ms = match table.first()? {
                Some((_, v)) => entry_millis(v.value()),
                None => UNSET,
            };
            s.missed += lost;
            Ok(Outcome::Done)
        }
        OpKind::ResetMissed => {
            s.missed = 0;
            Ok(Outcome::Done)
        }
    }
}

fn log_refusal(state: &State, max: u64) {
    let now = now_millis();
    let last = state.last_full_log_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= FULL_LOG_EVERY_MS {
        state.last_full_log_ms.store(now, Ordering::Relaxed);
        error!(
            provider = %state.provider,
            max_messages = max,
            missed = state.missed.load(Ordering::Acquire),
            "hinted handoff: backlog full, refusing messages for this provider; it needs \
             reconciliation"
        );
    }
}

/// The table of one provider's backlog.
fn table_def(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

fn encode_entry(enqueued_ms: u64, wire: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_LEN + wire.len());
    value.push(FORMAT_V1);
    value.extend_from_slice(&enqueued_ms.to_be_bytes());
    value.extend_from_slice(wire);
    value
}

fn decode_entry(value: &[u8]) -> Result<DataMessage, String> {
    match value.first() {
        Some(&FORMAT_V1) if value.len() >= HEADER_LEN => {
            DataMessage::from_wire(&value[HEADER_LEN..]).map_err(|e| format!("not a message: {e}"))
        }
        Some(&FORMAT_V1) => Err(format!("entry of {} bytes is truncated", value.len())),
        Some(v) => Err(format!("unknown entry format {v}")),
        None => Err("empty entry".into()),
    }
}

/// The enqueue time of an entry; 0 (as old as can be) when unreadable, so a broken entry
/// counts against `max_age` rather than hiding.
fn entry_millis(value: &[u8]) -> u64 {
    match value.get(1..HEADER_LEN) {
        Some(b) if value[0] == FORMAT_V1 => {
            let mut millis = [0u8; 8];
            millis.copy_from_slice(b);
            u64::from_be_bytes(millis)
        }
        _ => 0,
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(UNSET - 1))
}

fn storage_error(path: &Path, what: &str, e: impl fmt::Display) -> HandoffError {
    HandoffError::Storage(format!(
        "hinted-handoff store {}: {what}: {e}",
        path.display()
    ))
}

/// Resolves once `stop` is true, or its sender is gone (nobody could stop us any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps `d` unless stopped first; false when stopped.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(stop) => false,
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

/// How one replayed entry went.
enum Replayed {
    Undecodable(String),
    /// The provider refuses this message itself (e.g. too large): retrying cannot help.
    Rejected(String),
    /// The provider is unavailable or slow: retry later.
    Failed(String),
}

/// Replays `backlog` to `provider` until `stop` becomes true.
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
    mut stop: watch::Receiver<bool>,
) {
    let name = backlog.provider().to_string();
    let mut backoff = REPLAY_BACKOFF_START;
    let mut trouble = Trouble::default();
    let mut drain: Option<Drain> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        if backlog.is_empty() {
            if let Some(d) = drain.take() {
                info!(
                    provider = %name,
                    delivered = d.delivered,
                    lost = d.lost,
                    elapsed_ms = u64::try_from(d.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "hinted handoff: backlog drained"
                );
            }
            tokio::select! {
                _ = backlog.notify().notified() => continue,
                _ = stopped(&mut stop) => break,
            }
        }
        let d = drain.get_or_insert_with(|| {
            info!(provider = %name, backlog = backlog.len(), "hinted handoff: replaying backlog");
            Drain {
                started: Instant::now(),
                delivered: 0,
                lost: 0,
            }
        });

        let entries = tokio::select! {
            read = backlog.read(REPLAY_BATCH) => read,
            _ = stopped(&mut stop) => break,
        };
        let entries = match entries {
            Ok(entries) if entries.is_empty() => {
                // The counter says non-empty but the table is empty (a removal raced the read):
                // wait for the next append instead of spinning.
                tokio::select! {
                    _ = backlog.notify().notified() => continue,
                    _ = stopped(&mut stop) => break,
                }
            }
            Ok(entries) => entries,
            Err(e) => {
                trouble.failed(&name, &e.to_string(), backlog.len(), backoff);
                if !pause(backoff, &mut stop).await {
                    break;
                }
                backoff = (backoff * 2).min(REPLAY_BACKOFF_MAX);
                continue;
            }
        };

        // Pipelined: up to REPLAY_WINDOW publishes in flight, started in backlog order (one
        // connection keeps the order of sends: librdkafka's idempotent producer per partition,
        // JetStream per subject) and their outcomes taken in that order. Only the acknowledged
        // prefix is removed; after a failure the rest is sent again later with the same ids.
        let mut outcomes = futures::stream::iter(entries.into_iter().map(|(seq, entry)| {
            let provider = provider.clone();
            async move {
                let outcome = match entry {
                    Err(reason) => Err(Replayed::Undecodable(reason)),
                    Ok(msg) => {
                        match tokio::time::timeout(publish_timeout, provider.publish(&msg)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e @ ProviderError::Rejected { .. })) => {
                                Err(Replayed::Rejected(e.to_string()))
                            }
                            Ok(Err(e)) => Err(Replayed::Failed(e.to_string())),
                            Err(_) => Err(Replayed::Failed(
                                ProviderError::Timeout {
                                    provider: provider.name().to_string(),
                                    after: publish_timeout,
                                }
                                .to_string(),
                            )),
                        }
                    }
                };
                (seq, outcome)
            }
        }))
        .buffered(REPLAY_WINDOW);
        let mut acked = None;
        let (mut delivered, mut lost) = (0u64, 0u64);
        let mut failure: Option<String> = None;
        let mut stopping = false;
        loop {
            let next = tokio::select! {
                next = outcomes.next() => next,
                _ = stopped(&mut stop) => {
                    stopping = true;
                    break;
                }
            };
            let Some((seq, outcome)) = next else { break };
            match outcome {
                Ok(()) => {
                    acked = Some(seq);
                    delivered += 1;
                }
                // Neither can ever be delivered; keeping them would block the provider forever.
                Err(Replayed::Undecodable(reason)) => {
                    error!(provider = %name, seq, %reason,
                        "hinted handoff: dropping an undecodable entry; counted as missed");
                    lost += 1;
                    acked = Some(seq);
                }
                Err(Replayed::Rejected(reason)) => {
                    error!(provider = %name, seq, %reason,
                        "hinted handoff: the provider rejects this message for good; dropped from the backlog and counted as missed");
                    lost += 1;
                    acked = Some(seq);
                }
                Err(Replayed::Failed(reason)) => {
                    failure = Some(reason);
                    break;
                }
            }
        }
        drop(outcomes);

        // Removed even when stopping: otherwise the acknowledged prefix would be sent again
        // after a restart (harmless, de-duplicated, but avoidable).
        if let Some(seq) = acked {
            match backlog.remove_through_lost(seq, lost).await {
                Ok(()) => {
                    d.delivered += delivered;
                    d.lost += lost;
                }
                Err(e) => {
                    failure.get_or_insert_with(|| e.to_string());
                }
            }
        }
        if stopping {
            break;
        }
        if delivered > 0 {
            backoff = REPLAY_BACKOFF_START;
            trouble.recovered(&name);
        }
        if let Some(reason) = failure {
            trouble.failed(&name, &reason, backlog.len(), backoff);
            if !pause(backoff, &mut stop).await {
                break;
            }
            backoff = (backoff * 2).min(REPLAY_BACKOFF_MAX);
        }
    }
    info!(provider = %name, backlog = backlog.len(), "hinted handoff: replay stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Health, MessageStream, ProviderKind, Stats};
    use async_trait::async_trait;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;

    fn msg(i: usize) -> DataMessage {
        let mut m = DataMessage::new("test", format!("payload {i}"));
        m.id = format!("msg-{i:04}");
        m
    }

    fn ids(entries: &[(u64, DataMessage)]) -> Vec<String> {
        entries.iter().map(|(_, m)| m.id.clone()).collect()
    }

    /// A provider that fails until `heal` is called, then records the ids it receives, in order.
    struct Flaky {
        healthy: AtomicBool,
        /// Never answers (to test that stop does not wait for a hung publish).
        hang: AtomicBool,
        attempts: AtomicU64,
        received: Mutex<Vec<String>>,
        changed: Notify,
    }

    impl Flaky {
        fn new(healthy: bool) -> Arc<Self> {
            Arc::new(Self {
                healthy: AtomicBool::new(healthy),
                hang: AtomicBool::new(false),
                attempts: AtomicU64::new(0),
                received: Mutex::new(Vec::new()),
                changed: Notify::new(),
            })
        }

        fn received(&self) -> Vec<String> {
            self.received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }

        /// Waits (without sleeping) until `cond` holds, or fails after 10 s.
        async fn wait_until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
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
    }

    #[async_trait]
    impl Provider for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn kind(&self) -> ProviderKind {
            ProviderKind::Memory
        }
        async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let outcome = if self.healthy.load(Ordering::SeqCst) {
                self.received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(msg.id.clone());
                Ok(())
            } else {
                Err(ProviderError::Unavailable {
                    provider: "flaky".into(),
                    reason: "down for the test".into(),
                })
            };
            self.changed.notify_waiters();
            outcome
        }
        async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
            Err(ProviderError::Subscribe {
                provider: "flaky".into(),
                reason: "not in tests".into(),
            })
        }
        fn stats(&self) -> Stats {
            Stats::default()
        }
        fn health(&self) -> Health {
            Health::up("Test", "test provider")
        }
        async fn close(&self) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn append_peek_remove_keep_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("nats", Limits::default()).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.oldest_age(), None);
        for i in 0..5 {
            b.append(&msg(i)).await.unwrap();
        }
        assert_eq!(b.len(), 5);
        assert!(b.oldest_age().is_some());
        let all = b.peek(10).await.unwrap();
        assert_eq!(
            ids(&all),
            ["msg-0000", "msg-0001", "msg-0002", "msg-0003", "msg-0004"]
        );
        assert_eq!(all[0].1, msg(0), "the message comes back whole");
        let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

        let first_two = b.peek(2).await.unwrap();
        assert_eq!(ids(&first_two), ["msg-0000", "msg-0001"]);
        b.remove_through(first_two[1].0).await.unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(
            ids(&b.peek(10).await.unwrap()),
            ["msg-0002", "msg-0003", "msg-0004"]
        );

        b.remove_through(seqs[4]).await.unwrap();
        assert!(b.is_empty());
        assert!(b.peek(10).await.unwrap().is_empty());
        assert_eq!(b.oldest_age(), None);

        // Another provider's backlog is separate.
        let k = store.backlog("kafka", Limits::default()).unwrap();
        assert!(k.is_empty());
        assert!(k.peek(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn survives_reopen_and_sequence_continues() {
        let dir = tempfile::tempdir().unwrap();
        let last_seq = {
            let store = HandoffStore::open(dir.path()).unwrap();
            let b = store.backlog("nats", Limits::default()).unwrap();
            let mut last = 0;
            for i in 0..3 {
                last = b.append_at(&msg(i), 1_000 + i as u64).await.unwrap();
            }
            last
        };
        let store = HandoffStore::open(dir.path()).unwrap();
        assert_eq!(store.path(), dir.path().join(FILE_NAME));
        let b = store.backlog("nats", Limits::default()).unwrap();
        assert_eq!(b.len(), 3);
        let entries = b.peek(10).await.unwrap();
        assert_eq!(ids(&entries), ["msg-0000", "msg-0001", "msg-0002"]);
        assert_eq!(b.state.oldest_ms.load(Ordering::Acquire), 1_000);
        let next = b.append_at(&msg(3), 2_000).await.unwrap();
        assert!(next > last_seq, "{next} after {last_seq}");

        // Fully drained, then restarted: numbers still do not repeat.
        b.remove_through(next).await.unwrap();
        drop(b);
        drop(store);
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("nats", Limits::default()).unwrap();
        assert!(b.is_empty());
        let after = b.append_at(&msg(4), 3_000).await.unwrap();
        assert!(after > next, "{after} after {next}");
    }

    #[tokio::test]
    async fn a_second_open_while_open_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _store = HandoffStore::open(dir.path()).unwrap();
        let err = HandoffStore::open(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("handoff.redb") && text.contains("still has it open"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn full_backlog_refuses_and_counts_missed_persistently() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_messages: Some(3),
            max_age: None,
        };
        {
            let store = HandoffStore::open(dir.path()).unwrap();
            let b = store.backlog("kafka", limits).unwrap();
            assert_eq!(b.limits(), limits);
            for i in 0..3 {
                b.append(&msg(i)).await.unwrap();
            }
            assert!(!b.needs_reconciliation());
            let err = b.append(&msg(3)).await.unwrap_err();
            assert_eq!(
                err,
                HandoffError::Full {
                    provider: "kafka".into(),
                    max: 3
                }
            );
            assert!(err.to_string().contains("kafka"), "{err}");
            assert_eq!(b.len(), 3);
            assert_eq!(b.missed(), 1);
            assert!(b.needs_reconciliation());
            assert_eq!(
                ids(&b.peek(10).await.unwrap()),
                ["msg-0000", "msg-0001", "msg-0002"],
                "nothing old was dropped to make room"
            );
        }
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("kafka", limits).unwrap();
        assert_eq!(b.missed(), 1, "missed survives a restart");
        assert!(b.needs_reconciliation());
        // Room again after a drain; the flag stays until reconciled.
        let last = b.peek(10).await.unwrap()[2].0;
        b.remove_through(last).await.unwrap();
        b.append(&msg(4)).await.unwrap();
        assert!(b.needs_reconciliation());
        b.reset_missed().await.unwrap();
        assert_eq!(b.missed(), 0);
        assert!(!b.needs_reconciliation());
    }

    #[tokio::test]
    async fn max_age_is_judged_against_the_oldest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = HandoffStore::open(dir.path()).unwrap();
        let max_age = Duration::from_secs(60);
        let b = store
            .backlog(
                "nats",
                Limits {
                    max_messages: None,
                    max_age: Some(max_age),
                },
            )
            .unwrap();
        assert!(
            !b.needs_reconciliation_at(u64::MAX),
            "empty is never too old"
        );
        let first = b.append_at(&msg(0), 1_000).await.unwrap();
        b.append_at(&msg(1), 50_000).await.unwrap();
        assert!(!b.needs_reconciliation_at(1_000 + 60_000));
        assert!(b.needs_reconciliation_at(1_000 + 60_001));

        // The oldest is now the second entry.
        b.remove_through(first).await.unwrap();
        assert!(!b.needs_reconciliation_at(1_000 + 60_001));
        assert!(!b.needs_reconciliation_at(50_000 + 60_000));
        assert!(b.needs_reconciliation_at(50_000 + 60_001));

        // Wall clock: a fresh entry is young.
        let c = store.backlog("kafka", b.limits()).unwrap();
        let before = now_millis();
        c.append(&msg(2)).await.unwrap();
        let after = now_millis();
        assert!(!c.needs_reconciliation());
        assert!(!c.needs_reconciliation_at(before + 60_000));
        assert!(c.needs_reconciliation_at(after + 60_001));

        // Without a limit, age never matters.
        let d = store.backlog("memory", Limits::default()).unwrap();
        d.append_at(&msg(3), 0).await.unwrap();
        assert!(!d.needs_reconciliation_at(u64::MAX));
    }

    #[tokio::test]
    async fn oldest_time_is_restored_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_messages: None,
            max_age: Some(Duration::from_secs(1)),
        };
        {
            let store = HandoffStore::open(dir.path()).unwrap();
            let b = store.backlog("nats", limits).unwrap();
            b.append_at(&msg(0), 10_000).await.unwrap();
            b.append_at(&msg(1), 20_000).await.unwrap();
        }
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("nats", limits).unwrap();
        assert!(!b.needs_reconciliation_at(11_000));
        assert!(b.needs_reconciliation_at(11_001));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_delivers_in_order_after_the_provider_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("flaky", Limits::default()).unwrap();
        let provider = Flaky::new(false);
        let appended: Vec<String> = (0..5).map(|i| msg(i).id).collect();
        for i in 0..5 {
            b.append(&msg(i)).await.unwrap();
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            Arc::clone(&b),
            provider.clone(),
            Duration::from_secs(1),
            stop_rx,
        ));
        provider
            .wait_until("replay tried and failed", |p| {
                p.attempts.load(Ordering::SeqCst) >= 2
            })
            .await;
        assert_eq!(b.len(), 5, "nothing removed while the provider fails");
        provider.healthy.store(true, Ordering::SeqCst);
        provider
            .wait_until("all 5 delivered", |p| p.received().len() >= 5)
            .await;
        assert_eq!(provider.received(), appended);

        // The removal follows the last ack; wait for it through the counter, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !b.is_empty() {
            assert!(
                Instant::now() < deadline,
                "backlog not emptied: {}",
                b.len()
            );
            tokio::task::yield_now().await;
        }
        assert!(b.peek(10).await.unwrap().is_empty());

        // A later append is picked up without polling.
        b.append(&msg(5)).await.unwrap();
        provider
            .wait_until("the late message delivered", |p| p.received().len() >= 6)
            .await;
        assert_eq!(
            provider.received().last().map(String::as_str),
            Some("msg-0005")
        );

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// A provider that takes `delay` per publish, rejects the ids in `rejects` for good, and
    /// records the order in which publishes start and the most it had in flight at once.
    struct Pipelined {
        delay: Duration,
        rejects: HashSet<String>,
        started: Mutex<Vec<String>>,
        in_flight: AtomicU64,
        max_in_flight: AtomicU64,
        done: AtomicU64,
        changed: Notify,
    }

    #[async_trait]
    impl Provider for Pipelined {
        fn name(&self) -> &str {
            "pipelined"
        }
        fn kind(&self) -> ProviderKind {
            ProviderKind::Memory
        }
        async fn publish(&self, m: &DataMessage) -> Result<(), ProviderError> {
            self.started.lock().unwrap().push(m.id.clone());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.done.fetch_add(1, Ordering::SeqCst);
            self.changed.notify_waiters();
            if self.rejects.contains(&m.id) {
                return Err(ProviderError::Rejected {
                    provider: "pipelined".into(),
                    reason: "too large".into(),
                });
            }
            Ok(())
        }
        async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
            Err(ProviderError::Subscribe {
                provider: "pipelined".into(),
                reason: "none".into(),
            })
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_is_pipelined_in_order_and_drops_what_the_provider_rejects_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("pipelined", Limits::default()).unwrap();
        let n = 300;
        for i in 0..n {
            b.append(&msg(i)).await.unwrap();
        }
        let provider = Arc::new(Pipelined {
            delay: Duration::from_millis(5),
            rejects: HashSet::from([msg(3).id]),
            started: Mutex::default(),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            done: AtomicU64::new(0),
            changed: Notify::new(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            Arc::clone(&b),
            provider.clone(),
            Duration::from_secs(5),
            stop_rx,
        ));
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let notified = provider.changed.notified();
                if b.is_empty() {
                    break;
                }
                // The removal follows the acks: also wake on a timer-free check of the counter.
                tokio::select! {
                    _ = notified => {},
                    _ = tokio::task::yield_now() => {},
                }
            }
        })
        .await
        .expect("the backlog drains");
        let started = provider.started.lock().unwrap().clone();
        let expected: Vec<String> = (0..n).map(|i| msg(i).id).collect();
        assert_eq!(started, expected, "sent in backlog order, each once");
        let max = provider.max_in_flight.load(Ordering::SeqCst);
        assert!(
            max > 1 && max <= REPLAY_WINDOW as u64,
            "pipelined: {max} in flight at most"
        );
        assert_eq!(
            b.missed(),
            1,
            "the rejected message is counted, not retried forever"
        );
        assert!(b.needs_reconciliation());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn replay_stops_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let store = HandoffStore::open(dir.path()).unwrap();
        let prompt = Duration::from_secs(1);

        // Idle (empty backlog).
        let b = store.backlog("idle", Limits::default()).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            b,
            Flaky::new(true),
            Duration::from_secs(60),
            stop_rx,
        ));
        tokio::task::yield_now().await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(prompt, task).await.unwrap().unwrap();

        // Backing off from a failing provider (backoff would reach 5 s).
        let b = store.backlog("failing", Limits::default()).unwrap();
        b.append(&msg(0)).await.unwrap();
        let provider = Flaky::new(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            Arc::clone(&b),
            provider.clone(),
            Duration::from_secs(60),
            stop_rx,
        ));
        provider
            .wait_until("two attempts", |p| p.attempts.load(Ordering::SeqCst) >= 2)
            .await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(prompt, task).await.unwrap().unwrap();
        assert_eq!(b.len(), 1, "an unacknowledged message stays");

        // In the middle of a publish that never answers (publish timeout far away).
        let provider = Flaky::new(true);
        provider.hang.store(true, Ordering::SeqCst);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            Arc::clone(&b),
            provider,
            Duration::from_secs(60),
            stop_rx,
        ));
        tokio::task::yield_now().await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(prompt, task).await.unwrap().unwrap();

        // The owner going away counts as stop.
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            b,
            Flaky::new(false),
            Duration::from_secs(60),
            stop_rx,
        ));
        drop(stop_tx);
        tokio::time::timeout(prompt, task).await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_all_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("nats", Limits::default()).unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let b = Arc::clone(&b);
                tokio::spawn(async move { b.append_at(&msg(i), now_millis()).await })
            })
            .collect();
        let mut seqs = HashSet::new();
        for t in tasks {
            assert!(
                seqs.insert(t.await.unwrap().unwrap()),
                "duplicate sequence number"
            );
        }
        assert_eq!(b.len(), 100);
        let entries = b.peek(1000).await.unwrap();
        assert_eq!(entries.len(), 100);
        let stored: HashSet<u64> = entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(stored, seqs);
        let stored_ids: HashSet<String> = entries.into_iter().map(|(_, m)| m.id).collect();
        assert_eq!(stored_ids.len(), 100);
    }

    #[tokio::test]
    async fn an_undecodable_entry_is_skipped_by_replay_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("nats", Limits::default()).unwrap();
        b.append(&msg(0)).await.unwrap();
        // Plant a broken entry between two good ones, as a future format or a bug might.
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(table_def(&b.state.table)).unwrap();
                t.insert(2, b"\x07garbage".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        b.state.last_seq.store(2, Ordering::Release);
        b.state.len.store(2, Ordering::Release);
        b.append(&msg(1)).await.unwrap();
        assert_eq!(ids(&b.peek(10).await.unwrap()), ["msg-0000", "msg-0001"]);

        let provider = Flaky::new(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            Arc::clone(&b),
            provider.clone(),
            Duration::from_secs(5),
            stop_rx,
        ));
        provider
            .wait_until("both good ones delivered", |p| p.received().len() >= 2)
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !b.is_empty() {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert_eq!(provider.received(), ["msg-0000", "msg-0001"]);
        assert_eq!(b.missed(), 1);
        assert!(b.needs_reconciliation());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn entry_encoding_round_trips() {
        let m = msg(7);
        let value = encode_entry(0x0102_0304_0506_0708, &m.to_wire());
        assert_eq!(value[0], FORMAT_V1);
        assert_eq!(&value[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(entry_millis(&value), 0x0102_0304_0506_0708);
        assert_eq!(decode_entry(&value), Ok(m));
        assert!(decode_entry(&[]).is_err());
        assert!(decode_entry(&[FORMAT_V1, 0]).is_err());
        assert_eq!(entry_millis(&[FORMAT_V1, 0]), 0);
    }

    /// Cost of a durable append on this machine:
    /// `cargo test --release --lib handoff::tests::append_cost -- --ignored --nocapture`.
    /// `HANDOFF_BENCH_DIR` picks the disk (default: the system temp dir).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "measurement, not a test"]
    async fn append_cost() {
        let base = std::env::var_os("HANDOFF_BENCH_DIR").map(PathBuf::from);
        let dir = match &base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let store = HandoffStore::open(dir.path()).unwrap();
        let b = store.backlog("nats", Limits::default()).unwrap();
        let m = DataMessage::new("bench", vec![b'x'; 256]);
        const N: usize = 1000;

        let started = Instant::now();
        for _ in 0..N {
            b.append(&m).await.unwrap();
        }
        let seq = started.elapsed();
        println!(
            "sequential: {N} appends in {seq:?} = {:.3} ms/append",
            seq.as_secs_f64() * 1000.0 / N as f64
        );

        for concurrency in [16usize, 64, 256] {
            let started = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let b = Arc::clone(&b);
                    let m = m.clone();
                    tokio::spawn(async move {
                        for _ in 0..N / concurrency.min(N) {
                            b.append(&m).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let total = (N / concurrency) * concurrency;
            let el = started.elapsed();
            println!(
                "{concurrency} concurrent: {total} appends in {el:?} = {:.3} ms/append amortised, {:.0} appends/s",
                el.as_secs_f64() * 1000.0 / total as f64,
                total as f64 / el.as_secs_f64()
            );
        }

        let started = Instant::now();
        let mut drained = 0;
        loop {
            let batch = b.peek(REPLAY_BATCH).await.unwrap();
            let Some((last, _)) = batch.last() else { break };
            b.remove_through(*last).await.unwrap();
            drained += batch.len();
        }
        let el = started.elapsed();
        println!(
            "drain (peek {REPLAY_BATCH} + remove_through): {drained} in {el:?} = {:.3} ms/message",
            el.as_secs_f64() * 1000.0 / drained as f64
        );
    }
}
