//! Calling the other services of the pipeline by their discovery key, spread over every live
//! instance and moving to another when one fails.
//!
//! The instances come from the k/v store ([`crate::discovery`], kept current by a watch) or
//! from the command line (`--master A,B`). Each request goes to the next instance in turn. A
//! request that could not connect never reached its instance, so it moves to another at once,
//! whatever its method. An *idempotent* request (GET, HEAD, PUT, DELETE, OPTIONS, or any
//! request carrying an `Idempotency-Key`) also moves on after a broken connection or a
//! `502`/`503` without `Retry-After` (an instance stopping or not ready); a `503` with
//! `Retry-After` is an answer about the whole service (a full queue) and is passed on. A
//! request that timed out is not repeated: its deadline is the caller's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::ApiError;
use crate::client::HttpClient;
use crate::config::base_url;
use crate::discovery::{
    DATABASE_ADDRESS, Discovery, DiscoveryOptions, InstanceSet, MASTER_ADDRESS, MULTICAST_ADDRESS,
    STORAGE_ADDRESS,
};

/// Most instances one request is tried on.
const MAX_TRIES: usize = 3;

/// How long a request waits for a service that has no instance yet.
const RESOLVE_WAIT: Duration = Duration::from_secs(5);

/// What a service is called in messages.
fn name(key: &str) -> &str {
    match key {
        DATABASE_ADDRESS => "the task database",
        STORAGE_ADDRESS => "the storage",
        MASTER_ADDRESS => "the master",
        MULTICAST_ADDRESS => "the multicast hub",
        other => other,
    }
}

/// How to reach a set of services by discovery key.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: HttpClient,
    discovery: Option<Discovery>,
    fixed: HashMap<&'static str, Arc<InstanceSet>>,
}

/// Whether sending `request` twice does no more than sending it once.
fn is_idempotent(request: &reqwest::Request) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    ) || request.headers().contains_key("idempotency-key")
}

