//! Start any service on `127.0.0.1:0` in a test and get its base URL and a shutdown handle;
//! start a throwaway PostgreSQL ([`postgres`]), S3-compatible server ([`s3`]) or NATS server
//! ([`nats`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use shoal_core::testkit::TestServer;
//! let server = TestServer::start(|listener, shutdown| async move {
//!     shoal_core::server::run(axum::Router::new(), listener, shutdown,
//!         shoal_core::server::ServerOptions::new("demo")).await
//! }).await?;
//! let body = reqwest::get(server.url("/healthz")).await?.text().await?;
//! assert_eq!(body, "ok");
//! server.stop().await?;
//! # Ok(()) }
//! ```

pub mod nats;
pub mod postgres;
pub mod s3;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shutdown future handed to a service under test.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service running in the test's runtime. Dropping it signals shutdown.
#[derive(Debug)]
pub struct TestServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and runs `start(listener, shutdown)` in a task.
    pub async fn start<F, Fut>(start: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        crate::client::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(start(listener, shutdown));
        Ok(Self {
            addr,
            base_url: format!("http://{addr}"),
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Signals shutdown and waits for the service to return, passing on its result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("service task panicked")?,
            None => Ok(()),
        }
    }

    /// Whether the service has already returned (crashed or finished).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
