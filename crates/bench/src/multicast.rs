//! `shoal bench multicast`: fan-out throughput, delivery latency, loss and order of a multicast
//! hub, optionally next to a baseline that does the same deliveries without the hub.
//!
//! # Method
//!
//! The bench starts `--subscribers` HTTP servers of its own, each a minimal axum server on its
//! own `127.0.0.1:0` listener whose `POST /event` records the delivery and answers 200 at once.
//! Every message body starts with a 12-byte header: the message's sequence number (big-endian
//! `u64`, `0..--messages`) and the index of the task that sent it (big-endian `u32`); the rest
//! is padding up to `--size`. Per subscriber the bench keeps a bitset of the sequence numbers
//! received (so 100 subscribers × 10,000 messages cost 125 KB), the count of duplicate
//! arrivals, and per sender the highest sequence number received so far.
//!
//! A hub measurement registers every subscriber (once per run; they are kept alive every
//! 15 s), then `--senders` tasks, each on its own keep-alive connection, send the
//! `--messages` messages to `POST /sendMessage`, one at a time per task, each message taking
//! the next sequence number from a shared counter. Just before a message is sent, its send
//! time is written to a shared array indexed by sequence number; a subscriber receiving the
//! message for the first time records now − send time, in microseconds, in an HDR histogram.
//! The measurement reports:
//!
//! - **accepted msgs/s**: messages ÷ time until every send was answered 2xx (a `503` — the
//!   hub's backlog is full — is retried after 10 ms and counted as `busy`);
//! - **deliveries/s**: subscribers × messages ÷ time from the first send until the last
//!   subscriber received its last missing message;
//! - the p50, p99 and max delivery latency (first arrivals only);
//! - **lost**: deliveries that had not arrived when the `--timeout` expired (fails the run);
//! - **duplicates**: arrivals of a sequence number the subscriber already had (allowed, the
//!   hub delivers at least once, but reported);
//! - **out-of-order**: first arrivals of a message older than one the subscriber already
//!   received from the same sender (fails the run).
//!
//! The order check is per sender because only that order is known: the hub promises each
//! subscriber the order in which it *accepted* the messages, and senders race each other
//! between taking a sequence number and being accepted. A sender, though, sends its next
//! message only after the previous one was accepted, so its own messages are accepted in
//! increasing sequence order, and every subscriber must receive them in that order.
//!
//! # The baseline
//!
//! With `--baseline` the bench also does the hub's delivery work itself: every subscriber gets
//! a task and a keep-alive connection of its own that posts it the same bodies (messages
//! `0..N` in order, with `webhook-id` and `webhook-timestamp` headers like the hub's), one at
//! a time, all subscribers concurrently — exactly the requests the hub makes (one delivery in
//! flight per subscriber, acceptance order), minus the hub: no acceptance, no durable outbox,
//! no scheduling. Latency is measured the same way (from just before the request is written
//! until the subscriber sees it), deliveries/s too. It is therefore the ceiling for fan-out
//! on this machine, with this many subscribers, and `multicast/baseline deliveries/s` says
//! how much of it the hub reaches. (The baseline builds each body per delivery rather than
//! per message; that costs a 1 KiB copy per request, noise next to an HTTP exchange.)
//!
//! The latencies are not alike, though, and are not meant to be: a baseline task sends its
//! next message only once the previous one was delivered, so its latency is one HTTP hop,
//! whereas the hub accepts messages faster than it can fan them out, and its latency includes
//! the time a message waits in the hub's backlog behind the ones accepted before it. The hub's
//! p50 therefore grows with `--messages` when acceptance outpaces delivery.
//!
//! Like `shoal bench kv`, a run is `--rounds` rounds; with a baseline, each round measures
//! both back to back, the baseline first in odd rounds and last in even ones, and the ratio
//! reported is the median of the per-round ratios (see the crate docs for why). The
//! subscribers' records are reset before every measurement; the hub and the subscribers stay
//! up for the whole run. After several rounds the report also gives the medians.
//!
//! Without `--target` the hub runs in this process (`shoal_multicast::run`) with a fresh
//! temporary data directory and default settings, except that the subscriber, message size
//! and backlog limits are raised to fit the run. With `--target` the hub must be able to reach
//! the bench's subscribers on `127.0.0.1`, i.e. run on the same machine. Each subscriber
//! holds a listening socket plus one or two connections, so many subscribers need a high
//! open-file limit (`ulimit -n`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::serve::ListenerExt as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use shoal_core::config::{Token, parse_duration, parse_size};
use shoal_core::testkit::TestServer;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::client::{Target, exchange, fetch};
use crate::load::Stats;
use crate::report::{BASELINE, Spread, baseline_first, median_by, median_duration, ms, size_text};

/// The label of the hub's measurements.
pub const LABEL: &str = "multicast";

/// Bytes of a body before the padding: the sequence number (`u64`) and the sender (`u32`).
pub const HEADER_LEN: usize = 12;

/// Largest `--size` accepted.
const MAX_SIZE: u64 = 64 << 20;

/// How long the hub gets to answer its first `/healthz`.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// How long one registration or deregistration may take.
const SETUP_REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// How often the subscribers' registrations are renewed (the hub expires them after 2 min by
/// default).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

/// How often progress is printed while a measurement runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long the subscribers' servers get to close their connections at the end.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Pause before re-sending a message the hub answered 503 (backlog full).
const BUSY_PAUSE: Duration = Duration::from_millis(10);

/// Latency histograms, shared by subscribers `i % LATENCY_SHARDS`: fewer locks fought over
/// than one histogram, far less memory than one per subscriber.
const LATENCY_SHARDS: usize = 16;

/// Flags of `shoal bench multicast`.
#[derive(clap::Args, Clone, Debug)]
pub struct MulticastArgs {
    /// The hub to benchmark (`HOST:PORT` or `http://HOST:PORT`); it must reach the bench's
    /// subscribers on 127.0.0.1. Without it, a fresh hub is started in this process with a
    /// temporary data directory.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Subscribers the bench runs (one HTTP server each) and registers.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub subscribers: u32,

    /// Messages sent per measurement; each goes to every subscriber.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub messages: u64,

    /// Size of each message body (`256`, `1KiB`); at least 12 bytes (sequence number and
    /// sender index).
    #[arg(long, value_parser = parse_message_size, default_value = "1KiB")]
    pub size: usize,

