//! `shoal storage`: blob storage for the image pipeline, on a local directory or S3.
//!
//! The seed API (`sendImage`, `getImage`) is kept; beside it: `HEAD /getImage`,
//! `deleteImage`, entity tags and conditional GET, a size limit enforced before the body is
//! read, streaming both ways, atomic and durable writes, and optional retention. It registers
//! as `storageAddress` in the k/v store with `--kv`.
//!
//! # Layout
//! - [`config`]: the flags.
//! - [`key`]: request parameters → the one canonical object name.
//! - [`sniff`]: content types from the first bytes.
//! - [`backend`]: the backend trait, [`backend::local`] and [`backend::s3`].
//! - [`http`]: the routes.

pub mod backend;
pub mod config;
pub mod http;
pub mod key;
pub mod sniff;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_core::discovery::{STORAGE_ADDRESS, register_service};
use shoal_core::server::{self, ServerOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::backend::local::LocalBackend;
use crate::backend::s3::{S3Backend, S3Options};
pub use crate::config::Config;
use crate::http::AppState;
use crate::key::Stage;

/// How often retention looks for expired objects.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Opens the backend `config` names: S3 with `--s3-bucket`, else the local directory.
pub async fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    let backend: Arc<dyn Backend> = match &config.s3_bucket {
        Some(bucket) => Arc::new(S3Backend::new(&S3Options {
            bucket: bucket.clone(),
            endpoint: config.s3_endpoint.clone(),
            region: config.s3_region.clone(),
            access_key_id: config.s3_access_key_id.clone(),
            secret_access_key: config.s3_secret_access_key.clone(),
        })?),
        None => Arc::new(LocalBackend::open(config.data_dir.clone()).await?),
    };
    // A missing bucket or wrong credentials fail the start, not the first upload.
    backend.check().await?;
    Ok(backend)
}

/// Runs the service on `listener` until `shutdown` resolves. With `--kv`, registers the
/// advertised address as `storageAddress` and removes it at shutdown.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = server::watch_shutdown(shutdown);
    let _stop_on_return = cancel.clone().drop_guard();
    let backend = open_backend(&config).await?;
    if let Some(age) = config.retention {
        tokio::spawn(retention(Arc::clone(&backend), age, cancel.clone()));
    }
    let advertised = config.net.advertised(listener.local_addr()?);
    let registration =
        register_service(&config.common, STORAGE_ADDRESS, &advertised, cancel.clone()).await?;
    let state = AppState {
        backend: Arc::clone(&backend),
        max_object_size: config.max_object_size,
        idle_timeout: config.idle_timeout,
    };
    let mut options = ServerOptions::new("storage");
    options.body_limit = usize::try_from(config.max_object_size).unwrap_or(usize::MAX);
    options.request_timeout = config.request_timeout;
    options.token = config.common.token.clone();
    options.connections = config.common.connection_limits();
    options.readiness = Some(Arc::new(move || {
        let backend = Arc::clone(&backend);
        Box::pin(async move { backend.check().await.map_err(|e| format!("{e:#}")) })
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

/// Removes objects older than `age` now and every [`RETENTION_INTERVAL`] until `cancel`.
async fn retention(backend: Arc<dyn Backend>, age: Duration, cancel: CancellationToken) {
    loop {
        let cutoff = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for stage in Stage::ALL {
            match backend.remove_older_than(stage, cutoff).await {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(stage = stage.as_str(), removed, "retention removed objects")
                }
                Err(e) => tracing::warn!(stage = stage.as_str(), error = %e, "retention failed"),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(RETENTION_INTERVAL) => {}
        }
    }
}
