//! The one HTTP client shoal services use to call each other: pooled connections, connect and
//! request timeouts, and on every call the bearer token (when configured) and the current
//! request id.

use std::time::Duration;

use reqwest::{Method, RequestBuilder};

use crate::config::Token;
use crate::request_id;

/// Settings for [`HttpClient`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, unless the call sets its own (long polls do).
    pub request_timeout: Duration,
    /// Sent as `Authorization: Bearer …` on every request.
    pub token: Option<Token>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            token: None,
        }
    }
}

/// A cheap-to-clone handle on one connection pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    token: Option<Token>,
}

/// Extra time a long-poll call waits beyond the server-side wait, so the server's "nothing
/// changed" answer arrives before the client gives up.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(5);

impl HttpClient {
    /// Builds a client. Installs the process's TLS crypto provider if none is installed yet.
    pub fn new(options: ClientOptions) -> anyhow::Result<Self> {
        install_crypto_provider();
        let inner = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            inner,
            token: options.token,
        })
    }

    /// A request to `url` carrying the token and the current request id.
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let mut builder = self.inner.request(method, url);
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token.expose());
        }
        if let Some(id) = request_id::current() {
            builder = builder.header(request_id::HEADER, id);
        }
        builder
    }

    /// `GET url`.
    pub fn get(&self, url: &str) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// `POST url`.
    pub fn post(&self, url: &str) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// `DELETE url`.
    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }

    /// Sends a request built with [`Self::request`] (and `RequestBuilder::build`).
    pub async fn execute(&self, request: reqwest::Request) -> reqwest::Result<reqwest::Response> {
        self.inner.execute(request).await
    }

    /// A long poll: the request timeout becomes the server-side `wait` plus a margin.
    pub fn long_poll(&self, method: Method, url: &str, wait: Duration) -> RequestBuilder {
        self.request(method, url).timeout(wait + LONG_POLL_MARGIN)
    }
}

/// Installs rustls's ring provider as the process default. reqwest is built without a
/// provider of its own (one provider builds faster), and panics if none is installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
