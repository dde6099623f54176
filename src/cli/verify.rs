//! `dualwrite verify`: its arguments, and the exit code that tells a script whether the brokers
//! agree. The check itself and the verdict it records are in [`crate::verify`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{read_manifest, Error};
use crate::relay::cluster::PipelineRef;

/// Settings of `dualwrite verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A DualWritePipeline manifest.
    #[arg(
        short = 'f',
        long = "file",
        conflicts_with = "pipeline",
        required_unless_present = "pipeline"
    )]
    pub file: Option<PathBuf>,
    /// The DualWritePipeline NAMESPACE/NAME in the cluster; the verdict goes into its
    /// `<NAME>-consistency` ConfigMap (run as the `<NAME>-verify` ServiceAccount, which may).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only messages ingested within this span (default: everything the brokers hold).
    #[arg(long, value_parser = crate::duration::parse)]
    pub window: Option<Duration>,
    /// Leave out messages younger than this (writes may still be in flight).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    pub settle: Duration,
    /// Where the Secret keys the pipeline references are, as `<dir>/<secretName>/<key>`.
    #[arg(long, env = "DUALWRITE_SECRETS_DIR", default_value = crate::provider::secret::DEFAULT_SECRETS_DIR)]
    pub secrets_dir: PathBuf,
}

/// Runs the check and prints its report; with `--pipeline` also records it in the pipeline's
/// consistency ConfigMap, for the operator to take into the status. Exit code 0 when the brokers agree, 1 when they do not.
pub async fn run(a: VerifyArgs) -> Result<ExitCode, Error> {
    let (spec, target) = match (a.file, a.pipeline) {
        (Some(path), _) => (read_manifest(&path)?, None),
        (None, Some(p)) => {
            let r: PipelineRef = p.parse()?;
            let (spec, api) = crate::verify::read_pipeline(&r).await?;
            (spec, Some((api, r.name)))
        }
        (None, None) => return Err(Error::NoPipeline),
    };
    let report = crate::verify::check(&spec, a.window, a.settle, &a.secrets_dir).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if let Some((api, name)) = target {
        crate::verify::record(&api, &name, &report).await?;
    }
    if report.consistent {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("the brokers disagree: see missing and conflicting above");
        Ok(ExitCode::from(1))
    }
}
