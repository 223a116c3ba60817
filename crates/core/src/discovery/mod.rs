//! Service discovery over the k/v store: every *instance* of a service registers itself, and
//! clients see the live set of instances, kept current by a watch.
//!
//! - An instance writes `svc/<key>/<address>` = `<address>` (for example
//!   `svc/masterAddress/10.0.0.5:3003`) with a TTL, renews it every heartbeat and removes it
//!   when it stops, so a dead instance disappears within the TTL and a stopped one at once.
//!   The address names the instance: a restart at the same address takes its key back.
//! - The seed's one-address keys (`databaseAddress`, `storageAddress`, `masterAddress`) are
//!   kept for the tutorial's own clients: some live instance holds each, and when its holder
//!   goes away another instance takes it over (see [`register`]).
//! - A client asks for the [`InstanceSet`] of a key. A background task keeps it current with
//!   one long poll of the prefix (`/list?prefix=svc/<key>/&wait=…`), so a new or departed
//!   instance is seen within milliseconds, not at the next re-read. When every k/v replica is
//!   unreachable the set keeps what it last saw.
//! - `--kv` may name several k/v replicas (sharing one PostgreSQL database). Calls to the k/v
//!   store go round the replicas and move to the next one when one does not answer.
//!
//! # Layout
//! - this file: [`Discovery`], the handle, and the calls to the k/v store.
//! - [`register`]: an instance's registration and the seed keys.
//! - [`instances`]: the live set of a service's instances, how one is picked and how one that
//!   failed is avoided for a while.

pub mod instances;
pub mod register;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client::{ClientOptions, HttpClient};
use crate::config::{CommonArgs, base_url};

pub use self::instances::InstanceSet;
pub use self::register::Registration;

/// Well-known key of the task database.
pub const DATABASE_ADDRESS: &str = "databaseAddress";
/// Well-known key of the storage service.
pub const STORAGE_ADDRESS: &str = "storageAddress";
/// Well-known key of the master.
pub const MASTER_ADDRESS: &str = "masterAddress";
/// Well-known key of the multicast hub.
pub const MULTICAST_ADDRESS: &str = "multicastAddress";

/// The prefix under which the instances of the service `key` register.
pub fn instance_prefix(key: &str) -> String {
    format!("svc/{key}/")
}

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
    /// How long one watch of an instance set waits on the k/v store.
    pub watch_wait: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            watch_wait: Duration::from_secs(30),
        }
    }
}

/// A handle on the k/v store (one or several replicas) used for discovery. Cheap to clone;
/// clones share the instance sets and their watches, which stop with the last clone.
#[derive(Clone, Debug)]
pub struct Discovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kv: Arc<KvStore>,
    sets: Mutex<HashMap<String, Arc<InstanceSet>>>,
    stop: CancellationToken,
    _stop_watches: DropGuard,
}

/// The k/v replicas and how to call them; shared with the watches, which must not keep the
/// [`Discovery`] handle itself alive.
#[derive(Debug)]
struct KvStore {
    urls: Vec<String>,
    next: AtomicUsize,
    client: HttpClient,
    options: DiscoveryOptions,
}

/// Registers this instance of `key` at `advertised` in the k/v store named by `--kv`, with
/// the token from `--token`; `None` without `--kv`. Waits (with backoff) for the k/v store up
/// to the registration deadline, or until `cancel` fires.
pub async fn register_service(
    common: &CommonArgs,
    key: &str,
    advertised: &str,
    cancel: CancellationToken,
) -> anyhow::Result<Option<Registration>> {
    if common.kv.is_empty() {
        return Ok(None);
    }
    let client = HttpClient::new(ClientOptions {
        token: common.token.clone(),
        ..ClientOptions::default()
    })?;
    let discovery = Discovery::new(&common.kv, client, DiscoveryOptions::default())?;
    discovery.register(key, advertised, cancel).await.map(Some)
}

/// What a listing of an instance prefix came to.
enum Listing {
    /// The addresses registered under the prefix and the store revision of the listing.
    Changed(Vec<String>, u64),
    /// The watch ended with no change.
    Unchanged,
}

