//! The relay's de-duplication window: the ids it accepted recently, each with the digest of its
//! content, so that a client's retry is answered as what it is and a reused id is refused.
//!
//! - same id, same content, accepted inside the window: a duplicate (answered 202, marked so,
//!   not written again);
//! - same id, other content, inside the window: a conflict (answered 409, not written);
//! - otherwise the request [`Claim`]s the id and publishes. Only a publish that was accepted
//!   ([`Claim::accept`]) makes later requests duplicates. A claim dropped without `accept` (the
//!   publish failed, or the request was cancelled) records the id as *attempted*: a retry with
//!   the same content is written again (nothing promised it was stored), but other content is a
//!   conflict, because a failed publish may still have reached a broker (FailFast answers at the
//!   first failure while the other writes finish; a Kafka record outlives a cancelled request).
//!
//! A second request for an id that is being published waits for that publish to end and then
//! decides as if it had come after it: two requests with one id never both write, whatever their
//! content. The window is bounded by age (`max_age`, from the id's acceptance) and by count
//! (`max_ids`, oldest first), and it is per relay process: a retry that reaches another replica
//! falls back to the brokers' own de-duplication (JetStream's duplicate window, Kafka's key).
//!
//! Memory: the window keeps no id, only a 128-bit `Key` of it, the first half of SHA-256 over a
//! random secret of this process and the id; so an entry costs the same whatever the
//! id's length (see [`DEFAULT_DUPLICATE_WINDOW_IDS`]) and a request allocates nothing here. Two
//! ids with one key would be taken for one id; among 100,000 ids the odds of any such pair are
//! about 10⁻²⁹, and the secret is unknown to clients, so none can make one on purpose.
//!
//! A std `Mutex` guards the maps: it is held for a few map operations, never across an await,
//! and ingest handlers on every worker thread take it (an async mutex would only add cost).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::ContentDigest;

/// How long an accepted id is remembered by default: JetStream's default duplicate window.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How many accepted ids are remembered at most by default. An id costs about 130 bytes
/// whatever its length (its 64-byte record, and a 24-byte slot of an index sized for twice the
/// count, which is resident after the first few thousand ids), so this caps the window near
/// 13 MiB (more while retries leave records behind, at most 64 bytes more per id); at more than
/// about 830 messages a second the count, not the age, bounds the window.
pub const DEFAULT_DUPLICATE_WINDOW_IDS: usize = 100_000;

/// What the window says of a request for `id` with some content.
#[derive(Debug)]
pub enum Verdict {
    /// First sight (or the window forgot it): publish, then [`Claim::accept`].
    Fresh(Claim),
    /// Accepted before with the same content: answer 202 as a duplicate, write nothing.
    Duplicate,
    /// Accepted (`accepted`), or attempted and maybe stored, with other content: answer 409,
    /// write nothing.
    Conflict { accepted: bool },
}

/// An id as the window keys it: 128 bits of a keyed hash of it (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key([u64; 2]);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: the maps use its bits as they are (see `KeyHasher`).
        state.write_u64(self.0[0]);
    }
}

/// The maps' hasher: a [`Key`] is already uniformly random, so hashing it again would only cost.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Key::hash` feeds this hasher, through `write_u64`; kept correct for any input.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;
type KeySet = HashSet<Key, BuildHasherDefault<KeyHasher>>;

/// What the window remembers of a recorded id.
#[derive(Debug)]
struct Seen {
    key: Key,
    digest: ContentDigest,
    /// A publish of it was accepted (else only attempted).
    accepted: bool,
    /// When it was recorded (nanoseconds since the window's `origin`: 8 bytes, not an
    /// `Instant`'s 16).
    at: u64,
}

