//! The hub: accepts messages durably and delivers them to every subscriber registered at
//! acceptance, in order, at least once.
//!
//! One writer task owns every change (sends, registrations, keep-alives, expiries, cursor
//! advances, failures) and commits whatever is waiting as one transaction (group commit) before
//! anyone is answered. Each subscriber has its own delivery task: it walks the messages after
//! its cursor one at a time (so order holds), retries with exponential backoff and jitter, and
//! advances its cursor; cursors are persisted in coalesced batches, so a crash re-delivers at
//! most the messages since the last flush (at-least-once, deduplicated by `webhook-id`).
//! A global semaphore bounds requests in flight; a slow subscriber only ever holds up itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::guard::{Guard, GuardError};
use crate::signing::SigningSecret;
use crate::store::{Batch, FailureRow, MessageRow, Store, SubscriberRow};

/// How the hub behaves; built from the command line.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// A subscriber not kept alive for this long is removed.
    pub expire: Duration,
    /// Time allowed for one delivery request.
    pub delivery_timeout: Duration,
    /// Attempts per delivery before it is recorded as failed.
    pub max_attempts: u32,
    /// Age of a message after which a failing delivery is no longer retried.
    pub max_retry_age: Duration,
    /// Delay before the first retry; doubles per attempt.
    pub retry_initial: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// Delivery requests in flight across all subscribers.
    pub max_in_flight: usize,
    /// Most subscribers.
    pub max_subscribers: usize,
    /// Most bytes of accepted, undelivered messages held; beyond it sends get 503.
    pub max_backlog_bytes: u64,
    /// A subscriber with more messages pending than this is removed (with a failure record),
    /// so one dead subscriber cannot fill the backlog that everyone shares.
    pub max_pending: u64,
    /// How long idempotency keys are remembered.
    pub idempotency_retention: Duration,
    /// How long final failures are kept for `/deliveries`.
    pub failure_retention: Duration,
    /// How often delivery cursors are persisted.
    pub flush_interval: Duration,
    /// Signs deliveries (Standard Webhooks) when set.
    pub signing: Option<SigningSecret>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            expire: Duration::from_secs(120),
            delivery_timeout: Duration::from_secs(10),
            max_attempts: 20,
            max_retry_age: Duration::from_secs(24 * 3600),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_in_flight: 512,
            max_subscribers: 10_000,
            max_backlog_bytes: 1 << 30,
            max_pending: 100_000,
            idempotency_retention: Duration::from_secs(24 * 3600),
            failure_retention: Duration::from_secs(7 * 24 * 3600),
            flush_interval: Duration::from_millis(100),
            signing: None,
        }
    }
}

/// Why the hub refused a request.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A limit (subscribers, backlog) is reached.
    #[error("{0}")]
    Full(String),
    /// The backlog of undelivered messages is at its limit; try again later.
    #[error("{0}")]
    Busy(String),
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Closed,
    /// The database failed; nothing was written.
    #[error("storage failure: {0}")]
    Storage(String),
}

/// What a send was answered with.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The message's webhook id.
    pub uid: String,
    /// Its position in acceptance order.
    pub id: u64,
    /// How many subscribers it goes to.
    pub recipients: usize,
    /// True when an earlier send with the same idempotency key was accepted instead.
    pub duplicate: bool,
}

/// One delivery outcome, kept in memory for `/deliveries`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// The message id.
    pub message_id: u64,
    /// Its webhook id.
    pub uid: String,
    /// `delivered`, `retrying` or `failed`.
    pub result: &'static str,
    /// Attempts so far.
    pub attempts: u32,
    /// The subscriber's HTTP status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// When, RFC 3339.
    pub at: String,
}

/// An outcome as recorded on the delivery path: the timestamp is formatted only when shown.
#[derive(Clone, Debug)]
struct Recorded {
    message_id: u64,
    uid: String,
    result: &'static str,
    attempts: u32,
    status: Option<u16>,
    error: Option<String>,
    at: i64,
}

impl Recorded {
    fn view(&self) -> Outcome {
        Outcome {
            message_id: self.message_id,
            uid: self.uid.clone(),
            result: self.result,
            attempts: self.attempts,
            status: self.status,
            error: self.error.clone(),
            at: rfc3339(self.at),
        }
    }
}

/// A subscriber's delivery progress, shared between its task, the writer and the API.
#[derive(Debug, Default)]
struct Progress {
    delivered_through: AtomicU64,
    persisted_through: AtomicU64,
    recent: Mutex<VecDeque<Recorded>>,
}

const RECENT_OUTCOMES: usize = 100;

