//! `shoal master`: the image pipeline's front door.
//!
//! Clients upload images (`/new`), ask whether they are done (`/isReady`, long-polling with
//! `wait=`) and fetch results (`/get`); workers take tasks (`/getNewTask`) and report them
//! finished (`/registerTaskFinished`) or failed. The master keeps no state of its own: tasks
//! live in `shoal tasks`, images in `shoal storage`, both found through the k/v store.
//!
//! An upload is validated before anything is created (a PNG, JPEG or WebP whose header
//! decodes, within the size and pixel limits, with a valid op chain, and a result that the
//! storage will accept whatever the image holds), then the task is created *held*, the image
//! stored, and only then the task released — so a worker can never claim a task whose input
//! is missing (the seed created the task first).
//!
//! # Layout
//! - [`config`]: the flags.
//! - [`http`]: the routes.

pub mod config;
pub mod http;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::discovery::{MASTER_ADDRESS, register_service};
use shoal_core::server::{self, ServerOptions};
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::http::AppState;
use shoal_core::discovery::{DATABASE_ADDRESS, STORAGE_ADDRESS};
use shoal_core::upstream::Upstream;

/// How long a readiness check waits for each service the master needs.
const READINESS_LIMIT: Duration = Duration::from_secs(2);

/// Runs the master on `listener` until `shutdown` resolves. With `--kv`, registers the
/// advertised address as `masterAddress` and removes it at shutdown.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = server::watch_shutdown(shutdown);
    let _stop_on_return = cancel.clone().drop_guard();
    let client = HttpClient::new(ClientOptions {
        token: config.common.token.clone(),
        // Results stream through the master; a large one to a slow client takes a while.
        request_timeout: Duration::from_secs(15 * 60),
        ..ClientOptions::default()
    })?;
    let upstream = Upstream::new(
        client,
        &config.common.kv,
        &[
            (DATABASE_ADDRESS, config.tasks.as_deref()),
            (STORAGE_ADDRESS, config.storage.as_deref()),
        ],
    )?;
    let advertised = config.net.advertised(listener.local_addr()?);
    let registration =
        register_service(&config.common, MASTER_ADDRESS, &advertised, cancel.clone()).await?;
    let state = AppState {
        upstream: upstream.clone(),
        limits: shoal_imaging::Limits {
            max_pixels: config.max_pixels,
        },
        max_result: config.max_result,
        max_queue: config.max_queue,
        max_wait: config.max_wait,
        queue_count: Arc::default(),
        shutdown: cancel.clone(),
    };
    let mut options = ServerOptions::new("master");
    options.body_limit = usize::try_from(config.max_upload).unwrap_or(usize::MAX);
    options.request_timeout = Duration::from_secs(15 * 60);
    options.token = config.common.token.clone();
    options.connections = config.common.connection_limits();
    options.readiness = Some(Arc::new(move || {
        let upstream = upstream.clone();
        Box::pin(async move {
            upstream
                .ready(&[DATABASE_ADDRESS, STORAGE_ADDRESS], READINESS_LIMIT)
                .await
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
