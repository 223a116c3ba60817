//! `shoal`: one binary for every shoal service. Each subcommand lives in `cmd/`.

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use shoal_core::config::LogFormat;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    // Once, before anything can build a TLS client: reqwest, the S3 client and the PostgreSQL
    // driver all use rustls's process default and panic when none is installed.
    shoal_core::client::install_crypto_provider();
    let log_format = cli.command.log_format();
    shoal_core::logging::init(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("Error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Once, where the operator looks: the log stream for JSON, plain stderr otherwise.
            match log_format {
                LogFormat::Json => tracing::error!(error = format!("{err:#}"), "exiting"),
                LogFormat::Text => eprintln!("Error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
