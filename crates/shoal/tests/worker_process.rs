//! A standalone `shoal worker` killed with `kill -9` mid-task and started again with the same
//! `--data-dir` (so the same name) hands its earlier claims back at once: the task is done
//! long before its lease would have run out.

mod support;

use std::io::Cursor;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A photo-sized image, so a blur takes a while in a debug build.
fn big_png() -> Vec<u8> {
    let picture = DynamicImage::ImageRgb8(ImageBuffer::from_fn(1600, 1200, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    }));
    let mut out = Cursor::new(Vec::new());
    picture.write_to(&mut out, ImageFormat::Png).expect("png");
    out.into_inner()
}

fn worker(kv: &str, data_dir: &std::path::Path) -> Killed {
    let mut command = Command::new(support::BIN);
    command
        .args(["worker", "--kv", kv, "--threads", "1", "--data-dir"])
        .arg(data_dir)
        .args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    Killed(support::spawn_command(command).0)
}

async fn task(client: &reqwest::Client, master: &str, id: u64) -> serde_json::Value {
    let body = client
        .get(format!("{master}/api/v1/tasks/{id}"))
        .send()
        .await
        .expect("status")
        .bytes()
        .await
        .expect("body");
    serde_json::from_slice(&body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_under_its_name_hands_back_its_tasks_at_once() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let (kv, kv_base) = support::spawn_service(&["kv"], &dir.path().join("kv"), &[]);
    let _kv = Killed(kv);
    // A long lease: waiting it out would take a minute.
    let (tasks, _) = support::spawn_service(
        &["tasks", "--kv", &kv_base, "--lease", "60s"],
        &dir.path().join("tasks"),
        &[],
    );
    let _tasks = Killed(tasks);
    let (storage, _) = support::spawn_service(
        &["storage", "--kv", &kv_base],
        &dir.path().join("storage"),
        &[],
    );
    let _storage = Killed(storage);
    let mut command = Command::new(support::BIN);
    command
        .args(["master", "--kv", &kv_base, "--listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info");
    let (master, master_base) = support::spawn_command(command);
    let _master = Killed(master);

    let client = reqwest::Client::new();
    let worker_dir = dir.path().join("worker");
    let first = worker(&kv_base, &worker_dir);
    let name = std::fs::read_to_string(worker_dir.join("worker-id")).expect("worker id");
    // A second worker on the same directory is refused: it would take the same name.
    let twin = Command::new(support::BIN)
        .args(["worker", "--kv", &kv_base, "--data-dir"])
        .arg(&worker_dir)
        .output()
        .expect("run");
    assert!(!twin.status.success());
    assert!(
        String::from_utf8_lossy(&twin.stderr).contains("another worker"),
        "{}",
        String::from_utf8_lossy(&twin.stderr)
    );

    let r = client
        .post(format!("{master_base}/new?op=blur:8"))
        .body(big_png())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let id: u64 = r.text().await.expect("id").trim().parse().expect("id");
    let started = Instant::now();
    loop {
        if task(&client, &master_base, id).await["state"] == "processing" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first); // kill -9, mid-task

    let restarted = Instant::now();
    let _second = worker(&kv_base, &worker_dir);
    assert_eq!(
        std::fs::read_to_string(worker_dir.join("worker-id")).expect("worker id"),
        name,
        "the same name after the restart"
    );
    loop {
        let job = task(&client, &master_base, id).await;
        if job["state"] == "finished" {
            break;
        }
        assert_ne!(job["state"], "failed", "{job}");
        assert!(
            restarted.elapsed() < Duration::from_secs(40),
            "the task waited for its lease: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = task(&client, &master_base, id).await;
    assert_eq!(job["attempts"], 2, "{job}");
    println!(
        "task {id} finished {:.1} s after the worker restarted (lease: 60 s)",
        restarted.elapsed().as_secs_f64()
    );
}