/// Recently accepted ids and their content digests; see the module doc.
#[derive(Debug)]
pub struct DuplicateWindow {
    shared: Arc<Shared>,
    /// The secret that keys this window's id hashes (random, per process).
    secret: [u8; 16],
    max_age: Duration,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// What `Seen::at` counts from.
    origin: Instant,
    /// Woken whenever a claim ends: requests waiting for an id in flight look again.
    released: Notify,
}

/// The records in the order they were made (a ring), and an index from each id to its latest
/// record. The records live once, in the ring; the index holds a key and a sequence number per
/// id, so the hash table, which a window that keeps forgetting and learning ids needs with
/// twice its count of slots, stays small.
#[derive(Debug)]
struct State {
    /// Records, oldest first; `ring[i]` has the sequence number `first + i`. An id recorded
    /// again (an attempt, then its retry) keeps its older record too, which the index no longer
    /// names and which is dropped when it comes to the front.
    ring: VecDeque<Seen>,
    /// The sequence number of `ring[0]`.
    first: u64,
    /// Each remembered id's latest record.
    index: KeyMap<u64>,
    /// Ids being published now.
    pending: KeySet,
    /// Requests waiting for an id in flight (`Shared::released` is notified only if any).
    waiters: usize,
    /// `DuplicateWindow::max_age` in nanoseconds.
    max_age: u64,
    /// At most this many ids are remembered.
    max_ids: usize,
}

/// At most this many records per remembered id are kept: an id recorded again (an attempt,
/// then its retries) leaves older records behind until they reach the front; past this bound
/// the oldest records go even if their ids are still remembered (memory stays bounded
/// whatever clients retry).
const RECORDS_PER_ID: usize = 2;

impl Shared {
    /// Now, as `Seen::at` counts.
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl State {
    fn new(max_age: Duration, max_ids: usize) -> Self {
        // Sized for the whole window at once: no table is rebuilt (and held twice) as the
        // window fills, and pages no entry has touched yet take no memory. A table that keeps
        // losing and gaining entries needs twice its count of slots, or it grows anyway.
        Self {
            // Room for the ids and a quarter more for records left behind by retries; the ring
            // grows (up to `RECORDS_PER_ID` times the ids) only if retries leave more.
            ring: VecDeque::with_capacity(max_ids + max_ids / 4 + 1),
            first: 0,
            index: KeyMap::with_capacity_and_hasher(2 * max_ids + 2, Default::default()),
            pending: KeySet::default(),
            waiters: 0,
            max_age: u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX),
            max_ids,
        }
    }

    /// The latest record of `key`, if remembered.
    fn seen(&self, key: &Key) -> Option<&Seen> {
        let seq = *self.index.get(key)?;
        self.ring.get(usize::try_from(seq - self.first).ok()?)
    }

    /// Forgets ids older than `max_age`, and the oldest past `max_ids - room` ids (`room` for
    /// an id about to be recorded); drops records past `RECORDS_PER_ID` times `max_ids`.
    fn prune(&mut self, now: u64, room: usize) {
        while let Some(oldest) = self.ring.front() {
            if now.saturating_sub(oldest.at) < self.max_age
                && self.index.len() + room <= self.max_ids
                && self.ring.len() + room <= RECORDS_PER_ID * self.max_ids
            {
                break;
            }
            if self.index.get(&oldest.key) == Some(&self.first) {
                self.index.remove(&oldest.key);
            }
            self.ring.pop_front();
            self.first += 1;
        }
    }

    fn record(&mut self, key: Key, digest: ContentDigest, accepted: bool, at: u64) {
        self.pending.remove(&key);
        // Counted before the record is made, so the bounds hold after it too (a retried id,
        // already in the index, makes room it does not take).
        self.prune(at, 1);
        let seq = self.first + self.ring.len() as u64;
        self.ring.push_back(Seen {
            key,
            digest,
            accepted,
            at,
        });
        self.index.insert(key, seq);
    }
}

