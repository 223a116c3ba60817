//! Request ids: every request carries an `x-request-id` (accepted from the caller or
//! generated), every log line of its span shows it, and every call a shoal client makes while
//! serving it passes it on, so one id follows a job across services.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// The header that carries the id.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served by this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `id` as the current request id (for work spawned outside a request, such
/// as a worker's job, that should still be traceable).
pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// Middleware: makes the request's id current for the handler (the id itself was set by
/// `SetRequestIdLayer` before this runs).
pub async fn propagate(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match id {
        Some(id) => CURRENT.scope(id, next.run(request)).await,
        None => next.run(request).await,
    }
}
