//! `shoal multicast subscribe` against a fake hub that records registrations, and once
//! end to end against the real hub.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use reqwest::StatusCode;
use shoal_core::routes::{delete, post};
use shoal_core::server::{self, ServerOptions};
use shoal_core::testkit::TestServer;
use shoal_multicast::signing::SigningSecret;
use shoal_multicast::subscribe::{self, Event, Output, SubscribeArgs};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Register(String),
    Deregister(String),
}

/// What the fake hub was asked.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn push(&self, call: Call) {
        self.0.lock().expect("calls lock").push(call);
    }

    fn snapshot(&self) -> Vec<Call> {
        self.0.lock().expect("calls lock").clone()
    }

    fn registrations(&self, address: &str) -> usize {
        self.snapshot()
            .iter()
            .filter(|c| **c == Call::Register(address.to_owned()))
            .count()
    }
}

fn fake_hub(calls: Calls) -> Router {
    Router::new()
        .route(
            "/registerAndKeepAlive",
            post(
                |State(calls): State<Calls>, Query(q): Query<HashMap<String, String>>| async move {
                    calls.push(Call::Register(
                        q.get("address").cloned().unwrap_or_default(),
                    ));
                    "success"
                },
            ),
        )
        .route(
            "/deregister",
            delete(
                |State(calls): State<Calls>, Query(q): Query<HashMap<String, String>>| async move {
                    calls.push(Call::Deregister(
                        q.get("address").cloned().unwrap_or_default(),
                    ));
                    "success"
                },
            ),
        )
        .with_state(calls)
}

async fn start_fake_hub() -> (TestServer, Calls) {
    let calls = Calls::default();
    let router = fake_hub(calls.clone());
    let hub = TestServer::start(|listener, shutdown| async move {
        server::run(router, listener, shutdown, ServerOptions::new("fakehub")).await
    })
    .await
    .expect("fake hub");
    (hub, calls)
}