impl Progress {
    fn record(&self, outcome: Recorded) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_OUTCOMES {
            recent.pop_front();
        }
        recent.push_back(outcome);
    }
}

/// A registered subscriber.
#[derive(Debug)]
struct Subscriber {
    row: SubscriberRow,
    /// When it is removed without another keep-alive (unix ms).
    deadline: i64,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

/// A subscriber as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubscriberView {
    /// `host:port`.
    pub address: String,
    /// First registration, RFC 3339.
    pub registered_at: String,
    /// Last keep-alive, RFC 3339.
    pub last_keepalive: String,
    /// When it will be removed without another keep-alive, RFC 3339.
    pub expires_at: String,
    /// Last message finished for it.
    pub delivered_through: u64,
    /// Messages accepted for it and not finished yet.
    pub pending: u64,
    /// Recent outcomes, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Outcome>,
}

enum Command {
    Send {
        body: Bytes,
        content_type: Option<String>,
        key: Option<String>,
        reply: oneshot::Sender<Result<Accepted, HubError>>,
    },
    Register {
        address: String,
        reply: oneshot::Sender<Result<(), HubError>>,
    },
    Deregister {
        address: String,
        reply: oneshot::Sender<Result<(), HubError>>,
    },
    /// A final failure; answered once it is durable, so the cursor moves past the message
    /// only after the record exists.
    Failure(FailureRow, oneshot::Sender<bool>),
}

struct Shared {
    options: HubOptions,
    store: Store,
    guard: Arc<Guard>,
    commands: mpsc::Sender<Command>,
    delivered: metrics::Counter,
    failed: metrics::Counter,
    retried: metrics::Counter,
    subscribers: RwLock<BTreeMap<String, Subscriber>>,
    /// Accepted messages some subscriber has not finished yet.
    messages: RwLock<BTreeMap<u64, Arc<MessageRow>>>,
    backlog_bytes: AtomicU64,
    /// The id of the last accepted message; delivery tasks wait on it.
    accepted: watch::Sender<u64>,
    in_flight: Semaphore,
    shutdown: CancellationToken,
}

/// A cheap-to-clone handle on the hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// Wall-clock unix milliseconds (stored, so it must mean the same after a restart).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339(ms: i64) -> String {
    // RFC 3339 ends at year 9999; a far-future deadline (a huge --expire) is shown as that.
    const MAX: i64 = 253_402_300_799_999;
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX).cast_unsigned());
    humantime::format_rfc3339_millis(t).to_string()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const MAX_BATCH: usize = 1024;

/// Idempotency keys remembered at most; the oldest tenth is forgotten when full (a retry of a
/// forgotten key is accepted again: at worst a duplicate, which at-least-once allows).
const MAX_IDEMPOTENCY_KEYS: usize = 1_000_000;

impl Hub {
    /// Loads the state from `store`, starts the writer and one delivery task per subscriber.
    /// Everything stops when `shutdown` is cancelled.
    pub async fn start(
        store: Store,
        guard: Arc<Guard>,
        options: HubOptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let since = now_ms().saturating_sub(millis(options.idempotency_retention));
        let loaded = store.load(since).await?;
        let (commands, receiver) = mpsc::channel(MAX_BATCH);
        let last_accepted = loaded.next_message_id.saturating_sub(1);
        let (accepted, _) = watch::channel(last_accepted);
        let mut messages = BTreeMap::new();
        let mut backlog = 0u64;
        for m in loaded.messages {
            backlog += m.body.len() as u64;
            messages.insert(m.id, Arc::new(m));
        }
        let shared = Arc::new(Shared {
            in_flight: Semaphore::new(options.max_in_flight.max(1)),
            options,
            store,
            guard,
            commands,
            delivered: metrics::counter!("shoal_multicast_deliveries_total", "result" => "delivered"),
            failed: metrics::counter!("shoal_multicast_deliveries_total", "result" => "failed"),
            retried: metrics::counter!("shoal_multicast_delivery_retries_total"),
            subscribers: RwLock::new(BTreeMap::new()),
            messages: RwLock::new(messages),
            backlog_bytes: AtomicU64::new(backlog),
            accepted,
            shutdown,
        });
        let hub = Self { shared };
        let mut writer = Writer {
            shared: hub.shared.clone(),
            commands: receiver,
            expiries: BTreeSet::new(),
            idempotency: loaded
                .idempotency
                .into_iter()
                .map(|(k, id, uid, at)| (k, (id, uid, at)))
                .collect(),
            next_message_id: loaded.next_message_id.max(1),
        };
        // Keep-alive clocks continue across a restart, but a subscriber whose time ran out
        // while the hub was down gets one expiry period from now: it could not keep alive, and
        // the messages accepted for it must not be dropped because the hub was away.
        let started = now_ms();
        let expire = millis(hub.shared.options.expire);
        for row in loaded.subscribers {
            let natural = row.keepalive_at.saturating_add(expire);
            let deadline = if natural <= started {
                started.saturating_add(expire)
            } else {
                natural
            };
            writer.add_subscriber(row, deadline);
        }
        tokio::spawn(writer.run());
        Ok(hub)
    }

