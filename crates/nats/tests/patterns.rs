//! The NATS patterns against a real `nats-server` started by the test kit: request/reply
//! behind the frontend, master and workers with discovery (in memory and on JetStream), and
//! the three event forms.

// In a test a panic is the failure report, and the line it names is the context.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use shoal_core::testkit::TestServer;
use shoal_core::testkit::nats::NatsServer;
use shoal_nats::connection::NatsArgs;
use shoal_nats::fileserver::{self, FileServerConfig};
use shoal_nats::headers::NO_WORK;
use shoal_nats::master::{self, Master};
use shoal_nats::subjects::*;
use shoal_nats::{Task, TextMessage, User, events, frontend, providers, worker};
use tokio_util::sync::CancellationToken;

const DEMO_RESULT: &str = "data : 1\nget : 3\nhave : 1\nmy : 2\n";

macro_rules! nats_or_skip {
    () => {
        match NatsServer::start().expect("nats-server") {
            Some(server) => server,
            None => return,
        }
    };
}

async fn connect(server: &NatsServer) -> Client {
    async_nats::connect(server.url()).await.expect("connect")
}

fn http() -> reqwest::Client {
    shoal_core::client::install_crypto_provider();
    reqwest::Client::new()
}

/// Runs `future` in the background until the returned token is cancelled.
fn spawn_until<F>(make: impl FnOnce(CancellationToken) -> F) -> CancellationToken
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let future = make(stop.clone());
    tokio::spawn(async move {
        if let Err(err) = future.await {
            eprintln!("background task failed: {err:#}");
        }
    });
    stop
}

fn start_users(client: Client, users: HashMap<String, String>) -> CancellationToken {
    spawn_until(|stop| providers::serve_users(client, users, stop))
}

fn start_time(client: Client) -> CancellationToken {
    spawn_until(|stop| providers::serve_time(client, stop))
}

/// Waits until a request on `subject` gets an answer (the subscription is live).
async fn wait_for_responder(client: &Client, subject: &'static str, payload: Bytes) {
    let started = Instant::now();
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.request(subject, payload.clone()),
        )
        .await
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no responder on {subject}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `UserNameById` request payload for `id`.
fn user_request(id: &str) -> Bytes {
    Bytes::from(
        User {
            id: id.into(),
            name: String::new(),
        }
        .encode_to_vec(),
    )
}

async fn start_frontend(server: &NatsServer, timeout: Duration) -> TestServer {
    let client = connect(server).await;
    TestServer::start(move |listener, shutdown| async move {
        let mut options = shoal_core::server::ServerOptions::new("nats-frontend");
        options.request_timeout = Duration::from_secs(30);
        shoal_core::server::run(
            frontend::router_with(client, timeout),
            listener,
            shutdown,
            options,
        )
        .await
    })
    .await
    .expect("frontend")
}

async fn start_file_server(
    server: &NatsServer,
    dir: PathBuf,
    max_size: u64,
    advertise: Option<String>,
) -> TestServer {
    let config = FileServerConfig {
        nats: NatsArgs::new(server.url()),
        listen: "127.0.0.1:0".into(),
        advertise,
        dir,
        max_size,
        idle_timeout: Duration::from_secs(30),
        token: None,
        log_format: Default::default(),
    };
    TestServer::start(move |listener, shutdown| fileserver::run(config, listener, shutdown))
        .await
        .expect("file server")
}

async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    let response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// One HTTP/1.0 request with the path exactly as given; returns the status and body.
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn is_rfc3339(text: &str) -> bool {
    humantime::parse_rfc3339(text).is_ok()
}

