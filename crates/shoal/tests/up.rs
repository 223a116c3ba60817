//! `shoal up`, the README's main command, as a process: it starts the whole pipeline, prints
//! where, processes uploads, stops on SIGTERM, and after `kill -9` finishes every upload it
//! had accepted. `shoal submit` is tested against it.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Cursor};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgba};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

struct Up {
    child: Child,
    urls: HashMap<String, String>,
}

impl Up {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["up", "--ports", "auto", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn shoal up");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut urls = HashMap::new();
        loop {
            let line = lines
                .next()
                .expect("shoal up exited before it was up")
                .expect("read");
            if let Some((service, url)) = line.split_once(" listening on ") {
                urls.insert(service.to_owned(), url.trim().to_owned());
            }
            if line.starts_with("shoal is up") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self { child, urls }
    }

    fn url(&self, service: &str) -> &str {
        &self.urls[service]
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                return exit;
            }
            assert!(started.elapsed() < limit, "shoal up did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let image = DynamicImage::ImageRgba8(ImageBuffer::from_fn(width, height, |x, y| {
        Rgba([
            ((x * 7 + seed) % 256) as u8,
            ((y * 5 + seed * 3) % 256) as u8,
            ((x + y + seed) % 256) as u8,
            255,
        ])
    }));
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png).expect("encode");
    out.into_inner()
}

