//! Server bootstrap: the middleware stack every service runs behind, the health routes, and a
//! graceful shutdown that drains in-flight requests within a bounded time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Token;
use crate::connections::{self, ConnectionLimits};
use crate::error::{ShoalErrorBody, error_response};
use crate::{metrics, request_id, routes};

/// A readiness check: resolves to `Err(reason)` while a dependency is unreachable.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How a service's HTTP server behaves. Build with [`ServerOptions::new`] and adjust fields.
#[derive(Clone)]
pub struct ServerOptions {
    /// The service's name, used in metrics labels and logs (`kv`, `tasks`, …).
    pub service: &'static str,
    /// Largest request body accepted; larger ones get 413 before the body is read when the
    /// client announced its length.
    pub body_limit: usize,
    /// Time a request may take before it is answered 503. Only a `wait=` request to a route
    /// layered with [`long_poll`] is exempt (it bounds its own wait); on any other route a
    /// `wait=` parameter changes nothing.
    pub request_timeout: Duration,
    /// After a shutdown signal, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
    /// When set, every route but `/healthz` requires `Authorization: Bearer <token>`.
    pub token: Option<Token>,
    /// What `/readyz` checks, beyond the process being up.
    pub readiness: Option<Readiness>,
    /// Bounds on connections: how many at once, how long a client may take to send headers.
    pub connections: ConnectionLimits,
}

impl ServerOptions {
    /// Defaults: 2 MiB bodies, 30 s requests, 10 s drain, no token, no readiness check.
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            body_limit: 2 << 20,
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            token: None,
            readiness: None,
            connections: ConnectionLimits::default(),
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("service", &self.service)
            .field("body_limit", &self.body_limit)
            .field("request_timeout", &self.request_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("token", &self.token)
            .field("readiness", &self.readiness.is_some())
            .field("connections", &self.connections)
            .finish()
    }
}

/// The service's routes plus the health routes, behind the whole middleware stack. Tests can
/// drive this with `tower::ServiceExt::oneshot`, no socket needed.
pub fn app(routes: Router, options: &ServerOptions) -> Router {
    // Install the recorder before the first request, so nothing recorded is lost.
    let _ = metrics::handle();
    let readiness = options.readiness.clone();
    let health = Router::new()
        .route("/healthz", routes::get(|| async { "ok" }))
        .route("/readyz", routes::get(move || ready(readiness.clone())))
        .route("/metrics", routes::get(metrics_text));
    let request_timeout = options.request_timeout;
    // Order: the first layer listed sees the request first.
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(make_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::from_fn_with_state(
            options.service,
            metrics::track,
        ))
        .layer(middleware::from_fn(uniform_error_bodies))
        .layer(middleware::from_fn(request_id::propagate))
        .layer(middleware::from_fn_with_state(
            options.token.clone().map(Arc::new),
            authorize,
        ))
        .layer(middleware::from_fn_with_state(request_timeout, timeout))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(options.body_limit));
    routes
        .merge(health)
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "Not found.") })
        .layer(stack)
}

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `drain_timeout`, and returns.
pub async fn run(
    routes: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServerOptions,
) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("listener has no local address")?;
    warn_if_exposed(options.service, local, options.token.is_some());
    let drain = options.drain_timeout;
    let app = app(routes, &options);
    let stop = CancellationToken::new();
    let server = connections::serve(
        listener,
        app,
        options.connections,
        options.service,
        stop.clone(),
    );
    tokio::pin!(server);
    tracing::info!(service = options.service, address = %local, "listening");
    tokio::select! {
        () = &mut server => {}
        () = shutdown => {}
    }
    // Stop accepting, close idle connections, let in-flight requests finish, within `drain`.
    stop.cancel();
    if tokio::time::timeout(drain, server).await.is_err() {
        tracing::warn!(
            service = options.service,
            "drain timeout reached; dropping remaining connections"
        );
    }
    tracing::info!(service = options.service, "stopped");
    Ok(())
}

/// Serves only `/healthz`, `/readyz` and `/metrics` (for `--metrics-listen` of processes
/// without an HTTP API of their own) until `shutdown` resolves.
pub async fn run_metrics_only(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServerOptions,
) -> anyhow::Result<()> {
    run(Router::new(), listener, shutdown, options).await
}

/// A token cancelled when `shutdown` resolves. The future is watched from now on, so work
/// that happens before serving (registering in the k/v store, say) can stop at a shutdown
/// too; cancelling the token yourself ends the watch.
pub fn watch_shutdown(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let watcher = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => watcher.cancel(),
            () = watcher.cancelled() => {}
        }
    });
    token
}

