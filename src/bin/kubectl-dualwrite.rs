//! `kubectl dualwrite`: the kubectl plugin; parse, then call into the library
//! ([`dualwrite::cli::plugin`]).

use std::process::ExitCode;

use clap::Parser;
use dualwrite::cli::plugin::{self, PluginCli};

#[tokio::main]
async fn main() -> ExitCode {
    let args = PluginCli::parse();
    match plugin::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
