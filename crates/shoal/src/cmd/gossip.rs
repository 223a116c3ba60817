//! `shoal gossip`.

use shoal_core::server;

/// Runs a node until SIGINT or SIGTERM, then leaves the cluster gracefully.
pub async fn run(config: shoal_gossip::Config) -> anyhow::Result<()> {
    shoal_gossip::run(config, server::shutdown_signal()).await
}
