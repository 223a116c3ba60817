//! `shoal nats worker`: the tutorial's loop (ask for a task, discover the file server, fetch
//! the file, count its words, upload the result, publish the finish) on `--threads` loops.
//!
//! Unlike the tutorial's worker it really waits when something fails (exponential backoff
//! with jitter, 100 ms to 5 s; "no work" backs off from 50 ms to 2 s), checks every HTTP
//! status (a 404 page is not counted as words and the task is not reported finished), and
//! writes the counts sorted by word. On SIGTERM each loop finishes the task in hand, then
//! the connection is drained.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::Client;
use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use clap::Args;
use prost::Message as _;
use shoal_core::config::{LogFormat, MetricsArgs, parse_duration};
use tokio_util::sync::CancellationToken;

use crate::Task;
use crate::connection::{self, NatsArgs};
use crate::fileserver::valid_name;
use crate::headers::{ERROR, NO_WORK};
use crate::subjects::{TASK_FINISHED, TASK_TO_DO};
use crate::task_state::FINISHED;

/// `shoal nats worker` flags.
#[derive(Args, Clone, Debug)]
pub struct WorkerConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// How many task loops run at once.
    #[arg(long, env = "SHOAL_NATS_WORKER_THREADS", value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// How long to wait for the master's answer.
    #[arg(long, env = "SHOAL_NATS_WORKER_TIMEOUT", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// `/healthz` and `/metrics`.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The HTTP client workers, the master's demo and `submit` use.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    shoal_core::client::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(300))
        .build()
        .context("cannot build the HTTP client")
}

/// `POST {server}/{name}` with `body`; anything but 200 is an error naming the status.
pub async fn upload(
    http: &reqwest::Client,
    server: &str,
    name: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    let url = format!("{server}/{name}");
    let response = http
        .post(&url)
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let text = response.text().await.unwrap_or_default();
        bail!("POST {url} answered {status}: {}", text.trim());
    }
    Ok(())
}

/// `GET {server}/{name}`; anything but 200 is an error naming the status.
pub async fn download(http: &reqwest::Client, server: &str, name: &str) -> anyhow::Result<Bytes> {
    let url = format!("{server}/{name}");
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let text = response.text().await.unwrap_or_default();
        bail!("GET {url} answered {status}: {}", text.trim());
    }
    response
        .bytes()
        .await
        .with_context(|| format!("GET {url}: body"))
}

