//! What a hostile client can make a service hold, replayed against the real binary: every such
//! resource stays bounded.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

/// A service process, killed when dropped.
struct Service {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start(args: &[&str], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, base) = support::spawn_service(args, dir.path(), extra);
        Self {
            child,
            base,
            _dir: dir,
        }
    }

    fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Sends `request` raw on a new connection and returns the status code of the answer.
    fn raw(&self, request: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(self.address()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request).expect("send");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        text.split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    fn metrics(&self, token: Option<&str>) -> String {
        let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        let mut stream = TcpStream::connect(self.address()).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
        answer
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 500 requests with made-up 20 KB methods and 500 with made-up paths, unauthenticated, to a
/// service under `--token` and to one without: `/metrics` stays small (it grew to 221 MB when
/// the method was a label), and the service still answers.
#[test]
fn junk_methods_and_paths_do_not_grow_the_metrics() {
    let guarded = Service::start(&["kv"], &["--token", "hunter2"]);
    let open = Service::start(&["tasks"], &[]);
    for (service, path, expected) in [(&guarded, "/get", 401), (&open, "/getById", 405)] {
        for i in 0..500 {
            let method = format!("X{i}{}", "M".repeat(20_000));
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let status = service.raw(request.as_bytes());
            assert_eq!(status, expected, "junk method");
        }
        for i in 0..500 {
            let request = format!(
                "GET /junk-{i}-{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "p".repeat(2_000)
            );
            let status = service.raw(request.as_bytes());
            assert!(status == 401 || status == 404, "junk path: {status}");
        }
    }
    for (service, token) in [(&guarded, Some("hunter2")), (&open, None)] {
        let metrics = service.metrics(token);
        assert!(
            metrics.len() < 1 << 20,
            "/metrics is {} bytes after junk requests",
            metrics.len()
        );
        assert!(!metrics.contains("MMMM") && !metrics.contains("junk-"));
        assert!(
            metrics.contains(r#"method="other""#),
            "made-up methods counted as other"
        );
        assert!(metrics.contains(r#"route="unmatched""#));
    }
}

/// 350 connections held open (every seventh stopping halfway through its headers) against
/// `shoal kv --max-connections 50 --header-timeout 2s`: a new client is still answered at once,
/// the process holds no more sockets than the cap, and every held connection is closed by
/// the server once the header timeout has passed. (Held connections were never closed, and
/// enough of them stopped the service from accepting at all.)
#[test]
fn held_connections_are_capped_and_closed_after_the_header_timeout() {
    let kv = Service::start(
        &["kv"],
        &["--max-connections", "50", "--header-timeout", "2s"],
    );
    let pid = kv.child.id();
    let mut held = Vec::new();
    for i in 0..350 {
        let mut stream = TcpStream::connect(kv.address()).expect("connect");
        if i % 7 == 0 {
            stream
                .write_all(b"GET /get?key=a HTTP/1.1\r\nHost: x\r\n")
                .expect("half the headers");
        }
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = kv.raw(b"GET /get?key=a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let took = started.elapsed();
    println!("a new request with 350 connections held: answered in {took:?}");
    assert_eq!(status, 404, "answered (no such key)");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count();
    println!("sockets open in the service: {sockets}");
    assert!(sockets <= 50 + 4, "{sockets} sockets open with a cap of 50");
    std::thread::sleep(Duration::from_secs(3));
    for (i, stream) in held.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = [0_u8; 256];
        match stream.read(&mut buf) {
            // Closed (perhaps after a 408), or reset: either way the server let go.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("held connection {i} still open after the header timeout: {e}"),
        }
    }
}

/// A service whose stderr is a pipe nobody reads any more (`shoal worker … 2>&1 | head -2`)
/// still stops at SIGTERM: a failed log write never stands in the way of shutdown.
#[test]
fn sigterm_stops_a_service_whose_stderr_was_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    for args in [
        &[
            "worker",
            "--master",
            "127.0.0.1:1",
            "--storage",
            "127.0.0.1:1",
            "--data-dir",
            data,
        ][..],
        &["kv", "--listen", "127.0.0.1:0", "--data-dir", data],
    ] {
        let mut child = Command::new(support::BIN)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        for _ in 0..2 {
            let _ = lines.next();
        }
        // The reader goes away, as `head -2` does; the service goes on logging into the pipe.
        drop(lines);
        std::thread::sleep(Duration::from_millis(500));
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "shoal {} still running 10 s after SIGTERM",
                args[0]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `getById` requests a task database has served, from its own `/metrics`.
async fn get_by_id_requests(client: &reqwest::Client, tasks: &str) -> u64 {
    let text = client
        .get(format!("{tasks}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter(|l| l.starts_with("shoal_http_requests_total") && l.contains("route=\"/getById\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Many clients long-polling one queued task through the master cost the task database a
/// bounded number of requests: one held long poll (and a read) per client poll, woken by a
/// change notification. (1,000 polls had made 24,686 requests in 10 s, re-asking in a loop.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_on_a_task_do_not_hammer_the_task_database() {
    let kv = Service::start(&["kv"], &[]);
    let tasks = Service::start(&["tasks"], &["--kv", &kv.base]);
    let _storage = Service::start(&["storage"], &["--kv", &kv.base]);
    let master_dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(support::BIN);
    command
        .args(["master", "--kv", &kv.base, "--listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info");
    let (child, base) = support::spawn_command(command);
    let master = Service {
        child,
        base,
        _dir: master_dir,
    };
    shoal_core::client::install_crypto_provider();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{}/readyz", master.base))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "the master never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(32, 32)
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("png");
    let created = client
        .post(format!("{}/api/v1/tasks?op=blur:2", master.base))
        .header("content-type", "image/png")
        .body(png.into_inner())
        .send()
        .await
        .expect("upload");
    assert_eq!(created.status(), 201);
    // No worker runs: the task stays queued for the whole wait.
    const POLLS: u64 = 200;
    let before = get_by_id_requests(&client, &tasks.base).await;
    let polls = (0..POLLS).map(|_| {
        let client = client.clone();
        let url = format!("{}/api/v1/tasks/0?wait=3s&state=queued", master.base);
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    for status in futures::future::join_all(polls).await {
        assert_eq!(status.expect("poll"), 200);
    }
    let served = get_by_id_requests(&client, &tasks.base).await - before;
    println!("{POLLS} long polls of 3 s: {served} getById requests to the task database");
    assert!(
        served <= 3 * POLLS,
        "{served} requests for {POLLS} long polls"
    );
}
