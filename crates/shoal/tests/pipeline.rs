//! The image pipeline in one process: k/v store, task database, storage, master and workers,
//! each started exactly as `shoal up` starts it, found through the k/v store.

use std::io::Cursor;
use std::time::Duration;

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, Rgba};
use serde_json::Value;
use shoal_core::testkit::TestServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Knobs of a test stack.
struct Options {
    lease: Duration,
    workers: u32,
    max_upload: u64,
    max_pixels: u64,
    max_queue: u64,
    max_object: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            workers: 2,
            max_upload: 10_000_000,
            max_pixels: 40_000_000,
            max_queue: 10_000,
            max_object: 1 << 30,
        }
    }
}

struct Worker {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

struct Stack {
    _dir: tempfile::TempDir,
    kv: TestServer,
    tasks: TestServer,
    storage: TestServer,
    master: TestServer,
    workers: Vec<Worker>,
    client: reqwest::Client,
    max_pixels: u64,
}

impl Stack {
    async fn start(options: Options) -> Self {
        shoal_core::client::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let kv_config = shoal_kv::Config::with_data_dir(dir.path().join("kv"));
        let kv = TestServer::start(move |l, s| shoal_kv::run(kv_config, l, s))
            .await
            .expect("kv");
        let mut tasks_config = shoal_tasks::Config::with_data_dir(dir.path().join("tasks"));
        tasks_config.common.kv = vec![kv.base_url.clone()];
        tasks_config.lease = options.lease;
        let tasks = TestServer::start(move |l, s| shoal_tasks::run(tasks_config, l, s))
            .await
            .expect("tasks");
        let mut storage_config = shoal_storage::Config::with_data_dir(dir.path().join("storage"));
        storage_config.common.kv = vec![kv.base_url.clone()];
        storage_config.max_object_size = options.max_object;
        let storage = TestServer::start(move |l, s| shoal_storage::run(storage_config, l, s))
            .await
            .expect("storage");
        let mut master_config = shoal_master::Config::with_kv(kv.base_url.clone());
        master_config.max_upload = options.max_upload;
        master_config.max_pixels = options.max_pixels;
        master_config.max_queue = options.max_queue;
        master_config.max_result = options.max_object;
        let master = TestServer::start(move |l, s| shoal_master::run(master_config, l, s))
            .await
            .expect("master");
        let mut stack = Self {
            _dir: dir,
            kv,
            tasks,
            storage,
            master,
            workers: Vec::new(),
            client: reqwest::Client::new(),
            max_pixels: options.max_pixels,
        };
        if options.workers > 0 {
            stack.start_worker(options.workers, "test-worker-a");
        }
        stack
    }

    fn start_worker(&mut self, threads: u32, name: &str) -> usize {
        let mut config = shoal_worker::Config::with_kv(self.kv.base_url.clone());
        config.threads = Some(threads);
        config.name = Some(name.to_owned());
        config.poll_wait = Duration::from_secs(2);
        config.max_pixels = self.max_pixels;
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(shoal_worker::run(config, async move {
            shutdown.cancelled().await;
        }));
        self.workers.push(Worker { stop, task });
        self.workers.len() - 1
    }

    /// Kills a worker the hard way: its tasks in hand are simply dropped.
    fn kill_worker(&mut self, index: usize) {
        self.workers[index].task.abort();
    }

    async fn upload(&self, query: &str, body: Vec<u8>) -> (u16, String) {
        let r = self
            .client
            .post(self.master.url(&format!("/new{query}")))
            .body(body)
            .send()
            .await
            .expect("upload");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    async fn upload_ok(&self, query: &str, body: Vec<u8>) -> u64 {
        let (status, text) = self.upload(query, body).await;
        assert_eq!(status, 200, "{text}");
        text.parse().expect("an id")
    }

    /// Waits until the task settles: Ok when finished, Err(message) when it failed.
    async fn settle(&self, id: u64) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let r = self
                .client
                .get(self.master.url(&format!("/isReady?id={id}&wait=5s")))
                .send()
                .await
                .expect("isReady");
            let status = r.status().as_u16();
            let text = r.text().await.expect("body");
            match (status, text.as_str()) {
                (200, "1") => return Ok(()),
                (200, "0") => {}
                (422, _) => return Err(text),
                other => panic!("isReady: {other:?}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} never settled"
            );
        }
    }

