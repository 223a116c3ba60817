//! The HTTP API: the seed's four routes, plus `/deliveries`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use shoal_core::ApiError;
use shoal_core::query::Params;
use shoal_core::routes::{delete, get, post};

use crate::address::Address;
use crate::hub::{Hub, HubError};

/// The multicast routes.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/registerAndKeepAlive", post(register))
        .route("/deregister", delete(deregister))
        .route("/sendMessage", post(send_message))
        .route("/listSubscribers", get(list_subscribers))
        .route("/deliveries", get(deliveries))
        .with_state(hub)
}

fn address_param(params: &Params) -> Result<Address, ApiError> {
    let raw = params.required_text("address", "address")?;
    raw.parse::<Address>()
        .map_err(|e| ApiError::bad_request(format!("Wrong input address: {e}")))
}

fn hub_error(err: HubError) -> ApiError {
    match err {
        HubError::Full(reason) => ApiError::TooLarge(reason),
        HubError::Busy(reason) => ApiError::Unavailable(reason),
        HubError::Closed => ApiError::Unavailable(err.to_string()),
        HubError::Storage(reason) => ApiError::Internal(anyhow::anyhow!(reason)),
    }
}

async fn register(State(hub): State<Hub>, params: Params) -> Result<Response, ApiError> {
    let address = address_param(&params)?;
    // Checked at registration (a clear answer now) and again at every delivery (DNS changes).
    hub.guard()
        .check(&address)
        .await
        .map_err(|e| ApiError::bad_request(format!("address refused: {e}")))?;
    hub.register(&address).await.map_err(hub_error)?;
    // Tells subscribers how often they must keep alive (the seed's clients ignore it).
    let mut response = "success".into_response();
    response
        .headers_mut()
        .insert("x-expire-ms", HeaderValue::from(hub.expire_ms()));
    Ok(response)
}

async fn deregister(State(hub): State<Hub>, params: Params) -> Result<&'static str, ApiError> {
    let address = address_param(&params)?;
    hub.deregister(&address).await.map_err(hub_error)?;
    Ok("success")
}

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

async fn send_message(
    State(hub): State<Hub>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = shoal_core::idempotency::key(&headers, MAX_IDEMPOTENCY_KEY)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let accepted = hub.send(body, content_type, key).await.map_err(hub_error)?;
    let mut response = "success".into_response();
    if let Ok(v) = HeaderValue::from_str(&accepted.uid) {
        response.headers_mut().insert("webhook-id", v);
    }
    Ok(response)
}

fn wants_json(params: &Params) -> Result<bool, ApiError> {
    match params.text("format")? {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown format {other:?}: use text or json"
        ))),
    }
}

async fn list_subscribers(State(hub): State<Hub>, params: Params) -> Result<Response, ApiError> {
    let subscribers = hub.subscribers(false);
    if wants_json(&params)? {
        return Ok(axum::Json(subscribers).into_response());
    }
    let mut text = String::new();
    for s in subscribers {
        text.push_str(&s.address);
        text.push_str(" : ");
        text.push_str(&s.last_keepalive);
        text.push('\n');
    }
    Ok(text.into_response())
}

#[derive(serde::Serialize)]
struct DeliveryReport {
    subscribers: Vec<crate::hub::SubscriberView>,
    failures: Vec<crate::store::FailureRow>,
}

/// Recent outcomes per subscriber (in memory, the last 100 each) and final failures (durable).
async fn deliveries(State(hub): State<Hub>, params: Params) -> Result<Response, ApiError> {
    let address = match params.text("address")? {
        Some(a) if !a.is_empty() => Some(
            a.parse::<Address>()
                .map_err(|e| ApiError::bad_request(format!("Wrong input address: {e}")))?
                .to_string(),
        ),
        _ => None,
    };
    let subscribers = hub
        .subscribers(true)
        .into_iter()
        .filter(|s| address.as_ref().is_none_or(|a| *a == s.address))
        .collect();
    let failures = hub
        .store()
        .failures(address.as_deref(), 100)
        .await
        .map_err(ApiError::Internal)?;
    Ok(axum::Json(DeliveryReport {
        subscribers,
        failures,
    })
    .into_response())
}
