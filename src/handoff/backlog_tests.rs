//! Tests of the backlog handle: order, limits, missed counting, age.

use super::*;
use crate::handoff::HandoffStore;
use crate::testing::{ids, numbered as msg};

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
