//! Tests of the store: durability across reopen, the file lock, group commit under concurrency.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use super::*;
use crate::handoff::{now_millis, REPLAY_BATCH};
use crate::message::DataMessage;
use crate::testing::{ids, numbered as msg};

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

/// Cost of a durable append on this machine:
/// `cargo test --release --lib handoff::store::tests::append_cost -- --ignored --nocapture`.
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
