//! `shoal worker`: the seed's worker loop, done properly.
//!
//! Each of `--threads` loops takes a task from the master (a long poll, not the seed's
//! two-second sleep), fetches the upload from storage, transforms it on the blocking pool (so
//! the async side stays responsive), stores the result as `finished`, and only then reports
//! the task finished. While it works it extends the task's lease, so a long job is not handed
//! to another worker. Failures are sorted:
//!
//! - **transient** (a service unreachable, a 5xx): retried with exponential backoff and
//!   jitter; if a task's step keeps failing, the task goes back to the queue (`failTask` with
//!   `retry=true`) for a later attempt;
//! - **the input's fault** (it does not decode, the op cannot apply): the task fails at once
//!   with the reason, never retried;
//! - **a panic** in an operation: caught, reported as that task's failure, the worker goes on.
//!
//! A worker that cannot reach the storage stops claiming until a storage instance answers
//! ready again, rather than claiming tasks it cannot fetch and handing them back. At start it
//! hands back the claims its previous life still holds under its name ([`identity`]).
//!
//! On SIGTERM the loops stop taking tasks and finish those in hand, for at most
//! `--drain-timeout`.

pub mod config;
pub mod identity;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::discovery::{MASTER_ADDRESS, STORAGE_ADDRESS};
use shoal_core::server::{self, ServerOptions};
use shoal_core::upstream::Upstream;
use shoal_imaging::{Format, Limits, Pipeline};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;

/// First pause after a transient failure; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Task loops per thread (see [`run`]).
const LOOPS_PER_THREAD: usize = 2;
/// Tries of one step of a task (fetch, store, report) before the task is handed back.
const STEP_TRIES: u32 = 6;
/// How long a readiness probe of the storage (or of the master and storage, for `/readyz`)
/// may take.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Runs the worker until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = server::watch_shutdown(shutdown);
    let _stop_on_return = cancel.clone().drop_guard();
    let client = HttpClient::new(ClientOptions {
        token: config.common.token.clone(),
        request_timeout: Duration::from_secs(10 * 60),
        ..ClientOptions::default()
    })?;
    let upstream = Upstream::new(
        client,
        &config.common.kv,
        &[
            (MASTER_ADDRESS, config.master.as_deref()),
            (STORAGE_ADDRESS, config.storage.as_deref()),
        ],
    )?;
    let identity = config.identity()?;
    let metrics_server = match &config.metrics.metrics_listen {
        Some(address) => {
            let listener = server::bind(address).await?;
            let mut options = ServerOptions::new("worker");
            options.token = config.common.token.clone();
            options.connections = config.common.connection_limits();
            let probe = upstream.clone();
            options.readiness = Some(Arc::new(move || {
                let upstream = probe.clone();
                Box::pin(async move {
                    upstream
                        .ready(&[MASTER_ADDRESS, STORAGE_ADDRESS], PROBE_LIMIT)
                        .await
                })
            }));
            let stop = cancel.clone();
            Some(tokio::spawn(server::run_metrics_only(
                listener,
                async move { stop.cancelled().await },
                options,
            )))
        }
        None => None,
    };
    let threads = config.thread_count();
    let worker = Arc::new(Worker {
        upstream,
        name: identity.name.clone(),
        poll_wait: config.poll_wait,
        limits: Limits {
            max_pixels: config.max_pixels,
        },
        stop: cancel.clone(),
        cpu: tokio::sync::Semaphore::new(threads),
        storage_down: AtomicBool::new(false),
        storage_probe: tokio::sync::Mutex::new(()),
    });
    tracing::info!(name = %worker.name, threads, "worker started");
    tokio::select! {
        () = worker.release_previous_claims() => {}
        () = cancel.cancelled() => {}
    }
    let mut loops = JoinSet::new();
    // Twice as many loops as threads: while one task is transformed, another loop fetches
    // the next input or stores a result, so the cores do not idle during I/O. The semaphore
    // keeps the transforms themselves at one per thread.
    for _ in 0..threads * LOOPS_PER_THREAD {
        loops.spawn(Arc::clone(&worker).work());
    }
    cancel.cancelled().await;
    tracing::info!("stopping: finishing the tasks in hand");
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while loops.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout = %humantime::format_duration(config.drain_timeout),
            "drain timeout reached; unfinished tasks go back to the queue when their leases run out"
        );
        loops.abort_all();
    }
    if let Some(metrics) = metrics_server {
        let _ = metrics.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// A claimed task.
#[derive(Debug)]
struct Claim {
    id: u64,
    lease: String,
    lease_expires_at: Option<SystemTime>,
    op: String,
    format: String,
}

/// Why a step failed.
#[derive(Debug)]
enum StepError {
    /// Worth retrying: the service may answer next time.
    Transient(String),
    /// The task cannot succeed: fail it with this reason.
    Fatal(String),
    /// Our claim is gone (the lease ran out and another worker has the task): drop it.
    LostLease(String),
}

struct Worker {
    upstream: Upstream,
    name: String,
    poll_wait: Duration,
    limits: Limits,
    stop: CancellationToken,
    /// One permit per thread: transforms running at once.
    cpu: tokio::sync::Semaphore,
    /// Set when no storage instance could be reached: no loop claims until one answers.
    storage_down: AtomicBool,
    /// One loop probes the storage at a time; the others wait for its verdict.
    storage_probe: tokio::sync::Mutex<()>,
}

fn status_error(what: &str, status: StatusCode, body: &[u8]) -> StepError {
    let text = String::from_utf8_lossy(body).into_owned();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        StepError::Transient(format!("{what}: {status} {text}"))
    } else {
        StepError::Fatal(format!("{what}: {status} {text}"))
    }
}

