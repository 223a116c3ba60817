//! `shoal multicast subscribe`: a ready-made subscriber for the hub.
//!
//! # Why
//! Receiving the hub's webhooks correctly takes more than an HTTP handler: the subscriber must
//! register, keep alive well inside the hub's `--expire` (or it silently stops receiving),
//! deregister on the way out, verify Standard Webhooks signatures, drop the duplicates that
//! at-least-once delivery produces, and answer with statuses that make the hub retry exactly
//! when retrying can help. This module does all of that once, so a shell script or a small
//! program can consume events with `shoal multicast subscribe --hub HUB [--exec CMD]` instead of
//! reimplementing it.
//!
//! # Behaviour
//! - `POST /event` receives deliveries (`/healthz` and `/metrics` come with the server).
//! - At start it registers at the hub, retrying with backoff until it succeeds (the hub may
//!   start later), then re-registers every `--keepalive`. On shutdown it deregisters (best
//!   effort, with a short timeout).
//! - With `--signing-secret`, an event whose signature does not verify is answered `401` and
//!   neither printed nor executed.
//! - Events are deduplicated by `webhook-id` (the last [`DEDUPE_CAPACITY`] ids that were
//!   handled successfully): a redelivery is answered `200` without handling it again. An id is
//!   remembered only once its handling succeeded, so a failed event is handled again when the
//!   hub retries it. A redelivery that arrives while the first copy is still being handled is
//!   answered `429`, which makes the hub retry later. Events without a `webhook-id` (sent by
//!   other hubs) are accepted but not deduplicated.
//! - Without `--exec`, each event is printed to stdout as exactly one line (see
//!   [`Output::Stdout`] for the escaping rule) and stdout is flushed. When the reader of
//!   stdout goes away (`… | head -n 1`), the event is answered `500` and the subscriber shuts
//!   down (deregistering) instead of failing every later event.
//! - With `--exec CMD`, `sh -c CMD` runs per event with the body on its stdin and the
//!   environment variables `WEBHOOK_ID` and `WEBHOOK_TIMESTAMP` (empty when the delivery had no
//!   such header); its stdout and stderr are the subscriber's. A non-zero exit, or running
//!   longer than `--exec-timeout` (the shell is then killed), is answered `500` so the hub
//!   retries.
//!
//! # Security
//! The hub does not send the `--token` with deliveries, so `/event` does not require it; the
//! token is only sent to the hub. Anyone who can reach the listener can post events: use
//! `--signing-secret` (and the same secret on the hub) whenever that matters.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use clap::Args;
use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::config::{CommonArgs, base_url, parse_duration};
use shoal_core::error::error_response;
use shoal_core::routes::post;
use shoal_core::server::{self, ServerOptions};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::signing::{self, SigningSecret};

/// How many successfully handled `webhook-id`s are remembered for deduplication.
pub const DEDUPE_CAPACITY: usize = 10_000;

/// Largest event body accepted (`413` beyond). The hub's own default limit is 1 MiB.
pub const BODY_LIMIT: usize = 16 << 20;

/// Time allowed for one registration or keep-alive call to the hub.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for the deregistration on shutdown.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// First delay before retrying a failed registration (doubling per failure, with jitter).
const RETRY_INITIAL: Duration = Duration::from_millis(200);

/// Longest delay between registration retries (also never longer than `--keepalive`).
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Configuration of `shoal multicast subscribe`.
#[derive(Args, Clone, Debug)]
// The hub is named by `--hub`; the shared `--kv` is accepted but not offered.
#[command(mut_arg("kv", |a| a.hide(true)))]
pub struct SubscribeArgs {
    /// The hub to subscribe to (`HOST:PORT` or `http(s)://HOST:PORT`).
    #[arg(long, env = "SHOAL_MULTICAST_SUBSCRIBE_HUB", value_name = "URL", value_parser = base_url)]
    pub hub: String,

