//! `shoal tasks` as a process: every acknowledged transition survives `kill -9`.

mod support;

use std::process::Child;

struct TasksProcess {
    child: Child,
    base: String,
}

impl TasksProcess {
    fn start(data_dir: &std::path::Path) -> Self {
        let (child, base) = support::spawn_service(&["tasks"], data_dir, &[]);
        Self { child, base }
    }
}

impl Drop for TasksProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transitions_survive_kill_9() {
    shoal_core::client::install_crypto_provider();
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks = TasksProcess::start(dir.path());
    let post = async |path: String| {
        let r = client
            .post(format!("{}{path}", tasks.base))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.expect("body")
    };
    for i in 0..200 {
        assert_eq!(post("/newTask".into()).await, i.to_string());
    }
    for i in 0..100 {
        let task: serde_json::Value =
            serde_json::from_str(&post("/getNewTask".into()).await).expect("json");
        assert_eq!(task["id"], i);
        if i % 2 == 0 {
            post(format!("/finishTask?id={i}")).await;
        }
    }
    drop(tasks); // SIGKILL
    let tasks = TasksProcess::start(dir.path());
    let count = async |state: u8| {
        client
            .get(format!("{}/list?state={state}", tasks.base))
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("body")
            .lines()
            .count()
    };
    assert_eq!(count(2).await, 50, "finished");
    assert_eq!(count(1).await, 50, "in progress (their leases still run)");
    assert_eq!(count(0).await, 100, "not started");
    let next = client
        .post(format!("{}/newTask", tasks.base))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    assert_eq!(next, "200", "ids continue after the crash");
}

/// A shutdown while the k/v store is still unreachable ends the registration retries at once
/// instead of waiting out the registration deadline.
#[test]
fn sigterm_while_waiting_for_the_kv_store_stops_promptly() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("tempdir");
    // Port 1 on loopback refuses connections: the k/v store is "not up yet".
    let mut child = Command::new(support::BIN)
        .args(["tasks", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--kv", "127.0.0.1:1", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("exited early").expect("read");
        if line.contains("register databaseAddress failed") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still waiting for the k/v store 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}