impl Worker {
    /// One loop: claim, process, repeat, until stopped.
    async fn work(self: Arc<Self>) {
        let mut backoff = INITIAL_BACKOFF;
        while !self.stop.is_cancelled() {
            let claim = tokio::select! {
                claim = async {
                    self.wait_for_storage().await;
                    self.claim().await
                } => claim,
                () = self.stop.cancelled() => break,
            };
            match claim {
                Ok(Some(claim)) => {
                    backoff = INITIAL_BACKOFF;
                    self.handle(claim).await;
                }
                Ok(None) => backoff = INITIAL_BACKOFF,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot get a task; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(shoal_core::backoff::jittered(backoff)) => {}
                        () = self.stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hands back the claims still held under this worker's name: its previous life died
    /// holding them. Retries until the master answers (or the worker stops).
    async fn release_previous_claims(&self) {
        let mut backoff = INITIAL_BACKOFF;
        let mut failures = 0u32;
        loop {
            let outcome = self
                .exchange(MASTER_ADDRESS, |c, base| {
                    c.post(&format!("{base}/releaseWorker"))
                        .query(&[("worker", self.name.as_str())])
                })
                .await;
            match outcome {
                Ok((StatusCode::OK, body)) => {
                    let released: u64 = String::from_utf8_lossy(&body).trim().parse().unwrap_or(0);
                    if released > 0 {
                        tracing::info!(
                            released,
                            name = %self.name,
                            "handed back the tasks this worker held before it stopped"
                        );
                    }
                    return;
                }
                Ok((status, body)) if status.is_client_error() => {
                    tracing::warn!(
                        %status,
                        body = %String::from_utf8_lossy(&body),
                        "the master refused to hand back this worker's earlier claims; they return when their leases run out"
                    );
                    return;
                }
                Ok((status, _)) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(%status, "cannot hand back earlier claims yet; retrying");
                    }
                }
                Err(err) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = ?err, "cannot hand back earlier claims yet; retrying");
                    }
                }
            }
            tokio::time::sleep(shoal_core::backoff::jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Returns at once while the storage is reachable; after a call found no storage instance,
    /// waits until one answers ready, so no task is claimed that could not be fetched.
    async fn wait_for_storage(&self) {
        if !self.storage_down.load(Ordering::Acquire) {
            return;
        }
        let _probing = self.storage_probe.lock().await;
        let mut backoff = INITIAL_BACKOFF;
        let mut logged = false;
        while self.storage_down.load(Ordering::Acquire) && !self.stop.is_cancelled() {
            match self.upstream.ready(&[STORAGE_ADDRESS], PROBE_LIMIT).await {
                Ok(()) => {
                    self.storage_down.store(false, Ordering::Release);
                    tracing::info!("the storage answers again; claiming tasks");
                }
                Err(reason) => {
                    if !logged {
                        tracing::warn!(%reason, "no storage instance answers; not claiming tasks until one does");
                        logged = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(shoal_core::backoff::jittered(backoff)) => {}
                        () = self.stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Asks the master for a task, waiting up to `poll_wait` for one.
    async fn claim(&self) -> anyhow::Result<Option<Claim>> {
        let wait = self.poll_wait;
        let wait_text = format!("{}ms", wait.as_millis());
        let response = self
            .upstream
            .send(MASTER_ADDRESS, |c, base| {
                c.long_poll(Method::POST, &format!("{base}/getNewTask"), wait)
                    .query(&[("wait", wait_text.as_str()), ("worker", self.name.as_str())])
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let status = response.status();
        let body = response.bytes().await.context("reading the claim")?;
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            other => anyhow::bail!(
                "the master answered {other}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
        let task: Value = serde_json::from_slice(&body).context("the claim is not JSON")?;
        let id = task["id"].as_u64().context("the claim has no id")?;
        Ok(Some(Claim {
            id,
            lease: task["lease"].as_str().unwrap_or_default().to_owned(),
            lease_expires_at: task["lease_expires_at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok()),
            op: task["payload"]["op"]
                .as_str()
                .unwrap_or("swap-rg")
                .to_owned(),
            format: task["payload"]["format"].as_str().unwrap_or("").to_owned(),
        }))
    }

    /// Processes one claimed task to its end: finished, failed, or handed back.
    async fn handle(&self, claim: Claim) {
        let started = std::time::Instant::now();
        let heartbeat = CancellationToken::new();
        // Also stops the heartbeat when this future is dropped (the drain timeout aborts
        // loops): a claim nobody works on must be allowed to run out.
        let _stop_beating = heartbeat.clone().drop_guard();
        let beat = tokio::spawn(Self::heartbeat(
            self.upstream.clone(),
            claim.id,
            claim.lease.clone(),
            claim.lease_expires_at,
            heartbeat.clone(),
        ));
        let outcome = self.process(&claim).await;
        heartbeat.cancel();
        let _ = beat.await;
        let result = match outcome {
            Ok(()) => "finished",
            Err(StepError::Fatal(reason)) => {
                tracing::warn!(id = claim.id, %reason, "task failed");
                self.report_failure(&claim, &reason, false).await;
                "failed"
            }
            Err(StepError::Transient(reason)) => {
                tracing::warn!(id = claim.id, %reason, "giving the task back for a later attempt");
                self.report_failure(&claim, &reason, true).await;
                "retried"
            }
            Err(StepError::LostLease(reason)) => {
                tracing::warn!(id = claim.id, %reason, "the claim was lost; another worker has the task");
                "lost"
            }
        };
        metrics::counter!("shoal_worker_tasks_total", "result" => result).increment(1);
        metrics::histogram!("shoal_worker_task_seconds", "result" => result)
            .record(started.elapsed().as_secs_f64());
    }

    async fn process(&self, claim: &Claim) -> Result<(), StepError> {
        let pipeline: Pipeline = claim.op.parse().map_err(|e| {
            StepError::Fatal(format!("the task's op {:?} is invalid: {e}", claim.op))
        })?;
        let format = if claim.format.is_empty() {
            None
        } else {
            Some(claim.format.parse::<Format>().map_err(|e| {
                StepError::Fatal(format!(
                    "the task's format {:?} is invalid: {e}",
                    claim.format
                ))
            })?)
        };
        let id = claim.id;
        let input = self
            .retry("fetching the upload", || async {
                let (status, body) = self
                    .exchange(STORAGE_ADDRESS, |c, base| {
                        c.get(&format!("{base}/getImage?state=working&id={id}"))
                    })
                    .await?;
                match status {
                    StatusCode::OK => Ok(body),
                    StatusCode::NOT_FOUND => Err(StepError::Fatal(
                        "the uploaded image is missing from storage".to_owned(),
                    )),
                    other => Err(status_error("fetching the upload", other, &body)),
                }
            })
            .await?;
        let limits = self.limits;
        let cpu = self
            .cpu
            .acquire()
            .await
            .map_err(|_| StepError::Transient("the worker is stopping".to_owned()))?;
        let output = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                shoal_imaging::process(&input, &pipeline, format, &limits)
            }))
        })
        .await
        .map_err(|e| StepError::Fatal(format!("the operation was aborted: {e}")))?;
        drop(cpu);
        let processed = match output {
            Ok(Ok(processed)) => processed,
            Ok(Err(err)) => return Err(StepError::Fatal(err.to_string())),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                return Err(StepError::Fatal(format!(
                    "the operation crashed: {message}"
                )));
            }
        };
        let result = Bytes::from(processed.bytes);
        self.retry("storing the result", || async {
            let (status, body) = self
                .exchange(STORAGE_ADDRESS, |c, base| {
                    c.post(&format!("{base}/sendImage?state=finished&id={id}"))
                        .body(result.clone())
                })
                .await?;
            if status == StatusCode::OK {
                Ok(())
            } else {
                Err(status_error("storing the result", status, &body))
            }
        })
        .await?;
        // Only now, with the result stored, is the task finished (the seed reported finished
        // even when storing failed).
        let lease = claim.lease.as_str();
        self.retry("reporting the task finished", || async {
            let (status, body) = self
                .exchange(MASTER_ADDRESS, |c, base| {
                    c.post(&format!("{base}/registerTaskFinished?id={id}"))
                        .query(&[("lease", lease)])
                })
                .await?;
            match status {
                StatusCode::OK => Ok(()),
                StatusCode::CONFLICT => Err(StepError::LostLease(
                    String::from_utf8_lossy(&body).into_owned(),
                )),
                other => Err(status_error("reporting the task finished", other, &body)),
            }
        })
        .await
    }

    /// One call to a service, its answer read whole; failing to get one is transient.
    async fn exchange(
        &self,
        key: &'static str,
        build: impl Fn(&HttpClient, &str) -> reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Bytes), StepError> {
        // Every storage call is a read or a write of the same bytes under the same name, so
        // it may move to another storage instance after a broken connection.
        let sent = if key == STORAGE_ADDRESS {
            self.upstream.send_idempotent(key, build).await
        } else {
            self.upstream.send(key, build).await
        };
        let response = sent.map_err(|e| {
            if key == STORAGE_ADDRESS {
                self.storage_down.store(true, Ordering::Release);
            }
            StepError::Transient(e.to_string())
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| StepError::Transient(format!("reading the answer: {e}")))?;
        Ok((status, body))
    }

    /// Runs `step` until it succeeds, fails for good, or has failed transiently
    /// [`STEP_TRIES`] times.
    async fn retry<T, F, Fut>(&self, what: &str, mut step: F) -> Result<T, StepError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let mut backoff = INITIAL_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            match step().await {
                Err(StepError::Transient(reason)) if tries < STEP_TRIES => {
                    tracing::debug!(what, %reason, tries, "transient failure; retrying");
                    tokio::time::sleep(shoal_core::backoff::jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                other => return other,
            }
        }
    }

    async fn report_failure(&self, claim: &Claim, reason: &str, retry: bool) {
        let id = claim.id;
        let lease = claim.lease.as_str();
        let outcome = self
            .retry("reporting the failure", || async {
                let (status, body) = self
                    .exchange(MASTER_ADDRESS, |c, base| {
                        c.post(&format!("{base}/failTask?id={id}&retry={retry}"))
                            .query(&[("lease", lease), ("reason", reason)])
                    })
                    .await?;
                if status == StatusCode::OK {
                    Ok(())
                } else {
                    Err(status_error("reporting the failure", status, &body))
                }
            })
            .await;
        if let Err(err) = outcome {
            tracing::warn!(id, error = ?err, "could not report the failure; the lease will run out");
        }
    }

    /// Extends the lease at a third of its remaining time until `done`.
    async fn heartbeat(
        upstream: Upstream,
        id: u64,
        lease: String,
        expires_at: Option<SystemTime>,
        done: CancellationToken,
    ) {
        let Some(expires_at) = expires_at else {
            return;
        };
        let lease_length = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let every = (lease_length / 3).clamp(Duration::from_millis(200), Duration::from_secs(60));
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let sent = upstream
                .send(MASTER_ADDRESS, |c, base| {
                    c.post(&format!("{base}/extendLease?id={id}"))
                        .query(&[("lease", lease.as_str())])
                })
                .await;
            match sent {
                Ok(r) if r.status() == StatusCode::OK => {}
                Ok(r) => tracing::warn!(id, status = %r.status(), "could not extend the lease"),
                Err(err) => tracing::warn!(id, error = %err, "could not extend the lease"),
            }
        }
    }
}
