//! `shoal multicast` as a process: acknowledged messages survive `kill -9`, and deliveries do
//! not leak file descriptors.

use std::collections::HashSet;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;

mod support;

struct HubProcess {
    child: Child,
    base: String,
}

impl HubProcess {
    fn start(data_dir: &Path) -> Self {
        let (child, base) = support::spawn_service(
            &["multicast"],
            data_dir,
            &["--retry-initial", "50ms", "--retry-max", "200ms"],
        );
        Self { child, base }
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("/proc")
            .count()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A subscriber in this process that records webhook ids in arrival order, taking the given
/// time per event.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<String>>>, Duration);

async fn on_event(
    State(received): State<Received>,
    headers: HeaderMap,
    _body: Bytes,
) -> &'static str {
    if !received.1.is_zero() {
        tokio::time::sleep(received.1).await;
    }
    let id = headers["webhook-id"].to_str().expect("id").to_owned();
    received.0.lock().expect("lock").push(id);
    "ok"
}

async fn subscriber() -> (shoal_core::testkit::TestServer, Received) {
    subscriber_with_delay(Duration::ZERO).await
}

async fn subscriber_with_delay(delay: Duration) -> (shoal_core::testkit::TestServer, Received) {
    subscriber_with(delay, false).await
}

/// With `close`, every answer closes its connection, so each delivery connects anew.
async fn subscriber_with(
    delay: Duration,
    close: bool,
) -> (shoal_core::testkit::TestServer, Received) {
    let received = Received(Arc::default(), delay);
    let app = Router::new()
        .route("/event", axum::routing::post(on_event))
        .with_state(received.clone())
        .layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| async move {
                if close {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            },
        ));
    let server = shoal_core::testkit::TestServer::start(move |listener, shutdown| async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .expect("subscriber");
    (server, received)
}

fn client() -> reqwest::Client {
    shoal_core::client::install_crypto_provider();
    reqwest::Client::new()
}

async fn send_many(base: &str, n: usize) -> Vec<String> {
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for sender in 0..16 {
        let client = client.clone();
        let url = format!("{base}/sendMessage");
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in (sender..n).step_by(16) {
                let r = client
                    .post(&url)
                    .body(format!("message {i}"))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), 200);
                ids.push(r.headers()["webhook-id"].to_str().expect("id").to_owned());
            }
            ids
        });
    }
    let mut all = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        all.extend(ids.expect("sender"));
    }
    all
}

async fn register(base: &str, address: &str) {
    let r = client()
        .post(format!("{base}/registerAndKeepAlive"))
        .query(&[("address", address)])
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 200);
}

async fn wait_for_all(received: &Received, ids: &[String], within: Duration) {
    let wanted: HashSet<&String> = ids.iter().collect();
    let started = Instant::now();
    loop {
        let got: HashSet<String> = received.0.lock().expect("lock").iter().cloned().collect();
        let missing = wanted.iter().filter(|id| !got.contains(**id)).count();
        if missing == 0 {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{missing} of {} messages never arrived",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A slow subscriber (2 ms an event): most deliveries are still pending at the kill.
    let (sub, received) = subscriber_with_delay(Duration::from_millis(2)).await;
    let hub = HubProcess::start(dir.path());
    register(&hub.base, &sub.addr.to_string()).await;
    let ids = send_many(&hub.base, 500).await;
    // Killed right after the last acknowledgement: most deliveries are still pending.
    drop(hub);
    let delivered_before = received.0.lock().expect("lock").len();
    assert!(
        delivered_before < ids.len(),
        "the kill came before delivery completed"
    );
    let hub = HubProcess::start(dir.path());
    wait_for_all(&received, &ids, Duration::from_secs(60)).await;
    let arrivals = received.0.lock().expect("lock").clone();
    // At least once: duplicates are allowed after a crash, losses are not. Deliveries before
    // and after the restart each follow acceptance order.
    assert!(
        arrivals.len() >= ids.len(),
        "{} arrivals, {delivered_before} before the kill",
        arrivals.len()
    );
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_deliveries_leak_no_file_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sub, received) = subscriber().await;
    let hub = HubProcess::start(dir.path());
    register(&hub.base, &sub.addr.to_string()).await;
    // Warm up: the delivery connection and the database are open.
    let warm = send_many(&hub.base, 16).await;
    wait_for_all(&received, &warm, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = hub.open_fds();
    let ids = send_many(&hub.base, 10_000).await;
    wait_for_all(&received, &ids, Duration::from_secs(120)).await;
    // Client connections to the hub close as the test's client drops them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = hub.open_fds();
    assert!(
        after <= before + 8,
        "open file descriptors grew from {before} to {after} over 10,000 deliveries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_for_every_delivery_leaks_no_file_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sub, received) = subscriber_with(Duration::ZERO, true).await;
    let hub = HubProcess::start(dir.path());
    register(&hub.base, &sub.addr.to_string()).await;
    let warm = send_many(&hub.base, 16).await;
    wait_for_all(&received, &warm, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = hub.open_fds();
    let ids = send_many(&hub.base, 2_000).await;
    wait_for_all(&received, &ids, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = hub.open_fds();
    assert!(
        after <= before + 8,
        "open file descriptors grew from {before} to {after} over 2,000 connections"
    );
}
