//! Calling the other services of the pipeline by their discovery key: addresses come from the
//! k/v store (or are given directly) and are re-resolved when a call cannot connect (the seeds
//! looked them up once at start-up, so a moved service was never found again).

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{RequestBuilder, Response};

use crate::ApiError;
use crate::client::HttpClient;
use crate::config::base_url;
use crate::discovery::{
    DATABASE_ADDRESS, Discovery, DiscoveryOptions, MASTER_ADDRESS, STORAGE_ADDRESS,
};

/// What a service is called in messages.
fn name(key: &str) -> &str {
    match key {
        DATABASE_ADDRESS => "the task database",
        STORAGE_ADDRESS => "the storage",
        MASTER_ADDRESS => "the master",
        other => other,
    }
}

/// How to reach a set of services by discovery key.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: HttpClient,
    discovery: Option<Discovery>,
    fixed: HashMap<&'static str, String>,
}

impl Upstream {
    /// `services` pairs each discovery key this caller uses with a fixed address, if one was
    /// given; the others are resolved through the k/v store at `kv`. Fails when a service has
    /// neither.
    pub fn new(
        client: HttpClient,
        kv: Option<&str>,
        services: &[(&'static str, Option<&str>)],
    ) -> anyhow::Result<Self> {
        let mut fixed = HashMap::new();
        for (key, address) in services {
            match address {
                Some(address) => {
                    let url = base_url(address)
                        .map_err(|e| anyhow::anyhow!("address of {}: {e}", name(key)))?;
                    fixed.insert(*key, url);
                }
                None if kv.is_none() => {
                    anyhow::bail!("cannot find {}: give --kv or its address", name(key));
                }
                None => {}
            }
        }
        let discovery = match kv {
            Some(kv) => Some(Discovery::new(
                kv,
                client.clone(),
                DiscoveryOptions {
                    // A request waits this long for a service that has not registered yet.
                    deadline: Duration::from_secs(5),
                    ..DiscoveryOptions::default()
                },
            )?),
            None => None,
        };
        Ok(Self {
            client,
            discovery,
            fixed,
        })
    }

    /// The service's base URL (`http://host:port`), resolving it when needed.
    pub async fn base(&self, key: &'static str) -> Result<String, ApiError> {
        if let Some(url) = self.fixed.get(key) {
            return Ok(url.clone());
        }
        let Some(discovery) = &self.discovery else {
            return Err(ApiError::Unavailable(format!(
                "{} is not configured",
                name(key)
            )));
        };
        discovery
            .resolve(key)
            .await
            .map_err(|e| ApiError::Unavailable(format!("{} cannot be found: {e:#}", name(key))))
    }

    /// Sends the request `build` makes for the service's base URL. A request that could not
    /// connect was never sent, so it is retried once against a freshly resolved address; any
    /// other failure is a 503 naming the service.
    pub async fn send(
        &self,
        key: &'static str,
        build: impl Fn(&HttpClient, &str) -> RequestBuilder,
    ) -> Result<Response, ApiError> {
        let mut retried = false;
        loop {
            let base = self.base(key).await?;
            match build(&self.client, &base).send().await {
                Ok(response) => return Ok(response),
                Err(err) => {
                    if let Some(discovery) = &self.discovery {
                        discovery.invalidate(key);
                    }
                    if err.is_connect() && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(ApiError::Unavailable(format!(
                        "{} is unavailable: {err}",
                        name(key)
                    )));
                }
            }
        }
    }
}

/// Headers of a stored object that a service streaming it on keeps.
const OBJECT_HEADERS: [reqwest::header::HeaderName; 5] = [
    reqwest::header::CONTENT_TYPE,
    reqwest::header::CONTENT_LENGTH,
    reqwest::header::ETAG,
    reqwest::header::LAST_MODIFIED,
    reqwest::header::CACHE_CONTROL,
];

/// Answers with an upstream's object as it arrives: its status, its object headers (type,
/// length, entity tag, dates, caching) and its body, never buffered whole.
pub fn stream_through(response: Response) -> Result<axum::response::Response, ApiError> {
    let mut out = axum::response::Response::builder().status(response.status().as_u16());
    for name in OBJECT_HEADERS {
        if let Some(value) = response.headers().get(&name) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    out.body(axum::body::Body::from_stream(response.bytes_stream()))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("building the response: {e}")))
}
