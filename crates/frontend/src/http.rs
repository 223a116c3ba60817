//! The routes: the seed's (`/`, `submitTask`, `isReady`, `getImage`), the page's no-script
//! path (`POST /upload` → `303` → `/tasks/{ids}`), and the public JSON API under `/api/v1`.
//! Everything comes from the master; the frontend keeps no state.

use shoal_core::server::long_poll;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::Value;
use shoal_core::ApiError;
use shoal_core::discovery::MASTER_ADDRESS;
use shoal_core::error::error_response;
use shoal_core::query::{Params, canonical_id};
use shoal_core::routes::{get, post};
use shoal_core::upstream::{Upstream, stream_through};

use crate::guard::{self, RateLimiter};
use crate::pages;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The master.
    pub upstream: Upstream,
    /// Largest image accepted.
    pub max_upload: u64,
}

/// The frontend's routes, with basic authentication and the upload rate limit when set.
pub fn router(
    state: AppState,
    basic_auth: Option<Arc<crate::config::BasicAuth>>,
    limiter: Option<Arc<RateLimiter>>,
) -> Router {
    let mut uploads = Router::new()
        .route("/submitTask", post(submit_task))
        .route("/upload", post(upload_form))
        .route("/api/v1/tasks", post(create_task));
    if let Some(limiter) = limiter {
        uploads = uploads.route_layer(middleware::from_fn_with_state(limiter, guard::rate_limit));
    }
    let mut routes = Router::new()
        .route("/", get(index))
        .route("/assets/app.css", get(stylesheet))
        .route("/assets/app.js", get(script))
        .route("/isReady", get(is_ready))
        .route("/getImage", get(get_image))
        .route("/tasks/{ids}", get(task_page))
        .route(
            "/api/v1/tasks/{id}",
            get(task_status).layer(middleware::from_fn(long_poll)),
        )
        .route("/api/v1/tasks/{id}/result", get(task_result))
        .route("/api/v1/tasks/{id}/original", get(task_original))
        .merge(uploads);
    if let Some(auth) = basic_auth {
        routes = routes.route_layer(middleware::from_fn_with_state(auth, guard::basic_auth));
    }
    routes.with_state(state)
}

/// The page.
const INDEX_HTML: &str = include_str!("../assets/index.html");
/// Its stylesheet (also used by the result pages).
const APP_CSS: &str = include_str!("../assets/app.css");
/// Its script: uploads, live cards, drag and drop. The page works without it.
const APP_JS: &str = include_str!("../assets/app.js");

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Assets change only with the binary; a short cache keeps reloads cheap and
            // upgrades visible.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

async fn script() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// One upload as the page, a script or the API sends it.
#[derive(Debug, Default)]
struct Upload {
    /// The images, with their file names.
    files: Vec<(String, Bytes)>,
    /// The op text, composed from the form's fields.
    op: Option<String>,
    /// The result format; `None` keeps the input's.
    format: Option<String>,
}

/// The op text from the form: `op` is either a whole op chain (`blur:2,grayscale`) or the
/// name of one op whose parameters come in their own fields, as the page sends them.
fn compose_op(name: &str, fields: &[(String, String)]) -> Result<String, ApiError> {
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad_request(format!("the {name} operation needs {key}")))
    };
    Ok(match name {
        "blur" => format!("blur:{}", field("sigma")?),
        "resize" => format!("resize:{}x{}", field("width")?, field("height")?),
        "thumbnail" => format!("thumbnail:{}", field("size")?),
        "rotate" => format!("rotate:{}", field("angle")?),
        "flip" => format!("flip:{}", field("direction")?),
        other => other.to_owned(),
    })
}