    /// Concurrent tasks sending to the hub, each one message at a time on its own connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub senders: u32,

    /// Also measure the same deliveries posted straight to the subscribers (no hub), in every
    /// round next to the hub, and report the hub's deliveries/s relative to it.
    #[arg(long)]
    pub baseline: bool,

    /// How many times to measure. With --baseline each round measures the baseline and the hub
    /// back to back, alternating which goes first; the ratio is the median of the rounds'.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Longest one measurement may take, from its first send until every subscriber has every
    /// message; what has not arrived by then counts as lost and fails the run.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub timeout: Duration,

    /// Bearer token to send to --target.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,
}

impl MulticastArgs {
    /// Flags with every default (in-process hub, 100 subscribers, 10,000 messages of 1 KiB,
    /// 16 senders, one round, no baseline).
    pub fn new() -> Self {
        Self {
            target: None,
            subscribers: 100,
            messages: 10_000,
            size: 1024,
            senders: 16,
            baseline: false,
            rounds: 1,
            timeout: Duration::from_secs(300),
            token: None,
        }
    }
}

impl Default for MulticastArgs {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_message_size(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if n < HEADER_LEN as u64 {
        return Err(format!(
            "the message size must be at least {HEADER_LEN} bytes (sequence number and sender)"
        ));
    }
    if n > MAX_SIZE {
        return Err(format!(
            "the message size must be at most {}",
            size_text(MAX_SIZE)
        ));
    }
    usize::try_from(n).map_err(|_| format!("message size out of range: {s}"))
}

/// A message body: `seq` and `sender` big-endian, then padding up to `size` bytes (at least
/// [`HEADER_LEN`]).
pub(crate) fn encode_body(seq: u64, sender: u32, size: usize) -> Bytes {
    let size = size.max(HEADER_LEN);
    let mut body = BytesMut::with_capacity(size);
    body.put_u64(seq);
    body.put_u32(sender);
    body.extend((HEADER_LEN..size).map(|i| b'a' + (i % 26) as u8));
    body.freeze()
}

/// The sequence number and sender of a body made by [`encode_body`]; `None` when it is too
/// short to hold them.
pub(crate) fn decode_body(body: &[u8]) -> Option<(u64, u32)> {
    let seq = u64::from_be_bytes(body.get(0..8)?.try_into().ok()?);
    let sender = u32::from_be_bytes(body.get(8..HEADER_LEN)?.try_into().ok()?);
    Some((seq, sender))
}

/// How a delivery relates to what its subscriber had already received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The first arrival of this sequence number (possibly out of order).
    First,
    /// The sequence number had arrived before.
    Duplicate,
    /// Not a message of this measurement (sequence number or sender out of range).
    Invalid,
}

/// "No message from this sender yet" in [`Record::last`].
const NONE_YET: u64 = u64::MAX;

/// What one subscriber received during one measurement, and the order checker.
#[derive(Debug)]
pub(crate) struct Record {
    messages: u64,
    /// Bit `seq` is set once `seq` arrived.
    seen: Vec<u64>,
    /// Sequence numbers received at least once.
    distinct: u64,
    /// Arrivals of a sequence number already received.
    duplicates: u64,
    /// First arrivals of a message older than one already received from the same sender.
    out_of_order: u64,
    /// Bodies that were not messages of this measurement.
    invalid: u64,
    /// Per sender, the highest sequence number received from it ([`NONE_YET`] before any).
    last: Vec<u64>,
}

impl Record {
    /// Empty, for sequence numbers `0..messages` sent by `senders` senders.
    pub(crate) fn new(messages: u64, senders: usize) -> Self {
        let words = usize::try_from(messages.div_ceil(64)).unwrap_or(usize::MAX);
        Self {
            messages,
            seen: vec![0; words],
            distinct: 0,
            duplicates: 0,
            out_of_order: 0,
            invalid: 0,
            last: vec![NONE_YET; senders],
        }
    }

    /// Forgets everything received.
    fn reset(&mut self) {
        self.seen.fill(0);
        self.last.fill(NONE_YET);
        self.distinct = 0;
        self.duplicates = 0;
        self.out_of_order = 0;
        self.invalid = 0;
    }

    /// Records the arrival of message `seq` from `sender`.
    pub(crate) fn arrive(&mut self, seq: u64, sender: u32) -> Arrival {
        let (Ok(index), Ok(sender)) = (usize::try_from(seq), usize::try_from(sender)) else {
            self.invalid += 1;
            return Arrival::Invalid;
        };
        let bit = 1u64 << (index % 64);
        let (true, Some(word), Some(last)) = (
            seq < self.messages,
            self.seen.get_mut(index / 64),
            self.last.get_mut(sender),
        ) else {
            self.invalid += 1;
            return Arrival::Invalid;
        };
        if *word & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        *word |= bit;
        self.distinct += 1;
        if *last == NONE_YET || seq > *last {
            *last = seq;
        } else {
            self.out_of_order += 1;
        }
        Arrival::First
    }

