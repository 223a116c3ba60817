//! `shoal nats file-server`: the files tasks read and write, over HTTP, found over NATS.
//!
//! `GET /{name}` and `POST /{name}` reach only files directly inside `--dir`: a name is 1 to
//! 128 characters of `A-Z a-z 0-9 . _ -`, not starting with a dot, so `..`, slashes (also
//! encoded), absolute paths and hidden files never name a path. Uploads stream to a
//! temporary file that is fsynced and renamed over the old one (readers see the old or the
//! new file, never a part), are limited to `--max-size` (413), and an interrupted upload
//! leaves nothing. `Discovery.FileServer` requests are answered with `http://<advertised
//! address>`: `--advertise`, or the address actually bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use futures::StreamExt as _;
use http_body_util::LengthLimitError;
use shoal_core::ApiError;
use shoal_core::config::{LogFormat, Token, parse_duration, parse_size};
use shoal_core::server::{self, ServerOptions};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::DiscoverableServiceTransport;
use crate::connection::{self, NatsArgs};
use crate::subjects::DISCOVERY_FILE_SERVER;

/// The longest file name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// `shoal nats file-server` flags.
#[derive(Args, Clone, Debug)]
pub struct FileServerConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "SHOAL_NATS_FILE_SERVER_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:3006"
    )]
    pub listen: String,
    /// Address announced on `Discovery.FileServer` (`HOST:PORT`); default: the address
    /// actually bound.
    #[arg(
        long,
        env = "SHOAL_NATS_FILE_SERVER_ADVERTISE",
        value_name = "HOST:PORT"
    )]
    pub advertise: Option<String>,
    /// Directory the files live in (created if missing).
    #[arg(
        long,
        env = "SHOAL_NATS_FILE_SERVER_DIR",
        value_name = "DIR",
        default_value = "./shoal-data/files"
    )]
    pub dir: PathBuf,
    /// Largest upload accepted (`64MiB`, `1GB`, bytes).
    #[arg(long, env = "SHOAL_NATS_FILE_SERVER_MAX_SIZE", value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_size: u64,
    /// An upload that sends nothing for this long is abandoned (408) and leaves nothing.
    #[arg(long, env = "SHOAL_NATS_FILE_SERVER_IDLE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// When set, every route but /healthz requires `Authorization: Bearer <token>`.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,
    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

struct Files {
    dir: PathBuf,
    max_size: u64,
    idle_timeout: Duration,
}

/// Whether `name` may name a file: 1 to [`MAX_NAME_LEN`] of `A-Z a-z 0-9 . _ -`, no leading
/// dot (so no `.`, `..`, hidden or temporary files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn name_from(uri: &Uri) -> Result<String, ApiError> {
    match crate::path_segment(uri) {
        Some(name) if valid_name(&name) => Ok(name),
        _ => Err(ApiError::bad_request(format!(
            "a file name is 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ - and does not start with a dot."
        ))),
    }
}

/// The routes, serving files in `dir`.
pub fn router(dir: PathBuf, max_size: u64, idle_timeout: Duration) -> Router {
    let files = Arc::new(Files {
        dir,
        max_size,
        idle_timeout,
    });
    Router::new()
        .route(
            "/{name}",
            axum::routing::get(get_file)
                .post(post_file)
                .fallback(|| async { ApiError::MethodNotAllowed("GET or POST") }),
        )
        .with_state(files)
}

async fn get_file(State(files): State<Arc<Files>>, uri: Uri) -> Result<Response, ApiError> {
    let name = name_from(&uri)?;
    let path = files.dir.join(&name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!("no file {name}.")));
        }
        Err(e) => {
            return Err(ApiError::Internal(
                anyhow::Error::new(e).context(format!("open {}", path.display())),
            ));
        }
    };
    let length = file.metadata().await.context("stat")?.len();
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

