//! A running node: SWIM membership (foca) over UDP, the register, and how versions spread.
//!
//! # Tasks
//! - **The membership actor** owns the `Foca` instance. Everything that touches it — SWIM
//!   datagrams, timers, joins, leaves, `/members` queries — arrives on one channel and is
//!   handled in order; after each input the actor sends what foca wants sent, schedules its
//!   timers and reacts to its notifications (member up/down/renamed, joined, idle).
//! - **The receiver** reads the UDP socket, checks framing and tag ([`crate::wire`]), and
//!   dispatches: SWIM to the actor, pushed versions straight into the register, state
//!   requests answered at once.
//! - **Anti-entropy** sends the current version to `--fanout` random members over HTTP
//!   `/notify` every `--interval`, as the seed does, so a node that missed a push still
//!   converges; in the same round it asks one random member for its membership, so a node
//!   that missed a SWIM update (they are spread a bounded number of times) learns it.
//! - **The HTTP API** ([`crate::http`]).
//!
//! # How a version spreads
//! A set (or a `/notify` that changes the value) is pushed at once in one datagram to every
//! active member: no waiting for the next round, no multi-hop. A node that was unreachable
//! gets it from anti-entropy; a node that joins asks for the current version as soon as it
//! is in; and every member pushes its version to a member that comes up (a new node, or one
//! back from the other side of a partition).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use foca::{Foca, PostcardCodec, Timer};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use serde::Serialize;
use shoal_core::address_policy::Policy;
use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::config::Token;
use shoal_core::server::{self, ServerOptions};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::member::{MemberState, MemberView, NodeId};
use crate::register::{Applied, Clock, Register, Versioned, system_clock};
use crate::wire::{self, ClusterKey, Kind, Rejected};

/// Largest SWIM packet foca may produce: a 1,400-byte datagram minus our framing and tag.
const MAX_SWIM_PACKET: usize = 1400 - 2 - wire::TAG_LEN;
/// How long a node tries its `--join` addresses before it says it starts a new cluster.
const JOIN_PATIENCE: Duration = Duration::from_secs(5);
/// While a node knows no other member, how often it tries its `--join` addresses again.
const REJOIN_EVERY: Duration = Duration::from_secs(10);
/// Interval of the debug log of state and members (the seed's 5 s).
const DEBUG_LOG_EVERY: Duration = Duration::from_secs(5);

/// Everything a node needs to start.
#[derive(Clone)]
pub struct NodeOptions {
    /// The node's name, the origin of its writes; unique in the cluster. Default: its
    /// cluster address.
    pub name: Option<String>,
    /// Cluster address announced to the others; default: the UDP socket's address.
    pub swim_advertise: Option<SocketAddr>,
    /// HTTP address announced to the others; default: the listener's address.
    pub http_advertise: Option<SocketAddr>,
    /// Cluster addresses to join through.
    pub join: Vec<SocketAddr>,
    /// The value before any set.
    pub initial: i64,
    /// Anti-entropy period.
    pub interval: Duration,
    /// Members contacted per anti-entropy round.
    pub fanout: usize,
    /// How far in the future a generation may be.
    pub max_drift: Duration,
    /// Authenticates datagrams and `/notify` calls.
    pub cluster_key: Option<ClusterKey>,
    /// Bearer token of the HTTP API (sent on `/notify` calls to peers too).
    pub token: Option<Token>,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// How long a suspect member has to refute before it is declared down.
    pub suspect_timeout: Duration,
    /// Source of time for generations (tests substitute their own).
    pub clock: Clock,
    /// Push a set to every member at once (the default). Off, a set spreads only through
    /// anti-entropy rounds, as in the seed: `shoal bench gossip --seed-spreading` measures
    /// the difference.
    pub push_on_set: bool,
}

