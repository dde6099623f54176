//! Leader election for more than one operator replica: a replica runs the reconciler only while
//! it holds a Lease (kube-lease-manager), so no two replicas ever reconcile at once.
//!
//! Lifecycle, and why it is shaped this way: [`lead`] waits as a follower until the Lease is
//! ours (or shutdown), then runs the work with a stop token of its own. Losing the Lease stops
//! the work and ends with [`Error::Lost`]: the process exits and Kubernetes restarts it as a
//! follower, which is simpler and safer than trying to become a follower again in place (any
//! state the reconciler built while leading is dropped with the process). Work that ends by
//! itself while leading (it returned, it panicked) and a lease loop that ends (an API error)
//! are errors too, logged with why: the process never stays up with nothing reconciling. On
//! shutdown the work is stopped first, then the Lease is released so that another replica takes
//! over at once instead of waiting for the Lease to expire.

use std::future::Future;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::task;

/// Which Lease to hold, and as whom.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity in the Lease's holder field (the pod name).
    pub identity: String,
}

/// Why leading ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election: {0}")]
    Manager(#[from] kube_lease_manager::LeaseManagerError),
    #[error("leader election stopped: {0}")]
    Stopped(String),
    #[error("lost the leader Lease; exiting so that a new leader takes over")]
    Lost,
    #[error(transparent)]
    WorkEnded(#[from] task::Ended),
}

/// Runs `work` while this replica holds the Lease; returns when `shutdown` is cancelled (after
/// stopping the work and releasing the Lease) or with [`Error::Lost`] when the Lease is lost.
/// `work` gets a token that is cancelled when it must stop.
pub async fn lead<F, W>(
    client: Client,
    lease: &LeaseSettings,
    shutdown: &CancellationToken,
    work: W,
) -> Result<(), Error>
where
    W: FnOnce(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .build()
        .await?;
    let (mut is_leader, task) = manager.watch().await;
    tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting to become the leader");
    loop {
        if *is_leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = is_leader.changed() => {
                if changed.is_err() {
                    return Err(Error::Stopped(lease_loop_end(task.await)));
                }
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!(lease = %lease.name, "leading");
    let stop = shutdown.child_token();
    let worker = tokio::spawn(work(stop.clone()));
    let result = while_leading(&mut is_leader, shutdown, &stop, worker).await;
    drop(is_leader); // ends the lease task, which hands the manager back for release
    match task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                tracing::warn!(error = %e, "could not release the Lease");
            }
        }
        ended => {
            tracing::error!("the lease loop ended: {}", lease_loop_end(ended));
        }
    }
    result
}

/// Waits, while leading, for shutdown (`Ok`), the Lease lost or the work ended (errors); then
/// stops the work through `stop` and waits for it.
async fn while_leading(
    is_leader: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
    stop: &CancellationToken,
    mut worker: JoinHandle<()>,
) -> Result<(), Error> {
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = lost(is_leader) => Err(Error::Lost),
        finished = &mut worker => {
            stop.cancel();
            return Err(task::ended("the reconciler", finished).into());
        }
    };
    stop.cancel();
    let _ = worker.await;
    result
}

/// Why the lease loop ended, for a log line.
fn lease_loop_end<T>(
    ended: Result<Result<T, kube_lease_manager::LeaseManagerError>, tokio::task::JoinError>,
) -> String {
    match ended {
        Ok(Ok(_)) => "the lease loop returned".to_string(),
        Ok(Err(e)) => format!("the lease loop failed: {e}"),
        Err(e) => format!("the lease loop stopped: {e}"),
    }
}

/// Resolves when this replica no longer holds the Lease (or the lease task ended).
async fn lost(is_leader: &mut watch::Receiver<bool>) {
    while *is_leader.borrow_and_update() {
        if is_leader.changed().await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leading_ends_in_an_error_when_the_work_ends_or_the_lease_is_lost() {
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = watch::channel(true);

        // The reconciler returns by itself: an error naming it, never a silent wait.
        let stop = shutdown.child_token();
        let ended = while_leading(&mut rx, &shutdown, &stop, tokio::spawn(async {})).await;
        assert!(
            matches!(&ended, Err(Error::WorkEnded(e)) if e.why == "it returned"),
            "{ended:?}"
        );
        assert!(stop.is_cancelled());

        // The Lease is lost: the work is stopped, and leading ends in Lost.
        let stop = shutdown.child_token();
        let token = stop.clone();
        let worker = tokio::spawn(async move { token.cancelled().await });
        tx.send(false).unwrap();
        assert!(matches!(
            while_leading(&mut rx, &shutdown, &stop, worker).await,
            Err(Error::Lost)
        ));

        // Shutdown: the work is stopped, no error.
        tx.send(true).unwrap();
        let stop = shutdown.child_token();
        let token = stop.clone();
        let worker = tokio::spawn(async move { token.cancelled().await });
        shutdown.cancel();
        assert!(while_leading(&mut rx, &shutdown, &stop, worker)
            .await
            .is_ok());
    }
}