/// Reads a multipart form: every `uploadfile` part is an image (at most `max_upload` bytes
/// each); `op`, its parameters and `format` are text fields.
async fn read_form(
    mut form: Multipart,
    max_upload: u64,
    max_files: u64,
) -> Result<Upload, ApiError> {
    let mut upload = Upload::default();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut other_files = Vec::new();
    while let Some(mut part) = form.next_field().await.map_err(form_error)? {
        let name = part.name().unwrap_or("").to_owned();
        if name == "uploadfile" {
            if upload.files.len() as u64 >= max_files {
                return Err(ApiError::bad_request(format!(
                    "at most {max_files} image(s) per request"
                )));
            }
            let file_name = part.file_name().unwrap_or("image").to_owned();
            let mut bytes = Vec::new();
            while let Some(chunk) = part.chunk().await.map_err(form_error)? {
                if (bytes.len() + chunk.len()) as u64 > max_upload {
                    return Err(ApiError::TooLarge(format!(
                        "{file_name} is larger than the limit of {} MB",
                        max_upload / 1_000_000
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            // A file input with nothing chosen still sends an empty part.
            if !(bytes.is_empty() && file_name.is_empty()) {
                upload.files.push((file_name, Bytes::from(bytes)));
            }
        } else if part.file_name().is_some() {
            other_files.push(name);
            // Drain it: the parts after it may still be wanted.
            while part.chunk().await.map_err(form_error)?.is_some() {}
        } else {
            let text = part.text().await.map_err(form_error)?;
            if text.len() > 1024 {
                return Err(ApiError::bad_request(format!(
                    "the field {name} is too long"
                )));
            }
            fields.push((name, text));
        }
    }
    if upload.files.is_empty() {
        return Err(ApiError::bad_request(if other_files.is_empty() {
            "no image: send it in the form field uploadfile".to_owned()
        } else {
            format!(
                "no image in the form field uploadfile (got a file in {})",
                other_files.join(", ")
            )
        }));
    }
    let text = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if let Some(name) = text("op") {
        upload.op = Some(compose_op(&name, &fields)?);
    }
    upload.format = text("format");
    Ok(upload)
}

fn form_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    let status = err.status();
    let reason = err.body_text();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(reason)
    } else {
        ApiError::bad_request(format!("the form could not be read: {reason}"))
    }
}

/// Reads an upload sent either as a multipart form or as the raw image bytes (then `op` and
/// `format` come from the query).
async fn read_upload(app: &AppState, request: Request, max_files: u64) -> Result<Upload, ApiError> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let limit = if is_form {
        app.max_upload
            .saturating_mul(max_files)
            .saturating_add(crate::FORM_OVERHEAD)
    } else {
        app.max_upload
    };
    // An announced length over the limit is refused before a byte of the body is read.
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(ApiError::TooLarge(format!(
            "the upload is larger than the limit of {} MB per image",
            app.max_upload / 1_000_000
        )));
    }
    let params = Params::parse(request.uri().query().unwrap_or(""))?;
    let op = params.text("op")?.map(str::to_owned);
    let format = params.text("format")?.map(str::to_owned);
    if is_form {
        let form = Multipart::from_request(request, &()).await.map_err(|e| {
            ApiError::bad_request(format!("the form could not be read: {}", e.body_text()))
        })?;
        let mut upload = read_form(form, app.max_upload, max_files).await?;
        upload.op = upload.op.or(op);
        upload.format = upload.format.or(format);
        return Ok(upload);
    }
    let too_large = || {
        ApiError::TooLarge(format!(
            "the image is larger than the limit of {} MB",
            app.max_upload / 1_000_000
        ))
    };
    // One byte over the limit is enough to know; the rest is never read.
    let cap = usize::try_from(app.max_upload.saturating_add(1)).unwrap_or(usize::MAX);
    let mut body = request.into_body().into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
        let chunk = chunk.map_err(|e| {
            if e.to_string().contains("length limit") {
                too_large()
            } else {
                ApiError::bad_request(format!("the upload was cut off: {e}"))
            }
        })?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= cap {
            return Err(too_large());
        }
    }
    let body = Bytes::from(bytes);
    Ok(Upload {
        files: vec![("image".to_owned(), body)],
        op,
        format,
    })
}

/// The master's `Error: …` text or `{"error": …}` JSON as the reason alone.
fn reason_of(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body)
        && let Some(reason) = value["error"].as_str()
    {
        return reason.to_owned();
    }
    String::from_utf8_lossy(body)
        .trim()
        .trim_start_matches("Error: ")
        .to_owned()
}

/// The master's refusal, answered with the same status and reason (a 5xx from the master is
/// this service's 503: the pipeline, not the client, failed).
fn master_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Response {
    let reason = reason_of(body);
    let status = if status.is_server_error() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    };
    let mut response = error_response(status, &reason);
    if let Some(retry) = headers.get(header::RETRY_AFTER) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry.clone());
    }
    response
}

/// Sends one image to the master; its task id, or the master's refusal as a response.
async fn send_to_master(
    app: &AppState,
    image: Bytes,
    op: Option<&str>,
    format: Option<&str>,
    idempotency_key: Option<&HeaderValue>,
) -> Result<Result<u64, Response>, ApiError> {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(op) = op {
        query.push(("op", op));
    }
    if let Some(format) = format {
        query.push(("format", format));
    }
    // Without the client's key, one of our own, so the upload can move to another master
    // after a broken connection without ever becoming two tasks.
    let key = idempotency_key.cloned().or_else(|| {
        HeaderValue::from_str(&format!("frontend-{}", uuid::Uuid::new_v4().simple())).ok()
    });
    let response = app
        .upstream
        .send(MASTER_ADDRESS, |c, base| {
            let mut request = c
                .post(&format!("{base}/api/v1/tasks"))
                .query(&query)
                .body(image.clone());
            if let Some(key) = &key {
                request = request.header("idempotency-key", key.clone());
            }
            request
        })
        .await?;
    let (status, headers, body) = read_answer(response).await?;
    if status != StatusCode::CREATED {
        return Ok(Err(master_error(status, &headers, &body)));
    }
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_u64())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the master answered no id")))?;
    Ok(Ok(id))
}

