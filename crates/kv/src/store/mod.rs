//! The store: every entry lives in memory (reads never touch the database), and one writer
//! task owns every change. The writer drains whatever writes are waiting into one batch,
//! commits it in one transaction (group commit), applies it to memory and only then
//! acknowledges — so an acknowledged write is durable and visible, and a reader never sees a
//! write that could still be lost.
//!
//! Revisions: one store-wide counter; each set, remove and expiry takes the next number, and
//! each key remembers the revision of its last write. Removed keys stay as tombstones for a
//! while so long-polling watchers learn about removals.

mod postgres;
mod sqlite;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub use self::postgres::PostgresBackend;
pub use self::sqlite::{SqliteBackend, SyncMode};

/// Size and count limits, checked before anything is written.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_size: usize,
    /// Longest value, in bytes.
    pub max_value_size: usize,
    /// Most live keys.
    pub max_keys: usize,
    /// Most bytes of live keys and values together.
    pub max_total_size: u64,
    /// How long tombstones of removed keys are kept for watchers.
    pub tombstone_retention: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_size: 1 << 10,
            max_value_size: 1 << 20,
            max_keys: 1_000_000,
            max_total_size: 1 << 30,
            tombstone_retention: Duration::from_secs(600),
        }
    }
}

/// One key's last write. `value == None` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The key.
    pub key: String,
    /// The value, or `None` when the key was removed or expired.
    pub value: Option<Bytes>,
    /// Revision of this write.
    pub revision: u64,
    /// Expiry time in unix milliseconds.
    pub expires_at: Option<i64>,
    /// Time of this write in unix milliseconds.
    pub updated_at: i64,
}

impl Row {
    fn is_live(&self, now: i64) -> bool {
        self.value.is_some() && self.expires_at.is_none_or(|t| t > now)
    }

    fn size(&self) -> u64 {
        (self.key.len() + self.value.as_ref().map_or(0, Bytes::len)) as u64
    }
}

/// Everything a backend holds, as loaded at start-up or after falling too far behind.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every row, tombstones included.
    pub rows: Vec<Row>,
    /// The store-wide revision.
    pub revision: u64,
    /// Tombstones at or below this revision may have been purged.
    pub purged_through: u64,
}

/// What happened since a revision.
#[derive(Debug)]
pub enum Changes {
    /// The rows written after it, in revision order, and the new store revision.
    Rows(Vec<Row>, u64),
    /// Too far behind (tombstones were purged): start over from this snapshot.
    Reload(Snapshot),
}

/// The result of trying to commit a batch.
#[derive(Debug)]
pub enum Commit {
    /// Written and durable.
    Done,
    /// Another replica wrote first; apply these changes and plan again.
    Stale(Changes),
}

/// Where entries are kept durably.
#[derive(Debug, Clone)]
pub enum Backend {
    /// An SQLite file in the data directory (the default).
    Sqlite(SqliteBackend),
    /// A PostgreSQL database shared by any number of replicas.
    Postgres(PostgresBackend),
}

impl Backend {
    async fn load(&self) -> anyhow::Result<Snapshot> {
        match self {
            Self::Sqlite(b) => b.load().await,
            Self::Postgres(b) => b.load().await,
        }
    }

    async fn commit(&self, base: u64, rows: &[Row], revision: u64) -> anyhow::Result<Commit> {
        match self {
            Self::Sqlite(b) => b.commit(base, rows, revision).await,
            Self::Postgres(b) => b.commit(base, rows, revision).await,
        }
    }

    async fn changes_since(&self, revision: u64) -> anyhow::Result<Changes> {
        match self {
            Self::Sqlite(b) => b.changes_since(revision).await,
            Self::Postgres(b) => b.changes_since(revision).await,
        }
    }

    async fn purge_tombstones(&self, before: i64) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(b) => b.purge_tombstones(before).await,
            Self::Postgres(b) => b.purge_tombstones(before).await,
        }
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(b) => b.ping().await,
            Self::Postgres(b) => b.ping().await,
        }
    }
}

/// The in-memory image of the store.
#[derive(Debug, Default)]
pub struct State {
    entries: BTreeMap<String, Row>,
    revision: u64,
    live_keys: usize,
    live_bytes: u64,
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The key holds this value, written at `revision`.
    Found {
        /// The value.
        value: Bytes,
        /// Revision of the last write.
        revision: u64,
    },
    /// The key was removed or expired at `revision` (remembered for a while).
    Removed {
        /// Revision of the removal.
        revision: u64,
    },
    /// No such key (never written, or removed long ago).
    Missing,
}

