//! A write that must run to its end even if the request that started it is dropped.
//!
//! A request is dropped on its `requestTimeout` or when the client goes away; the write it
//! started must not be cut between a broker's acknowledgement and what has to follow it (the
//! strategy's backlog appends, the window's record, the counters). So the write runs detached
//! from the request: [`run_detached`] polls it once in place, and only a write that is not done
//! by then (it waits for a broker) moves into a task of its own, which the request awaits. A
//! write that needs no I/O (memory providers, a refusal decided before any write) ends in that
//! first poll and costs no task, no cross-thread wake-up and no second scheduling of the request.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::Poll;

/// Runs `work` to its end whatever happens to the caller, and returns its output; `Err` says
/// that it panicked (in its first poll or in its task).
///
/// Cancellation: between the first poll returning `Pending` and the spawn there is no
/// suspension point, so a caller dropped at any of its awaits leaves `work` either finished or
/// running in its own task.
pub async fn run_detached<F>(work: F) -> Result<F::Output, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut work = Box::pin(work);
    // One poll in place, with the caller's waker; the task's first poll below re-registers its
    // own waker with everything the work waits on (every future keeps the waker of its most
    // recent poll).
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(std::panic::catch_unwind(AssertUnwindSafe(|| {
            work.as_mut().poll(cx)
        })))
    })
    .await;
    match first {
        Ok(Poll::Ready(out)) => Ok(out),
        Ok(Poll::Pending) => tokio::spawn(work).await.map_err(|e| e.to_string()),
        Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::sync::oneshot;

    use super::run_detached;

    #[tokio::test]
    async fn a_write_done_in_its_first_poll_returns_in_place() {
        // No task: the output is there in the caller's first poll (a spawned task's would not
        // be, its JoinHandle is pending until the scheduler has run it).
        let out = run_detached(async { 7 }).now_or_never();
        assert_eq!(out, Some(Ok(7)));
    }

    #[tokio::test]
    async fn a_waiting_write_finishes_after_its_caller_is_dropped() {
        let (ack_tx, ack_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let caller = tokio::spawn(run_detached(async move {
            let _ = started_tx.send(());
            // The "broker's acknowledgement", then the bookkeeping that must follow it.
            ack_rx.await.expect("ack");
            flag.store(true, Ordering::SeqCst);
            let _ = done_tx.send(());
        }));
        // Started: the caller polled the write once and, in that same poll, moved it into its
        // own task. Cut the caller.
        started_rx.await.expect("started");
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        ack_tx.send(()).expect("the write still waits for its ack");
        tokio::time::timeout(Duration::from_secs(10), done_rx)
            .await
            .expect("the write ran to its end")
            .expect("done");
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_write_woken_after_it_moved_into_its_task_is_polled_again() {
        // The first poll registers the caller's waker; the wake-up must reach the task.
        let (tx, rx) = oneshot::channel::<u32>();
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let waiting = tokio::spawn(run_detached(async move {
            let _ = started_tx.send(());
            rx.await.expect("value") + 1
        }));
        started_rx.await.expect("started");
        tx.send(41).expect("receiver alive");
        let out = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(out, Ok(42));
    }

    #[tokio::test]
    async fn a_panic_in_either_poll_is_an_error_not_a_crash() {
        let first = run_detached(async { panic!("in the first poll") }).await;
        assert_eq!(
            first,
            Err::<(), _>("panicked: in the first poll".to_string())
        );
        let later = run_detached(async {
            tokio::task::yield_now().await;
            panic!("in the task")
        })
        .await;
        let e = later.unwrap_err();
        assert!(e.contains("panicked"), "{e}");
    }
}