    /// Address the event receiver listens on.
    #[arg(
        long,
        env = "SHOAL_MULTICAST_SUBSCRIBE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:3011"
    )]
    pub listen: String,

    /// Address registered at the hub, which the hub delivers to; default: the address
    /// actually bound (so `--listen 127.0.0.1:0` works). Required when listening on all
    /// interfaces (`0.0.0.0`, `[::]`).
    #[arg(
        long,
        env = "SHOAL_MULTICAST_SUBSCRIBE_ADVERTISE",
        value_name = "HOST:PORT"
    )]
    pub advertise: Option<Address>,

    /// Run `sh -c CMD` per event instead of printing it: the body on stdin, `WEBHOOK_ID` and
    /// `WEBHOOK_TIMESTAMP` in the environment. A non-zero exit makes the hub retry the event.
    #[arg(long, env = "SHOAL_MULTICAST_SUBSCRIBE_EXEC", value_name = "CMD")]
    pub exec: Option<String>,

    /// Time allowed for one `--exec` run; beyond it the shell is killed and the hub retries.
    /// Keep it under the hub's --delivery-timeout (default 10s, hence this default), or the
    /// hub gives up waiting first and retries while the command still runs (answered 429).
    #[arg(
        long,
        env = "SHOAL_MULTICAST_SUBSCRIBE_EXEC_TIMEOUT",
        value_name = "DURATION",
        value_parser = parse_positive_duration,
        default_value = "8s"
    )]
    pub exec_timeout: Duration,

    /// Accept only events signed with this secret (Standard Webhooks; `whsec_<base64>` or
    /// text, as given to the hub's --signing-secret). Others are answered 401 and dropped.
    #[arg(
        long,
        env = "SHOAL_MULTICAST_SUBSCRIBE_SIGNING_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub signing_secret: Option<SigningSecret>,

    /// How often to re-register at the hub. A shoal hub announces its --expire, and the
    /// subscriber then keeps alive at least every quarter of it, whatever this says; for other
    /// hubs keep it well under their expiry (the default is a quarter of the default 2m).
    #[arg(
        long,
        env = "SHOAL_MULTICAST_SUBSCRIBE_KEEPALIVE",
        value_name = "DURATION",
        value_parser = parse_positive_duration,
        default_value = "30s"
    )]
    pub keepalive: Duration,

    /// Flags every service shares (`--token` is sent to the hub).
    #[command(flatten)]
    pub common: CommonArgs,
}

impl SubscribeArgs {
    /// Every default, subscribing to `hub` (`HOST:PORT` or URL; checked by [`run`]).
    pub fn new(hub: impl Into<String>) -> Self {
        Self {
            hub: hub.into(),
            listen: "127.0.0.1:3011".into(),
            advertise: None,
            exec: None,
            exec_timeout: Duration::from_secs(8),
            signing_secret: None,
            keepalive: Duration::from_secs(30),
            common: CommonArgs::default(),
        }
    }
}

/// A duration that must not be zero (a zero keep-alive would spin).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    Ok(d)
}

/// One received event, as handed to [`Output::Channel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `webhook-id` header (verified when a signing secret is set), if the delivery had
    /// one.
    pub id: Option<String>,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// Where events go when there is no `--exec`.
#[derive(Clone, Debug)]
pub enum Output {
    /// Print each event as exactly one line on stdout, flushing after each.
    ///
    /// A body that is UTF-8 without control characters is printed as-is. Otherwise control
    /// characters (newlines included) and invisible formatting characters (bidirectional
    /// overrides, zero-width characters, line and paragraph separators) are written as
    /// Rust-style escapes (`\n`, `\t`, `\u{1b}`, `\u{202e}`), and bytes that are not UTF-8 as
    /// `\xNN`. Quotes and backslashes are never escaped, so JSON stays readable, but an escaped
    /// line cannot always be told apart from a body that contained the escape literally:
    /// consumers that need the exact bytes should use `--exec`.
    Stdout,
    /// Send each event to a channel (tests, embedding).
    Channel(UnboundedSender<Event>),
}

/// Runs the subscriber, printing events to stdout (or running `--exec`), until `shutdown`
/// resolves (or stdout is closed); then deregisters and returns once in-flight events are
/// answered.
///
/// `listener` is bound by the caller, normally to `args.listen` with
/// [`shoal_core::server::bind`].
pub async fn run(
    args: SubscribeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_output(args, listener, shutdown, Output::Stdout).await
}