    async fn result(&self, id: u64) -> (String, bytes::Bytes) {
        let r = self
            .client
            .get(self.master.url(&format!("/get?id={id}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        (kind, r.bytes().await.expect("body"))
    }

    async fn job(&self, id: u64) -> Value {
        let r = self
            .client
            .get(self.master.url(&format!("/api/v1/tasks/{id}")))
            .send()
            .await
            .expect("job");
        assert_eq!(r.status(), 200);
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json")
    }

    async fn stats(&self) -> Value {
        self.client
            .get(self.tasks.url("/stats"))
            .send()
            .await
            .expect("stats")
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).expect("json"))
            .expect("body")
    }

    async fn stop(self) {
        for worker in &self.workers {
            worker.stop.cancel();
        }
        for worker in self.workers {
            let _ = worker.task.await;
        }
        self.master.stop().await.expect("master");
        self.storage.stop().await.expect("storage");
        self.tasks.stop().await.expect("tasks");
        self.kv.stop().await.expect("kv");
    }
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// A picture with every channel varying, so swapped or inverted channels show.
fn rgba8(width: u32, height: u32, seed: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(ImageBuffer::from_fn(width, height, |x, y| {
        Rgba([
            ((x * 7 + seed) % 256) as u8,
            ((y * 5 + seed * 3) % 256) as u8,
            ((x + y + seed * 11) % 256) as u8,
            ((x * 3 + y * 2 + 20) % 256) as u8,
        ])
    }))
}

fn rgb16(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb16(ImageBuffer::from_fn(width, height, |x, y| {
        Rgb([
            (x * 1021 % 65536) as u16,
            (y * 2039 % 65536) as u16,
            ((x + y) * 4093 % 65536) as u16,
        ])
    }))
}

/// CRC-32 as PNG chunks use it (so a doctored header still checks out).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("a decodable result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_come_back_transformed_pixel_for_pixel() {
    let stack = Stack::start(Options::default()).await;
    // The seed's default: swap red and green, alpha kept (the seed forced it to 255).
    let input = rgba8(64, 48, 1);
    let id = stack.upload_ok("", encode(&input, ImageFormat::Png)).await;
    stack.settle(id).await.expect("finished");
    let (kind, bytes) = stack.result(id).await;
    assert_eq!(kind, "image/png");
    let out = decode(&bytes).to_rgba8();
    let src = input.to_rgba8();
    assert_eq!(out.dimensions(), src.dimensions());
    for (a, b) in src.pixels().zip(out.pixels()) {
        assert_eq!([a[1], a[0], a[2], a[3]], b.0);
    }

    // 16-bit stays 16-bit; invert is 65535 - v.
    let input = rgb16(40, 30);
    let id = stack
        .upload_ok("?op=invert", encode(&input, ImageFormat::Png))
        .await;
    stack.settle(id).await.expect("finished");
    let out = decode(&stack.result(id).await.1);
    let DynamicImage::ImageRgb16(out) = out else {
        panic!("16-bit RGB expected, got {:?}", out.color());
    };
    for (a, b) in input.to_rgb16().pixels().zip(out.pixels()) {
        assert_eq!(a.0.map(|v| 65535 - v), b.0);
    }

    // A chain, and a format change: rotate then flip, from PNG to lossless WebP.
    let input = rgba8(30, 20, 5);
    let id = stack
        .upload_ok(
            "?op=rotate:90,flip:h&format=webp",
            encode(&input, ImageFormat::Png),
        )
        .await;
    stack.settle(id).await.expect("finished");
    let (kind, bytes) = stack.result(id).await;
    assert_eq!(kind, "image/webp");
    let out = decode(&bytes).to_rgba8();
    let expected = image::imageops::flip_horizontal(&image::imageops::rotate90(&input.to_rgba8()));
    assert_eq!(out.dimensions(), (20, 30));
    assert_eq!(out.as_raw(), expected.as_raw());

    // Lossless WebP in, the same pipeline result as the library's.
    let input = rgba8(25, 25, 9);
    let webp = encode(&input, ImageFormat::WebP);
    let id = stack.upload_ok("?op=grayscale", webp.clone()).await;
    stack.settle(id).await.expect("finished");
    let expected = shoal_imaging::process(
        &webp,
        &"grayscale".parse().expect("op"),
        None,
        &shoal_imaging::Limits::default(),
    )
    .expect("library");
    assert_eq!(
        decode(&stack.result(id).await.1).to_rgba8().as_raw(),
        decode(&expected.bytes).to_rgba8().as_raw()
    );

    // JPEG: lossy, so within a tolerance of the exact swap.
    let input = DynamicImage::ImageRgb8(rgba8(64, 64, 3).to_rgb8());
    let jpeg = encode(&input, ImageFormat::Jpeg);
    let id = stack.upload_ok("", jpeg).await;
    stack.settle(id).await.expect("finished");
    let (kind, bytes) = stack.result(id).await;
    assert_eq!(kind, "image/jpeg");
    let out = decode(&bytes).to_rgb8();
    let src = input.to_rgb8();
    let error: f64 = src
        .pixels()
        .zip(out.pixels())
        .map(|(a, b)| {
            f64::from(a[1].abs_diff(b[0]))
                + f64::from(a[0].abs_diff(b[1]))
                + f64::from(a[2].abs_diff(b[2]))
        })
        .sum::<f64>()
        / (src.len() as f64);
    assert!(error < 12.0, "mean absolute error {error}");

    // The original stays available.
    let r = stack
        .client
        .get(stack.master.url(&format!("/original?id={id}")))
        .send()
        .await
        .expect("original");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_uploads_finish_exactly_once() {
    let stack = Stack::start(Options {
        workers: 4,
        ..Options::default()
    })
    .await;
    let uploads = futures::future::join_all((0..200u32).map(|i| {
        let stack = &stack;
        async move {
            let input = rgba8(16, 16, i);
            let id = stack.upload_ok("", encode(&input, ImageFormat::Png)).await;
            (id, input)
        }
    }))
    .await;
    let mut ids: Vec<u64> = uploads.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every upload got its own id");
    for (id, input) in &uploads {
        stack.settle(*id).await.expect("finished");
        let out = decode(&stack.result(*id).await.1).to_rgba8();
        for (a, b) in input.to_rgba8().pixels().zip(out.pixels()) {
            assert_eq!(
                [a[1], a[0], a[2], a[3]],
                b.0,
                "task {id} holds another image's result"
            );
        }
        assert_eq!(
            stack.job(*id).await["attempts"],
            1,
            "task {id} was processed twice"
        );
    }
    let stats = stack.stats().await;
    assert_eq!(stats["finished"], 200);
    assert_eq!(stats["failed"], 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_of_a_killed_worker_is_completed_by_another() {
    let mut stack = Stack::start(Options {
        lease: Duration::from_secs(1),
        workers: 1,
        ..Options::default()
    })
    .await;
    // Slow enough to be caught in the act.
    let input = rgba8(1500, 1500, 2);
    let id = stack
        .upload_ok(
            "?op=blur:40,blur:40,blur:40",
            encode(&input, ImageFormat::Png),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stack.job(id).await["state"] != "processing" {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.kill_worker(0);
    stack.start_worker(1, "test-worker-b");
    stack
        .settle(id)
        .await
        .expect("finished by the second worker");
    assert_eq!(stack.job(id).await["attempts"], 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_image_fails_once_and_workers_go_on() {
    let stack = Stack::start(Options::default()).await;
    let mut poison = encode(&rgba8(64, 64, 1), ImageFormat::Png);
    // Keep the signature and the header; ruin the pixel data.
    for b in poison.iter_mut().skip(50) {
        *b ^= 0x5a;
    }
    let id = stack.upload_ok("", poison).await;
    let err = stack.settle(id).await.expect_err("fails");
    assert!(err.starts_with("Error: processing failed: "), "{err}");
    let job = stack.job(id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"], 1, "not retried");
    let r = stack
        .client
        .get(stack.master.url(&format!("/get?id={id}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 422);
    // The workers are still there.
    let good = stack
        .upload_ok("", encode(&rgba8(8, 8, 1), ImageFormat::Png))
        .await;
    stack.settle(good).await.expect("finished");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_create_nothing() {
    let stack = Stack::start(Options {
        max_upload: 200_000,
        max_pixels: 1_000_000,
        workers: 0,
        ..Options::default()
    })
    .await;
    let png = encode(&rgba8(32, 32, 1), ImageFormat::Png);
    // A 1×1 GIF: a real image, not one of the three formats.
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    // A PNG header that claims 50,000 × 50,000 pixels.
    let mut bomb = encode(&rgba8(1, 1, 1), ImageFormat::Png);
    bomb[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let too_many = encode(&DynamicImage::new_rgb8(1001, 1000), ImageFormat::Png);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("", Vec::new(), 400),
        ("", b"hello, not an image".to_vec(), 400),
        ("", gif, 400),
        ("", bomb, 413),
        ("", too_many, 413),
        ("?op=sharpen", png.clone(), 400),
        ("?op=resize:0x10", png.clone(), 400),
        ("?op=resize:2000x2000", png.clone(), 413),
        ("?op=blur:1e9", png.clone(), 400),
        ("?format=gif", png.clone(), 400),
        ("?op=", png.clone(), 400),
    ];
    for (query, body, status) in cases {
        let len = body.len();
        let (got, text) = stack.upload(query, body).await;
        assert_eq!(got, status, "/new{query} with {len} bytes: {text}");
        assert!(text.starts_with("Error: "), "{text}");
    }
    // Too many bytes, announced: refused before the body is read. (Sent by hand: a client
    // still writing the body could see the connection closed instead of the answer.)
    let address = stack
        .master
        .base_url
        .trim_start_matches("http://")
        .to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut socket,
        format!("POST /new HTTP/1.1\r\nHost: {address}\r\nContent-Length: 300000\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut socket, &mut answer),
    )
    .await
    .expect("answered before the body")
    .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("Error: "), "{answer}");
    drop(socket);
    let stats = stack.stats().await;
    for state in ["not_started", "held", "in_progress", "finished", "failed"] {
        assert_eq!(stats[state], 0, "{stats}");
    }
    let r = stack
        .client
        .get(stack.storage.url("/getImage?state=working&id=0"))
        .send()
        .await
        .expect("storage");
    assert_eq!(r.status(), 404, "nothing stored");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_around_uploads() {
    let stack = Stack::start(Options {
        workers: 0,
        max_queue: 3,
        ..Options::default()
    })
    .await;
    let png = encode(&rgba8(8, 8, 1), ImageFormat::Png);
    // Idempotency: a retried upload gets the same task.
    let with_key = async |key: &str| {
        let r = stack
            .client
            .post(stack.master.url("/new?op=invert"))
            .header("idempotency-key", key)
            .body(png.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), 200);
        r.text().await.expect("id").parse::<u64>().expect("id")
    };
    let first = with_key("photo-1").await;
    assert_eq!(with_key("photo-1").await, first);
    let second = stack.upload_ok("", png.clone()).await;
    assert_ne!(first, second);
    // Not ready yet, and nothing to get.
    let r = stack
        .client
        .get(stack.master.url(&format!("/isReady?id={first}")))
        .send()
        .await
        .expect("isReady");
    assert_eq!(r.text().await.expect("body"), "0");
    let r = stack
        .client
        .get(stack.master.url(&format!("/get?id={first}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let job = stack.job(first).await;
    assert_eq!(job["state"], "queued");
    assert_eq!(job["op"], "invert");
    assert_eq!(job["format"], "png");
    // Unknown and malformed ids.
    for (path, status) in [
        ("/isReady?id=999", 404),
        ("/isReady?id=-1", 400),
        ("/isReady?id=01", 400),
        ("/get?id=abc", 400),
        ("/api/v1/tasks/999", 404),
        ("/api/v1/tasks/x", 400),
    ] {
        let r = stack
            .client
            .get(stack.master.url(path))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), status, "{path}");
    }
    // A full queue: 503 with Retry-After, and nothing created.
    stack.upload_ok("", png.clone()).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // the queue count is cached briefly
    let r = stack
        .client
        .post(stack.master.url("/new"))
        .body(png.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(stack.stats().await["not_started"], 3);
    // A long poll ends with the task: a worker joins and finishes it.
    let waiting = tokio::spawn(
        stack
            .client
            .get(stack.master.url(&format!("/isReady?id={first}&wait=30s")))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stack = stack;
    stack.start_worker(1, "late-worker");
    let r = waiting.await.expect("join").expect("isReady");
    assert_eq!(r.text().await.expect("body"), "1");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_allowed_image_produces_a_result_storage_accepts() {
    // The default limits (`shoal up` runs with them): 40 MP, 10 MB uploads, 1 GiB objects.
    let stack = Stack::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let largest = DynamicImage::new_rgb8(8000, 5000);
    let png = encode(&largest, ImageFormat::Png);
    assert!(png.len() < 10_000_000);
    let id = stack.upload_ok("?op=invert", png).await;
    stack.settle(id).await.expect("finished");
    let out = decode(&stack.result(id).await.1);
    assert_eq!((out.width(), out.height()), (8000, 5000));
    // The same size as a JPEG photo with a JPEG result: the case a tight object limit would
    // have refused (a JPEG result's proven bound is far above its usual size).
    let jpeg = encode(
        &DynamicImage::ImageRgb8(ImageBuffer::from_fn(8000, 5000, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8])
        })),
        ImageFormat::Jpeg,
    );
    assert!(jpeg.len() < 10_000_000, "{} bytes", jpeg.len());
    let id = stack.upload_ok("?op=grayscale", jpeg).await;
    stack.settle(id).await.expect("finished");
    let (kind, bytes) = stack.result(id).await;
    assert_eq!(kind, "image/jpeg");
    assert_eq!(decode(&bytes).width(), 8000);
    // One pixel more is refused at upload.
    let (status, _) = stack
        .upload(
            "",
            encode(&DynamicImage::new_rgb8(8001, 5000), ImageFormat::Png),
        )
        .await;
    assert_eq!(status, 413);
    stack.stop().await;
}
