//! The accept loop every service runs, with what a hostile client could otherwise make it
//! hold bounded: at most `max_connections` open at once, a deadline for each request's
//! headers (which also closes idle keep-alive connections), and accept errors that back off.
//!
//! Written here rather than taken from `axum::serve`, which has none of these bounds: it
//! serves each connection for as long as the client keeps it, and sets no timer, so hyper's
//! header-read timeout never runs. hyper's own connection builder has the timeout; the cap,
//! the eviction of idle connections at the cap and the shutdown are this module's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// The bounds on a service's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once. At the cap, the longest-idle connections are closed to make
    /// room; when none is idle, a new connection is closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from when the connection is
    /// ready for the next request: it bounds slow headers and idle keep-alive alike.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 4096 connections, or fewer where the process may open fewer files (see
    /// [`default_max_connections`]); 30 s for headers.
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(
                std::fs::read_to_string("/proc/self/limits").ok().as_deref(),
            ),
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// The default cap: 4096, or three quarters of the soft limit on open files when that is
/// lower (from `/proc/self/limits`), so the cap is reached before the process runs out of
/// descriptors and the rest stay free for its database, files and outgoing connections.
fn default_max_connections(limits: Option<&str>) -> usize {
    const CAP: usize = 4096;
    let soft = limits.and_then(|text| {
        text.lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|value| value.parse::<usize>().ok())
    });
    soft.map_or(CAP, |n| (n / 4 * 3).clamp(16, CAP))
}

/// One open connection, as the accept loop sees it.
struct Open {
    /// Requests being answered on it now.
    busy: AtomicUsize,
    /// When it last started or ended a request (ms since the server started): the idle clock.
    last_active: AtomicU64,
    /// Cancelled to close it gracefully (an in-flight request is answered first): shutdown.
    close: CancellationToken,
    /// Cancelled to close it at once, to make room at the cap: only while it is idle.
    evict: CancellationToken,
}

/// Every open connection, by number.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Open>>>,
}

impl Registry {
    fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Closes up to `n` idle connections (no request being answered; perhaps a request's
    /// headers arriving slowly), longest idle first; how many it closed.
    fn evict_idle(&self, n: usize) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut idle: Vec<&Arc<Open>> = open
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.evict.is_cancelled())
            .collect();
        idle.sort_by_key(|c| c.last_active.load(Ordering::Relaxed));
        idle.iter().take(n).for_each(|c| c.evict.cancel());
        idle.len().min(n)
    }

    fn close_all(&self) {
        for c in self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            c.close.cancel();
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled; then closes every connection
/// gracefully and returns once they are all gone.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    service: &'static str,
    stop: CancellationToken,
) {
    let registry = Arc::new(Registry::default());
    let started = Instant::now();
    let mut next_id = 0_u64;
    let mut accept_backoff = Duration::from_millis(10);
    let mut last_cap_log: Option<Instant> = None;
    // Each connection's task holds a sender; all are gone when every connection has ended.
    let (open_tx, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => {
                accept_backoff = Duration::from_millis(10);
                pair
            }
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of file descriptors, say: wait rather than spin, and say so.
                tracing::error!(service, error = %err, retry_in = ?accept_backoff, "accept error");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(accept_backoff) => {}
                }
                accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if registry.len() >= limits.max_connections {
            let evicted = registry.evict_idle(1 + limits.max_connections / 64);
            if last_cap_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_cap_log = Some(Instant::now());
                tracing::warn!(
                    service,
                    max_connections = limits.max_connections,
                    idle_closed = evicted,
                    "connection limit reached: closing idle connections to make room"
                );
            }
            if evicted == 0 {
                // Every connection is busy: this one is refused (closed unanswered).
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let open = Arc::new(Open {
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(millis_since(started)),
            close: stop.child_token(),
            evict: CancellationToken::new(),
        });
        registry
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, open.clone());
        let registry = registry.clone();
        let app = app.clone();
        let still_open = open_tx.clone();
        tokio::spawn(async move {
            serve_connection(stream, remote, app, limits, &open, started).await;
            registry
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            drop(still_open);
        });
    }
    drop(listener);
    registry.close_all();
    drop(open_tx);
    let _ = all_closed.recv().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    open: &Arc<Open>,
    started: Instant,
) {
    let tracked = open.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        let guard = Busy::new(tracked.clone(), started);
        let response = app.clone().oneshot(request.map(Body::new));
        async move {
            // Busy until the whole body is sent (the guard goes with the body), so a
            // connection streaming a download is never taken for idle.
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _busy = &guard;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = open.close.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        // Idle (checked again: a request may have begun since): dropped at once. A graceful
        // close would wait for headers that may never come.
        () = open.evict.cancelled() => {
            if open.busy.load(Ordering::Acquire) > 0 {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// Marks a connection busy for the life of a request.
struct Busy {
    open: Arc<Open>,
    started: Instant,
}

impl Busy {
    fn new(open: Arc<Open>, started: Instant) -> Self {
        open.busy.fetch_add(1, Ordering::AcqRel);
        open.last_active
            .store(millis_since(started), Ordering::Relaxed);
        Self { open, started }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.open
            .last_active
            .store(millis_since(self.started), Ordering::Relaxed);
        self.open.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Errors of one connection that does not concern the listener (the client gave up).
fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::default_max_connections;

    #[test]
    fn the_default_cap_leaves_room_under_the_open_files_limit() {
        let limits = |soft: &str| {
            format!(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max cpu time              unlimited            unlimited            seconds\n\
                 Max open files            {soft:<20} 1048576              files\n"
            )
        };
        assert_eq!(default_max_connections(Some(&limits("1024"))), 768);
        assert_eq!(default_max_connections(Some(&limits("1048576"))), 4096);
        assert_eq!(default_max_connections(Some(&limits("unlimited"))), 4096);
        assert_eq!(default_max_connections(Some(&limits("8"))), 16);
        assert_eq!(default_max_connections(None), 4096);
    }
}
