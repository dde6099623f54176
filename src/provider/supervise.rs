//! The background task every broker adapter runs beside its client, and what the NATS and Kafka
//! adapters share about it: a [`Supervisor`] that owns the task and its stop signal, the probe
//! loop skeleton ([`run_probe_loop`]: a round every [`PROBE_INTERVAL`] while the adapter wants
//! one, sooner when kicked, never after the stop signal or close), and the [`EnsureError`] that
//! tells a configuration problem from a passing one when a stream or topic is set up.
//!
//! What a round checks stays in the adapter ([`Probe::round`]): JetStream and Kafka report
//! outages differently, and only the loop around the checks is the same.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How often a supervisor re-checks an unhealthy provider (one broker request per round).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a broker-side resource (connection, stream, topic) could not be set up: a configuration
/// problem that no retry can fix (fail `connect`), or a passing condition (keep the provider,
/// report it unhealthy, retry on the next round).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnsureError {
    Config(String),
    Transient(String),
}

impl EnsureError {
    /// What went wrong, for a health message or a [`ProviderError`](super::ProviderError).
    pub(crate) fn reason(&self) -> &str {
        match self {
            EnsureError::Config(r) | EnsureError::Transient(r) => r,
        }
    }
}

/// A broker provider's background task (late setup, health probes) and the stop signal it shares
/// with the provider's subscription streams. Dropping it cancels the signal, which stops them too.
#[derive(Debug)]
pub struct Supervisor {
    stop: CancellationToken,
    /// std Mutex: only `take()`n in `stop`, never held across an await.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Supervisor {
    /// Spawns `task`, handing it the stop signal.
    pub fn spawn<F>(task: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(task(stop.clone()));
        Self {
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Resolves once the provider stops (closed or dropped), for a subscription stream to end
    /// with it.
    pub fn stopped(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// Signals stop and waits for the task, at most `bound` (then aborts it). Idempotent.
    pub async fn stop(&self, bound: Duration) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut handle) = task {
            if tokio::time::timeout(bound, &mut handle).await.is_err() {
                handle.abort();
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // A provider dropped without `close` must not leave its task or its streams running.
        self.stop.cancel();
    }
}

/// What an adapter's supervisor checks; [`run_probe_loop`] decides when.
pub(crate) trait Probe: Send {
    /// Wakes the loop before its next tick (reconnected, topic lost, fatal error…).
    fn kick(&self) -> &Notify;
    /// The provider was closed: the loop ends.
    fn closed(&self) -> bool;
    /// One round of checks and repairs; it records what it finds in the provider's health.
    /// Cancelled (dropped) as soon as the stop signal fires, so it may await freely.
    fn round(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs `probe` every [`PROBE_INTERVAL`] (ticks missed during a long round are not caught up)
/// and whenever it is kicked, until `stop` fires or the provider is closed. Stops promptly even
/// in the middle of a round.
pub(crate) async fn run_probe_loop(mut probe: impl Probe, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = probe.kick().notified() => {}
            _ = tick.tick() => {}
        }
        if probe.closed() {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = probe.round() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its rounds; the test keeps handles on its kick, counter and closed flag.
    #[derive(Clone, Default)]
    struct Counting {
        kick: Arc<Notify>,
        rounds: Arc<AtomicUsize>,
        closed: Arc<AtomicBool>,
        /// Rounds that never finish, to check that stop cancels a round in progress.
        hang: bool,
    }

    impl Counting {
        fn rounds(&self) -> usize {
            self.rounds.load(Ordering::SeqCst)
        }
    }

    impl Probe for Counting {
        fn kick(&self) -> &Notify {
            &self.kick
        }
        fn closed(&self) -> bool {
            self.closed.load(Ordering::SeqCst)
        }
        async fn round(&mut self) {
            self.rounds.fetch_add(1, Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_follow_the_interval_and_stop_ends_the_loop() {
        let probe = Counting::default();
        let sup = Supervisor::spawn(|stop| run_probe_loop(probe.clone(), stop));
        // The first tick fires at once; then one round per interval.
        tokio::time::sleep(PROBE_INTERVAL * 3 + PROBE_INTERVAL / 2).await;
        assert_eq!(probe.rounds(), 4);
        let stopped = sup.stopped();
        sup.stop(Duration::from_secs(1)).await;
        stopped.await;
        tokio::time::sleep(PROBE_INTERVAL * 3).await;
        assert_eq!(probe.rounds(), 4, "no round after stop");
        sup.stop(Duration::from_secs(1)).await; // idempotent
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_runs_a_round_before_the_next_tick() {
        let probe = Counting::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_probe_loop(probe.clone(), stop.clone()));
        tokio::time::sleep(PROBE_INTERVAL / 4).await;
        assert_eq!(probe.rounds(), 1);
        probe.kick.notify_one();
        tokio::time::sleep(PROBE_INTERVAL / 4).await;
        assert_eq!(probe.rounds(), 2, "the kick ran a round early");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_provider_ends_the_loop() {
        let probe = Counting::default();
        let task = tokio::spawn(run_probe_loop(probe.clone(), CancellationToken::new()));
        tokio::time::sleep(PROBE_INTERVAL / 4).await;
        probe.closed.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_INTERVAL).await;
        assert!(task.is_finished(), "the loop ends on its next wake-up");
        assert_eq!(probe.rounds(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_a_round_in_progress_and_drop_signals_stop() {
        let probe = Counting {
            hang: true,
            ..Counting::default()
        };
        let sup = Supervisor::spawn(|stop| run_probe_loop(probe.clone(), stop));
        tokio::time::sleep(PROBE_INTERVAL / 4).await;
        assert_eq!(probe.rounds(), 1);
        // The hanging round ends with the stop signal, long before the bound would abort it.
        let started = tokio::time::Instant::now();
        sup.stop(Duration::from_secs(60)).await;
        assert!(started.elapsed() < Duration::from_secs(1));

        let sup = Supervisor::spawn(|stop| run_probe_loop(probe.clone(), stop));
        let stopped = sup.stopped();
        drop(sup);
        tokio::time::timeout(Duration::from_secs(1), stopped)
            .await
            .expect("dropping the supervisor signals stop");
    }
}
