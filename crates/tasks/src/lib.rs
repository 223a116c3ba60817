//! `shoal tasks`: the seed's task database as a durable leased work queue.
//!
//! The seed API (`newTask`, `getById`, `getNewTask`, `finishTask`, `setById`, `list`) is kept;
//! beside it: payloads, held tasks (`releaseTask`), lease tokens, `extendLease`, `failTask` with
//! or without retry, `cancelTask`, long-polling claims, and an attempts limit that fails poison
//! tasks instead of looping. It registers as `databaseAddress` in the k/v store with `--kv`.
//!
//! # Layout
//! - [`config`]: the flags.
//! - [`state`]: task states and the one function that decides every transition.
//! - [`task`]: a task as stored and as shown.
//! - [`queue`]: the queue on SQLite (one group-committing writer) or PostgreSQL (replicas,
//!   `FOR UPDATE SKIP LOCKED`).
//! - [`http`]: the routes.

pub mod config;
pub mod http;
pub mod queue;
pub mod state;
pub mod task;

use std::future::Future;
use std::sync::Arc;

use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::discovery::{DATABASE_ADDRESS, Discovery, DiscoveryOptions};
use shoal_core::server::{self, ServerOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::http::AppState;
use crate::queue::{Limits, Queue};

/// Runs the service on `listener` until `shutdown` resolves. With `--kv`, registers the
/// advertised address as `databaseAddress` (retrying until the k/v store answers, up to a
/// deadline) and removes it at shutdown.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = Limits {
        lease: config.lease,
        hold_timeout: config.hold_timeout,
        max_attempts: config.max_attempts,
        retention: config.retention,
    };
    let queue = match &config.common.database_url {
        Some(url) => Queue::open_postgres(url.expose(), limits).await?,
        None => Queue::open(&config.data_dir, config.full_sync, limits).await?,
    };
    let cancel = CancellationToken::new();
    // Shutdown is watched from the start, so it also ends a registration still waiting for
    // the k/v store.
    let _stop_on_return = cancel.clone().drop_guard();
    let watcher = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => watcher.cancel(),
            () = watcher.cancelled() => {}
        }
    });
    let advertised = config.net.advertised(listener.local_addr()?);
    let registration = match &config.common.kv {
        Some(kv) => {
            let client = HttpClient::new(ClientOptions {
                token: config.common.token.clone(),
                ..ClientOptions::default()
            })?;
            let discovery = Discovery::new(kv, client, DiscoveryOptions::default())?;
            Some(
                discovery
                    .register(DATABASE_ADDRESS, &advertised, cancel.clone())
                    .await?,
            )
        }
        None => None,
    };
    let state = AppState {
        queue: queue.clone(),
        max_wait: config.max_wait,
        shutdown: cancel.clone(),
    };
    let mut options = ServerOptions::new("tasks");
    options.body_limit = 1 << 20;
    options.token = config.common.token.clone();
    options.readiness = Some(Arc::new(move || {
        let queue = queue.clone();
        Box::pin(async move { queue.ping().await.map_err(|e| format!("database: {e:#}")) })
    }));
    let result = server::run(
        http::router(state),
        listener,
        cancel.clone().cancelled_owned(),
        options,
    )
    .await;
    if let Some(registration) = registration {
        registration.stop().await;
    }
    result
}
