//! Service discovery over the k/v store, as in the seeds: a service writes its address under a
//! well-known key (`databaseAddress`, `storageAddress`, `masterAddress`) and its clients read it.
//!
//! Unlike the seeds, a registration is a lease: it is written with a TTL and renewed by a
//! heartbeat, so a service that dies disappears; a graceful stop removes it at once (only if
//! nobody re-registered the key since). Resolution waits for a late registrant with backoff
//! instead of crashing, and callers invalidate the cached address after a failed call so a
//! moved service is found again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use reqwest::StatusCode;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientOptions, HttpClient};
use crate::config::{CommonArgs, base_url};

/// Well-known key of the task database.
pub const DATABASE_ADDRESS: &str = "databaseAddress";
/// Well-known key of the storage service.
pub const STORAGE_ADDRESS: &str = "storageAddress";
/// Well-known key of the master.
pub const MASTER_ADDRESS: &str = "masterAddress";

/// Timing of registration and resolution.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// Lifetime of a registration that is not renewed.
    pub ttl: Duration,
    /// How often a registration is renewed (well inside the TTL, so one lost heartbeat does
    /// not drop the service).
    pub heartbeat: Duration,
    /// How long `register` and `resolve` keep retrying before they give up.
    pub deadline: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// A handle on the k/v store used for discovery. Cheap to clone; clones share the cache.
#[derive(Clone, Debug)]
pub struct Discovery {
    kv: String,
    client: HttpClient,
    options: DiscoveryOptions,
    cache: Arc<Mutex<HashMap<String, String>>>,
}

/// A live registration: renewed in the background until [`Registration::stop`] or the
/// cancellation token passed to [`Discovery::register`].
#[derive(Debug)]
pub struct Registration {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Registration {
    /// Stops renewing and removes the key (unless somebody else has written it since).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Registers `key = advertised` in the k/v store named by `--kv`, with the token from
/// `--token`; `None` without `--kv`. Waits (with backoff) for the k/v store up to the
/// registration deadline, or until `cancel` fires.
pub async fn register_service(
    common: &CommonArgs,
    key: &str,
    advertised: &str,
    cancel: CancellationToken,
) -> anyhow::Result<Option<Registration>> {
    let Some(kv) = &common.kv else {
        return Ok(None);
    };
    let client = HttpClient::new(ClientOptions {
        token: common.token.clone(),
        ..ClientOptions::default()
    })?;
    let discovery = Discovery::new(kv, client, DiscoveryOptions::default())?;
    discovery.register(key, advertised, cancel).await.map(Some)
}

impl Discovery {
    /// A discovery handle on the k/v store at `kv_address` (`HOST:PORT` or a URL).
    pub fn new(
        kv_address: &str,
        client: HttpClient,
        options: DiscoveryOptions,
    ) -> anyhow::Result<Self> {
        let kv = base_url(kv_address).map_err(|e| anyhow!("--kv: {e}"))?;
        Ok(Self {
            kv,
            client,
            options,
            cache: Arc::default(),
        })
    }

    /// The k/v store's base URL.
    pub fn kv_url(&self) -> &str {
        &self.kv
    }

