//! The routes: the seed's client-facing (`new`, `isReady`, `get`) and worker-facing
//! (`getNewTask`, `registerTaskFinished`) ones, plus what the frontend and `shoal submit`
//! need (`original`, `/api/v1/tasks/{id}`) and the worker routes a real queue has
//! (`failTask`, `extendLease`).

use axum::middleware::from_fn;
use shoal_core::server::long_poll;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::Value;
use shoal_core::ApiError;
use shoal_core::config::parse_duration;
use shoal_core::error::error_response;
use shoal_core::query::{Params, canonical_id as parse_id};
use shoal_core::routes::{get, post};
use shoal_imaging::{Format, ImageError, Limits, Pipeline};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use shoal_core::discovery::{DATABASE_ADDRESS, STORAGE_ADDRESS};
use shoal_core::upstream::{Upstream, stream_through};

/// How long a count of waiting tasks is reused before the task database is asked again.
const QUEUE_COUNT_TTL: Duration = Duration::from_millis(500);

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The task database and the storage.
    pub upstream: Upstream,
    /// Pixel limits of uploads and results.
    pub limits: Limits,
    /// Largest result the storage accepts.
    pub max_result: u64,
    /// Waiting tasks beyond which uploads are refused for now.
    pub max_queue: u64,
    /// Longest long poll.
    pub max_wait: Duration,
    /// The last count of waiting tasks and when it was taken.
    pub queue_count: Arc<Mutex<Option<(Instant, u64)>>>,
    /// Fires at shutdown, ending long polls.
    pub shutdown: CancellationToken,
}

/// The master's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/new", post(new_image))
        .route("/isReady", get(is_ready).layer(from_fn(long_poll)))
        .route("/get", get(get_result))
        .route("/original", get(get_original))
        .route("/api/v1/tasks", post(create_task))
        .route(
            "/api/v1/tasks/{id}",
            get(task_status).layer(from_fn(long_poll)),
        )
        .route("/api/v1/tasks/{id}/result", get(task_result))
        .route("/api/v1/tasks/{id}/original", get(task_original))
        .route("/getNewTask", post(get_new_task).layer(from_fn(long_poll)))
        .route("/registerTaskFinished", post(register_task_finished))
        .route("/failTask", post(fail_task))
        .route("/extendLease", post(extend_lease))
        .route("/releaseWorker", post(release_worker))
        .with_state(state)
}

/// What a task's payload records about its job.
pub fn job_payload(pipeline: &Pipeline, output: Format, input: Format) -> Value {
    serde_json::json!({
        "op": pipeline.to_string(),
        "format": output.as_str(),
        "input": input.as_str(),
    })
}

fn id_param(params: &Params) -> Result<u64, ApiError> {
    parse_id(params.text("id")?.unwrap_or(""))
}

fn image_error(err: ImageError) -> ApiError {
    match err {
        ImageError::TooLarge(_) => ApiError::TooLarge(err.to_string()),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// Reads an upstream answer whole; a 5xx from upstream is this service's 503.
async fn read(response: reqwest::Response, service: &str) -> Result<(StatusCode, Bytes), ApiError> {
    let status = StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = response
        .bytes()
        .await
        .map_err(|e| ApiError::Unavailable(format!("{service} broke off its answer: {e}")))?;
    if status.is_server_error() {
        return Err(ApiError::Unavailable(format!(
            "{service} failed: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok((status, body))
}

fn upstream_refused(service: &str, status: StatusCode, body: &[u8]) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "{service} answered {status}: {}",
        String::from_utf8_lossy(body)
    ))
}

impl AppState {
    /// The task as the task database shows it; `None` when there is no such task.
    async fn task(&self, id: u64) -> Result<Option<Value>, ApiError> {
        let response = self
            .upstream
            .send(DATABASE_ADDRESS, |c, base| {
                c.get(&format!("{base}/getById?id={id}"))
            })
            .await?;
        let (status, body) = read(response, "the task database").await?;
        match status {
            StatusCode::OK => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("task {id} is not JSON: {e}"))),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(upstream_refused("the task database", other, &body)),
        }
    }

    /// Tasks waiting for a worker (ready or held), from a count at most
    /// [`QUEUE_COUNT_TTL`] old.
    async fn queued(&self) -> Result<u64, ApiError> {
        if let Some((at, count)) = *self.queue_count.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < QUEUE_COUNT_TTL
        {
            return Ok(count);
        }
        let response = self
            .upstream
            .send(DATABASE_ADDRESS, |c, base| c.get(&format!("{base}/stats")))
            .await?;
        let (status, body) = read(response, "the task database").await?;
        if status != StatusCode::OK {
            return Err(upstream_refused("the task database", status, &body));
        }
        let stats: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stats are not JSON: {e}")))?;
        let count =
            stats["not_started"].as_u64().unwrap_or(0) + stats["held"].as_u64().unwrap_or(0);
        *self.queue_count.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), count));
        Ok(count)
    }

    /// Task `id` once its state is no longer `state` (a long poll of the task database, which
    /// hears of changes made through any master and on any of its replicas), or as it is when
    /// `deadline` comes first.
    async fn task_after(&self, id: u64, state: u64, deadline: Instant) -> Result<Value, ApiError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let wait_text = format!("{}ms", wait.as_millis());
        let response = tokio::select! {
            response = self.upstream.send(DATABASE_ADDRESS, |c, base| {
                c.long_poll(Method::GET, &format!("{base}/getById"), wait).query(&[
                    ("id", id.to_string().as_str()),
                    ("wait", wait_text.as_str()),
                    ("state", state.to_string().as_str()),
                ])
            }) => response?,
            () = self.shutdown.cancelled() => {
                return Err(ApiError::Unavailable("the master is shutting down".into()));
            }
        };
        let (status, body) = read(response, "the task database").await?;
        match status {
            StatusCode::OK => serde_json::from_slice(&body)
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("task {id} is not JSON: {e}"))),
            StatusCode::NOT_FOUND => Err(ApiError::not_found(format!("no task with id {id}"))),
            other => Err(upstream_refused("the task database", other, &body)),
        }
    }

    async fn tasks_post(&self, path_and_query: &str) -> Result<(StatusCode, Bytes), ApiError> {
        let response = self
            .upstream
            .send(DATABASE_ADDRESS, |c, base| {
                c.post(&format!("{base}{path_and_query}"))
            })
            .await?;
        read(response, "the task database").await
    }
}

