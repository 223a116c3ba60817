//! The scale-out deployment of docs/DEPLOY.md, as separate processes of the real binary on
//! loopback: PostgreSQL and an S3-compatible server (started here), two k/v replicas and two
//! task database replicas on PostgreSQL, two storage processes on one bucket, two masters, two
//! workers and one frontend.
//!
//! 200 images go through the frontend, and every replica must have done its share. Then one of
//! each replicated service (k/v, tasks, storage, master, worker) is killed with `kill -9`
//! while a second 200 are in flight, and none is restarted: every accepted upload must finish
//! exactly once with the right pixels, the frontend must never answer 5xx, and the second
//! batch must finish within the lease bound plus its processing time.
//!
//! Under `CI=true` a missing PostgreSQL or S3 server fails the test instead of skipping it.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};
use shoal_core::testkit::postgres::PgServer;
use shoal_core::testkit::s3::{self, S3Server};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
/// Images per batch.
const BATCH: usize = 200;
/// Uploads in flight at once.
const CONCURRENCY: usize = 8;
/// The task database's default lease (`shoal tasks --lease`), which bounds how long a task
/// of a killed worker (or a claim whose answer died with its replica) waits.
const LEASE: Duration = Duration::from_secs(20);

/// One process of the deployment; killed (SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `shoal <args…>` logging JSON to `logs/<name>.log`, and waits for its "listening"
    /// line (the HTTP API, or a worker's `--metrics-listen`).
    fn start(name: &str, args: &[&str], logs: &Path, env: &[(&str, &str)]) -> Self {
        let log = logs.join(format!("{name}.log"));
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shoal");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path).expect("log file");
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(sender) = &tx
                    && let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "listening"
                {
                    let _ = sender.send(event["address"].as_str().unwrap_or("").to_owned());
                    tx = None;
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "{name} did not start listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Self {
            name: name.to_owned(),
            child,
            base: format!("http://{address}"),
            log,
        }
    }

    /// SIGKILL, no goodbye.
    fn kill_9(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Image `n` of a batch: every pixel depends on `n`, so a result can only be its own.
fn image(n: usize) -> Vec<u8> {
    let n = n as u32;
    let picture = DynamicImage::ImageRgb8(ImageBuffer::from_fn(40, 30, |x, y| {
        Rgb([
            ((n * 7 + x * 3) % 256) as u8,
            ((n * 13 + y * 5) % 256) as u8,
            ((n + x * y) % 256) as u8,
        ])
    }));
    let mut out = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut out, ImageFormat::Png).expect("png");
    out.into_inner()
}

/// Whether `result` is image `n` inverted, pixel for pixel.
fn is_inverted(n: usize, result: &[u8]) -> bool {
    let Ok(decoded) = image::load_from_memory(result) else {
        return false;
    };
    let original = image::load_from_memory(&image(n))
        .expect("own image")
        .to_rgb8();
    let decoded = decoded.to_rgb8();
    decoded.dimensions() == original.dimensions()
        && decoded
            .pixels()
            .zip(original.pixels())
            .all(|(r, o)| r.0.iter().zip(o.0).all(|(a, b)| *a == 255 - b))
}

/// The sum of a Prometheus counter's samples whose labels include every `label="value"`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every answer status the frontend gave, by status.
#[derive(Default)]
struct Statuses(Mutex<BTreeMap<u16, usize>>);

impl Statuses {
    fn record(&self, status: u16) {
        *self.0.lock().expect("lock").entry(status).or_default() += 1;
    }

    fn server_errors(&self) -> usize {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }
}

struct Client {
    http: reqwest::Client,
    frontend: String,
    statuses: Statuses,
}

