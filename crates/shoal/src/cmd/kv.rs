//! `shoal kv`.

use shoal_core::server;

/// Binds first (a taken port is a loud error, not a silent exit), then serves until SIGINT or
/// SIGTERM.
pub async fn run(config: shoal_kv::Config) -> anyhow::Result<()> {
    let listener = server::bind(&config.listen).await?;
    shoal_kv::run(config, listener, server::shutdown_signal()).await
}