    /// Records a body too short to be a message.
    fn malformed(&mut self) {
        self.invalid += 1;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One subscriber's state.
#[derive(Debug)]
struct Inbox {
    record: Mutex<Record>,
    /// Baseline only: when the request in flight to this subscriber was sent (µs since the
    /// board's epoch). One request at a time per subscriber, so one slot is enough.
    sent_us: AtomicU64,
}

/// Everything the subscribers record, shared by them and the senders.
#[derive(Debug)]
struct Board {
    epoch: Instant,
    messages: u64,
    senders: u32,
    /// Whether send times come from [`Inbox::sent_us`] (baseline) or [`Board::send_us`].
    baseline: AtomicBool,
    /// Hub only: when each message was sent, µs since `epoch`, by sequence number.
    send_us: Vec<AtomicU64>,
    /// Deliveries still missing (first arrivals).
    remaining: AtomicU64,
    /// When the latest first arrival happened, µs since `epoch`.
    last_arrival_us: AtomicU64,
    /// Woken when `remaining` reaches zero.
    done: Notify,
    inboxes: Vec<Inbox>,
    latency: Vec<Mutex<Stats>>,
}

impl Board {
    fn new(subscribers: usize, messages: u64, senders: u32) -> anyhow::Result<Self> {
        let slots = usize::try_from(messages).context("--messages out of range")?;
        let sender_count = usize::try_from(senders).context("--senders out of range")?;
        Ok(Self {
            epoch: Instant::now(),
            messages,
            senders,
            baseline: AtomicBool::new(false),
            send_us: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            remaining: AtomicU64::new(0),
            last_arrival_us: AtomicU64::new(0),
            done: Notify::new(),
            inboxes: (0..subscribers)
                .map(|_| Inbox {
                    record: Mutex::new(Record::new(messages, sender_count)),
                    sent_us: AtomicU64::new(0),
                })
                .collect(),
            latency: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(Stats::new()))
                .collect(),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Deliveries one measurement makes: subscribers × messages.
    fn expected(&self) -> u64 {
        (self.inboxes.len() as u64).saturating_mul(self.messages)
    }

    /// Forgets every arrival, before a measurement of the baseline or of the hub.
    fn reset(&self, baseline: bool) {
        self.baseline.store(baseline, Ordering::Release);
        for inbox in &self.inboxes {
            lock(&inbox.record).reset();
            inbox.sent_us.store(0, Ordering::Release);
        }
        for shard in &self.latency {
            *lock(shard) = Stats::new();
        }
        self.last_arrival_us.store(0, Ordering::Release);
        self.remaining.store(self.expected(), Ordering::Release);
    }

    /// Subscriber `index` received `body`.
    fn arrive(&self, index: usize, body: &[u8]) {
        let now = self.now_us();
        let Some(inbox) = self.inboxes.get(index) else {
            return;
        };
        let decoded = decode_body(body);
        let arrival = {
            let mut record = lock(&inbox.record);
            match decoded {
                Some((seq, sender)) => record.arrive(seq, sender),
                None => {
                    record.malformed();
                    Arrival::Invalid
                }
            }
        };
        let (Arrival::First, Some((seq, _))) = (arrival, decoded) else {
            return;
        };
        let sent = if self.baseline.load(Ordering::Acquire) {
            inbox.sent_us.load(Ordering::Acquire)
        } else {
            usize::try_from(seq)
                .ok()
                .and_then(|i| self.send_us.get(i))
                .map_or(now, |t| t.load(Ordering::Acquire))
        };
        if let Some(shard) = self.latency.get(index % LATENCY_SHARDS) {
            lock(shard).record(Duration::from_micros(now.saturating_sub(sent)));
        }
        self.last_arrival_us.fetch_max(now, Ordering::AcqRel);
        let before = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1));
        if before == Ok(1) {
            self.done.notify_waiters();
        }
    }

    /// Deliveries received so far in this measurement.
    fn delivered(&self) -> u64 {
        self.expected()
            .saturating_sub(self.remaining.load(Ordering::Acquire))
    }

    /// Waits until every delivery arrived or `deadline` passed; true when all arrived.
    async fn wait_for_deliveries(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.done.notified();
            if self.remaining.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.remaining.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// What the measurement that started at `started_us` got.
    fn snapshot(
        &self,
        label: &str,
        round: usize,
        started_us: u64,
        accepted: Option<Acceptance>,
    ) -> FanOut {
        let mut fan = FanOut {
            label: label.to_owned(),
            round,
            expected: self.expected(),
            delivered: 0,
            duplicates: 0,
            out_of_order: 0,
            invalid: 0,
            elapsed: Duration::ZERO,
            latency: Stats::new(),
            accepted,
        };
        for inbox in &self.inboxes {
            let record = lock(&inbox.record);
            fan.delivered += record.distinct;
            fan.duplicates += record.duplicates;
            fan.out_of_order += record.out_of_order;
            fan.invalid += record.invalid;
        }
        for shard in &self.latency {
            fan.latency.merge(&lock(shard));
        }
        let end = if fan.delivered >= fan.expected {
            self.last_arrival_us.load(Ordering::Acquire)
        } else {
            self.now_us()
        };
        fan.elapsed = Duration::from_micros(end.saturating_sub(started_us));
        fan
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints how many deliveries arrived, every [`PROGRESS_EVERY`], until dropped.
fn progress(board: &Arc<Board>, label: &'static str) -> AbortOnDrop {
    let board = Arc::clone(board);
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!(
                "bench: {label}: {} of {} deliveries so far",
                board.delivered(),
                board.expected()
            );
        }
    }))
}

/// The subscribers' HTTP servers; aborted when dropped, or stopped with [`Subscribers::stop`].
struct Subscribers {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    servers: JoinSet<()>,
}

#[derive(Clone)]
struct Route {
    board: Arc<Board>,
    index: usize,
}

async fn receive(State(route): State<Route>, body: Bytes) -> StatusCode {
    route.board.arrive(route.index, &body);
    StatusCode::OK
}

impl Subscribers {
    /// Starts one server per inbox of `board`, each on its own `127.0.0.1:0` listener.
    async fn start(board: &Arc<Board>) -> anyhow::Result<Self> {
        let mut servers = JoinSet::new();
        let (stop, _) = watch::channel(false);
        let mut addrs = Vec::with_capacity(board.inboxes.len());
        for index in 0..board.inboxes.len() {
            let listener = TcpListener::bind("127.0.0.1:0").await.with_context(|| {
                format!(
                    "cannot open the listener of subscriber {index} (with many subscribers, \
                     raise the open-file limit: ulimit -n)"
                )
            })?;
            addrs.push(listener.local_addr()?);
            let router = Router::new()
                .route("/event", axum::routing::post(receive))
                .layer(DefaultBodyLimit::disable())
                .with_state(Route {
                    board: Arc::clone(board),
                    index,
                });
            let listener = listener.tap_io(|stream| {
                // Without it, small answers can wait for a delayed ACK.
                let _ = stream.set_nodelay(true);
            });
            let mut stopped = stop.subscribe();
            servers.spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        // Also ends when the sender is dropped.
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
            });
        }
        Ok(Self {
            addrs,
            stop,
            servers,
        })
    }

    /// Stops every server: no new connections, open ones closed once idle; what is still
    /// open after [`STOP_GRACE`] is aborted.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while self.servers.join_next().await.is_some() {}
        })
        .await;
    }
}

/// The hub under test and the subscribers it knows.
#[derive(Debug)]
struct Hub {
    target: Target,
    /// `127.0.0.1:PORT` of every subscriber.
    addresses: Vec<String>,
}

