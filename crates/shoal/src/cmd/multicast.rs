//! `shoal multicast`: the hub.

use clap::Args as ClapArgs;
use shoal_core::config::LogFormat;
use shoal_core::server;

/// `shoal multicast` flags.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The hub's configuration.
    #[command(flatten)]
    pub hub: shoal_multicast::Config,
}

impl Args {
    /// The log format asked for.
    pub fn log_format(&self) -> LogFormat {
        self.hub.common.log_format
    }
}

/// Binds, then runs the hub until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = server::bind(&args.hub.listen).await?;
    shoal_multicast::run(args.hub, listener, server::shutdown_signal()).await
}