async fn settle(client: &reqwest::Client, master: &str, id: u64, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let answer = client
            .get(format!("{master}/isReady?id={id}&wait=5s"))
            .send()
            .await;
        if let Ok(r) = answer {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            if status != 200 || text != "0" {
                return format!("{status} {text}");
            }
        }
        assert!(started.elapsed() < limit, "task {id} did not settle");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_pipeline_and_stops_on_sigterm() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut up = Up::start(dir.path(), &[]);
    for service in [
        "k/v store",
        "task database",
        "storage",
        "master",
        "frontend",
    ] {
        assert!(
            up.urls.contains_key(service),
            "no URL for {service}: {:?}",
            up.urls
        );
    }
    let client = reqwest::Client::new();
    // The page users open is served at the frontend's URL.
    let page = client
        .get(format!("{}/", up.url("frontend")))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("body")
            .contains("name=\"uploadfile\"")
    );
    let kv = up.url("k/v store").to_owned();
    let r = client
        .post(format!("{kv}/set?key=hello&value=world"))
        .send()
        .await
        .expect("set");
    assert_eq!(r.text().await.expect("body"), "success");
    // The services found each other through the k/v store.
    for (key, service) in [
        ("databaseAddress", "task database"),
        ("storageAddress", "storage"),
        ("masterAddress", "master"),
    ] {
        let r = client
            .get(format!("{kv}/get?key={key}"))
            .send()
            .await
            .expect("get");
        assert_eq!(
            format!("http://{}", r.text().await.expect("body")),
            up.url(service),
            "{key}"
        );
    }
    let master = up.url("master").to_owned();
    let r = client
        .post(format!("{master}/new?op=grayscale"))
        .body(png(32, 32, 1))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let id: u64 = r.text().await.expect("id").parse().expect("id");
    assert_eq!(
        settle(&client, &master, id, Duration::from_secs(60)).await,
        "200 1"
    );
    let r = client
        .get(format!("{master}/get?id={id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let out = image::load_from_memory(&r.bytes().await.expect("body")).expect("an image");
    assert_eq!((out.width(), out.height()), (32, 32));
    assert!(
        dir.path()
            .join("storage/finished")
            .join(id.to_string())
            .exists()
    );
    assert!(
        dir.path().join("kv").exists(),
        "state lives under --data-dir"
    );
    up.signal("-TERM");
    let exit = up.wait(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_accepted_upload_finishes() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    // One slow thread, so that at the kill some tasks are in progress and most are queued;
    // a lease far longer than the test proves the restart hands claims back at once.
    let args = ["--threads", "1", "--lease", "10m"];
    let up = Up::start(dir.path(), &args);
    let client = reqwest::Client::new();
    let master = up.url("master").to_owned();
    let mut accepted = Vec::new();
    for i in 0..8u32 {
        let r = client
            .post(format!("{master}/new?op=blur:30,blur:30"))
            .body(png(1600 + i, 1200, i))
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), 200);
        let id: u64 = r.text().await.expect("id").parse().expect("id");
        accepted.push((id, 1600 + i));
    }
    // Kill while a task is provably in hand.
    let started = Instant::now();
    'wait: loop {
        let mut states = Vec::new();
        for (id, _) in &accepted {
            let r = client
                .get(format!("{master}/api/v1/tasks/{id}"))
                .send()
                .await
                .expect("status");
            let job: serde_json::Value =
                serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
            if job["state"] == "processing" {
                break 'wait;
            }
            states.push(job["state"].to_string());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no task was ever seen in progress: {states:?}"
        );
    }
    drop(up); // SIGKILL, mid-task
    let up = Up::start(dir.path(), &args);
    let master = up.url("master").to_owned();
    for (id, width) in &accepted {
        assert_eq!(
            settle(&client, &master, *id, Duration::from_secs(120)).await,
            "200 1",
            "task {id}"
        );
        let r = client
            .get(format!("{master}/get?id={id}"))
            .send()
            .await
            .expect("get");
        let out = image::load_from_memory(&r.bytes().await.expect("body")).expect("an image");
        assert_eq!(out.width(), *width, "task {id} holds another task's result");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_loses_no_accepted_upload() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(dir.path(), &["--threads", "1"]);
    let master = up.url("master").to_owned();
    let client = reqwest::Client::new();
    // Uploads keep arriving from 4 clients until the kill cuts them off mid-request.
    let mut uploaders = tokio::task::JoinSet::new();
    for client_no in 0..4u32 {
        let client = client.clone();
        let master = master.clone();
        uploaders.spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..1000u32 {
                let width = 100 + client_no * 1000 + i;
                let sent = client
                    .post(format!("{master}/new"))
                    .body(png(width, 50, i))
                    .send()
                    .await;
                let Ok(r) = sent else { break };
                if r.status() != 200 {
                    break;
                }
                let Ok(text) = r.text().await else { break };
                accepted.push((text.parse::<u64>().expect("id"), width));
            }
            accepted
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(up); // SIGKILL while uploads are in flight
    let mut accepted = Vec::new();
    while let Some(done) = uploaders.join_next().await {
        accepted.extend(done.expect("uploader"));
    }
    assert!(
        accepted.len() >= 4,
        "too few uploads before the kill: {}",
        accepted.len()
    );
    eprintln!("accepted before the kill: {}", accepted.len());
    let up = Up::start(dir.path(), &["--threads", "2"]);
    let master = up.url("master").to_owned();
    for (id, width) in &accepted {
        assert_eq!(
            settle(&client, &master, *id, Duration::from_secs(120)).await,
            "200 1",
            "accepted upload {id}"
        );
        let r = client
            .get(format!("{master}/get?id={id}"))
            .send()
            .await
            .expect("get");
        let out = image::load_from_memory(&r.bytes().await.expect("body")).expect("an image");
        assert_eq!(
            out.width(),
            *width,
            "task {id} holds another upload's result"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_processes_files_and_names_the_failures() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(&dir.path().join("data"), &[]);
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).expect("mkdir");
    for (name, width) in [("a", 20), ("b", 30), ("c", 40)] {
        std::fs::write(inputs.join(format!("{name}.png")), png(width, 10, width)).expect("write");
    }
    std::fs::write(inputs.join("notes.png"), b"this is not an image").expect("write");
    let out = dir.path().join("out");
    let submit = |server: &str, files: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .arg("submit")
            .args(files.iter().map(|f| inputs.join(f)))
            .args([
                "--server",
                up.url(server),
                "--op",
                "grayscale",
                "--format",
                "webp",
            ])
            .arg("--out")
            .arg(&out);
        command.output().expect("run shoal submit")
    };
    let run = submit("master", &["a.png", "b.png", "c.png", "notes.png"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "one file is not an image");
    assert!(stderr.contains("notes.png"), "{stderr}");
    assert!(stdout.contains("3 of 4 images processed"), "{stdout}");
    for (name, width) in [("a", 20), ("b", 30), ("c", 40)] {
        let bytes = std::fs::read(out.join(format!("{name}.webp"))).expect("result written");
        let image = image::load_from_memory(&bytes).expect("an image");
        assert_eq!(image.width(), width);
        let rgba = image.to_rgba8();
        assert!(
            rgba.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
            "grayscale"
        );
    }
    // The same through the frontend, which serves the same public API.
    std::fs::remove_dir_all(&out).expect("clear the results");
    let run = submit("frontend", &["a.png", "b.png"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for name in ["a", "b"] {
        let bytes = std::fs::read(out.join(format!("{name}.webp"))).expect("result written");
        image::load_from_memory(&bytes).expect("an image");
    }
}