impl Hub {
    /// Sends `method path?address=…` for every subscriber over one connection, failing on the
    /// first refusal.
    async fn for_each_subscriber(&self, method: Method, path: &str) -> anyhow::Result<()> {
        let mut sender = self.target.connect().await?;
        for address in &self.addresses {
            let request = self.target.request(
                method.clone(),
                &format!("{path}?address={address}"),
                Bytes::new(),
            )?;
            let (status, body) =
                tokio::time::timeout(SETUP_REQUEST_LIMIT, fetch(&mut sender, request))
                    .await
                    .with_context(|| format!("{method} {path} for {address} timed out"))?
                    .with_context(|| format!("{method} {path} for {address} failed"))?;
            if !status.is_success() {
                bail!(
                    "{method} {path} for {address} answered {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                );
            }
        }
        Ok(())
    }

    async fn register_all(&self) -> anyhow::Result<()> {
        self.for_each_subscriber(Method::POST, "/registerAndKeepAlive")
            .await
    }

    async fn deregister_all(&self) -> anyhow::Result<()> {
        self.for_each_subscriber(Method::DELETE, "/deregister")
            .await
    }

    /// Renews every registration every [`KEEPALIVE_EVERY`] until dropped.
    fn keep_alive(self: &Arc<Self>) -> AbortOnDrop {
        let hub = Arc::clone(self);
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = hub.register_all().await {
                    eprintln!("bench: warning: keep-alive failed: {e:#}");
                }
            }
        }))
    }
}

/// How the hub answered the sends of one measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Acceptance {
    /// Messages accepted (answered 2xx).
    pub messages: u64,
    /// From the first send until the last was answered.
    pub elapsed: Duration,
    /// `503` answers (backlog full), each retried.
    pub busy: u64,
}

