//! `shoal nats …` as processes on a real `nats-server`: the master/worker pipeline with
//! `submit`, a worker killed (-9) mid-task, a durable master killed, the event publisher and
//! subscriber, connection failures retried and reported, and SIGTERM handled.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_core::testkit::nats::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

macro_rules! nats_or_skip {
    () => {
        match NatsServer::start().expect("nats-server") {
            Some(server) => server,
            None => return,
        }
    };
}

/// A `shoal nats` child process and what it printed so far.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

impl Proc {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("nats")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shoal nats");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                started.elapsed() < limit,
                "no {needle:?} in the log: {:?}",
                self.stderr.lock().expect("lines")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of a `listening` log line (JSON logs).
    fn listening(&self) -> String {
        let line = self.wait_log("\"listening\"", Duration::from_secs(20));
        let event: serde_json::Value = serde_json::from_str(&line).expect("json log");
        event["address"].as_str().expect("address").to_string()
    }

    fn count_log(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("lines").clone()
    }

    /// SIGTERM, then the exit code (within 15 s).
    fn terminate(mut self) -> i32 {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code().unwrap_or(-1);
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `shoal nats ARGS` to completion (within `limit`); returns (code, stdout, stderr).
fn run_to_end(args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("nats")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "shoal nats {args:?} did not finish: {:?}",
                stderr.lock().expect("lines")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    let join = |lines: &Arc<Mutex<Vec<String>>>| lines.lock().expect("lines").join("\n");
    (code, join(&stdout), join(&stderr))
}

/// `shoal nats file-server` on a free port, serving `dir`, once it listens.
fn file_server(url: &str, dir: &std::path::Path) -> Proc {
    let (files, _) = file_server_with(url, dir, &[]);
    files
}

/// `shoal nats file-server … EXTRA…` once it listens, and the address it listens on.
fn file_server_with(url: &str, dir: &std::path::Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "file-server",
        "--nats",
        url,
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir.to_str().expect("utf-8"),
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let files = Proc::start(&args);
    let address = files.listening();
    (files, address)
}

async fn master_status(url: &str) -> serde_json::Value {
    let client = async_nats::connect(url).await.expect("connect");
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.request("Work.Status", bytes::Bytes::new()),
    )
    .await
    .expect("status in time")
    .expect("status");
    serde_json::from_slice(&reply.payload).expect("json")
}

#[tokio::test]
async fn demo_and_submit_through_processes() {
    let server = nats_or_skip!();
    let url = server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let files_dir = dir.path().join("files");
    let files = file_server(&url, &files_dir);
    let master = Proc::start(&[
        "master",
        "--nats",
        &url,
        "--demo",
        "--reset-after",
        "3s",
        "--log-format",
        "json",
    ]);
    master.wait_log("demo tasks created", Duration::from_secs(20));
    let worker = Proc::start(&[
        "worker",
        "--nats",
        &url,
        "--threads",
        "2",
        "--log-format",
        "json",
    ]);

    let started = Instant::now();
    loop {
        let status = master_status(&url).await;
        if status["finished"] == 20 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "demo not finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let first = dir.path().join("first.csv");
    let second = dir.path().join("second.csv");
    std::fs::write(&first, "b,a,b\n").expect("write");
    std::fs::write(&second, "x, y,x,x,,\n").expect("write");
    let (code, stdout, stderr) = run_to_end(
        &[
            "submit",
            "--nats",
            &url,
            first.to_str().expect("utf-8"),
            second.to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{} (task 20):\n  a : 1\n  b : 2\n{} (task 21):\n  x : 3\n  y : 1",
            first.display(),
            second.display()
        )
    );
    // A file that cannot be read is reported and fails the run; the others still count.
    let (code, stdout, stderr) = run_to_end(
        &[
            "submit",
            "--nats",
            &url,
            "/nonexistent/words.csv",
            first.to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/words.csv (task -): FAILED: cannot read"),
        "{stderr}"
    );
    assert!(stdout.contains("a : 1"), "{stdout}");

    assert_eq!(worker.terminate(), 0);
    assert_eq!(master.terminate(), 0);
    assert_eq!(files.terminate(), 0);
}

#[tokio::test]
async fn publisher_and_subscriber_processes() {
    let server = nats_or_skip!();
    let url = server.url();
    // Nobody listening: the requests are reported failed and the run fails.
    let (code, stdout, stderr) = run_to_end(&["publish", "--nats", &url], Duration::from_secs(30));
    assert_eq!(code, 1);
    assert!(stderr.contains("request 5 failed"), "{stderr}");
    assert!(
        !stdout.contains("with id 5"),
        "no empty reply printed: {stdout}"
    );

    let subscriber = Proc::start(&["subscribe", "--nats", &url, "--log-format", "json"]);
    subscriber.wait_log("subscribed to", Duration::from_secs(20));
    let (code, stdout, stderr) = run_to_end(&["publish", "--nats", &url], Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    for id in 5..10 {
        assert!(
            stdout.contains(&format!("Responding! with id {id}")),
            "{stdout}"
        );
    }
    let started = Instant::now();
    while subscriber.stdout().len() < 15 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            subscriber.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = subscriber.stdout();
    assert!(
        lines
            .contains(&"Got standard message: \"Hello over standard!\" with the Id 0.".to_string())
    );
    assert!(lines.contains(
        &"Got ask for response message: \"Hello, please respond!\" with the Id 9.".to_string()
    ));
    assert!(
        lines.contains(
            &"Got channel'ed message: \"Hello over channel!\" with the Id 14.".to_string()
        ),
        "the last channel message arrives: {lines:?}"
    );
    assert_eq!(lines.len(), 15);
    assert_eq!(subscriber.terminate(), 0);
}

#[tokio::test]
async fn unreachable_server_is_retried_with_backoff_and_reported() {
    let mut server = nats_or_skip!();
    let url = server.url();
    server.stop();
    let worker = Proc::start(&["worker", "--nats", &url, "--log-format", "json"]);
    worker.wait_log("cannot connect to NATS; retrying", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let attempts = worker.count_log("cannot connect to NATS; retrying");
    assert!(
        (2..20).contains(&attempts),
        "retried with backoff, not a busy loop: {attempts} attempts in ~2 s"
    );
    // The server comes up: the worker connects; with no master it backs off for real
    // (the tutorial's worker logs "waiting 2 seconds" thousands of times a second).
    server.start_again().expect("restart");
    worker.wait_log("connected to NATS", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    let failures = worker.count_log("task failed; waiting before retrying");
    assert!(
        (1..=40).contains(&failures),
        "{failures} failure lines in ~2 s"
    );
    assert!(worker.count_log("no master is running") >= 1);
    let master = Proc::start(&["master", "--nats", &url]);
    master.wait_log("master ready", Duration::from_secs(15));

    // The server goes away: SIGTERM still ends both promptly (nothing waits for a
    // reconnection that may never come).
    server.stop();
    worker.wait_log("NATS connection lost", Duration::from_secs(10));
    let started = Instant::now();
    assert_eq!(worker.terminate(), 0);
    assert_eq!(master.terminate(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "shutdown took {:?}",
        started.elapsed()
    );

    // Stopped while still connecting: a clean exit.
    let provider = Proc::start(&["user-provider", "--nats", &url]);
    provider.wait_log("cannot connect to NATS", Duration::from_secs(10));
    assert_eq!(provider.terminate(), 0);
}

#[tokio::test]
async fn durable_master_killed_keeps_every_acknowledged_task() {
    let server = nats_or_skip!();
    let url = server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let files_dir = dir.path().join("files");
    let files = file_server(&url, &files_dir);
    let durable = [
        "master",
        "--nats",
        &url,
        "--durable",
        "--reset-after",
        "2s",
        "--log-format",
        "json",
    ];
    let mut master = Proc::start(&durable);
    master.wait_log("master ready", Duration::from_secs(20));

    let mut inputs = Vec::new();
    let mut expected = String::new();
    for n in 0..12 {
        let path = dir.path().join(format!("in-{n:02}.csv"));
        let words: Vec<String> = (0..=n).map(|i| format!("w{}", i % 3)).collect();
        std::fs::write(&path, words.join(",")).expect("write");
        inputs.push(path);
    }
    let mut args: Vec<&str> = vec!["submit", "--nats", &url, "--timeout", "60s"];
    args.extend(inputs.iter().map(|p| p.to_str().expect("utf-8")));
    let submit = Proc::start(&args);

    // Every task acknowledged by the master, then the master dies without a goodbye.
    let started = Instant::now();
    while master.count_log("task created") < inputs.len() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "tasks not created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    master.child.kill().expect("kill -9");
    let _ = master.child.wait();
    master = Proc::start(&durable);
    master.wait_log("master ready", Duration::from_secs(20));
    let worker = Proc::start(&["worker", "--nats", &url, "--threads", "2"]);

    let started = Instant::now();
    let mut submit = submit;
    let code = loop {
        if let Some(status) = submit.child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "submit did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(code, 0, "{:?}", submit.stderr.lock().expect("lines"));
    let out = submit.stdout().join("\n");
    for (n, path) in inputs.iter().enumerate() {
        let mut counts = [0; 3];
        for i in 0..=n {
            counts[i % 3] += 1;
        }
        write!(expected, "{} (task {}):", path.display(), n + 1).expect("fmt");
        for (word, count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            write!(expected, "\n  w{word} : {count}").expect("fmt");
        }
        if n + 1 < inputs.len() {
            expected.push('\n');
        }
    }
    assert_eq!(out, expected);
    let status = master_status(&url).await;
    assert_eq!(status["mode"], "durable");
    assert_eq!(status["unfinished"], 0, "{status}");
    assert_eq!(worker.terminate(), 0);
    assert_eq!(master.terminate(), 0);
    assert_eq!(files.terminate(), 0);
}

/// A file server the test controls: `GET` of `held` blocks until released; everything else is
/// served from memory. Returns its base URL.
async fn controlled_file_server(
    files: Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>,
    held: String,
    release: tokio::sync::watch::Receiver<bool>,
    asked: tokio::sync::mpsc::UnboundedSender<()>,
) -> String {
    use axum::extract::{Path, State};
    type Shared = (
        Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>,
        String,
        tokio::sync::watch::Receiver<bool>,
        tokio::sync::mpsc::UnboundedSender<()>,
    );
    async fn get(
        State((files, held, mut release, asked)): State<Shared>,
        Path(name): Path<String>,
    ) -> Result<Vec<u8>, axum::http::StatusCode> {
        if name == held && !*release.borrow() {
            let _ = asked.send(());
            let _ = release.wait_for(|released| *released).await;
        }
        files
            .lock()
            .expect("files")
            .get(&name)
            .cloned()
            .ok_or(axum::http::StatusCode::NOT_FOUND)
    }
    async fn post(
        State((files, ..)): State<Shared>,
        Path(name): Path<String>,
        body: axum::body::Bytes,
    ) {
        files.lock().expect("files").insert(name, body.to_vec());
    }
    let router = axum::Router::new()
        .route("/{name}", axum::routing::get(get).post(post))
        .with_state((files, held, release, asked));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test]
async fn a_worker_killed_mid_task_its_task_is_reset_and_done_by_another() {
    let server = nats_or_skip!();
    let url = server.url();
    let files = Arc::new(Mutex::new(std::collections::HashMap::new()));
    files
        .lock()
        .expect("files")
        .insert("input-1".to_string(), b"a,b,a".to_vec());
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (asked_tx, mut asked_rx) = tokio::sync::mpsc::unbounded_channel();
    let base = controlled_file_server(files.clone(), "input-1".into(), release_rx, asked_tx).await;

    let client = async_nats::connect(url.as_str()).await.expect("connect");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(shoal_nats::fileserver::serve_discovery(
        client.clone(),
        base,
        stop.clone(),
    ));
    let master = shoal_nats::master::Master::memory(Duration::from_secs(1));
    assert_eq!(master.add("input-1").await.expect("add"), 0);
    tokio::spawn(shoal_nats::master::serve(
        client.clone(),
        master.clone(),
        stop.clone(),
    ));

    // The first worker takes the task and is killed (-9) while it fetches the file.
    let mut first = Proc::start(&["worker", "--nats", &url, "--threads", "1"]);
    tokio::time::timeout(Duration::from_secs(20), asked_rx.recv())
        .await
        .expect("the worker fetches its task's file")
        .expect("asked");
    assert_eq!(master.status().await["in_progress"], 1);
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();
    release_tx.send(true).expect("release");

    // Another worker gets it once it is reset, and finishes it.
    let second = Proc::start(&["worker", "--nats", &url, "--threads", "1"]);
    let started = Instant::now();
    let status = loop {
        let status = master.status().await;
        if status["finished"] == 1 {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["counters"]["resets"], 1);
    assert_eq!(status["counters"]["handed_out"], 2);
    let result = status["tasks"][0]["finisheduuid"]
        .as_str()
        .expect("result name")
        .to_string();
    assert_eq!(
        files.lock().expect("files").get(&result).map(Vec::as_slice),
        Some(&b"a : 2\nb : 1\n"[..])
    );
    assert_eq!(second.terminate(), 0);
    stop.cancel();
}

/// An upload that stops sending partway (a body of 1,000 bytes announced, 10 sent) is answered
/// 408 after `--idle-timeout` and leaves no file, temporary or not. (It was held, unanswered,
/// with its temporary file, for as long as the client kept the connection.)
#[tokio::test]
async fn a_stalled_upload_is_abandoned_and_leaves_nothing() {
    let server = nats_or_skip!();
    let url = server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let files_dir = dir.path().join("files");
    let (_files, address) = file_server_with(&url, &files_dir, &["--idle-timeout", "1s"]);

    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(
                b"POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
            )
            .expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("Error: no data for 1s"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let left: Vec<_> = std::fs::read_dir(&files_dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
