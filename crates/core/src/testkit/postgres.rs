//! A throwaway PostgreSQL server for tests: a fresh cluster in a temporary directory on a free
//! loopback port, `fsync` off (speed; never use it for durability tests), stopped when the
//! handle drops — and also when the test process dies, because a small shell watchdog stops
//! the server as soon as the pipe from this process closes.
//!
//! When no PostgreSQL installation is found, [`PgServer::start`] returns `Ok(None)` on a
//! developer machine (after saying so loudly on stderr) and an error under `CI=true`, so CI
//! never passes by skipping.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running throwaway PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
    stdin: Option<ChildStdin>,
    next_db: std::sync::atomic::AtomicU32,
}

/// Whether tests run in CI (`CI=true`), where a missing server fails the test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("SHOAL_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists() && p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs `program args…`, as the `postgres` user when we are root (PostgreSQL refuses root).
fn command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgServer {
    /// Starts a server, or returns `Ok(None)` when PostgreSQL is not installed and we are not
    /// in CI.
    pub fn start() -> anyhow::Result<Option<Self>> {
        Self::start_with(false)
    }

    /// Like [`PgServer::start`], but the server accepts TCP connections only over TLS (a
    /// self-signed certificate; plain connections are rejected), to test `sslmode=require`.
    pub fn start_tls() -> anyhow::Result<Option<Self>> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> anyhow::Result<Option<Self>> {
        let Some(bin) = find_bin_dir() else {
            if in_ci() {
                bail!(
                    "PostgreSQL is not installed (looked in /usr/lib/postgresql/*/bin); CI must install it"
                );
            }
            eprintln!(
                "SKIPPING PostgreSQL test: no PostgreSQL installation found (install the postgresql package)"
            );
            return Ok(None);
        };
        let root = is_root();
        let dir = tempfile::Builder::new().prefix("shoal-pg-").tempdir()?;
        let data = dir.path().join("data");
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("cannot hand {} to the postgres user", dir.path().display());
            }
        }
        let out = command(root, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if tls {
            enable_tls(&data, root)?;
        }
        let port = free_port()?;
        // The watchdog: runs postgres in the background and stops it (fast shutdown) once its
        // stdin reaches end-of-file, i.e. when this handle drops or this process dies. It then
        // deletes the cluster itself: a server kept in a `static` is never dropped, so the
        // `TempDir` alone would leave a quarter of a gigabyte behind per test binary.
        let script = format!(
            "{postgres} -D {data} -h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=200 {ssl} & pg=$!; \
             read _; kill -INT $pg; wait $pg; rm -rf {sock}",
            postgres = bin.join("postgres").display(),
            data = data.display(),
            sock = dir.path().display(),
            ssl = if tls { "-c ssl=on" } else { "" },
        );
        let mut shell = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let mut child = shell
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start postgres")?;
        let stdin = child.stdin.take();
        let server = Self {
            port,
            bin,
            _dir: dir,
            child,
            stdin,
            next_db: std::sync::atomic::AtomicU32::new(0),
        };
        server.wait_ready(Duration::from_secs(30))?;
        Ok(Some(server))
    }

    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("postgres did not become ready on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a fresh, empty database and returns its URL, so tests sharing one server do
    /// not see each other's data.
    pub fn fresh_database(&self) -> anyhow::Result<String> {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ])
            .output()
            .context("cannot run createdb")?;
        if !out.status.success() {
            bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// Runs one SQL statement with `psql` against `url` and returns its output.
    pub fn psql(&self, url: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([url, "-At", "-c", sql])
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A self-signed certificate in the data directory, and client authentication that rejects
/// any TCP connection not made over TLS.
fn enable_tls(data: &Path, as_postgres: bool) -> anyhow::Result<()> {
    let key = data.join("server.key");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(data.join("server.crt"))
        .output()
        .context("cannot run openssl (install the openssl package)")?;
    if !out.status.success() {
        bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )?;
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(data)
            .status()?;
        if !status.success() {
            bail!("cannot hand the certificate to the postgres user");
        }
    }
    // PostgreSQL refuses a key readable by others.
    let status = Command::new("chmod").arg("600").arg(&key).status()?;
    if !status.success() {
        bail!("cannot restrict the key's permissions");
    }
    Ok(())
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.child.wait();
    }
}