impl Client {
    /// Uploads image `n` of batch `batch`; its task id. A broken connection is retried with
    /// the same `Idempotency-Key` (so it can never become two tasks); an answer is never
    /// retried, and any 5xx is recorded.
    async fn upload(&self, batch: usize, n: usize) -> u64 {
        let body = image(n);
        for _ in 0..20 {
            let sent = self
                .http
                .post(format!("{}/api/v1/tasks?op=invert", self.frontend))
                .header("idempotency-key", format!("deploy-{batch}-{n}"))
                .body(body.clone())
                .send()
                .await;
            let Ok(response) = sent else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let status = response.status().as_u16();
            self.statuses.record(status);
            let text = response.text().await.unwrap_or_default();
            assert_eq!(status, 201, "upload {batch}/{n}: {text}");
            let answer: serde_json::Value = serde_json::from_str(&text).expect("json");
            return answer["id"].as_u64().expect("id");
        }
        panic!("upload {batch}/{n}: the frontend could not be reached");
    }

    /// Waits for task `id` to finish and returns its result.
    async fn result(&self, id: u64) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut state = "queued".to_owned();
        loop {
            assert!(Instant::now() < deadline, "task {id} did not finish");
            // Long-polls until the state moves on from the last one seen.
            let answer = self
                .http
                .get(format!(
                    "{}/api/v1/tasks/{id}?wait=10s&state={state}",
                    self.frontend
                ))
                .send()
                .await;
            let Ok(response) = answer else { continue };
            let status = response.status().as_u16();
            self.statuses.record(status);
            let text = response.text().await.unwrap_or_default();
            assert_eq!(status, 200, "status of task {id}: {text}");
            let task: serde_json::Value = serde_json::from_str(&text).expect("json");
            match task["state"].as_str() {
                Some("finished") => break,
                Some("failed") => panic!("task {id} failed: {task}"),
                Some(other) => other.clone_into(&mut state),
                None => panic!("task {id}: no state in {task}"),
            }
        }
        for _ in 0..20 {
            let answer = self
                .http
                .get(format!("{}/api/v1/tasks/{id}/result", self.frontend))
                .send()
                .await;
            let Ok(response) = answer else { continue };
            let status = response.status().as_u16();
            self.statuses.record(status);
            assert_eq!(status, 200, "result of task {id}");
            // A download cut off by a dying instance is fetched again.
            if let Ok(body) = response.bytes().await {
                return body.to_vec();
            }
        }
        panic!("task {id}: the result could not be downloaded");
    }
}

/// Uploads `BATCH` images (numbered from `first`) and waits for their results, checking each;
/// counts accepted uploads in `accepted` as they come. Returns the task ids.
async fn run_batch(
    client: Arc<Client>,
    batch: usize,
    first: usize,
    accepted: Arc<AtomicUsize>,
) -> Vec<u64> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let client = Arc::clone(&client);
        let next = Arc::clone(&next);
        let accepted = Arc::clone(&accepted);
        lanes.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= BATCH {
                    return done;
                }
                let n = first + i;
                let id = client.upload(batch, n).await;
                accepted.fetch_add(1, Ordering::SeqCst);
                done.push((n, id));
            }
        });
    }
    let mut uploads = Vec::new();
    while let Some(lane) = lanes.join_next().await {
        uploads.extend(lane.expect("upload lane"));
    }
    let mut checks = tokio::task::JoinSet::new();
    for chunk in uploads.chunks(BATCH.div_ceil(CONCURRENCY)) {
        let client = Arc::clone(&client);
        let chunk = chunk.to_vec();
        checks.spawn(async move {
            for (n, id) in chunk {
                let result = client.result(id).await;
                assert!(
                    is_inverted(n, &result),
                    "task {id}: wrong pixels for image {n}"
                );
            }
        });
    }
    while let Some(check) = checks.join_next().await {
        check.expect("result check");
    }
    uploads.into_iter().map(|(_, id)| id).collect()
}

