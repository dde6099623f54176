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

/// A reconciliation up to a time clears the misses counted at or before it, never a later one,
/// and the time of the last miss survives a restart.
#[tokio::test]
async fn misses_are_cleared_only_through_the_reconciled_time() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_messages: Some(1),
        max_age: None,
    };
    let store = HandoffStore::open(dir.path()).unwrap();
    let b = store.backlog("kafka", limits).unwrap();
    b.append(&msg(0)).await.unwrap();
    assert!(b.append(&msg(1)).await.is_err(), "full: a miss");
    let missed_at = b.last_missed_at().expect("the miss has a time");
    assert!(b.needs_reconciliation());

    assert!(
        !b.reset_missed_through(missed_at - 1).await.unwrap(),
        "a reconciliation before the miss does not cover it"
    );
    assert_eq!(b.missed(), 1);
    drop(b);
    drop(store);

    let store = HandoffStore::open(dir.path()).unwrap();
    let b = store.backlog("kafka", limits).unwrap();
    assert_eq!(b.last_missed_at(), Some(missed_at), "kept across a restart");
    assert!(b.reset_missed_through(missed_at).await.unwrap());
    assert_eq!(b.missed(), 0);
    assert!(!b.needs_reconciliation());
}

/// A miss counted without a backlog entry (a broker refused the message for good) carries its
/// time too: a reconciliation through an earlier time never clears it, one through its time does.
#[tokio::test]
async fn a_counted_miss_has_its_time_and_a_later_one_outlives_an_earlier_reconciliation() {
    let dir = tempfile::tempdir().unwrap();
    let store = HandoffStore::open(dir.path()).unwrap();
    let b = store.backlog("kafka", Limits::default()).unwrap();
    b.count_missed(1).await.unwrap();
    let first = b.last_missed_at().expect("a counted miss has a time");
    assert!(b.reset_missed_through(first).await.unwrap(), "reconciled");
    assert!(!b.needs_reconciliation());

    // The clock must move on so that the second miss is later than the reconciliation.
    while crate::handoff::now_millis() <= first {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    b.count_missed(1).await.unwrap();
    let second = b.last_missed_at().expect("the new miss has a time");
    assert!(second > first, "{second} > {first}");
    assert!(
        !b.reset_missed_through(first).await.unwrap(),
        "the earlier reconciliation does not cover the new miss"
    );
    assert!(b.needs_reconciliation());
}

/// Every provider the file holds a backlog for is found, the ones no composite opened in this
/// process included, without touching the limits of one that is open.
#[tokio::test]
async fn backlogs_on_disk_lists_every_provider() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_messages: Some(7),
        max_age: None,
    };
    {
        let store = HandoffStore::open(dir.path()).unwrap();
        let nats = store.backlog("nats", Limits::default()).unwrap();
        for i in 0..3 {
            nats.append(&msg(i)).await.unwrap();
        }
    }
    let store = HandoffStore::open(dir.path()).unwrap();
    let kafka = store.backlog("kafka", limits).unwrap();
    kafka.append(&msg(9)).await.unwrap();
    let mut found: Vec<(String, u64)> = store
        .backlogs_on_disk()
        .unwrap()
        .iter()
        .map(|b| (b.provider().to_string(), b.len()))
        .collect();
    found.sort();
    assert_eq!(found, [("kafka".to_string(), 1), ("nats".to_string(), 3)]);
    assert_eq!(kafka.limits(), limits, "limits untouched");
}