    /// Accepts a message: durable and queued for every current subscriber when this returns.
    pub async fn send(
        &self,
        body: Bytes,
        content_type: Option<String>,
        key: Option<String>,
    ) -> Result<Accepted, HubError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Send {
            body,
            content_type,
            key,
            reply,
        })
        .await?;
        rx.await.map_err(|_| HubError::Closed)?
    }

    /// Registers `address` or refreshes its keep-alive; durable when this returns.
    pub async fn register(&self, address: &Address) -> Result<(), HubError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Register {
            address: address.to_string(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| HubError::Closed)?
    }

    /// Removes `address` (a no-op when it is not registered).
    pub async fn deregister(&self, address: &Address) -> Result<(), HubError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Deregister {
            address: address.to_string(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| HubError::Closed)?
    }

    async fn command(&self, command: Command) -> Result<(), HubError> {
        self.shared
            .commands
            .send(command)
            .await
            .map_err(|_| HubError::Closed)
    }

    /// The guard deliveries go through (registration checks addresses with it too).
    pub fn guard(&self) -> &Guard {
        &self.shared.guard
    }

    /// How long a subscriber stays registered without a keep-alive, in milliseconds.
    pub fn expire_ms(&self) -> u64 {
        u64::try_from(self.shared.options.expire.as_millis()).unwrap_or(u64::MAX)
    }

    /// The durable store (for health checks and failure history).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The current subscribers, sorted by address; with recent outcomes when asked.
    pub fn subscribers(&self, with_recent: bool) -> Vec<SubscriberView> {
        let last = *self.shared.accepted.borrow();
        let subscribers = self
            .shared
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        subscribers
            .values()
            .map(|s| {
                let through = s.progress.delivered_through.load(Ordering::Acquire);
                SubscriberView {
                    address: s.row.address.clone(),
                    registered_at: rfc3339(s.row.registered_at),
                    last_keepalive: rfc3339(s.row.keepalive_at),
                    expires_at: rfc3339(s.deadline),
                    delivered_through: through,
                    pending: last.saturating_sub(through),
                    recent: if with_recent {
                        s.progress
                            .recent
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .iter()
                            .map(Recorded::view)
                            .collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect()
    }
}

struct Writer {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    /// (keep-alive deadline, address); stale entries are checked when due.
    expiries: BTreeSet<(i64, String)>,
    /// Idempotency key → (message id, uid, accepted at).
    idempotency: HashMap<String, (u64, String, i64)>,
    next_message_id: u64,
}

enum Reply {
    Recorded(oneshot::Sender<bool>),
    Sent(oneshot::Sender<Result<Accepted, HubError>>, Accepted),
    Done(oneshot::Sender<Result<(), HubError>>),
    Refused(oneshot::Sender<Result<(), HubError>>, HubError),
    SendRefused(oneshot::Sender<Result<Accepted, HubError>>, HubError),
}

impl Writer {
    fn add_subscriber(&mut self, row: SubscriberRow, deadline: i64) {
        let progress = Arc::new(Progress::default());
        progress
            .delivered_through
            .store(row.delivered_through, Ordering::Release);
        progress
            .persisted_through
            .store(row.delivered_through, Ordering::Release);
        let cancel = self.shared.shutdown.child_token();
        self.expiries.insert((deadline, row.address.clone()));
        match Address::from_str(&row.address) {
            Ok(address) => {
                tokio::spawn(deliver_loop(
                    self.shared.clone(),
                    address,
                    progress.clone(),
                    cancel.clone(),
                ));
            }
            Err(err) => {
                // Kept out of memory too: it would hold back garbage collection forever.
                tracing::error!(address = %row.address, error = %err, "stored address no longer parses; ignoring it");
                return;
            }
        }
        let replaced = self
            .shared
            .subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                row.address.clone(),
                Subscriber {
                    row,
                    deadline,
                    progress,
                    cancel,
                },
            );
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
    }

    async fn run(mut self) {
        let mut flush = tokio::time::interval(self.shared.options.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_gc = Instant::now();
        loop {
            let next_expiry = self.next_expiry();
            let mut commands = Vec::new();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(c) => commands.push(c),
                    None => break,
                },
                () = tokio::time::sleep_until(next_expiry) => {}
                _ = flush.tick() => {}
                () = self.shared.shutdown.cancelled() => {
                    // Persist how far deliveries got, so a restart re-sends as little as possible.
                    self.process(Vec::new()).await;
                    break;
                }
            }
            while commands.len() < MAX_BATCH {
                match self.commands.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            self.process(commands).await;
            if last_gc.elapsed() > Duration::from_secs(5) {
                last_gc = Instant::now();
                self.collect_garbage().await;
            }
        }
    }

    fn next_expiry(&self) -> Instant {
        match self.expiries.first() {
            Some((at, _)) => {
                let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                Instant::now() + Duration::from_millis(wait)
            }
            None => Instant::now() + Duration::from_secs(3600),
        }
    }

    /// Plans the commands and due expiries into one batch, commits it, applies it, answers.
    async fn process(&mut self, commands: Vec<Command>) {
        let now = now_ms();
        let options = &self.shared.options;
        let expire = millis(options.expire);
        let mut batch = Batch {
            next_message_id: self.next_message_id,
            ..Batch::default()
        };
        let mut replies = Vec::new();
        let mut new_messages: Vec<Arc<MessageRow>> = Vec::new();
        // Per address, the last word of this batch: rows to write (one per address, as one
        // multi-row upsert requires), subscribers new in this batch, keep-alives, removals.
        let mut upserts: BTreeMap<String, SubscriberRow> = BTreeMap::new();
        let mut added: BTreeMap<String, SubscriberRow> = BTreeMap::new();
        let mut kept_alive: BTreeSet<String> = BTreeSet::new();
        let mut removed: BTreeSet<String> = BTreeSet::new();
        let mut backlog = self.shared.backlog_bytes.load(Ordering::Acquire);
        let (mut count, registered): (usize, BTreeSet<String>) = {
            let subs = self
                .shared
                .subscribers
                .read()
                .unwrap_or_else(|e| e.into_inner());
            (subs.len(), subs.keys().cloned().collect())
        };
        let is_registered =
            |a: &str, added: &BTreeMap<String, SubscriberRow>, removed: &BTreeSet<String>| {
                added.contains_key(a) || (registered.contains(a) && !removed.contains(a))
            };
        // Expiries first: they were due before these commands arrived.
        let mut expired: Vec<(i64, String)> = Vec::new();
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let Some((at, address)) = self.expiries.pop_first() else {
                break;
            };
            let current = self
                .shared
                .subscribers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&address)
                .map(|s| s.deadline);
            if current == Some(at) && !removed.contains(&address) {
                tracing::info!(address, "subscriber expired (no keep-alive)");
                metrics::counter!("shoal_multicast_subscribers_expired_total").increment(1);
                removed.insert(address.clone());
                expired.push((at, address));
                count -= 1;
            }
        }
        for command in commands {
            match command {
                Command::Send {
                    body,
                    content_type,
                    key,
                    reply,
                } => {
                    if let Some((id, uid, _)) = key.as_ref().and_then(|k| self.idempotency.get(k)) {
                        let accepted = Accepted {
                            uid: uid.clone(),
                            id: *id,
                            recipients: 0,
                            duplicate: true,
                        };
                        replies.push(Reply::Sent(reply, accepted));
                        continue;
                    }
                    let size = body.len() as u64;
                    if count > 0 && backlog + size > options.max_backlog_bytes {
                        replies.push(Reply::SendRefused(
                            reply,
                            HubError::Busy(format!(
                                "{backlog} bytes of messages are waiting for delivery (limit {})",
                                options.max_backlog_bytes
                            )),
                        ));
                        continue;
                    }
                    let id = batch.next_message_id;
                    batch.next_message_id += 1;
                    let uid = format!("msg_{}", uuid::Uuid::new_v4().simple());
                    if let Some(k) = &key {
                        if self.idempotency.len() >= MAX_IDEMPOTENCY_KEYS {
                            forget_oldest_keys(&mut self.idempotency);
                        }
                        self.idempotency.insert(k.clone(), (id, uid.clone(), now));
                    }
                    let row = MessageRow {
                        id,
                        uid: uid.clone(),
                        body,
                        content_type,
                        accepted_at: now,
                    };
                    if count > 0 {
                        backlog += size;
                        new_messages.push(Arc::new(row.clone()));
                    } else {
                        metrics::counter!("shoal_multicast_messages_dropped_total").increment(1);
                    }
                    batch.messages.push((row, key));
                    replies.push(Reply::Sent(
                        reply,
                        Accepted {
                            uid,
                            id,
                            recipients: count,
                            duplicate: false,
                        },
                    ));
                }
                Command::Register { address, reply } => {
                    if let Some(row) = added.get_mut(&address) {
                        row.keepalive_at = now;
                        upserts.insert(address, row.clone());
                        replies.push(Reply::Done(reply));
                    } else if is_registered(&address, &added, &removed) {
                        let row = self.kept_alive_row(&address, now);
                        kept_alive.insert(address.clone());
                        upserts.insert(address, row);
                        replies.push(Reply::Done(reply));
                    } else if count >= options.max_subscribers {
                        replies.push(Reply::Refused(
                            reply,
                            HubError::Full(format!(
                                "the hub has its maximum of {} subscribers",
                                options.max_subscribers
                            )),
                        ));
                    } else {
                        // It receives what is accepted from now on.
                        let row = SubscriberRow {
                            address: address.clone(),
                            registered_at: now,
                            keepalive_at: now,
                            first_message_id: batch.next_message_id,
                            delivered_through: batch.next_message_id - 1,
                        };
                        count += 1;
                        upserts.insert(address.clone(), row.clone());
                        added.insert(address, row);
                        replies.push(Reply::Done(reply));
                    }
                }
                Command::Deregister { address, reply } => {
                    if is_registered(&address, &added, &removed) {
                        count -= 1;
                        upserts.remove(&address);
                        kept_alive.remove(&address);
                        if added.remove(&address).is_none() || registered.contains(&address) {
                            removed.insert(address);
                        }
                    }
                    replies.push(Reply::Done(reply));
                }
                Command::Failure(row, reply) => {
                    batch.failures.push(row);
                    replies.push(Reply::Recorded(reply));
                }
            }
        }
        // Removals are written before upserts, so an address removed and registered again in
        // this batch ends up with a fresh row.
        batch.removals = removed.iter().cloned().collect();
        batch.upserts = upserts.into_values().collect();
        // Cursor advances since the last flush, and subscribers too far behind.
        {
            let subs = self
                .shared
                .subscribers
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let last_accepted = batch.next_message_id - 1;
            for s in subs.values() {
                let through = s.progress.delivered_through.load(Ordering::Acquire);
                let pending = last_accepted.saturating_sub(through);
                if pending > options.max_pending && !removed.contains(&s.row.address) {
                    let error = format!(
                        "removed: {pending} messages pending (limit {}); register again to receive new messages",
                        options.max_pending
                    );
                    tracing::warn!(address = %s.row.address, "{error}");
                    metrics::counter!("shoal_multicast_subscribers_overflowed_total").increment(1);
                    batch.failures.push(FailureRow {
                        address: s.row.address.clone(),
                        message_id: through + 1,
                        uid: String::new(),
                        attempts: 0,
                        error,
                        failed_at: now,
                    });
                    batch.removals.push(s.row.address.clone());
                    removed.insert(s.row.address.clone());
                    continue;
                }
                if through > s.progress.persisted_through.load(Ordering::Acquire)
                    && !removed.contains(&s.row.address)
                {
                    batch.cursors.push((s.row.address.clone(), through));
                }
            }
        }
        // A subscriber removed for falling behind must not be revived by its keep-alive.
        batch
            .upserts
            .retain(|row| !removed.contains(&row.address) || added.contains_key(&row.address));

        if batch.is_empty() {
            answer(replies);
            return;
        }
        if let Err(err) = self.shared.store.commit(&batch).await {
            tracing::error!(error = ?err, "commit failed; nothing of the batch was written");
            for key in batch.messages.iter().filter_map(|(_, k)| k.as_ref()) {
                self.idempotency.remove(key);
            }
            // Expiries are due again at the next batch.
            self.expiries.extend(expired);
            // Never reuse the ids: a commit that failed on our side may have succeeded in the
            // database, and a reused id would collide forever. Gaps are skipped by delivery.
            self.next_message_id = batch.next_message_id;
            fail(replies, &format!("{err:#}"));
            return;
        }
        // Applied only after the commit: nothing is visible or delivered before it is durable.
        self.next_message_id = batch.next_message_id;
        {
            let mut messages = self
                .shared
                .messages
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for m in new_messages {
                messages.insert(m.id, m);
            }
        }
        self.shared.backlog_bytes.store(backlog, Ordering::Release);
        {
            let mut subs = self
                .shared
                .subscribers
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for address in &removed {
                if let Some(s) = subs.remove(address) {
                    s.cancel.cancel();
                }
            }
            for address in &kept_alive {
                if let Some(s) = subs.get_mut(address) {
                    s.row.keepalive_at = now;
                    self.expiries.remove(&(s.deadline, address.clone()));
                    s.deadline = now.saturating_add(expire);
                    self.expiries.insert((s.deadline, address.clone()));
                }
            }
            for (address, through) in &batch.cursors {
                if let Some(s) = subs.get(address) {
                    s.progress
                        .persisted_through
                        .fetch_max(*through, Ordering::AcqRel);
                }
            }
        }
        for row in added.into_values() {
            tracing::info!(address = %row.address, "subscriber registered");
            let deadline = row.keepalive_at.saturating_add(expire);
            self.add_subscriber(row, deadline);
        }
        let accepted_messages = batch.messages.len();
        if accepted_messages > 0 {
            metrics::counter!("shoal_multicast_messages_accepted_total")
                .increment(accepted_messages as u64);
            self.shared.accepted.send_replace(batch.next_message_id - 1);
        }
        answer(replies);
    }

    /// The stored row of a registered subscriber, with a new keep-alive time.
    fn kept_alive_row(&self, address: &str, now: i64) -> SubscriberRow {
        let subs = self
            .shared
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut row = subs.get(address).map_or_else(
            || SubscriberRow {
                address: address.to_owned(),
                registered_at: now,
                keepalive_at: now,
                first_message_id: self.next_message_id,
                delivered_through: self.next_message_id - 1,
            },
            |s| s.row.clone(),
        );
        row.keepalive_at = now;
        row
    }

    /// Drops messages every subscriber has finished (from memory and the outbox), and old
    /// idempotency keys and failure records.
    async fn collect_garbage(&mut self) {
        let (in_memory_floor, durable_floor) = {
            let subs = self
                .shared
                .subscribers
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let floor = |f: &dyn Fn(&Progress) -> u64| {
                subs.values()
                    .map(|s| f(&s.progress) + 1)
                    .min()
                    .unwrap_or(self.next_message_id)
            };
            (
                floor(&|p| p.delivered_through.load(Ordering::Acquire)),
                floor(&|p| p.persisted_through.load(Ordering::Acquire)),
            )
        };
        {
            let mut messages = self
                .shared
                .messages
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let keep = messages.split_off(&in_memory_floor);
            let freed: u64 = messages.values().map(|m| m.body.len() as u64).sum();
            *messages = keep;
            self.shared.backlog_bytes.fetch_sub(
                freed.min(self.shared.backlog_bytes.load(Ordering::Acquire)),
                Ordering::AcqRel,
            );
        }
        let now = now_ms();
        let idempotency_before =
            now.saturating_sub(millis(self.shared.options.idempotency_retention));
        self.idempotency
            .retain(|_, (_, _, at)| *at >= idempotency_before);
        let failures_before = now.saturating_sub(millis(self.shared.options.failure_retention));
        if let Err(err) = self
            .shared
            .store
            .collect_garbage(durable_floor, idempotency_before, failures_before)
            .await
        {
            tracing::warn!(error = %err, "outbox clean-up failed; will retry");
        }
    }
}