/// What an upload came to.
enum Accepted {
    /// The task's id (a new task, or the earlier one of a retried upload).
    Task(u64),
    /// Refused for now: the queue is full (503 with `Retry-After`).
    QueueFull(Response),
}

/// `POST /new`: the seed's upload; answers the task id as text.
async fn new_image(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    Ok(match accept(&app, &params, &headers, body).await? {
        Accepted::Task(id) => id.to_string().into_response(),
        Accepted::QueueFull(response) => response,
    })
}

/// `POST /api/v1/tasks`: the same upload for the public API; answers `201 {"id": N}`.
async fn create_task(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    Ok(match accept(&app, &params, &headers, body).await? {
        Accepted::Task(id) => {
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
        Accepted::QueueFull(response) => response,
    })
}

/// Validates the upload, then creates the task held, stores the image and only then releases
/// the task, so no worker can claim a task whose input is not stored yet.
async fn accept(
    app: &AppState,
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Accepted, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send the raw image bytes (PNG, JPEG or WebP)",
        ));
    }
    let pipeline = match params.text("op")? {
        None => Pipeline::default(),
        Some(text) => text
            .parse::<Pipeline>()
            .map_err(|e| ApiError::bad_request(format!("invalid op: {e}")))?,
    };
    let output = params
        .text("format")?
        .map(|f| {
            f.parse::<Format>()
                .map_err(|e| ApiError::bad_request(format!("invalid format: {e}")))
        })
        .transpose()?;
    let info = shoal_imaging::probe(&body, &app.limits).map_err(image_error)?;
    shoal_imaging::check(&info, &pipeline, output, &app.limits).map_err(image_error)?;
    let worst = shoal_imaging::worst_case_output_bytes(&info, &pipeline, output);
    if worst > app.max_result {
        return Err(ApiError::TooLarge(format!(
            "the result of this {}x{} image could reach {} MB, more than the storage accepts ({} MB); send a smaller image or ask for format=jpeg",
            info.width,
            info.height,
            worst.div_ceil(1_000_000),
            app.max_result / 1_000_000
        )));
    }
    if app.queued().await? >= app.max_queue {
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many images are waiting to be processed; try again shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(Accepted::QueueFull(response));
    }
    // Without a client's key, one of our own: the task database is then asked at most once
    // per upload even when a call to it is repeated on another replica after a lost answer.
    let key = headers.get("idempotency-key").cloned().or_else(|| {
        HeaderValue::from_str(&format!("master-{}", uuid::Uuid::new_v4().simple())).ok()
    });
    let output = output.unwrap_or(info.format);
    let payload = job_payload(&pipeline, output, info.format).to_string();
    let response = app
        .upstream
        .send(DATABASE_ADDRESS, |c, base| {
            let mut request = c
                .post(&format!("{base}/newTask?hold=true"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(payload.clone());
            if let Some(key) = &key {
                request = request.header("idempotency-key", key.clone());
            }
            request
        })
        .await?;
    let existing = response.headers().contains_key("x-existing");
    let (status, body_text) = read(response, "the task database").await?;
    match status {
        StatusCode::OK => {}
        StatusCode::BAD_REQUEST => {
            return Err(ApiError::bad_request(
                String::from_utf8_lossy(&body_text)
                    .trim_start_matches("Error: ")
                    .to_owned(),
            ));
        }
        other => return Err(upstream_refused("the task database", other, &body_text)),
    }
    let id = parse_id(String::from_utf8_lossy(&body_text).trim())
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("the task database answered a bad id")))?;
    if existing {
        // A retried upload: finish what the first attempt left undone, or answer its id.
        let task = app
            .task(id)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("task {id} vanished")))?;
        if task["state"] == 3 {
            return Err(ApiError::Conflict(format!(
                "an earlier upload with this Idempotency-Key failed: {}",
                task["error"].as_str().unwrap_or("unknown reason")
            )));
        }
        if task["held"] != true {
            return Ok(Accepted::Task(id));
        }
    }
    let stored = app
        .upstream
        .send_idempotent(STORAGE_ADDRESS, |c, base| {
            c.post(&format!("{base}/sendImage?state=working&id={id}"))
                .body(body.clone())
        })
        .await;
    let stored = match stored {
        Ok(response) => read(response, "the storage")
            .await
            .and_then(|(status, text)| {
                if status == StatusCode::OK {
                    Ok(())
                } else {
                    Err(upstream_refused("the storage", status, &text))
                }
            }),
        Err(e) => Err(e),
    };
    if let Err(err) = stored {
        if key.is_none() {
            // Nobody can retry into this task: take it out now instead of at its hold timeout.
            let _ = app.tasks_post(&format!("/cancelTask?id={id}")).await;
        }
        return Err(match err {
            ApiError::Internal(e) => {
                ApiError::Unavailable(format!("could not store the image: {e:#}"))
            }
            other => other,
        });
    }
    // A release is idempotent (releasing a released task changes nothing), so it may move to
    // another task database replica after a broken connection.
    let response = app
        .upstream
        .send_idempotent(DATABASE_ADDRESS, |c, base| {
            c.post(&format!("{base}/releaseTask?id={id}"))
        })
        .await?;
    let (status, text) = read(response, "the task database").await?;
    // 409: a concurrent retry released it first.
    if status != StatusCode::OK && status != StatusCode::CONFLICT {
        return Err(upstream_refused("the task database", status, &text));
    }
    tracing::info!(id, op = %pipeline, format = output.as_str(), "accepted");
    Ok(Accepted::Task(id))
}