impl NodeOptions {
    /// Defaults: initial 42, 2 s anti-entropy to 2 members, 1 min drift, 1 s probes, 3 s
    /// suspicion, no key, no token.
    pub fn new() -> Self {
        Self {
            name: None,
            swim_advertise: None,
            http_advertise: None,
            join: Vec::new(),
            initial: 42,
            interval: Duration::from_secs(2),
            fanout: 2,
            max_drift: Duration::from_secs(60),
            cluster_key: None,
            token: None,
            probe_period: Duration::from_secs(1),
            suspect_timeout: Duration::from_secs(3),
            clock: system_clock(),
            push_on_set: true,
        }
    }
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("name", &self.name)
            .field("swim_advertise", &self.swim_advertise)
            .field("http_advertise", &self.http_advertise)
            .field("join", &self.join)
            .field("initial", &self.initial)
            .field("interval", &self.interval)
            .field("fanout", &self.fanout)
            .field("max_drift", &self.max_drift)
            .field("cluster_key", &self.cluster_key)
            .field("token", &self.token)
            .field("probe_period", &self.probe_period)
            .field("suspect_timeout", &self.suspect_timeout)
            .field("push_on_set", &self.push_on_set)
            .finish_non_exhaustive()
    }
}

/// Counters of what a node refused or dropped (also exported as Prometheus metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams received (before any check).
    pub packets_received: AtomicU64,
    /// Datagrams that were not shoal gossip or did not decode.
    pub packets_malformed: AtomicU64,
    /// Datagrams that failed authentication (unsigned or wrong tag) with a key set.
    pub packets_unauthenticated: AtomicU64,
    /// Signed datagrams received by a node without a key.
    pub packets_unexpected_signature: AtomicU64,
    /// SWIM packets foca refused.
    pub swim_errors: AtomicU64,
    /// Versions (pushed or notified) that changed the value.
    pub versions_applied: AtomicU64,
    /// Versions refused for a generation too far ahead.
    pub versions_too_far_ahead: AtomicU64,
    /// `/notify` calls refused for a missing or wrong signature.
    pub notifies_unauthenticated: AtomicU64,
}

/// A snapshot of [`Stats`], as `/stats` serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::packets_received`].
    pub packets_received: u64,
    /// See [`Stats::packets_malformed`].
    pub packets_malformed: u64,
    /// See [`Stats::packets_unauthenticated`].
    pub packets_unauthenticated: u64,
    /// See [`Stats::packets_unexpected_signature`].
    pub packets_unexpected_signature: u64,
    /// See [`Stats::swim_errors`].
    pub swim_errors: u64,
    /// See [`Stats::versions_applied`].
    pub versions_applied: u64,
    /// See [`Stats::versions_too_far_ahead`].
    pub versions_too_far_ahead: u64,
    /// See [`Stats::notifies_unauthenticated`].
    pub notifies_unauthenticated: u64,
}

impl Stats {
    fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            packets_received: r(&self.packets_received),
            packets_malformed: r(&self.packets_malformed),
            packets_unauthenticated: r(&self.packets_unauthenticated),
            packets_unexpected_signature: r(&self.packets_unexpected_signature),
            swim_errors: r(&self.swim_errors),
            versions_applied: r(&self.versions_applied),
            versions_too_far_ahead: r(&self.versions_too_far_ahead),
            notifies_unauthenticated: r(&self.notifies_unauthenticated),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// State shared by a node's tasks and its HTTP handlers.
pub(crate) struct Shared {
    pub(crate) register: Register,
    pub(crate) key: Option<ClusterKey>,
    stats: Stats,
    socket: Arc<UdpSocket>,
    identity: RwLock<NodeId>,
    /// Active members (alive or suspect) by cluster address, from foca's notifications.
    active: RwLock<HashMap<SocketAddr, NodeId>>,
    /// Traffic to and from these cluster addresses is dropped: a simulated partition.
    blocked: RwLock<HashSet<SocketAddr>>,
    actor: mpsc::Sender<Input>,
    client: HttpClient,
    interval: Duration,
    fanout: usize,
    push_on_set: bool,
}

impl Shared {
    pub(crate) fn name(&self) -> Arc<str> {
        self.register.name().clone()
    }

    pub(crate) fn identity(&self) -> NodeId {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_blocked(&self, addr: &SocketAddr) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(addr)
    }

    fn active_members(&self) -> Vec<NodeId> {
        let blocked = self.blocked.read().unwrap_or_else(PoisonError::into_inner);
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|m| !blocked.contains(&m.swim))
            .cloned()
            .collect()
    }