impl Lookup {
    /// The revision of the key's last write, 0 when unknown.
    pub fn revision(&self) -> u64 {
        match self {
            Self::Found { revision, .. } | Self::Removed { revision } => *revision,
            Self::Missing => 0,
        }
    }
}

impl State {
    /// Looks up `key` as of `now` (unix ms): expired entries read as removed.
    pub fn lookup(&self, key: &str, now: i64) -> Lookup {
        match self.entries.get(key) {
            Some(row) => match &row.value {
                Some(value) if row.is_live(now) => Lookup::Found {
                    value: value.clone(),
                    revision: row.revision,
                },
                _ => Lookup::Removed {
                    revision: row.revision,
                },
            },
            None => Lookup::Missing,
        }
    }

    /// Live entries whose key starts with `prefix`, sorted by key.
    pub fn live_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
        now: i64,
    ) -> impl Iterator<Item = &'a Row> + 'a {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, row)| row)
            .filter(move |row| row.is_live(now))
    }

    /// The highest revision of any key starting with `prefix`, removals and expiries
    /// included (while their tombstones are kept): what a watch of the prefix compares.
    pub fn prefix_revision(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.revision;
        }
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, row)| row.revision)
            .max()
            .unwrap_or(0)
    }

    /// The store-wide revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn apply(&mut self, row: Row) {
        if row.value.is_some() {
            self.live_keys += 1;
            self.live_bytes += row.size();
        }
        self.revision = self.revision.max(row.revision);
        if let Some(old) = self.entries.insert(row.key.clone(), row)
            && old.value.is_some()
        {
            self.live_keys -= 1;
            self.live_bytes -= old.size();
        }
    }

    fn reset(&mut self, snapshot: Snapshot) {
        *self = Self::default();
        for row in snapshot.rows {
            self.apply(row);
        }
        self.revision = snapshot.revision;
    }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// `if_revision` did not match; carries the key's current revision (0 = absent).
    #[error("the key's revision is {current}, not the expected {expected}")]
    Precondition {
        /// What the client expected.
        expected: u64,
        /// What the key has.
        current: u64,
    },
    /// A limit on keys or total size would be exceeded.
    #[error("{0}")]
    Full(String),
    /// The store is shutting down.
    #[error("the store is shutting down")]
    Closed,
    /// The database failed; nothing of the batch was written.
    #[error("storage failure: {0:#}")]
    Storage(Arc<anyhow::Error>),
}

#[derive(Debug)]
enum Op {
    Set {
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
        if_revision: Option<u64>,
    },
    Remove {
        key: String,
        if_revision: Option<u64>,
    },
}

/// What a write gets back: its revision (`None` for a no-op remove) or why it was refused.
type Outcome = Result<Option<u64>, WriteError>;
type Reply = oneshot::Sender<Outcome>;

enum Command {
    Write(Op, Reply),
    CatchUp,
}

struct Shared {
    state: RwLock<State>,
    revision: watch::Sender<u64>,
    commands: mpsc::Sender<Command>,
    limits: Limits,
    backend: Backend,
}

