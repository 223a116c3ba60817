//! The HTTP API: the seed's `/get`, `/set`, `/remove`, `/list`, plus TTLs, revisions, watches
//! and JSON listings beside them.

use axum::middleware::from_fn;
use shoal_core::server::long_poll;
use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use shoal_core::ApiError;
use shoal_core::config::parse_duration;
use shoal_core::query::Params;
use shoal_core::routes::{delete, get, post};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{Lookup, Store, WriteError, now_ms};

/// The header carrying a key's revision.
pub const REVISION_HEADER: &str = "x-revision";

/// Longest TTL accepted: beyond this a client almost certainly made a unit mistake.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Longest long-poll wait.
    pub max_wait: Duration,
    /// Fires at shutdown, so long polls answer at once instead of holding up the drain.
    pub shutdown: CancellationToken,
}

/// The kv routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/get", get(get_value).layer(from_fn(long_poll)))
        .route("/set", post(set_value))
        .route("/remove", delete(remove_value))
        .route("/list", get(list).layer(from_fn(long_poll)))
        .with_state(state)
}

fn revision_header(headers: &mut HeaderMap, revision: u64) {
    headers.insert(REVISION_HEADER, HeaderValue::from(revision));
}

fn key_param<'a>(params: &'a Params, store: &Store) -> Result<&'a str, ApiError> {
    let key = params.required_text("key", "key")?;
    let max = store.limits().max_key_size;
    if key.len() > max {
        return Err(ApiError::TooLarge(format!(
            "key is {} bytes; the limit is {max}",
            key.len()
        )));
    }
    Ok(key)
}

fn revision_param(params: &Params, name: &str) -> Result<Option<u64>, ApiError> {
    params.parsed(name, |v| {
        v.parse::<u64>()
            .map_err(|_| "expected a non-negative integer".to_owned())
    })
}

fn lookup_response(lookup: Lookup) -> Response {
    match lookup {
        Lookup::Found { value, revision } => {
            let content_type = if std::str::from_utf8(&value).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            let mut response = ([(header::CONTENT_TYPE, content_type)], value).into_response();
            revision_header(response.headers_mut(), revision);
            response
        }
        Lookup::Removed { revision } => {
            let mut response = ApiError::not_found("key not found").into_response();
            revision_header(response.headers_mut(), revision);
            response
        }
        Lookup::Missing => ApiError::not_found("key not found").into_response(),
    }
}

async fn get_value(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let key = key_param(&params, &app.store)?;
    let wait = params.parsed("wait", parse_duration)?;
    let after = revision_param(&params, "after")?;
    let Some(wait) = wait else {
        return Ok(lookup_response(app.store.get(key)));
    };
    // Subscribe before looking, so a write between the look and the wait is not missed.
    let mut changes = app.store.subscribe();
    let after = after.unwrap_or_else(|| app.store.get(key).revision());
    let deadline = Instant::now() + wait.min(app.max_wait);
    loop {
        let lookup = app.store.get(key);
        if lookup.revision() > after {
            return Ok(lookup_response(lookup));
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Err(ApiError::Unavailable("the store is shutting down".into()));
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            () = app.shutdown.cancelled() => break,
        }
    }
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    revision_header(response.headers_mut(), after);
    Ok(response)
}

/// Waits until a key starting with `prefix` is written (set, removed or expired) with a
/// revision above `after` (default: the store's revision now); `false` when the wait ended with
/// no such change. How a client watches a set of keys (every instance of a service) with one
/// long poll instead of one per key.
async fn wait_for_prefix(
    app: &AppState,
    prefix: &str,
    wait: Duration,
    after: Option<u64>,
) -> Result<bool, ApiError> {
    // Subscribe before looking, so a write between the look and the wait is not missed.
    let mut changes = app.store.subscribe();
    let after = after.unwrap_or_else(|| app.store.read().revision());
    let deadline = Instant::now() + wait.min(app.max_wait);
    loop {
        if app.store.read().prefix_revision(prefix) > after {
            return Ok(true);
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Err(ApiError::Unavailable("the store is shutting down".into()));
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(false),
            () = app.shutdown.cancelled() => return Ok(false),
        }
    }
}