async fn metrics_of(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicated_deployment_shares_load_and_survives_losing_one_of_each() {
    shoal_core::client::install_crypto_provider();
    let Some(pg) = PgServer::start().expect("PostgreSQL") else {
        return;
    };
    let Some(s3) = S3Server::start().expect("S3 server") else {
        return;
    };
    let database = pg.fresh_database().expect("database");
    let bucket = s3.fresh_bucket().expect("bucket");
    let endpoint = s3.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let data = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let aws = [
        ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", s3::SECRET_ACCESS_KEY),
        ("AWS_REGION", s3::REGION),
    ];
    let listen = ["--listen", "127.0.0.1:0"];

    // The commands of docs/DEPLOY.md, host by host (here: port by port).
    let mut procs: Vec<Proc> = Vec::new();
    for name in ["kv-1", "kv-2"] {
        let d = data(name);
        let args = [
            &["kv", "--database-url", &database, "--data-dir", &d][..],
            &listen,
        ]
        .concat();
        procs.push(Proc::start(name, &args, &logs, &[]));
    }
    let kv = format!("{},{}", procs[0].base, procs[1].base);
    for name in ["tasks-1", "tasks-2"] {
        let d = data(name);
        let args = [
            &[
                "tasks",
                "--kv",
                &kv,
                "--database-url",
                &database,
                "--data-dir",
                &d,
            ][..],
            &listen,
        ]
        .concat();
        procs.push(Proc::start(name, &args, &logs, &[]));
    }
    for name in ["storage-1", "storage-2"] {
        let args = [
            &[
                "storage",
                "--kv",
                &kv,
                "--s3-bucket",
                &bucket,
                "--s3-endpoint",
                &endpoint,
            ][..],
            &listen,
        ]
        .concat();
        procs.push(Proc::start(name, &args, &logs, &aws));
    }
    for name in ["master-1", "master-2"] {
        let args = [&["master", "--kv", &kv][..], &listen].concat();
        procs.push(Proc::start(name, &args, &logs, &[]));
    }
    for name in ["worker-1", "worker-2"] {
        let d = data(name);
        let args = [
            "worker",
            "--kv",
            &kv,
            "--data-dir",
            &d,
            "--threads",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        procs.push(Proc::start(name, &args, &logs, &[]));
    }
    let args = [&["frontend", "--kv", &kv][..], &listen].concat();
    procs.push(Proc::start("frontend", &args, &logs, &[]));
    let by_name: HashMap<String, usize> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect();
    let bases: HashMap<String, String> = procs
        .iter()
        .map(|p| (p.name.clone(), p.base.clone()))
        .collect();
    let base = |name: &str| bases[name].clone();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    // Ready: the frontend's master, and that master's task database and storage, answer.
    let started = Instant::now();
    loop {
        let ready = http
            .get(format!("{}/readyz", base("frontend")))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the deployment never became ready:\n{}",
            procs
                .iter()
                .map(|p| format!("== {}\n{}", p.name, p.log_tail()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every replica has registered and every client sees both instances of each service.
    let mut before = HashMap::new();
    for p in &procs {
        before.insert(p.name.clone(), metrics_of(&http, &p.base).await);
    }

    let client = Arc::new(Client {
        http: http.clone(),
        frontend: base("frontend"),
        statuses: Statuses::default(),
    });

    // Batch 1: everything up. Every replica must serve a share of its service's requests.
    let batch_started = Instant::now();
    let first = run_batch(Arc::clone(&client), 1, 0, Arc::default()).await;
    let first_batch = batch_started.elapsed();
    let mut after = HashMap::new();
    for p in &procs {
        after.insert(p.name.clone(), metrics_of(&http, &p.base).await);
    }
    let delta = |name: &str, metric: &str, labels: &[&str]| {
        counter(&after[name], metric, labels) - counter(&before[name], metric, labels)
    };
    let requests = "shoal_http_requests_total";
    let shares: Vec<(&str, [f64; 2])> = vec![
        // Since start: the k/v store is off the request path (registrations, heartbeats and
        // watches are its load), so a short batch alone says little.
        (
            "k/v requests",
            ["kv-1", "kv-2"].map(|n| {
                counter(&after[n], requests, &[])
                    - counter(&after[n], requests, &["route=\"/metrics\""])
            }),
        ),
        (
            "tasks created",
            ["tasks-1", "tasks-2"].map(|n| delta(n, requests, &["route=\"/newTask\""])),
        ),
        (
            "images stored",
            ["storage-1", "storage-2"].map(|n| delta(n, requests, &["route=\"/sendImage\""])),
        ),
        (
            "uploads accepted",
            ["master-1", "master-2"]
                .map(|n| delta(n, requests, &["route=\"/api/v1/tasks\"", "method=\"POST\""])),
        ),
        (
            "tasks processed",
            ["worker-1", "worker-2"]
                .map(|n| delta(n, "shoal_worker_tasks_total", &["result=\"finished\""])),
        ),
    ];
    println!(
        "batch 1: {BATCH} images in {:.1} s ({:.0}/s)",
        first_batch.as_secs_f64(),
        BATCH as f64 / first_batch.as_secs_f64()
    );
    for (what, [a, b]) in &shares {
        let total = a + b;
        println!(
            "  {what:<17} {a:>5} + {b:>5}  ({:.0} % / {:.0} %)",
            100.0 * a / total.max(1.0),
            100.0 * b / total.max(1.0)
        );
    }
    for (what, [a, b]) in &shares {
        let total = a + b;
        assert!(
            total > 0.0 && *a >= 0.25 * total && *b >= 0.25 * total,
            "{what}: one replica served less than a quarter ({a} + {b})"
        );
    }

    // Batch 2: kill one of each while it is in flight; restart none.
    let accepted = Arc::new(AtomicUsize::new(0));
    let batch_started = Instant::now();
    let second = tokio::spawn(run_batch(
        Arc::clone(&client),
        2,
        BATCH,
        Arc::clone(&accepted),
    ));
    while accepted.load(Ordering::SeqCst) < BATCH / 4 {
        assert!(!second.is_finished(), "batch 2 ended early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    for name in ["kv-1", "tasks-1", "storage-1", "master-1", "worker-1"] {
        procs[by_name[name]].kill_9();
    }
    let second = second.await.expect("batch 2");
    let after_kill = killed_at.elapsed();
    let second_batch = batch_started.elapsed();
    println!(
        "batch 2: {BATCH} images in {:.1} s; killed kv-1, tasks-1, storage-1, master-1, worker-1 \
         after {} accepted uploads; all finished {:.1} s after the kills",
        second_batch.as_secs_f64(),
        BATCH / 4,
        after_kill.as_secs_f64()
    );
    println!(
        "frontend answers: {:?}",
        client.statuses.0.lock().expect("lock")
    );
    assert_eq!(
        client.statuses.server_errors(),
        0,
        "the frontend answered 5xx during the kills"
    );
    // Every accepted upload is one task, finished once: no id twice, and the database holds
    // exactly the tasks of the two batches, all finished.
    let mut ids: Vec<u64> = first.iter().chain(second.iter()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        2 * BATCH,
        "an upload became two tasks, or two uploads one"
    );
    let stats = http
        .get(format!("{}/stats", base("tasks-2")))
        .send()
        .await
        .expect("stats")
        .bytes()
        .await
        .expect("body");
    let stats: serde_json::Value = serde_json::from_slice(&stats).expect("json");
    assert_eq!(stats["finished"], 2 * BATCH, "{stats}");
    assert_eq!(stats["failed"], 0, "{stats}");
    // A killed worker's tasks (and claims whose answers died with tasks-1) wait at most one
    // lease and a sweep; the rest is the batch's own processing time, which batch 1 measured.
    let bound = LEASE + Duration::from_secs(1) + first_batch + Duration::from_secs(10);
    assert!(
        after_kill <= bound,
        "batch 2 took {:.1} s after the kills; the bound is {:.1} s",
        after_kill.as_secs_f64(),
        bound.as_secs_f64()
    );

    // PostgreSQL goes away: readiness says so all the way to the frontend (which a load
    // balancer asks), naming the cause, instead of "ready" while uploads fail.
    drop(pg);
    let started = Instant::now();
    let reason = loop {
        let r = http
            .get(format!("{}/readyz", base("frontend")))
            .send()
            .await
            .expect("readyz");
        if r.status() == 503 {
            break r.text().await.expect("text");
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the frontend stayed ready without a database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "without PostgreSQL the frontend was not ready after {:.1} s: {reason}",
        started.elapsed().as_secs_f64()
    );
    assert!(reason.contains("database"), "{reason}");
}