/// A cheap-to-clone handle on the store.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Current wall-clock time in unix milliseconds. Expiry uses wall-clock time because it is
/// stored and must mean the same after a restart.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Store {
    /// Loads everything from `backend` into memory and starts the writer task. The writer
    /// stops when the last handle is dropped.
    pub async fn open(backend: Backend, limits: Limits) -> anyhow::Result<Self> {
        let snapshot = backend.load().await?;
        let mut state = State::default();
        state.reset(snapshot);
        let (revision, _) = watch::channel(state.revision);
        let (commands, receiver) = mpsc::channel(MAX_BATCH);
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            revision,
            commands,
            limits,
            backend,
        });
        let writer = Writer::new(Arc::downgrade(&shared), receiver);
        tokio::spawn(writer.run());
        if let Backend::Postgres(pg) = &shared.backend {
            pg.spawn_listener(Arc::downgrade(&shared));
        }
        Ok(Self { shared })
    }

    /// A read lock on the in-memory state. Hold it briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `key` up now.
    pub fn get(&self, key: &str) -> Lookup {
        self.read().lookup(key, now_ms())
    }

    /// Receives the store revision after every applied change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision.subscribe()
    }

    /// The configured limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The backend, for health checks.
    pub fn backend(&self) -> &Backend {
        &self.shared.backend
    }

    /// Sets `key` to `value`, optionally expiring after `ttl`, optionally only if the key's
    /// current revision is `if_revision` (0: only if absent). Returns the write's revision
    /// once it is durable.
    pub async fn set(
        &self,
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
        if_revision: Option<u64>,
    ) -> Result<u64, WriteError> {
        let op = Op::Set {
            key,
            value,
            ttl,
            if_revision,
        };
        self.submit(op).await?.ok_or_else(|| {
            WriteError::Storage(Arc::new(anyhow::anyhow!("set produced no revision")))
        })
    }

    /// Removes `key`, optionally only if its revision is `if_revision`. Returns the removal's
    /// revision, or `None` when the key did not exist (nothing was written).
    pub async fn remove(
        &self,
        key: String,
        if_revision: Option<u64>,
    ) -> Result<Option<u64>, WriteError> {
        self.submit(Op::Remove { key, if_revision }).await
    }

    async fn submit(&self, op: Op) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Write(op, tx))
            .await
            .map_err(|_| WriteError::Closed)?;
        rx.await.map_err(|_| WriteError::Closed)?
    }
}

/// The single owner of every change to the state.
struct Writer {
    shared: std::sync::Weak<Shared>,
    commands: mpsc::Receiver<Command>,
    /// Keys with a TTL, by expiry time. Entries may be stale (the key was rewritten); they
    /// are checked against the state when due.
    expiries: BTreeSet<(i64, String)>,
}

impl Writer {
    fn new(shared: std::sync::Weak<Shared>, commands: mpsc::Receiver<Command>) -> Self {
        let mut expiries = BTreeSet::new();
        if let Some(shared) = shared.upgrade() {
            let state = shared.state.read().unwrap_or_else(|e| e.into_inner());
            for row in state.entries.values() {
                if let (Some(_), Some(at)) = (&row.value, row.expires_at) {
                    expiries.insert((at, row.key.clone()));
                }
            }
        }
        Self {
            shared,
            commands,
            expiries,
        }
    }

    async fn run(mut self) {
        let mut purge_at = Instant::now() + Duration::from_secs(60);
        loop {
            let next_expiry = self.next_expiry_instant();
            let command = tokio::select! {
                command = self.commands.recv() => match command {
                    Some(c) => Some(c),
                    None => break,
                },
                () = tokio::time::sleep_until(next_expiry) => None,
                () = tokio::time::sleep_until(purge_at) => {
                    purge_at = Instant::now() + Duration::from_secs(60);
                    self.purge().await;
                    continue;
                }
            };
            let Some(shared) = self.shared.upgrade() else {
                break;
            };
            let mut ops = Vec::new();
            let mut replies = Vec::new();
            let mut catch_up = false;
            let mut next = command;
            loop {
                match next {
                    Some(Command::Write(op, reply)) => {
                        ops.push(op);
                        replies.push(reply);
                    }
                    Some(Command::CatchUp) => catch_up = true,
                    None => {}
                }
                if ops.len() >= MAX_BATCH {
                    break;
                }
                match self.commands.try_recv() {
                    Ok(c) => next = Some(c),
                    Err(_) => break,
                }
            }
            if catch_up {
                self.catch_up(&shared).await;
            }
            self.process(&shared, &ops, replies).await;
        }
    }

    fn next_expiry_instant(&self) -> Instant {
        match self.expiries.first() {
            Some((at, _)) => {
                let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                Instant::now() + Duration::from_millis(wait)
            }
            None => Instant::now() + Duration::from_secs(3600),
        }
    }

    async fn catch_up(&mut self, shared: &Shared) {
        let base = shared
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .revision;
        match shared.backend.changes_since(base).await {
            Ok(changes) => self.apply_changes(shared, changes),
            Err(err) => tracing::warn!(error = %err, "catching up with the database failed"),
        }
    }

    fn apply_changes(&mut self, shared: &Shared, changes: Changes) {
        let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
        match changes {
            Changes::Rows(rows, revision) => {
                for row in rows {
                    self.track_expiry(&row);
                    state.apply(row);
                }
                state.revision = state.revision.max(revision);
            }
            Changes::Reload(snapshot) => {
                for row in &snapshot.rows {
                    self.track_expiry(row);
                }
                state.reset(snapshot);
            }
        }
        let revision = state.revision;
        drop(state);
        shared.revision.send_replace(revision);
    }