/// Counts the words of a comma-separated text. Words are trimmed of surrounding whitespace
/// (a file usually ends with a newline) and empty ones are skipped.
pub fn count_words(text: &str) -> BTreeMap<&str, u64> {
    let mut counts = BTreeMap::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// The result file: one `word : count` line per word, sorted by word (the tutorial's line
/// format, in a stable order).
pub fn format_counts(counts: &BTreeMap<&str, u64>) -> String {
    let mut out = String::new();
    for (word, count) in counts {
        out.push_str(word);
        out.push_str(" : ");
        out.push_str(&count.to_string());
        out.push('\n');
    }
    out
}

/// What one turn of the loop did.
#[derive(Debug)]
enum Turn {
    Done,
    NoWork,
}

/// The file server's address, asked again after 10 s or after a failure.
#[derive(Default)]
struct Discovered(Mutex<Option<(String, Instant)>>);

impl Discovered {
    async fn get(&self, client: &Client) -> anyhow::Result<String> {
        let cached = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some((address, at)) = cached
            && at.elapsed() < Duration::from_secs(10)
        {
            return Ok(address);
        }
        let address = crate::fileserver::discover(client, Duration::from_secs(1)).await?;
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((address.clone(), Instant::now()));
        Ok(address)
    }

    fn forget(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

struct Shared {
    client: Client,
    http: reqwest::Client,
    timeout: Duration,
    file_server: Discovered,
}

async fn turn(shared: &Shared) -> anyhow::Result<Turn> {
    let reply = match tokio::time::timeout(
        shared.timeout,
        shared.client.request(TASK_TO_DO, Bytes::new()),
    )
    .await
    {
        Err(_) => bail!(
            "no master answered {TASK_TO_DO} within {:?}",
            shared.timeout
        ),
        Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => {
            bail!("no master is running (no responders on {TASK_TO_DO})")
        }
        Ok(Err(err)) => bail!("{TASK_TO_DO} failed: {err}"),
        Ok(Ok(reply)) => reply,
    };
    if let Some(reason) = connection::header_value(&reply, ERROR) {
        bail!("the master could not hand out a task: {reason}");
    }
    let mut task: Task = connection::decode(&reply)?;
    if connection::has_header(&reply, NO_WORK) || task.uuid.is_empty() {
        return Ok(Turn::NoWork);
    }
    if !valid_name(&task.uuid) {
        bail!(
            "the master handed out task {} with uuid {:?}, which is not a file name",
            task.id,
            task.uuid
        );
    }
    let server = shared.file_server.get(&shared.client).await?;
    let input = match download(&shared.http, &server, &task.uuid).await {
        Ok(input) => input,
        Err(err) => {
            shared.file_server.forget();
            return Err(err.context(format!("task {}: cannot fetch its file", task.id)));
        }
    };
    let result = if input.len() > 1 << 20 {
        // Large inputs are counted off the async threads.
        tokio::task::spawn_blocking(move || {
            format_counts(&count_words(&String::from_utf8_lossy(&input)))
        })
        .await
        .context("word count")?
    } else {
        format_counts(&count_words(&String::from_utf8_lossy(&input)))
    };
    let finished = uuid::Uuid::new_v4().to_string();
    if let Err(err) = upload(&shared.http, &server, &finished, Bytes::from(result)).await {
        shared.file_server.forget();
        return Err(err.context(format!("task {}: cannot store its result", task.id)));
    }
    task.finisheduuid = finished;
    task.state = FINISHED;
    shared
        .client
        .publish(TASK_FINISHED, Bytes::from(task.encode_to_vec()))
        .await
        .context("cannot publish the finish")?;
    metrics::counter!("shoal_nats_worker_tasks_total").increment(1);
    tracing::debug!(id = task.id, uuid = %task.uuid, "task finished");
    Ok(Turn::Done)
}

async fn task_loop(shared: Arc<Shared>, stop: CancellationToken, index: u16) {
    let mut failures = 0u32;
    let mut idle = 0u32;
    while !stop.is_cancelled() {
        let delay = match turn(&shared).await {
            Ok(Turn::Done) => {
                failures = 0;
                idle = 0;
                continue;
            }
            Ok(Turn::NoWork) => {
                failures = 0;
                idle += 1;
                shoal_core::backoff::exponential(
                    Duration::from_millis(50),
                    Duration::from_secs(2),
                    idle,
                )
            }
            Err(err) => {
                idle = 0;
                failures += 1;
                let delay = shoal_core::backoff::exponential(
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                    failures,
                );
                // The first failure and then every doubling: a missing master is reported,
                // not logged thousands of times a second.
                if failures.is_power_of_two() {
                    tracing::warn!(loop_index = index, error = %format!("{err:#}"), retry_in = ?delay, failures, "task failed; waiting before retrying");
                }
                metrics::counter!("shoal_nats_worker_failures_total").increment(1);
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Runs `threads` task loops on `client` until `stop`; each loop finishes the task in hand.
pub async fn work(
    client: Client,
    threads: u16,
    timeout: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        client: client.clone(),
        http: http_client()?,
        timeout,
        file_server: Discovered::default(),
    });
    tracing::info!(threads, "worker ready");
    let loops: Vec<_> = (0..threads)
        .map(|i| tokio::spawn(task_loop(shared.clone(), stop.clone(), i)))
        .collect();
    for handle in loops {
        let _ = handle.await;
    }
    // Finishes published by the last turns reach the server before the process exits
    // (bounded: with the server gone a flush would wait for a reconnection).
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    Ok(())
}

/// Connects and runs the worker until `stop`.
pub async fn run(config: WorkerConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let client = connection::connect(&config.nats, "shoal-nats-worker", &stop).await?;
    work(client.clone(), config.threads, config.timeout, stop).await?;
    connection::close(&client).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_tutorial_file_sorted() {
        let counts = count_words(crate::master::DEMO_CONTENT);
        assert_eq!(
            format_counts(&counts),
            "data : 1\nget : 3\nhave : 1\nmy : 2\n"
        );
    }

    #[test]
    fn trims_words_and_skips_empty_ones() {
        let counts = count_words(" a, b ,,a\n");
        assert_eq!(format_counts(&counts), "a : 2\nb : 1\n");
        assert!(count_words("").is_empty());
        assert!(count_words(",,\n").is_empty());
    }
}
