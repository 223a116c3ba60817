//! `shoal kv`: the key-value store the image pipeline uses for configuration and service
//! discovery (Part 2 of the seed series), made durable and watchable.
//!
//! The seed API is kept exactly — `GET /get?key=K`, `POST /set?key=K&value=V`,
//! `DELETE /remove?key=K`, `GET /list` — and extended beside it: TTLs, a store-wide revision
//! sequence, long-poll watches, compare-and-set, byte values and JSON listings.
//!
//! # Layout
//! - [`config`]: the flags.
//! - [`store`]: the in-memory image, the group-commit writer, and the SQLite and PostgreSQL
//!   backends behind it.
//! - [`http`]: the routes.

pub mod config;
pub mod http;
pub mod store;

use std::future::Future;

use shoal_core::server::{self, ServerOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::http::AppState;
pub use crate::http::router;
use crate::store::{Backend, PostgresBackend, SqliteBackend, Store};

/// Opens the store the configuration names: PostgreSQL with `--database-url`, else SQLite in
/// `--data-dir`.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let backend = match &config.database.database_url {
        Some(url) => Backend::Postgres(PostgresBackend::open(url.expose()).await?),
        None => Backend::Sqlite(SqliteBackend::open(&config.data_dir, config.sync).await?),
    };
    Store::open(backend, config.limits()).await
}

/// Runs the service on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let cancel = CancellationToken::new();
    let state = AppState {
        store: store.clone(),
        max_wait: config.max_wait,
        shutdown: cancel.clone(),
    };
    let mut options = ServerOptions::new("kv");
    // Room for the largest value; bigger bodies are refused before they are read.
    options.body_limit = usize::try_from(config.max_value_size)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    options.token = config.common.token.clone();
    options.connections = config.common.connection_limits();
    let probe = store.clone();
    options.readiness = Some(std::sync::Arc::new(move || {
        let probe = probe.clone();
        Box::pin(async move {
            probe
                .backend()
                .ping()
                .await
                .map_err(|e| format!("database: {e:#}"))
        })
    }));
    let shutdown = async move {
        shutdown.await;
        cancel.cancel();
    };
    server::run(router(state), listener, shutdown, options).await
}
