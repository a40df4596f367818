//! The `jobvisor` binary: parse the command line, dispatch.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    jobvisor::cli::run().await
}