/// Like [`run`], with events (when there is no `--exec`) going to `output`. It also shuts down
/// when an [`Output::Channel`]'s receiver is dropped.
pub async fn run_with_output(
    args: SubscribeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    output: Output,
) -> anyhow::Result<()> {
    let hub = base_url(&args.hub).map_err(|e| anyhow::anyhow!("--hub: {e}"))?;
    if args.keepalive.is_zero() {
        bail!("--keepalive must be greater than zero");
    }
    let bound = listener
        .local_addr()
        .context("listener has no local address")?;
    let address = match &args.advertise {
        Some(address) => address.clone(),
        None => advertised(bound)?,
    };
    let client = HttpClient::new(ClientOptions {
        request_timeout: REGISTER_TIMEOUT,
        token: args.common.token.clone(),
        ..ClientOptions::default()
    })?;
    let registrar = Registrar {
        client,
        hub,
        address,
    };

    let sink = match (&args.exec, output) {
        (Some(command), _) => Sink::Exec {
            command: command.clone(),
            timeout: args.exec_timeout,
        },
        (None, Output::Stdout) => Sink::Stdout(tokio::sync::Mutex::new(tokio::io::stdout())),
        (None, Output::Channel(tx)) => Sink::Channel(tx),
    };
    let stop = CancellationToken::new();
    let receiver = Arc::new(Receiver {
        secret: args.signing_secret.clone(),
        sink,
        seen: Arc::new(SeenIds::new(DEDUPE_CAPACITY)),
        stop: stop.clone(),
    });
    let routes = Router::new()
        .route("/event", post(receive))
        .with_state(receiver);
    let mut options = ServerOptions::new("multicast-subscribe");
    options.body_limit = BODY_LIMIT;
    // Our own answer to a slow command (500 after --exec-timeout) must come before the
    // server's generic 503.
    options.request_timeout = args
        .exec_timeout
        .saturating_add(Duration::from_secs(5))
        .max(options.request_timeout);
    options.connections = args.common.connection_limits();

    tracing::info!(
        hub = %registrar.hub,
        address = %registrar.address,
        keepalive = %humantime::format_duration(args.keepalive),
        exec = args.exec.is_some(),
        signed = args.signing_secret.is_some(),
        "subscribing"
    );

    let serve = async {
        let result = server::run(routes, listener, stop.clone().cancelled_owned(), options).await;
        // If the server ends on its own (an error), stop registering too.
        stop.cancel();
        result
    };
    let watch = async {
        tokio::select! {
            () = shutdown => stop.cancel(),
            () = stop.cancelled() => {}
        }
    };
    let register = async {
        registrar.keep_registered(args.keepalive, &stop).await;
        registrar.deregister().await;
    };
    let (result, (), ()) = tokio::join!(serve, watch, register);
    result
}

/// The address to register when `--advertise` is not given: the bound one, unless that is an
/// address the hub cannot deliver to.
fn advertised(bound: SocketAddr) -> anyhow::Result<Address> {
    if bound.ip().is_unspecified() {
        bail!(
            "listening on all interfaces ({bound}): pass --advertise HOST:PORT with an address \
             the hub can reach"
        );
    }
    bound
        .to_string()
        .parse::<Address>()
        .map_err(|e| anyhow::anyhow!("cannot advertise {bound} ({e}): pass --advertise HOST:PORT"))
}

/// Registration at the hub.
struct Registrar {
    client: HttpClient,
    /// The hub's base URL, without a trailing slash.
    hub: String,
    /// The address registered.
    address: Address,
}

/// Why a call to the hub failed.
#[derive(Debug)]
enum HubCallError {
    /// No answer (connection refused, timeout, …): the hub may not be up yet.
    Unreachable(String),
    /// The hub answered with an error status.
    Answered(StatusCode, String),
}

impl std::fmt::Display for HubCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(reason) => write!(f, "hub unreachable: {reason}"),
            Self::Answered(status, body) => write!(f, "hub answered {status}: {body}"),
        }
    }
}

