//! Prometheus metrics: one process-wide recorder (so `shoal up`, which hosts several services
//! in one process, exposes them all, each labelled with its `service`), and the middleware that
//! counts requests per route, method and status class and times them.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: fine-grained below a millisecond, where in-memory reads live,
/// up to a minute for long polls and uploads.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle; installs the global recorder on first use. If another
/// recorder was installed first (an embedding program's), ours still renders what it saw.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Only fails for an empty bucket list, which ours is not; summaries are the fallback.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        handle
    })
}

/// The text exposition of every metric recorded in this process.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// Middleware: records `shoal_http_requests_total` and `shoal_http_request_duration_seconds`
/// for every request, labelled by service, method, matched route and status class. Every
/// label comes from a fixed set, whoever sends the request (it runs before authorisation):
/// a made-up method is `other`, a path no route matches is `unmatched`. A label taken from the
/// request would let any client grow `/metrics` without bound.
pub async fn track(State(service): State<&'static str>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::histogram!(
        "shoal_http_request_duration_seconds",
        "service" => service, "method" => method, "route" => route.clone()
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "shoal_http_requests_total",
        "service" => service, "method" => method, "route" => route, "status" => class
    )
    .increment(1);
    response
}

/// The method's label: one of the standard methods, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for junk in ["FROB", "get", &"X".repeat(20_000)] {
            let method = Method::from_bytes(junk.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other", "{junk:.10}");
        }
    }
}
