//! `shoal worker`.

use shoal_core::server;

/// Works until SIGINT or SIGTERM, then finishes the tasks in hand.
pub async fn run(config: shoal_worker::Config) -> anyhow::Result<()> {
    shoal_worker::run(config, server::shutdown_signal()).await
}