impl Registrar {
    /// Registers (or refreshes) once; returns the hub's expiry when it announces it
    /// (`x-expire-ms`, sent by shoal hubs).
    async fn register(&self) -> Result<Option<Duration>, HubCallError> {
        let request = self
            .client
            .post(&format!("{}/registerAndKeepAlive", self.hub))
            .query(&[("address", self.address.to_string())]);
        let headers = call(request).await?;
        Ok(headers
            .get("x-expire-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis))
    }

    /// Registers until it succeeds, then keeps alive every `keepalive`, until `stop`.
    async fn keep_registered(&self, keepalive: Duration, stop: &CancellationToken) {
        let mut registered = false;
        let mut failures: u32 = 0;
        loop {
            let result = tokio::select! {
                result = self.register() => result,
                () = stop.cancelled() => return,
            };
            let delay = match result {
                Ok(expire) => {
                    if !registered {
                        tracing::info!(hub = %self.hub, address = %self.address, "registered at the hub");
                    } else if failures > 0 {
                        tracing::info!(hub = %self.hub, failures, "keep-alive succeeded again");
                    } else {
                        tracing::debug!(hub = %self.hub, "kept alive");
                    }
                    registered = true;
                    failures = 0;
                    // At most a quarter of the hub's expiry, whatever --keepalive says, so three
                    // keep-alives in a row may fail before the hub drops this subscriber.
                    match expire {
                        Some(expire) if expire / 4 < keepalive => {
                            (expire / 4).max(Duration::from_millis(50))
                        }
                        _ => keepalive,
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures, keepalive.min(RETRY_MAX));
                    let retry_in = humantime::format_duration(round_ms(delay)).to_string();
                    let what = if registered {
                        "keep-alive failed; the hub drops subscribers that miss keep-alives for its --expire"
                    } else {
                        "cannot register at the hub yet"
                    };
                    match &err {
                        HubCallError::Answered(status, _) if status.is_client_error() => {
                            tracing::error!(hub = %self.hub, error = %err, failures, retry_in, "{what}");
                        }
                        _ => {
                            tracing::warn!(hub = %self.hub, error = %err, failures, retry_in, "{what}")
                        }
                    }
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Deregisters, best effort: failures are logged, and it gives up after a short timeout
    /// (the hub drops the subscriber after its --expire anyway).
    async fn deregister(&self) {
        let request = self
            .client
            .delete(&format!("{}/deregister", self.hub))
            .query(&[("address", self.address.to_string())])
            .timeout(DEREGISTER_TIMEOUT);
        match tokio::time::timeout(DEREGISTER_TIMEOUT, call(request)).await {
            Ok(Ok(_)) => {
                tracing::info!(hub = %self.hub, address = %self.address, "deregistered");
            }
            Ok(Err(err)) => {
                tracing::warn!(hub = %self.hub, error = %err, "cannot deregister; the hub will expire this subscriber");
            }
            Err(_) => {
                tracing::warn!(hub = %self.hub, "deregistration timed out; the hub will expire this subscriber");
            }
        }
    }
}

/// Sends a request to the hub; any 2xx is success.
async fn call(request: reqwest::RequestBuilder) -> Result<HeaderMap, HubCallError> {
    let response = request
        .send()
        .await
        .map_err(|e| HubCallError::Unreachable(error_chain(&e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response.headers().clone());
    }
    let body = response.text().await.unwrap_or_default();
    let mut body = body.trim().to_owned();
    if body.len() > 200 {
        let mut cut = 200;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    Err(HubCallError::Answered(
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    ))
}

/// An error and its sources, `: `-joined (reqwest's own message hides the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// The pause after `failures` failed registrations in a row: exponential from
/// [`RETRY_INITIAL`], capped at `cap`, jittered so subscribers restarted together do not
/// retry together.
fn retry_delay(failures: u32, cap: Duration) -> Duration {
    shoal_core::backoff::exponential(RETRY_INITIAL, cap, failures)
}

/// `d` rounded to milliseconds, for logs.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The event receiver's state.
struct Receiver {
    secret: Option<SigningSecret>,
    sink: Sink,
    seen: Arc<SeenIds>,
    /// Cancelled to shut the subscriber down when the consumer of events is gone.
    stop: CancellationToken,
}

/// What handling an event means.
enum Sink {
    /// Print a line to stdout; the lock keeps lines whole.
    Stdout(tokio::sync::Mutex<tokio::io::Stdout>),
    /// Send to a channel.
    Channel(UnboundedSender<Event>),
    /// Run `sh -c command`.
    Exec { command: String, timeout: Duration },
}

/// `POST /event`.
async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, timestamp) = match &receiver.secret {
        Some(secret) => {
            match secret.verify(&headers, &body, now_unix_secs(), signing::DEFAULT_TOLERANCE) {
                Ok(verified) => (Some(verified.id), Some(verified.timestamp.to_string())),
                Err(err) => {
                    tracing::warn!(error = %err, "rejected an event whose signature does not verify");
                    return error_response(
                        StatusCode::UNAUTHORIZED,
                        &format!("signature check failed: {err}"),
                    );
                }
            }
        }
        None => {
            let id = match single_header(&headers, signing::ID_HEADER) {
                Ok(id) => id,
                Err(reason) => return error_response(StatusCode::BAD_REQUEST, &reason),
            };
            let timestamp = match single_header(&headers, signing::TIMESTAMP_HEADER) {
                Ok(timestamp) => timestamp,
                Err(reason) => return error_response(StatusCode::BAD_REQUEST, &reason),
            };
            (id, timestamp)
        }
    };

    let claim = match &id {
        None => None,
        Some(id) => match receiver.seen.claim(id) {
            Claim::Duplicate => {
                tracing::debug!(id, "duplicate event ignored");
                return "ok".into_response();
            }
            Claim::Busy => {
                tracing::debug!(id, "event already being handled; asking the hub to retry");
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "this event is already being handled",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            Claim::Claimed(claim) => Some(claim),
        },
    };

    // Handled in a task of its own, so that a hub that gives up waiting (closing the
    // connection) does not cancel a command halfway; the claim keeps a redelivery from
    // starting a second run meanwhile.
    let task = tokio::spawn({
        let receiver = Arc::clone(&receiver);
        async move {
            let result = receiver
                .handle(id.as_deref(), timestamp.as_deref(), body)
                .await;
            if result.is_ok()
                && let Some(claim) = claim
            {
                claim.complete();
            }
            result
        }
    });
    match task.await {
        Ok(Ok(())) => "ok".into_response(),
        Ok(Err(reason)) => {
            tracing::warn!(error = %reason, "event not handled; the hub will retry it");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, &reason)
        }
        Err(err) => {
            tracing::error!(error = %err, "event handler failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "event handler failed")
        }
    }
}

impl Receiver {
    /// Prints, sends or executes one event.
    async fn handle(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        body: Bytes,
    ) -> Result<(), String> {
        match &self.sink {
            Sink::Stdout(stdout) => {
                let mut line = display_line(&body);
                line.push('\n');
                let mut stdout = stdout.lock().await;
                let written = match stdout.write_all(line.as_bytes()).await {
                    Ok(()) => stdout.flush().await,
                    Err(err) => Err(err),
                };
                written.map_err(|err| {
                    if err.kind() == io::ErrorKind::BrokenPipe {
                        self.consumer_gone("stdout was closed");
                    }
                    format!("cannot write to stdout: {err}")
                })
            }
            Sink::Channel(tx) => tx
                .send(Event {
                    id: id.map(str::to_owned),
                    body,
                })
                .map_err(|_| {
                    self.consumer_gone("the event channel was closed");
                    "the event consumer is gone".to_owned()
                }),
            Sink::Exec { command, timeout } => {
                run_command(command, *timeout, id, timestamp, &body).await
            }
        }
    }
}

impl Receiver {
    /// Shuts the subscriber down: nothing can handle events any more.
    fn consumer_gone(&self, why: &str) {
        if !self.stop.is_cancelled() {
            tracing::error!("{why}: no event can be handled any more; shutting down");
            self.stop.cancel();
        }
    }
}

/// The value of a header that may appear at most once, as visible ASCII text.
fn single_header(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("header {name} is repeated"));
    }
    match value.to_str() {
        Ok(text) if !text.is_empty() => Ok(Some(text.to_owned())),
        _ => Err(format!("header {name} is empty or not visible ASCII")),
    }
}

/// The receiver's clock, in unix seconds.
fn now_unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Runs `sh -c command` with the body on stdin, within `limit`.
async fn run_command(
    command: &str,
    limit: Duration,
    id: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("WEBHOOK_ID", id.unwrap_or(""))
        .env("WEBHOOK_TIMESTAMP", timestamp.unwrap_or(""))
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let stdin = child.stdin.take();
    let outcome = tokio::time::timeout(limit, async {
        let feed = async move {
            if let Some(mut stdin) = stdin
                && let Err(err) = stdin.write_all(body).await
                && err.kind() != io::ErrorKind::BrokenPipe
            {
                tracing::warn!(error = %err, "cannot write the event to the command's stdin");
            }
            // Dropping stdin here closes it: the command sees the end of its input.
        };
        let ((), status) = tokio::join!(feed, child.wait());
        status
    })
    .await;
    match outcome {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("command failed ({status})")),
        Ok(Err(err)) => Err(format!("cannot wait for the command: {err}")),
        Err(_) => {
            // Kills the shell; processes it started in the background are not tracked.
            let _ = child.kill().await;
            Err(format!(
                "command timed out after {}",
                humantime::format_duration(limit)
            ))
        }
    }
}

/// The body as one line of text (without the newline); see [`Output::Stdout`].
fn display_line(body: &[u8]) -> String {
    let mut line = String::with_capacity(body.len());
    for chunk in body.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                line.extend(c.escape_debug());
            } else if is_invisible_format(c) {
                line.extend(c.escape_unicode());
            } else {
                line.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(line, "\\x{byte:02x}");
        }
    }
    line
}

/// Characters that are not control characters but that a terminal shows as nothing, or that
/// reorder or break the text around them.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

/// Ids recently handled successfully, and ids being handled right now.
struct SeenIds {
    capacity: usize,
    inner: Mutex<SeenInner>,
}

#[derive(Default)]
struct SeenInner {
    /// Handled ids, for lookups.
    done: HashSet<String>,
    /// Handled ids, oldest first, for eviction.
    order: VecDeque<String>,
    /// Ids being handled.
    busy: HashSet<String>,
}

/// The outcome of [`SeenIds::claim`].
enum Claim {
    /// Already handled.
    Duplicate,
    /// Being handled by another request.
    Busy,
    /// Ours to handle; call [`ClaimGuard::complete`] on success, drop it on failure.
    Claimed(ClaimGuard),
}

impl SeenIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(SeenInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeenInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let mut inner = self.lock();
        if inner.done.contains(id) {
            return Claim::Duplicate;
        }
        if !inner.busy.insert(id.to_owned()) {
            return Claim::Busy;
        }
        Claim::Claimed(ClaimGuard {
            seen: Arc::clone(self),
            id: id.to_owned(),
            completed: false,
        })
    }
}

/// An id being handled. Dropping it releases the id; after [`complete`](Self::complete) the
/// id is also remembered as handled.
struct ClaimGuard {
    seen: Arc<SeenIds>,
    id: String,
    completed: bool,
}

impl ClaimGuard {
    fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let capacity = self.seen.capacity;
        let mut inner = self.seen.lock();
        inner.busy.remove(&self.id);
        if self.completed && inner.done.insert(self.id.clone()) {
            inner.order.push_back(std::mem::take(&mut self.id));
            while inner.order.len() > capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.done.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: SubscribeArgs,
    }

