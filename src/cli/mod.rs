//! The `dualwrite` command line as a library: the clap arguments of every command, what each
//! command runs, and the one error type a command ends with. `main.rs` only parses, installs the
//! stop signal and calls [`run`].
//!
//! One stop signal: [`cancel_on_signal`] cancels a [`CancellationToken`] on SIGTERM or Ctrl-C,
//! and every long-running task (ingest server, pipeline follower, status reporter, reconciler,
//! lease loop, probes) stops on that token or a child of it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::api::DualWritePipelineSpec;

pub mod operator;
pub mod plugin;
pub mod relay;
pub mod verify;

pub use operator::OperatorArgs;
pub use relay::RelayArgs;
pub use verify::VerifyArgs;

/// `dualwrite`: its global options and one command.
#[derive(Parser)]
#[command(
    name = "dualwrite",
    version,
    about = "Dual-write relay and Kubernetes operator"
)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the relay: HTTP ingest → composite → brokers.
    ///
    /// The pipeline comes from -f, else from the seed's variables (QUEUE_TYPE,
    /// COMPOSITE_PROVIDERS, COMPOSITE_STRATEGY, QUEUE_SIZE, NATS_URL, KAFKA_BROKERS, KAFKA_TOPIC),
    /// else the built-in default: two memory providers under FailFast.
    Relay(RelayArgs),
    /// Run the operator: reconcile DualWritePipeline resources.
    Operator(OperatorArgs),
    /// Check that the brokers agree: every message id on one is on the others (duplicates are
    /// reported too).
    ///
    /// Exit code 0 when no id is missing anywhere, 1 when one is, 2 on error. With --pipeline the result is also
    /// written to the pipeline's status.consistency (a migration gate reads it).
    Verify(VerifyArgs),
    /// Print the DualWritePipeline CustomResourceDefinition (what crds/ holds).
    Crd,
}

