//! `shoal submit`: the batch client — upload images, wait for them, download the results.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args as ClapArgs;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::config::Token;

/// Flags of `shoal submit`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Images to process (PNG, JPEG or WebP).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// The frontend (the URL `shoal up` prints) or the master: both serve the public API
    /// `/api/v1/tasks` it uses.
    #[arg(
        long,
        env = "SHOAL_SUBMIT_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    /// The operation chain, e.g. `resize:800x600,grayscale` (default: the server's, swap-rg).
    #[arg(long)]
    pub op: Option<String>,

    /// Output format: png, jpeg or webp (default: the input's).
    #[arg(long)]
    pub format: Option<String>,

    /// Where results are written, as `NAME.EXT` after each input file's name.
    #[arg(long, default_value = "./shoal-out")]
    pub out: PathBuf,

    /// Images in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Bearer token, if the server requires one.
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<Token>,
}

/// One file's fate.
struct Outcome {
    file: PathBuf,
    result: Result<PathBuf, String>,
}

/// Submits every file, prints a summary, and fails when any image failed.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = shoal_core::config::base_url(&args.server).map_err(anyhow::Error::msg)?;
    let client = HttpClient::new(ClientOptions {
        token: args.token.clone(),
        request_timeout: Duration::from_secs(10 * 60),
        ..ClientOptions::default()
    })?;
    tokio::fs::create_dir_all(&args.out)
        .await
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = ProgressBar::new(args.files.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let job = Job {
        client: &client,
        server: &server,
        op: args.op.as_deref(),
        format: args.format.as_deref(),
        out: &args.out,
    };
    let mut outcomes: Vec<Outcome> = futures::stream::iter(args.files.iter())
        .map(|file| {
            let job = &job;
            let bar = &bar;
            async move {
                let result = job.submit(file).await.map_err(|e| format!("{e:#}"));
                let line = match &result {
                    Ok(out) => format!("done   {} → {}", file.display(), out.display()),
                    Err(reason) => format!("FAILED {}: {reason}", file.display()),
                };
                if terminal {
                    bar.println(line);
                } else {
                    println!("{line}");
                }
                bar.inc(1);
                Outcome {
                    file: file.clone(),
                    result,
                }
            }
        })
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    bar.finish_and_clear();
    outcomes.sort_by(|a, b| a.file.cmp(&b.file));
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    println!(
        "{} of {} images processed into {}",
        outcomes.len() - failed.len(),
        outcomes.len(),
        args.out.display()
    );
    if failed.is_empty() {
        return Ok(());
    }
    for outcome in &failed {
        if let Err(reason) = &outcome.result {
            eprintln!("failed: {}: {reason}", outcome.file.display());
        }
    }
    bail!("{} of {} images failed", failed.len(), outcomes.len())
}

struct Job<'a> {
    client: &'a HttpClient,
    server: &'a str,
    op: Option<&'a str>,
    format: Option<&'a str>,
    out: &'a Path,
}

/// Pauses between retries of transient failures, and how many.
const RETRIES: [Duration; 6] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

impl Job<'_> {
    async fn submit(&self, file: &Path) -> anyhow::Result<PathBuf> {
        let bytes = tokio::fs::read(file)
            .await
            .with_context(|| format!("cannot read {}", file.display()))?;
        // The same file with the same op is the same job: a retried upload (after a lost
        // answer) must not create a second task.
        let key = {
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            digest.update(&bytes);
            digest.update(self.op.unwrap_or("").as_bytes());
            digest.update(b"\0");
            digest.update(self.format.unwrap_or("").as_bytes());
            digest
                .finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(op) = self.op {
            query.push(("op", op));
        }
        if let Some(format) = self.format {
            query.push(("format", format));
        }
        let body = bytes::Bytes::from(bytes);
        // The public API, which the master and the frontend both serve.
        let created = self
            .retrying_text(|| {
                self.client
                    .post(&format!("{}/api/v1/tasks", self.server))
                    .query(&query)
                    .header("idempotency-key", key.as_str())
                    .body(body.clone())
            })
            .await?;
        let id = serde_json::from_str::<serde_json::Value>(&created)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .context("the server answered no id")?;
        let mut state = String::from("queued");
        loop {
            let answer = self
                .retrying_text(|| {
                    self.client
                        .long_poll(
                            reqwest::Method::GET,
                            &format!("{}/api/v1/tasks/{id}", self.server),
                            Duration::from_secs(30),
                        )
                        .query(&[("wait", "30s"), ("state", state.as_str())])
                })
                .await?;
            let task: serde_json::Value =
                serde_json::from_str(&answer).context("the server's answer is not a task")?;
            match task["state"].as_str() {
                Some("finished") => break,
                Some("failed") => bail!(
                    "processing failed: {}",
                    task["error"].as_str().unwrap_or("unknown reason")
                ),
                Some(other) => state = other.to_owned(),
                None => bail!("the server's answer is not a task: {answer}"),
            }
        }
        // Retried like every other call: the instance serving the download may die mid-way,
        // and another one serves it whole.
        let (headers, data) = self
            .retrying(|| {
                self.client
                    .get(&format!("{}/api/v1/tasks/{id}/result", self.server))
            })
            .await
            .context("downloading the result")?;
        let extension = match headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            Some("image/jpeg") => "jpg",
            Some("image/webp") => "webp",
            Some("image/png") => "png",
            _ => "bin",
        };
        let stem = file.file_stem().map_or_else(
            || format!("image-{id}"),
            |s| s.to_string_lossy().into_owned(),
        );
        let target = self.out.join(format!("{stem}.{extension}"));
        let temp = self.out.join(format!(".{stem}.{extension}.part"));
        tokio::fs::write(&temp, &data)
            .await
            .with_context(|| format!("cannot write {}", temp.display()))?;
        tokio::fs::rename(&temp, &target)
            .await
            .with_context(|| format!("cannot write {}", target.display()))?;
        Ok(target)
    }

    /// Sends the request `build` makes until it gets a whole answer that is not transient
    /// (a connection error, an answer broken off, a 5xx or a 429 are); a 2xx answer's headers
    /// and body are returned, anything else is the error the server gave.
    async fn retrying(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::header::HeaderMap, bytes::Bytes)> {
        let mut pauses = RETRIES.iter();
        loop {
            let transient = match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let retry_after = headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match response.bytes().await {
                        Ok(body) if status.is_success() => return Ok((headers, body)),
                        Ok(body)
                            if !(status.is_server_error()
                                || status == StatusCode::TOO_MANY_REQUESTS) =>
                        {
                            bail!("{}", reason(&String::from_utf8_lossy(&body)));
                        }
                        Ok(body) => (
                            format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
                            retry_after,
                        ),
                        Err(err) => (format!("the answer broke off: {err}"), None),
                    }
                }
                Err(err) => (err.to_string(), None),
            };
            let Some(pause) = pauses.next() else {
                bail!("the server kept failing: {}", transient.0);
            };
            tokio::time::sleep(transient.1.unwrap_or(*pause)).await;
        }
    }

    /// [`Self::retrying`], for answers that are text.
    async fn retrying_text(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<String> {
        let (_, body) = self.retrying(build).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The reason in an error body: `{"error": "…"}` from the public API, or `Error: …` text.
fn reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().trim_start_matches("Error: ").to_owned())
}
