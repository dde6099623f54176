//! Leader election for more than one operator replica: a replica runs the reconciler only while
//! it holds a Lease (kube-lease-manager), so no two replicas ever reconcile at once.
//!
//! Lifecycle, and why it is shaped this way: [`lead`] waits as a follower until the Lease is
//! ours (or shutdown), then runs the work with a stop token of its own. Losing the Lease stops
//! the work and ends with [`Error::Lost`]: the process exits and Kubernetes restarts it as a
//! follower, which is simpler and safer than trying to become a follower again in place (any
//! state the reconciler built while leading is dropped with the process). On shutdown the work
//! is stopped first, then the Lease is released so that another replica takes over at once
//! instead of waiting for the Lease to expire.

use std::future::Future;

use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
    #[error("leader election stopped")]
    Stopped,
    #[error("lost the leader Lease; exiting so that a new leader takes over")]
    Lost,
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
            changed = is_leader.changed() => changed.map_err(|_| Error::Stopped)?,
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!(lease = %lease.name, "leading");
    let stop = shutdown.child_token();
    let worker = tokio::spawn(work(stop.clone()));
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = lost(&mut is_leader) => Err(Error::Lost),
    };
    stop.cancel();
    let _ = worker.await;
    drop(is_leader); // ends the lease task, which hands the manager back for release
    if let Ok(Ok(manager)) = task.await {
        if let Err(e) = manager.release().await {
            tracing::warn!(error = %e, "could not release the Lease");
        }
    }
    result
}

/// Resolves when this replica no longer holds the Lease (or the lease task ended).
async fn lost(is_leader: &mut watch::Receiver<bool>) {
    while *is_leader.borrow_and_update() {
        if is_leader.changed().await.is_err() {
            break;
        }
    }
}
