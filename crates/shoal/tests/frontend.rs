//! `shoal frontend` in front of a whole in-process pipeline: the seed's routes, the page's
//! form without script, the public JSON API, their bad inputs, basic auth and the rate limit.

use std::io::{Cursor, Read as _, Write as _};
use std::time::Duration;

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgba};
use serde_json::Value;
use shoal_core::testkit::TestServer;
use tokio_util::sync::CancellationToken;

struct Stack {
    _dir: tempfile::TempDir,
    _kv: TestServer,
    _tasks: TestServer,
    _storage: TestServer,
    master: TestServer,
    frontend: TestServer,
    worker_stop: CancellationToken,
    client: reqwest::Client,
}

impl Stack {
    async fn start(configure: impl FnOnce(&mut shoal_frontend::Config)) -> Self {
        Self::start_with_token(None, configure).await
    }

    /// A stack whose internal services all require `token` (the frontend gets it too).
    async fn start_with_token(
        token: Option<&str>,
        configure: impl FnOnce(&mut shoal_frontend::Config),
    ) -> Self {
        shoal_core::client::install_crypto_provider();
        let token = token.map(shoal_core::config::Token::new);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut kv_config = shoal_kv::Config::with_data_dir(dir.path().join("kv"));
        kv_config.common.token = token.clone();
        let kv = TestServer::start(move |l, s| shoal_kv::run(kv_config, l, s))
            .await
            .expect("kv");
        let mut tasks_config = shoal_tasks::Config::with_data_dir(dir.path().join("tasks"));
        tasks_config.common.kv = vec![kv.base_url.clone()];
        tasks_config.common.token = token.clone();
        let tasks = TestServer::start(move |l, s| shoal_tasks::run(tasks_config, l, s))
            .await
            .expect("tasks");
        let mut storage_config = shoal_storage::Config::with_data_dir(dir.path().join("storage"));
        storage_config.common.kv = vec![kv.base_url.clone()];
        storage_config.common.token = token.clone();
        let storage = TestServer::start(move |l, s| shoal_storage::run(storage_config, l, s))
            .await
            .expect("storage");
        let mut master_config = shoal_master::Config::with_kv(kv.base_url.clone());
        master_config.common.token = token.clone();
        let master = TestServer::start(move |l, s| shoal_master::run(master_config, l, s))
            .await
            .expect("master");
        let mut frontend_config = shoal_frontend::Config::with_kv(kv.base_url.clone());
        frontend_config.common.token = token.clone();
        configure(&mut frontend_config);
        let frontend = TestServer::start(move |l, s| shoal_frontend::run(frontend_config, l, s))
            .await
            .expect("frontend");
        let mut worker = shoal_worker::Config::with_kv(kv.base_url.clone());
        worker.threads = Some(2);
        worker.poll_wait = Duration::from_secs(2);
        worker.common.token = token.clone();
        let worker_stop = CancellationToken::new();
        let stop = worker_stop.clone();
        tokio::spawn(shoal_worker::run(
            worker,
            async move { stop.cancelled().await },
        ));
        Self {
            _dir: dir,
            _kv: kv,
            _tasks: tasks,
            _storage: storage,
            master,
            frontend,
            worker_stop,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    fn url(&self, path: &str) -> String {
        self.frontend.url(path)
    }

    async fn post_form(
        &self,
        path: &str,
        form: &Form,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", form.content_type())
            .body(form.body())
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.expect("body"))
    }

    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
        let r = self.client.get(self.url(path)).send().await.expect("get");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.bytes().await.expect("body"))
    }

    async fn get_text(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.get(path).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Polls the seed's `isReady` until it answers ready; the last answer otherwise.
    async fn wait_ready(&self, id: u64) -> (u16, String) {
        for _ in 0..600 {
            let (status, text) = self.get_text(&format!("/isReady?id={id}")).await;
            if status != 200 || text != "Your image is not ready yet." {
                return (status, text);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} never settled");
    }

    async fn stop(self) {
        self.worker_stop.cancel();
    }
}

/// A hand-built multipart form, so tests can send exactly the malformed forms they mean.
struct Form {
    parts: Vec<(String, Option<String>, Vec<u8>)>,
}

const BOUNDARY: &str = "shoal-test-boundary-7c1f";

impl Form {
    fn new() -> Self {
        Self { parts: Vec::new() }
    }

    fn file(mut self, field: &str, name: &str, bytes: Vec<u8>) -> Self {
        self.parts
            .push((field.to_owned(), Some(name.to_owned()), bytes));
        self
    }

    fn text(mut self, field: &str, value: &str) -> Self {
        self.parts
            .push((field.to_owned(), None, value.as_bytes().to_vec()));
        self
    }

    fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={BOUNDARY}")
    }

    fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, file, bytes) in &self.parts {
            out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
            match file {
                Some(name) => out.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes(),
                ),
            }
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        out
    }
}