impl DuplicateWindow {
    /// A window remembering each accepted id for `max_age`, and at most `max_ids` of them
    /// (at least one).
    pub fn new(max_age: Duration, max_ids: usize) -> Self {
        let max_ids = max_ids.max(1);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(max_age, max_ids)),
                origin: Instant::now(),
                released: Notify::new(),
            }),
            // A v4 UUID's bytes come from the OS's random source.
            secret: uuid::Uuid::new_v4().into_bytes(),
            max_age,
        }
    }

    fn key(&self, id: &str) -> Key {
        let hash = Sha256::new()
            .chain_update(self.secret)
            .chain_update(id.as_bytes())
            .finalize();
        let half = |at: usize| u64::from_le_bytes(hash[at..at + 8].try_into().expect("8 bytes"));
        Key([half(0), half(8)])
    }

    /// Decides a request for `id` with content `digest`; waits while another request for the
    /// same id is being published.
    pub async fn check(&self, id: &str, digest: ContentDigest) -> Verdict {
        let key = self.key(id);
        loop {
            // Created under the lock, before the claim in flight can end: a release after the
            // lock is dropped wakes it (a `Notified` receives `notify_waiters` from its creation).
            let released = {
                let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
                state.prune(self.shared.now(), 0);
                if state.pending.contains(&key) {
                    state.waiters += 1;
                    self.shared.released.notified()
                } else {
                    match state.seen(&key) {
                        Some(seen) if seen.digest != digest => {
                            return Verdict::Conflict {
                                accepted: seen.accepted,
                            }
                        }
                        Some(seen) if seen.accepted => return Verdict::Duplicate,
                        // New, or attempted with this content: (re)write it.
                        _ => {
                            state.pending.insert(key);
                            return Verdict::Fresh(Claim {
                                shared: self.shared.clone(),
                                key,
                                digest,
                                outcome: ClaimOutcome::Attempted,
                            });
                        }
                    }
                }
            };
            // Any claim's end wakes this; the loop looks again at this id. The count goes down
            // even if this request is dropped while it waits.
            let _waiting = Waiting(&self.shared);
            released.await;
        }
    }

    /// How long an accepted id is remembered.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Ids remembered now (accepted or attempted).
    pub fn len(&self) -> usize {
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for DuplicateWindow {
    fn default() -> Self {
        Self::new(DEFAULT_DUPLICATE_WINDOW, DEFAULT_DUPLICATE_WINDOW_IDS)
    }
}

/// A request waiting for an id in flight, counted in `State::waiters` while it waits.
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiters -= 1;
    }
}

/// The right to publish an id, held while it is published. [`Claim::accept`] records the id as
/// accepted; dropping the claim otherwise records it as attempted. Either way, requests waiting
/// for it go on.
#[derive(Debug)]
pub struct Claim {
    shared: Arc<Shared>,
    key: Key,
    digest: ContentDigest,
    outcome: ClaimOutcome,
}

/// What a claim's publish did, as the window records it when the claim is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOutcome {
    /// Answered 202.
    Accepted,
    /// Failed or cut short after writes started: a broker may hold the content.
    Attempted,
    /// Refused before any write (too large, the pipeline closing): nothing to remember.
    NothingWritten,
}

impl Claim {
    /// The publish was accepted (202): later requests with this id and content are duplicates.
    pub fn accept(mut self) {
        self.outcome = ClaimOutcome::Accepted;
    }

