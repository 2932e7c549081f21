use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    apisync::cli::run(apisync::cli::Cli::parse()).await
}
