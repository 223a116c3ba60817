//! End-to-end tests of `shoal kv` as a process: crash durability (`kill -9`), graceful stop on
//! SIGTERM, loud start-up failures, and the command line.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod support;

use support::BIN;

/// A `shoal kv` child process and the address it listens on.
struct KvProcess {
    child: Child,
    base: String,
}

impl KvProcess {
    /// Starts `shoal kv` on a free port and waits until it listens.
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let (child, base) = support::spawn_service(&["kv"], data_dir, extra);
        Self { child, base }
    }

    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for KvProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    shoal_core::client::install_crypto_provider();
    reqwest::Client::new()
}

async fn get_text(url: String) -> String {
    client()
        .get(url)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body")
}

async fn set_many(base: &str, n: usize) {
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let client = client.clone();
        let url = format!("{base}/set");
        tasks.spawn(async move {
            for i in (chunk..n).step_by(16) {
                let r = client
                    .post(&url)
                    .query(&[
                        ("key", format!("key-{i:04}")),
                        ("value", format!("value-{i}")),
                    ])
                    .send()
                    .await
                    .expect("set");
                assert_eq!(r.status(), 200, "set key-{i:04}");
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.expect("setter");
    }
}

async fn assert_all_present(base: &str, n: usize) {
    let body = get_text(format!("{base}/list?format=json")).await;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
    assert_eq!(entries.len(), n, "every acknowledged key survived");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["key"], format!("key-{i:04}"));
        assert_eq!(e["value"], format!("value-{i}"));
    }
}

async fn crash_durability(sync: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = KvProcess::start(dir.path(), &["--sync", sync]);
    set_many(&kv.base, 1000).await;
    kv.kill_9();
    let kv = KvProcess::start(dir.path(), &["--sync", sync]);
    assert_all_present(&kv.base, 1000).await;
    // And the store goes on working after recovery.
    let r = client()
        .post(format!("{}/set?key=after&value=crash", kv.base))
        .send()
        .await
        .expect("set");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    crash_durability("normal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_with_full_sync() {
    crash_durability("full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kv = KvProcess::start(dir.path(), &[]);
    set_many(&kv.base, 10).await;
    let pid = kv.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = kv.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let kv = KvProcess::start(dir.path(), &[]);
    let body = get_text(format!("{}/list", kv.base)).await;
    assert_eq!(body.lines().count(), 10);
}

#[test]
fn a_taken_port_fails_loudly_with_the_address() {
    // DEFECTS 2: the seed exits silently with status 0.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["kv", "--listen", &address, "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&address), "{stderr}");
}

#[test]
fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = KvProcess::start(dir.path(), &[]);
    let out = Command::new(BIN)
        .args(["kv", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "a second kv on the same data would serve a stale copy"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another shoal kv"), "{stderr}");
}

#[test]
fn help_lists_subcommands_and_version_works() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["up", "kv", "bench"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{help}"
        );
    }
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("shoal "));
    let out = Command::new(BIN)
        .args(["kv", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--token",
        "--log-format",
        "--database-url",
        "SHOAL_KV_LISTEN",
        "SHOAL_TOKEN",
    ] {
        assert!(help.contains(flag), "{flag} missing from kv --help");
    }
    // No subcommand offers a flag that does nothing for it.
    for (subcommand, absent) in [
        (&["kv"][..], &["--kv "][..]),
        (&["storage"], &["--database-url"]),
        (&["master"], &["--database-url"]),
        (&["worker"], &["--database-url"]),
        (&["frontend"], &["--database-url", "--advertise"]),
        (&["multicast"], &["--kv "]),
        (&["multicast", "subscribe"], &["--kv ", "--database-url"]),
    ] {
        let out = Command::new(BIN)
            .args(subcommand)
            .arg("--help")
            .output()
            .expect("run");
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in absent {
            assert!(
                !help.contains(flag),
                "shoal {} --help offers {flag}",
                subcommand.join(" ")
            );
        }
    }
    for subcommand in ["tasks", "storage", "master", "worker", "frontend"] {
        let out = Command::new(BIN)
            .args([subcommand, "--help"])
            .output()
            .expect("run");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--kv <URL>"), "{subcommand}: {help}");
    }
}

#[test]
fn flags_can_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("kv")
        .env("SHOAL_KV_LISTEN", "not-an-address")
        .env("SHOAL_KV_DATA_DIR", dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
    let out = Command::new(BIN)
        .args(["kv", "--data-dir"])
        .arg(dir.path())
        .env("SHOAL_KV_MAX_KEY_SIZE", "lots")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
}
