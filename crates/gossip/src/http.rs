//! The HTTP API: the seed's `/get`, `/set/{n}` and `/notify/{value}/{generation}`, plus
//! `/members` and `/stats`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use shoal_core::ApiError;
use shoal_core::query::Params;
use shoal_core::routes;

use crate::node::Shared;
use crate::register::{Applied, Versioned};

/// Header carrying a `/notify` call's signature when the cluster has a key.
pub const SIGNATURE_HEADER: &str = "x-shoal-signature";

/// The routes of one node.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/get", routes::get(get))
        // POST is the documented way; GET still works because the seed's clients use it.
        .route(
            "/set/{value}",
            axum::routing::post(set)
                .get(set_deprecated)
                .fallback(|| async { ApiError::MethodNotAllowed("POST") }),
        )
        .route("/notify/{value}/{generation}", routes::post(notify))
        .route("/members", routes::get(members))
        .route("/stats", routes::get(stats))
        .with_state(shared)
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// The value as text (the seed's answer), or as JSON with its version on
/// `Accept: application/json`; the version is in `X-Generation` and `X-Origin` either way.
fn value_response(version: &Versioned, json: bool) -> Response {
    let mut response = if json {
        axum::Json(version).into_response()
    } else {
        version.value.to_string().into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-generation"),
        HeaderValue::from(version.generation),
    );
    if let Ok(origin) = HeaderValue::from_str(&version.origin) {
        headers.insert(HeaderName::from_static("x-origin"), origin);
    }
    response
}

async fn get(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    value_response(&shared.register.get(), wants_json(&headers))
}

fn parse_value(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!(
            "the value must be a 64-bit signed integer, not {raw:?}"
        ))
    })
}

async fn set(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let value = parse_value(&raw)?;
    let version = shared.register.set(value);
    tracing::info!(value, generation = version.generation, "value set");
    shared.push_to_all(&version).await;
    Ok(value_response(&version, wants_json(&headers)))
}

/// `GET /set/{n}`: the seed's way, which changes state on a GET (caches and link
/// prefetchers may replay it). Kept for its clients, marked deprecated.
async fn set_deprecated(
    state: State<Arc<Shared>>,
    path: Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut response = set(state, path, headers).await?;
    response.headers_mut().insert(
        HeaderName::from_static("deprecation"),
        HeaderValue::from_static("true"),
    );
    response.headers_mut().insert(
        header::WARNING,
        HeaderValue::from_static("299 - \"GET /set is deprecated; use POST /set/{n}\""),
    );
    Ok(response)
}

async fn notify(
    State(shared): State<Arc<Shared>>,
    Path((raw_value, raw_generation)): Path<(String, String)>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let value = parse_value(&raw_value)?;
    let generation = raw_generation.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "the generation must be an unsigned 64-bit integer, not {raw_generation:?}"
        ))
    })?;
    let notifier = params.text("notifier")?.unwrap_or("").to_owned();
    let origin = match params.text("origin")? {
        Some(origin) => origin.to_owned(),
        None => notifier.clone(),
    };
    if !crate::wire::valid_name(&origin) || !crate::wire::valid_name(&notifier) {
        return Err(ApiError::bad_request(format!(
            "notifier and origin are at most {} bytes, without control characters",
            crate::wire::MAX_NAME_LEN
        )));
    }
    if let Some(key) = &shared.key {
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !key.verify_notify(value, generation, &origin, signature) {
            shared.count_unauthenticated_notify();
            return Err(ApiError::Unauthorized(
                "this cluster requires notify calls signed with its key (X-Shoal-Signature)".into(),
            ));
        }
    }
    let version = Versioned {
        value,
        generation,
        origin: Arc::from(origin),
    };
    match shared.apply(&version, &notifier) {
        Ok(Applied::Changed) => {
            // It may have come from outside the cluster: pass it on now rather than at the
            // next anti-entropy round.
            shared.push_to_all(&version).await;
            Ok(applied_response(true, &version))
        }
        Ok(Applied::Stale) => Ok(applied_response(false, &shared.register.get())),
        Err(refused) => Err(ApiError::Unprocessable(refused.to_string())),
    }
}

fn applied_response(applied: bool, current: &Versioned) -> Response {
    let body = if applied {
        "applied".to_owned()
    } else {
        format!(
            "ignored: not newer than the current version (generation {}, origin {:?})",
            current.generation, current.origin
        )
    };
    let mut response = body.into_response();
    response.headers_mut().insert(
        HeaderName::from_static("x-applied"),
        HeaderValue::from_static(if applied { "true" } else { "false" }),
    );
    response
}

async fn members(State(shared): State<Arc<Shared>>) -> Response {
    let members = shared.members().await;
    axum::Json(serde_json::json!({
        "name": &*shared.name(),
        "members": members,
    }))
    .into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.stats()).into_response()
}
