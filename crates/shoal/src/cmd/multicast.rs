//! `shoal multicast`: the hub, and `shoal multicast subscribe`, a ready-made subscriber.

use clap::{Args as ClapArgs, Subcommand};
use shoal_core::config::LogFormat;
use shoal_core::server;

/// `shoal multicast` flags: the hub's, unless a subcommand is given.
#[derive(ClapArgs, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Run something else than the hub.
    #[command(subcommand)]
    pub action: Option<Action>,

    /// The hub's configuration.
    #[command(flatten)]
    pub hub: shoal_multicast::Config,
}

/// What `shoal multicast` can run besides the hub.
#[derive(Subcommand, Debug)]
pub enum Action {
    /// Run a subscriber: serve POST /event, register at the hub and keep alive, print each
    /// event (or pipe it to a command), deregister on exit.
    Subscribe(shoal_multicast::subscribe::SubscribeArgs),
}

impl Args {
    /// The log format asked for.
    pub fn log_format(&self) -> LogFormat {
        match &self.action {
            Some(Action::Subscribe(args)) => args.common.log_format,
            None => self.hub.common.log_format,
        }
    }
}

/// Binds, then runs the hub (or the subscriber) until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Subscribe(subscriber)) => {
            let listener = server::bind(&subscriber.listen).await?;
            shoal_multicast::subscribe::run(subscriber, listener, server::shutdown_signal()).await
        }
        None => {
            let listener = server::bind(&args.hub.listen).await?;
            shoal_multicast::run(args.hub, listener, server::shutdown_signal()).await
        }
    }
}