impl Upstream {
    /// `services` pairs each discovery key this caller uses with the addresses given on the
    /// command line for it, if any (several separated by commas); the others are found
    /// through the k/v replicas `kv`. Fails when a service has neither.
    pub fn new(
        client: HttpClient,
        kv: &[String],
        services: &[(&'static str, Option<&str>)],
    ) -> anyhow::Result<Self> {
        let mut fixed = HashMap::new();
        for (key, addresses) in services {
            match addresses {
                Some(addresses) => {
                    let urls = addresses
                        .split(',')
                        .filter(|a| !a.trim().is_empty())
                        .map(|a| {
                            base_url(a)
                                .map_err(|e| anyhow::anyhow!("address of {}: {e}", name(key)))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    if urls.is_empty() {
                        anyhow::bail!("address of {}: empty", name(key));
                    }
                    fixed.insert(*key, Arc::new(InstanceSet::fixed(key, urls)));
                }
                None if kv.is_empty() => {
                    anyhow::bail!("cannot find {}: give --kv or its address", name(key));
                }
                None => {}
            }
        }
        let discovery = if kv.is_empty() {
            None
        } else {
            Some(Discovery::new(
                kv,
                client.clone(),
                DiscoveryOptions::default(),
            )?)
        };
        let upstream = Self {
            client,
            discovery,
            fixed,
        };
        // Start watching every service now, so the first request finds its instances known.
        for (key, _) in services {
            let _ = upstream.instances(key);
        }
        Ok(upstream)
    }

    /// The live instances of the service `key`, when it is configured.
    pub fn instances(&self, key: &'static str) -> Option<Arc<InstanceSet>> {
        if let Some(set) = self.fixed.get(key) {
            return Some(Arc::clone(set));
        }
        self.discovery.as_ref().map(|d| d.instances(key))
    }

    async fn live_set(&self, key: &'static str) -> Result<Arc<InstanceSet>, ApiError> {
        let Some(set) = self.instances(key) else {
            return Err(ApiError::Unavailable(format!(
                "{} is not configured",
                name(key)
            )));
        };
        if set.is_empty() && !set.wait_for_any(RESOLVE_WAIT).await {
            return Err(no_instance(key));
        }
        Ok(set)
    }

    /// Sends the request `build` makes for an instance's base URL, to the next instance in
    /// turn, moving to another as the module documentation says. Failing everywhere is a 503
    /// naming the service.
    pub async fn send(
        &self,
        key: &'static str,
        build: impl Fn(&HttpClient, &str) -> RequestBuilder,
    ) -> Result<Response, ApiError> {
        self.send_with(key, false, build).await
    }

    /// [`Self::send`] for a request the caller knows is idempotent whatever its method (the
    /// seed's `POST /sendImage` writes the same bytes under the same name however often it is
    /// sent), so it moves to another instance like a GET does.
    pub async fn send_idempotent(
        &self,
        key: &'static str,
        build: impl Fn(&HttpClient, &str) -> RequestBuilder,
    ) -> Result<Response, ApiError> {
        self.send_with(key, true, build).await
    }

    async fn send_with(
        &self,
        key: &'static str,
        idempotent: bool,
        build: impl Fn(&HttpClient, &str) -> RequestBuilder,
    ) -> Result<Response, ApiError> {
        let set = self.live_set(key).await?;
        let mut tried: Vec<String> = Vec::new();
        let mut last_failure = String::new();
        // An instance's own 502/503 says more than a later instance's refused connection: if
        // no instance does better, that answer is the one passed on.
        let mut refusal: Option<Response> = None;
        while tried.len() < MAX_TRIES {
            let Some(base) = set.pick(&tried) else {
                break;
            };
            let request = build(&self.client, &base).build().map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("building a request to {}: {e}", name(key)))
            })?;
            let idempotent = idempotent || is_idempotent(&request);
            tried.push(base.clone());
            let more = tried.len() < MAX_TRIES && set.has_other(&tried);
            match self.client.execute(request).await {
                Ok(response)
                    if idempotent
                        && more
                        && matches!(
                            response.status(),
                            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                        )
                        && !response
                            .headers()
                            .contains_key(reqwest::header::RETRY_AFTER) =>
                {
                    set.failed(&base);
                    tracing::debug!(service = key, %base, status = %response.status(), "trying another instance");
                    refusal = Some(response);
                }
                Ok(response) => {
                    set.succeeded(&base);
                    return Ok(response);
                }
                Err(err) if err.is_connect() || (idempotent && !err.is_timeout()) => {
                    set.failed(&base);
                    last_failure = format!("{base}: {err}");
                    tracing::debug!(service = key, %base, error = %err, "trying another instance");
                }
                Err(err) => {
                    if !err.is_timeout() {
                        set.failed(&base);
                    }
                    return Err(ApiError::Unavailable(format!(
                        "{} is unavailable: {err}",
                        name(key)
                    )));
                }
            }
        }
        if let Some(response) = refusal {
            return Ok(response);
        }
        Err(ApiError::Unavailable(format!(
            "{} is unavailable (tried {} instance{}): {last_failure}",
            name(key),
            tried.len(),
            if tried.len() == 1 { "" } else { "s" }
        )))
    }
}

impl Upstream {
    /// Readiness of a service that needs `services`: each must have a live instance whose
    /// `/readyz` answers `200` within `limit` (instances are tried in turn, so one ready
    /// instance is enough). `Err` names the first service that has none, and why.
    pub async fn ready(&self, services: &[&'static str], limit: Duration) -> Result<(), String> {
        for &key in services {
            let probe = self.send(key, |c, base| {
                c.get(&format!("{base}/readyz")).timeout(limit)
            });
            match tokio::time::timeout(limit, probe).await {
                Ok(Ok(response)) if response.status().is_success() => {}
                Ok(Ok(response)) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!(
                        "{} is not ready ({status}): {}",
                        name(key),
                        body.trim_start_matches("Error: ")
                    ));
                }
                Ok(Err(err)) => return Err(err.to_string()),
                Err(_) => {
                    return Err(format!(
                        "{} did not answer within {} ms",
                        name(key),
                        limit.as_millis()
                    ));
                }
            }
        }
        Ok(())
    }
}

fn no_instance(key: &str) -> ApiError {
    ApiError::Unavailable(format!("{} cannot be found: no live instance", name(key)))
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
