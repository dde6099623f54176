//! Tests of the batch path: one pipelined batch per provider, a decision per message under each
//! strategy, per-provider order behind a backlog.

use std::sync::atomic::Ordering;

use super::*;
use crate::testing::{numbered, FakeProvider};

fn batch(n: usize) -> Vec<DataMessage> {
    (0..n).map(numbered).collect()
}

fn ids(msgs: &[DataMessage]) -> Vec<String> {
    msgs.iter().map(|m| m.id.clone()).collect()
}

fn statuses(results: &[Result<PublishReport, PublishError>]) -> Vec<&'static str> {
    results
        .iter()
        .map(|r| match r {
            Ok(report) if report.deferred.is_empty() => "acked",
            Ok(_) => "deferred",
            Err(_) => "failed",
        })
        .collect()
}

#[tokio::test]
async fn each_provider_gets_the_batch_once_pipelined_in_order() {
    let a = FakeProvider::named("a").delay_ms(5).arc();
    let b = FakeProvider::named("b").arc();
    let c = super::tests::composite(vec![a.clone(), b.clone()], Strategy::FailFast);
    let msgs = batch(5);
    let results = c.publish_batch_detailed(&msgs).await;
    assert_eq!(statuses(&results), ["acked"; 5]);
    for r in &results {
        assert_eq!(r.as_ref().unwrap().accepted, ["a", "b"]);
    }
    assert_eq!(a.stored(), ids(&msgs));
    assert_eq!(b.stored(), ids(&msgs));
    // All five in flight together: one batch, not five round trips.
    assert_eq!(a.max_in_flight.load(Ordering::SeqCst), 5);
    assert_eq!(c.stats_detailed().total.published, 10);
}

#[tokio::test]
async fn fail_fast_accepts_exactly_the_messages_every_provider_acked() {
    let msgs = batch(5);
    // Fails the third message once; the batch stops there (the rest was not acknowledged).
    let third = FakeProvider::named("third")
        .failing_once([msgs[2].id.clone()], 0)
        .arc();
    let good = FakeProvider::named("good").arc();
    let c = super::tests::composite(vec![good.clone(), third.clone()], Strategy::FailFast);
    let results = c.publish_batch_detailed(&msgs).await;
    assert_eq!(
        statuses(&results),
        ["acked", "acked", "failed", "failed", "failed"]
    );
    for r in &results[2..] {
        match r {
            Err(PublishError::Failed(e)) => assert_eq!(e.provider(), "third"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(third.stored(), ids(&msgs[..2]));
}

#[tokio::test]
async fn best_effort_without_backlog_accepts_what_one_broker_acked() {
    let msgs = batch(4);
    let down = FakeProvider::named("down").failing_if(true).arc();
    let third = FakeProvider::named("third")
        .failing_once([msgs[2].id.clone()], 0)
        .arc();
    let c = super::tests::composite(vec![down.clone(), third.clone()], Strategy::BestEffort);
    let results = c.publish_batch_detailed(&msgs).await;
    // Message 2 went nowhere (down always fails, third failed it and stopped): refused; the
    // others were acknowledged by third.
    assert_eq!(statuses(&results), ["acked", "acked", "failed", "failed"]);
    assert!(matches!(results[2], Err(PublishError::AllFailed(_))));
    let ok = results[0].as_ref().unwrap();
    assert_eq!(ok.accepted, ["third"]);
    assert_eq!(ok.failed.len(), 1, "down's failure is reported");
    assert_eq!(c.stats_detailed().providers[0].missed, 2);
}

#[tokio::test]
async fn best_effort_defers_the_failed_rest_in_order_and_replays_it_behind_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let msgs = batch(6);
    let good = FakeProvider::named("good").arc();
    let flaky = FakeProvider::named("flaky")
        .failing_once([msgs[2].id.clone()], 0)
        .arc();
    let c = super::tests::with_handoff(
        vec![good.clone(), flaky.clone()],
        Strategy::BestEffort,
        dir.path(),
    );
    let results = c.publish_batch_detailed(&msgs[..4]).await;
    assert_eq!(
        statuses(&results),
        ["acked", "acked", "deferred", "deferred"]
    );
    assert_eq!(c.stats_detailed().providers[1].stats.backlog, 2);
    // The next batch goes behind the backlog for flaky (not written past it).
    let results = c.publish_batch_detailed(&msgs[4..]).await;
    assert_eq!(statuses(&results), ["deferred", "deferred"]);
    assert_eq!(flaky.stored(), ids(&msgs[..2]));
    c.start_replay();
    flaky.wait_for(6).await;
    assert_eq!(
        flaky.stored(),
        ids(&msgs),
        "flaky got every message in ingest order"
    );
    assert_eq!(good.stored(), ids(&msgs));
    c.close_all().await.unwrap();
}

#[tokio::test]
async fn a_message_too_large_is_refused_alone_and_the_rest_written() {
    let mut msgs = batch(3);
    msgs[1].payload = vec![b'x'; 500].into();
    let small = FakeProvider::named("small").message_limit(300).arc();
    let c = super::tests::composite(vec![small.clone()], Strategy::FailFast);
    let results = c.publish_batch_detailed(&msgs).await;
    assert_eq!(statuses(&results), ["acked", "failed", "acked"]);
    assert!(matches!(results[1], Err(PublishError::TooLarge { .. })));
    assert_eq!(small.stored(), [msgs[0].id.clone(), msgs[2].id.clone()]);
}

#[tokio::test]
async fn a_rejected_message_fails_alone_and_the_batch_goes_on() {
    let msgs = batch(3);
    let picky = FakeProvider::named("picky")
        .rejecting([msgs[1].id.clone()])
        .arc();
    let c = super::tests::composite(vec![picky.clone()], Strategy::FailFast);
    let results = c.publish_batch_detailed(&msgs).await;
    assert_eq!(statuses(&results), ["acked", "failed", "acked"]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_never_answers_fails_at_the_deadline_and_counts_timeouts() {
    let stuck = FakeProvider::named("stuck").arc();
    stuck.hang.store(true, Ordering::SeqCst);
    let c = super::tests::composite(vec![stuck.clone()], Strategy::FailFast);
    let started = tokio::time::Instant::now();
    let results = c.publish_batch_detailed(&batch(3)).await;
    assert_eq!(started.elapsed(), c.publish_timeout());
    assert_eq!(statuses(&results), ["failed"; 3]);
    assert_eq!(c.stats_detailed().providers[0].timeouts, 3);
}