    async fn send(&self, to: SocketAddr, kind: Kind, payload: &[u8]) {
        if self.is_blocked(&to) {
            return;
        }
        let packet = wire::seal(kind, payload, self.key.as_ref());
        if let Err(err) = self.socket.send_to(&packet, to).await {
            tracing::debug!(%to, error = %err, "cannot send a datagram");
        }
    }

    /// Sends this node's current version to one member.
    async fn send_state(&self, to: SocketAddr) {
        let payload = wire::encode_update(&self.register.get(), &self.name());
        self.send(to, Kind::Update, &payload).await;
    }

    /// Counts a `/notify` call refused for a missing or wrong signature.
    pub(crate) fn count_unauthenticated_notify(&self) {
        bump(&self.stats.notifies_unauthenticated);
        metrics::counter!("shoal_gossip_notifies_refused_total", "reason" => "unauthenticated")
            .increment(1);
    }

    /// Sends `version` to every active member, at once.
    pub(crate) async fn push_to_all(&self, version: &Versioned) {
        if !self.push_on_set {
            return;
        }
        let payload = wire::encode_update(version, &self.name());
        for member in self.active_members() {
            self.send(member.swim, Kind::Update, &payload).await;
        }
    }

    /// Applies a version heard from the cluster or a `/notify` call.
    pub(crate) fn apply(
        &self,
        version: &Versioned,
        from: &str,
    ) -> Result<Applied, crate::register::Refused> {
        match self.register.apply(version) {
            Ok(Applied::Changed) => {
                bump(&self.stats.versions_applied);
                tracing::info!(
                    node = %self.name(),
                    value = version.value,
                    generation = version.generation,
                    origin = %version.origin,
                    notifier = from,
                    "new value"
                );
                Ok(Applied::Changed)
            }
            Ok(Applied::Stale) => Ok(Applied::Stale),
            Err(refused) => {
                bump(&self.stats.versions_too_far_ahead);
                metrics::counter!("shoal_gossip_versions_refused_total", "reason" => "too_far_ahead")
                    .increment(1);
                tracing::warn!(notifier = from, error = %refused, "version refused");
                Err(refused)
            }
        }
    }

