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
//! A std `Mutex` guards the maps: it is held for a few map operations, never across an await,
//! and ingest handlers on every worker thread take it (an async mutex would only add cost).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::message::ContentDigest;

/// How long an accepted id is remembered by default: JetStream's default duplicate window.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How many accepted ids are remembered at most by default. An entry costs about 200 bytes
/// (the id, up to 128, its digest and the map and queue slots), so this caps the window near
/// 20 MiB; at more than about 830 messages a second the count, not the age, bounds the window.
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

/// What the window remembers of an id.
#[derive(Debug)]
struct Seen {
    digest: ContentDigest,
    /// A publish of it was accepted (else only attempted).
    accepted: bool,
    /// When it was recorded; its entry in `State::order` has the same instant.
    at: Instant,
}

/// Recently accepted ids and their content digests; see the module doc.
#[derive(Debug)]
pub struct DuplicateWindow {
    state: Arc<Mutex<State>>,
    max_age: Duration,
    max_ids: usize,
}

#[derive(Debug, Default)]
struct State {
    seen: HashMap<Arc<str>, Seen>,
    /// Recorded ids, oldest first. An id recorded again (an attempt, then its retry) also keeps
    /// its older entry, which is skipped when pruned (its instant no longer matches).
    order: VecDeque<(Arc<str>, Instant)>,
    /// Ids being published now; a waiter's receiver sees the sender dropped when the publish ends.
    pending: HashMap<Arc<str>, watch::Receiver<()>>,
}

impl State {
    /// Forgets ids older than `max_age`, and the oldest past `max_ids`.
    fn prune(&mut self, now: Instant, max_age: Duration, max_ids: usize) {
        while let Some((id, at)) = self.order.front() {
            if now.duration_since(*at) < max_age && self.seen.len() <= max_ids {
                break;
            }
            if self.seen.get(&**id).is_some_and(|s| s.at == *at) {
                self.seen.remove(&**id);
            }
            self.order.pop_front();
        }
    }

    fn record(&mut self, id: &Arc<str>, digest: ContentDigest, accepted: bool) {
        let at = Instant::now();
        self.pending.remove(&**id);
        self.seen.insert(
            id.clone(),
            Seen {
                digest,
                accepted,
                at,
            },
        );
        self.order.push_back((id.clone(), at));
    }
}

impl DuplicateWindow {
    /// A window remembering each accepted id for `max_age`, and at most `max_ids` of them
    /// (at least one).
    pub fn new(max_age: Duration, max_ids: usize) -> Self {
        Self {
            state: Default::default(),
            max_age,
            max_ids: max_ids.max(1),
        }
    }

    /// Decides a request for `id` with content `digest`; waits while another request for the
    /// same id is being published.
    pub async fn check(&self, id: &str, digest: ContentDigest) -> Verdict {
        loop {
            let mut publishing = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.prune(Instant::now(), self.max_age, self.max_ids);
                match (state.pending.get(id), state.seen.get(id)) {
                    (Some(publishing), _) => publishing.clone(),
                    (None, Some(seen)) if seen.digest != digest => {
                        return Verdict::Conflict {
                            accepted: seen.accepted,
                        }
                    }
                    (None, Some(seen)) if seen.accepted => return Verdict::Duplicate,
                    // New, or attempted with this content: (re)write it.
                    _ => {
                        let (tx, rx) = watch::channel(());
                        // One copy of the id, shared by the maps and the claim.
                        let id: Arc<str> = Arc::from(id);
                        state.pending.insert(id.clone(), rx);
                        return Verdict::Fresh(Claim {
                            state: self.state.clone(),
                            id,
                            digest,
                            outcome: ClaimOutcome::Attempted,
                            _publishing: tx,
                        });
                    }
                }
            };
            // Nothing is ever sent: this returns when the claim is dropped, accepted or not.
            let _ = publishing.changed().await;
        }
    }

    /// How long an accepted id is remembered.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Ids remembered now (accepted or attempted).
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.seen.len()
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

/// The right to publish an id, held while it is published. [`Claim::accept`] records the id as
/// accepted; dropping the claim otherwise records it as attempted. Either way, requests waiting
/// for it go on.
#[derive(Debug)]
pub struct Claim {
    state: Arc<Mutex<State>>,
    id: Arc<str>,
    digest: ContentDigest,
    outcome: ClaimOutcome,
    /// Dropped with the claim, after `pending` no longer names the id: wakes the waiters.
    _publishing: watch::Sender<()>,
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
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.outcome {
            ClaimOutcome::Accepted => state.record(&self.id, self.digest, true),
            ClaimOutcome::Attempted => state.record(&self.id, self.digest, false),
            ClaimOutcome::NothingWritten => {
                state.pending.remove(&*self.id);
            }
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
