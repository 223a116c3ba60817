//! `shoal multicast`: event fan-out to subscribers (the seed's event multicast service), with
//! durable acceptance, at-least-once ordered delivery, retries, signing and an SSRF guard.
//!
//! # Layout
//! - [`address`]: subscriber addresses (`host:port`, nothing else).
//! - [`guard`]: which network addresses deliveries may reach, and name resolution under it.
//! - [`signing`]: Standard Webhooks signatures, for the hub and for receivers.
//! - [`store`]: subscribers, cursors and the outbox, in SQLite or PostgreSQL.
//! - [`hub`]: group-committed acceptance and ordered, retried delivery.
//! - [`http`]: the routes.
//! - [`config`]: the flags.
//! - [`subscribe`]: `shoal multicast subscribe`, a ready-made subscriber.

pub mod address;
pub mod config;
pub mod guard;
pub mod http;
pub mod hub;
pub mod signing;
pub mod store;
pub mod subscribe;

use std::future::Future;
use std::sync::Arc;

use shoal_core::server::{self, ServerOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::guard::{Guard, Policy, Resolver, SystemResolver};
pub use crate::http::router;
use crate::hub::Hub;
use crate::store::Store;

/// Opens the store the configuration names: PostgreSQL with `--database-url`, else SQLite.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    match &config.database.database_url {
        Some(url) => Store::open_postgres(url.expose()).await,
        None => Store::open_sqlite(&config.data_dir).await,
    }
}

/// Runs the service with the system's name resolution.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_resolver(config, Arc::new(SystemResolver), None, listener, shutdown).await
}

/// Runs the service with an injected resolver and guard tripwire (tests use them to map names
/// and to make sure nothing outside loopback is ever contacted).
pub async fn run_with_resolver(
    config: Config,
    resolver: Arc<dyn Resolver>,
    tripwire: Option<Arc<dyn Fn(std::net::SocketAddr) -> bool + Send + Sync>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let policy = Policy::new(config.allow_cidr.clone(), config.deny_cidr.clone());
    let mut guard = Guard::new(policy, resolver);
    if let Some(tripwire) = tripwire {
        guard = guard.with_tripwire(move |addr| tripwire(addr));
    }
    let stop = CancellationToken::new();
    let hub = Hub::start(
        store.clone(),
        Arc::new(guard),
        config.hub_options(),
        stop.clone(),
    )
    .await?;
    let mut options = ServerOptions::new("multicast");
    options.body_limit = usize::try_from(config.max_message_size).unwrap_or(usize::MAX);
    options.token = config.common.token.clone();
    options.connections = config.common.connection_limits();
    options.readiness = Some(Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| format!("database: {e:#}")) })
    }));
    let result = server::run(router(hub), listener, shutdown, options).await;
    // After the HTTP drain: stop deliveries and let the writer persist the cursors.
    stop.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    result
}