/// Binds `address`, failing loudly with the address in the message (the seeds exit silently
/// with status 0 when the port is taken).
pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

fn warn_if_exposed(service: &str, local: SocketAddr, has_token: bool) {
    if !local.ip().is_loopback() && !has_token {
        tracing::warn!(
            service,
            address = %local,
            "listening on a non-loopback address without --token: anyone who can reach it can use it"
        );
    }
}

fn make_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = id)
}

async fn ready(check: Option<Readiness>) -> Response {
    let Some(check) = check else {
        return "ready".into_response();
    };
    match tokio::time::timeout(Duration::from_secs(5), check()).await {
        Ok(Ok(())) => "ready".into_response(),
        Ok(Err(reason)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: {reason}"),
        ),
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: check timed out",
        ),
    }
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
        .into_response()
}

/// Gives every error response the seeds' `Error: <reason>` text body, whoever produced it
/// (axum's 405 and extractor rejections, the body-limit layer, …).
/// Longest error body turned into JSON; error bodies are one line of text.
const MAX_ERROR_BODY: usize = 64 * 1024;

async fn uniform_error_bodies(request: Request, next: Next) -> Response {
    // The public JSON API answers errors as `{"error": "…"}`; everything else keeps the
    // seeds' `Error: …` text.
    let json = request.uri().path().starts_with("/api/");
    let response = text_error_bodies(next.run(request).await);
    if json && (response.status().is_client_error() || response.status().is_server_error()) {
        return json_error_body(response).await;
    }
    response
}

/// Rewrites an `Error: …` text response as `{"error": "…"}`, keeping status and headers.
async fn json_error_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let reason = text.trim().trim_start_matches("Error: ");
    let body = serde_json::json!({ "error": reason }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

fn text_error_bodies(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<ShoalErrorBody>().is_some()
    {
        return response;
    }
    let reason = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = response
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty() && *m != "HEAD")
                .collect::<Vec<_>>()
                .join(" or ");
            if allowed.is_empty() {
                "Method not allowed.".to_owned()
            } else {
                format!("Only {allowed} accepted.")
            }
        }
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_owned(),
        other => other
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    parts.extensions.insert(ShoalErrorBody);
    Response::from_parts(parts, Body::from(format!("Error: {reason}")))
}

async fn authorize(
    State(token): State<Option<Arc<Token>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| credentials(v, "Bearer"))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        return next.run(request).await;
    }
    let mut response = error_response(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The credentials of an `Authorization` value in `scheme`; the scheme's name is matched
/// without regard to case (RFC 7235: `bearer x` and `BEARER x` are `Bearer x`).
pub fn credentials<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_start_matches(' '))
}

/// Whether the request asks to wait (`wait=` in its query).
fn asks_to_wait(request: &Request) -> bool {
    request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("wait=")))
}

/// Put on every request by the timeout middleware; [`long_poll`] turns it on.
#[derive(Clone)]
struct LongPollAllowance(Arc<AtomicBool>);

/// Middleware for the routes that long-poll (layer it on their method router): a request with
/// `wait=` on such a route is exempt from the request timeout, since the route bounds its wait
/// (`--max-wait`). Any other route keeps the timeout whatever its query says, so a `wait=`
/// cannot make a stalled request live for ever.
pub async fn long_poll(request: Request, next: Next) -> Response {
    if asks_to_wait(&request)
        && let Some(LongPollAllowance(allowed)) = request.extensions().get::<LongPollAllowance>()
    {
        allowed.store(true, Ordering::Relaxed);
    }
    next.run(request).await
}

async fn timeout(State(limit): State<Duration>, mut request: Request, next: Next) -> Response {
    let allowed = Arc::new(AtomicBool::new(false));
    request
        .extensions_mut()
        .insert(LongPollAllowance(allowed.clone()));
    let response = next.run(request);
    tokio::pin!(response);
    match tokio::time::timeout(limit, &mut response).await {
        Ok(response) => response,
        // The route said it is a long poll before the time was up; it ends its own wait.
        Err(_) if allowed.load(Ordering::Relaxed) => response.await,
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "request timed out after {}",
                humantime::format_duration(limit)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn auth_schemes_are_matched_without_regard_to_case() {
        for value in ["Bearer t0k", "bearer t0k", "BEARER  t0k"] {
            assert_eq!(super::credentials(value, "Bearer"), Some("t0k"), "{value}");
        }
        for value in ["Basic t0k", "Bearert0k", "Bearer", ""] {
            assert_eq!(super::credentials(value, "Bearer"), None, "{value}");
        }
    }
}