/// The seed's states as the public API names them.
fn state_name(task: &Value) -> &'static str {
    match task["state"].as_u64() {
        Some(1) => "processing",
        Some(2) => "finished",
        Some(3) => "failed",
        _ => "queued",
    }
}

fn failed(task: &Value) -> ApiError {
    ApiError::Unprocessable(format!(
        "processing failed: {}",
        task["error"].as_str().unwrap_or("unknown reason")
    ))
}

/// `GET /isReady`: `1` when finished, `0` while queued or processing; a failed task is 422.
/// With `wait=`, answers as soon as the task settles, or `0` when the wait ends.
async fn is_ready(State(app): State<AppState>, params: Params) -> Result<&'static str, ApiError> {
    let id = id_param(&params)?;
    let wait = params
        .parsed("wait", parse_duration)?
        .map(|w| w.min(app.max_wait));
    let deadline = Instant::now() + wait.unwrap_or_default();
    let mut task = app
        .task(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no task with id {id}")))?;
    loop {
        match task["state"].as_u64() {
            Some(2) => return Ok("1"),
            Some(3) => return Err(failed(&task)),
            _ => {}
        }
        if wait.is_none() || Instant::now() >= deadline {
            return Ok("0");
        }
        let state = task["state"].as_u64().unwrap_or(0);
        task = match app.task_after(id, state, deadline).await {
            Ok(task) => task,
            // Shutting down: the long poll ends with what is known.
            Err(_) if app.shutdown.is_cancelled() => return Ok("0"),
            Err(e) => return Err(e),
        };
    }
}

/// `GET /get`: the processed image, streamed from storage.
async fn get_result(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = id_param(&params)?;
    result_response(&app, id, &headers).await
}

