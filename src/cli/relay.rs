//! `dualwrite relay`: its arguments, and where its pipeline comes from. Standalone, the pipeline
//! is a manifest file, the seed's variables or the built-in default; with `--pipeline` the relay
//! serves a resource from the cluster ([`crate::relay::cluster`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{read_manifest, Error};
use crate::api::DualWritePipelineSpec;
use crate::handoff::HandoffStore;
use crate::relay::{self, cluster, config};

/// Settings of `dualwrite relay`.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// A DualWritePipeline manifest (the YAML you would kubectl apply).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Port of the ingest API (overrides the manifest's spec.ingest.port).
    #[arg(long, env = "API_PORT")]
    pub port: Option<u16>,
    /// Address to listen on.
    #[arg(long, env = "API_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Serve the DualWritePipeline NAMESPACE/NAME from the cluster: follow its changes and
    /// report this relay's numbers into its status (how the operator runs the relay).
    #[arg(long, conflicts_with = "file")]
    pub pipeline: Option<String>,
    /// This relay's name in the pipeline status (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", requires = "pipeline")]
    pub pod_name: Option<String>,
    /// Directory of the hinted-handoff backlog (missed writes kept for replay). Unset: no
    /// handoff, and a BestEffort write a provider missed is only counted.
    #[arg(long, env = "DUALWRITE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often the relay considers reporting its numbers (reports only on change, plus a
    /// heartbeat every four intervals).
    #[arg(long, env = "REPORT_INTERVAL", default_value = "15s", value_parser = crate::duration::parse_positive)]
    pub report_interval: Duration,
    /// Where the Secret keys the pipeline references are, as `<dir>/<secretName>/<key>` (in a
    /// cluster the operator mounts them at the default).
    #[arg(long, env = "DUALWRITE_SECRETS_DIR", default_value = crate::provider::secret::DEFAULT_SECRETS_DIR)]
    pub secrets_dir: PathBuf,
    /// Where to leave a one-line reason when the relay stops on an error (written only if the
    /// file exists, as the kubelet's termination log does in a pod).
    #[arg(long, env = "DUALWRITE_TERMINATION_LOG", default_value = super::TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// Runs the relay until `shutdown` is cancelled.
pub async fn run(args: RelayArgs, shutdown: CancellationToken) -> Result<(), Error> {
    match &args.pipeline {
        Some(pipeline) => {
            let pipeline: cluster::PipelineRef = pipeline.parse()?;
            let options = cluster::Options {
                pod: cluster::pod_name(args.pod_name),
                bind: args.bind,
                port: args.port,
                report_every: args.report_interval,
                handoff: open_handoff(args.state_dir.as_deref())?,
                secrets_dir: args.secrets_dir,
            };
            Ok(cluster::run_in_cluster(pipeline, options, shutdown).await?)
        }
        None => run_standalone(args, shutdown).await,
    }
}

/// The relay outside a cluster: one pipeline, fixed for the life of the process.
async fn run_standalone(args: RelayArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let spec = load_spec(args.file.as_deref())?;
    let config = relay::PipelineConfig::try_from(&spec)?.with_secrets_dir(&args.secrets_dir);
    let port = config.port(args.port);
    let handoff = open_handoff(args.state_dir.as_deref())?;
    let composite = relay::build_composite_with(&config, handoff.as_ref()).await?;
    let relay = relay::Relay::with_handoff(composite, config, handoff);
    // The ingest port and, with spec.ingest.probePort, the probe port; TLS and tokens loaded.
    let server = relay::listener::IngestServer::bind(relay, args.bind, port).await?;
    relay::serve_with(server, shutdown.cancelled_owned())
        .await
        .map_err(Error::Serve)
}

/// The pipeline of a standalone relay: the manifest `file`, else the seed's variables, else the
/// built-in default (two memory providers, FailFast) so that one command shows dual-write work.
pub fn load_spec(file: Option<&Path>) -> Result<DualWritePipelineSpec, Error> {
    let env = config::SeedEnv::from_process();
    match file {
        Some(path) => read_manifest(path),
        None if env.describes_pipeline() => {
            config::spec_from_env(&env).map_err(|e| Error::SeedEnv(e.to_string()))
        }
        None => {
            tracing::info!("no -f and no QUEUE_TYPE/COMPOSITE_PROVIDERS: running the built-in pipeline (two memory providers, FailFast)");
            Ok(config::default_spec())
        }
    }
}

/// Opens the hinted-handoff store in `dir`, if given.
pub fn open_handoff(dir: Option<&Path>) -> Result<Option<Arc<HandoffStore>>, Error> {
    match dir {
        None => {
            tracing::warn!("hinted handoff is off (no DUALWRITE_STATE_DIR): a write a provider misses under BestEffort is counted, not kept for replay");
            Ok(None)
        }
        Some(dir) => {
            let store = HandoffStore::open(dir)?;
            tracing::info!(path = %store.path().display(), "hinted handoff on");
            Ok(Some(store))
        }
    }
}