    /// The message was refused before any write (413, a closed pipeline): the window records
    /// nothing for it, so the same id may come again with any content.
    pub fn release(mut self) {
        self.outcome = ClaimOutcome::NothingWritten;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            // Taken under the lock: the ring stays sorted by time.
            let at = self.shared.now();
            match self.outcome {
                ClaimOutcome::Accepted => state.record(self.key, self.digest, true, at),
                ClaimOutcome::Attempted => state.record(self.key, self.digest, false, at),
                ClaimOutcome::NothingWritten => {
                    state.pending.remove(&self.key);
                }
            }
            state.waiters
        };
        // After `pending` no longer names the id; only if a request waits (a waiter counted
        // itself under the lock before this claim's end could run, so none is missed).
        if waiters > 0 {
            self.shared.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::DataMessage;

    fn digest(content: &str) -> ContentDigest {
        DataMessage::new("test", content.to_string()).content_digest()
    }

    async fn accept(w: &DuplicateWindow, id: &str, content: &str) {
        match w.check(id, digest(content)).await {
            Verdict::Fresh(c) => c.accept(),
            other => panic!("{id}: expected fresh, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn same_content_is_a_duplicate_and_other_content_a_conflict() {
        let w = DuplicateWindow::default();
        accept(&w, "o-1", "one").await;
        assert!(matches!(
            w.check("o-1", digest("one")).await,
            Verdict::Duplicate
        ));
        assert!(matches!(
            w.check("o-1", digest("two")).await,
            Verdict::Conflict { accepted: true }
        ));
        // A conflict records nothing: the first content stays the one remembered.
        assert!(matches!(
            w.check("o-1", digest("one")).await,
            Verdict::Duplicate
        ));
        accept(&w, "o-2", "two").await;
        assert_eq!(w.len(), 2);
    }

    /// What `DEFAULT_DUPLICATE_WINDOW_IDS` (and the CRD's description) says an entry costs.
    #[test]
    fn an_entry_is_small_whatever_its_id() {
        assert!(std::mem::size_of::<Seen>() <= 64);
        assert!(std::mem::size_of::<(Key, u64)>() <= 24);
        let w = DuplicateWindow::default();
        // A long id and a short one are two keys of the same size; neither is kept.
        let long = "x".repeat(128);
        assert_ne!(w.key(&long), w.key("x"));
        assert_eq!(w.key(&long), w.key(&long.clone()));
    }

    #[tokio::test]
    async fn a_failed_publish_is_retried_but_its_id_not_reused() {
        let w = DuplicateWindow::default();
        let Verdict::Fresh(claim) = w.check("o-1", digest("one")).await else {
            panic!("fresh")
        };
        drop(claim); // the publish failed (503): maybe stored on one broker, not accepted
                     // Other content under the id is refused: a broker may hold "one".
        assert!(matches!(
            w.check("o-1", digest("two")).await,
            Verdict::Conflict { accepted: false }
        ));
        // The retry with the same content is written again, not answered as a duplicate.
        accept(&w, "o-1", "one").await;
        assert!(matches!(
            w.check("o-1", digest("one")).await,
            Verdict::Duplicate
        ));
        assert_eq!(w.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ids_expire_after_max_age() {
        let w = DuplicateWindow::new(Duration::from_secs(120), 100);
        accept(&w, "o-1", "one").await;
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(matches!(
            w.check("o-1", digest("two")).await,
            Verdict::Conflict { accepted: true }
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        // Past the window the id is new again (the brokers' own de-duplication remains).
        let Verdict::Fresh(_) = w.check("o-1", digest("two")).await else {
            panic!("expired ids are fresh")
        };
    }

    /// Retries of one failing id leave records behind; they do not push other ids out.
    #[tokio::test]
    async fn retries_of_one_id_do_not_push_other_ids_out() {
        let w = DuplicateWindow::new(Duration::from_secs(120), 3);
        accept(&w, "o-0", "x").await;
        let fail = |id: &'static str| {
            let w = &w;
            async move {
                let Verdict::Fresh(claim) = w.check(id, digest("y")).await else {
                    panic!("a failed id is written again")
                };
                drop(claim); // failed: recorded as attempted
            }
        };
        // Five records for two ids in a window of three ids: o-0 stays.
        for _ in 0..4 {
            fail("o-1").await;
        }
        assert!(matches!(
            w.check("o-0", digest("x")).await,
            Verdict::Duplicate
        ));
        assert_eq!(w.len(), 2);
        // Memory stays bounded whatever the retries: at most RECORDS_PER_ID records per id.
        for _ in 0..20 {
            fail("o-1").await;
        }
        let records = w.shared.state.lock().unwrap().ring.len();
        assert!(records <= RECORDS_PER_ID * 3, "{records} records");
    }

    #[tokio::test]
    async fn the_oldest_ids_go_past_max_ids() {
        let w = DuplicateWindow::new(Duration::from_secs(120), 3);
        for i in 0..4 {
            accept(&w, &format!("o-{i}"), "x").await;
        }
        // Pruned at the next check: o-0, the oldest, is forgotten; o-1 is still known.
        assert!(matches!(
            w.check("o-1", digest("y")).await,
            Verdict::Conflict { accepted: true }
        ));
        assert_eq!(w.len(), 3);
        let Verdict::Fresh(_) = w.check("o-0", digest("y")).await else {
            panic!("o-0 fell out of the window")
        };
    }

    #[tokio::test]
    async fn a_second_request_for_an_id_in_flight_waits_for_the_first() {
        let w = Arc::new(DuplicateWindow::default());
        let Verdict::Fresh(first) = w.check("o-1", digest("one")).await else {
            panic!("fresh")
        };
        let same = tokio::spawn({
            let w = w.clone();
            async move { w.check("o-1", digest("one")).await }
        });
        let other = tokio::spawn({
            let w = w.clone();
            async move { w.check("o-1", digest("two")).await }
        });
        // Both wait while the first is being published (they cannot finish: the claim is held).
        tokio::task::yield_now().await;
        assert!(!same.is_finished() && !other.is_finished());
        first.accept();
        assert!(matches!(same.await.unwrap(), Verdict::Duplicate));
        assert!(matches!(
            other.await.unwrap(),
            Verdict::Conflict { accepted: true }
        ));
    }

    #[tokio::test]
    async fn when_the_first_publish_fails_one_waiter_takes_over() {
        let w = Arc::new(DuplicateWindow::default());
        let Verdict::Fresh(first) = w.check("o-1", digest("one")).await else {
            panic!("fresh")
        };
        let waiters: Vec<_> = ["one", "one"]
            .into_iter()
            .map(|c| {
                let w = w.clone();
                tokio::spawn(async move {
                    match w.check("o-1", digest(c)).await {
                        Verdict::Fresh(claim) => {
                            claim.accept();
                            "fresh"
                        }
                        Verdict::Duplicate => "duplicate",
                        Verdict::Conflict { .. } => "conflict",
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(first); // its publish failed
        let mut outcomes = Vec::new();
        for t in waiters {
            outcomes.push(t.await.unwrap());
        }
        outcomes.sort_unstable();
        // Exactly one of them writes; the other is its duplicate.
        assert_eq!(outcomes, ["duplicate", "fresh"]);
    }

    /// Many concurrent requests for one id, with two contents: exactly one claim is ever
    /// granted while it is held, and every other answer agrees with what it accepted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_for_one_id_write_once() {
        let w = Arc::new(DuplicateWindow::default());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let w = w.clone();
                let content = if i % 2 == 0 { "one" } else { "two" };
                tokio::spawn(async move {
                    match w.check("o-1", digest(content)).await {
                        Verdict::Fresh(claim) => {
                            tokio::task::yield_now().await;
                            claim.accept();
                            (content, "fresh")
                        }
                        Verdict::Duplicate => (content, "duplicate"),
                        Verdict::Conflict { .. } => (content, "conflict"),
                    }
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let fresh: Vec<_> = answers.iter().filter(|(_, v)| *v == "fresh").collect();
        assert_eq!(fresh.len(), 1, "{answers:?}");
        let written = fresh[0].0;
        for (content, verdict) in &answers {
            match *verdict {
                "duplicate" => assert_eq!(*content, written),
                "conflict" => assert_ne!(*content, written),
                _ => {}
            }
        }
    }
}