impl Discovery {
    /// A discovery handle on the k/v replicas at `kv` (each `HOST:PORT` or a URL; several
    /// are replicas of one store).
    pub fn new(
        kv: &[impl AsRef<str>],
        client: HttpClient,
        options: DiscoveryOptions,
    ) -> anyhow::Result<Self> {
        if kv.is_empty() {
            bail!("--kv: no k/v store given");
        }
        let kv = kv
            .iter()
            .map(|a| base_url(a.as_ref()).map_err(|e| anyhow!("--kv: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stop = CancellationToken::new();
        Ok(Self {
            inner: Arc::new(Inner {
                kv: Arc::new(KvStore {
                    urls: kv,
                    next: AtomicUsize::new(0),
                    client,
                    options,
                }),
                sets: Mutex::default(),
                _stop_watches: stop.clone().drop_guard(),
                stop,
            }),
        })
    }

    /// The options this handle was made with.
    pub fn options(&self) -> &DiscoveryOptions {
        &self.inner.kv.options
    }

    /// The live instances of the service `key`, kept current in the background from the
    /// first call on.
    pub fn instances(&self, key: &str) -> Arc<InstanceSet> {
        let mut sets = self
            .inner
            .sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(set) = sets.get(key) {
            return Arc::clone(set);
        }
        let set = Arc::new(InstanceSet::new(key));
        sets.insert(key.to_owned(), Arc::clone(&set));
        tokio::spawn(instances::watch(
            Arc::clone(&self.inner.kv),
            Arc::clone(&set),
            self.inner.stop.clone(),
        ));
        set
    }

    /// The base URL of one live instance of `key` (the next in turn). Waits (with backoff) for
    /// a registrant that has not appeared yet, up to the deadline.
    pub async fn resolve(&self, key: &str) -> anyhow::Result<String> {
        let set = self.instances(key);
        if !set.wait_for_any(self.options().deadline).await {
            bail!(
                "resolve {key}: no instance registered in the k/v store at {}",
                self.inner.kv.urls.join(", ")
            );
        }
        set.pick(&[])
            .with_context(|| format!("resolve {key}: no instance left"))
    }
}

impl KvStore {
    /// Sends the request `build` makes for one k/v replica's base URL, going round the
    /// replicas: a replica that cannot be reached or answers 5xx is skipped for the next.
    async fn kv_call(
        &self,
        build: impl Fn(&HttpClient, &str) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let kv = &self.urls;
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..kv.len() {
            let url = &kv[(first + i) % kv.len()];
            match build(&self.client, url).send().await {
                Ok(r) if r.status().is_server_error() => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    last = Some(anyhow!("k/v store at {url} answered {status}: {body}"));
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    last = Some(anyhow!(e).context(format!("k/v store at {url} unreachable")))
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no k/v store")))
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
        let options = &self.options;
        let mut backoff = options.initial_backoff;
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
                            self.urls.join(", ")
                        )));
                    }
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::warn!(error = %format!("{err:#}"), "{what} failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(options.max_backoff);
                }
            }
        }
    }

    /// Writes `key = value` with the registration TTL, optionally only at `if_revision`;
    /// `Ok(None)` when the precondition failed.
    async fn put(
        &self,
        key: &str,
        value: &str,
        if_revision: Option<u64>,
    ) -> anyhow::Result<Option<u64>> {
        let ttl = format!("{}ms", self.options.ttl.as_millis());
        let condition = if_revision.map(|r| r.to_string());
        let response = self
            .kv_call(|c, kv| {
                let mut request = c.post(&format!("{kv}/set")).query(&[
                    ("key", key),
                    ("value", value),
                    ("ttl", &ttl),
                ]);
                if let Some(r) = &condition {
                    request = request.query(&[("if_revision", r)]);
                }
                request
            })
            .await?;
        let status = response.status();
        if status == StatusCode::PRECONDITION_FAILED {
            return Ok(None);
        }
        let revision = revision_header(&response);
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("k/v store answered {status}: {body}");
        }
        revision.context("k/v store sent no X-Revision").map(Some)
    }

    /// The value of `key` and its revision; `None` when absent.
    async fn fetch(&self, key: &str) -> anyhow::Result<Option<(String, u64)>> {
        let response = self
            .kv_call(|c, kv| c.get(&format!("{kv}/get")).query(&[("key", key)]))
            .await?;
        match response.status() {
            StatusCode::OK => {
                let revision = revision_header(&response).unwrap_or(0);
                Ok(Some((response.text().await?, revision)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => {
                let body = response.text().await.unwrap_or_default();
                bail!("k/v store answered {status}: {body}")
            }
        }
    }

    /// Lists the addresses under `prefix`; with `after`, waits up to `wait` for a change
    /// above that revision first.
    async fn list(
        &self,
        prefix: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> anyhow::Result<Listing> {
        let wait_text = format!("{}ms", wait.as_millis());
        let after_text = after.map(|a| a.to_string());
        let response = self
            .kv_call(|c, kv| {
                let url = format!("{kv}/list");
                match &after_text {
                    Some(after) => c.long_poll(reqwest::Method::GET, &url, wait).query(&[
                        ("prefix", prefix),
                        ("format", "json"),
                        ("wait", &wait_text),
                        ("after", after),
                    ]),
                    None => c.get(&url).query(&[("prefix", prefix), ("format", "json")]),
                }
            })
            .await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(Listing::Unchanged),
            StatusCode::OK => {
                let revision =
                    revision_header(&response).context("k/v store sent no X-Revision")?;
                let body = response.bytes().await.context("reading the k/v listing")?;
                let entries: Vec<serde_json::Value> =
                    serde_json::from_slice(&body).context("the k/v listing is not JSON")?;
                let addresses = entries
                    .iter()
                    .filter_map(|e| e["value"].as_str().map(str::to_owned))
                    .collect();
                Ok(Listing::Changed(addresses, revision))
            }
            status => {
                let body = response.text().await.unwrap_or_default();
                bail!("k/v store answered {status}: {body}")
            }
        }
    }

    /// Removes `key` if its revision is still `revision` (nobody wrote it since).
    async fn remove_if(&self, key: &str, revision: u64) -> anyhow::Result<()> {
        let revision = revision.to_string();
        let response = self
            .kv_call(|c, kv| {
                c.delete(&format!("{kv}/remove"))
                    .query(&[("key", key), ("if_revision", &revision)])
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            // Somebody else registered since: theirs now, leave it.
            StatusCode::PRECONDITION_FAILED => Ok(()),
            status => bail!("k/v store answered {status}"),
        }
    }
}

fn revision_header(response: &Response) -> Option<u64> {
    response
        .headers()
        .get("x-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