/// Forgets the oldest tenth of the idempotency keys.
fn forget_oldest_keys(keys: &mut HashMap<String, (u64, String, i64)>) {
    let mut times: Vec<i64> = keys.values().map(|(_, _, at)| *at).collect();
    if times.is_empty() {
        return;
    }
    let cut = times.len() / 10;
    let (_, threshold, _) = times.select_nth_unstable(cut);
    let threshold = *threshold;
    keys.retain(|_, (_, _, at)| *at > threshold);
}

fn answer(replies: Vec<Reply>) {
    for reply in replies {
        match reply {
            Reply::Recorded(tx) => {
                let _ = tx.send(true);
            }
            Reply::Sent(tx, accepted) => {
                let _ = tx.send(Ok(accepted));
            }
            Reply::Done(tx) => {
                let _ = tx.send(Ok(()));
            }
            Reply::Refused(tx, err) => {
                let _ = tx.send(Err(err));
            }
            Reply::SendRefused(tx, err) => {
                let _ = tx.send(Err(err));
            }
        }
    }
}

fn fail(replies: Vec<Reply>, reason: &str) {
    for reply in replies {
        match reply {
            Reply::Recorded(tx) => {
                let _ = tx.send(false);
            }
            Reply::Sent(tx, _) | Reply::SendRefused(tx, _) => {
                let _ = tx.send(Err(HubError::Storage(reason.to_owned())));
            }
            Reply::Done(tx) | Reply::Refused(tx, _) => {
                let _ = tx.send(Err(HubError::Storage(reason.to_owned())));
            }
        }
    }
}