/// A subscriber running in the test's runtime, emitting into a channel.
struct Subscriber {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Subscriber {
    async fn start(args: SubscribeArgs) -> Self {
        shoal_core::client::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, events) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(subscribe::run_with_output(
            args,
            listener,
            async move {
                let _ = stopped.await;
            },
            Output::Channel(tx),
        ));
        Self {
            addr,
            events,
            stop: Some(stop),
            task,
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    async fn next_event(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("channel open")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("subscriber stops in time")
            .expect("subscriber task")
            .expect("subscriber result");
    }
}

fn args(hub: &str) -> SubscribeArgs {
    let mut args = SubscribeArgs::new(hub);
    args.keepalive = Duration::from_millis(100);
    args
}

fn client() -> reqwest::Client {
    shoal_core::client::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
}

async fn post_event(
    subscriber: SocketAddr,
    headers: &[(&str, String)],
    body: &'static [u8],
) -> (StatusCode, String) {
    let mut request = client()
        .post(format!("http://{subscriber}/event"))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("post event");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

fn with_id(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", now().to_string()),
    ]
}

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit i64")
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn registers_its_bound_address_and_keeps_alive() {
    let (hub, calls) = start_fake_hub().await;
    let subscriber = Subscriber::start(args(&hub.base_url)).await;
    let address = subscriber.address();
    wait_until("two registrations", || calls.registrations(&address) >= 2).await;
    assert!(
        calls
            .snapshot()
            .iter()
            .all(|c| *c == Call::Register(address.clone())),
        "{:?}",
        calls.snapshot()
    );
    subscriber.stop().await;
}

#[tokio::test]
async fn deregisters_on_shutdown() {
    let (hub, calls) = start_fake_hub().await;
    let mut args = args(&hub.base_url);
    args.keepalive = Duration::from_secs(30);
    let subscriber = Subscriber::start(args).await;
    let address = subscriber.address();
    wait_until("registration", || calls.registrations(&address) >= 1).await;
    subscriber.stop().await;
    assert_eq!(
        calls.snapshot().last(),
        Some(&Call::Deregister(address.clone()))
    );
    assert_eq!(calls.registrations(&address), 1);
}

#[tokio::test]
async fn registers_the_advertised_address() {
    let (hub, calls) = start_fake_hub().await;
    let mut args = args(&hub.base_url);
    args.advertise = Some("Subscriber.Example:4000".parse().expect("address"));
    let subscriber = Subscriber::start(args).await;
    wait_until("registration", || {
        calls.registrations("subscriber.example:4000") >= 1
    })
    .await;
    subscriber.stop().await;
}

#[tokio::test]
async fn retries_registration_until_the_hub_is_up() {
    // Reserve a port, then free it: nothing listens there until the hub starts.
    let hub_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("reserve port")
        .local_addr()
        .expect("local addr");
    let subscriber = Subscriber::start(args(&hub_addr.to_string())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !subscriber.task.is_finished(),
        "the subscriber must keep trying"
    );

    let calls = Calls::default();
    let listener = TcpListener::bind(hub_addr).await.expect("rebind hub port");
    let (hub_stop, hub_stopped) = oneshot::channel::<()>();
    let hub = tokio::spawn(server::run(
        fake_hub(calls.clone()),
        listener,
        async move {
            let _ = hub_stopped.await;
        },
        ServerOptions::new("fakehub"),
    ));
    let address = subscriber.address();
    wait_until("registration once the hub is up", || {
        calls.registrations(&address) >= 1
    })
    .await;
    subscriber.stop().await;
    assert_eq!(calls.snapshot().last(), Some(&Call::Deregister(address)));
    let _ = hub_stop.send(());
    hub.await.expect("hub task").expect("hub result");
}

#[tokio::test]
async fn stops_promptly_while_the_hub_is_down() {
    let hub_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("reserve port")
        .local_addr()
        .expect("local addr");
    let subscriber = Subscriber::start(args(&hub_addr.to_string())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    subscriber.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn emits_each_event_once() {
    let (hub, _calls) = start_fake_hub().await;
    let mut subscriber = Subscriber::start(args(&hub.base_url)).await;

    let (status, body) = post_event(subscriber.addr, &with_id("msg_1"), b"hello").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let event = subscriber.next_event().await;
    assert_eq!(event.id.as_deref(), Some("msg_1"));
    assert_eq!(&event.body[..], b"hello");

    // A redelivery is acknowledged but not emitted again.
    let (status, _) = post_event(subscriber.addr, &with_id("msg_1"), b"hello").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post_event(subscriber.addr, &with_id("msg_2"), b"second").await;
    assert_eq!(status, StatusCode::OK);
    let event = subscriber.next_event().await;
    assert_eq!(event.id.as_deref(), Some("msg_2"));
    assert_eq!(&event.body[..], b"second");

    subscriber.stop().await;
}

#[tokio::test]
async fn events_without_an_id_are_accepted_but_not_deduplicated() {
    let (hub, _calls) = start_fake_hub().await;
    let mut subscriber = Subscriber::start(args(&hub.base_url)).await;
    for _ in 0..2 {
        let (status, _) = post_event(subscriber.addr, &[], b"seed").await;
        assert_eq!(status, StatusCode::OK);
    }
    for _ in 0..2 {
        let event = subscriber.next_event().await;
        assert_eq!(event.id, None);
        assert_eq!(&event.body[..], b"seed");
    }
    subscriber.stop().await;
}

#[tokio::test]
async fn malformed_ids_are_rejected() {
    let (hub, _calls) = start_fake_hub().await;
    let subscriber = Subscriber::start(args(&hub.base_url)).await;
    let (status, _) = post_event(subscriber.addr, &[("webhook-id", String::new())], b"x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let twice = [
        ("webhook-id", "a".to_owned()),
        ("webhook-id", "b".to_owned()),
    ];
    let (status, _) = post_event(subscriber.addr, &twice, b"x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    subscriber.stop().await;
}

#[tokio::test]
async fn verifies_signatures_when_given_a_secret() {
    let (hub, _calls) = start_fake_hub().await;
    let secret: SigningSecret = SECRET.parse().expect("secret");
    let mut args = args(&hub.base_url);
    args.signing_secret = Some(secret.clone());
    let mut subscriber = Subscriber::start(args).await;

    let signed = secret.headers("msg_a", now(), b"genuine");
    let (status, _) = post_event(subscriber.addr, &signed, b"genuine").await;
    assert_eq!(status, StatusCode::OK);
    let event = subscriber.next_event().await;
    assert_eq!(event.id.as_deref(), Some("msg_a"));
    assert_eq!(&event.body[..], b"genuine");

    // Tampered body, no signature, a stale timestamp, another key: all refused.
    let tampered = secret.headers("msg_b", now(), b"genuine");
    let (status, _) = post_event(subscriber.addr, &tampered, b"forged").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post_event(subscriber.addr, &with_id("msg_c"), b"unsigned").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let stale = secret.headers("msg_d", now() - 3600, b"old");
    let (status, _) = post_event(subscriber.addr, &stale, b"old").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let other: SigningSecret = "another key".parse().expect("secret");
    let foreign = other.headers("msg_e", now(), b"foreign");
    let (status, _) = post_event(subscriber.addr, &foreign, b"foreign").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A forged delivery must not poison the id of the genuine one.
    let genuine = secret.headers("msg_b", now(), b"real");
    let (status, _) = post_event(subscriber.addr, &genuine, b"real").await;
    assert_eq!(status, StatusCode::OK);
    let event = subscriber.next_event().await;
    assert_eq!(event.id.as_deref(), Some("msg_b"));
    assert_eq!(&event.body[..], b"real");

    subscriber.stop().await;
}

/// `'path'` for sh.
fn quoted(path: &std::path::Path) -> String {
    let text = path.to_str().expect("utf-8 temp path");
    assert!(!text.contains('\''), "{text}");
    format!("'{text}'")
}

#[tokio::test]
async fn exec_feeds_the_body_and_ids_to_the_command() {
    let (hub, _calls) = start_fake_hub().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let body_file = dir.path().join("body");
    let env_file = dir.path().join("env");
    let mut args = args(&hub.base_url);
    args.exec = Some(format!(
        "printf '%s %s' \"$WEBHOOK_ID\" \"$WEBHOOK_TIMESTAMP\" > {}; cat >> {}",
        quoted(&env_file),
        quoted(&body_file)
    ));
    let subscriber = Subscriber::start(args).await;

    let headers = vec![
        ("webhook-id", "msg_x".to_owned()),
        ("webhook-timestamp", "1700000000".to_owned()),
    ];
    let (status, body) = post_event(subscriber.addr, &headers, b"line 1\nline 2\n").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        std::fs::read(&body_file).expect("body file"),
        b"line 1\nline 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(&env_file).expect("env file"),
        "msg_x 1700000000"
    );

    // Handled once: the redelivery does not run the command again (which would append).
    let (status, _) = post_event(subscriber.addr, &headers, b"line 1\nline 2\n").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        std::fs::read(&body_file).expect("body file"),
        b"line 1\nline 2\n"
    );

    // No id: run with empty variables.
    let (status, _) = post_event(subscriber.addr, &[], b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read_to_string(&env_file).expect("env file"), " ");
    subscriber.stop().await;
}

#[tokio::test]
async fn exec_failure_answers_500_and_is_retried() {
    let (hub, _calls) = start_fake_hub().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let mut args = args(&hub.base_url);
    args.exec = Some(format!("echo run >> {}; exit 3", quoted(&runs)));
    let subscriber = Subscriber::start(args).await;

    for attempt in 1..=2 {
        let (status, body) = post_event(subscriber.addr, &with_id("msg_f"), b"x").await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "attempt {attempt}"
        );
        assert!(body.contains('3'), "{body}");
    }
    // A failed event is not remembered: the hub's retry runs the command again.
    assert_eq!(
        std::fs::read_to_string(&runs).expect("runs file"),
        "run\nrun\n"
    );
    subscriber.stop().await;
}

#[tokio::test]
async fn exec_that_ignores_stdin_still_works() {
    let (hub, _calls) = start_fake_hub().await;
    let mut args = args(&hub.base_url);
    args.exec = Some("exit 0".into());
    let subscriber = Subscriber::start(args).await;
    static BIG: [u8; 1 << 20] = [b'x'; 1 << 20];
    let (status, _) = post_event(subscriber.addr, &with_id("msg_big"), &BIG).await;
    assert_eq!(status, StatusCode::OK);
    subscriber.stop().await;
}

#[tokio::test]
async fn exec_time_limit_answers_500() {
    let (hub, _calls) = start_fake_hub().await;
    let mut args = args(&hub.base_url);
    args.exec = Some("sleep 5".into());
    args.exec_timeout = Duration::from_millis(200);
    let subscriber = Subscriber::start(args).await;
    let started = Instant::now();
    let (status, body) = post_event(subscriber.addr, &with_id("msg_slow"), b"x").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("timed out"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));
    subscriber.stop().await;
}

#[tokio::test]
async fn redelivery_during_handling_is_asked_to_retry() {
    let (hub, _calls) = start_fake_hub().await;
    let mut args = args(&hub.base_url);
    args.exec = Some("sleep 2".into());
    let subscriber = Subscriber::start(args).await;
    let addr = subscriber.addr;

    let first = tokio::spawn(async move { post_event(addr, &with_id("msg_d"), b"x").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _) = post_event(addr, &with_id("msg_d"), b"x").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = first.await.expect("first request");
    assert_eq!(status, StatusCode::OK);
    // Done now: a later redelivery is a plain duplicate (answered at once).
    let started = Instant::now();
    let (status, _) = post_event(addr, &with_id("msg_d"), b"x").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
    subscriber.stop().await;
}

#[tokio::test]
async fn receives_from_the_real_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret: SigningSecret = SECRET.parse().expect("secret");
    let mut config = shoal_multicast::Config::with_data_dir(dir.path());
    config.signing_secret = Some(secret.clone());
    let hub =
        TestServer::start(|listener, shutdown| shoal_multicast::run(config, listener, shutdown))
            .await
            .expect("hub");
    let mut args = args(&hub.base_url);
    args.signing_secret = Some(secret);
    let mut subscriber = Subscriber::start(args).await;
    let address = subscriber.address();

    let http = client();
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = http
            .get(hub.url("/listSubscribers"))
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("list body");
        if listed.contains(&address) {
            break;
        }
        assert!(Instant::now() < deadline, "never registered: {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for body in ["first", "second"] {
        let response = http
            .post(hub.url("/sendMessage"))
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let first = subscriber.next_event().await;
    let second = subscriber.next_event().await;
    assert_eq!(&first.body[..], b"first");
    assert_eq!(&second.body[..], b"second");
    assert!(first.id.is_some() && second.id.is_some() && first.id != second.id);

    subscriber.stop().await;
    let listed = http
        .get(hub.url("/listSubscribers"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("list body");
    assert!(!listed.contains(&address), "still listed: {listed}");
    hub.stop().await.expect("hub stops");
}

#[tokio::test]
async fn shuts_down_when_the_consumer_is_gone() {
    let (hub, calls) = start_fake_hub().await;
    let mut subscriber = Subscriber::start(args(&hub.base_url)).await;
    let address = subscriber.address();
    wait_until("registration", || calls.registrations(&address) >= 1).await;
    subscriber.events.close();
    let (status, _) = post_event(subscriber.addr, &with_id("msg_lost"), b"x").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::timeout(WAIT, &mut subscriber.task)
        .await
        .expect("the subscriber stops on its own")
        .expect("subscriber task")
        .expect("subscriber result");
    assert_eq!(calls.snapshot().last(), Some(&Call::Deregister(address)));
}

#[tokio::test]
async fn keeps_alive_often_enough_for_the_hubs_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = shoal_multicast::Config::with_data_dir(dir.path());
    config.expire = Duration::from_millis(600);
    let hub =
        TestServer::start(|listener, shutdown| shoal_multicast::run(config, listener, shutdown))
            .await
            .expect("hub");
    // The default keep-alive (30 s) is far longer than this hub's expiry: the subscriber
    // learns the expiry from the hub and keeps alive every quarter of it.
    let subscriber = Subscriber::start(SubscribeArgs::new(&hub.base_url)).await;
    let address = subscriber.address();
    let http = client();
    let listed = async || {
        http.get(hub.url("/listSubscribers"))
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("body")
            .contains(&address)
    };
    let deadline = Instant::now() + WAIT;
    while !listed().await {
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(listed().await, "expired although the subscriber runs");
    }
    subscriber.stop().await;
    hub.stop().await.expect("hub stops");
}