/// Reads one image from `request` (a form or the raw body) and sends it to the master: the
/// task id, or the master's refusal as a response. `Idempotency-Key` is passed on.
async fn accept_one(app: &AppState, request: Request) -> Result<Result<u64, Response>, ApiError> {
    let key = request.headers().get("idempotency-key").cloned();
    let upload = read_upload(app, request, 1).await?;
    if upload.files.len() > 1 {
        return Err(ApiError::bad_request(
            "one image per request here; the page's form takes several",
        ));
    }
    let (_, image) =
        upload.files.into_iter().next().ok_or_else(|| {
            ApiError::bad_request("no image: send it in the form field uploadfile")
        })?;
    send_to_master(
        app,
        image,
        upload.op.as_deref(),
        upload.format.as_deref(),
        key.as_ref(),
    )
    .await
}

/// `POST /submitTask`: the seed's upload (multipart, field `uploadfile`) → the id as text.
async fn submit_task(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    Ok(match accept_one(&app, request).await? {
        Ok(id) => id.to_string().into_response(),
        Err(refusal) => refusal,
    })
}

/// `POST /api/v1/tasks`: multipart or raw body → `201 {"id": N}`.
async fn create_task(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    Ok(match accept_one(&app, request).await? {
        Ok(id) => {
            let mut response = (
                StatusCode::CREATED,
                axum::Json(serde_json::json!({ "id": id })),
            )
                .into_response();
            if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/tasks/{id}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(refusal) => refusal,
    })
}

/// `POST /upload`: the page's form without script: every chosen image becomes a task, then
/// `303 See Other` to the page that shows them. A refusal is a page saying why.
async fn upload_form(State(app): State<AppState>, request: Request) -> Response {
    let upload = match read_upload(&app, request, crate::MAX_FORM_FILES).await {
        Ok(upload) => upload,
        Err(err) => return pages::refusal(err.status(), &err.to_string()),
    };
    let mut ids = Vec::new();
    for (name, image) in upload.files {
        match send_to_master(
            &app,
            image,
            upload.op.as_deref(),
            upload.format.as_deref(),
            None,
        )
        .await
        {
            Ok(Ok(id)) => ids.push(id.to_string()),
            Ok(Err(refusal)) => {
                let status = refusal.status();
                let body = axum::body::to_bytes(refusal.into_body(), 64 * 1024)
                    .await
                    .unwrap_or_default();
                return pages::refusal(status, &format!("{name}: {}", reason_of(&body)));
            }
            Err(err) => return pages::refusal(err.status(), &format!("{name}: {err}")),
        }
    }
    Redirect::to(&format!("/tasks/{}", ids.join(","))).into_response()
}

fn id_param(params: &Params) -> Result<u64, ApiError> {
    canonical_id(params.text("id")?.unwrap_or(""))
}

/// The master's answer, read whole (small answers: ids, states, JSON, errors).
async fn read_answer(
    response: reqwest::Response,
) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let status = StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the master broke off its answer: {e}")))?;
    Ok((status, headers, body))
}

/// A GET from the master, whole (small answers: states, JSON).
async fn master_get(
    app: &AppState,
    path: &str,
) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let response = app
        .upstream
        .send(MASTER_ADDRESS, |c, base| c.get(&format!("{base}{path}")))
        .await?;
    read_answer(response).await
}