/// How one delivery attempt ended.
enum Attempt {
    Delivered(u16),
    Retry { status: Option<u16>, error: String },
    Permanent { status: Option<u16>, error: String },
}

/// A subscriber's own HTTP/1.1 connection. Each subscriber has one delivery in flight at a
/// time, so a dedicated keep-alive connection is all it needs: no pool, no per-request URL
/// parsing. Every new connection goes through the guard first (the name is resolved and
/// every address checked then), so a name re-pointed at a forbidden address is caught on the
/// next connect.
struct Link {
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>>,
    host: axum::http::HeaderValue,
}

impl Link {
    fn new(address: &Address) -> Self {
        let host = axum::http::HeaderValue::from_str(&address.to_string())
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("localhost"));
        Self { sender: None, host }
    }

    /// Connects (through the guard) unless a live connection is at hand. Returns whether the
    /// connection was reused.
    async fn ready(&mut self, shared: &Shared, address: &Address) -> Result<bool, Attempt> {
        if let Some(sender) = &mut self.sender {
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(true);
            }
            self.sender = None;
        }
        let addrs = shared.guard.check(address).await.map_err(|err| match err {
            GuardError::Resolve { .. } | GuardError::NoAddresses(_) => Attempt::Retry {
                status: None,
                error: err.to_string(),
            },
            _ => Attempt::Permanent {
                status: None,
                error: format!("address refused: {err}"),
            },
        })?;
        let connect_timeout = shared.options.delivery_timeout.min(Duration::from_secs(5));
        let stream =
            match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&addrs[..]))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    return Err(Attempt::Retry {
                        status: None,
                        error: format!("cannot connect to {address}: {err}"),
                    });
                }
                Err(_) => {
                    return Err(Attempt::Retry {
                        status: None,
                        error: format!("connecting to {address} timed out"),
                    });
                }
            };
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|err| Attempt::Retry {
                    status: None,
                    error: format!("HTTP handshake with {address} failed: {err}"),
                })?;
        // Drives the connection; ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(false)
    }
}

