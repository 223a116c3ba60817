//! Access control for a frontend on a network: HTTP basic authentication and a per-client
//! upload rate limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use shoal_core::error::error_response;
use subtle::ConstantTimeEq as _;

use crate::config::{BasicAuth, RateLimit};

/// Rejects requests without the configured basic credentials (401 with a challenge).
pub async fn basic_auth(
    State(expected): State<Arc<BasicAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| shoal_core::server::credentials(v, "Basic"))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        });
    let wanted = format!("{}:{}", expected.user, expected.password);
    // Constant time over the whole `user:password`, so neither half leaks through timing.
    let ok = given.is_some_and(|given| bool::from(given.ct_eq(wanted.as_bytes())));
    if ok {
        return next.run(request).await;
    }
    let mut response = error_response(StatusCode::UNAUTHORIZED, "sign in to use shoal");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"shoal\", charset=\"UTF-8\""),
    );
    response
}

/// Clients tracked at most; beyond it, the fullest buckets (idle clients) are forgotten.
const MAX_CLIENTS: usize = 100_000;

/// A token bucket per client address: `per_minute` tokens, refilled continuously.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            per_minute: limit.per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`; when there is none, how long until there is.
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            // Buckets that have refilled completely carry no information: drop them.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((capacity, now));
        let refilled =
            (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_second).min(capacity);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / per_second))
        }
    }
}

/// Answers 429 with `Retry-After` to a client that has used up its uploads.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(client) = client
        && let Err(wait) = limiter.take(client, Instant::now())
    {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("too many uploads; try again in {seconds} s"),
        );
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills() {
        let limiter = RateLimiter::new(RateLimit { per_minute: 3 });
        let client: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(client, start).is_ok());
        }
        let wait = limiter
            .take(client, start)
            .expect_err("the fourth is refused");
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20));
        assert!(limiter.take(other, start).is_ok(), "clients are separate");
        assert!(
            limiter
                .take(client, start + Duration::from_secs(21))
                .is_ok()
        );
        assert!(
            limiter
                .take(client, start + Duration::from_secs(21))
                .is_err()
        );
    }
}
