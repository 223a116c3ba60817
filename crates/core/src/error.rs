//! The one mapping from failures to HTTP responses.
//!
//! Client mistakes become a 4xx whose body is `Error: <reason>` — the seeds' convention, kept
//! so their clients keep working — and change nothing. Anything else is logged in full and
//! answered `500 Error: internal error` without leaking internals.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Marks a response whose body was written by [`ApiError`], so the error-body middleware
/// leaves it alone.
#[derive(Clone, Copy, Debug)]
pub struct ShoalErrorBody;

/// An error a handler returns. Each variant names the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: the named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not for this method; the value is the allowed method.
    #[error("Only {0} accepted.")]
    MethodNotAllowed(&'static str),
    /// 408: the client stopped sending its request body.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 412: a condition the client set (`if_revision`) does not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 422: the request was understood but what it names cannot be done (a failed job).
    #[error("{0}")]
    Unprocessable(String),
    /// 413: the request or one of its parts is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// 503: the service cannot take this request now (shutting down, overloaded).
    #[error("{0}")]
    Unavailable(String),
    /// 500: a failure that is not the client's. Logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// Shorthand for [`ApiError::BadRequest`].
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::BadRequest(reason.into())
    }

    /// Shorthand for [`ApiError::NotFound`].
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::NotFound(reason.into())
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Builds an `Error: <reason>` text response with the given status.
pub fn error_response(status: StatusCode, reason: &str) -> Response {
    let mut response = (status, format!("Error: {reason}")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.extensions_mut().insert(ShoalErrorBody);
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(err) = &self {
            tracing::error!(error = ?err, "internal error");
            return error_response(status, "internal error");
        }
        let mut response = error_response(status, &self.to_string());
        if let Self::MethodNotAllowed(method) = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(method));
        }
        response
    }
}
