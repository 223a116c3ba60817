//! A throwaway NATS server for tests: `nats-server -js` (Debian package `nats-server`) on a
//! free loopback port with its own JetStream directory, stopped when the handle drops — and
//! also when the test process dies, through the same stdin watchdog as [`super::postgres`].
//! It can be stopped and started again on the same port and directory, to test reconnection
//! and durability.
//!
//! The binary is looked for in `SHOAL_TEST_NATS_SERVER`, then on `PATH`, then in
//! `/usr/sbin` (where Debian installs it). When it is missing, [`NatsServer::start`] returns
//! `Ok(None)` on a developer machine (saying so on stderr) and an error under `CI=true`.

use std::io::Read as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::postgres::in_ci;

/// A running throwaway NATS server.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    monitor: u16,
    store: tempfile::TempDir,
    running: Option<(Child, Option<ChildStdin>)>,
}

fn find_nats_server() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("SHOAL_TEST_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.exists())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NatsServer {
    /// Starts a server, or returns `Ok(None)` when `nats-server` is not installed and we are
    /// not in CI.
    pub fn start() -> anyhow::Result<Option<Self>> {
        let Some(binary) = find_nats_server() else {
            if in_ci() {
                bail!(
                    "nats-server is not installed (SHOAL_TEST_NATS_SERVER, PATH, /usr/sbin); CI must install it"
                );
            }
            eprintln!(
                "SKIPPING NATS test: nats-server not found (apt-get install nats-server, or run scripts/test.sh)"
            );
            return Ok(None);
        };
        let mut server = Self {
            binary,
            port: free_port()?,
            monitor: free_port()?,
            store: tempfile::tempdir()?,
            running: None,
        };
        server.start_again()?;
        Ok(Some(server))
    }

    /// Starts the server again (same port, same JetStream directory) after [`Self::stop`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        // The watchdog: stops the server once stdin reaches end-of-file.
        let script = format!(
            "'{bin}' -js -a 127.0.0.1 -p {port} -m {monitor} -sd '{store}' & n=$!; read _; kill $n; wait $n",
            bin = self.binary.display(),
            port = self.port,
            monitor = self.monitor,
            store = self.store.path().display(),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server")?;
        let stdin = child.stdin.take();
        self.running = Some((child, stdin));
        self.wait_ready(Duration::from_secs(30))
    }

    /// Stops the server (its JetStream data stays for [`Self::start_again`]).
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.running.take() {
            drop(stdin);
            let _ = child.wait();
        }
        // The port is free once nothing answers there.
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.healthy() {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("nats-server did not become ready on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.monitor)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.monitor
        );
        if std::io::Write::write_all(&mut stream, request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