    #[test]
    fn defaults_match_new() {
        let cli = Cli::try_parse_from(["x", "--hub", "127.0.0.1:3010"]).expect("parse");
        assert_eq!(cli.args.hub, "http://127.0.0.1:3010");
        let mut expected = SubscribeArgs::new("http://127.0.0.1:3010");
        // The common flags are shoal-core's (and may come from the environment).
        expected.common = cli.args.common.clone();
        assert_eq!(format!("{:?}", cli.args), format!("{expected:?}"));
    }

    #[test]
    fn flags_parse_and_validate() {
        let cli = Cli::try_parse_from([
            "x",
            "--hub",
            "http://hub:1/",
            "--listen",
            "0.0.0.0:9",
            "--advertise",
            "Sub.Example:9",
            "--exec",
            "cat",
            "--exec-timeout",
            "2s",
            "--signing-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--keepalive",
            "250ms",
        ])
        .expect("parse");
        assert_eq!(cli.args.hub, "http://hub:1");
        assert_eq!(cli.args.listen, "0.0.0.0:9");
        assert_eq!(
            cli.args.advertise.as_ref().map(ToString::to_string),
            Some("sub.example:9".to_owned())
        );
        assert_eq!(cli.args.exec.as_deref(), Some("cat"));
        assert_eq!(cli.args.exec_timeout, Duration::from_secs(2));
        assert!(cli.args.signing_secret.is_some());
        assert_eq!(cli.args.keepalive, Duration::from_millis(250));
        assert!(!format!("{:?}", cli.args).contains("MfKQ9r8"));

        assert!(Cli::try_parse_from(["x"]).is_err(), "--hub is required");
        assert!(Cli::try_parse_from(["x", "--hub", "ftp://h"]).is_err());
        assert!(Cli::try_parse_from(["x", "--hub", "h:1", "--keepalive", "0s"]).is_err());
        assert!(Cli::try_parse_from(["x", "--hub", "h:1", "--advertise", "http://h:1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--hub", "h:1", "--signing-secret", ""]).is_err());
    }

