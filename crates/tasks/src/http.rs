//! The routes: the seed's, and what a work queue needs beside them.

use axum::middleware::from_fn;
use shoal_core::server::long_poll;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use shoal_core::ApiError;
use shoal_core::config::parse_duration;
use shoal_core::query::Params;
use shoal_core::routes::{get, post};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::{Op, Outcome, Queue, QueueError};
use crate::state::{Action, State as TaskState};

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The queue.
    pub queue: Queue,
    /// Workers that asked for tasks lately.
    pub workers: crate::gauges::Workers,
    /// Longest long-poll.
    pub max_wait: Duration,
    /// Fires at shutdown, ending long polls at once.
    pub shutdown: CancellationToken,
}

/// The tasks routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/newTask", post(new_task))
        .route("/getById", get(get_by_id).layer(from_fn(long_poll)))
        .route("/getNewTask", post(get_new_task).layer(from_fn(long_poll)))
        .route("/finishTask", post(finish_task))
        .route("/failTask", post(fail_task))
        .route("/extendLease", post(extend_lease))
        .route("/releaseTask", post(release_task))
        .route("/cancelTask", post(cancel_task))
        .route("/setById", post(set_by_id))
        .route("/list", get(list))
        .route("/stats", get(stats))
        .route("/releaseWorker", post(release_worker))
        .with_state(state)
}

/// An id in its one canonical form (`01` and `1` must not both name task 1).
fn id_param(params: &Params) -> Result<u64, ApiError> {
    shoal_core::query::canonical_id(params.required_text("id", "id")?)
}

fn bool_param(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.text(name)? {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid {name}: {other:?} (use true or false)"
        ))),
    }
}

/// The header a create answered from an existing task (same idempotency key) carries.
pub const EXISTING: &str = "x-existing";

/// Longest idempotency key or worker name accepted.
const MAX_NAME: usize = 200;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    shoal_core::idempotency::key(headers, MAX_NAME)
}

fn worker_param(params: &Params) -> Result<Option<String>, ApiError> {
    match params.text("worker")? {
        None => Ok(None),
        Some(w) if !w.is_empty() && w.len() <= MAX_NAME => Ok(Some(w.to_owned())),
        Some(_) => Err(ApiError::bad_request(format!(
            "worker must be 1 to {MAX_NAME} characters"
        ))),
    }
}

async fn release_worker(State(app): State<AppState>, params: Params) -> Result<String, ApiError> {
    let worker =
        worker_param(&params)?.ok_or_else(|| ApiError::bad_request("Wrong input worker."))?;
    match app
        .queue
        .submit(Op::ReleaseWorker { worker })
        .await
        .map_err(queue_error)?
    {
        Outcome::Released(n) => Ok(n.to_string()),
        other => Err(ApiError::Internal(anyhow::anyhow!(
            "unexpected outcome {other:?}"
        ))),
    }
}

async fn stats(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.queue.stats().await.map_err(ApiError::Internal)?;
    Ok(axum::Json(stats).into_response())
}

fn queue_error(err: QueueError) -> ApiError {
    match err {
        QueueError::NotFound(_) => ApiError::NotFound(err.to_string()),
        QueueError::Conflict(reason) => ApiError::Conflict(reason),
        QueueError::Closed => ApiError::Unavailable(err.to_string()),
        QueueError::Storage(reason) => ApiError::Internal(anyhow::anyhow!(reason)),
    }
}

fn json(task: &crate::task::Task) -> Response {
    axum::Json(task.to_json()).into_response()
}

async fn new_task(
    State(app): State<AppState>,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let held = bool_param(&params, "hold")?;
    let key = idempotency_key(&headers)?;
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the payload is not JSON: {e}")))?;
        Some(value.to_string())
    };
    match app
        .queue
        .submit(Op::Create { payload, held, key })
        .await
        .map_err(queue_error)?
    {
        Outcome::Created(id) => Ok(id.to_string().into_response()),
        Outcome::Existing(id) => Ok(([(EXISTING, "true")], id.to_string()).into_response()),
        other => Err(ApiError::Internal(anyhow::anyhow!(
            "unexpected outcome {other:?}"
        ))),
    }
}

/// `GET /getById?id=N`; with `wait=D` and `state=S`, a long poll: answers once the task's
/// state is not `S` (on whichever replica it changed), or when the wait ends.
async fn get_by_id(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let id = id_param(&params)?;
    let wait = params.parsed("wait", parse_duration)?;
    let seen = params.parsed("state", |v| {
        v.parse::<i64>()
            .ok()
            .and_then(TaskState::from_code)
            .ok_or_else(|| "expected a state: 0, 1, 2 or 3".to_owned())
    })?;
    let deadline = Instant::now() + wait.unwrap_or_default().min(app.max_wait);
    // Subscribed before the first look, so a change between the look and the wait is seen.
    let mut changes = app.queue.changes();
    loop {
        let task = app
            .queue
            .get(id)
            .await
            .map_err(ApiError::Internal)?
            .ok_or_else(|| ApiError::NotFound(format!("no task with id {id}")))?;
        if wait.is_none() || seen != Some(task.state) {
            return Ok(json(&task));
        }
        // Waits for a change that may concern this task.
        loop {
            tokio::select! {
                changed = changes.recv() => match changed {
                    Ok(ids) if ids.is_empty() || ids.contains(&id) => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(json(&task)),
                },
                () = tokio::time::sleep_until(deadline) => return Ok(json(&task)),
                () = app.shutdown.cancelled() => return Ok(json(&task)),
            }
        }
    }
}