impl Acceptance {
    /// Accepted messages per second.
    pub fn rate(&self) -> f64 {
        rate(self.messages, self.elapsed)
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// One measurement: every message to every subscriber, through the hub or (baseline) not.
#[derive(Clone, Debug)]
pub struct FanOut {
    /// `baseline` or `multicast`.
    pub label: String,
    /// The round it belongs to, from 1.
    pub round: usize,
    /// Deliveries due: subscribers × messages.
    pub expected: u64,
    /// Deliveries that arrived (distinct subscriber and sequence number pairs).
    pub delivered: u64,
    /// Arrivals of a message the subscriber already had.
    pub duplicates: u64,
    /// First arrivals older than a message already received from the same sender.
    pub out_of_order: u64,
    /// Bodies that were not messages of this measurement.
    pub invalid: u64,
    /// From the first send until the last delivery arrived (or until the timeout).
    pub elapsed: Duration,
    /// Delivery latency of first arrivals: arrival − send time.
    pub latency: Stats,
    /// The hub's acceptance; `None` for the baseline, and when the sends did not finish
    /// before the timeout.
    pub accepted: Option<Acceptance>,
}

impl FanOut {
    /// Deliveries that did not arrive.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// Deliveries per second.
    pub fn rate(&self) -> f64 {
        rate(self.delivered, self.elapsed)
    }

    /// Whether everything arrived, in order, and nothing else did.
    pub fn is_clean(&self) -> bool {
        self.lost() == 0 && self.out_of_order == 0 && self.invalid == 0
    }
}

/// The hub measurement: `--senders` tasks send every message, then the subscribers are
/// awaited.
async fn measure_hub(
    hub: &Hub,
    board: &Arc<Board>,
    size: usize,
    timeout: Duration,
    round: usize,
) -> anyhow::Result<FanOut> {
    board.reset(false);
    let _progress = progress(board, LABEL);
    let start = Instant::now();
    let started_us = board.now_us();
    let deadline = start + timeout;
    let next = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for sender in 0..board.senders {
        tasks.spawn(send_messages(
            hub.target.clone(),
            Arc::clone(board),
            Arc::clone(&next),
            Arc::clone(&busy),
            sender,
            size,
        ));
    }
    let accepted = match tokio::time::timeout_at(deadline, join_all(&mut tasks, "sender")).await {
        Ok(result) => {
            result?;
            Some(Acceptance {
                messages: board.messages,
                elapsed: start.elapsed(),
                busy: busy.load(Ordering::Relaxed),
            })
        }
        Err(_) => {
            tasks.abort_all();
            eprintln!(
                "bench: {LABEL}: the sends did not finish within {}",
                humantime::format_duration(timeout)
            );
            None
        }
    };
    board.wait_for_deliveries(deadline).await;
    Ok(board.snapshot(LABEL, round, started_us, accepted))
}

/// One sender: takes the next sequence number, sends it, waits for its acceptance; until
/// every message is sent.
async fn send_messages(
    target: Target,
    board: Arc<Board>,
    next: Arc<AtomicU64>,
    busy: Arc<AtomicU64>,
    sender: u32,
    size: usize,
) -> anyhow::Result<()> {
    let mut conn = target.connect().await?;
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = usize::try_from(seq).ok().and_then(|i| board.send_us.get(i)) else {
            return Ok(());
        };
        let body = encode_body(seq, sender, size);
        slot.store(board.now_us(), Ordering::Release);
        loop {
            let request = target.request(Method::POST, "/sendMessage", body.clone())?;
            let (status, answer) = fetch(&mut conn, request)
                .await
                .with_context(|| format!("POST /sendMessage (message {seq}) failed"))?;
            if status.is_success() {
                break;
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                busy.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(BUSY_PAUSE).await;
                continue;
            }
            bail!(
                "POST /sendMessage (message {seq}) answered {status}: {}",
                String::from_utf8_lossy(&answer).trim()
            );
        }
    }
}

/// The baseline measurement: one task per subscriber posts it every message, in order.
async fn measure_baseline(
    subscribers: &[Target],
    board: &Arc<Board>,
    size: usize,
    timeout: Duration,
    round: usize,
) -> anyhow::Result<FanOut> {
    board.reset(true);
    let _progress = progress(board, BASELINE);
    let started_us = board.now_us();
    let deadline = Instant::now() + timeout;
    let mut tasks = JoinSet::new();
    for (index, target) in subscribers.iter().enumerate() {
        tasks.spawn(post_events(target.clone(), Arc::clone(board), index, size));
    }
    match tokio::time::timeout_at(deadline, join_all(&mut tasks, "baseline")).await {
        Ok(result) => result?,
        Err(_) => tasks.abort_all(),
    }
    board.wait_for_deliveries(deadline).await;
    Ok(board.snapshot(BASELINE, round, started_us, None))
}

/// Posts messages `0..N` to subscriber `index`, one at a time, as the hub would deliver them
/// (sender `seq % --senders`, so each sender's messages go out in increasing order).
async fn post_events(
    target: Target,
    board: Arc<Board>,
    index: usize,
    size: usize,
) -> anyhow::Result<()> {
    let Some(inbox) = board.inboxes.get(index) else {
        bail!("no subscriber {index}");
    };
    let mut conn = target.connect().await?;
    let senders = u64::from(board.senders);
    for seq in 0..board.messages {
        let sender = u32::try_from(seq % senders).unwrap_or(0);
        let mut request = target.request(Method::POST, "/event", encode_body(seq, sender, size))?;
        let headers = request.headers_mut();
        headers.insert(
            "webhook-id",
            HeaderValue::try_from(format!("msg_bench{seq}"))?,
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        headers.insert("webhook-timestamp", HeaderValue::from(now));
        inbox.sent_us.store(board.now_us(), Ordering::Release);
        let status = exchange(&mut conn, request)
            .await
            .with_context(|| format!("POST /event to subscriber {index} failed"))?;
        if !status.is_success() {
            bail!("POST /event to subscriber {index} answered {status}");
        }
    }
    Ok(())
}

/// Waits for every task, failing on the first error (the rest are aborted when `tasks` is
/// dropped).
async fn join_all(tasks: &mut JoinSet<anyhow::Result<()>>, what: &str) -> anyhow::Result<()> {
    while let Some(joined) = tasks.join_next().await {
        joined.with_context(|| format!("a {what} task panicked"))??;
    }
    Ok(())
}

/// Everything one `shoal bench multicast` run measured, printed with `Display`.
#[derive(Clone, Debug)]
pub struct MulticastReport {
    /// The hub's base URL.
    pub target: String,
    /// `in-process` or `external`.
    pub target_kind: String,
    /// Subscribers.
    pub subscribers: usize,
    /// Messages per measurement.
    pub messages: u64,
    /// Bytes per message.
    pub size: usize,
    /// Concurrent senders to the hub.
    pub senders: usize,
    /// Rounds asked for (`--rounds`); fewer ran when a measurement failed.
    pub rounds: usize,
    /// Longest one measurement could take.
    pub timeout: Duration,
    /// Every measurement, in the order it ran.
    pub measurements: Vec<FanOut>,
}

/// One label over the rounds it was measured in.
#[derive(Clone, Debug, PartialEq)]
pub struct FanOutSummary {
    /// How many measurements went into it.
    pub rounds: usize,
    /// Median of the rounds' deliveries/s.
    pub rate: f64,
    /// Median of the rounds' median latencies.
    pub p50: Option<Duration>,
    /// Median of the rounds' 99th percentile latencies.
    pub p99: Option<Duration>,
    /// The slowest delivery of any round.
    pub max: Option<Duration>,
    /// Lost deliveries, summed over the rounds.
    pub lost: u64,
    /// Duplicates, summed.
    pub duplicates: u64,
    /// Order violations, summed.
    pub out_of_order: u64,
    /// Median of the rounds' accepted messages/s (the hub only).
    pub accepted_rate: Option<f64>,
}

impl MulticastReport {
    /// The measurements of `label`, by round.
    pub fn of<'a>(&'a self, label: &'a str) -> impl Iterator<Item = &'a FanOut> + 'a {
        self.measurements.iter().filter(move |m| m.label == label)
    }

    /// The rounds that ran.
    pub fn rounds_run(&self) -> usize {
        self.measurements.iter().map(|m| m.round).max().unwrap_or(0)
    }

    /// `label` (`baseline` or `multicast`) over every round.
    pub fn summary(&self, label: &str) -> FanOutSummary {
        let rows: Vec<&FanOut> = self.of(label).collect();
        let median = |values: Vec<f64>| median_by(values, f64::total_cmp, |a, b| (a + b) / 2.0);
        FanOutSummary {
            rounds: rows.len(),
            rate: median(rows.iter().map(|m| m.rate()).collect()).unwrap_or(0.0),
            p50: median_duration(rows.iter().map(|m| m.latency.quantile(0.5))),
            p99: median_duration(rows.iter().map(|m| m.latency.quantile(0.99))),
            max: rows.iter().filter_map(|m| m.latency.max()).max(),
            lost: rows.iter().map(|m| m.lost()).sum(),
            duplicates: rows.iter().map(|m| m.duplicates).sum(),
            out_of_order: rows.iter().map(|m| m.out_of_order).sum(),
            accepted_rate: median(
                rows.iter()
                    .filter_map(|m| m.accepted.map(|a| a.rate()))
                    .collect(),
            ),
        }
    }

    /// The hub's deliveries/s as a percentage of the baseline's in the same round, spread
    /// over the rounds; `None` without a round where both ran.
    pub fn ratio(&self) -> Option<Spread> {
        let ratios = self
            .of(LABEL)
            .filter_map(|m| {
                let base = self.of(BASELINE).find(|b| b.round == m.round)?.rate();
                (base > 0.0).then(|| 100.0 * m.rate() / base)
            })
            .collect();
        Spread::of(ratios)
    }

    /// Fails when nothing was measured, or when a measurement lost a delivery, delivered out
    /// of order or received something the bench did not send. Duplicates are allowed.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.measurements.is_empty() {
            bail!("nothing was measured");
        }
        for m in &self.measurements {
            let round = if self.rounds > 1 {
                format!(" in round {} of {}", m.round, self.rounds)
            } else {
                String::new()
            };
            let label = &m.label;
            if m.lost() > 0 {
                bail!(
                    "{label}: {} of {} deliveries had not arrived after {}{round}",
                    m.lost(),
                    m.expected,
                    humantime::format_duration(self.timeout)
                );
            }
            if m.out_of_order > 0 {
                bail!(
                    "{label}: {} deliveries arrived out of order{round}",
                    m.out_of_order
                );
            }
            if m.invalid > 0 {
                bail!(
                    "{label}: subscribers received {} bodies that were not this run's \
                     messages{round}",
                    m.invalid
                );
            }
        }
        Ok(())
    }
}

