//! The `dualwrite` command line: parse, then call into the library.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dualwrite::relay::{self, config};

#[derive(Parser)]
#[command(name = "dualwrite", version, about = "Dual-write relay and Kubernetes operator")]
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
    },
    /// Print the DualWritePipeline CustomResourceDefinition (what crds/ holds).
    Crd,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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

async fn run_relay(file: Option<PathBuf>, port: Option<u16>, bind: IpAddr) -> Result<(), String> {
    let env = config::SeedEnv::from_process();
    let spec = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            config::spec_from_manifest(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None if env.describes_pipeline() => config::spec_from_env(&env)?,
        None => {
            tracing::info!("no -f and no QUEUE_TYPE/COMPOSITE_PROVIDERS: running the built-in pipeline (two memory providers, FailFast)");
            config::default_spec()
        }
    };
    spec.validate()
        .map_err(|errs| format!("the pipeline is invalid:\n  - {}", errs.join("\n  - ")))?;
    let port = port
        .or(spec.ingest.as_ref().and_then(|i| i.port))
        .unwrap_or(relay::DEFAULT_PORT);
    let composite = relay::build_composite(&spec).await?;
    let relay = relay::Relay::new(composite, spec);
    let addr = SocketAddr::new(bind, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}; set API_PORT or --port to a free port"))?;
    relay::serve(relay, listener, shutdown_signal())
        .await
        .map_err(|e| format!("ingest server failed: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Relay { file, port, bind } => run_relay(file, port, bind).await,
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