    fn track_expiry(&mut self, row: &Row) {
        if let (Some(_), Some(at)) = (&row.value, row.expires_at) {
            self.expiries.insert((at, row.key.clone()));
        }
    }

    /// Plans, commits and applies one batch. On a stale base (another replica wrote), catches
    /// up and plans again.
    async fn process(&mut self, shared: &Shared, ops: &[Op], replies: Vec<Reply>) {
        let mut expired = self.due_expiries(shared);
        if ops.is_empty() && expired.is_empty() {
            return;
        }
        for _attempt in 0..16 {
            let now = now_ms();
            let (base, rows, outcomes) = {
                let state = shared.state.read().unwrap_or_else(|e| e.into_inner());
                plan(&state, &shared.limits, ops, &expired, now)
            };
            if rows.is_empty() {
                reply_all(replies, outcomes);
                return;
            }
            let revision = rows.iter().map(|r| r.revision).max().unwrap_or(base);
            let started = std::time::Instant::now();
            let committed = shared.backend.commit(base, &rows, revision).await;
            metrics::histogram!("shoal_kv_commit_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            match committed {
                Ok(Commit::Done) => {
                    {
                        let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
                        for row in rows {
                            self.track_expiry(&row);
                            state.apply(row);
                        }
                        state.revision = revision;
                    }
                    shared.revision.send_replace(revision);
                    metrics::counter!("shoal_kv_commits_total").increment(1);
                    metrics::histogram!("shoal_kv_commit_batch_size").record(ops.len() as f64);
                    reply_all(replies, outcomes);
                    return;
                }
                Ok(Commit::Stale(changes)) => {
                    self.apply_changes(shared, changes);
                    expired = self.due_expiries(shared);
                }
                Err(err) => {
                    tracing::error!(error = ?err, "commit failed; the batch was not written");
                    fail_all(replies, err);
                    return;
                }
            }
        }
        fail_all(
            replies,
            anyhow::anyhow!("too much write contention between replicas"),
        );
    }

    /// Keys whose TTL has passed, with the revision they had (an expiry applies only if the key
    /// was not rewritten since).
    fn due_expiries(&mut self, shared: &Shared) -> Vec<(String, u64)> {
        let now = now_ms();
        let state = shared.state.read().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let Some((at, key)) = self.expiries.pop_first() else {
                break;
            };
            if let Some(row) = state.entries.get(&key)
                && row.value.is_some()
                && row.expires_at == Some(at)
            {
                due.push((key, row.revision));
            }
        }
        due
    }

    async fn purge(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let retention =
            i64::try_from(shared.limits.tombstone_retention.as_millis()).unwrap_or(i64::MAX);
        let before = now_ms().saturating_sub(retention);
        if let Err(err) = shared.backend.purge_tombstones(before).await {
            tracing::warn!(error = %err, "purging old tombstones failed");
            return;
        }
        let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
        state
            .entries
            .retain(|_, row| row.value.is_some() || row.updated_at >= before);
    }
}