    pub(crate) async fn members(&self) -> Vec<MemberView> {
        let (tx, rx) = oneshot::channel();
        if self.actor.send(Input::View(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    fn reject(&self, rejected: Rejected, from: SocketAddr) {
        match rejected {
            Rejected::Malformed => bump(&self.stats.packets_malformed),
            Rejected::Unsigned | Rejected::BadSignature => {
                bump(&self.stats.packets_unauthenticated);
            }
            Rejected::UnexpectedSignature => bump(&self.stats.packets_unexpected_signature),
        }
        metrics::counter!("shoal_gossip_packets_dropped_total", "reason" => rejected.reason())
            .increment(1);
        tracing::debug!(%from, reason = rejected.reason(), "dropped a datagram");
    }
}

/// What the membership actor handles, one at a time.
enum Input {
    /// A SWIM packet (already authenticated).
    Swim(Vec<u8>),
    /// A foca timer fired.
    Timer(Timer<NodeId>),
    /// Try to join through this cluster address.
    Announce(SocketAddr),
    /// A member said it leaves.
    MemberLeft(NodeId),
    /// A member that just joined asks for the membership.
    MembersRequest(SocketAddr),
    /// Membership records from a member we asked.
    Members(Vec<foca::Member<NodeId>>),
    /// `/members`.
    View(oneshot::Sender<Vec<MemberView>>),
    /// Leave the cluster, then stop.
    Leave(oneshot::Sender<()>),
}

/// A running node. Dropping it does not stop it: call [`Node::leave`] (graceful) or
/// [`Node::kill`] (as if the process died).
pub struct Node {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
    stop: CancellationToken,
    http_stop: CancellationToken,
    http_addr: SocketAddr,
    swim_addr: SocketAddr,
}

impl Node {
    /// Starts a node on a bound UDP socket (cluster traffic) and a bound TCP listener (HTTP
    /// API), and begins joining `options.join`.
    pub async fn start(
        options: NodeOptions,
        socket: UdpSocket,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let swim_addr = match options.swim_advertise {
            Some(addr) => addr,
            None => socket.local_addr().context("UDP socket has no address")?,
        };
        let http_addr = match options.http_advertise {
            Some(addr) => addr,
            None => {
                let bound = listener.local_addr().context("listener has no address")?;
                if bound.ip().is_unspecified() {
                    // Bound to every interface: peers reach it at the cluster address's IP.
                    SocketAddr::new(swim_addr.ip(), bound.port())
                } else {
                    bound
                }
            }
        };
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| swim_addr.to_string());
        let identity = NodeId {
            name: name.clone(),
            swim: swim_addr,
            http: http_addr,
            bump: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(1),
        };
        let client = HttpClient::new(ClientOptions {
            connect_timeout: options.interval.max(Duration::from_millis(500)),
            request_timeout: options.interval.max(Duration::from_millis(500)),
            token: options.token.clone(),
        })?;
        let (actor_tx, actor_rx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            register: Register::new(
                &name,
                options.initial,
                options.max_drift,
                options.clock.clone(),
            ),
            key: options.cluster_key.clone(),
            stats: Stats::default(),
            socket: Arc::new(socket),
            identity: RwLock::new(identity.clone()),
            active: RwLock::new(HashMap::new()),
            blocked: RwLock::new(HashSet::new()),
            actor: actor_tx.clone(),
            client,
            interval: options.interval,
            fanout: options.fanout,
            push_on_set: options.push_on_set,
        });

        let stop = CancellationToken::new();
        let (joined_tx, joined_rx) = watch::channel(false);
        let foca = Foca::new(
            identity,
            foca_config(&options),
            rand::make_rng::<StdRng>(),
            PostcardCodec,
        );
        let mut tasks = vec![
            tokio::spawn(membership_actor(
                shared.clone(),
                foca,
                actor_rx,
                actor_tx.clone(),
                joined_tx,
            )),
            tokio::spawn(receive(shared.clone())),
            tokio::spawn(anti_entropy(shared.clone(), stop.clone())),
            tokio::spawn(debug_log(shared.clone(), stop.clone())),
        ];
        if !options.join.is_empty() {
            tasks.push(tokio::spawn(join(
                shared.clone(),
                options.join.clone(),
                joined_rx,
                stop.clone(),
            )));
        }

        let http_stop = CancellationToken::new();
        let mut server_options = ServerOptions::new("gossip");
        server_options.token = options.token.clone();
        server_options.body_limit = 64 << 10;
        server_options.drain_timeout = Duration::from_secs(2);
        let routes = crate::http::router(shared.clone());
        let shutdown = http_stop.clone();
        let http = tokio::spawn(async move {
            let stopped = async move { shutdown.cancelled().await };
            if let Err(err) = server::run(routes, listener, stopped, server_options).await {
                tracing::error!(error = format!("{err:#}"), "gossip HTTP server failed");
            }
        });
        tracing::info!(%name, cluster = %swim_addr, http = %http_addr, "gossip node started");
        Ok(Self {
            shared,
            tasks,
            http,
            stop,
            http_stop,
            http_addr,
            swim_addr,
        })
    }

    /// The node's name.
    pub fn name(&self) -> Arc<str> {
        self.shared.name()
    }

    /// The node's cluster address.
    pub fn swim_addr(&self) -> SocketAddr {
        self.swim_addr
    }

    /// The node's HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The current version.
    pub fn get(&self) -> Versioned {
        self.shared.register.get()
    }

    /// Sets the value here and pushes it to every member.
    pub async fn set(&self, value: i64) -> Versioned {
        let version = self.shared.register.set(value);
        self.shared.push_to_all(&version).await;
        version
    }

    /// Sees every change of the value.
    pub fn subscribe(&self) -> watch::Receiver<Versioned> {
        self.shared.register.subscribe()
    }

    /// The membership as this node sees it, itself included.
    pub async fn members(&self) -> Vec<MemberView> {
        self.shared.members().await
    }

    /// What this node dropped or refused so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats()
    }

