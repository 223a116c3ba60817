//! `shoal nats frontend`: `GET /{id}` asks the user-name provider and the time teller at the
//! same time and answers within `--timeout` whatever they do. A part whose backend is down,
//! slow or not yet reachable is left empty (the tutorial's graceful degradation); with
//! `Accept: application/json` the answer says which part is missing with explicit nulls.
//!
//! The tutorial's frontend never answers `GET /%FF` (an error path skips the wait-group
//! release) and writes the status from a spawned goroutine; here the id is decoded once, up
//! front, and anything that is not UTF-8 is a 400.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::Client;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use shoal_core::ApiError;
use shoal_core::config::{LogFormat, Token, parse_duration};
use shoal_core::routes;
use shoal_core::server::{self, ServerOptions};
use tokio::net::TcpListener;

use crate::connection::{self, NatsArgs};
use crate::subjects::{TIME_TELLER, USER_NAME_BY_ID};
use crate::{Time, User};

/// The longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// `shoal nats frontend` flags.
#[derive(Args, Clone, Debug)]
pub struct FrontendConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "SHOAL_NATS_FRONTEND_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:3005"
    )]
    pub listen: String,
    /// How long to wait for the backends; the answer comes within about this time.
    #[arg(long, env = "SHOAL_NATS_FRONTEND_TIMEOUT", value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub timeout: Duration,
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

#[derive(Clone)]
struct Shared {
    // Filled once the first connect succeeds; until then every part is "unavailable", so
    // the page works (degraded) while NATS is down at start-up.
    client: Arc<OnceLock<Client>>,
    timeout: Duration,
}

/// What the user-name provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPart {
    /// The provider knows the id.
    Found(String),
    /// The provider answered with no name.
    Unknown,
    /// No answer in time (no provider, NATS down, undecodable reply).
    Unavailable,
}

/// The routes (`GET /{id}`), over `client` once it is set.
fn router(shared: Shared) -> Router {
    Router::new()
        .route(
            "/",
            routes::get(|| async { ApiError::bad_request("missing id: ask GET /{id}.") }),
        )
        .route("/{id}", routes::get(greet))
        .with_state(shared)
}

/// Serves the frontend on `listener` until `shutdown`, connecting to NATS in the background.
pub async fn run(
    config: FrontendConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = server::watch_shutdown(shutdown);
    let client = Arc::new(OnceLock::new());
    let connecting = {
        let client = client.clone();
        let stop = stop.clone();
        let nats = config.nats.clone();
        tokio::spawn(async move {
            if let Ok(connected) = connection::connect(&nats, "shoal-nats-frontend", &stop).await {
                let _ = client.set(connected);
            }
        })
    };
    let shared = Shared {
        client: client.clone(),
        timeout: config.timeout,
    };
    let mut options = ServerOptions::new("nats-frontend");
    options.token = config.token.clone();
    let served_stop = stop.clone();
    let result = server::run(
        router(shared),
        listener,
        async move { served_stop.cancelled().await },
        options,
    )
    .await;
    stop.cancel();
    connecting.abort();
    if let Some(client) = client.get() {
        connection::close(client).await;
    }
    result
}

/// The router alone, for tests that bring their own client.
pub fn router_with(client: Client, timeout: Duration) -> Router {
    let cell = OnceLock::new();
    let _ = cell.set(client);
    router(Shared {
        client: Arc::new(cell),
        timeout,
    })
}

/// The id from the raw path: percent-decoded, UTF-8, 1 to [`MAX_ID_BYTES`] bytes.
fn parse_id(uri: &Uri) -> Result<String, ApiError> {
    let id = crate::path_segment(uri)
        .ok_or_else(|| ApiError::bad_request("the id is not valid UTF-8."))?;
    if id.is_empty() {
        return Err(ApiError::bad_request("missing id: ask GET /{id}."));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(ApiError::bad_request(format!(
            "the id is longer than {MAX_ID_BYTES} bytes."
        )));
    }
    Ok(id)
}

/// Asks the user-name provider, bounded by `timeout`.
pub async fn ask_user(client: &Client, id: &str, timeout: Duration) -> UserPart {
    let request = User {
        id: id.to_string(),
        name: String::new(),
    };
    match connection::request(client, USER_NAME_BY_ID, &request, timeout).await {
        Ok(reply) => match connection::decode::<User>(&reply) {
            Ok(user) if !user.name.is_empty() => UserPart::Found(user.name),
            Ok(_) => UserPart::Unknown,
            Err(err) => {
                tracing::debug!(error = %err, "bad reply from a user provider");
                UserPart::Unavailable
            }
        },
        Err(err) => {
            tracing::debug!(error = %err, "no user name");
            UserPart::Unavailable
        }
    }
}

/// Asks the time teller, bounded by `timeout`.
pub async fn ask_time(client: &Client, timeout: Duration) -> Option<String> {
    match connection::request(client, TIME_TELLER, &Time::default(), timeout).await {
        Ok(reply) => connection::decode::<Time>(&reply)
            .ok()
            .map(|t| t.time)
            .filter(|t| !t.is_empty()),
        Err(err) => {
            tracing::debug!(error = %err, "no time");
            None
        }
    }
}

async fn greet(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&uri)?;
    let (user, time) = match shared.client.get() {
        Some(client) => tokio::join!(
            ask_user(client, &id, shared.timeout),
            ask_time(client, shared.timeout)
        ),
        None => (UserPart::Unavailable, None),
    };
    let mut degraded = Vec::new();
    if user == UserPart::Unavailable {
        degraded.push("user-provider");
    }
    if time.is_none() {
        degraded.push("time-teller");
    }
    if !degraded.is_empty() {
        metrics::counter!("shoal_nats_frontend_degraded_total").increment(1);
    }
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let mut response = if json {
        let (name, status) = match &user {
            UserPart::Found(name) => (Some(name.as_str()), "found"),
            UserPart::Unknown => (None, "unknown"),
            UserPart::Unavailable => (None, "unavailable"),
        };
        axum::Json(serde_json::json!({
            "id": id,
            "name": name,
            "user": status,
            "time": time,
            "degraded": degraded,
        }))
        .into_response()
    } else {
        let name = match &user {
            UserPart::Found(name) => name.as_str(),
            UserPart::Unknown | UserPart::Unavailable => "",
        };
        let time = time.as_deref().unwrap_or("");
        format!("Hello {name} with id {id}, the time is {time}.\n").into_response()
    };
    if !degraded.is_empty()
        && let Ok(value) = HeaderValue::from_str(&degraded.join(", "))
    {
        response.headers_mut().insert("x-degraded", value);
    }
    Ok(response)
}