#[tokio::test]
async fn frontend_answers_names_and_time() {
    let server = nats_or_skip!();
    let _users = start_users(connect(&server).await, providers::seed_users());
    let _time = start_time(connect(&server).await);
    let probe = connect(&server).await;
    wait_for_responder(&probe, USER_NAME_BY_ID, user_request("1")).await;
    wait_for_responder(&probe, TIME_TELLER, Bytes::new()).await;
    let front = start_frontend(&server, Duration::from_millis(500)).await;
    let http = http();

    for (id, name) in [("1", "Bob"), ("2", "John"), ("3", "Dan"), ("4", "Kate")] {
        let response = http.get(front.url(&format!("/{id}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("x-degraded").is_none());
        let text = response.text().await.unwrap();
        let prefix = format!("Hello {name} with id {id}, the time is ");
        assert!(text.starts_with(&prefix), "{text:?}");
        let time = text
            .strip_prefix(&prefix)
            .unwrap()
            .strip_suffix(".\n")
            .unwrap();
        assert!(is_rfc3339(time), "{time:?}");
    }

    let json: serde_json::Value = get_json(&http, front.url("/2")).await;
    assert_eq!(json["id"], "2");
    assert_eq!(json["name"], "John");
    assert_eq!(json["user"], "found");
    assert!(is_rfc3339(json["time"].as_str().unwrap()));
    assert_eq!(json["degraded"], serde_json::json!([]));

    // Unknown id: answered, with an empty name (text) or an explicit null (JSON).
    let text = http
        .get(front.url("/99"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with("Hello  with id 99, the time is "),
        "{text:?}"
    );
    let json: serde_json::Value = get_json(&http, front.url("/99")).await;
    assert_eq!(json["name"], serde_json::Value::Null);
    assert_eq!(json["user"], "unknown");
    assert!(json["time"].is_string());

    // Ids are passed as data, never as paths or markup: percent-encoded characters arrive.
    let json: serde_json::Value = get_json(&http, front.url("/a%20b%2Fc")).await;
    assert_eq!(json["id"], "a b/c");
}

#[tokio::test]
async fn frontend_degrades_within_its_timeout() {
    let server = nats_or_skip!();
    let users = start_users(connect(&server).await, providers::seed_users());
    let probe = connect(&server).await;
    wait_for_responder(&probe, USER_NAME_BY_ID, user_request("1")).await;
    let timeout = Duration::from_millis(300);
    let front = start_frontend(&server, timeout).await;
    let http = http();

    // No time teller at all: NATS says "no responders" at once.
    let started = Instant::now();
    let response = http.get(front.url("/1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-degraded"], "time-teller");
    assert_eq!(
        response.text().await.unwrap(),
        "Hello Bob with id 1, the time is .\n"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A time teller that never answers: the page still comes, after about the timeout.
    let silent = connect(&server).await;
    let _hold = silent
        .queue_subscribe(TIME_TELLER, TIME_TELLERS.to_string())
        .await
        .unwrap();
    shoal_nats::connection::sync(&silent).await.unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let json: serde_json::Value = get_json(&http, front.url("/4")).await;
        let took = started.elapsed();
        assert_eq!(json["name"], "Kate");
        assert_eq!(json["time"], serde_json::Value::Null);
        assert_eq!(json["degraded"], serde_json::json!(["time-teller"]));
        assert!(took >= timeout, "answered before the timeout: {took:?}");
        assert!(
            took < timeout * 10,
            "took {took:?} with a {timeout:?} timeout"
        );
    }

    // Both gone: still an answer.
    users.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let json: serde_json::Value = get_json(&http, front.url("/1")).await;
    assert_eq!(json["user"], "unavailable");
    assert_eq!(json["name"], serde_json::Value::Null);
}

#[tokio::test]
async fn frontend_refuses_bad_ids_without_hanging() {
    let server = nats_or_skip!();
    let front = start_frontend(&server, Duration::from_millis(100)).await;
    let http = http();
    for (path, status) in [("/%FF", 400), ("/%C3%28", 400), ("/", 400), ("/a/b", 404)] {
        let response =
            tokio::time::timeout(Duration::from_secs(5), http.get(front.url(path)).send())
                .await
                .unwrap_or_else(|_| panic!("{path} hangs"))
                .unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert!(
            response.text().await.unwrap().starts_with("Error: "),
            "{path}"
        );
    }
    let long = "x".repeat(frontend::MAX_ID_BYTES + 1);
    let response = http
        .get(front.url(&format!("/{long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http.post(front.url("/1")).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn queue_group_shares_requests_and_answers_each_once() {
    let server = nats_or_skip!();
    let ids: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    let mut stops = Vec::new();
    for provider in 0..3 {
        let users = ids
            .iter()
            .map(|id| (id.clone(), format!("p{provider}")))
            .collect();
        stops.push(start_users(connect(&server).await, users));
    }
    let client = connect(&server).await;
    // All three subscribed: each answers a probe sooner or later.
    let started = Instant::now();
    let mut seen = HashSet::new();
    while seen.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "providers: {seen:?}"
        );
        let reply = client.request(USER_NAME_BY_ID, user_request("1")).await;
        if let Ok(reply) = reply {
            seen.insert(User::decode(reply.payload).unwrap().name);
        }
    }

    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    for id in &ids {
        let request = User {
            id: id.clone(),
            name: String::new(),
        };
        client
            .publish_with_reply(
                USER_NAME_BY_ID,
                inbox.clone(),
                Bytes::from(request.encode_to_vec()),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let mut answered: HashMap<String, u32> = HashMap::new();
    let mut by_provider: BTreeMap<String, u32> = BTreeMap::new();
    // Collect until quiet: a duplicate would arrive within this window.
    while let Ok(Some(reply)) =
        tokio::time::timeout(Duration::from_millis(700), replies.next()).await
    {
        let user = User::decode(reply.payload).unwrap();
        *answered.entry(user.id).or_default() += 1;
        *by_provider.entry(user.name).or_default() += 1;
    }
    assert_eq!(answered.len(), ids.len(), "every request answered");
    assert!(answered.values().all(|n| *n == 1), "each answered once");
    assert_eq!(
        by_provider.len(),
        3,
        "all three share the load: {by_provider:?}"
    );
    assert!(by_provider.values().all(|n| *n > 0));
}

struct Pipeline {
    client: Client,
    files: TestServer,
    _dir: tempfile::TempDir,
}

async fn status(client: &Client) -> serde_json::Value {
    let reply = tokio::time::timeout(Duration::from_secs(2), client.request(STATUS, Bytes::new()))
        .await
        .expect("status in time")
        .expect("status");
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn wait_status(
    client: &Client,
    limit: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Ok(Ok(reply)) =
            tokio::time::timeout(Duration::from_secs(2), client.request(STATUS, Bytes::new())).await
        {
            let value: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            if check(&value) {
                return value;
            }
            assert!(started.elapsed() < limit, "{what}: {value}");
        }
        assert!(started.elapsed() < limit, "{what}: no status");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pipeline(server: &NatsServer) -> Pipeline {
    let dir = tempfile::tempdir().unwrap();
    let files = start_file_server(server, dir.path().to_path_buf(), 1 << 20, None).await;
    let client = connect(server).await;
    let started = Instant::now();
    while fileserver::discover(&client, Duration::from_millis(500))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "file server not discoverable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Pipeline {
        client,
        files,
        _dir: dir,
    }
}

fn start_master(client: Client, master: Master) -> CancellationToken {
    spawn_until(|stop| master::serve(client, master, stop))
}

fn start_worker(client: Client, threads: u16) -> CancellationToken {
    spawn_until(|stop| worker::work(client, threads, Duration::from_secs(1), stop))
}

/// Uploads `content` and creates a task for it; returns (uuid, id).
async fn new_task(p: &Pipeline, content: &'static str) -> (String, i32) {
    let uuid = uuid::Uuid::new_v4().to_string();
    worker::upload(
        &http(),
        &p.files.base_url,
        &uuid,
        Bytes::from_static(content.as_bytes()),
    )
    .await
    .unwrap();
    let started = Instant::now();
    loop {
        let request = Task {
            uuid: uuid.clone(),
            ..Default::default()
        };
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(2),
            p.client
                .request(NEW_TASK, Bytes::from(request.encode_to_vec())),
        )
        .await
        {
            let task = Task::decode(reply.payload).unwrap();
            assert_eq!(task.uuid, uuid);
            return (uuid, task.id);
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no master");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn take_task(client: &Client) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(2),
        client.request(TASK_TO_DO, Bytes::new()),
    )
    .await
    .expect("master answers in time")
    .expect("master answers")
}

#[tokio::test]
async fn demo_tasks_all_finish_with_sorted_counts() {
    let server = nats_or_skip!();
    let p = pipeline(&server).await;
    let master = Master::memory(Duration::from_secs(120));
    let _master = start_master(connect(&server).await, master.clone());
    let stop = CancellationToken::new();
    let ids = master::create_demo_tasks(&p.client, &master, master::DEMO_TASKS, &stop)
        .await
        .unwrap();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());

    // No worker yet: "no work" is not said while tasks wait.
    let _workers = start_worker(connect(&server).await, 4);
    let done = wait_status(&p.client, Duration::from_secs(30), "all 20 finished", |s| {
        s["finished"] == 20
    })
    .await;
    assert_eq!(done["total"], 20);
    assert_eq!(done["counters"]["refused"], serde_json::json!({}));
    let http = http();
    let mut results = HashSet::new();
    for task in done["tasks"].as_array().unwrap() {
        let name = task["finisheduuid"].as_str().unwrap();
        assert!(results.insert(name.to_string()), "one result file per task");
        let body = worker::download(&http, &p.files.base_url, name)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(body.to_vec()).unwrap(), DEMO_RESULT);
    }

    // Everything done: the next request says so at once, explicitly.
    let started = Instant::now();
    let reply = take_task(&p.client).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "no-work answered at once"
    );
    assert_eq!(
        reply
            .headers
            .as_ref()
            .unwrap()
            .get(NO_WORK)
            .unwrap()
            .as_str(),
        "true"
    );
    assert!(Task::decode(reply.payload).unwrap().uuid.is_empty());
}

#[tokio::test]
async fn a_task_of_a_dead_worker_is_reset_and_finished_by_another() {
    let server = nats_or_skip!();
    let p = pipeline(&server).await;
    let _master = start_master(
        connect(&server).await,
        Master::memory(Duration::from_millis(800)),
    );
    let (uuid, id) = new_task(&p, master::DEMO_CONTENT).await;

    // A worker takes the task and dies with it.
    let reply = take_task(&p.client).await;
    let taken = Task::decode(reply.payload).unwrap();
    assert_eq!(
        (taken.uuid.as_str(), taken.id, taken.state),
        (uuid.as_str(), id, 1)
    );
    let s = status(&p.client).await;
    assert_eq!(s["in_progress"], 1);

    let _workers = start_worker(connect(&server).await, 2);
    let done = wait_status(
        &p.client,
        Duration::from_secs(15),
        "finished after reset",
        |s| s["finished"] == 1,
    )
    .await;
    assert_eq!(done["counters"]["resets"], 1);
    assert_eq!(done["counters"]["handed_out"], 2);
    let result = done["tasks"][0]["finisheduuid"]
        .as_str()
        .unwrap()
        .to_string();
    let body = worker::download(&http(), &p.files.base_url, &result)
        .await
        .unwrap();
    assert_eq!(body, DEMO_RESULT.as_bytes());
}

#[tokio::test]
async fn forged_finishes_are_ignored() {
    let server = nats_or_skip!();
    let p = pipeline(&server).await;
    let _master = start_master(
        connect(&server).await,
        Master::memory(Duration::from_secs(120)),
    );
    let (uuid, id) = new_task(&p, master::DEMO_CONTENT).await;
    let taken = Task::decode(take_task(&p.client).await.payload).unwrap();
    assert_eq!(taken.id, id);

    let forged = [
        Task {
            uuid: uuid.clone(),
            finisheduuid: "r1".into(),
            state: 2,
            id: 999,
        },
        Task {
            uuid: uuid.clone(),
            finisheduuid: "r2".into(),
            state: 2,
            id: -1,
        },
        Task {
            uuid: "not-the-uuid".into(),
            finisheduuid: "r3".into(),
            state: 2,
            id,
        },
        Task {
            uuid: uuid.clone(),
            finisheduuid: "../../etc/passwd".into(),
            state: 2,
            id,
        },
        Task {
            uuid: uuid.clone(),
            finisheduuid: "r5".into(),
            state: 7,
            id,
        },
    ];
    for task in &forged {
        p.client
            .publish(TASK_FINISHED, Bytes::from(task.encode_to_vec()))
            .await
            .unwrap();
    }
    p.client
        .publish(TASK_FINISHED, Bytes::from_static(b"\xff\xff\xff garbage"))
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let s = wait_status(
        &p.client,
        Duration::from_secs(5),
        "all refusals counted",
        |s| {
            s["counters"]["refused"]
                .as_object()
                .map(|m| m.values().map(|v| v.as_u64().unwrap()).sum::<u64>())
                == Some(6)
        },
    )
    .await;
    assert_eq!(s["finished"], 0);
    assert_eq!(s["in_progress"], 1);
    assert_eq!(s["counters"]["refused"]["unknown_id"], 2);
    assert_eq!(s["counters"]["refused"]["wrong_uuid"], 1);
    assert_eq!(s["counters"]["refused"]["bad_result"], 1);
    assert_eq!(s["counters"]["refused"]["bad_state"], 1);
    assert_eq!(s["counters"]["refused"]["undecodable"], 1);

    // The tutorial's worker sends the task back with state 1: that is a finish.
    let real = Task {
        uuid: uuid.clone(),
        finisheduuid: "result-1".into(),
        state: 1,
        id,
    };
    p.client
        .publish(TASK_FINISHED, Bytes::from(real.encode_to_vec()))
        .await
        .unwrap();
    let s = wait_status(&p.client, Duration::from_secs(5), "finished", |s| {
        s["finished"] == 1
    })
    .await;
    assert_eq!(s["tasks"][0]["finisheduuid"], "result-1");
    // A repeat changes nothing.
    let again = Task {
        finisheduuid: "result-2".into(),
        ..real
    };
    p.client
        .publish(TASK_FINISHED, Bytes::from(again.encode_to_vec()))
        .await
        .unwrap();
    let s = wait_status(
        &p.client,
        Duration::from_secs(5),
        "duplicate counted",
        |s| s["counters"]["refused"]["duplicate"] == 1,
    )
    .await;
    assert_eq!(s["tasks"][0]["finisheduuid"], "result-1");
}

#[tokio::test]
async fn master_keeps_answering_after_reset_after() {
    let server = nats_or_skip!();
    let p = pipeline(&server).await;
    let reset_after = Duration::from_millis(300);
    let _master = start_master(connect(&server).await, Master::memory(reset_after));
    let (uuid, _) = new_task(&p, master::DEMO_CONTENT).await;
    let first = Task::decode(take_task(&p.client).await.payload).unwrap();
    assert_eq!(first.uuid, uuid);
    // Several reset periods later (the tutorial's master is deadlocked by now) it still
    // answers, and hands the abandoned task out again, each time.
    for round in 0..3 {
        tokio::time::sleep(reset_after * 3).await;
        let reply = take_task(&p.client).await;
        let again = Task::decode(reply.payload).unwrap();
        assert_eq!(
            again.uuid, uuid,
            "round {round}: reset and handed out again"
        );
        let s = status(&p.client).await;
        assert_eq!(s["counters"]["resets"], round + 1);
    }
    // A new task is accepted and the status answers.
    let (_, id) = new_task(&p, "a,b").await;
    assert_eq!(id, 1);
}

#[tokio::test]
async fn file_server_refuses_escapes_and_oversized_bodies() {
    let server = nats_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let files = start_file_server(
        &server,
        dir.path().to_path_buf(),
        1024,
        Some("files.example:9999".into()),
    )
    .await;
    let http = http();

    // Discovery announces the configured address, not a hard-coded one.
    let client = connect(&server).await;
    let started = Instant::now();
    let address = loop {
        if let Ok(address) = fileserver::discover(&client, Duration::from_millis(500)).await {
            break address;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    };
    assert_eq!(address, "http://files.example:9999");

    let secret = dir
        .path()
        .parent()
        .unwrap()
        .join(format!("outside-{}", std::process::id()));
    // Sent raw: an HTTP client library would normalise `%2E%2E` away before sending.
    for name in [
        "%2E%2E",
        "..",
        "%2E%2E%2Foutside",
        "..%2Foutside",
        "%2Fetc%2Fpasswd",
        ".hidden",
        "a%00b",
        "%FF",
        "a%5Cb",
        &"n".repeat(129),
    ] {
        let (status, body) = raw_request(files.addr, "POST", &format!("/{name}"), "x").await;
        assert_eq!(status, 400, "POST {name}");
        assert!(body.starts_with("Error: "), "{body:?}");
        let (status, _) = raw_request(files.addr, "GET", &format!("/{name}"), "").await;
        assert_eq!(status, 400, "GET {name}");
    }
    for path in ["//etc/passwd", "/../outside", "/a/../../outside"] {
        let (status, _) = raw_request(files.addr, "POST", path, "x").await;
        assert!(status == 400 || status == 404, "POST {path}: {status}");
    }
    assert!(!secret.exists());

    // Too large: announced, and streamed without a length.
    let response = http
        .post(files.url("/big"))
        .body(vec![b'a'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b'b'; 256]))).collect();
    let response = http
        .post(files.url("/big"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        http.get(files.url("/big")).send().await.unwrap().status(),
        404
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "nothing left behind: {leftovers:?}");

    // A good name round-trips, and is replaced whole.
    let response = http
        .post(files.url("/words.csv"))
        .body("a,b,a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        http.get(files.url("/words.csv"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "a,b,a"
    );
    http.post(files.url("/words.csv"))
        .body("c")
        .send()
        .await
        .unwrap();
    assert_eq!(
        http.get(files.url("/words.csv"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "c"
    );
    assert_eq!(
        http.get(files.url("/missing"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.put(files.url("/words.csv"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
}

#[tokio::test]
async fn durable_master_restarted_mid_run_loses_nothing() {
    let mut server = nats_or_skip!();
    let p = pipeline(&server).await;
    let stream = "SHOAL_TEST_WORK";
    let reset_after = Duration::from_secs(2);
    let first = Master::durable(&connect(&server).await, stream, reset_after)
        .await
        .unwrap();
    let first_client = connect(&server).await;
    let first_stop = start_master(first_client.clone(), first);

    let mut finished = p.client.subscribe(TASK_FINISHED).await.unwrap();
    p.client.flush().await.unwrap();
    let mut tasks = HashMap::new();
    for _ in 0..20 {
        let (uuid, id) = new_task(&p, master::DEMO_CONTENT).await;
        assert!(id > 0, "ids are stream sequences");
        tasks.insert(uuid, id);
    }
    // The same file registered again within the window is the same task.
    let again = Task {
        uuid: tasks.keys().next().unwrap().clone(),
        ..Default::default()
    };
    let reply = p
        .client
        .request(NEW_TASK, Bytes::from(again.encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(Task::decode(reply.payload).unwrap().id, tasks[&again.uuid]);

    // One task is taken by a worker that dies with it.
    let abandoned = Task::decode(take_task(&p.client).await.payload).unwrap();
    assert!(tasks.contains_key(&abandoned.uuid));
    let worker_stop = start_worker(connect(&server).await, 1);
    // Let some tasks finish, then crash the master (its connection goes away without a
    // drain) and restart it, then restart the NATS server itself.
    let mut done: HashMap<String, String> = HashMap::new();
    while done.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(20), finished.next())
            .await
            .unwrap()
            .unwrap();
        let task = Task::decode(message.payload).unwrap();
        done.insert(task.uuid, task.finisheduuid);
    }
    first_stop.cancel();
    drop(first_client);
    let second = Master::durable(&connect(&server).await, stream, reset_after)
        .await
        .unwrap();
    let _second = start_master(connect(&server).await, second);

    server.stop();
    server.start_again().unwrap();

    let started = Instant::now();
    while done.len() < tasks.len() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "finished {} of {}",
            done.len(),
            tasks.len()
        );
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(1), finished.next()).await
        {
            let task = Task::decode(message.payload).unwrap();
            assert_eq!(
                tasks.get(&task.uuid),
                Some(&task.id),
                "a finish for a task we created"
            );
            done.insert(task.uuid, task.finisheduuid);
        }
    }
    let s = wait_status(&p.client, Duration::from_secs(10), "stream empty", |s| {
        s["unfinished"] == 0
    })
    .await;
    assert_eq!(s["mode"], "durable");
    let http = http();
    for result in done.values() {
        let body = worker::download(&http, &p.files.base_url, result)
            .await
            .unwrap();
        assert_eq!(body, DEMO_RESULT.as_bytes());
    }
    worker_stop.cancel();
}

#[tokio::test]
async fn clients_survive_a_server_restart_and_wait_for_a_late_server() {
    let mut server = nats_or_skip!();
    let url = server.url();
    let _users = start_users(connect(&server).await, providers::seed_users());
    let client = connect(&server).await;
    let ask = || User {
        id: "3".into(),
        name: String::new(),
    };
    wait_for_responder(&client, USER_NAME_BY_ID, Bytes::from(ask().encode_to_vec())).await;

    server.stop();
    server.start_again().unwrap();
    // Both clients reconnect and the provider's queue subscription resumes.
    let started = Instant::now();
    loop {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.request(USER_NAME_BY_ID, Bytes::from(ask().encode_to_vec())),
        )
        .await
        {
            assert_eq!(User::decode(reply.payload).unwrap().name, "Dan");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no answer after the server restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A program started while the server is down waits for it.
    server.stop();
    let stop = CancellationToken::new();
    let connecting = tokio::spawn({
        let stop = stop.clone();
        async move { shoal_nats::connect(&NatsArgs::new(url), "test", &stop).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !connecting.is_finished(),
        "connect gave up or pretended to succeed"
    );
    server.start_again().unwrap();
    let late = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    late.flush().await.unwrap();

    // And stopping gives up cleanly.
    server.stop();
    let stop = CancellationToken::new();
    let connecting = tokio::spawn({
        let stop = stop.clone();
        let url = server.url();
        async move { shoal_nats::connect(&NatsArgs::new(url), "test", &stop).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err());
}

#[tokio::test]
async fn all_fifteen_event_messages_arrive_and_replies_carry_their_ids() {
    let server = nats_or_skip!();
    let subscriber = connect(&server).await;
    let subscriptions = events::Subscriptions::start(&subscriber).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let running = tokio::spawn(subscriptions.run(stop.clone(), tx));

    let publisher = connect(&server).await;
    let report = events::publish(&publisher, 5, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(report.standard, vec![0, 1, 2, 3, 4]);
    assert_eq!(report.channel, 5);
    assert_eq!(report.failed_requests(), 0);
    for (id, reply) in &report.replies {
        let reply = reply.as_ref().unwrap();
        assert_eq!(reply.id, *id, "the reply carries the request's id");
        assert_eq!(reply.body, "Responding!");
    }
    assert_eq!(
        report.replies.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9]
    );
    // Dropping the publisher's connection right away loses nothing: it flushed.
    drop(publisher);

    let mut got: Vec<(events::Form, i32)> = Vec::new();
    while got.len() < 15 {
        let received = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("15 messages")
            .unwrap();
        got.push((received.form, received.message.id));
    }
    got.sort_by_key(|(_, id)| *id);
    let expected: Vec<_> = (0..15)
        .map(|id| {
            let form = match id {
                0..5 => events::Form::Standard,
                5..10 => events::Form::Respond,
                _ => events::Form::Channel,
            };
            (form, id)
        })
        .collect();
    assert_eq!(got, expected);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("subscriber drains")
        .unwrap();
}

#[tokio::test]
async fn a_failed_request_is_reported_as_failed() {
    let server = nats_or_skip!();
    let client = connect(&server).await;
    let mut standard = client.subscribe(TEXT_STANDARD).await.unwrap();
    let mut channel = events::bind_recv::<TextMessage>(&client, TEXT_CHANNEL)
        .await
        .unwrap();
    client.flush().await.unwrap();
    let report = events::publish(&client, 2, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(report.failed_requests(), 2);
    for (_, reply) in &report.replies {
        assert!(
            reply
                .as_ref()
                .unwrap_err()
                .contains("Messaging.Text.Respond"),
            "{reply:?}"
        );
    }
    for id in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(5), standard.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(TextMessage::decode(message.payload).unwrap().id, id);
    }
    for id in 4..6 {
        let message = tokio::time::timeout(Duration::from_secs(5), channel.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.id, id);
    }
}
