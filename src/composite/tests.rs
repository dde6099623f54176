//! Tests of the fan-out and its lanes: concurrency, strategies, deadlines, close and drain
//! (on paused time where timing is asserted), and hinted handoff through real backlogs.

use std::sync::atomic::Ordering;

use super::*;
use crate::provider::memory::MemoryProvider;
use crate::testing::FakeProvider;

/// A provider that waits `delay_ms`, then fails (while `fail` is set) or acknowledges.
fn scripted(name: &str, delay_ms: u64, fail: bool) -> Arc<FakeProvider> {
    FakeProvider::named(name)
        .delay_ms(delay_ms)
        .failing_if(fail)
        .arc()
}

pub(super) fn composite(providers: Vec<Arc<dyn Provider>>, strategy: Strategy) -> Composite {
    Composite::new(providers, strategy, Duration::from_secs(5)).unwrap()
}

// S9, first half: two memory providers + FailFast → the message is in both (seen through stats).
#[tokio::test]
async fn fail_fast_writes_to_both_memory_providers() {
    let a = Arc::new(MemoryProvider::new("a", 10));
    let b = Arc::new(MemoryProvider::new("b", 10));
    let c = composite(vec![a.clone(), b.clone()], Strategy::FailFast);
    let report = c
        .publish_detailed(&DataMessage::new("test", "x"))
        .await
        .unwrap();
    assert_eq!(report.accepted.len(), 2);
    assert_eq!(a.stats().published, 1);
    assert_eq!(b.stats().published, 1);
    assert_eq!(a.stats().depth, 1);
    assert_eq!(b.stats().depth, 1);
    let stats = c.stats_detailed();
    assert_eq!(stats.total.published, 2);
    assert_eq!(
        stats
            .providers
            .iter()
            .map(|r| (r.name.as_str(), r.stats.published))
            .collect::<Vec<_>>(),
        vec![("a", 1), ("b", 1)]
    );
}

