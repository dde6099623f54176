//! Tests of the circuit breaker through the composite, on paused time: it opens after
//! `FAILURES_TO_OPEN` failures or when health says unreachable, refuses at once while open, lets
//! one probe through at a time (at most one a second while health says down), and closes on an
//! acknowledged write.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tokio::time::Instant;

use super::*;
use crate::provider::{BatchError, MessageStream};
use crate::testing::{numbered, FakeProvider};

fn one(provider: Arc<FakeProvider>, strategy: Strategy) -> Composite {
    super::tests::composite(vec![provider], strategy)
}

fn breaker_refused(e: &PublishError) -> bool {
    e.to_string().contains("circuit breaker open since")
}

/// Opens `c`'s breaker on `p` with `FAILURES_TO_OPEN` fast failures.
async fn open_with_failures(c: &Composite, p: &FakeProvider) {
    p.fail.store(true, Ordering::SeqCst);
    for i in 0..FAILURES_TO_OPEN as usize {
        let e = c.publish_detailed(&numbered(i)).await.unwrap_err();
        assert!(!breaker_refused(&e), "write {i} reached the provider: {e}");
    }
    assert_eq!(
        c.stats_detailed().providers[0].breaker.state,
        BreakerState::Open
    );
}

#[tokio::test(start_paused = true)]
async fn after_n_timeouts_fail_fast_fails_at_once_naming_the_provider() {
    // Each write outlasts the 5 s deadline.
    let slow = FakeProvider::named("slow").delay_ms(60_000).arc();
    let c = one(slow.clone(), Strategy::FailFast);
    for i in 0..FAILURES_TO_OPEN as usize {
        let started = Instant::now();
        let e = c.publish_detailed(&numbered(i)).await.unwrap_err();
        assert_eq!(
            started.elapsed(),
            c.publish_timeout(),
            "the timeout bounds the first failures"
        );
        assert!(e.to_string().contains("no acknowledgement"), "{e}");
    }
    let started = Instant::now();
    let e = c.publish_detailed(&numbered(9)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    assert!(breaker_refused(&e), "{e}");
    assert_eq!(e.failed_providers(), ["slow"]);
    assert_eq!(
        slow.started().len(),
        FAILURES_TO_OPEN as usize,
        "not written"
    );
    let row = &c.stats_detailed().providers[0];
    assert_eq!(
        (row.breaker.state, row.breaker.refused),
        (BreakerState::Open, 1)
    );
    assert!(row.breaker.since.is_some());
    assert!(row
        .breaker
        .reason
        .as_deref()
        .unwrap()
        .contains("3 writes in a row failed"));
    // Readiness follows health (still up: the provider only timed out), not the breaker: a
    // relay kept out of its Service would never be sent the write that closes the breaker.
    assert!(slow.health().healthy);
    c.readiness().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_message_specific_failure_does_not_open_it() {
    let picky = FakeProvider::named("picky").rejecting_everything().arc();
    let c = one(picky.clone(), Strategy::FailFast);
    for i in 0..5 {
        let e = c.publish_detailed(&numbered(i)).await.unwrap_err();
        assert!(!breaker_refused(&e), "{e}");
    }
    assert_eq!(
        c.stats_detailed().providers[0].breaker.state,
        BreakerState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn one_probe_a_second_while_down_and_its_success_closes_it() {
    let p = FakeProvider::named("p").arc();
    let c = one(p.clone(), Strategy::FailFast);
    open_with_failures(&c, &p).await;
    let written = || p.started().len();
    let before = written();
    // Inside the probe interval: refused, nothing written.
    tokio::time::advance(BREAKER_PROBE_INTERVAL / 2).await;
    assert!(breaker_refused(
        &c.publish_detailed(&numbered(10)).await.unwrap_err()
    ));
    assert_eq!(written(), before);
    // After it: one probe goes through (and fails: still down), then refused again.
    tokio::time::advance(BREAKER_PROBE_INTERVAL / 2).await;
    let e = c.publish_detailed(&numbered(11)).await.unwrap_err();
    assert!(!breaker_refused(&e), "the probe reached the provider: {e}");
    assert_eq!(written(), before + 1);
    assert!(breaker_refused(
        &c.publish_detailed(&numbered(12)).await.unwrap_err()
    ));
    assert_eq!(
        c.stats_detailed().providers[0].breaker.state,
        BreakerState::Open
    );
    // The provider is back (its health says up): the next write is a probe, and it closes.
    p.fail.store(false, Ordering::SeqCst);
    tokio::time::advance(breaker::HEALTH_RECHECK).await;
    c.publish_detailed(&numbered(13)).await.unwrap();
    let row = &c.stats_detailed().providers[0];
    assert_eq!(
        (row.breaker.state, row.breaker.consecutive_failures),
        (BreakerState::Closed, 0)
    );
    c.publish_detailed(&numbered(14)).await.unwrap();
    c.readiness().unwrap();
}

#[tokio::test(start_paused = true)]
async fn no_probe_storm_under_concurrency() {
    let p = FakeProvider::named("p").arc();
    let c = one(p.clone(), Strategy::FailFast);
    open_with_failures(&c, &p).await;
    let before = p.started().len();
    p.hang.store(true, Ordering::SeqCst);
    tokio::time::advance(BREAKER_PROBE_INTERVAL).await;
    let started = Instant::now();
    let msgs: Vec<DataMessage> = (100..150).map(numbered).collect();
    let results = futures::future::join_all(msgs.iter().map(|m| c.publish_detailed(m))).await;
    let refused = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(breaker_refused))
        .count();
    assert_eq!(refused, 49, "all but the probe refused");
    assert_eq!(
        p.started().len(),
        before + 1,
        "one probe reached the provider"
    );
    assert_eq!(
        started.elapsed(),
        c.publish_timeout(),
        "only the probe waited"
    );
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_frees_the_probe_slot() {
    let p = FakeProvider::named("p").arc();
    let c = one(p.clone(), Strategy::FailFast);
    open_with_failures(&c, &p).await;
    p.hang.store(true, Ordering::SeqCst);
    tokio::time::advance(BREAKER_PROBE_INTERVAL).await;
    // The probe's request goes away (a client disconnect drops its future).
    let msg = numbered(20);
    let probe = c.publish_detailed(&msg);
    assert!(tokio::time::timeout(Duration::from_millis(10), probe)
        .await
        .is_err());
    assert_eq!(
        c.stats_detailed().providers[0].breaker.state,
        BreakerState::Open
    );
    p.hang.store(false, Ordering::SeqCst);
    p.fail.store(false, Ordering::SeqCst);
    tokio::time::advance(BREAKER_PROBE_INTERVAL).await;
    c.publish_detailed(&numbered(21)).await.unwrap();
    assert_eq!(
        c.stats_detailed().providers[0].breaker.state,
        BreakerState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_refused_at_once_while_open() {
    let p = FakeProvider::named("p").arc();
    let c = one(p.clone(), Strategy::FailFast);
    open_with_failures(&c, &p).await;
    let before = p.started().len();
    let results = c
        .publish_batch_detailed(&(30..35).map(numbered).collect::<Vec<_>>())
        .await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(breaker_refused)));
    assert_eq!(p.started().len(), before);
}

/// A provider whose health says its broker is unreachable (as NATS says `Disconnected`), though
/// a write would still be tried.
struct Unreachable(Arc<FakeProvider>);

#[async_trait]
impl Provider for Unreachable {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn kind(&self) -> crate::provider::ProviderKind {
        Provider::kind(&*self.0)
    }
    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        self.0.publish(msg).await
    }
    async fn publish_batch(&self, msgs: &[DataMessage]) -> Result<(), BatchError> {
        self.0.publish_batch(msgs).await
    }
    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        self.0.subscribe().await
    }
    fn stats(&self) -> crate::provider::Stats {
        self.0.stats()
    }
    fn health(&self) -> Health {
        Health::down(
            "Disconnected",
            "lost the connection to nats://x; reconnecting",
        )
    }
    async fn close(&self) -> Result<(), ProviderError> {
        self.0.close().await
    }
}

#[tokio::test(start_paused = true)]
async fn health_that_says_unreachable_opens_it_before_any_write() {
    let inner = FakeProvider::named("nats").delay_ms(60_000).arc();
    let c = super::tests::composite(
        vec![
            Arc::new(Unreachable(inner.clone())),
            FakeProvider::named("kafka").arc(),
        ],
        Strategy::FailFast,
    );
    let started = Instant::now();
    let e = c.publish_detailed(&numbered(0)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(
        breaker_refused(&e) && e.to_string().contains("Disconnected"),
        "{e}"
    );
    assert_eq!(e.failed_providers(), ["nats"]);
    assert!(inner.started().is_empty());
}

#[tokio::test(start_paused = true)]
async fn best_effort_defers_to_the_backlog_at_once_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let inner = FakeProvider::named("nats").delay_ms(60_000).arc();
    let good = FakeProvider::named("kafka").arc();
    let c = super::tests::with_handoff(
        vec![Arc::new(Unreachable(inner.clone())), good.clone()],
        Strategy::BestEffort,
        dir.path(),
    );
    let started = Instant::now();
    let report = c.publish_detailed(&numbered(0)).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "deferred at once, not after the timeout"
    );
    assert_eq!(
        (report.accepted.as_slice(), report.deferred.as_slice()),
        (&["kafka".to_string()][..], &["nats".to_string()][..])
    );
    assert_eq!(c.stats_detailed().providers[0].stats.backlog, 1);
    // Without a backlog, BestEffort still answers at once, counting the miss.
    let c = super::tests::composite(
        vec![Arc::new(Unreachable(inner.clone())), good.clone()],
        Strategy::BestEffort,
    );
    let report = c.publish_detailed(&numbered(1)).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(report.failed.len(), 1);
    assert!(inner.started().is_empty());
}

#[tokio::test(start_paused = true)]
async fn fail_fast_writes_no_provider_while_another_is_known_down() {
    let down = FakeProvider::named("down").arc();
    let good = FakeProvider::named("good").arc();
    let c = super::tests::composite(vec![down.clone(), good.clone()], Strategy::FailFast);
    open_with_failures(&c, &down).await;
    let before = good.started().len();
    // Inside the probe interval: refused before any write, single and batch alike.
    let e = c.publish_detailed(&numbered(10)).await.unwrap_err();
    assert!(breaker_refused(&e), "{e}");
    assert_eq!(e.failed_providers(), ["down"]);
    let batch: Vec<_> = (20..25).map(numbered).collect();
    for r in c.publish_batch_detailed(&batch).await {
        assert!(breaker_refused(&r.unwrap_err()));
    }
    assert_eq!(
        good.started().len(),
        before,
        "the healthy provider was written for a message answered 503"
    );
    // A probe is due: the message is written (the probe goes to the provider that is down).
    tokio::time::advance(BREAKER_PROBE_INTERVAL).await;
    let _ = c.publish_detailed(&numbered(30)).await;
    assert_eq!(down.started().len(), FAILURES_TO_OPEN as usize + 1);
}