/// Why a command could not do its job. Every variant is a configuration or environment
/// problem the person running the command must fix, so all exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    /// The seed's variables do not describe a pipeline.
    #[error("{0}")]
    SeedEnv(String),
    #[error("the pipeline is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(#[from] crate::api::SpecError),
    /// The pipeline's providers could not be built (the message names the provider).
    #[error(transparent)]
    Build(#[from] crate::relay::RelayError),
    #[error("{0}")]
    Handoff(#[from] crate::handoff::HandoffError),
    #[error("cannot listen on {addr} for probes: {source}; set --http-port")]
    ListenProbes {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("ingest server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The ingest listener cannot start (port taken, TLS certificate or tokens unusable).
    #[error(transparent)]
    Ingest(#[from] crate::relay::listener::ListenerError),
    #[error("cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {0}")]
    Connect(#[source] kube::Error),
    #[error("give -f FILE or --pipeline NAMESPACE/NAME")]
    NoPipeline,
    #[error(transparent)]
    Cluster(#[from] crate::relay::cluster::Error),
    #[error(transparent)]
    Lease(#[from] crate::controller::leader::Error),
    /// A task of the operator that runs until stopped ended by itself.
    #[error(transparent)]
    Ended(#[from] crate::controller::task::Ended),
    #[error(transparent)]
    Verify(#[from] crate::verify::Error),
}

impl Error {
    /// The process's exit code for this error: 2 for a configuration or environment error,
    /// which a restart does not cure (the operator reads it as `RelayConfigError`); 1 for an
    /// ingest server that failed while running, or an operator task that ended by itself. (`verify` also uses 1 for brokers in
    /// disagreement.)
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    fn code(&self) -> u8 {
        use crate::controller::leader::Error as Lease;
        use crate::relay::cluster::Error as Cluster;
        match self {
            Error::Serve(_) | Error::Cluster(Cluster::Serve(_) | Cluster::Task(_)) => 1,
            Error::Ended(_) | Error::Lease(Lease::WorkEnded(_)) => 1,
            _ => 2,
        }
    }

    /// The one line a relay leaves in its termination message: `ConfigError: ...` for exit
    /// code 2, `Error: ...` otherwise, the error's lines joined. Errors name a Secret and key,
    /// never a value, so the line is safe in a pod's status.
    pub fn termination_message(&self) -> String {
        let kind = if self.code() == 2 {
            "ConfigError"
        } else {
            "Error"
        };
        let mut line = String::new();
        for part in self
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let part = part.strip_prefix("- ").unwrap_or(part);
            if !line.is_empty() {
                line.push_str(if line.ends_with(':') { " " } else { "; " });
            }
            line.push_str(&part.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        // The kubelet keeps at most 4096 bytes; stay well inside on a character boundary.
        let mut out = format!("{kind}: {line}");
        if out.len() > TERMINATION_MESSAGE_MAX {
            let mut cut = TERMINATION_MESSAGE_MAX;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
        out
    }
}

/// Where a relay in a pod leaves why it stopped: the kubelet's default
/// `terminationMessagePath`, which the operator's pod template sets.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Longest termination message written (the kubelet keeps 4096 bytes).
const TERMINATION_MESSAGE_MAX: usize = 1024;

/// Writes `error`'s one line into `path` when that file exists (the kubelet creates it in a
/// pod; outside a pod nothing is created). The operator shows it in the pipeline's status.
pub fn write_termination_message(path: &Path, error: &Error) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path);
    if let Ok(mut f) = file {
        if let Err(e) = writeln!(f, "{}", error.termination_message()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
        }
    }
}

/// Runs `command` until it is done or `shutdown` is cancelled.
pub async fn run(command: Command, shutdown: CancellationToken) -> Result<ExitCode, Error> {
    match command {
        Command::Relay(args) => {
            let termination_log = args.termination_log.clone();
            relay::run(args, shutdown)
                .await
                .inspect_err(|e| write_termination_message(&termination_log, e))?
        }
        Command::Operator(args) => operator::run(args, shutdown).await?,
        Command::Verify(args) => return verify::run(args).await,
        Command::Crd => print!("{}", crate::api::crd_yaml()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a DualWritePipeline manifest (the YAML a user would `kubectl apply`).
pub fn read_manifest(path: &Path) -> Result<DualWritePipelineSpec, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    crate::relay::config::spec_from_manifest(&text).map_err(|e| Error::Manifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Logs to stdout as text (coloured on a terminal) or, with `json`, as JSON lines; the level
/// comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // async-nats logs the CONNECT message, password and token included, at trace: that
        // target never goes below debug, whatever RUST_LOG asks.
        .add_directive(
            "async_nats::connection=debug"
                .parse()
                .expect("a valid directive"),
        );
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

/// Cancels `shutdown` on SIGTERM (how Kubernetes stops a pod) or Ctrl-C; ends early when
/// `shutdown` is cancelled by someone else.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::select! {
        _ = signal() => {
            tracing::info!("shutdown requested: no new requests; finishing in-flight ones");
            shutdown.cancel();
        }
        _ = shutdown.cancelled() => {}
    }
}

/// Resolves on the first SIGTERM or Ctrl-C. A signal that cannot be listened for is logged and
/// never fires (the other one still works).
async fn signal() {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn termination_message_is_one_line_with_the_kind() {
        let field = |path: &str, message: &str| crate::api::FieldError {
            path: path.into(),
            message: message.into(),
        };
        let invalid = Error::Invalid(crate::api::SpecError(vec![
            field("spec.a", "bad"),
            field("spec.b", "worse"),
        ]));
        assert_eq!(
            invalid.termination_message(),
            "ConfigError: the pipeline is invalid: spec.a: bad; spec.b: worse"
        );
        assert_eq!(invalid.code(), 2);
        let serve = Error::Serve(std::io::Error::other("boom"));
        assert_eq!(
            serve.termination_message(),
            "Error: ingest server failed: boom"
        );
        assert_eq!(serve.code(), 1);
        let long = Error::SeedEnv("é".repeat(2000));
        let m = long.termination_message();
        assert!(m.len() <= TERMINATION_MESSAGE_MAX && m.starts_with("ConfigError: éé"));

        // Written only where the file exists (the kubelet made it), truncating what was there.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write_termination_message(&path, &serve);
        assert!(!path.exists(), "never created outside a pod");
        std::fs::write(&path, "an older, longer message\n").unwrap();
        write_termination_message(&path, &serve);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "Error: ingest server failed: boom\n"
        );
    }

    #[test]
    fn an_operator_task_that_ends_by_itself_exits_non_zero() {
        let ended = || crate::controller::task::Ended {
            what: "the reconciler",
            why: "it returned".into(),
        };
        assert_eq!(Error::Ended(ended()).code(), 1);
        let lease = crate::controller::leader::Error::WorkEnded(ended());
        assert_eq!(Error::Lease(lease).code(), 1);
        assert_eq!(
            Error::Lease(crate::controller::leader::Error::Lost).code(),
            2
        );
    }

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parse_table() {
        // (arguments, accepted)
        let cases: [(&[&str], bool); 11] = [
            (&["relay"], true),
            (&["relay", "--pipeline", "ns/p", "--pod-name", "r-0"], true),
            (&["relay", "-f", "p.yaml", "--pipeline", "ns/p"], false),
            (&["relay", "--report-interval", "soon"], false),
            (&["verify", "-f", "p.yaml", "--window", "10m"], true),
            (&["verify"], false),
            (&["verify", "-f", "p.yaml", "--pipeline", "ns/p"], false),
            (&["operator", "--leader-elect", "--resync", "2s"], true),
            // A zero interval would be a busy loop or a timer panic: refused with a message.
            (&["relay", "--report-interval", "0s"], false),
            (&["operator", "--resync", "0s"], false),
            (&["operator", "--stall-after", "0ms"], false),
        ];
        for (args, accepted) in cases {
            let parsed =
                Cli::try_parse_from(std::iter::once("dualwrite").chain(args.iter().copied()));
            assert_eq!(parsed.is_ok(), accepted, "{args:?}");
        }
    }
}