// S9, second half: one provider always fails + BestEffort → publish succeeds, failure counted.
#[tokio::test]
async fn best_effort_succeeds_when_one_provider_always_fails() {
    let good = Arc::new(MemoryProvider::new("good", 10));
    let bad = scripted("bad", 0, true);
    let c = composite(vec![good.clone(), bad.clone()], Strategy::BestEffort);
    let report = c
        .publish_detailed(&DataMessage::new("test", "x"))
        .await
        .unwrap();
    assert_eq!(report.accepted, vec!["good".to_string()]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].provider(), "bad");
    assert_eq!(good.stats().published, 1);
    assert_eq!(bad.stats().failed, 1);
    assert_eq!(c.stats().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn writes_run_concurrently() {
    let c = composite(
        vec![scripted("a", 200, false), scripted("b", 200, false)],
        Strategy::FailFast,
    );
    let started = tokio::time::Instant::now();
    c.publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap();
    // Sequential writes would take 400 ms of virtual time.
    assert_eq!(started.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_returns_the_first_failure_at_once_and_names_it() {
    let c = composite(
        vec![scripted("slow", 1_000, false), scripted("broken", 10, true)],
        Strategy::FailFast,
    );
    let started = tokio::time::Instant::now();
    let err = c
        .publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(10),
        "did not wait for the slow one"
    );
    assert_eq!(err.failed_providers(), vec!["broken".to_string()]);
    assert!(err.to_string().contains("broken"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn best_effort_waits_for_all_and_fails_when_none_accepted() {
    let c = composite(
        vec![scripted("x", 50, true), scripted("y", 300, true)],
        Strategy::BestEffort,
    );
    let started = tokio::time::Instant::now();
    let err = c
        .publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    let mut names = err.failed_providers();
    names.sort();
    assert_eq!(names, vec!["x".to_string(), "y".to_string()]);
    assert!(matches!(err, PublishError::AllFailed(_)));
}

#[tokio::test(start_paused = true)]
async fn a_hung_provider_becomes_a_timeout_error_naming_it() {
    let c = Composite::new(
        vec![scripted("hung", 3_600_000, false), scripted("ok", 0, false)],
        Strategy::FailFast,
        Duration::from_millis(250),
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let err = c
        .publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert!(
        matches!(err, PublishError::Failed(ProviderError::Timeout { ref provider, .. }) if provider == "hung")
    );
    assert_eq!(c.stats_detailed().providers[0].timeouts, 1);
}

#[tokio::test]
async fn strategy_switch_applies_to_the_next_publish() {
    let c = composite(
        vec![
            Arc::new(MemoryProvider::new("m", 10)),
            scripted("bad", 0, true),
        ],
        Strategy::FailFast,
    );
    assert!(c
        .publish_detailed(&DataMessage::new("t", "1"))
        .await
        .is_err());
    assert!(c.readiness().is_err());
    c.set_strategy(Strategy::BestEffort);
    assert!(c
        .publish_detailed(&DataMessage::new("t", "2"))
        .await
        .is_ok());
    assert!(c.readiness().is_ok());
}

#[tokio::test]
async fn subscribe_reads_the_first_provider() {
    let a = Arc::new(MemoryProvider::new("a", 10));
    let b = Arc::new(MemoryProvider::new("b", 10));
    let c = composite(vec![a.clone(), b.clone()], Strategy::FailFast);
    let msg = DataMessage::new("t", "x");
    c.publish(&msg).await.unwrap();
    let mut s = c.subscribe().await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), msg);
    assert_eq!(a.stats().consumed, 1);
    assert_eq!(b.stats().consumed, 0);
}

#[tokio::test]
async fn merged_subscribe_delivers_each_id_once() {
    let a = Arc::new(MemoryProvider::new("a", 10));
    let b = Arc::new(MemoryProvider::new("b", 10));
    let c = composite(vec![a.clone(), b.clone()], Strategy::BestEffort);
    let both = DataMessage::new("t", "both");
    c.publish(&both).await.unwrap();
    // One message only on b (as after a failed write to a).
    let only_b = DataMessage::new("t", "only-b");
    b.publish(&only_b).await.unwrap();
    c.close().await.unwrap(); // the memory streams end once drained
    let mut ids: Vec<String> = c
        .subscribe_merged()
        .await
        .unwrap()
        .map(|m| m.unwrap().id)
        .collect()
        .await;
    ids.sort();
    let mut expected = vec![both.id, only_b.id];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        a.stats().consumed + b.stats().consumed,
        3,
        "the duplicate was read, then dropped"
    );
}

#[tokio::test]
async fn close_closes_every_provider_once_and_later_publishes_fail() {
    let a = scripted("a", 0, false);
    let b = scripted("b", 0, false);
    let c = composite(vec![a.clone(), b.clone()], Strategy::FailFast);
    c.close().await.unwrap();
    c.close().await.unwrap();
    assert_eq!(a.closes.load(Ordering::Relaxed), 1);
    assert_eq!(b.closes.load(Ordering::Relaxed), 1);
    assert_eq!(
        c.publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap_err(),
        PublishError::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_in_flight_publishes() {
    let c = Arc::new(composite(
        vec![scripted("slow", 100, false)],
        Strategy::FailFast,
    ));
    let publisher = {
        let c = c.clone();
        tokio::spawn(async move { c.publish_detailed(&DataMessage::new("t", "x")).await })
    };
    tokio::task::yield_now().await; // let the publish start
    let started = tokio::time::Instant::now();
    c.drain().await;
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert!(publisher.await.unwrap().is_ok());
}

pub(super) fn with_handoff(
    providers: Vec<Arc<dyn Provider>>,
    strategy: Strategy,
    dir: &std::path::Path,
) -> Composite {
    let store = crate::handoff::HandoffStore::open(dir).unwrap();
    let backlogs = providers
        .iter()
        .map(|p| {
            (
                p.name().to_string(),
                store.backlog(p.name(), Default::default()).unwrap(),
            )
        })
        .collect();
    composite(providers, strategy).with_backlogs(backlogs)
}

#[tokio::test]
async fn best_effort_keeps_missed_writes_and_replays_them_in_ingest_order() {
    let dir = tempfile::tempdir().unwrap();
    let good = scripted("good", 0, false);
    let flaky = scripted("flaky", 0, true);
    let c = with_handoff(
        vec![good.clone(), flaky.clone()],
        Strategy::BestEffort,
        dir.path(),
    );
    let ids: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for id in &ids[..3] {
        let mut m = DataMessage::new("t", "x");
        m.id = id.clone();
        let report = c.publish_detailed(&m).await.unwrap();
        assert_eq!(report.accepted, ["good"]);
        assert_eq!(report.deferred, ["flaky"]);
    }
    assert_eq!(c.stats_detailed().providers[1].stats.backlog, 3);
    flaky.fail.store(false, Ordering::Release);
    // While flaky still has a backlog, new messages for it go behind the backlog.
    for id in &ids[3..] {
        let mut m = DataMessage::new("t", "x");
        m.id = id.clone();
        let report = c.publish_detailed(&m).await.unwrap();
        assert_eq!(report.deferred, ["flaky"], "goes behind the backlog");
    }
    c.start_replay();
    flaky.wait_for(5).await;
    assert_eq!(
        flaky.received(),
        ids,
        "flaky received every message in ingest order"
    );
    assert_eq!(good.received(), ids);
    c.close_all().await.unwrap();
    assert_eq!(c.stats_detailed().providers[1].stats.backlog, 0);
}

#[tokio::test]
async fn a_composite_dropped_without_close_stops_its_replayers() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = scripted("flaky", 0, true);
    let c = with_handoff(vec![flaky.clone()], Strategy::BestEffort, dir.path());
    c.start_replay();
    let held = Arc::strong_count(&flaky);
    assert!(
        held >= 3,
        "the test, the lane and the replayer hold it: {held}"
    );
    drop(c);
    // The replay task owns the last other reference: it is gone once the task has stopped.
    let stopped = async {
        while Arc::strong_count(&flaky) > 1 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the replayer stopped when its composite was dropped");
}

#[tokio::test]
async fn closing_with_grace_lets_the_replay_empty_the_backlogs_first() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = scripted("flaky", 0, true);
    let c = with_handoff(
        vec![scripted("good", 0, false), flaky.clone()],
        Strategy::BestEffort,
        dir.path(),
    );
    c.start_replay();
    let mut m = DataMessage::new("t", "x");
    m.id = "kept".into();
    assert_eq!(c.publish_detailed(&m).await.unwrap().deferred, ["flaky"]);
    flaky.fail.store(false, Ordering::Release);
    c.close_with_grace(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        flaky.received(),
        ["kept"],
        "delivered before the providers closed"
    );
    assert_eq!(flaky.closes.load(Ordering::Relaxed), 1);
    assert_eq!(c.stats_detailed().providers[1].stats.backlog, 0);
}

// Issue 11 item 6: by default a 202 needs a broker's acknowledgement; a message no broker
// acknowledged is refused and nothing of it is kept (it would appear later, after a 503).
#[tokio::test]
async fn best_effort_with_every_broker_down_is_refused_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = with_handoff(
        vec![scripted("x", 0, true), scripted("y", 0, true)],
        Strategy::BestEffort,
        dir.path(),
    );
    assert_eq!(c.acceptance(), Acceptance::BrokerAck, "the default");
    let err = c
        .publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::AllFailed(ref e) if e.len() == 2),
        "{err}"
    );
    assert!(err.to_string().contains("no broker acknowledged"), "{err}");
    let rows = c.stats_detailed().providers;
    assert_eq!(
        rows.iter().map(|r| r.stats.backlog).collect::<Vec<_>>(),
        [0, 0],
        "a refused message is not left in a backlog to appear later"
    );
    assert!(
        rows.iter()
            .all(|r| r.missed == 0 && !r.needs_reconciliation),
        "a refused message is nobody's miss"
    );
    // Without handoff the same publish fails too.
    let bare = composite(vec![scripted("x", 0, true)], Strategy::BestEffort);
    assert!(matches!(
        bare.publish_detailed(&DataMessage::new("t", "x")).await,
        Err(PublishError::AllFailed(_))
    ));
}

// Item 6: a message behind a replaying backlog, with no broker acknowledging it, is refused
// too, and the backlog does not grow.
#[tokio::test]
async fn behind_a_backlog_with_no_broker_ack_the_message_is_refused_and_not_appended() {
    let dir = tempfile::tempdir().unwrap();
    let good = scripted("good", 0, false);
    let flaky = scripted("flaky", 0, true);
    let c = with_handoff(
        vec![good.clone(), flaky.clone()],
        Strategy::BestEffort,
        dir.path(),
    );
    let report = c
        .publish_detailed(&DataMessage::new("t", "1"))
        .await
        .unwrap();
    assert_eq!(
        (report.accepted, report.deferred),
        (vec!["good".into()], vec!["flaky".into()])
    );
    // Now good is down, and flaky is back but still has its backlog (no replay running).
    good.fail.store(true, Ordering::Release);
    flaky.fail.store(false, Ordering::Release);
    let err = c
        .publish_detailed(&DataMessage::new("t", "2"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still replaying"), "{err}");
    assert_eq!(
        c.stats_detailed().providers[1].stats.backlog,
        1,
        "only the accepted message"
    );
}

// Item 6: acceptance on the relay's disk alone is an explicit option.
#[tokio::test]
async fn relay_disk_acceptance_accepts_a_message_only_the_backlogs_hold() {
    let dir = tempfile::tempdir().unwrap();
    let c = with_handoff(
        vec![scripted("x", 0, true), scripted("y", 0, true)],
        Strategy::BestEffort,
        dir.path(),
    )
    .with_acceptance(Acceptance::RelayDisk);
    let report = c
        .publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap();
    assert!(report.accepted.is_empty());
    assert_eq!(report.deferred.len(), 2, "held durably for both");
    let stats = c.stats_detailed();
    assert_eq!(stats.acceptance, Acceptance::RelayDisk);
    assert_eq!(
        stats
            .providers
            .iter()
            .map(|r| r.stats.backlog)
            .collect::<Vec<_>>(),
        [1, 1]
    );
    // Without a backlog even RelayDisk has nowhere to keep it.
    let bare = composite(vec![scripted("x", 0, true)], Strategy::BestEffort)
        .with_acceptance(Acceptance::RelayDisk);
    assert!(matches!(
        bare.publish_detailed(&DataMessage::new("t", "x")).await,
        Err(PublishError::AllFailed(_))
    ));
}

// Item 2: a message a broker refuses for good is not kept for replay (it would block the
// backlog); since the message was accepted without that provider, it is counted as missed and
// the provider needs reconciliation, persistently.
#[tokio::test]
async fn a_message_a_provider_rejects_for_good_is_counted_as_missed() {
    let rejecting = FakeProvider::named("small")
        .kind(ProviderKind::Nats)
        .rejecting_everything()
        .arc();
    let dir = tempfile::tempdir().unwrap();
    let c = with_handoff(
        vec![scripted("good", 0, false), rejecting],
        Strategy::BestEffort,
        dir.path(),
    );
    let report = c
        .publish_detailed(&DataMessage::new("t", "big"))
        .await
        .unwrap();
    assert_eq!(report.accepted, ["good"]);
    assert!(
        report.deferred.is_empty(),
        "not deferred: it would block the backlog forever"
    );
    assert!(matches!(report.failed[0], ProviderError::Rejected { .. }));
    let row = &c.stats_detailed().providers[1];
    assert_eq!(row.stats.backlog, 0);
    assert_eq!(row.missed, 1);
    assert!(row.needs_reconciliation, "{row:?}");
    let reason = row.reconciliation_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("rejected the message"), "{reason}");
    c.close_all().await.unwrap();
    drop(c);
    // Counted on disk with the backlog's own refusals: it survives a restart.
    let store = crate::handoff::HandoffStore::open(dir.path()).unwrap();
    let backlog = store.backlog("small", Default::default()).unwrap();
    assert_eq!(backlog.missed(), 1);
    assert!(backlog.needs_reconciliation());
}

// Item 2, without hinted handoff: the miss is still counted and marks the provider.
#[tokio::test]
async fn without_a_backlog_a_best_effort_miss_still_marks_the_provider() {
    let c = composite(
        vec![scripted("good", 0, false), scripted("down", 0, true)],
        Strategy::BestEffort,
    );
    c.publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap();
    let row = &c.stats_detailed().providers[1];
    assert_eq!((row.missed, row.needs_reconciliation), (1, true), "{row:?}");
}

// Item 3: a backlog that cannot take a write (disk full) makes that write a failure for the
// strategy: counted, in the row (needsReconciliation with the reason), never a silent skip.
#[tokio::test]
async fn a_backlog_that_cannot_write_fails_the_write_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::handoff::HandoffStore::open(dir.path()).unwrap();
    let good = scripted("good", 0, false);
    let flaky = scripted("flaky", 0, true);
    let providers: Vec<Arc<dyn Provider>> = vec![good.clone(), flaky.clone()];
    let backlogs = providers
        .iter()
        .map(|p| {
            let b = store.backlog(p.name(), Default::default()).unwrap();
            (p.name().to_string(), b)
        })
        .collect();
    let c = composite(providers, Strategy::BestEffort).with_backlogs(backlogs);
    store.fail_writes(true);
    let report = c
        .publish_detailed(&DataMessage::new("t", "x"))
        .await
        .unwrap();
    assert_eq!(report.accepted, ["good"]);
    assert!(report.deferred.is_empty());
    assert_eq!(report.failed.len(), 1);
    let err = report.failed[0].to_string();
    assert!(
        err.contains("flaky") && err.contains("No space left"),
        "{err}"
    );
    let row = &c.stats_detailed().providers[1];
    assert_eq!((row.backlog_errors, row.missed), (1, 1), "{row:?}");
    assert!(row.needs_reconciliation);
    assert!(
        row.reconciliation_reason
            .as_deref()
            .is_some_and(|r| r.contains("backlog could not keep")),
        "{row:?}"
    );
    // With no broker acknowledging either, the publish fails (and it is nobody's miss).
    good.fail.store(true, Ordering::Release);
    assert!(matches!(
        c.publish_detailed(&DataMessage::new("t", "y")).await,
        Err(PublishError::AllFailed(_))
    ));
    assert_eq!(c.stats_detailed().providers[1].missed, 1);
}

// Item 2: a message above the smallest broker limit is refused before any write, naming the
// provider and its limit, under either strategy.
#[tokio::test]
async fn a_message_too_large_for_the_smallest_broker_is_refused_before_any_write() {
    for strategy in [Strategy::FailFast, Strategy::BestEffort] {
        let roomy = FakeProvider::named("roomy").message_limit(10_000).arc();
        let small = FakeProvider::named("small").message_limit(500).arc();
        let unlimited = scripted("memory", 0, false);
        let c = composite(
            vec![roomy.clone(), small.clone(), unlimited.clone()],
            strategy,
        );
        let big = DataMessage::new("t", vec![b'x'; 1_000]);
        let err = c.publish_detailed(&big).await.unwrap_err();
        let PublishError::TooLarge {
            provider,
            size,
            limit,
        } = &err
        else {
            panic!("{strategy}: {err}");
        };
        assert_eq!((provider.as_str(), limit.bytes), ("small", 500));
        assert_eq!(*size, big.to_wire().len() as u64);
        let text = err.to_string();
        assert!(
            text.contains("small") && text.contains("500 bytes"),
            "{text}"
        );
        assert_eq!(err.failed_providers(), ["small"]);
        for p in [&roomy, &small, &unlimited] {
            assert!(p.started().is_empty(), "{strategy}: nothing was written");
        }
        // A message within every limit is written.
        let fits = DataMessage::new("t", vec![b'x'; 200]);
        c.publish_detailed(&fits).await.unwrap();
        assert_eq!(small.received(), vec![fits.id]);
    }
}

#[tokio::test]
async fn fail_fast_refuses_while_a_backlog_is_replaying_rather_than_reorder() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = scripted("flaky", 0, true);
    let c = with_handoff(
        vec![scripted("good", 0, false), flaky.clone()],
        Strategy::BestEffort,
        dir.path(),
    );
    c.publish_detailed(&DataMessage::new("t", "missed"))
        .await
        .unwrap();
    flaky.fail.store(false, Ordering::Release);
    c.set_strategy(Strategy::FailFast);
    let err = c
        .publish_detailed(&DataMessage::new("t", "next"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("replaying 1 missed message"),
        "{err}"
    );
    c.start_replay();
    flaky.wait_for(1).await;
    // Replay finished (remove happens after the ack): wait for the backlog to read empty.
    while c.stats_detailed().providers[1].stats.backlog > 0 {
        tokio::task::yield_now().await;
    }
    assert!(c
        .publish_detailed(&DataMessage::new("t", "after"))
        .await
        .is_ok());
}

#[test]
fn construction_rejects_duplicates_and_empty() {
    let dup = Composite::new(
        vec![scripted("a", 0, false), scripted("a", 0, false)],
        Strategy::FailFast,
        DEFAULT_PUBLISH_TIMEOUT,
    );
    assert!(dup
        .err()
        .unwrap()
        .to_string()
        .contains("\"a\" is used twice"));
    assert!(Composite::new(vec![], Strategy::FailFast, DEFAULT_PUBLISH_TIMEOUT).is_err());
}

/// A provider that writes the wire form, as the broker adapters do, and notes which buffer it
/// was handed.
struct WireProvider {
    name: String,
    wires: std::sync::Mutex<Vec<(usize, usize)>>,
}

#[async_trait]
impl Provider for WireProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ProviderKind {
        ProviderKind::Memory
    }
    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        self.publish_outgoing(&msg.outgoing()).await
    }
    async fn publish_outgoing(&self, msg: &Outgoing<'_>) -> Result<(), ProviderError> {
        let wire = msg.wire();
        self.wires
            .lock()
            .unwrap()
            .push((wire.as_ptr() as usize, wire.len()));
        Ok(())
    }
    fn message_limit(&self) -> Option<MessageLimit> {
        Some(MessageLimit {
            bytes: 1 << 20,
            setting: "test".into(),
        })
    }
    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        Ok(futures::stream::empty().boxed())
    }
    fn stats(&self) -> Stats {
        Stats::default()
    }
    fn health(&self) -> Health {
        Health::up("Connected", "test")
    }
    async fn close(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

// The wire JSON is built once per message and shared by every provider (and the size check),
// not once per provider.
#[tokio::test]
async fn one_wire_encoding_serves_every_provider() {
    let providers: Vec<Arc<WireProvider>> = ["a", "b"]
        .into_iter()
        .map(|name| {
            Arc::new(WireProvider {
                name: name.into(),
                wires: Default::default(),
            })
        })
        .collect();
    let c = composite(
        providers
            .iter()
            .map(|p| p.clone() as Arc<dyn Provider>)
            .collect(),
        Strategy::FailFast,
    );
    let msg = DataMessage::new("test", "x");
    c.publish_detailed(&msg).await.unwrap();
    let a = providers[0].wires.lock().unwrap().clone();
    let b = providers[1].wires.lock().unwrap().clone();
    assert_eq!(a.len(), 1);
    assert_eq!(a, b, "both providers got the same buffer");
    assert_eq!(a[0].1, msg.to_wire().len());
}

/// A provider that bounds its own writes (`publish_deadline`), as the broker adapters do, and
/// answers its own `Timeout` after `answers_after` (a late timer, say).
struct SelfBounded {
    own: Duration,
    answers_after: Duration,
}

#[async_trait]
impl Provider for SelfBounded {
    fn name(&self) -> &str {
        "bounded"
    }
    fn kind(&self) -> ProviderKind {
        ProviderKind::Memory
    }
    fn publish_deadline(&self) -> Option<Duration> {
        Some(self.own)
    }
    async fn publish(&self, _msg: &DataMessage) -> Result<(), ProviderError> {
        tokio::time::sleep(self.answers_after).await;
        Err(ProviderError::Timeout {
            provider: "bounded".into(),
            after: self.own,
        })
    }
    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        Ok(futures::stream::empty().boxed())
    }
    fn stats(&self) -> Stats {
        Stats::default()
    }
    fn health(&self) -> Health {
        Health::up("Connected", "test")
    }
    async fn close(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

// One deadline per write: around a provider that bounds its own writes within the composite's
// deadline, the lane arms no timer of its own (its 250 ms would have cut the 300 ms answer
// short); the provider's Timeout, naming it and its duration, is what the caller gets, and the
// lane still counts it. A provider bounded more loosely still gets the lane's deadline.
#[tokio::test(start_paused = true)]
async fn a_provider_that_bounds_its_writes_gets_no_second_timer() {
    let lane_deadline = Duration::from_millis(250);
    for (own, answers_after, elapsed, after) in [
        (250, 300, 300, 250),   // bounded by itself: its own (late) answer
        (1000, 1000, 250, 250), // bounded more loosely: the lane's deadline
    ] {
        let c = Composite::new(
            vec![Arc::new(SelfBounded {
                own: Duration::from_millis(own),
                answers_after: Duration::from_millis(answers_after),
            })],
            Strategy::FailFast,
            lane_deadline,
        )
        .unwrap();
        let started = tokio::time::Instant::now();
        let err = c
            .publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap_err();
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(elapsed),
            "own {own} ms"
        );
        assert!(
            matches!(err, PublishError::Failed(ProviderError::Timeout { ref provider, after: a })
                if provider == "bounded" && a == Duration::from_millis(after)),
            "own {own} ms: {err:?}"
        );
        assert_eq!(c.stats_detailed().providers[0].timeouts, 1, "own {own} ms");

        // A batch: the same single deadline (the default publish_batch stops at the first
        // message's Timeout, so both messages fail and count).
        let started = tokio::time::Instant::now();
        let msgs = [DataMessage::new("t", "a"), DataMessage::new("t", "b")];
        let results = c.publish_batch_detailed(&msgs).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(elapsed),
            "batch, own {own} ms"
        );
        for r in &results {
            assert!(
                matches!(r, Err(PublishError::Failed(ProviderError::Timeout { after: a, .. }))
                    if *a == Duration::from_millis(after)),
                "batch, own {own} ms: {r:?}"
            );
        }
        assert_eq!(
            c.stats_detailed().providers[0].timeouts,
            3,
            "batch, own {own} ms"
        );
    }
}