/// `GET /isReady?id=N`: the seed's sentences; a failed task is 422 saying why.
async fn is_ready(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let id = id_param(&params)?;
    let (status, headers, body) = master_get(&app, &format!("/isReady?id={id}")).await?;
    if status != StatusCode::OK {
        return Ok(master_error(status, &headers, &body));
    }
    Ok(match body.as_ref() {
        b"1" => "Your image is ready.".into_response(),
        b"0" => "Your image is not ready yet.".into_response(),
        other => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the master answered isReady with {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    })
}

/// Streams an image from the master (`path`), with its headers and conditional GET.
async fn stream_image(
    app: &AppState,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let if_none_match = headers.get(header::IF_NONE_MATCH).cloned();
    let response = app
        .upstream
        .send(MASTER_ADDRESS, |c, base| {
            let mut request = c.get(&format!("{base}{path}"));
            if let Some(tag) = &if_none_match {
                request = request.header(header::IF_NONE_MATCH, tag.clone());
            }
            request
        })
        .await?;
    let status = response.status().as_u16();
    if status != 200 && status != 304 {
        let (status, headers, body) = read_answer(response).await?;
        return Ok(master_error(status, &headers, &body));
    }
    stream_through(response)
}

/// `GET /getImage?id=N`: the processed image.
async fn get_image(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = id_param(&params)?;
    stream_image(&app, &format!("/get?id={id}"), &headers).await
}

/// `GET /api/v1/tasks/{id}` (with optional `wait=` and `state=`): the master's JSON.
async fn task_status(
    State(app): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let id = canonical_id(&id)?;
    let mut query: Vec<(&str, &str)> = Vec::new();
    for key in ["wait", "state"] {
        if let Some(value) = params.text(key)? {
            query.push((key, value));
        }
    }
    // The master caps the wait (`--max-wait`); the client allows for its longest.
    let long_poll = query.iter().any(|(key, _)| *key == "wait");
    let response = app
        .upstream
        .send(MASTER_ADDRESS, |c, base| {
            let url = format!("{base}/api/v1/tasks/{id}");
            let request = if long_poll {
                c.long_poll(reqwest::Method::GET, &url, Duration::from_secs(60))
            } else {
                c.get(&url)
            };
            request.query(&query)
        })
        .await?;
    let (status, headers, body) = read_answer(response).await?;
    if status != StatusCode::OK {
        return Ok(master_error(status, &headers, &body));
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/v1/tasks/{id}/result`.
async fn task_result(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = canonical_id(&id)?;
    stream_image(&app, &format!("/api/v1/tasks/{id}/result"), &headers).await
}

/// `GET /api/v1/tasks/{id}/original`.
async fn task_original(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = canonical_id(&id)?;
    stream_image(&app, &format!("/api/v1/tasks/{id}/original"), &headers).await
}

/// Most tasks one result page shows.
const MAX_PAGE_TASKS: usize = 50;

/// `GET /tasks/{ids}`: the result page of one or several tasks (`/tasks/7` or `/tasks/7,8`),
/// refreshing itself while any is unfinished.
async fn task_page(State(app): State<AppState>, Path(ids): Path<String>) -> Response {
    let parsed: Result<Vec<u64>, ApiError> = ids.split(',').map(canonical_id).collect();
    let ids = match parsed {
        Ok(ids) if !ids.is_empty() && ids.len() <= MAX_PAGE_TASKS => ids,
        Ok(_) => {
            return pages::refusal(
                StatusCode::BAD_REQUEST,
                &format!("a page shows 1 to {MAX_PAGE_TASKS} tasks"),
            );
        }
        Err(err) => return pages::refusal(err.status(), &err.to_string()),
    };
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        match master_get(&app, &format!("/api/v1/tasks/{id}")).await {
            Ok((StatusCode::OK, _, body)) => match serde_json::from_slice::<Value>(&body) {
                Ok(task) => tasks.push(task),
                Err(_) => {
                    return pages::refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the master answered something that is not a task",
                    );
                }
            },
            Ok((status, _, body)) => {
                let status = if status.is_server_error() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    status
                };
                return pages::refusal(status, &reason_of(&body));
            }
            Err(err) => return pages::refusal(err.status(), &err.to_string()),
        }
    }
    pages::tasks(&tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_composed_from_the_form_fields() {
        let fields = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let all = fields(&[
            ("sigma", "2.5"),
            ("width", "800"),
            ("height", "600"),
            ("size", "128"),
            ("angle", "90"),
            ("direction", "h"),
        ]);
        for (name, want) in [
            ("swap-rg", "swap-rg"),
            ("grayscale", "grayscale"),
            ("blur", "blur:2.5"),
            ("resize", "resize:800x600"),
            ("thumbnail", "thumbnail:128"),
            ("rotate", "rotate:90"),
            ("flip", "flip:h"),
            ("resize:10x10,invert", "resize:10x10,invert"),
        ] {
            assert_eq!(compose_op(name, &all).expect(name), want);
        }
        let err = compose_op("blur", &fields(&[("sigma", " ")])).expect_err("no sigma");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("sigma"));
    }

    #[test]
    fn reasons_come_from_text_or_json() {
        assert_eq!(reason_of(b"Error: not an image"), "not an image");
        assert_eq!(reason_of(br#"{"error":"too large"}"#), "too large");
    }
}
