//! The `dualwrite` command line: parse, then call into the library ([`dualwrite::cli`]).

use std::process::ExitCode;

use clap::Parser;
use dualwrite::cli::{self, Cli};
use tokio_util::sync::CancellationToken;

// mimalloc rather than glibc malloc: glibc's malloc/free were ~20% of the relay's CPU under load
// (many tokio workers freeing what others allocated); see docs/benchmarks.md for the figures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    cli::init_logging(&args.log_format);
    // The one stop signal: SIGTERM or Ctrl-C cancels it, and every task stops on it.
    let shutdown = CancellationToken::new();
    tokio::spawn(cli::cancel_on_signal(shutdown.clone()));
    match cli::run(args.command, shutdown).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
