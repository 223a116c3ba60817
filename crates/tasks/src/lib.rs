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
//! - [`gauges`]: tasks per state and live workers as Prometheus gauges.
//! - [`http`]: the routes.

pub mod config;
pub mod gauges;
pub mod http;
pub mod queue;
pub mod state;
pub mod task;

use std::future::Future;
use std::sync::Arc;

use shoal_core::discovery::{DATABASE_ADDRESS, register_service};
use shoal_core::server::{self, ServerOptions};
use tokio::net::TcpListener;

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
    let queue = match &config.database.database_url {
        Some(url) => Queue::open_postgres(url.expose(), limits).await?,
        None => Queue::open(&config.data_dir, config.full_sync, limits).await?,
    };
    let cancel = server::watch_shutdown(shutdown);
    let _stop_on_return = cancel.clone().drop_guard();
    let advertised = config.net.advertised(listener.local_addr()?);
    let registration = register_service(
        &config.common,
        DATABASE_ADDRESS,
        &advertised,
        cancel.clone(),
    )
    .await?;
    let workers = gauges::Workers::default();
    tokio::spawn(gauges::publish(
        queue.clone(),
        workers.clone(),
        cancel.clone(),
    ));
    let state = AppState {
        workers,
        queue: queue.clone(),
        max_wait: config.max_wait,
        shutdown: cancel.clone(),
    };
    let mut options = ServerOptions::new("tasks");
    options.body_limit = 1 << 20;
    options.token = config.common.token.clone();
    options.connections = config.common.connection_limits();
    options.readiness = Some(Arc::new(move || {
        let queue = queue.clone();
        Box::pin(async move {
            // Bounded well inside the callers' own limits (a master asks with 2 s), so a
            // database that hangs reads as "not ready", not as a slow answer.
            match tokio::time::timeout(std::time::Duration::from_millis(1500), queue.ping()).await {
                Ok(result) => result.map_err(|e| format!("database: {e:#}")),
                Err(_) => Err("database: no answer within 1.5 s".to_owned()),
            }
        })
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