async fn set_value(
    State(app): State<AppState>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = key_param(&params, &app.store)?;
    // The seed passes the value in the query; any bytes can come as the body instead.
    let value = match params.bytes("value") {
        Some(v) => Bytes::copy_from_slice(v),
        None => body,
    };
    if value.is_empty() {
        return Err(ApiError::bad_request("Wrong input value."));
    }
    let max = app.store.limits().max_value_size;
    if value.len() > max {
        return Err(ApiError::TooLarge(format!(
            "value is {} bytes; the limit is {max}",
            value.len()
        )));
    }
    let ttl = params.parsed("ttl", parse_duration)?;
    if let Some(ttl) = ttl
        && (ttl.is_zero() || ttl > MAX_TTL)
    {
        return Err(ApiError::bad_request(
            "invalid ttl: must be more than zero and at most ten years",
        ));
    }
    let if_revision = revision_param(&params, "if_revision")?;
    let revision = app
        .store
        .set(key.to_owned(), value, ttl, if_revision)
        .await
        .map_err(write_error)?;
    let mut response = "success".into_response();
    revision_header(response.headers_mut(), revision);
    Ok(response)
}

async fn remove_value(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let key = key_param(&params, &app.store)?;
    let if_revision = revision_param(&params, "if_revision")?;
    let revision = app
        .store
        .remove(key.to_owned(), if_revision)
        .await
        .map_err(write_error)?;
    let mut response = "success".into_response();
    if let Some(revision) = revision {
        revision_header(response.headers_mut(), revision);
    }
    Ok(response)
}

fn write_error(err: WriteError) -> ApiError {
    match err {
        WriteError::Precondition { .. } => ApiError::PreconditionFailed(err.to_string()),
        WriteError::Full(reason) => ApiError::TooLarge(reason),
        WriteError::Closed => ApiError::Unavailable(err.to_string()),
        WriteError::Storage(e) => ApiError::Internal(anyhow::anyhow!("{e:#}")),
    }
}

/// Shows text as-is when it is printable and on one line, escaped otherwise, so each entry of
/// the text listing stays on one line.
fn printable(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => Cow::Borrowed(s),
        Ok(s) => Cow::Owned(s.escape_debug().to_string()),
        Err(_) => Cow::Owned(bytes.escape_ascii().to_string()),
    }
}

#[derive(serde::Serialize)]
struct JsonEntry<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

async fn list(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let prefix = params.text("prefix")?.unwrap_or("");
    let json = match params.text("format")? {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown format {other:?}: use text or json"
            )));
        }
    };
    if let Some(wait) = params.parsed("wait", parse_duration)? {
        let after = revision_param(&params, "after")?;
        if !wait_for_prefix(&app, prefix, wait, after).await? {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            let revision = after.unwrap_or_else(|| app.store.read().revision());
            revision_header(response.headers_mut(), revision);
            return Ok(response);
        }
    }
    let now = now_ms();
    let state = app.store.read();
    let revision = state.revision();
    let mut response = if json {
        let entries: Vec<JsonEntry<'_>> = state
            .live_with_prefix(prefix, now)
            .filter_map(|row| {
                let value = row.value.as_deref()?;
                let text = std::str::from_utf8(value).ok();
                Some(JsonEntry {
                    key: &row.key,
                    value: text,
                    value_base64: text
                        .is_none()
                        .then(|| base64::engine::general_purpose::STANDARD.encode(value)),
                    revision: row.revision,
                    expires_at: row.expires_at.map(|ms| {
                        let t = UNIX_EPOCH + Duration::from_millis(ms.max(0).cast_unsigned());
                        humantime::format_rfc3339_millis(t).to_string()
                    }),
                })
            })
            .collect();
        let body = serde_json::to_vec(&entries).map_err(|e| ApiError::Internal(e.into()))?;
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    } else {
        let mut body = String::new();
        for row in state.live_with_prefix(prefix, now) {
            let value = row.value.as_deref().unwrap_or_default();
            body.push_str(&printable(row.key.as_bytes()));
            body.push_str(" : ");
            body.push_str(&printable(value));
            body.push('\n');
        }
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    };
    drop(state);
    revision_header(response.headers_mut(), revision);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_keeps_plain_text_and_escapes_the_rest() {
        assert_eq!(printable(b"localhost:3001"), "localhost:3001");
        assert_eq!(printable("zażółć".as_bytes()), "zażółć");
        assert_eq!(printable(b"two\nlines"), "two\\nlines");
        assert_eq!(printable(&[0xff, b'a']), "\\xffa");
    }
}