    /// Drops all traffic to and from these cluster addresses (HTTP anti-entropy to them
    /// too), as a network partition would. For tests and the bench.
    pub fn block(&self, peers: &[SocketAddr]) {
        self.shared
            .blocked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(peers.iter().copied());
    }

    /// Ends every [`Node::block`].
    pub fn heal(&self) {
        self.shared
            .blocked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Leaves the cluster gracefully: tells every member it is leaving (they record it as
    /// left, not failed, at once), lets SWIM spread it, then stops.
    pub async fn leave(self) {
        let me = self.shared.identity();
        if let Ok(payload) = postcard::to_allocvec(&me) {
            for member in self.shared.active_members() {
                self.shared.send(member.swim, Kind::Leave, &payload).await;
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.shared.actor.send(Input::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        tracing::info!(name = %me.name, "left the cluster");
        self.stop.cancel();
        self.http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.http).await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops at once without a word to the cluster, as a crashed process would: the others
    /// find out by probing.
    pub async fn kill(self) {
        self.stop.cancel();
        self.http.abort();
        let _ = self.http.await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// SWIM settings: memberlist's LAN profile with faster failure detection, sized for clusters
/// of up to a few hundred nodes.
fn foca_config(options: &NodeOptions) -> foca::Config {
    let mut config =
        foca::Config::new_lan(std::num::NonZeroU32::new(128).unwrap_or(std::num::NonZeroU32::MIN));
    config.probe_period = options.probe_period;
    // A probe waits 40 % of the period for a direct ack before asking others to probe.
    config.probe_rtt = options.probe_period.mul_f64(0.4);
    config.suspect_to_down_after = options.suspect_timeout;
    config.max_packet_size = NonZeroUsize::new(MAX_SWIM_PACKET).unwrap_or(NonZeroUsize::MIN);
    // After a partition heals, each side still thinks the other is down; talking to down
    // members every few seconds is what brings them back (they renew their identity).
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(3),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    config
}

/// Owns foca; see the module docs.
async fn membership_actor(
    shared: Arc<Shared>,
    mut foca: Foca<NodeId, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    mut inputs: mpsc::Receiver<Input>,
    to_self: mpsc::Sender<Input>,
    joined: watch::Sender<bool>,
) {
    let mut runtime = foca::AccumulatingRuntime::new();
    // Addresses of members that said they left, with the identity they left as.
    let mut left: HashMap<SocketAddr, u64> = HashMap::new();
    while let Some(input) = inputs.recv().await {
        let result = match input {
            Input::Swim(data) => foca.handle_data(&data, &mut runtime),
            Input::Timer(timer) => foca.handle_timer(timer, &mut runtime),
            Input::Announce(addr) => foca.announce(NodeId::placeholder(addr), &mut runtime),
            Input::MemberLeft(id) => {
                tracing::info!(member = ?id, "member is leaving");
                left.insert(id.swim, id.bump);
                foca.apply_many(std::iter::once(foca::Member::down(id)), true, &mut runtime)
            }
            Input::MembersRequest(from) => {
                send_membership(&shared, &foca, from).await;
                Ok(())
            }
            Input::Members(records) => foca.apply_many(
                // Our own record included: if the cluster suspects this node, foca refutes
                // it; if the cluster declared it down, foca renews the identity and rejoins.
                // Without this a suspicion whose SWIM updates missed the node could outlive
                // the timer of the member that raised it and stay unresolved.
                records.into_iter(),
                // The others already know these members.
                false,
                &mut runtime,
            ),
            Input::View(reply) => {
                let _ = reply.send(member_views(&foca, &left));
                Ok(())
            }
            Input::Leave(reply) => {
                let result = foca.leave_cluster(&mut runtime);
                // Leaving makes foca declare this identity down (Defunct): expected here.
                while runtime.to_notify().is_some() {}
                flush(&shared, &mut runtime, &to_self, &joined, &mut left).await;
                let _ = reply.send(());
                if let Err(err) = result {
                    tracing::debug!(error = %err, "leaving the cluster");
                }
                return;
            }
        };
        if let Err(err) = result {
            bump(&shared.stats.swim_errors);
            tracing::debug!(error = %err, "SWIM input refused");
        }
        flush(&shared, &mut runtime, &to_self, &joined, &mut left).await;
    }
}

/// Sends, schedules and reacts to what foca asked for.
async fn flush(
    shared: &Arc<Shared>,
    runtime: &mut foca::AccumulatingRuntime<NodeId>,
    to_self: &mpsc::Sender<Input>,
    joined: &watch::Sender<bool>,
    left: &mut HashMap<SocketAddr, u64>,
) {
    while let Some((to, data)) = runtime.to_send() {
        shared.send(to.swim, Kind::Swim, &data).await;
    }
    while let Some((after, timer)) = runtime.to_schedule() {
        let to_self = to_self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = to_self.send(Input::Timer(timer)).await;
        });
    }
    while let Some(notification) = runtime.to_notify() {
        match notification {
            foca::OwnedNotification::MemberUp(id) => {
                tracing::info!(member = ?id, "member up");
                if left.get(&id.swim).is_some_and(|&bump| bump < id.bump) {
                    left.remove(&id.swim);
                }
                shared
                    .active
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id.swim, id.clone());
                // A new member, or one back from a partition: give it our version now.
                shared.send_state(id.swim).await;
            }
            foca::OwnedNotification::MemberDown(id) => {
                let how = if left.get(&id.swim) == Some(&id.bump) {
                    "left"
                } else {
                    "failed"
                };
                tracing::info!(member = ?id, how, "member down");
                let mut active = shared
                    .active
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                if active.get(&id.swim) == Some(&id) {
                    active.remove(&id.swim);
                }
            }
            foca::OwnedNotification::Rename(old, new) => {
                let mut active = shared
                    .active
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                if active.get(&old.swim) == Some(&old) {
                    active.insert(new.swim, new);
                }
            }
            foca::OwnedNotification::Active => {
                tracing::info!("joined the cluster");
                let _ = joined.send(true);
                request_state(shared).await;
            }
            foca::OwnedNotification::Idle => {
                tracing::info!("no other member is reachable");
            }
            foca::OwnedNotification::Rejoin(id) => {
                tracing::info!(identity = ?id, "declared down by the cluster; rejoined as a new identity");
                *shared
                    .identity
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = id;
                request_state(shared).await;
            }
            foca::OwnedNotification::Defunct => {
                // Unreachable with renewable identities; logged in case it ever is.
                tracing::warn!("this node was declared down and cannot rejoin");
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

/// A node that just (re)joined asks a few members for the current version, and two of them
/// for the whole membership: SWIM's join answer carries only as many members as fit in one
/// packet, and the rest would otherwise trickle in over minutes in a large cluster.
async fn request_state(shared: &Shared) {
    let members = shared.active_members();
    let picked: Vec<&NodeId> = members.sample(&mut rand::rng(), 3).collect();
    for (i, member) in picked.into_iter().enumerate() {
        shared.send(member.swim, Kind::StateRequest, &[]).await;
        if i < 2 {
            shared.send(member.swim, Kind::MembersRequest, &[]).await;
        }
    }
}

/// Answers a membership request: every member's SWIM record (alive, suspect or down), in
/// datagrams that fit the packet size.
async fn send_membership(
    shared: &Shared,
    foca: &Foca<NodeId, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    to: SocketAddr,
) {
    let mut chunk: Vec<foca::Member<NodeId>> = Vec::new();
    let mut size = 0;
    // Down members too: a node that missed the news of a death would otherwise keep the
    // dead member alive until it probes it itself, which in a large cluster can take minutes.
    let records: Vec<(foca::Member<NodeId>, usize)> = foca
        .iter_membership_state()
        .filter_map(|m| {
            let len = postcard::to_allocvec(m).ok()?.len();
            Some((m.clone(), len))
        })
        .collect();
    for (record, len) in records {
        if size + len > MAX_SWIM_PACKET - 8 && !chunk.is_empty() {
            if let Ok(payload) = postcard::to_allocvec(&chunk) {
                shared.send(to, Kind::Members, &payload).await;
            }
            chunk.clear();
            size = 0;
        }
        chunk.push(record);
        size += len;
    }
    if !chunk.is_empty()
        && let Ok(payload) = postcard::to_allocvec(&chunk)
    {
        shared.send(to, Kind::Members, &payload).await;
    }
}

fn member_views(
    foca: &Foca<NodeId, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    left: &HashMap<SocketAddr, u64>,
) -> Vec<MemberView> {
    let me = foca.identity();
    let mut views = vec![MemberView {
        name: me.name.clone(),
        address: me.swim,
        http: me.http,
        state: MemberState::Alive,
        is_self: true,
    }];
    for member in foca.iter_membership_state() {
        let id = member.id();
        if id.swim == me.swim {
            // A previous life of this node (before a restart or a renewal), kept down by foca.
            continue;
        }
        let state = match member.state() {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down if left.get(&id.swim) == Some(&id.bump) => MemberState::Left,
            foca::State::Down => MemberState::Dead,
        };
        views.push(MemberView {
            name: id.name.clone(),
            address: id.swim,
            http: id.http,
            state,
            is_self: false,
        });
    }
    views.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    views
}

/// Reads the UDP socket until the node stops.
async fn receive(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                // ICMP errors surface here on some systems; nothing to do but go on.
                tracing::debug!(error = %err, "UDP receive failed");
                continue;
            }
        };
        if shared.is_blocked(&from) {
            continue;
        }
        bump(&shared.stats.packets_received);
        let (kind, payload) = match wire::open(&buf[..len], shared.key.as_ref()) {
            Ok(opened) => opened,
            Err(rejected) => {
                shared.reject(rejected, from);
                continue;
            }
        };
        match kind {
            Kind::Swim => {
                if shared
                    .actor
                    .try_send(Input::Swim(payload.to_vec()))
                    .is_err()
                {
                    // Overloaded: drop it, as the network could have. SWIM copes.
                    tracing::debug!("membership actor busy; dropped a SWIM packet");
                }
            }
            Kind::Update => match wire::decode_update(payload) {
                Ok(update) => {
                    let _ = shared.apply(&update.version, &update.sender);
                }
                Err(rejected) => shared.reject(rejected, from),
            },
            Kind::Leave => match postcard::from_bytes::<NodeId>(payload) {
                Ok(id) if id.swim == from || shared.key.is_some() => {
                    let _ = shared.actor.send(Input::MemberLeft(id)).await;
                }
                Ok(_) => shared.reject(Rejected::Malformed, from),
                Err(_) => shared.reject(Rejected::Malformed, from),
            },
            Kind::MembersRequest if payload.is_empty() => {
                let _ = shared.actor.try_send(Input::MembersRequest(from));
            }
            Kind::MembersRequest => shared.reject(Rejected::Malformed, from),
            Kind::Members => match postcard::from_bytes::<Vec<foca::Member<NodeId>>>(payload) {
                Ok(records) if records.len() <= MAX_SWIM_PACKET => {
                    let _ = shared.actor.try_send(Input::Members(records));
                }
                _ => shared.reject(Rejected::Malformed, from),
            },
            Kind::StateRequest if !payload.is_empty() => shared.reject(Rejected::Malformed, from),
            Kind::StateRequest => shared.send_state(from).await,
        }
    }
}

/// The seed's periodic push, kept as anti-entropy: the current version to `fanout` random
/// members over HTTP `/notify`, every `interval`.
async fn anti_entropy(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(shared.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let members = shared.active_members();
        // Membership anti-entropy too: SWIM spreads each change a bounded number of times,
        // and when many nodes join at once a few of those updates miss a node; comparing
        // notes with one random member each round repairs that within seconds.
        let peer = members.choose(&mut rand::rng()).map(|m| m.swim);
        if let Some(peer) = peer {
            shared.send(peer, Kind::MembersRequest, &[]).await;
        }
        let version = shared.register.get();
        let picked: Vec<NodeId> = members
            .sample(&mut rand::rng(), shared.fanout)
            .cloned()
            .collect();
        for member in picked {
            let shared = shared.clone();
            let version = version.clone();
            tokio::spawn(async move {
                if let Err(err) = notify(&shared, &member, &version).await {
                    tracing::debug!(member = ?member, error = format!("{err:#}"), "anti-entropy notify failed");
                }
            });
        }
    }
}

/// The `/notify` URL of a member, if its HTTP address may be reached. A member's addresses
/// come from the cluster's datagrams, which without a key anyone can forge: an address in
/// the blocklist of the address policy (cloud metadata, link-local, …) is never called.
fn notify_url(member: &NodeId, version: &Versioned) -> anyhow::Result<String> {
    if let Err(refused) = Policy::default().check(member.http.ip()) {
        metrics::counter!("shoal_gossip_members_refused_total").increment(1);
        anyhow::bail!("not calling member {}: {refused}", member.name);
    }
    Ok(format!(
        "http://{}/notify/{}/{}",
        member.http, version.value, version.generation
    ))
}

/// One `/notify` call, signed when the cluster has a key; a non-2xx answer is an error.
async fn notify(shared: &Shared, member: &NodeId, version: &Versioned) -> anyhow::Result<()> {
    let name = shared.name();
    let url = notify_url(member, version)?;
    let mut request = shared
        .client
        .post(&url)
        .query(&[("notifier", &*name), ("origin", &*version.origin)]);
    if let Some(key) = &shared.key {
        request = request.header(
            crate::http::SIGNATURE_HEADER,
            key.sign_notify(version.value, version.generation, &version.origin),
        );
    }
    let response = request.send().await.context("request failed")?;
    let status = response.status();
    // Read the body to the end so the connection can be reused.
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{status}: {}", body.trim());
    }
    Ok(())
}

/// Tries `--join` addresses until the node is in; says so if it starts a cluster of its
/// own, and keeps trying while it knows no other member.
async fn join(
    shared: Arc<Shared>,
    targets: Vec<SocketAddr>,
    mut joined: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let announce = |shared: &Arc<Shared>| {
        let shared = shared.clone();
        let targets = targets.clone();
        async move {
            for target in targets {
                let _ = shared.actor.send(Input::Announce(target)).await;
            }
        }
    };
    let started = Instant::now();
    while !*joined.borrow() && started.elapsed() < JOIN_PATIENCE {
        announce(&shared).await;
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tokio::time::timeout(Duration::from_millis(500), joined.wait_for(|j| *j)) => {}
        }
    }
    if !*joined.borrow() {
        tracing::warn!(join = ?targets, "could not join the cluster; starting a new one (will keep trying)");
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REJOIN_EVERY) => {}
        }
        if shared.active_members().is_empty() {
            announce(&shared).await;
        }
    }
}

/// The seed's 5-second report of members and state, at debug level.
async fn debug_log(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(DEBUG_LOG_EVERY) => {}
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let members: Vec<String> = shared
                .active_members()
                .iter()
                .map(|m| format!("{}@{}", m.name, m.swim))
                .collect();
            tracing::debug!(?members, state = %shared.register.get(), "members and state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(http: &str) -> NodeId {
        NodeId {
            name: "forged".to_owned(),
            swim: "127.0.0.1:7946".parse().expect("addr"),
            http: http.parse().expect("addr"),
            bump: 0,
        }
    }

    /// A member announced with a metadata or link-local HTTP address (one forged datagram
    /// does it without a cluster key) is never called; loopback and private ones are.
    #[test]
    fn members_are_called_only_at_addresses_the_policy_allows() {
        let version = Versioned {
            value: 7,
            generation: 1,
            origin: Arc::from("a"),
        };
        for refused in [
            "169.254.169.254:80",
            "[fe80::1]:80",
            "[::ffff:169.254.169.254]:80",
            "[2002:a9fe:a9fe::]:80",
            "0.0.0.0:80",
        ] {
            let err = notify_url(&member(refused), &version).expect_err(refused);
            assert!(
                err.to_string().contains("not calling member forged"),
                "{err}"
            );
        }
        for allowed in ["127.0.0.1:8081", "10.0.0.2:8081", "[::1]:8081"] {
            assert_eq!(
                notify_url(&member(allowed), &version).expect(allowed),
                format!("http://{allowed}/notify/7/1")
            );
        }
    }
}
