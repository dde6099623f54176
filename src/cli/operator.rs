//! `dualwrite operator`: its arguments, and how the reconciler, its probes, the check of its
//! watches and (with `--leader-elect`) the Lease are started and stopped together. The
//! reconciler and the lease loop run until stopped: one that ends by itself ends the process
//! with an error (exit code 1 or 2, logged with why), never a process that serves probes with
//! nothing reconciling.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Error;
use crate::controller::{self, leader, probes, task, watches};

/// Settings of `dualwrite operator`.
#[derive(clap::Args)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Image of the relay StatefulSets (default: the operator's own image).
    #[arg(
        long,
        env = "RELAY_IMAGE",
        default_value = "ghcr.io/dualwrite/dualwrite:0.1.0"
    )]
    pub relay_image: String,
    /// Port of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8081)]
    pub http_port: u16,
    /// Run only while holding a Lease (for more than one operator replica).
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the Lease used with --leader-elect (in POD_NAMESPACE).
    #[arg(long, default_value = "dualwrite-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,
    /// Periodic resync of every pipeline.
    #[arg(long, env = "RESYNC", default_value = "30s", value_parser = crate::duration::parse_positive)]
    pub resync: Duration,
    /// A relay report older than this no longer counts for health.
    #[arg(long, env = "STALE_AFTER", default_value = "150s", value_parser = crate::duration::parse_positive)]
    pub stale_after: Duration,
    /// FailFast refusing every message this long marks the pipeline Stalled.
    #[arg(long, env = "STALL_AFTER", default_value = "5m", value_parser = crate::duration::parse_positive)]
    pub stall_after: Duration,
    /// This operator's pod name (Event reporter instance).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

/// Runs the operator until `shutdown` is cancelled, or until it loses the Lease or the reconciler
/// ends by itself (errors: the process exits so that Kubernetes restarts it).
pub async fn run(a: OperatorArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let client = kube::Client::try_default().await.map_err(Error::Connect)?;
    let ctx = controller::Context::new(
        client.clone(),
        controller::Settings {
            relay_image: a.relay_image,
            resync: a.resync,
            stale_after: a.stale_after,
            stall_after: a.stall_after,
            instance: a.pod_name.clone(),
        },
    );
    let addr = SocketAddr::from(([0, 0, 0, 0], a.http_port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::ListenProbes { addr, source })?;
    // The probes stop with the process, and also when leading ends with a lost Lease.
    let stop = shutdown.child_token();
    let probes = tokio::spawn(
        axum::serve(listener, probes::router(Arc::clone(&ctx)))
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(namespace = a.namespace.as_deref().unwrap_or("(all)"), probes = %addr, "operator started");
    let namespace = a.namespace;
    // Leader or follower, /readyz says whether the watches can work.
    let checker = watches::keep_checking(
        client.clone(),
        namespace.clone(),
        &ctx.watches,
        stop.clone(),
    );
    let work = async {
        let result = if a.leader_elect {
            let lease = leader::LeaseSettings {
                name: a.lease_name,
                namespace: a.pod_namespace,
                identity: a
                    .pod_name
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            };
            let ctx = Arc::clone(&ctx);
            leader::lead(client, &lease, &stop, |work| {
                controller::run(ctx, namespace, work.cancelled_owned())
            })
            .await
            .map_err(Error::from)
        } else {
            let reconciler = tokio::spawn(controller::run(
                Arc::clone(&ctx),
                namespace,
                stop.clone().cancelled_owned(),
            ));
            task::until_stopped("the reconciler", reconciler, &stop)
                .await
                .map_err(Error::from)
        };
        stop.cancel();
        result
    };
    let (result, ()) = tokio::join!(work, checker);
    let _ = probes.await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "the operator stops");
    }
    result
}