    /// Writes `key = address` with the TTL, retrying with backoff until the deadline (the k/v
    /// store may start after us), then renews it every heartbeat until `cancel` fires, when it
    /// removes it. Fails only when the first write cannot be made before the deadline; a
    /// cancellation before then returns at once with a registration that holds nothing.
    pub async fn register(
        &self,
        key: &str,
        address: &str,
        cancel: CancellationToken,
    ) -> anyhow::Result<Registration> {
        let deadline = Instant::now() + self.options.deadline;
        // A shutdown while the k/v store is still unreachable must not wait out the deadline:
        // nothing was written, so there is nothing to remove.
        let what = format!("register {key}");
        let first = tokio::select! {
            () = cancel.cancelled() => None,
            first = self.retry_until(deadline, &what, || {
                self.put(key, address)
            }) => Some(first?),
        };
        let Some(mut revision) = first else {
            tracing::info!(key, "shutdown before registering");
            return Ok(Registration {
                cancel,
                task: tokio::spawn(async {}),
            });
        };
        tracing::info!(key, address, kv = %self.kv, "registered");
        let this = self.clone();
        let key = key.to_owned();
        let address = address.to_owned();
        let token = cancel.child_token();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            let mut backoff = this.options.initial_backoff;
            let mut next = Instant::now() + this.options.heartbeat;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(next) => {}
                }
                match this.put(&key, &address).await {
                    Ok(rev) => {
                        revision = rev;
                        backoff = this.options.initial_backoff;
                        next = Instant::now() + this.options.heartbeat;
                    }
                    Err(err) => {
                        tracing::warn!(key, error = %err, "heartbeat failed; retrying");
                        next = Instant::now() + backoff;
                        backoff = (backoff * 2).min(this.options.max_backoff);
                    }
                }
            }
            match this.remove_if(&key, revision).await {
                Ok(()) => tracing::info!(key, "deregistered"),
                Err(err) => {
                    tracing::warn!(key, error = %err, "could not deregister; the key will expire")
                }
            }
        });
        Ok(Registration {
            cancel: token,
            task,
        })
    }

    /// The address registered under `key`, from the cache or the k/v store. Waits (with
    /// backoff) for a registrant that has not appeared yet, up to the deadline.
    pub async fn resolve(&self, key: &str) -> anyhow::Result<String> {
        if let Some(hit) = self.cached(key) {
            return Ok(hit);
        }
        let deadline = Instant::now() + self.options.deadline;
        let address = self
            .retry_until(deadline, &format!("resolve {key}"), || self.fetch(key))
            .await?;
        let url = base_url(&address).map_err(|e| anyhow!("{key} holds a bad address: {e}"))?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), url.clone());
        Ok(url)
    }

    /// Forgets the cached address of `key`; call it after a call to that service failed, so
    /// the next `resolve` asks the k/v store again.
    pub fn invalidate(&self, key: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn cached(&self, key: &str) -> Option<String> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    async fn retry_until<T, F, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        mut attempt: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut backoff = self.options.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(err) => {
                    let now = Instant::now();
                    if now + backoff > deadline {
                        return Err(err.context(format!(
                            "{what}: gave up after {attempts} attempts against the k/v store at {}",
                            self.kv
                        )));
                    }
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::warn!(error = %err, kv = %self.kv, "{what} failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    async fn put(&self, key: &str, address: &str) -> anyhow::Result<u64> {
        let ttl = format!("{}ms", self.options.ttl.as_millis());
        let response = self
            .client
            .post(&format!("{}/set", self.kv))
            .query(&[("key", key), ("value", address), ("ttl", &ttl)])
            .send()
            .await
            .context("k/v store unreachable")?;
        let status = response.status();
        let revision = revision_header(&response);
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("k/v store answered {status}: {body}");
        }
        revision.context("k/v store sent no X-Revision")
    }

    async fn fetch(&self, key: &str) -> anyhow::Result<String> {
        let response = self
            .client
            .get(&format!("{}/get", self.kv))
            .query(&[("key", key)])
            .send()
            .await
            .context("k/v store unreachable")?;
        match response.status() {
            StatusCode::OK => Ok(response.text().await?),
            StatusCode::NOT_FOUND => bail!("{key} is not registered (yet)"),
            status => {
                let body = response.text().await.unwrap_or_default();
                bail!("k/v store answered {status}: {body}")
            }
        }
    }

    async fn remove_if(&self, key: &str, revision: u64) -> anyhow::Result<()> {
        let response = self
            .client
            .delete(&format!("{}/remove", self.kv))
            .query(&[("key", key), ("if_revision", &revision.to_string())])
            .send()
            .await
            .context("k/v store unreachable")?;
        match response.status() {
            s if s.is_success() => Ok(()),
            // Somebody else registered since: theirs now, leave it.
            StatusCode::PRECONDITION_FAILED => Ok(()),
            status => bail!("k/v store answered {status}"),
        }
    }
}

fn revision_header(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("x-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
