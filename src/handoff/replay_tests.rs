//! Tests of the replay task: order, pipelining, drops of what can never be delivered, prompt
//! stop. They run on real time (the redb writer is a thread), with deadlines, never sleeps.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::*;
use crate::handoff::store::table_def;
use crate::handoff::{HandoffStore, Limits};
use crate::testing::{ids, numbered as msg, FakeProvider};

/// A provider that fails until `fail` is cleared, then records the ids it receives, in order.
fn flaky(healthy: bool) -> Arc<FakeProvider> {
    FakeProvider::named("flaky").failing_if(!healthy).arc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_in_order_after_the_provider_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = HandoffStore::open(dir.path()).unwrap();
    let b = store.backlog("flaky", Limits::default()).unwrap();
    let provider = flaky(false);
    let appended: Vec<String> = (0..5).map(|i| msg(i).id).collect();
    for i in 0..5 {
        b.append(&msg(i)).await.unwrap();
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(
        Arc::clone(&b),
        provider.clone(),
        Duration::from_secs(1),
        stop.clone(),
    ));
    provider
        .wait_until("replay tried and failed", |p| {
            p.attempts.load(Ordering::SeqCst) >= 2
        })
        .await;
    assert_eq!(b.len(), 5, "nothing removed while the provider fails");
    provider.fail.store(false, Ordering::SeqCst);
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

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
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
    let provider = FakeProvider::named("pipelined")
        .delay_ms(5)
        .rejecting([msg(3).id])
        .arc();
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(
        Arc::clone(&b),
        provider.clone(),
        Duration::from_secs(5),
        stop.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let notified = provider.changed();
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
    let started = provider.started();
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
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn replay_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let store = HandoffStore::open(dir.path()).unwrap();
    let prompt = Duration::from_secs(1);

    // Idle (empty backlog).
    let b = store.backlog("idle", Limits::default()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(
        b,
        flaky(true),
        Duration::from_secs(60),
        stop.clone(),
    ));
    tokio::task::yield_now().await;
    stop.cancel();
    tokio::time::timeout(prompt, task).await.unwrap().unwrap();

    // Backing off from a failing provider (backoff would reach 5 s).
    let b = store.backlog("failing", Limits::default()).unwrap();
    b.append(&msg(0)).await.unwrap();
    let provider = flaky(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(
        Arc::clone(&b),
        provider.clone(),
        Duration::from_secs(60),
        stop.clone(),
    ));
    provider
        .wait_until("two attempts", |p| p.attempts.load(Ordering::SeqCst) >= 2)
        .await;
    stop.cancel();
    tokio::time::timeout(prompt, task).await.unwrap().unwrap();
    assert_eq!(b.len(), 1, "an unacknowledged message stays");

    // In the middle of a publish that never answers (publish timeout far away).
    let provider = flaky(true);
    provider.hang.store(true, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(
        Arc::clone(&b),
        provider,
        Duration::from_secs(60),
        stop.clone(),
    ));
    tokio::task::yield_now().await;
    stop.cancel();
    tokio::time::timeout(prompt, task).await.unwrap().unwrap();

    // The owner going away (dropping its guard of the token, as a dropped composite does)
    // counts as stop.
    let stop = CancellationToken::new();
    let owner = stop.clone().drop_guard();
    let task = tokio::spawn(replay(b, flaky(false), Duration::from_secs(60), stop));
    drop(owner);
    tokio::time::timeout(prompt, task).await.unwrap().unwrap();
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

    let provider = flaky(true);
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(
        Arc::clone(&b),
        provider.clone(),
        Duration::from_secs(5),
        stop.clone(),
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
    stop.cancel();
    task.await.unwrap();
}

/// Issue 11: message 5 of a window fails once and 6–64 are fine. Replay resends from message 5
/// in order, so the broker holds the stretch in ingest order (before, the window was 64
/// concurrent publishes: 6–64 were stored, and 5 landed after them on the retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_inside_a_window_does_not_reorder_the_replayed_stretch() {
    let dir = tempfile::tempdir().unwrap();
    let store = HandoffStore::open(dir.path()).unwrap();
    let b = store.backlog("ordered", Limits::default()).unwrap();
    let n = REPLAY_WINDOW * 2;
    for i in 0..n {
        b.append(&msg(i)).await.unwrap();
    }
    let provider = FakeProvider::named("ordered")
        .delay_ms(2)
        // Each failure takes a while to show (a publish waiting for a reconnect): the rest of
        // the window does not wait for it.
        .failing_once([msg(5).id, msg(REPLAY_WINDOW + 9).id], 200)
        .arc();
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(
        Arc::clone(&b),
        provider.clone(),
        Duration::from_secs(5),
        stop.clone(),
    ));
    provider
        .wait_until("the whole stretch stored", |p| p.stored().len() >= n)
        .await;
    let ingest_order: Vec<String> = (0..n).map(|i| msg(i).id).collect();
    assert_eq!(provider.stored(), ingest_order, "stored in ingest order");
    assert!(
        provider.max_in_flight.load(Ordering::SeqCst) > 1,
        "still pipelined"
    );
    stop.cancel();
    task.await.unwrap();
    assert_eq!(b.missed(), 0);
}
