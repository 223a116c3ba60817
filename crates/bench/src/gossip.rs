//! `shoal bench gossip`: how fast a set reaches every node, and how fast a killed node is
//! seen dead by every other.
//!
//! The bench starts `--nodes` gossip nodes in this process on loopback (each with its own UDP
//! socket and HTTP server, default settings), waits until every node sees every other
//! alive, then makes `--sets` sets, each through the HTTP API (`POST /set/{n}`) of a random
//! node, one after the other. A set's convergence time runs from just before the request to
//! the moment the last node holds the new version (observed through each node's change
//! feed, so nothing polls). Then it kills `--kills` random nodes one at a time (no leave:
//! sockets closed as by a crash) and measures until every remaining node reports it dead in
//! its membership. Goals with default settings: p99 convergence under 0.5 s at 32 nodes and
//! under 1 s at 128, failure detected by every node within 10 s.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use shoal_gossip::{ClusterKey, MemberState, Node, NodeOptions};
use tokio::net::{TcpListener, UdpSocket};

use crate::report::percentile;

/// Flags of `shoal bench gossip`.
#[derive(clap::Args, Clone, Debug)]
pub struct GossipArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 32)]
    pub nodes: usize,
    /// Sets to time, one after the other.
    #[arg(long, default_value_t = 100)]
    pub sets: usize,
    /// Pause between sets.
    #[arg(long, value_parser = shoal_core::config::parse_duration, default_value = "50ms")]
    pub pause: Duration,
    /// Nodes to kill, one at a time, timing failure detection.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// Run the cluster with a cluster key (authenticated datagrams and notifies).
    #[arg(long)]
    pub cluster_key: bool,
    /// Spread sets only by anti-entropy (the current version to --fanout random members
    /// every 2 s), as the seed does, instead of pushing them to every member at once.
    #[arg(long)]
    pub seed_spreading: bool,
}

/// What `shoal bench gossip` measured.
#[derive(Clone, Debug)]
pub struct GossipReport {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Whether a cluster key was set.
    pub keyed: bool,
    /// Whether sets spread only by anti-entropy (`--seed-spreading`).
    pub seed_spreading: bool,
    /// Time until every node saw every other alive, from the first node's start.
    pub formation: Duration,
    /// Per set: time until every node held it, sorted; sets that never converged are absent.
    pub convergence: Vec<Duration>,
    /// Per set and node: time until that node held it, sorted.
    pub delivery: Vec<Duration>,
    /// Sets that did not reach every node within 30 s.
    pub unconverged: usize,
    /// Per kill: time until every other node reported it dead.
    pub detection: Vec<Duration>,
    /// Kills not detected by every node within 30 s.
    pub undetected: usize,
}