fn head(f: &mut fmt::Formatter<'_>, prefix: &str, label: &str) -> fmt::Result {
    write!(f, "{prefix:<6} {label:<9}")
}

impl fmt::Display for MulticastReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario multicast  target {} ({})  subscribers {}  messages {}  size {}  \
             senders {}  rounds {}",
            self.target,
            self.target_kind,
            self.subscribers,
            self.messages,
            size_text(self.size as u64),
            self.senders,
            self.rounds,
        )?;
        for m in &self.measurements {
            let prefix = format!("r{}", m.round);
            head(f, &prefix, &m.label)?;
            write!(
                f,
                " {:>9} of {} delivered in {:.2} s  {:>10.1} deliveries/s  p50 {:>7} ms  \
                 p99 {:>7} ms  max {:>7} ms  lost {}  duplicates {}  out-of-order {}",
                m.delivered,
                m.expected,
                m.elapsed.as_secs_f64(),
                m.rate(),
                ms(m.latency.quantile(0.5)),
                ms(m.latency.quantile(0.99)),
                ms(m.latency.max()),
                m.lost(),
                m.duplicates,
                m.out_of_order,
            )?;
            if m.invalid > 0 {
                write!(f, "  invalid {}", m.invalid)?;
            }
            writeln!(f)?;
            if m.label == LABEL {
                head(f, &prefix, &m.label)?;
                match m.accepted {
                    Some(a) => {
                        write!(
                            f,
                            " {:>9} accepted in {:.2} s  {:>10.1} msgs/s",
                            a.messages,
                            a.elapsed.as_secs_f64(),
                            a.rate()
                        )?;
                        if a.busy > 0 {
                            write!(f, "  busy (503, retried) {}", a.busy)?;
                        }
                        writeln!(f)?;
                    }
                    None => writeln!(f, " sends did not finish in time")?,
                }
            }
        }
        if self.rounds_run() > 1 {
            writeln!(
                f,
                "median of {} rounds (max: slowest of any round; lost, duplicates, \
                 out-of-order: summed)",
                self.rounds_run()
            )?;
            for label in [BASELINE, LABEL] {
                let s = self.summary(label);
                if s.rounds == 0 {
                    continue;
                }
                head(f, "median", label)?;
                writeln!(
                    f,
                    " {:>10.1} deliveries/s  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  \
                     lost {}  duplicates {}  out-of-order {}",
                    s.rate,
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max),
                    s.lost,
                    s.duplicates,
                    s.out_of_order,
                )?;
                if let Some(accepted) = s.accepted_rate {
                    head(f, "median", label)?;
                    writeln!(f, " {accepted:>10.1} msgs/s accepted")?;
                }
            }
        }
        if let Some(ratio) = self.ratio() {
            write!(f, "{LABEL}/{BASELINE} deliveries/s: {:.1}%", ratio.median)?;
            if self.of(BASELINE).count() > 1 {
                write!(
                    f,
                    " (median of per-round ratios, {:.1}–{:.1}%)",
                    ratio.min, ratio.max
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Runs the scenario and returns what it measured. Fails when a server cannot be started, a
/// registration or a send is refused, or the in-process hub stops; a measurement that lost
/// deliveries or broke their order still returns the report (see
/// [`MulticastReport::check`]), with the remaining rounds skipped.
pub async fn measure(args: &MulticastArgs) -> anyhow::Result<MulticastReport> {
    if args.timeout.is_zero() {
        bail!("--timeout must be more than zero");
    }
    let subscribers = usize::try_from(args.subscribers).context("--subscribers out of range")?;
    let rounds = usize::try_from(args.rounds).context("--rounds out of range")?;
    let board = Arc::new(Board::new(subscribers, args.messages, args.senders)?);
    let servers = Subscribers::start(&board).await?;
    let baseline_targets = if args.baseline {
        servers
            .addrs
            .iter()
            .map(|addr| Target::parse(&addr.to_string(), None))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };

    let mut data_dir = None;
    let mut server = None;
    let (target, target_kind) = match &args.target {
        Some(url) => (
            Target::parse(url, args.token.as_ref())?,
            "external".to_owned(),
        ),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("shoal-bench-multicast-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            let mut config = shoal_multicast::Config::with_data_dir(dir.path());
            let size = args.size as u64;
            config.max_subscribers = config.max_subscribers.max(subscribers);
            config.max_message_size = config.max_message_size.max(size);
            config.max_backlog = config
                .max_backlog
                .max(size.saturating_mul(args.messages).saturating_mul(2));
            data_dir = Some(dir);
            let started = TestServer::start(move |listener, shutdown| {
                shoal_multicast::run(config, listener, shutdown)
            })
            .await
            .context("cannot start the in-process multicast hub")?;
            let target = Target::parse(&started.base_url, None)?;
            server = Some(started);
            (target, "in-process".to_owned())
        }
    };
    let hub = Arc::new(Hub {
        target,
        addresses: servers.addrs.iter().map(ToString::to_string).collect(),
    });

    let mut result = run_rounds(
        args,
        rounds,
        &hub,
        &board,
        &baseline_targets,
        server.as_ref(),
    )
    .await;
    if let Some(server) = server {
        result = match (result, server.stop().await) {
            (Ok(m), Ok(())) => Ok(m),
            (Ok(_), Err(e)) => Err(e.context("the in-process multicast hub failed")),
            (Err(e), Err(server_error)) => {
                Err(server_error.context(format!("the in-process multicast hub failed ({e:#})")))
            }
            (Err(e), Ok(())) => Err(e),
        };
    }
    servers.stop().await;
    let measurements = result?;
    if let Some(dir) = data_dir {
        dir.close()
            .context("cannot remove the temporary data directory")?;
    }
    Ok(MulticastReport {
        target: hub.target.base_url.clone(),
        target_kind,
        subscribers,
        messages: args.messages,
        size: args.size,
        senders: board.senders as usize,
        rounds,
        timeout: args.timeout,
        measurements,
    })
}

/// Registers the subscribers, measures the rounds, deregisters them.
async fn run_rounds(
    args: &MulticastArgs,
    rounds: usize,
    hub: &Arc<Hub>,
    board: &Arc<Board>,
    baseline: &[Target],
    server: Option<&TestServer>,
) -> anyhow::Result<Vec<FanOut>> {
    hub.target.probe(PROBE_LIMIT).await?;
    eprintln!(
        "bench: registering {} subscribers with {}",
        hub.addresses.len(),
        hub.target.base_url
    );
    hub.register_all().await?;
    let keep_alive = hub.keep_alive();
    eprintln!(
        "bench: {rounds} round{} of {}{} messages of {} from {} senders to {} subscribers",
        if rounds == 1 { "" } else { "s" },
        if baseline.is_empty() {
            ""
        } else {
            "baseline and multicast, "
        },
        args.messages,
        size_text(args.size as u64),
        args.senders,
        hub.addresses.len(),
    );
    let result = measure_rounds(args, rounds, hub, board, baseline, server).await;
    drop(keep_alive);
    if let Err(e) = hub.deregister_all().await
        && server.is_none_or(|s| !s.is_finished())
    {
        eprintln!("bench: warning: deregistering the subscribers failed: {e:#}");
    }
    result
}

async fn measure_rounds(
    args: &MulticastArgs,
    rounds: usize,
    hub: &Hub,
    board: &Arc<Board>,
    baseline: &[Target],
    server: Option<&TestServer>,
) -> anyhow::Result<Vec<FanOut>> {
    let mut measurements = Vec::new();
    for round in 1..=rounds {
        let order: &[&str] = match (baseline.is_empty(), baseline_first(round)) {
            (true, _) => &[LABEL],
            (false, true) => &[BASELINE, LABEL],
            (false, false) => &[LABEL, BASELINE],
        };
        for &label in order {
            eprintln!("bench: round {round}/{rounds}: measuring {label}");
            let measured = if label == BASELINE {
                measure_baseline(baseline, board, args.size, args.timeout, round).await?
            } else {
                measure_hub(hub, board, args.size, args.timeout, round).await?
            };
            let clean = measured.is_clean();
            measurements.push(measured);
            if server.is_some_and(TestServer::is_finished) {
                bail!("the in-process multicast hub stopped during round {round}");
            }
            if !clean {
                eprintln!("bench: {label} failed its checks in round {round}; skipping the rest");
                return Ok(measurements);
            }
        }
    }
    Ok(measurements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        multicast: MulticastArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "bench",
            "--target",
            "127.0.0.1:3010",
            "--subscribers",
            "5",
            "--messages",
            "200",
            "--size",
            "256",
            "--senders",
            "3",
            "--baseline",
            "--rounds",
            "3",
            "--timeout",
            "30s",
        ])
        .expect("flags parse");
        let m = cli.multicast;
        assert_eq!(m.target.as_deref(), Some("127.0.0.1:3010"));
        assert_eq!(
            (m.subscribers, m.messages, m.size, m.senders, m.rounds),
            (5, 200, 256, 3, 3)
        );
        assert!(m.baseline);
        assert_eq!(m.timeout, Duration::from_secs(30));

        let d = Cli::try_parse_from(["bench"])
            .expect("defaults parse")
            .multicast;
        let n = MulticastArgs::new();
        assert_eq!(
            (
                d.subscribers,
                d.messages,
                d.size,
                d.senders,
                d.rounds,
                d.timeout
            ),
            (
                n.subscribers,
                n.messages,
                n.size,
                n.senders,
                n.rounds,
                n.timeout
            )
        );
        assert_eq!(
            (d.subscribers, d.messages, d.size, d.senders),
            (100, 10_000, 1024, 16)
        );
        assert!(!d.baseline);

        assert!(Cli::try_parse_from(["bench", "--size", "11"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--size", "1GiB"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--subscribers", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--messages", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--senders", "0"]).is_err());
        assert_eq!(
            Cli::try_parse_from(["bench", "--size", "12"])
                .expect("12 bytes")
                .multicast
                .size,
            12
        );
    }

    #[test]
    fn bodies_carry_sequence_and_sender() {
        let body = encode_body(0x0102_0304_0506_0708, 0x0A0B_0C0D, 256);
        assert_eq!(body.len(), 256);
        assert_eq!(&body[..12], &[1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]);
        assert!(body[12..].iter().all(u8::is_ascii_lowercase));
        assert_eq!(
            decode_body(&body),
            Some((0x0102_0304_0506_0708, 0x0A0B_0C0D))
        );

        // Never shorter than the header.
        let short = encode_body(u64::MAX, 7, 3);
        assert_eq!(short.len(), HEADER_LEN);
        assert_eq!(decode_body(&short), Some((u64::MAX, 7)));

        assert_eq!(decode_body(&body[..11]), None);
        assert_eq!(decode_body(b""), None);
    }

    #[test]
    fn order_checker_counts_duplicates_and_per_sender_inversions() {
        let mut r = Record::new(100, 2);
        // Senders interleave freely; each one's own messages rise.
        for (seq, sender) in [(0, 0), (2, 1), (1, 0), (3, 0), (5, 1)] {
            assert_eq!(r.arrive(seq, sender), Arrival::First);
        }
        assert_eq!((r.distinct, r.duplicates, r.out_of_order), (5, 0, 0));
        // A redelivery is a duplicate, not an inversion.
        assert_eq!(r.arrive(2, 1), Arrival::Duplicate);
        assert_eq!(r.arrive(0, 0), Arrival::Duplicate);
        assert_eq!((r.distinct, r.duplicates, r.out_of_order), (5, 2, 0));
        // Sender 1's message 4 arrives after its message 5: an inversion.
        assert_eq!(r.arrive(4, 1), Arrival::First);
        assert_eq!((r.distinct, r.out_of_order), (6, 1));
        // The highest stays 5, so 5 arriving again is a duplicate and 6 is in order.
        assert_eq!(r.arrive(6, 1), Arrival::First);
        assert_eq!(r.out_of_order, 1);
        // Out of range: sequence numbers past the end, unknown senders.
        assert_eq!(r.arrive(100, 0), Arrival::Invalid);
        assert_eq!(r.arrive(64, 2), Arrival::Invalid);
        assert_eq!(r.arrive(u64::MAX, 0), Arrival::Invalid);
        assert_eq!((r.invalid, r.distinct), (3, 7));
        // Bits past 64 work (second word).
        assert_eq!(r.arrive(99, 0), Arrival::First);
        assert_eq!(r.arrive(99, 0), Arrival::Duplicate);

        r.reset();
        assert_eq!(
            (r.distinct, r.duplicates, r.out_of_order, r.invalid),
            (0, 0, 0, 0)
        );
        assert_eq!(r.arrive(2, 1), Arrival::First);
        assert_eq!(r.arrive(0, 0), Arrival::First);
    }

    #[tokio::test]
    async fn the_board_tracks_completion_and_latency() {
        let board = Board::new(2, 3, 1).expect("board");
        board.reset(false);
        for seq in 0..3 {
            if let Some(slot) = board.send_us.get(seq as usize) {
                slot.store(board.now_us(), Ordering::Release);
            }
        }
        board.arrive(0, &encode_body(0, 0, 12));
        board.arrive(0, &encode_body(1, 0, 12));
        board.arrive(0, &encode_body(2, 0, 12));
        board.arrive(1, &encode_body(1, 0, 12));
        board.arrive(1, &encode_body(1, 0, 12));
        board.arrive(1, b"short");
        let early = Instant::now() + Duration::from_millis(10);
        assert!(!board.wait_for_deliveries(early).await);
        assert_eq!(board.delivered(), 4);
        board.arrive(1, &encode_body(0, 0, 12));
        board.arrive(1, &encode_body(2, 0, 12));
        let late = Instant::now() + Duration::from_secs(5);
        assert!(board.wait_for_deliveries(late).await);
        let fan = board.snapshot(LABEL, 1, 0, None);
        assert_eq!((fan.expected, fan.delivered, fan.lost()), (6, 6, 0));
        assert_eq!((fan.duplicates, fan.out_of_order, fan.invalid), (1, 1, 1));
        assert_eq!(fan.latency.ok(), 6);
        assert!(!fan.is_clean(), "one inversion and one invalid body");

        board.reset(true);
        assert_eq!(board.delivered(), 0);
        let fan = board.snapshot(BASELINE, 1, 0, None);
        assert_eq!((fan.delivered, fan.duplicates, fan.latency.ok()), (0, 0, 0));
    }

    fn fan(label: &str, round: usize, delivered: u64, secs: u64) -> FanOut {
        let mut latency = Stats::new();
        latency.record(Duration::from_millis(2));
        FanOut {
            label: label.into(),
            round,
            expected: 1000,
            delivered,
            duplicates: 0,
            out_of_order: 0,
            invalid: 0,
            elapsed: Duration::from_secs(secs),
            latency,
            accepted: (label == LABEL).then_some(Acceptance {
                messages: 100,
                elapsed: Duration::from_secs(1),
                busy: 0,
            }),
        }
    }

    fn report(measurements: Vec<FanOut>, rounds: usize) -> MulticastReport {
        MulticastReport {
            target: "http://127.0.0.1:4000".into(),
            target_kind: "in-process".into(),
            subscribers: 10,
            messages: 100,
            size: 1024,
            senders: 4,
            rounds,
            timeout: Duration::from_secs(60),
            measurements,
        }
    }

    #[test]
    fn reports_rates_and_the_ratio() {
        let r = report(
            vec![
                fan(BASELINE, 1, 1000, 1),
                fan(LABEL, 1, 1000, 4),
                fan(LABEL, 2, 1000, 2),
                fan(BASELINE, 2, 1000, 1),
                fan(BASELINE, 3, 1000, 2),
                fan(LABEL, 3, 1000, 5),
            ],
            3,
        );
        r.check().expect("clean");
        // Per round: 25%, 50%, 40%.
        let ratio = r.ratio().expect("ratio");
        assert_eq!((ratio.median, ratio.min, ratio.max), (40.0, 25.0, 50.0));
        let text = r.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "scenario multicast  target http://127.0.0.1:4000 (in-process)  subscribers 10  \
             messages 100  size 1KiB  senders 4  rounds 3"
        );
        assert!(
            lines[1].starts_with("r1     baseline       1000 of 1000 delivered in 1.00 s"),
            "{text}"
        );
        assert!(
            lines[1].contains("    1000.0 deliveries/s  p50    2.00 ms"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("lost 0  duplicates 0  out-of-order 0"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("r1     multicast      1000 of 1000"),
            "{text}"
        );
        assert!(
            lines[3]
                .starts_with("r1     multicast       100 accepted in 1.00 s       100.0 msgs/s"),
            "{text}"
        );
        assert!(text.contains("\nmedian of 3 rounds"), "{text}");
        assert!(
            text.contains("\nmedian multicast      250.0 deliveries/s"),
            "{text}"
        );
        assert!(
            text.contains("\nmedian multicast      100.0 msgs/s accepted"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "multicast/baseline deliveries/s: 40.0% (median of per-round ratios, 25.0–50.0%)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn losses_and_inversions_fail_the_check() {
        let mut lossy = fan(LABEL, 1, 990, 1);
        lossy.accepted = None;
        let r = report(vec![fan(BASELINE, 1, 1000, 1), lossy], 1);
        let err = r.check().expect_err("lost");
        assert_eq!(
            err.to_string(),
            "multicast: 10 of 1000 deliveries had not arrived after 1m"
        );
        let text = r.to_string();
        assert!(text.contains("lost 10"), "{text}");
        assert!(
            text.contains("r1     multicast sends did not finish in time"),
            "{text}"
        );
        assert!(!text.contains("median of"), "{text}");
        assert!(
            text.ends_with("multicast/baseline deliveries/s: 99.0%\n"),
            "{text}"
        );

        let mut swapped = fan(LABEL, 2, 1000, 1);
        swapped.out_of_order = 2;
        swapped.duplicates = 5;
        let r = report(vec![fan(LABEL, 1, 1000, 1), swapped], 2);
        let err = r.check().expect_err("out of order");
        assert_eq!(
            err.to_string(),
            "multicast: 2 deliveries arrived out of order in round 2 of 2"
        );

        let mut dup = fan(LABEL, 1, 1000, 1);
        dup.duplicates = 7;
        report(vec![dup], 1)
            .check()
            .expect("duplicates are allowed");
        assert!(report(Vec::new(), 1).check().is_err());
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(size_text(1024), "1KiB");
        assert_eq!(size_text(3 << 20), "3MiB");
        assert_eq!(size_text(256), "256 B");
        assert_eq!(size_text(1500), "1500 B");
    }

    #[test]
    fn rounds_alternate_which_side_goes_first() {
        let firsts: Vec<bool> = (1..=4).map(baseline_first).collect();
        assert_eq!(firsts, [true, false, true, false]);
    }
}