    #[test]
    fn lines_are_verbatim_when_possible() {
        assert_eq!(display_line(b"hello world"), "hello world");
        assert_eq!(display_line(br#"{"a":"b\n"}"#), r#"{"a":"b\n"}"#);
        assert_eq!(display_line("grüße ✓".as_bytes()), "grüße ✓");
        assert_eq!(display_line(b""), "");
    }

    #[test]
    fn lines_escape_what_would_break_them() {
        assert_eq!(display_line(b"a\nb\r\tc"), r"a\nb\r\tc");
        assert_eq!(display_line(b"\x1b[31mred"), r"\u{1b}[31mred");
        assert_eq!(display_line(b"nul\0"), r"nul\0");
        assert_eq!(display_line(b"\xff\xfeok\xc3"), r"\xff\xfeok\xc3");
        assert_eq!(display_line("a\u{202e}b".as_bytes()), r"a\u{202e}b");
        assert_eq!(display_line("a\u{2028}b".as_bytes()), r"a\u{2028}b");
        assert_eq!(display_line("a\u{85}b".as_bytes()), r"a\u{85}b");
        assert!(!display_line(&(0u8..=255).collect::<Vec<_>>()).contains(['\n', '\r']));
    }

    fn claimed(seen: &Arc<SeenIds>, id: &str) -> ClaimGuard {
        match seen.claim(id) {
            Claim::Claimed(guard) => guard,
            Claim::Duplicate => panic!("{id} reported as duplicate"),
            Claim::Busy => panic!("{id} reported as busy"),
        }
    }

    #[test]
    fn ids_are_remembered_only_after_success() {
        let seen = Arc::new(SeenIds::new(3));
        let first = claimed(&seen, "a");
        assert!(matches!(seen.claim("a"), Claim::Busy));
        drop(first); // failed: may be handled again
        let again = claimed(&seen, "a");
        again.complete();
        assert!(matches!(seen.claim("a"), Claim::Duplicate));
    }

    #[test]
    fn oldest_ids_are_forgotten() {
        let seen = Arc::new(SeenIds::new(3));
        for id in ["a", "b", "c", "d"] {
            claimed(&seen, id).complete();
        }
        assert!(matches!(seen.claim("b"), Claim::Duplicate));
        assert!(matches!(seen.claim("d"), Claim::Duplicate));
        claimed(&seen, "a").complete();
        assert!(matches!(seen.claim("b"), Claim::Claimed(_)));
        let inner = seen.lock();
        assert_eq!(inner.done.len(), 3);
        assert_eq!(inner.order.len(), 3);
        assert!(inner.busy.is_empty());
    }

    #[test]
    fn advertising_needs_a_reachable_address() {
        let bound: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            advertised(bound).expect("advertised").to_string(),
            "127.0.0.1:4000"
        );
        let v6: SocketAddr = "[::1]:4000".parse().expect("addr");
        assert_eq!(
            advertised(v6).expect("advertised").to_string(),
            "[::1]:4000"
        );
        let any: SocketAddr = "0.0.0.0:4000".parse().expect("addr");
        let err = advertised(any).expect_err("unspecified");
        assert!(err.to_string().contains("--advertise"), "{err}");
    }

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let cap = Duration::from_secs(10);
        let first = retry_delay(1, cap);
        assert!(first >= Duration::from_millis(150) && first < Duration::from_millis(250));
        for failures in [10, 30, u32::MAX] {
            assert!(retry_delay(failures, cap) < Duration::from_millis(12_500));
        }
        assert!(retry_delay(5, Duration::from_millis(100)) < Duration::from_millis(125));
    }
}