/// A subscriber's delivery task: messages after its cursor, one at a time, in order.
async fn deliver_loop(
    shared: Arc<Shared>,
    address: Address,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) {
    let mut accepted = shared.accepted.subscribe();
    let mut link = Link::new(&address);
    loop {
        let last = *accepted.borrow_and_update();
        let next = progress.delivered_through.load(Ordering::Acquire) + 1;
        if next > last {
            tokio::select! {
                changed = accepted.changed() => if changed.is_err() { return },
                () = cancel.cancelled() => return,
            }
            continue;
        }
        let message = shared
            .messages
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&next)
            .cloned();
        let Some(message) = message else {
            // Accepted while nobody (or not this subscriber) was registered: nothing to send.
            progress.delivered_through.store(next, Ordering::Release);
            continue;
        };
        if !deliver_with_retries(&shared, &address, &mut link, &message, &progress, &cancel).await {
            return;
        }
        progress.delivered_through.store(next, Ordering::Release);
    }
}

/// Delivers one message until it succeeds or finally fails. Returns false when cancelled.
async fn deliver_with_retries(
    shared: &Shared,
    address: &Address,
    link: &mut Link,
    message: &MessageRow,
    progress: &Progress,
    cancel: &CancellationToken,
) -> bool {
    let options = &shared.options;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // Cancellation is checked first, so a removed subscriber gets no further request.
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            permit = shared.in_flight.acquire() => permit,
        };
        let Ok(_permit) = permit else { return false };
        // One attempt — name resolution, connecting and the exchange — is bounded as a whole.
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            r = tokio::time::timeout(options.delivery_timeout, attempt_once(shared, address, link, message)) => r,
        };
        drop(_permit);
        let attempt = result.unwrap_or_else(|_| {
            link.sender = None;
            Attempt::Retry {
                status: None,
                error: format!(
                    "no answer within {}",
                    humantime::format_duration(options.delivery_timeout)
                ),
            }
        });
        let now = now_ms();
        let outcome = |result, status, error| Recorded {
            message_id: message.id,
            uid: message.uid.clone(),
            result,
            attempts,
            status,
            error,
            at: now,
        };
        let (status, error, permanent) = match attempt {
            Attempt::Delivered(status) => {
                shared.delivered.increment(1);
                progress.record(outcome("delivered", Some(status), None));
                return true;
            }
            Attempt::Retry { status, error } => (status, error, false),
            Attempt::Permanent { status, error } => (status, error, true),
        };
        let too_old = now.saturating_sub(message.accepted_at) > millis(options.max_retry_age);
        if permanent || attempts >= options.max_attempts || too_old {
            let why = if permanent {
                error.clone()
            } else {
                format!("gave up after {attempts} attempts: {error}")
            };
            tracing::warn!(address = %address, message = %message.uid, error = %why, "delivery failed");
            shared.failed.increment(1);
            progress.record(outcome("failed", status, Some(why.clone())));
            let failure = FailureRow {
                address: address.to_string(),
                message_id: message.id,
                uid: message.uid.clone(),
                attempts,
                error: why,
                failed_at: now,
            };
            // The cursor moves past the message only once the failure is on record; if the hub
            // stops first, the message is tried again after the restart.
            loop {
                let (tx, rx) = oneshot::channel();
                if shared
                    .commands
                    .send(Command::Failure(failure.clone(), tx))
                    .await
                    .is_err()
                {
                    return false;
                }
                match rx.await {
                    Ok(true) => return true,
                    Ok(false) => {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = cancel.cancelled() => return false,
                        }
                    }
                    Err(_) => return false,
                }
            }
        }
        shared.retried.increment(1);
        progress.record(outcome("retrying", status, Some(error)));
        let delay =
            shoal_core::backoff::exponential(options.retry_initial, options.retry_max, attempts);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return false,
        }
    }
}

