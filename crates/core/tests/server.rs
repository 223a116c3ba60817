//! The server bootstrap and client, exercised over real sockets.

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use shoal_core::ApiError;
use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::routes::{get, post};
use shoal_core::server::{self, ServerOptions};
use shoal_core::testkit::TestServer;

async fn start(routes: Router, options: ServerOptions) -> TestServer {
    TestServer::start(move |listener, shutdown| server::run(routes, listener, shutdown, options))
        .await
        .expect("start")
}

fn demo_routes() -> Router {
    Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow"
            }),
        )
        .route(
            "/forever",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .route(
            "/poll",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "changed"
            })
            .layer(axum::middleware::from_fn(server::long_poll)),
        )
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/json",
            post(|axum::Json(v): axum::Json<serde_json::Value>| async move { v.to_string() }),
        )
        .route(
            "/boom",
            get(|| async {
                Err::<(), _>(ApiError::Internal(anyhow::anyhow!(
                    "secret table xyz is corrupt"
                )))
            }),
        )
        .route(
            "/request-id",
            get(|headers: HeaderMap| async move {
                headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            }),
        )
}

#[tokio::test]
async fn health_routes_and_uniform_errors() {
    let s = start(demo_routes(), ServerOptions::new("demo")).await;
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(s.url("/healthz"))
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("body"),
        "ok"
    );
    assert_eq!(
        c.get(s.url("/readyz"))
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("body"),
        "ready"
    );
    let r = c.post(s.url("/fast")).send().await.expect("send");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    assert_eq!(r.text().await.expect("body"), "Error: Only GET accepted.");
    let r = c.get(s.url("/missing")).send().await.expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.expect("body"), "Error: Not found.");
    // axum's own extractor rejections get the same shape.
    let r = c
        .post(s.url("/json"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert!(r.status().is_client_error());
    assert!(r.text().await.expect("body").starts_with("Error: "));
    // Internal errors are logged, never shown.
    let r = c.get(s.url("/boom")).send().await.expect("send");
    assert_eq!(r.status(), 500);
    let body = r.text().await.expect("body");
    assert_eq!(body, "Error: internal error");
    s.stop().await.expect("stop");
}

#[tokio::test]
async fn body_limit_is_413() {
    let mut options = ServerOptions::new("demo");
    options.body_limit = 1000;
    let s = start(demo_routes(), options).await;
    let c = reqwest::Client::new();
    let r = c
        .post(s.url("/echo"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // A streamed body (no Content-Length) is cut off at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b'b'; 100])).collect();
    let r = c
        .post(s.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
    assert!(r.text().await.expect("body").starts_with("Error: "));
    s.stop().await.expect("stop");
}

/// Only a `wait=` request to a long-poll route outlives the request timeout: on any other
/// route, `wait=` changes nothing, and a stalled body is answered too.
#[tokio::test]
async fn slow_requests_time_out_but_long_polls_do_not() {
    let mut options = ServerOptions::new("demo");
    options.request_timeout = Duration::from_millis(200);
    let s = start(demo_routes(), options).await;
    let c = reqwest::Client::new();
    for path in ["/slow", "/slow?wait=1s", "/poll"] {
        let r = c.get(s.url(path)).send().await.expect("send");
        assert_eq!(r.status(), 503, "{path}");
        assert!(r.text().await.expect("body").contains("timed out"));
    }
    let r = c.get(s.url("/poll?wait=1s")).send().await.expect("send");
    assert_eq!(r.status(), 200, "a long poll bounds itself");
    // A body that never comes, with `wait=` on a route that does not long-poll.
    let (_sender, body) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let started = Instant::now();
    let r = c
        .post(s.url("/echo?wait=1"))
        .header("content-length", "100")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    s.stop().await.expect("stop");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let s = start(demo_routes(), ServerOptions::new("demo")).await;
    let url = s.url("/slow");
    let in_flight =
        tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.stop().await.expect("stop");
    assert_eq!(in_flight.await.expect("join").expect("answered"), 200);
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_drain_timeout() {
    let mut options = ServerOptions::new("demo");
    options.drain_timeout = Duration::from_millis(300);
    options.request_timeout = Duration::from_secs(3600);
    let s = start(demo_routes(), options).await;
    let url = s.url("/forever");
    let _stuck = tokio::spawn(async move { reqwest::get(url).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    s.stop().await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn readiness_reports_a_failing_dependency() {
    let mut options = ServerOptions::new("demo");
    options.readiness = Some(std::sync::Arc::new(|| {
        Box::pin(async { Err("database: connection refused".to_owned()) })
    }));
    let s = start(demo_routes(), options).await;
    let r = reqwest::get(s.url("/readyz")).await.expect("send");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.text().await.expect("body"),
        "Error: not ready: database: connection refused"
    );
    assert_eq!(
        reqwest::get(s.url("/healthz"))
            .await
            .expect("send")
            .status(),
        200
    );
    s.stop().await.expect("stop");
}

#[tokio::test]
async fn the_request_id_follows_a_call_to_another_service() {
    // Downstream echoes the request id it received.
    let downstream = start(demo_routes(), ServerOptions::new("down")).await;
    let target = downstream.url("/request-id");
    let client = HttpClient::new(ClientOptions::default()).expect("client");
    // Upstream calls downstream with the shoal client while serving a request.
    let upstream_routes = Router::new().route(
        "/call",
        get(move || {
            let client = client.clone();
            let target = target.clone();
            async move {
                let r = client
                    .get(&target)
                    .send()
                    .await
                    .map_err(|e| ApiError::Internal(e.into()))?;
                r.text().await.map_err(|e| ApiError::Internal(e.into()))
            }
        }),
    );
    let upstream = start(upstream_routes, ServerOptions::new("up")).await;
    let r = reqwest::Client::new()
        .get(upstream.url("/call"))
        .header("x-request-id", "job-7")
        .send()
        .await
        .expect("send");
    assert_eq!(r.text().await.expect("body"), "job-7");
    // Without one from the caller, the generated id is passed on.
    let r = reqwest::get(upstream.url("/call")).await.expect("send");
    let generated = r.headers()["x-request-id"].to_str().expect("id").to_owned();
    assert_eq!(r.text().await.expect("body"), generated);
    upstream.stop().await.expect("stop");
    downstream.stop().await.expect("stop");
}

#[tokio::test]
async fn metrics_count_routes_not_raw_paths() {
    let s = start(demo_routes(), ServerOptions::new("metricsdemo")).await;
    for i in 0..3 {
        reqwest::get(s.url(&format!("/missing/{i}")))
            .await
            .expect("send");
        reqwest::get(s.url("/fast")).await.expect("send");
    }
    let text = reqwest::get(s.url("/metrics"))
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("shoal_http_requests_total{") && l.contains("service=\"metricsdemo\"")
        })
        .collect();
    assert!(
        ours.iter().any(|l| l.contains("route=\"/fast\"")
            && l.contains("status=\"2xx\"")
            && l.ends_with(" 3")),
        "{ours:?}"
    );
    assert!(
        ours.iter().any(|l| l.contains("route=\"unmatched\"")
            && l.contains("status=\"4xx\"")
            && l.ends_with(" 3")),
        "{ours:?}"
    );
    assert!(
        !text.contains("/missing/1"),
        "raw paths never become labels"
    );
    s.stop().await.expect("stop");
}

#[tokio::test]
async fn a_process_without_an_api_can_serve_health_and_metrics() {
    let s = TestServer::start(|listener, shutdown| {
        server::run_metrics_only(listener, shutdown, ServerOptions::new("worker"))
    })
    .await
    .expect("start");
    assert_eq!(
        reqwest::get(s.url("/healthz"))
            .await
            .expect("send")
            .text()
            .await
            .expect("body"),
        "ok"
    );
    let metrics = reqwest::get(s.url("/metrics")).await.expect("send");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .expect("body")
            .contains("service=\"worker\"")
    );
    assert_eq!(
        reqwest::get(s.url("/anything"))
            .await
            .expect("send")
            .status(),
        404
    );
    s.stop().await.expect("stop");
}
