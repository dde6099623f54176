//! The `dualwrite` command line: parse, then call into the library.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dualwrite::relay::{self, config};

#[derive(Parser)]
#[command(
    name = "dualwrite",
    version,
    about = "Dual-write relay and Kubernetes operator"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: HTTP ingest → composite → brokers.
    ///
    /// The pipeline comes from -f, else from the seed's variables (QUEUE_TYPE,
    /// COMPOSITE_PROVIDERS, COMPOSITE_STRATEGY, QUEUE_SIZE, NATS_URL, KAFKA_BROKERS, KAFKA_TOPIC),
    /// else the built-in default: two memory providers under FailFast.
    Relay {
        /// A DualWritePipeline manifest (the YAML you would kubectl apply).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Port of the ingest API (overrides the manifest's spec.ingest.port).
        #[arg(long, env = "API_PORT")]
        port: Option<u16>,
        /// Address to listen on.
        #[arg(long, env = "API_BIND", default_value = "0.0.0.0")]
        bind: IpAddr,
        /// Serve the DualWritePipeline NAMESPACE/NAME from the cluster: follow its changes and
        /// report this relay's numbers into its status (how the operator runs the relay).
        #[arg(long, conflicts_with = "file")]
        pipeline: Option<String>,
        /// This relay's name in the pipeline status (the pod name in a cluster).
        #[arg(long, env = "POD_NAME", requires = "pipeline")]
        pod_name: Option<String>,
        /// Directory of the hinted-handoff backlog (missed writes kept for replay). Unset: no
        /// handoff, and a BestEffort write a provider missed is only counted.
        #[arg(long, env = "DUALWRITE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// How often the relay considers reporting its numbers (reports only on change, plus a
        /// heartbeat every four intervals).
        #[arg(long, env = "REPORT_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
        report_interval: Duration,
    },
    /// Run the operator: reconcile DualWritePipeline resources.
    Operator(OperatorArgs),
    /// Check that the brokers agree: every message id on one is on the others (duplicates are
    /// reported too).
    ///
    /// Exit code 0 when no id is missing anywhere, 1 when one is, 2 on error. With --pipeline the result is also
    /// written to the pipeline's status.consistency (a migration gate reads it).
    Verify {
        /// A DualWritePipeline manifest.
        #[arg(
            short = 'f',
            long = "file",
            conflicts_with = "pipeline",
            required_unless_present = "pipeline"
        )]
        file: Option<PathBuf>,
        /// The DualWritePipeline NAMESPACE/NAME in the cluster.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only messages ingested within this span (default: everything the brokers hold).
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        /// Leave out messages younger than this (writes may still be in flight).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
    /// Print the DualWritePipeline CustomResourceDefinition (what crds/ holds).
    Crd,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: no new requests; finishing in-flight ones");
}

/// Opens the hinted-handoff store in `dir`, if given.
fn open_handoff(
    dir: Option<&std::path::Path>,
) -> Result<Option<Arc<dualwrite::handoff::HandoffStore>>, String> {
    match dir {
        None => {
            tracing::warn!("hinted handoff is off (no DUALWRITE_STATE_DIR): a write a provider misses under BestEffort is counted, not kept for replay");
            Ok(None)
        }
        Some(dir) => {
            let store = dualwrite::handoff::HandoffStore::open(dir).map_err(|e| e.to_string())?;
            tracing::info!(path = %store.path().display(), "hinted handoff on");
            Ok(Some(store))
        }
    }
}

async fn run_relay_in_cluster(
    pipeline: &str,
    pod_name: Option<String>,
    port: Option<u16>,
    bind: IpAddr,
    report_interval: Duration,
    state_dir: Option<PathBuf>,
) -> Result<(), String> {
    let pipeline: relay::cluster::PipelineRef = pipeline.parse()?;
    let pod = pod_name.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
        tracing::warn!(name = %host, "POD_NAME is not set; reporting under the host name");
        host
    });
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {e}"))?;
    let options = relay::cluster::Options {
        pod,
        bind,
        port,
        report_every: report_interval,
        handoff: open_handoff(state_dir.as_deref())?,
    };
    relay::cluster::run(client, pipeline, options, shutdown_signal()).await
}

/// Settings of `dualwrite operator`.
#[derive(clap::Args)]
struct OperatorArgs {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Image of the relay Deployments (default: the operator's own image).
    #[arg(
        long,
        env = "RELAY_IMAGE",
        default_value = "ghcr.io/dualwrite/dualwrite:0.1.0"
    )]
    relay_image: String,
    /// Port of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8081)]
    http_port: u16,
    /// Run only while holding a Lease (for more than one operator replica).
    #[arg(long)]
    leader_elect: bool,
    /// Name of the Lease used with --leader-elect (in POD_NAMESPACE).
    #[arg(long, default_value = "dualwrite-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// Periodic resync of every pipeline.
    #[arg(long, env = "RESYNC", default_value = "30s", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// A relay report older than this no longer counts for health.
    #[arg(long, env = "STALE_AFTER", default_value = "150s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
    /// FailFast refusing every message this long marks the pipeline Stalled.
    #[arg(long, env = "STALL_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    stall_after: Duration,
    /// This operator's pod name (Event reporter instance).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