fn image(width: u32, height: u32, seed: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(ImageBuffer::from_fn(width, height, |x, y| {
        Rgba([
            ((x * 7 + seed) % 256) as u8,
            ((y * 13 + seed * 3) % 256) as u8,
            ((x + y + seed) % 256) as u8,
            200,
        ])
    }))
}

fn png(image: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png).expect("encode");
    out.into_inner()
}

fn swapped(image: &DynamicImage) -> Vec<u8> {
    let mut rgba = image.to_rgba8();
    for p in rgba.pixels_mut() {
        p.0.swap(0, 1);
    }
    rgba.into_raw()
}

fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("decodes")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_routes_work_and_refuse_bad_input() {
    let stack = Stack::start(|_| {}).await;

    let (status, headers, body) = stack.get("/").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let page = String::from_utf8_lossy(&body);
    assert!(
        page.contains("name=\"uploadfile\""),
        "the seed's field name"
    );
    assert!(page.contains("action=\"/upload\""), "posts without script");
    for (path, kind) in [
        ("/assets/app.css", "text/css"),
        ("/assets/app.js", "text/javascript"),
    ] {
        let (status, headers, body) = stack.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            headers["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(kind)
        );
        assert!(!body.is_empty());
    }
    // Unknown paths are 404, not the index page (the seed answered every path with it).
    assert_eq!(stack.get_text("/nope").await.0, 404);
    assert_eq!(stack.get_text("/index.html").await.0, 404);

    // Upload, wait, fetch: the seed's path, with the default red/green swap.
    let original = image(40, 30, 1);
    let (status, _, id) = stack
        .post_form(
            "/submitTask",
            &Form::new().file("uploadfile", "a.png", png(&original)),
        )
        .await;
    assert_eq!(status, 200, "{id}");
    let id: u64 = id.parse().expect("the id as text");
    assert_eq!(
        stack.wait_ready(id).await,
        (200, "Your image is ready.".to_owned())
    );
    let (status, headers, body) = stack.get(&format!("/getImage?id={id}")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(decode(&body).to_rgba8().into_raw(), swapped(&original));

    // An op from the form's fields.
    let (status, _, id2) = stack
        .post_form(
            "/submitTask",
            &Form::new()
                .file("uploadfile", "b.png", png(&original))
                .text("op", "rotate")
                .text("angle", "90"),
        )
        .await;
    assert_eq!(status, 200, "{id2}");
    let id2: u64 = id2.parse().expect("id");
    assert_eq!(stack.wait_ready(id2).await.0, 200);
    let (_, _, body) = stack.get(&format!("/getImage?id={id2}")).await;
    let rotated = decode(&body);
    assert_eq!((rotated.width(), rotated.height()), (30, 40));

    // Bad input: each a 4xx with a reason, none creating a task.
    let before = stack.get_text("/api/v1/tasks/999999").await;
    assert_eq!(before.0, 404);
    let cases: Vec<(&str, Form, u16, &str)> = vec![
        ("no parts", Form::new(), 400, "uploadfile"),
        (
            "wrong field name",
            Form::new().file("file", "a.png", png(&original)),
            400,
            "uploadfile",
        ),
        (
            "empty file",
            Form::new().file("uploadfile", "a.png", Vec::new()),
            400,
            "empty",
        ),
        (
            "not an image",
            Form::new().file("uploadfile", "a.txt", b"hello, world".to_vec()),
            400,
            "",
        ),
        (
            "unknown op",
            Form::new()
                .file("uploadfile", "a.png", png(&original))
                .text("op", "explode"),
            400,
            "op",
        ),
        (
            "op without its parameter",
            Form::new()
                .file("uploadfile", "a.png", png(&original))
                .text("op", "blur"),
            400,
            "sigma",
        ),
        (
            "two files",
            Form::new()
                .file("uploadfile", "a.png", png(&original))
                .file("uploadfile", "b.png", png(&original)),
            400,
            "",
        ),
    ];
    for (what, form, want, mention) in cases {
        let (status, _, text) = stack.post_form("/submitTask", &form).await;
        assert_eq!(status, want, "{what}: {text}");
        assert!(text.starts_with("Error: "), "{what}: {text}");
        assert!(text.contains(mention), "{what}: {text}");
    }
    // Nothing was created: the next task gets the id right after the two good ones.
    let (status, _, next) = stack
        .post_form(
            "/submitTask",
            &Form::new().file("uploadfile", "c.png", png(&original)),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        next.parse::<u64>().expect("id"),
        id2 + 1,
        "bad uploads created tasks"
    );

    // A raw body is accepted too; a wrong method is 405.
    let r = stack
        .client
        .post(stack.url("/submitTask"))
        .body(png(&original))
        .send()
        .await
        .expect("raw");
    assert_eq!(r.status(), 200);
    assert_eq!(
        stack
            .client
            .get(stack.url("/submitTask"))
            .send()
            .await
            .expect("get")
            .status(),
        405
    );
    assert_eq!(
        stack
            .client
            .post(stack.url("/isReady?id=1"))
            .send()
            .await
            .expect("post")
            .status(),
        405
    );

    // isReady and getImage: unknown ids are 404, malformed ones 400 — and an id cannot smuggle
    // a query into the upstream URL (the seed then served the unprocessed original).
    assert_eq!(stack.get_text("/isReady?id=424242").await.0, 404);
    assert_eq!(stack.get_text("/getImage?id=424242").await.0, 404);
    for bad in [
        "",
        "abc",
        "-1",
        "0%2526state%253Dworking",
        &format!("{id}%26state%3Dworking"),
    ] {
        let (status, text) = stack.get_text(&format!("/getImage?id={bad}")).await;
        assert_eq!(status, 400, "getImage?id={bad}: {text}");
        let (status, text) = stack.get_text(&format!("/isReady?id={bad}")).await;
        assert_eq!(status, 400, "isReady?id={bad}: {text}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_says_so_everywhere() {
    let stack = Stack::start(|_| {}).await;
    let mut poison = png(&image(64, 64, 2));
    // Keep the signature and the header; ruin the pixel data.
    for b in poison.iter_mut().skip(50) {
        *b ^= 0x5a;
    }
    let (status, _, id) = stack
        .post_form(
            "/submitTask",
            &Form::new().file("uploadfile", "bad.png", poison),
        )
        .await;
    assert_eq!(status, 200, "{id}");
    let id: u64 = id.parse().expect("id");
    let (status, text) = stack.wait_ready(id).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.starts_with("Error: processing failed: "), "{text}");
    let (status, text) = stack.get_text(&format!("/getImage?id={id}")).await;
    assert_eq!(status, 422, "{text}");
    let (status, text) = stack.get_text(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    let task = json(&text);
    assert_eq!(task["state"], "failed");
    assert!(task["error"].as_str().is_some_and(|e| !e.is_empty()));
    let (status, page) = stack.get_text(&format!("/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-state=\"failed\""), "{page}");
    assert!(page.contains("Failed: "), "{page}");
    assert!(
        !page.contains("http-equiv=\"refresh\""),
        "a settled page stops refreshing"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_works_without_script() {
    let stack = Stack::start(|_| {}).await;
    let first = image(20, 20, 3);
    let second = image(24, 16, 4);
    let (status, headers, _) = stack
        .post_form(
            "/upload",
            &Form::new()
                .file("uploadfile", "one.png", png(&first))
                .file("uploadfile", "two.png", png(&second))
                .text("op", "grayscale")
                .text("sigma", "2")
                .text("format", ""),
        )
        .await;
    assert_eq!(status, 303);
    let location = headers["location"].to_str().expect("ascii").to_owned();
    let ids: Vec<u64> = location
        .strip_prefix("/tasks/")
        .expect("a task page")
        .split(',')
        .map(|id| id.parse().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2);
    for &id in &ids {
        assert_eq!(stack.wait_ready(id).await.0, 200);
    }
    let (status, page) = stack.get_text(&location).await;
    assert_eq!(status, 200);
    for &id in &ids {
        assert!(
            page.contains(&format!("src=\"/api/v1/tasks/{id}/result\"")),
            "{page}"
        );
        assert!(
            page.contains(&format!("href=\"/api/v1/tasks/{id}/result\"")),
            "{page}"
        );
    }
    assert_eq!(page.matches("data-state=\"finished\"").count(), 2, "{page}");
    assert!(page.contains("grayscale"));
    let (_, _, body) = stack.get(&format!("/api/v1/tasks/{}/result", ids[0])).await;
    let gray = decode(&body).to_rgba8();
    assert!(
        gray.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
        "grayscale"
    );

    // Refusals are a page with the reason, in the refusal's status.
    let (status, headers, page) = stack
        .post_form(
            "/upload",
            &Form::new().file("uploadfile", "notes.txt", b"plain text".to_vec()),
        )
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    assert!(page.contains("notes.txt"), "names the file: {page}");
    assert!(page.contains("role=\"alert\""));
    // Text from the client is escaped on the way back.
    let (status, _, page) = stack
        .post_form(
            "/upload",
            &Form::new().file("uploadfile", "<b>x</b>.png", b"not a png".to_vec()),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        page.contains("&lt;b&gt;x&lt;/b&gt;.png") && !page.contains("<b>x</b>"),
        "{page}"
    );
    for bad in ["/tasks/abc", "/tasks/1,,2", "/tasks/-3"] {
        assert_eq!(stack.get_text(bad).await.0, 400, "{bad}");
    }
    assert_eq!(stack.get_text("/tasks/777777").await.0, 404);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_speaks_json() {
    let stack = Stack::start(|_| {}).await;
    let original = image(32, 32, 5);
    let (status, headers, text) = stack
        .post_form(
            "/api/v1/tasks",
            &Form::new()
                .file("uploadfile", "a.png", png(&original))
                .text("op", "invert")
                .text("format", "webp"),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let id = json(&text)["id"].as_u64().expect("id");
    assert_eq!(headers["location"], format!("/api/v1/tasks/{id}"));

    // Long poll: answers when the state differs from the one the client saw.
    let (status, text) = stack
        .get_text(&format!("/api/v1/tasks/{id}?wait=20s&state=queued"))
        .await;
    assert_eq!(status, 200, "{text}");
    let mut task = json(&text);
    assert_ne!(task["state"], "queued");
    while task["state"] != "finished" {
        let seen = task["state"].as_str().expect("state").to_owned();
        let (status, text) = stack
            .get_text(&format!("/api/v1/tasks/{id}?wait=20s&state={seen}"))
            .await;
        assert_eq!(status, 200, "{text}");
        task = json(&text);
        assert_ne!(task["state"], "failed", "{task}");
    }
    assert_eq!(task["id"], id);
    assert_eq!(task["op"], "invert");
    assert_eq!(task["format"], "webp");
    assert_eq!(task["attempts"], 1);
    let (status, headers, body) = stack.get(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/webp");
    let inverted: Vec<u8> = original
        .to_rgba8()
        .pixels()
        .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], p[3]])
        .collect();
    assert_eq!(decode(&body).to_rgba8().into_raw(), inverted);
    let (status, _, body) = stack.get(&format!("/api/v1/tasks/{id}/original")).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), png(&original).as_slice());

    // A raw body with the op in the query.
    let r = stack
        .client
        .post(stack.url("/api/v1/tasks?op=flip:h"))
        .body(png(&original))
        .send()
        .await
        .expect("raw");
    assert_eq!(r.status(), 201);

    // Errors are JSON with the right status.
    for (method, path, body, want) in [
        ("GET", "/api/v1/tasks/31337", None, 404),
        ("GET", "/api/v1/tasks/x1", None, 400),
        ("GET", "/api/v1/tasks/31337/result", None, 404),
        ("GET", "/api/v1/tasks/31337/original", None, 404),
        ("GET", "/api/v1/tasks/1?state=lost", None, 400),
        ("POST", "/api/v1/tasks", Some(b"not an image".to_vec()), 400),
        (
            "POST",
            "/api/v1/tasks?op=explode",
            Some(png(&original)),
            400,
        ),
        ("POST", "/api/v1/tasks", Some(Vec::new()), 400),
        ("DELETE", "/api/v1/tasks", None, 405),
    ] {
        let mut request = stack
            .client
            .request(method.parse().expect("method"), stack.url(path));
        if let Some(body) = body {
            request = request.body(body);
        }
        let r = request.send().await.expect("send");
        let status = r.status().as_u16();
        let kind = r.headers().get("content-type").cloned();
        let text = r.text().await.expect("body");
        assert_eq!(status, want, "{method} {path}: {text}");
        assert_eq!(
            kind.expect("content type"),
            "application/json",
            "{method} {path}"
        );
        assert!(
            json(&text)["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{text}"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_are_refused_before_the_body_is_read() {
    let stack = Stack::start(|c| c.max_upload = 100_000).await;
    // Announce 50 MB, send none of it: the answer comes anyway, at once.
    for path in ["/submitTask", "/api/v1/tasks", "/upload"] {
        let mut stream = std::net::TcpStream::connect(stack.frontend.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: 50000000\r\n\r\n"
        )
        .expect("write");
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .expect("an answer before the body");
        assert_eq!(&head, b"HTTP/1.1 413", "{path}");
    }
    // A file over the limit inside a form that fits the form limit: 413 as well.
    let big = vec![7u8; 150_000];
    let (status, _, text) = stack
        .post_form(
            "/submitTask",
            &Form::new().file("uploadfile", "big.png", big.clone()),
        )
        .await;
    assert_eq!(status, 413, "{text}");
    let (status, _, text) = stack
        .post_form(
            "/api/v1/tasks",
            &Form::new().file("uploadfile", "big.png", big),
        )
        .await;
    assert_eq!(status, 413, "{text}");
    assert!(json(&text)["error"].is_string());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_the_rate_limit_guard_a_networked_frontend() {
    let stack = Stack::start(|c| {
        c.basic_auth = Some("ann:opensesame".parse().expect("auth"));
        c.rate_limit = Some("2/min".parse().expect("rate"));
    })
    .await;
    let r = stack.client.get(stack.url("/")).send().await.expect("get");
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic ")
    );
    for (user, password) in [
        ("ann", "wrong"),
        ("bob", "opensesame"),
        ("ann", "opensesame!"),
    ] {
        let r = stack
            .client
            .get(stack.url("/api/v1/tasks/1"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401, "{user}:{password}");
    }
    let r = stack
        .client
        .get(stack.url("/"))
        .basic_auth("ann", Some("opensesame"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    // Health stays open for probes.
    assert_eq!(stack.get_text("/healthz").await.0, 200);

    let upload = || {
        stack
            .client
            .post(stack.url("/submitTask"))
            .basic_auth("ann", Some("opensesame"))
            .body(png(&image(8, 8, 6)))
            .send()
    };
    assert_eq!(upload().await.expect("first").status(), 200);
    assert_eq!(upload().await.expect("second").status(), 200);
    let r = upload().await.expect("third");
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    // Reads are not rate limited.
    let r = stack
        .client
        .get(stack.url("/isReady?id=1"))
        .basic_auth("ann", Some("opensesame"))
        .send()
        .await
        .expect("read");
    assert_eq!(r.status(), 200);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_carries_the_internal_token_upstream() {
    let stack = Stack::start_with_token(Some("internal-s3cret"), |_| {}).await;
    // The internal services refuse callers without the token…
    let r = stack
        .client
        .get(stack.master.url("/api/v1/tasks/0"))
        .send()
        .await
        .expect("master");
    assert_eq!(r.status(), 401);
    // …while the page's users, who never see it, go through the frontend.
    let original = image(12, 9, 7);
    let (status, _, id) = stack
        .post_form(
            "/submitTask",
            &Form::new().file("uploadfile", "a.png", png(&original)),
        )
        .await;
    assert_eq!(status, 200, "{id}");
    let id: u64 = id.parse().expect("id");
    assert_eq!(
        stack.wait_ready(id).await,
        (200, "Your image is ready.".to_owned())
    );
    let (status, _, body) = stack.get(&format!("/getImage?id={id}")).await;
    assert_eq!(status, 200);
    assert_eq!(decode(&body).to_rgba8().into_raw(), swapped(&original));
    stack.stop().await;
}