/// The result of task `id`, or why there is none.
async fn result_response(
    app: &AppState,
    id: u64,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    match stream_object(app, "finished", id, headers).await? {
        Some(response) => Ok(response),
        None => {
            let task = app
                .task(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no task with id {id}")))?;
            match state_name(&task) {
                "failed" => Err(failed(&task)),
                state => Err(ApiError::not_found(format!(
                    "image {id} is not ready yet ({state})"
                ))),
            }
        }
    }
}

/// `GET /original`: the uploaded image.
async fn get_original(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = id_param(&params)?;
    stream_object(&app, "working", id, &headers)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no uploaded image with id {id}")))
}

/// Streams an object from storage with its headers (and its 304 for a conditional GET);
/// `None` when storage has no such object.
async fn stream_object(
    app: &AppState,
    stage: &str,
    id: u64,
    headers: &HeaderMap,
) -> Result<Option<Response>, ApiError> {
    let if_none_match = headers.get(header::IF_NONE_MATCH).cloned();
    let response = app
        .upstream
        .send(STORAGE_ADDRESS, |c, base| {
            let mut request = c.get(&format!("{base}/getImage?state={stage}&id={id}"));
            if let Some(tag) = &if_none_match {
                request = request.header(header::IF_NONE_MATCH, tag.clone());
            }
            request
        })
        .await?;
    let status = response.status().as_u16();
    if status == 404 {
        return Ok(None);
    }
    if status != 200 && status != 304 {
        let (status, body) = read(response, "the storage").await?;
        return Err(upstream_refused("the storage", status, &body));
    }
    stream_through(response).map(Some)
}

/// `GET /api/v1/tasks/{id}`: the job as clients see it. With `wait=` and `state=`, answers as
/// soon as the state differs from `state` (or when the wait ends, with the same state), so a
/// page follows queued → processing → finished with one request per change.
async fn task_status(
    State(app): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let wait = params
        .parsed("wait", parse_duration)?
        .map(|w| w.min(app.max_wait));
    let seen = match params.text("state")? {
        None => None,
        Some(state @ ("queued" | "processing" | "finished" | "failed")) => Some(state.to_owned()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid state {other:?}: expected queued, processing, finished or failed"
            )));
        }
    };
    let deadline = Instant::now() + wait.unwrap_or_default();
    let mut task = app
        .task(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no task with id {id}")))?;
    while wait.is_some() && seen.as_deref() == Some(state_name(&task)) && Instant::now() < deadline
    {
        let state = task["state"].as_u64().unwrap_or(0);
        task = match app.task_after(id, state, deadline).await {
            Ok(task) => task,
            Err(_) if app.shutdown.is_cancelled() => break,
            Err(e) => return Err(e),
        };
    }
    let payload = &task["payload"];
    Ok(axum::Json(serde_json::json!({
        "id": id,
        "state": state_name(&task),
        "op": payload["op"],
        "format": payload["format"],
        "attempts": task["attempts"],
        "error": task["error"],
    }))
    .into_response())
}

/// `GET /api/v1/tasks/{id}/result`: the processed image (404 until it exists, 422 if the
/// task failed).
async fn task_result(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    result_response(&app, id, &headers).await
}

/// `GET /api/v1/tasks/{id}/original`: the uploaded image.
async fn task_original(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    stream_object(&app, "working", id, &headers)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no uploaded image with id {id}")))
}

/// Forwards a worker's call to the task database with its query, answering what it answered.
async fn pass_through(
    app: &AppState,
    path: &str,
    query: Option<String>,
    wait: Option<Duration>,
) -> Result<Response, ApiError> {
    let path_and_query = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let response = app
        .upstream
        .send(DATABASE_ADDRESS, |c, base| match wait {
            Some(wait) => c.long_poll(Method::POST, &format!("{base}{path_and_query}"), wait),
            None => c.post(&format!("{base}{path_and_query}")),
        })
        .await?;
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let (status, body) = read(response, "the task database").await?;
    let mut out = (status, body).into_response();
    if let Some(content_type) = content_type
        && let Ok(value) = HeaderValue::from_bytes(content_type.as_bytes())
    {
        out.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if status.is_client_error() {
        // Already `Error: …` text from the task database.
        out.extensions_mut()
            .insert(shoal_core::error::ShoalErrorBody);
    }
    Ok(out)
}

/// `POST /getNewTask`: a worker claims a task (long-poll with `wait=`).
async fn get_new_task(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref().unwrap_or(""))?;
    let wait = params
        .parsed("wait", parse_duration)?
        .map(|w| w.min(app.max_wait));
    pass_through(&app, "/getNewTask", query, wait).await
}

/// `POST /registerTaskFinished`: the seed's finish (the worker stored the result first).
async fn register_task_finished(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    pass_through(&app, "/finishTask", query, None).await
}

/// `POST /failTask`: a worker gives up on a task (with `retry=true`, back to the queue).
async fn fail_task(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    pass_through(&app, "/failTask", query, None).await
}

/// `POST /extendLease`: a worker on a long job keeps its claim.
async fn extend_lease(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    pass_through(&app, "/extendLease", query, None).await
}

/// `POST /releaseWorker?worker=NAME`: a worker starting again under its name hands back the
/// claims of its previous life, so they go to the queue at once instead of when their leases
/// run out.
async fn release_worker(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    pass_through(&app, "/releaseWorker", query, None).await
}