async fn run_operator(a: OperatorArgs) -> Result<(), String> {
    use dualwrite::controller;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {e}"))?;
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
    let probe_addr = SocketAddr::from(([0, 0, 0, 0], a.http_port));
    let listener = tokio::net::TcpListener::bind(probe_addr)
        .await
        .map_err(|e| format!("cannot listen on {probe_addr} for probes: {e}; set --http-port"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let probes = {
        let (router, stop) = (
            controller::probes::router(Arc::clone(&ctx)),
            wait_stop(stop_rx.clone()),
        );
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
        })
    };
    tracing::info!(namespace = a.namespace.as_deref().unwrap_or("(all)"), probes = %probe_addr, "operator started");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    // With --leader-elect, reconcile only while holding the Lease; losing it ends the process so
    // that Kubernetes restarts it as a follower (no two replicas ever reconcile at once).
    let mut leadership = None;
    if a.leader_elect {
        let identity = a
            .pod_name
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &a.lease_name)
            .with_namespace(&a.pod_namespace)
            .with_identity(&identity)
            .build()
            .await
            .map_err(|e| format!("leader election: {e}"))?;
        let (mut is_leader, task) = manager.watch().await;
        tracing::info!(lease = %a.lease_name, %identity, "waiting to become the leader");
        loop {
            if *is_leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = is_leader.changed() => changed.map_err(|_| "leader election stopped".to_string())?,
                _ = &mut shutdown => {
                    let _ = stop_tx.send(true);
                    let _ = probes.await;
                    return Ok(());
                }
            }
        }
        tracing::info!(lease = %a.lease_name, "leading");
        leadership = Some((is_leader, task));
    }
    let controller = tokio::spawn(controller::run(ctx, a.namespace, wait_stop(stop_rx)));
    let lost = async {
        match leadership.as_mut() {
            Some((is_leader, _)) => {
                while *is_leader.borrow_and_update() {
                    if is_leader.changed().await.is_err() {
                        break;
                    }
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        _ = lost => Err("lost the leader Lease; exiting so that a new leader takes over".to_string()),
    };
    let _ = stop_tx.send(true);
    let _ = controller.await;
    if let Some((is_leader, task)) = leadership {
        drop(is_leader); // ends the lease task, which hands the manager back for release
        if let Ok(Ok(manager)) = task.await {
            if let Err(e) = manager.release().await {
                tracing::warn!(error = %e, "could not release the Lease");
            }
        }
    }
    let _ = probes.await;
    result
}

/// Runs the consistency check; `Ok(false)` when the brokers disagree.
async fn run_verify(
    file: Option<PathBuf>,
    pipeline: Option<String>,
    window: Option<Duration>,
    settle: Duration,
) -> Result<bool, String> {
    let (spec, target) = match (file, pipeline) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            (
                config::spec_from_manifest(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                None,
            )
        }
        (None, Some(p)) => {
            let r: relay::cluster::PipelineRef = p.parse()?;
            let client = kube::Client::try_default()
                .await
                .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
            let api: kube::Api<dualwrite::api::DualWritePipeline> =
                kube::Api::namespaced(client, &r.namespace);
            let obj = api
                .get(&r.name)
                .await
                .map_err(|e| format!("cannot read {p}: {e}"))?;
            (obj.spec, Some((api, r.name)))
        }
        (None, None) => return Err("give -f FILE or --pipeline NAMESPACE/NAME".into()),
    };
    let report = dualwrite::verify::check(&spec, window, settle).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if let Some((api, name)) = target {
        let status = dualwrite::api::ConsistencyStatus {
            checked_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            seen: report.seen.clone(),
            missing: report.missing.clone(),
            duplicates: report.duplicates.clone(),
            consistent: report.consistent,
        };
        let part = serde_json::json!({ "consistency": status });
        dualwrite::api::apply_status(&api, &name, "dualwrite-verify", &part)
            .await
            .map_err(|e| format!("cannot write status.consistency: {e}"))?;
    }
    Ok(report.consistent)
}

async fn run_relay(
    file: Option<PathBuf>,
    port: Option<u16>,
    bind: IpAddr,
    state_dir: Option<PathBuf>,
) -> Result<(), String> {
    let env = config::SeedEnv::from_process();
    let spec = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            config::spec_from_manifest(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None if env.describes_pipeline() => {
            config::spec_from_env(&env).map_err(|e| e.to_string())?
        }
        None => {
            tracing::info!("no -f and no QUEUE_TYPE/COMPOSITE_PROVIDERS: running the built-in pipeline (two memory providers, FailFast)");
            config::default_spec()
        }
    };
    let config = relay::PipelineConfig::try_from(&spec)
        .map_err(|errs| format!("the pipeline is invalid:\n  - {}", errs.join("\n  - ")))?;
    let port = config.port(port);
    let handoff = open_handoff(state_dir.as_deref())?;
    let composite = relay::build_composite_with(&config, handoff.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let relay = relay::Relay::with_handoff(composite, config, handoff);
    let addr = SocketAddr::new(bind, port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr}: {e}; set API_PORT or --port to a free port")
    })?;
    relay::serve(relay, listener, shutdown_signal())
        .await
        .map_err(|e| format!("ingest server failed: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Relay {
            pipeline: Some(pipeline),
            pod_name,
            port,
            bind,
            report_interval,
            state_dir,
            ..
        } => {
            run_relay_in_cluster(&pipeline, pod_name, port, bind, report_interval, state_dir).await
        }
        Command::Relay {
            file,
            port,
            bind,
            state_dir,
            ..
        } => run_relay(file, port, bind, state_dir).await,
        Command::Operator(args) => run_operator(args).await,
        Command::Verify {
            file,
            pipeline,
            window,
            settle,
        } => match run_verify(file, pipeline, window, settle).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                eprintln!("the brokers disagree: see missing/duplicates above");
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
        Command::Crd => {
            print!("{}", dualwrite::api::crd_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
