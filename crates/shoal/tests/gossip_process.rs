//! `shoal gossip` as a process: the seed's environment variables, graceful leave on SIGTERM,
//! a failed join, the warning for an unauthenticated cluster on a network, bad flags.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// A `shoal gossip` child process, its addresses, and its log lines so far.
struct GossipProcess {
    child: Child,
    cluster: String,
    http: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl GossipProcess {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .arg("gossip")
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("ADVERTISE_ADDR")
            .env_remove("CLUSTER_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn shoal gossip");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (cluster, http) = loop {
            let line = lines
                .next()
                .expect("the node exited before starting")
                .expect("read");
            log.lock().expect("log").push(line.clone());
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "gossip node started" {
                break (
                    event["cluster"].as_str().expect("cluster").to_owned(),
                    event["http"].as_str().expect("http").to_owned(),
                );
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        Self {
            child,
            cluster,
            http,
            log,
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|line| line.contains(needle))
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for GossipProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    shoal_core::client::install_crypto_provider();
    reqwest::Client::new()
}

/// A UDP port free right now on loopback.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

async fn members(addr: &str) -> serde_json::Value {
    let body = http()
        .get(format!("http://{addr}/members"))
        .send()
        .await
        .expect("members")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&body).expect("json")
}

async fn state_of(addr: &str, cluster: &str) -> Option<String> {
    members(addr).await["members"]
        .as_array()?
        .iter()
        .find(|m| m["address"] == cluster)
        .and_then(|m| m["state"].as_str().map(str::to_owned))
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_seeds_environment_forms_a_cluster_and_sigterm_leaves_it() {
    let a_addr = format!("127.0.0.1:{}", free_udp_port());
    let a = GossipProcess::start(&[], &[("ADVERTISE_ADDR", &a_addr)]);
    assert_eq!(a.cluster, a_addr);
    let b = GossipProcess::start(
        &[],
        &[
            ("ADVERTISE_ADDR", &format!("127.0.0.1:{}", free_udp_port())),
            ("CLUSTER_ADDR", &a_addr),
        ],
    );
    wait_until(
        "both nodes see each other",
        Duration::from_secs(10),
        || async {
            state_of(&a.http, &b.cluster).await.as_deref() == Some("alive")
                && state_of(&b.http, &a.cluster).await.as_deref() == Some("alive")
        },
    )
    .await;
    // Each announces its own HTTP address (no port assumed).
    let listed = members(&a.http).await;
    let b_row = listed["members"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|m| m["address"] == b.cluster.as_str())
        .expect("b listed")
        .clone();
    assert_eq!(b_row["http"], b.http.as_str());

    let set = http()
        .post(format!("http://{}/set/1234", b.http))
        .send()
        .await
        .expect("set");
    assert_eq!(set.text().await.expect("body"), "1234");
    wait_until("the value reaches a", Duration::from_secs(2), || async {
        http()
            .get(format!("http://{}/get", a.http))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("body")
            == "1234"
    })
    .await;

    let mut b = b;
    let stopped = Instant::now();
    b.sigterm();
    let status = b.child.wait().expect("wait");
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert!(stopped.elapsed() < Duration::from_secs(5));
    wait_until("a records that b left", Duration::from_secs(2), || async {
        state_of(&a.http, &b.cluster).await.as_deref() == Some("left")
    })
    .await;
}

#[tokio::test]
async fn a_failed_join_starts_a_new_cluster_and_says_so() {
    let nobody = format!("127.0.0.1:{}", free_udp_port());
    let node = GossipProcess::start(&["--advertise", "127.0.0.1:0", "--join", &nobody], &[]);
    wait_until(
        "the node says it starts a new cluster",
        Duration::from_secs(10),
        || async { node.logged("starting a new one") },
    )
    .await;
    let value = http()
        .get(format!("http://{}/get", node.http))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert_eq!(value, "42");
}

#[tokio::test]
async fn a_network_bind_without_a_cluster_key_is_refused_unless_insecure() {
    let port = free_udp_port();
    let bind = format!("0.0.0.0:{port}");
    let advertise = format!("127.0.0.1:{port}");
    // Refused: one forged datagram could otherwise join and steer the cluster.
    let output = Command::new(BIN)
        .args([
            "gossip",
            "--listen",
            "127.0.0.1:0",
            "--advertise",
            &advertise,
            "--bind",
            &bind,
        ])
        .env_remove("ADVERTISE_ADDR")
        .env_remove("CLUSTER_ADDR")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no --cluster-key is set") && stderr.contains("--insecure"),
        "{stderr}"
    );
    let open = GossipProcess::start(
        &["--advertise", &advertise, "--bind", &bind, "--insecure"],
        &[],
    );
    assert!(open.logged("no --cluster-key is set"));
    drop(open);
    let port = free_udp_port();
    let keyed = GossipProcess::start(
        &[
            "--advertise",
            &format!("127.0.0.1:{port}"),
            "--bind",
            &format!("0.0.0.0:{port}"),
            "--cluster-key",
            "a long enough shared secret",
        ],
        &[],
    );
    assert!(!keyed.logged("no --cluster-key is set"));
}

#[test]
fn bad_flags_fail_loudly() {
    for (args, expected) in [
        (vec!["--cluster-key", "short"], "at least 16 bytes"),
        (
            vec!["--advertise", "0.0.0.0"],
            "--advertise must be an address",
        ),
        (
            vec!["--advertise", "not an address!"],
            "invalid --advertise",
        ),
        (vec!["--fanout", "0"], "--fanout must be at least 1"),
        (
            vec!["--initial", "9223372036854775808"],
            "9223372036854775808",
        ),
    ] {
        let output = Command::new(BIN)
            .arg("gossip")
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("ADVERTISE_ADDR")
            .env_remove("CLUSTER_ADDR")
            .output()
            .expect("run");
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
