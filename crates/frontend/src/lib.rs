//! `shoal frontend`: the web page people use and the public API, in front of the master.
//!
//! The seed's routes are kept (`/`, `submitTask`, `isReady`, `getImage`); beside them, a page
//! that takes several images by picking or dragging, lets the user choose the operation, and
//! follows each upload live; a path that works without script (`POST /upload` → `303` →
//! `/tasks/{ids}`, a page that refreshes itself); and the public JSON API under `/api/v1`.
//! The frontend keeps no state: everything comes from the master, found through the k/v
//! store (`masterAddress`). All assets are compiled into the binary.
//!
//! # Layout
//! - [`config`]: the flags.
//! - [`http`]: the routes.
//! - [`pages`]: server-rendered pages.
//! - [`guard`]: basic authentication and the upload rate limit.

pub mod config;
pub mod guard;
pub mod http;
pub mod pages;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::discovery::MASTER_ADDRESS;
use shoal_core::server::{self, ServerOptions};
use shoal_core::upstream::Upstream;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::guard::RateLimiter;
use crate::http::AppState;

/// Form overhead allowed beyond `--max-upload` (boundaries, part headers, the op fields).
pub(crate) const FORM_OVERHEAD: u64 = 1 << 20;

/// Most images one form may carry; the request body limit is this many times the upload
/// limit.
pub const MAX_FORM_FILES: u64 = 20;

/// How long a readiness check waits for the master (which asks its own services in turn).
const READINESS_LIMIT: Duration = Duration::from_secs(4);

/// Runs the frontend on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = server::watch_shutdown(shutdown);
    let _stop_on_return = cancel.clone().drop_guard();
    let client = HttpClient::new(ClientOptions {
        // The internal token goes upstream; the page itself is public or behind basic auth.
        token: config.common.token.clone(),
        request_timeout: Duration::from_secs(15 * 60),
        ..ClientOptions::default()
    })?;
    let upstream = Upstream::new(
        client,
        &config.common.kv,
        &[(MASTER_ADDRESS, config.master.as_deref())],
    )?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && config.basic_auth.is_none() {
        tracing::warn!(
            address = %local,
            "the frontend listens on a network without --basic-auth: anyone who can reach it can upload"
        );
    }
    let state = AppState {
        upstream: upstream.clone(),
        max_upload: config.max_upload,
    };
    let routes = http::router(
        state,
        config.basic_auth.clone().map(Arc::new),
        config
            .rate_limit
            .map(|limit| Arc::new(RateLimiter::new(limit))),
    );
    let mut options = ServerOptions::new("frontend");
    options.body_limit = usize::try_from(
        config
            .max_upload
            .saturating_mul(MAX_FORM_FILES)
            .saturating_add(FORM_OVERHEAD),
    )
    .unwrap_or(usize::MAX);
    options.request_timeout = Duration::from_secs(15 * 60);
    options.connections = config.common.connection_limits();
    options.readiness = Some(Arc::new(move || {
        let upstream = upstream.clone();
        // The master's own readiness covers the task database and the storage behind it.
        Box::pin(async move { upstream.ready(&[MASTER_ADDRESS], READINESS_LIMIT).await })
    }));
    server::run(routes, listener, cancel.clone().cancelled_owned(), options).await
}
