//! `shoal frontend`.

use shoal_core::server;

/// Binds first (a taken port is a loud error), then serves until SIGINT or SIGTERM.
pub async fn run(config: shoal_frontend::Config) -> anyhow::Result<()> {
    let listener = server::bind(&config.net.listen).await?;
    shoal_frontend::run(config, listener, server::shutdown_signal()).await
}