async fn get_new_task(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let wait = params.parsed("wait", parse_duration)?;
    let worker = worker_param(&params)?;
    if let Some(name) = &worker {
        app.workers.saw(name);
    }
    let deadline = Instant::now() + wait.unwrap_or_default().min(app.max_wait);
    let mut ready = app.queue.ready();
    loop {
        // Marks the current version seen before trying, so a task made ready meanwhile wakes us.
        ready.borrow_and_update();
        let claim = Op::Claim {
            worker: worker.clone(),
        };
        match app.queue.submit(claim).await.map_err(queue_error)? {
            Outcome::Claimed(Some(task)) => return Ok(json(&task)),
            Outcome::Claimed(None) => {}
            other => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "unexpected outcome {other:?}"
                )));
            }
        }
        if wait.is_none() {
            break;
        }
        tokio::select! {
            changed = ready.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
            () = app.shutdown.cancelled() => break,
        }
    }
    Err(ApiError::NotFound("No non-started task.".into()))
}

async fn act(app: &AppState, params: &Params, action: Action) -> Result<&'static str, ApiError> {
    let id = id_param(params)?;
    let lease = params.text("lease")?.map(str::to_owned);
    let reason = params.text("reason")?.map(str::to_owned);
    app.queue
        .submit(Op::Act {
            id,
            action,
            lease,
            reason,
        })
        .await
        .map_err(queue_error)?;
    Ok("success")
}

async fn finish_task(
    State(app): State<AppState>,
    params: Params,
) -> Result<&'static str, ApiError> {
    act(&app, &params, Action::Finish).await
}

async fn fail_task(State(app): State<AppState>, params: Params) -> Result<&'static str, ApiError> {
    let retry = bool_param(&params, "retry")?;
    act(&app, &params, Action::Fail { retry }).await
}

async fn extend_lease(
    State(app): State<AppState>,
    params: Params,
) -> Result<&'static str, ApiError> {
    act(&app, &params, Action::ExtendLease).await
}

async fn release_task(
    State(app): State<AppState>,
    params: Params,
) -> Result<&'static str, ApiError> {
    act(&app, &params, Action::Release).await
}

async fn cancel_task(
    State(app): State<AppState>,
    params: Params,
) -> Result<&'static str, ApiError> {
    act(&app, &params, Action::Cancel).await
}

#[derive(serde::Deserialize)]
struct SetBody {
    id: serde_json::Value,
    state: serde_json::Value,
    #[serde(default)]
    lease: Option<String>,
}

async fn set_by_id(State(app): State<AppState>, body: Bytes) -> Result<&'static str, ApiError> {
    let body: SetBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed task JSON: {e}")))?;
    // DEFECTS 8: a negative id corrupted the seed's id allocation.
    let id = body
        .id
        .as_u64()
        .filter(|id| i64::try_from(*id).is_ok())
        .ok_or_else(|| ApiError::bad_request("Wrong input id: must be a non-negative integer"))?;
    let state = body
        .state
        .as_i64()
        .and_then(TaskState::from_code)
        .ok_or_else(|| ApiError::bad_request("Wrong input state: must be 0, 1, 2 or 3"))?;
    app.queue
        .submit(Op::Set {
            id,
            state,
            lease: body.lease,
        })
        .await
        .map_err(queue_error)?;
    Ok("success")
}

async fn list(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let state = match params.text("state")? {
        None => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .and_then(TaskState::from_code)
                .ok_or_else(|| ApiError::bad_request("Wrong input state: must be 0, 1, 2 or 3"))?,
        ),
    };
    let json_format = match params.text("format")? {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown format {other:?}: use text or json"
            )));
        }
    };
    let tasks = app.queue.list(state).await.map_err(ApiError::Internal)?;
    if json_format {
        let all: Vec<serde_json::Value> = tasks.iter().map(crate::task::Task::to_json).collect();
        return Ok(axum::Json(all).into_response());
    }
    let mut text = String::new();
    for t in &tasks {
        text.push_str(&t.line());
        text.push('\n');
    }
    Ok(text.into_response())
}

#[cfg(test)]
mod tests {
    use shoal_core::query::canonical_id as parse_id;

    #[test]
    fn ids_are_plain_non_negative_integers() {
        assert_eq!(parse_id("0").ok(), Some(0));
        assert_eq!(parse_id("42").ok(), Some(42));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "abc",
            "0x10",
            "99999999999999999999",
            "9223372036854775808",
            "01",
            "007",
        ] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
    }
}
