//! The page in a real browser: headless Chromium, driven over chromedriver, against a
//! `shoal up` process. A PNG uploaded through the page comes back processed, shown and
//! downloadable; a file that is not an image is refused on the page, in words.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `SHOAL_TEST_CHROMIUM` and
//! `SHOAL_TEST_CHROMEDRIVER`). Without them the test is skipped on a developer machine and
//! fails under `CI=true`. With `SHOAL_UPDATE_SCREENSHOT=1` it saves `docs/screenshot.png`.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgba};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Starts `shoal up` on free ports; returns it and the frontend's URL.
fn start_up(data_dir: &Path) -> (Process, String) {
    let mut child = Command::new(BIN)
        .args(["up", "--ports", "auto", "--threads", "2", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shoal up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut frontend = None;
    loop {
        let line = lines
            .next()
            .expect("shoal up exited before it was up")
            .expect("read");
        if let Some(url) = line.strip_prefix("frontend listening on ") {
            frontend = Some(url.trim().to_owned());
        }
        if line.starts_with("shoal is up") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Process(child), frontend.expect("a frontend URL"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts chromedriver on a free loopback port and waits until it answers.
async fn start_chromedriver(driver: &Path) -> (Process, String) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let process = Process(child);
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{url}/status")).send().await
            && r.status().is_success()
        {
            return (process, url);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(driver_url: &str, chromium: &Path, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            // The flags a headless run as root on a closed network needs.
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1200,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(driver_url)
        .await
        .expect("a browser session")
}

fn image() -> DynamicImage {
    DynamicImage::ImageRgba8(ImageBuffer::from_fn(160, 120, |x, y| {
        Rgba([
            (x * 255 / 160) as u8,
            (y * 255 / 120) as u8,
            ((x + y) % 256) as u8,
            255,
        ])
    }))
}

/// Waits until `script` (a JavaScript expression) is truthy; returns its value.
async fn wait_for(browser: &Client, script: &str, limit: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let value = browser
            .execute(&format!("return {script};"), vec![])
            .await
            .expect("script");
        if !(value.is_null() || value == false || value == "") {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out waiting for: {script}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_uploads_through_the_page_and_gets_the_result() {
    shoal_core::client::install_crypto_provider();
    let chromium = find(
        "SHOAL_TEST_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let driver = find("SHOAL_TEST_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        assert!(
            !in_ci(),
            "Chromium and chromedriver are not installed; CI must install chromium and chromium-driver"
        );
        eprintln!("SKIPPING browser test: install the chromium and chromium-driver packages");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, frontend) = start_up(&dir.path().join("data"));
    let (_driver, driver_url) = start_chromedriver(&driver).await;
    let browser = connect(&driver_url, &chromium, &dir.path().join("profile")).await;

    let original = image();
    let png_path = dir.path().join("gradient.png");
    original
        .save_with_format(&png_path, ImageFormat::Png)
        .expect("write the PNG");
    let text_path = dir.path().join("notes.txt");
    std::fs::write(&text_path, "this is not an image").expect("write the text file");

    browser
        .goto(&format!("{frontend}/"))
        .await
        .expect("open the page");
    // Every control is named for a screen reader: a label, an aria-label, or its own text.
    let unnamed = browser
        .execute(
            "return [...document.querySelectorAll('input, select, textarea, button')]\
             .filter(e => e.type !== 'hidden')\
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')\
               && !(e.tagName === 'BUTTON' && e.textContent.trim()))\
             .map(e => e.id || e.name || e.tagName);",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(unnamed, serde_json::json!([]), "controls without a name");
    let input = browser
        .find(Locator::Css("#uploadfile"))
        .await
        .expect("the file input");
    input
        .send_keys(&png_path.display().to_string())
        .await
        .expect("choose the file");
    browser
        .find(Locator::Css("#upload-button"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("click upload");

    // The card goes live and ends finished, with the result shown and downloadable.
    wait_for(
        &browser,
        "document.querySelector('article.card[data-state=\"finished\"]')",
        Duration::from_secs(60),
    )
    .await;
    let status = browser
        .find(Locator::Css(
            "article.card[data-state=\"finished\"] .status",
        ))
        .await
        .expect("status")
        .text()
        .await
        .expect("text");
    assert_eq!(status, "Done");
    let width = wait_for(
        &browser,
        "(() => { const i = document.querySelector('article.card img.result'); \
         return i && i.complete && i.naturalWidth; })()",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(width, 160, "the result image is shown");
    let without_alt = browser
        .execute(
            "return [...document.querySelectorAll('img')].filter(i => !i.alt).length;",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(without_alt, 0, "every image has alt text");
    let href = browser
        .find(Locator::Css("article.card a.download"))
        .await
        .expect("a download link")
        .prop("href")
        .await
        .expect("href")
        .expect("an href");
    let downloaded = reqwest::get(&href)
        .await
        .expect("download")
        .bytes()
        .await
        .expect("bytes");
    let result = image::load_from_memory(&downloaded)
        .expect("the download is an image")
        .to_rgba8();
    let mut expected = original.to_rgba8();
    for p in expected.pixels_mut() {
        p.0.swap(0, 1);
    }
    assert_eq!(result, expected, "red and green swapped, pixel for pixel");

    // A file that is not an image: the page says so, where it happened. (A multiple-file
    // input keeps what was chosen before, so clear it first.)
    input.clear().await.expect("clear the file input");
    input
        .send_keys(&text_path.display().to_string())
        .await
        .expect("choose the text file");
    browser
        .find(Locator::Css("#upload-button"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("click upload");
    wait_for(
        &browser,
        "document.querySelector('article.card[data-state=\"rejected\"]')",
        Duration::from_secs(30),
    )
    .await;
    let cards = browser
        .find_all(Locator::Css("article.card"))
        .await
        .expect("cards");
    assert_eq!(cards.len(), 2, "one card per uploaded file");
    let refusal = browser
        .find(Locator::Css(
            "article.card[data-state=\"rejected\"] .status",
        ))
        .await
        .expect("status")
        .text()
        .await
        .expect("text");
    assert!(refusal.starts_with("Rejected: "), "{refusal}");
    assert!(
        refusal.to_lowercase().contains("image"),
        "says what is wrong in words: {refusal}"
    );

    if std::env::var("SHOAL_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let png = browser.screenshot().await.expect("screenshot");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshot.png");
        std::fs::write(&path, png).expect("save the screenshot");
    }
    browser.close().await.expect("close the browser");
}