async fn attempt_once(
    shared: &Shared,
    address: &Address,
    link: &mut Link,
    message: &MessageRow,
) -> Attempt {
    // A reused connection may have been closed by the subscriber while idle; that is no
    // failure of the subscriber, so it gets one immediate try on a fresh connection.
    for _ in 0..2 {
        let reused = match link.ready(shared, address).await {
            Ok(reused) => reused,
            Err(attempt) => return attempt,
        };
        match send(shared, link, message).await {
            Ok(attempt) => return attempt,
            Err(err) => {
                link.sender = None;
                if !reused {
                    return Attempt::Retry {
                        status: None,
                        error: err,
                    };
                }
            }
        }
    }
    Attempt::Retry {
        status: None,
        error: "the connection closed twice in a row".to_owned(),
    }
}

/// Sends one delivery on the link's connection. `Err` is a transport failure.
async fn send(shared: &Shared, link: &mut Link, message: &MessageRow) -> Result<Attempt, String> {
    use axum::http::{Request, header};
    use http_body_util::BodyExt as _;

    let Some(sender) = link.sender.as_mut() else {
        return Err("not connected".to_owned());
    };
    let timestamp = now_ms() / 1000;
    let mut request = Request::post("/event")
        .header(header::HOST, link.host.clone())
        .header(
            header::CONTENT_TYPE,
            message
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        )
        .header(
            header::USER_AGENT,
            concat!("shoal-multicast/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", message.uid.as_str())
        .header("webhook-timestamp", timestamp);
    if let Some(secret) = &shared.options.signing {
        request = request.header(
            crate::signing::SIGNATURE_HEADER,
            secret.sign(&message.uid, timestamp, &message.body),
        );
    }
    let request = request
        .body(http_body_util::Full::new(message.body.clone()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read (a bounded amount of) the answer so the connection can carry the next one.
        let mut body = response.into_body();
        let mut read = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(data) = frame.data_ref() {
                read += data.len();
                if read > 64 * 1024 {
                    // Too much to drain: this connection will not be reused.
                    return Ok::<_, String>((status, false));
                }
            }
        }
        Ok((status, true))
    };
    // The whole attempt is bounded by the caller's timeout; no second timer here.
    let status = match exchange.await {
        Ok((status, reusable)) => {
            if !reusable {
                link.sender = None;
            }
            status
        }
        Err(err) => return Err(err),
    };
    let code = status.as_u16();
    Ok(if status.is_success() {
        Attempt::Delivered(code)
    } else if status.is_server_error() || code == 429 || code == 408 {
        Attempt::Retry {
            status: Some(code),
            error: format!("subscriber answered {status}"),
        }
    } else {
        Attempt::Permanent {
            status: Some(code),
            error: format!("subscriber answered {status}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::forget_oldest_keys;
    use std::collections::HashMap;

    #[test]
    fn forgetting_keys_drops_the_oldest_tenth() {
        let mut keys: HashMap<String, (u64, String, i64)> = (0..100)
            .map(|i| (format!("k{i}"), (i, format!("msg_{i}"), 1_000 + i as i64)))
            .collect();
        forget_oldest_keys(&mut keys);
        assert_eq!(
            keys.len(),
            89,
            "the oldest tenth (and the boundary) is gone"
        );
        assert!(!keys.contains_key("k0") && !keys.contains_key("k10"));
        assert!(keys.contains_key("k11") && keys.contains_key("k99"));
        let mut empty = HashMap::new();
        forget_oldest_keys(&mut empty);
        assert!(empty.is_empty());
    }
}
