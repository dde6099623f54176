//! The handoff database: one redb file, a backlog table per provider, and the single writer
//! thread that commits every change.
//!
//! Writes go through one writer thread that commits whatever is queued in a single redb
//! transaction (group commit): an append is durable (fsynced, redb's `Durability::Immediate`)
//! when it returns, and concurrent appends share one fsync instead of queueing for one each.
//! A provider's counters are staged during the transaction and published to its atomics only
//! after the commit succeeded, so the hot path never sees a number the disk does not hold.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
    TableHandle, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use super::backlog::{Backlog, Limits, State};
use super::entry::entry_millis;
use super::{now_millis, storage_error, HandoffError, UNSET};

/// The database file inside the handoff directory.
pub const FILE_NAME: &str = "handoff.redb";

/// At most one error per provider this often while its full backlog refuses messages.
const FULL_LOG_EVERY_MS: u64 = 10_000;

/// Per-provider sequence numbers and `missed` counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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

/// The relay's handoff database: one file, a backlog table per provider.
pub struct HandoffStore {
    pub(super) path: PathBuf,
    pub(super) db: Arc<Database>,
    /// `None` only while dropping (closing the queue is what stops the writer).
    queue: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    /// One state per provider, so every `Backlog` handle for a provider shares its counters
    /// and its sequence numbers.
    states: Mutex<HashMap<String, Arc<State>>>,
    /// Test hook: every write fails as a disk that is full or broken would (set only by
    /// [`HandoffStore::fail_writes`], which exists in test builds).
    failing: std::sync::atomic::AtomicBool,
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
            storage_error(
                &path,
                &format!("cannot create directory {}", dir.display()),
                e,
            )
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
            failing: std::sync::atomic::AtomicBool::new(false),
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
        let state = self.state_of(provider)?;
        state.set_limits(limits);
        Ok(Arc::new(Backlog::new(Arc::clone(self), state)))
    }

    /// The backlog of every provider this file has a table for, limits untouched: how a relay
    /// finds what waits on its disk for a provider it no longer writes (a migration step or a
    /// rollback removed it), so that backlog is reported rather than forgotten.
    pub fn backlogs_on_disk(self: &Arc<Self>) -> Result<Vec<Arc<Backlog>>, HandoffError> {
        let names = (|| -> Result<Vec<String>, redb::Error> {
            let txn = self.db.begin_read()?;
            let names = txn
                .list_tables()?
                .filter_map(|t| t.name().strip_prefix("backlog/").map(String::from))
                .collect();
            Ok(names)
        })()
        .map_err(|e| storage_error(&self.path, "cannot list the backlogs", e))?;
        names
            .iter()
            .map(|name| {
                let state = self.state_of(name)?;
                Ok(Arc::new(Backlog::new(Arc::clone(self), state)))
            })
            .collect()
    }

    /// The shared state of `provider`, read from disk the first time.
    fn state_of(&self, provider: &str) -> Result<Arc<State>, HandoffError> {
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
        Ok(state)
    }

    /// Reads a provider's counters from disk.
    fn load_state(&self, provider: &str) -> Result<State, HandoffError> {
        let state = State::new(provider);
        let read = || -> Result<(), redb::Error> {
            let txn = self.db.begin_read()?;
            let (mut last_seq, mut missed, mut missed_at) = (0, 0, None);
            match txn.open_table(META) {
                Ok(meta) => {
                    if let Some(v) = meta.get(state.seq_key.as_str())? {
                        last_seq = v.value();
                    }
                    if let Some(v) = meta.get(state.missed_key.as_str())? {
                        missed = v.value();
                    }
                    if let Some(v) = meta.get(state.missed_at_key.as_str())? {
                        missed_at = Some(v.value());
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
            // Misses counted by a version that kept no time: they happened before now, so
            // only a reconciliation from now on covers them.
            let missed_at = match missed_at {
                Some(at) => at,
                None if missed > 0 => now_millis(),
                None => UNSET,
            };
            state.missed_at_ms.store(missed_at, Ordering::Release);
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

    /// Test hook: makes every later write fail (or work again), as a full or broken disk would.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, failing: bool) {
        self.failing.store(failing, Ordering::Release);
    }

    /// Hands one operation to the writer and waits until it is committed.
    pub(super) async fn submit(
        &self,
        state: &Arc<State>,
        kind: OpKind,
    ) -> Result<Outcome, HandoffError> {
        let stopped = || storage_error(&self.path, "write failed", "the writer thread has stopped");
        if self.failing.load(Ordering::Acquire) {
            return Err(storage_error(
                &self.path,
                "cannot commit to the backlog",
                "No space left on device (os error 28) [test hook]",
            ));
        }
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
/// An operation for the writer thread.
pub(super) struct Op {
    state: Arc<State>,
    kind: OpKind,
    reply: oneshot::Sender<Result<Outcome, HandoffError>>,
}

pub(super) enum OpKind {
    Append {
        value: Vec<u8>,
        enqueued_ms: u64,
    },
    Remove {
        through: u64,
        lost: u64,
    },
    /// Messages the provider missed that never reached the backlog (refused by the broker for
    /// good): counted with the backlog's own refusals.
    CountMissed(u64),
    ResetMissed,
    ResetMissedThrough {
        through_ms: u64,
    },
}

#[derive(Debug)]
pub(super) enum Outcome {
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
    missed_at_ms: u64,
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
    match write_group(db, &ops) {
        Ok((staged, outcomes)) => {
            publish_counters(&staged);
            answer(ops, outcomes);
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

/// Applies `ops` in one transaction, each against its provider's staged counters, persists the
/// counters to `meta`, and commits. Nothing is visible to readers before the commit returns.
fn write_group(db: &Database, ops: &[Op]) -> Result<(Vec<Staged>, Vec<Outcome>), redb::Error> {
    // Default durability (Immediate): the commit returns after fsync, so an acknowledged
    // append survives a crash of the relay or its node.
    let txn = db.begin_write()?;
    let mut staged: Vec<Staged> = Vec::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let i = stage(&mut staged, &op.state);
        outcomes.push(apply(&txn, &mut staged[i], &op.kind)?);
    }
    {
        let mut meta = txn.open_table(META)?;
        for s in &staged {
            meta.insert(s.state.seq_key.as_str(), s.last_seq)?;
            meta.insert(s.state.missed_key.as_str(), s.missed)?;
            meta.insert(s.state.missed_at_key.as_str(), s.missed_at_ms)?;
        }
    }
    txn.commit()?;
    Ok((staged, outcomes))
}

/// The index of `state`'s staged counters, staging them from the atomics the first time a group
/// touches that provider.
fn stage(staged: &mut Vec<Staged>, state: &Arc<State>) -> usize {
    if let Some(i) = staged.iter().position(|s| Arc::ptr_eq(&s.state, state)) {
        return i;
    }
    staged.push(Staged {
        state: Arc::clone(state),
        len: state.len.load(Ordering::Acquire),
        last_seq: state.last_seq.load(Ordering::Acquire),
        missed: state.missed.load(Ordering::Acquire),
        missed_at_ms: state.missed_at_ms.load(Ordering::Acquire),
        oldest_ms: state.oldest_ms.load(Ordering::Acquire),
        appended: false,
    });
    staged.len() - 1
}

/// After a successful commit: the staged counters become what `len`, `missed` and friends
/// read, and a replayer sleeping on an empty backlog is woken.
fn publish_counters(staged: &[Staged]) {
    for s in staged {
        let st = &s.state;
        st.last_seq.store(s.last_seq, Ordering::Release);
        st.missed.store(s.missed, Ordering::Release);
        st.missed_at_ms.store(s.missed_at_ms, Ordering::Release);
        st.oldest_ms.store(s.oldest_ms, Ordering::Release);
        st.len.store(s.len, Ordering::Release);
        if s.appended {
            st.appended.notify_one();
        }
    }
}

/// Answers every caller of a committed group (refusals are logged, rate-limited, here).
fn answer(ops: Vec<Op>, outcomes: Vec<Outcome>) {
    for (op, outcome) in ops.into_iter().zip(outcomes) {
        if let Outcome::Refused { max } = outcome {
            log_refusal(&op.state, max);
        }
        // The caller may have given up waiting; the operation is committed either way.
        let _ = op.reply.send(Ok(outcome));
    }
}

fn apply(txn: &WriteTransaction, s: &mut Staged, kind: &OpKind) -> Result<Outcome, redb::Error> {
    let mut table = txn.open_table(table_def(&s.state.table))?;
    match kind {
        OpKind::Append { value, enqueued_ms } => {
            let max = s.state.max_messages.load(Ordering::Acquire);
            if table.len()? >= max {
                s.missed += 1;
                s.missed_at_ms = now_millis();
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
            if *lost > 0 {
                s.missed_at_ms = now_millis();
            }
            Ok(Outcome::Done)
        }
        OpKind::CountMissed(n) => {
            s.missed += n;
            // When the latest miss happened decides what a reconciliation covers: a miss
            // without its time could be cleared by an older one, or never.
            if *n > 0 {
                s.missed_at_ms = now_millis();
            }
            Ok(Outcome::Done)
        }
        OpKind::ResetMissed => {
            s.missed = 0;
            Ok(Outcome::Done)
        }
        OpKind::ResetMissedThrough { through_ms } => {
            // A miss of unknown time (UNSET) is never covered.
            if s.missed_at_ms != UNSET && s.missed_at_ms <= *through_ms {
                s.missed = 0;
            }
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
pub(super) fn table_def(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}
#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