fn reply_all(replies: Vec<Reply>, outcomes: Vec<Outcome>) {
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

fn fail_all(replies: Vec<Reply>, err: anyhow::Error) {
    let err = Arc::new(err);
    for reply in replies {
        let _ = reply.send(Err(WriteError::Storage(err.clone())));
    }
}

/// Decides the outcome of every op against the state plus the earlier ops of the batch, and
/// the rows to write (one per key: the last write wins within a batch). Returns the base
/// revision the plan was made on.
fn plan(
    state: &State,
    limits: &Limits,
    ops: &[Op],
    expired: &[(String, u64)],
    now: i64,
) -> (u64, Vec<Row>, Vec<Outcome>) {
    // The batch's view of each key it touches: Some((revision, size)) when live.
    let mut view: HashMap<&str, Option<(u64, u64)>> = HashMap::new();
    let mut live_keys = state.live_keys;
    let mut live_bytes = state.live_bytes;
    let mut rows: HashMap<&str, Row> = HashMap::new();
    let mut revision = state.revision;
    let current = |view: &HashMap<&str, Option<(u64, u64)>>, key: &str| -> Option<(u64, u64)> {
        match view.get(key) {
            Some(v) => *v,
            None => state
                .entries
                .get(key)
                .filter(|r| r.value.is_some())
                .map(|r| (r.revision, r.size())),
        }
    };
    // Expiries first: they were due before anything in this batch arrived.
    for (key, expected) in expired {
        if let Some((rev, size)) = current(&view, key)
            && rev == *expected
        {
            revision += 1;
            live_keys -= 1;
            live_bytes -= size;
            view.insert(key, None);
            rows.insert(key, tombstone(key, revision, now));
        }
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = match op {
            Op::Set {
                key,
                value,
                ttl,
                if_revision,
            } => {
                let existing = current(&view, key);
                let existing_rev = existing.map_or(0, |(r, _)| r);
                let new_size = (key.len() + value.len()) as u64;
                let (keys_after, bytes_after) = match existing {
                    Some((_, old)) => (live_keys, live_bytes - old + new_size),
                    None => (live_keys + 1, live_bytes + new_size),
                };
                if let Some(expected) = if_revision
                    && *expected != existing_rev
                {
                    Err(WriteError::Precondition {
                        expected: *expected,
                        current: existing_rev,
                    })
                } else if keys_after > limits.max_keys {
                    Err(WriteError::Full(format!(
                        "the store holds its maximum of {} keys",
                        limits.max_keys
                    )))
                } else if bytes_after > limits.max_total_size {
                    Err(WriteError::Full(format!(
                        "the store holds its maximum of {} bytes",
                        limits.max_total_size
                    )))
                } else {
                    revision += 1;
                    live_keys = keys_after;
                    live_bytes = bytes_after;
                    view.insert(key, Some((revision, new_size)));
                    let expires_at = ttl.map(|t| {
                        now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
                    });
                    rows.insert(
                        key,
                        Row {
                            key: key.clone(),
                            value: Some(value.clone()),
                            revision,
                            expires_at,
                            updated_at: now,
                        },
                    );
                    Ok(Some(revision))
                }
            }
            Op::Remove { key, if_revision } => {
                let existing = current(&view, key);
                let existing_rev = existing.map_or(0, |(r, _)| r);
                match (existing, if_revision) {
                    (_, Some(expected)) if *expected != existing_rev => {
                        Err(WriteError::Precondition {
                            expected: *expected,
                            current: existing_rev,
                        })
                    }
                    (None, _) => Ok(None),
                    (Some((_, size)), _) => {
                        revision += 1;
                        live_keys -= 1;
                        live_bytes -= size;
                        view.insert(key, None);
                        rows.insert(key, tombstone(key, revision, now));
                        Ok(Some(revision))
                    }
                }
            }
        };
        outcomes.push(outcome);
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    rows.sort_by_key(|r| r.revision);
    (state.revision, rows, outcomes)
}

fn tombstone(key: &str, revision: u64, now: i64) -> Row {
    Row {
        key: key.to_owned(),
        value: None,
        revision,
        expires_at: None,
        updated_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &std::path::Path) -> Store {
        let backend = Backend::Sqlite(
            SqliteBackend::open(dir, SyncMode::Normal)
                .await
                .expect("open sqlite"),
        );
        Store::open(backend, Limits::default())
            .await
            .expect("open store")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mass_expiry_larger_than_one_statement_commits_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..5000 {
            let store = store.clone();
            writes.spawn(async move {
                store
                    .set(
                        format!("k{i}"),
                        Bytes::from_static(b"v"),
                        Some(Duration::from_millis(400)),
                        None,
                    )
                    .await
            });
        }
        while let Some(result) = writes.join_next().await {
            result.expect("join").expect("set");
        }
        assert_eq!(store.read().live_with_prefix("", now_ms()).count(), 5000);
        // All 5,000 expire together: one batch of more rows than one statement takes.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(store.read().live_with_prefix("", now_ms()).count(), 0);
        let revision = store.read().revision();
        assert_eq!(
            revision, 10_000,
            "5,000 sets and 5,000 expiries, one revision each"
        );
        drop(store);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let store = open(dir.path()).await;
        assert_eq!(store.read().live_with_prefix("", now_ms()).count(), 0);
        assert_eq!(store.read().revision(), 10_000, "the counter is durable");
        assert!(matches!(store.get("k42"), Lookup::Removed { revision } if revision > 5000));
    }
}
