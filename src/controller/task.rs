//! The operator's long-running tasks (the reconciler, the leader's work) must not end on their
//! own: one that does (its stream ended, it panicked) is an [`Ended`] error, logged at error
//! with why, and the process exits non-zero so that Kubernetes restarts it, rather than serving
//! probes with nothing reconciling.

use std::any::Any;

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

/// A task that should have run until stopped ended by itself.
#[derive(Debug, thiserror::Error)]
#[error("{what} ended unexpectedly ({why}); exiting so that Kubernetes restarts the operator")]
pub struct Ended {
    /// Which task ("the reconciler").
    pub what: &'static str,
    /// How it ended: it returned, or its panic message.
    pub why: String,
}

/// The [`Ended`] error of `what`, from how its task finished (logged at error).
pub fn ended(what: &'static str, finished: Result<(), JoinError>) -> Ended {
    let why = match finished {
        Ok(()) => "it returned".to_string(),
        Err(e) if e.is_panic() => format!("it panicked: {}", panic_message(e.into_panic())),
        Err(e) => e.to_string(),
    };
    let e = Ended { what, why };
    tracing::error!("{e}");
    e
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Waits until `stop` is cancelled, then for `task` to finish (it stops on the same token);
/// `task` ending before that is an [`Ended`].
pub async fn until_stopped(
    what: &'static str,
    mut task: JoinHandle<()>,
    stop: &CancellationToken,
) -> Result<(), Ended> {
    tokio::select! {
        finished = &mut task => Err(ended(what, finished)),
        _ = stop.cancelled() => {
            let _ = task.await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_or_panics_before_stop_is_an_error() {
        let stop = CancellationToken::new();
        let returned = until_stopped("the reconciler", tokio::spawn(async {}), &stop).await;
        assert_eq!(returned.unwrap_err().why, "it returned");

        let panicked = tokio::spawn(async { panic!("the watch stream broke") });
        let e = until_stopped("the reconciler", panicked, &stop)
            .await
            .unwrap_err();
        assert_eq!(e.why, "it panicked: the watch stream broke");
        assert_eq!(
            e.to_string(),
            "the reconciler ended unexpectedly (it panicked: the watch stream broke); exiting so that Kubernetes restarts the operator"
        );

        // A task that runs until told to stop: no error.
        let token = stop.clone();
        let runs = tokio::spawn(async move { token.cancelled().await });
        stop.cancel();
        assert!(until_stopped("the reconciler", runs, &stop).await.is_ok());
    }
}
