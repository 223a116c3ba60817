//! A throwaway S3-compatible server for tests: `moto_server` (PyPI `moto[server]`) on a free
//! loopback port, stopped when the handle drops — and also when the test process dies, through
//! the same stdin watchdog as [`super::postgres`].
//!
//! The server is looked for in `SHOAL_TEST_MOTO_SERVER`, then in
//! `$HOME/.cache/shoal/tools/moto/bin/moto_server` (where `scripts/test.sh` installs it), then
//! on `PATH`. When it is missing, [`S3Server::start`] returns `Ok(None)` on a developer machine
//! (saying so on stderr) and an error under `CI=true`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::postgres::in_ci;

/// Access key id the test server accepts (moto accepts any).
pub const ACCESS_KEY_ID: &str = "shoal-test";
/// Secret access key the test server accepts (moto accepts any).
pub const SECRET_ACCESS_KEY: &str = "shoal-test-secret";
/// Region the test server is used with.
pub const REGION: &str = "us-east-1";

/// A running throwaway S3-compatible server.
#[derive(Debug)]
pub struct S3Server {
    port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    next_bucket: AtomicU32,
}

fn find_moto() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("SHOAL_TEST_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    if let Ok(home) = std::env::var("HOME") {
        let cached = PathBuf::from(home).join(".cache/shoal/tools/moto/bin/moto_server");
        if cached.exists() {
            return Some(cached);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("moto_server"))
        .find(|candidate| candidate.exists())
}

impl S3Server {
    /// Starts a server, or returns `Ok(None)` when `moto_server` is not installed and we are
    /// not in CI.
    pub fn start() -> anyhow::Result<Option<Self>> {
        let Some(moto) = find_moto() else {
            if in_ci() {
                bail!(
                    "moto_server is not installed (SHOAL_TEST_MOTO_SERVER, ~/.cache/shoal/tools/moto, PATH); CI must install it"
                );
            }
            eprintln!(
                "SKIPPING S3 test: moto_server not found (pip install 'moto[server]', or run scripts/test.sh)"
            );
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // The watchdog: stops the server once stdin reaches end-of-file.
        let script = format!(
            "'{moto}' -H 127.0.0.1 -p {port} & m=$!; read _; kill $m; wait $m",
            moto = moto.display(),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start moto_server")?;
        let stdin = child.stdin.take();
        let server = Self {
            port,
            child,
            stdin,
            next_bucket: AtomicU32::new(0),
        };
        server.wait_ready(Duration::from_secs(30))?;
        Ok(Some(server))
    }

    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self
                .request("GET", "/moto-api/")
                .is_ok_and(|status| status == 200)
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("moto_server did not become ready on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One bodiless HTTP/1.0 request; returns the status code.
    fn request(&self, method: &str, path: &str) -> anyhow::Result<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
            self.port
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no HTTP status in {:?}", text.lines().next()))?;
        Ok(status)
    }

    /// The endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a fresh, empty bucket and returns its name, so tests sharing one server do not
    /// see each other's objects.
    pub fn fresh_bucket(&self) -> anyhow::Result<String> {
        let n = self.next_bucket.fetch_add(1, Ordering::Relaxed);
        let name = format!("shoal-test-{}-{n}", std::process::id());
        let status = self.request("PUT", &format!("/{name}"))?;
        if status != 200 {
            bail!("creating bucket {name} answered {status}");
        }
        Ok(name)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