async fn post_file(
    State(files): State<Arc<Files>>,
    request: Request,
) -> Result<Response, ApiError> {
    let name = name_from(request.uri())?;
    let too_large =
        || ApiError::TooLarge(format!("the file is larger than {} bytes.", files.max_size));
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > files.max_size) {
        return Err(too_large());
    }
    // The leading dot keeps temporary files out of the name space clients can reach.
    let temp = files
        .dir
        .join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut guard = TempGuard(Some(temp.clone()));
    let mut out = tokio::fs::File::create(&temp)
        .await
        .with_context(|| format!("create {}", temp.display()))?;
    let mut body = request.into_body().into_data_stream();
    let mut total = 0u64;
    loop {
        // A client that stops sending would otherwise hold the request (whose own timeout is
        // long, for large files) and its temporary file.
        let Ok(next) = tokio::time::timeout(files.idle_timeout, body.next()).await else {
            return Err(ApiError::RequestTimeout(format!(
                "no data for {}; the upload was abandoned.",
                humantime::format_duration(files.idle_timeout)
            )));
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                let inner = err.into_inner();
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
                while let Some(e) = source {
                    if e.is::<LengthLimitError>() {
                        return Err(too_large());
                    }
                    source = e.source();
                }
                return Err(ApiError::bad_request(format!(
                    "the upload was interrupted: {inner}"
                )));
            }
        };
        total += chunk.len() as u64;
        if total > files.max_size {
            return Err(too_large());
        }
        out.write_all(&chunk).await.context("write")?;
    }
    out.sync_all().await.context("fsync")?;
    drop(out);
    let path = files.dir.join(&name);
    tokio::fs::rename(&temp, &path).await.context("rename")?;
    guard.0 = None;
    // The rename is durable once the directory is.
    let dir = files.dir.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
        .await
        .context("fsync of the directory")?
        .context("fsync of the directory")?;
    tracing::debug!(name, bytes = total, "stored");
    Ok((StatusCode::OK, "").into_response())
}

/// Removes the temporary file unless the upload completed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Creates `dir` and removes temporary files a crash left behind.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Answers `Discovery.FileServer` with `address` (`http://HOST:PORT`) until `stop`.
pub async fn serve_discovery(
    client: Client,
    address: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let subscriber = client
        .subscribe(DISCOVERY_FILE_SERVER)
        .await
        .context("cannot subscribe to Discovery.FileServer")?;
    connection::settle(&client).await;
    tracing::info!(
        subject = DISCOVERY_FILE_SERVER,
        address,
        "file server discoverable"
    );
    let answer = DiscoverableServiceTransport { address };
    connection::serve(&client, subscriber, stop, |message| {
        let client = client.clone();
        let answer = answer.clone();
        async move { connection::reply(&client, &message, &answer, None).await }
    })
    .await;
    Ok(())
}

/// Serves files on `listener` and answers discovery until `shutdown`.
pub async fn run(
    config: FileServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    prepare_dir(&config.dir)?;
    let bound = listener.local_addr()?;
    let address = format!(
        "http://{}",
        config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string())
    );
    let stop = server::watch_shutdown(shutdown);
    let discovery = {
        let stop = stop.clone();
        let nats = config.nats.clone();
        tokio::spawn(async move {
            let client = connection::connect(&nats, "shoal-nats-file-server", &stop).await?;
            serve_discovery(client.clone(), address, stop).await?;
            connection::close(&client).await;
            anyhow::Ok(())
        })
    };
    let mut options = ServerOptions::new("nats-file-server");
    options.token = config.token.clone();
    options.body_limit = usize::try_from(config.max_size).unwrap_or(usize::MAX);
    // Large uploads on slow links must not hit the default request timeout.
    options.request_timeout = Duration::from_secs(3600);
    let served_stop = stop.clone();
    let result = server::run(
        router(config.dir.clone(), config.max_size, config.idle_timeout),
        listener,
        async move { served_stop.cancelled().await },
        options,
    )
    .await;
    stop.cancel();
    match discovery.await {
        Ok(Err(err)) => tracing::debug!(error = %err, "discovery ended"),
        Err(err) => tracing::warn!(error = %err, "discovery task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Asks `Discovery.FileServer` for the file server's URL (`http://HOST:PORT`, no trailing
/// slash).
pub async fn discover(client: &Client, timeout: Duration) -> anyhow::Result<String> {
    let reply = connection::request(
        client,
        DISCOVERY_FILE_SERVER,
        &DiscoverableServiceTransport::default(),
        timeout,
    )
    .await
    .context("no file server answered on Discovery.FileServer")?;
    let found: DiscoverableServiceTransport = connection::decode(&reply)?;
    let address = found.address.trim_end_matches('/');
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        anyhow::bail!("the file server announced {address:?}, which is not an http(s) URL");
    }
    Ok(address.to_string())
}
