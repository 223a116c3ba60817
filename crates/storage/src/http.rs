//! The routes: the seed's `sendImage` and `getImage`, plus `HEAD /getImage` and `deleteImage`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http_body_util::LengthLimitError;
use shoal_core::ApiError;
use shoal_core::query::Params;
use shoal_core::routes::{delete, get, post};

use crate::backend::{Backend, ObjectInfo, PutError, UploadStream};
use crate::key::ObjectKey;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Where objects live.
    pub backend: Arc<dyn Backend>,
    /// Largest object accepted, in bytes.
    pub max_object_size: u64,
    /// How long an upload may send nothing before it is abandoned.
    pub idle_timeout: Duration,
}

/// The storage routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/sendImage", post(send_image))
        .route("/getImage", get(get_image).head(head_image))
        .route("/deleteImage", delete(delete_image))
        .with_state(state)
}

async fn send_image(
    State(app): State<AppState>,
    params: Params,
    body: Body,
) -> Result<Response, ApiError> {
    let key = ObjectKey::from_params(&params)?;
    let upload = upload_stream(body, app.max_object_size, app.idle_timeout);
    let info = app.backend.put(key, upload).await.map_err(put_error)?;
    metrics::counter!("shoal_storage_received_bytes_total").increment(info.size);
    tracing::debug!(%key, size = info.size, "stored");
    let mut response = "success".into_response();
    set_validators(response.headers_mut(), &info);
    Ok(response)
}

async fn get_image(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = ObjectKey::from_params(&params)?;
    let object = app.backend.get(key).await?.ok_or_else(|| not_found(key))?;
    if not_modified(&headers, &object.info) {
        return Ok(not_modified_response(&object.info));
    }
    let body = object.body.inspect(|chunk| {
        if let Ok(chunk) = chunk {
            metrics::counter!("shoal_storage_sent_bytes_total").increment(chunk.len() as u64);
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    describe(response.headers_mut(), &object.info);
    Ok(response)
}

async fn head_image(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = ObjectKey::from_params(&params)?;
    let info = app.backend.head(key).await?.ok_or_else(|| not_found(key))?;
    if not_modified(&headers, &info) {
        return Ok(not_modified_response(&info));
    }
    let mut response = Response::new(Body::empty());
    describe(response.headers_mut(), &info);
    Ok(response)
}

async fn delete_image(State(app): State<AppState>, params: Params) -> Result<String, ApiError> {
    let key = ObjectKey::from_params(&params)?;
    if app.backend.delete(key).await? {
        Ok("success".to_owned())
    } else {
        Err(not_found(key))
    }
}

fn not_found(key: ObjectKey) -> ApiError {
    ApiError::not_found(format!("No image {key}."))
}

fn put_error(err: PutError) -> ApiError {
    match err {
        PutError::TooLarge { .. } => ApiError::TooLarge(err.to_string()),
        PutError::Incomplete(_) => ApiError::bad_request(err.to_string()),
        PutError::Stalled(_) => ApiError::RequestTimeout(err.to_string()),
        PutError::Backend(e) => ApiError::Internal(e),
    }
}

/// The request body as an upload: every chunk counted against `limit`, and a gap longer than
/// `idle` ends it.
fn upload_stream(body: Body, limit: u64, idle: Duration) -> UploadStream {
    let data = body.into_data_stream();
    futures::stream::unfold(Some((data, 0u64)), move |state| async move {
        let (mut data, total) = state?;
        let next = match tokio::time::timeout(idle, data.next()).await {
            Err(_) => return Some((Err(PutError::Stalled(idle)), None)),
            Ok(None) => return None,
            Ok(Some(next)) => next,
        };
        match next {
            Ok(chunk) => {
                let total = total + chunk.len() as u64;
                if total > limit {
                    return Some((Err(PutError::TooLarge { limit }), None));
                }
                Some((Ok(chunk), Some((data, total))))
            }
            Err(e) => Some((Err(body_error(e, limit)), None)),
        }
    })
    .boxed()
}

/// A body read error: the body-limit layer's (too large), or the client going away.
fn body_error(err: axum::Error, limit: u64) -> PutError {
    let inner = err.into_inner();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return PutError::TooLarge { limit };
        }
        source = e.source();
    }
    PutError::Incomplete(inner.to_string())
}

/// Headers that let a client revalidate: the entity tag and the modification time.
fn set_validators(headers: &mut HeaderMap, info: &ObjectInfo) {
    if let Ok(etag) = HeaderValue::from_str(&info.etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(info.modified)) {
        headers.insert(header::LAST_MODIFIED, date);
    }
}

/// Every header describing the object: type, length, validators, and `no-cache` because the
/// object under a name can be replaced (clients keep copies but revalidate them).
fn describe(headers: &mut HeaderMap, info: &ObjectInfo) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(info.content_type),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_validators(headers, info);
}

fn not_modified_response(info: &ObjectInfo) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_validators(response.headers_mut(), info);
    response
}

/// RFC 9110 §13.1.2 and §13.1.3: `If-None-Match` decides when present (weak comparison, `*`
/// matches any object); otherwise `If-Modified-Since`, at one-second precision.
fn not_modified(headers: &HeaderMap, info: &ObjectInfo) -> bool {
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        let ours = info.etag.trim_start_matches("W/");
        return value
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours);
    }
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let modified = info
        .modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    modified <= since
}