/// Runs the scenario.
pub async fn measure(args: &GossipArgs) -> anyhow::Result<GossipReport> {
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!(
        args.kills < args.nodes - 1,
        "--kills must leave at least two nodes"
    );
    let key: Option<ClusterKey> = if args.cluster_key {
        Some(
            "shoal bench gossip cluster key"
                .parse()
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let started = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        // Join through a few earlier nodes, as a deployment with several seeds would.
        let join: Vec<SocketAddr> = [0, i / 2, i.saturating_sub(1)]
            .into_iter()
            .filter(|&j| j < i)
            .map(|j| nodes[j].swim_addr())
            .collect();
        let options = NodeOptions {
            join,
            cluster_key: key.clone(),
            push_on_set: !args.seed_spreading,
            ..NodeOptions::new()
        };
        nodes.push(Node::start(options, socket, listener).await?);
    }
    wait_formation(&nodes, Duration::from_secs(120)).await?;
    let formation = started.elapsed();

    shoal_core::client::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut convergence = Vec::with_capacity(args.sets);
    let mut delivery = Vec::with_capacity(args.sets * args.nodes);
    let mut unconverged = 0;
    let mut pick = XorShift::new(0x5eed_1234_abcd_ef01);
    for set in 0..args.sets {
        let target = &nodes[pick.below(nodes.len())];
        let value = 1_000 + i64::try_from(set).unwrap_or(0);
        let mut feeds: Vec<_> = nodes.iter().map(Node::subscribe).collect();
        let t0 = Instant::now();
        let response = client
            .post(format!("http://{}/set/{value}", target.http_addr()))
            .send()
            .await
            .context("set request")?;
        anyhow::ensure!(
            response.status().is_success(),
            "set answered {}",
            response.status()
        );
        let waits = feeds.iter_mut().map(|feed| async move {
            let seen =
                tokio::time::timeout(Duration::from_secs(30), feed.wait_for(|v| v.value == value))
                    .await;
            matches!(seen, Ok(Ok(_))).then(|| t0.elapsed())
        });
        let arrivals = futures::future::join_all(waits).await;
        if arrivals.iter().all(Option::is_some) {
            let times: Vec<Duration> = arrivals.iter().flatten().copied().collect();
            convergence.push(times.iter().copied().max().unwrap_or_default());
            delivery.extend(times);
        } else {
            unconverged += 1;
        }
        tokio::time::sleep(args.pause).await;
    }

    let mut detection = Vec::new();
    let mut undetected = 0;
    for _ in 0..args.kills {
        // Never node 0, so the survivors keep the join target.
        let victim = nodes.remove(1 + pick.below(nodes.len() - 1));
        let addr = victim.swim_addr();
        let t0 = Instant::now();
        victim.kill().await;
        match wait_dead(&nodes, addr, Duration::from_secs(30)).await {
            0 => detection.push(t0.elapsed()),
            missing => {
                tracing::warn!(victim = %addr, nodes = missing, "killed node still not reported dead after 30 s");
                undetected += 1;
            }
        }
    }
    for node in nodes {
        node.leave().await;
    }
    convergence.sort();
    delivery.sort();
    Ok(GossipReport {
        nodes: args.nodes,
        keyed: args.cluster_key,
        seed_spreading: args.seed_spreading,
        formation,
        convergence,
        delivery,
        unconverged,
        detection,
        undetected,
    })
}

async fn wait_formation(nodes: &[Node], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut complete = true;
        for node in nodes {
            let alive = node
                .members()
                .await
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count();
            if alive != nodes.len() {
                complete = false;
                break;
            }
        }
        if complete {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster did not form within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node reports `addr` dead; returns how many still did not at the
/// deadline.
async fn wait_dead(nodes: &[Node], addr: SocketAddr, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Node> = nodes.iter().collect();
    while Instant::now() < deadline {
        let mut still = Vec::with_capacity(pending.len());
        for node in pending {
            let dead = node
                .members()
                .await
                .iter()
                .any(|m| m.address == addr && m.state == MemberState::Dead);
            if !dead {
                still.push(node);
            }
        }
        if still.is_empty() {
            return 0;
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pending.len()
}

/// A tiny deterministic generator, so runs pick the same nodes.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        usize::try_from(x % n as u64).unwrap_or(0)
    }
}

impl GossipReport {
    /// The convergence goal for this cluster size: 0.5 s up to 32 nodes, 1 s beyond.
    pub fn convergence_goal(&self) -> Duration {
        if self.nodes <= 32 {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        }
    }

    /// p99 of the time until every node held a set.
    pub fn convergence_p99(&self) -> Option<Duration> {
        percentile(&self.convergence, 99.0)
    }

    /// Slowest failure detection.
    pub fn detection_max(&self) -> Option<Duration> {
        self.detection.iter().copied().max()
    }

    /// Fails when a set never converged or a kill was never detected; the time goals are
    /// reported, not enforced (the machine may be shared).
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.unconverged == 0,
            "{} sets never reached every node",
            self.unconverged
        );
        anyhow::ensure!(
            self.undetected == 0,
            "{} killed nodes were never seen dead by every node",
            self.undetected
        );
        Ok(())
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

impl fmt::Display for GossipReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "gossip: {} nodes on loopback in one process{}, {}",
            self.nodes,
            if self.keyed { ", cluster key" } else { "" },
            if self.seed_spreading {
                "sets spread by anti-entropy only (the seed's way)"
            } else {
                "default settings"
            }
        )?;
        writeln!(
            f,
            "  cluster formed (all see all alive) in {}",
            ms(Some(self.formation))
        )?;
        writeln!(
            f,
            "  convergence (set → every node holds it), {} sets: p50 {}  p99 {}  max {}  (goal p99 < {})",
            self.convergence.len(),
            ms(percentile(&self.convergence, 50.0)),
            ms(self.convergence_p99()),
            ms(self.convergence.last().copied()),
            ms(Some(self.convergence_goal())),
        )?;
        writeln!(
            f,
            "  delivery to one node: p50 {}  p99 {}",
            ms(percentile(&self.delivery, 50.0)),
            ms(percentile(&self.delivery, 99.0)),
        )?;
        if self.unconverged > 0 {
            writeln!(f, "  sets that never converged: {}", self.unconverged)?;
        }
        let detections: Vec<String> = self.detection.iter().map(|d| ms(Some(*d))).collect();
        writeln!(
            f,
            "  failure detection (kill → every node reports it dead): {}  max {}  (goal < 10 s)",
            if detections.is_empty() {
                "-".to_owned()
            } else {
                detections.join(", ")
            },
            ms(self.detection_max()),
        )?;
        if self.undetected > 0 {
            writeln!(f, "  kills never detected by all: {}", self.undetected)?;
        }
        let convergence_met = self
            .convergence_p99()
            .is_some_and(|p| p < self.convergence_goal())
            && self.unconverged == 0;
        let detection_met = self
            .detection_max()
            .is_some_and(|d| d < Duration::from_secs(10))
            && self.undetected == 0;
        writeln!(
            f,
            "  goals: convergence {}, failure detection {}",
            if convergence_met { "met" } else { "NOT met" },
            if detection_met { "met" } else { "NOT met" },
        )
    }
}
