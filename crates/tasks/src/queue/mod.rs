//! The queue: on the embedded SQLite file (one connection, one writer task), or on
//! PostgreSQL (schema `shoal_tasks`, shared by any number of replicas).
//!
//! On both, every change goes through this replica's writer task, which applies whatever
//! operations are waiting in one transaction (group commit: one fsync per batch) and answers
//! only after the commit, so an acknowledged transition is durable. On PostgreSQL several
//! replicas write at once, and a batch is a few set-based statements ([`pg_batch`]): claims
//! take the oldest ready rows `FOR UPDATE SKIP LOCKED`, so claimers on any replica never get
//! the same task; creates lock the id counter row, so ids stay consecutive across replicas (a
//! batch holds it from its creates to its commit); commits that make tasks ready send a
//! `NOTIFY` that wakes long polls on every replica. A batch that meets a deadlock with another
//! replica's is retried whole. Each operation reads the task, asks [`crate::state::decide`] what the action
//! does, and writes the result: one decision function for every route. Expired leases are
//! returned at claim time (and by a once-a-second sweep, for visibility), never by a sleeping
//! task per claim.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::ConnectOptions as _;
use sqlx::Postgres;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use sqlx::sqlite::SqliteConnection;
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};

mod pg_batch;

use crate::state::{self, Action, Effect, State};
use crate::task::Task;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL schema holding the tasks tables.
pub const SCHEMA: &str = "shoal_tasks";
const CREATE_SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS shoal_tasks";
/// Notified when tasks may have become ready, so long polls on every replica wake up.
const READY_CHANNEL: &str = "shoal_tasks_ready";
/// Notified with the ids of the tasks whose state changed (comma-separated; empty when too
/// many to list), so long polls on a task wake on every replica.
const CHANGED_CHANNEL: &str = "shoal_tasks_changed";
/// Longest `NOTIFY` payload PostgreSQL accepts is 8000 bytes; beyond this, "some tasks".
const MAX_CHANGED_PAYLOAD: usize = 7900;

/// The ids of tasks whose state changed in one commit; empty when unknown (missed
/// notifications, a listing too long), which means "look again".
pub type Changed = Arc<[u64]>;

/// Timing and limits of the queue.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a claim holds a task.
    pub lease: Duration,
    /// How long a held task may wait for its release.
    pub hold_timeout: Duration,
    /// Claims a task gets before going back to the queue becomes failing.
    pub max_attempts: u32,
    /// Finished and failed tasks older than this are deleted (ids are never reused).
    pub retention: Option<Duration>,
}

/// An operation on the queue.
#[derive(Clone, Debug)]
pub enum Op {
    /// A new task, optionally held.
    Create {
        /// JSON text.
        payload: Option<String>,
        /// Invisible to workers until released.
        held: bool,
        /// A client's idempotency key: when a task already has it, that task is the answer.
        key: Option<String>,
    },
    /// Claim the oldest ready task.
    Claim {
        /// Who claims it (any name the worker chooses), for [`Op::ReleaseWorker`].
        worker: Option<String>,
    },
    /// Give back every claim a worker holds, as if their leases had run out (the worker is
    /// known to be dead: its host restarted).
    ReleaseWorker {
        /// The worker's name.
        worker: String,
    },
    /// A route's action on one task.
    Act {
        /// The task.
        id: u64,
        /// What to do.
        action: Action,
        /// The claim the caller holds, if it says.
        lease: Option<String>,
        /// Why, for failTask.
        reason: Option<String>,
    },
    /// setById.
    Set {
        /// The task.
        id: u64,
        /// The state asked for.
        state: State,
        /// The claim the caller holds, if it says.
        lease: Option<String>,
    },
}

/// What an operation produced.
#[derive(Debug)]
pub enum Outcome {
    /// The new task's id.
    Created(u64),
    /// The task that already had the idempotency key.
    Existing(u64),
    /// How many claims were given back.
    Released(u64),
    /// The claimed task, or none ready.
    Claimed(Option<Task>),
    /// The task after the action.
    Done(Task),
}

/// How many tasks are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Ready for a worker.
    pub not_started: u64,
    /// Created held, waiting for their release.
    pub held: u64,
    /// Claimed.
    pub in_progress: u64,
    /// Done.
    pub finished: u64,
    /// Failed.
    pub failed: u64,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No such task.
    #[error("no task with id {0}")]
    NotFound(u64),
    /// Not an allowed transition (409).
    #[error("{0}")]
    Conflict(String),
    /// The queue is shutting down.
    #[error("the task database is shutting down")]
    Closed,
    /// The database failed; nothing of the batch was written.
    #[error("storage failure: {0}")]
    Storage(String),
}

type Reply = oneshot::Sender<Result<Outcome, QueueError>>;

enum Backend {
    Sqlite(Mutex<SqliteConnection>),
    Postgres(PgPool),
}

struct Shared {
    backend: Backend,
    commands: mpsc::Sender<(Op, Reply)>,
    ready: watch::Sender<u64>,
    changes: broadcast::Sender<Changed>,
    limits: Limits,
    /// When a PostgreSQL batch last settled expired leases (unix ms).
    last_expiry: std::sync::atomic::AtomicI64,
}

/// A cheap-to-clone handle on the queue.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

/// Wall-clock unix milliseconds (stored, so it must mean the same after a restart).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const MAX_BATCH: usize = 512;

impl Queue {
    /// Opens `tasks.sqlite3` in `dir` and starts the writer; it stops with the last handle.
    pub async fn open(dir: &Path, full_sync: bool, limits: Limits) -> anyhow::Result<Self> {
        let conn = shoal_core::db::open_sqlite_exclusive(
            &dir.join("tasks.sqlite3"),
            full_sync,
            &SQLITE_MIGRATOR,
            "tasks",
        )
        .await?;
        let (commands, receiver) = mpsc::channel(MAX_BATCH);
        let (ready, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            backend: Backend::Sqlite(Mutex::new(conn)),
            commands,
            ready,
            changes: broadcast::channel(1024).0,
            limits,
            last_expiry: std::sync::atomic::AtomicI64::new(0),
        });
        tokio::spawn(writer(Arc::downgrade(&shared), receiver));
        Ok(Self { shared })
    }

    /// Connects to PostgreSQL (schema `shoal_tasks`), which any number of replicas may share,
    /// and starts this replica's expiry sweep and readiness listener.
    pub async fn open_postgres(url: &str, limits: Limits) -> anyhow::Result<Self> {
        let pool = shoal_core::db::open_postgres(
            url,
            SCHEMA,
            CREATE_SCHEMA,
            16,
            &POSTGRES_MIGRATOR,
            &[
                // Every statement of the queue is meant to use an index (claims, expiries and
                // transitions touch a handful of rows of a table that only grows). The table
                // starts empty, and a plan made then (a sequential scan, cheapest on an empty
                // table) stayed cached on the connection until an ANALYZE, so a fresh task
                // database scanned its whole table for every batch until autovacuum came by.
                ("enable_seqscan", "off"),
            ],
        )
        .await?;
        let (ready, _) = watch::channel(0);
        let (commands, receiver) = mpsc::channel(MAX_BATCH);
        let shared = Arc::new(Shared {
            backend: Backend::Postgres(pool.clone()),
            commands,
            ready,
            changes: broadcast::channel(1024).0,
            limits,
            last_expiry: std::sync::atomic::AtomicI64::new(0),
        });
        // The writer's round trips to PostgreSQL are its whole latency, and each one waited
        // for a turn among the HTTP connections' tasks (about 0.3 ms under load, four times a
        // batch): on a thread of its own, its answers are read as soon as they come.
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("tasks-writer".to_owned())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(writer(weak, receiver)),
                    Err(err) => tracing::error!(error = %err, "cannot start the task writer"),
                }
            })
            .map_err(|err| anyhow::anyhow!("cannot start the task writer: {err}"))?;
        tokio::spawn(postgres_sweeper(Arc::downgrade(&shared)));
        tokio::spawn(postgres_listener(Arc::downgrade(&shared), pool));
        Ok(Self { shared })
    }

    /// Applies `op`; durable when this returns.
    pub async fn submit(&self, op: Op) -> Result<Outcome, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .commands
            .send((op, reply))
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// The task with this id.
    pub async fn get(&self, id: u64) -> anyhow::Result<Option<Task>> {
        Ok(match &self.shared.backend {
            Backend::Sqlite(conn) => sqlite_queries::get(&mut *conn.lock().await, id).await?,
            Backend::Postgres(pool) => postgres_queries::get(pool, id).await?,
        })
    }

    /// Tasks in id order, optionally of one state.
    pub async fn list(&self, state: Option<State>) -> anyhow::Result<Vec<Task>> {
        Ok(match &self.shared.backend {
            Backend::Sqlite(conn) => sqlite_queries::list(&mut *conn.lock().await, state).await?,
            Backend::Postgres(pool) => postgres_queries::list(pool, state).await?,
        })
    }

    /// How many tasks are in each state.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        Ok(match &self.shared.backend {
            Backend::Sqlite(conn) => sqlite_queries::stats(&mut *conn.lock().await).await?,
            Backend::Postgres(pool) => postgres_queries::stats(pool).await?,
        })
    }

    /// Changes whenever tasks may have become ready (created, released, returned).
    pub fn ready(&self) -> watch::Receiver<u64> {
        self.shared.ready.subscribe()
    }

    /// The ids of tasks whose state changed, commit by commit, on any replica.
    pub fn changes(&self) -> broadcast::Receiver<Changed> {
        self.shared.changes.subscribe()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &self.shared.backend {
            Backend::Sqlite(conn) => {
                sqlx::query("SELECT 1")
                    .execute(&mut *conn.lock().await)
                    .await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }
}

/// Settles expired leases and holds once a second, so `getById` and `list` show them.
async fn postgres_sweeper(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Backend::Postgres(pool) = &shared.backend else {
            return;
        };
        let mut work = Work::new(&shared.limits);
        let result = async {
            let mut tx = pool.begin().await?;
            postgres_queries::expire(&mut work, &mut tx).await?;
            announce(&mut tx, &work).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => publish(&shared, work.ready_changed, work.changed),
            Err(err) => tracing::warn!(error = %err, "expiry sweep failed; will retry"),
        }
    }
}

/// Wakes this replica's long polls when any replica makes tasks ready or changes a task's
/// state (and every few seconds, in case a notification was missed while reconnecting).
async fn postgres_listener(shared: std::sync::Weak<Shared>, pool: PgPool) {
    let mut listener: Option<PgListener> = None;
    loop {
        let mut missed = false;
        if listener.is_none() {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => {
                    if l.listen_all([READY_CHANNEL, CHANGED_CHANNEL]).await.is_ok() {
                        listener = Some(l);
                        // Whatever happened while not listening is unknown.
                        missed = true;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot LISTEN for task changes"),
            }
        }
        let mut changed: Option<Changed> = None;
        let mut ready = true;
        match listener.as_mut() {
            Some(l) => match tokio::time::timeout(Duration::from_secs(2), l.try_recv()).await {
                Ok(Ok(Some(notification))) if notification.channel() == CHANGED_CHANNEL => {
                    ready = false;
                    changed = Some(parse_changed(notification.payload()));
                }
                Ok(Ok(Some(_))) | Err(_) => {}
                Ok(Ok(None)) => missed = true,
                Ok(Err(_)) => listener = None,
            },
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if ready {
            shared.ready.send_modify(|v| *v = v.wrapping_add(1));
        }
        if missed {
            changed = Some(Arc::from([]));
        }
        if let Some(changed) = changed {
            let _ = shared.changes.send(changed);
        }
    }
}

/// The ids of a change notification; empty (unknown) when malformed or left out.
fn parse_changed(payload: &str) -> Changed {
    let ids: Option<Vec<u64>> = payload.split(',').map(|id| id.parse().ok()).collect();
    Arc::from(ids.unwrap_or_default())
}

/// Tells the other replicas, in the transaction (so only if it commits), that tasks became
/// ready and which tasks changed state.
async fn announce(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    work: &Work<'_>,
) -> Result<(), sqlx::Error> {
    if work.changed.is_empty() {
        if work.ready_changed {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(READY_CHANNEL)
                .execute(&mut **tx)
                .await?;
        }
        return Ok(());
    }
    let payload = changed_payload(&work.changed);
    let channel = if work.ready_changed {
        READY_CHANNEL
    } else {
        ""
    };
    // One statement for both notifications; an empty channel name notifies nobody, so it is
    // skipped with a CASE rather than sent.
    sqlx::query("SELECT CASE WHEN $1 <> '' THEN pg_notify($1, '') END, pg_notify($2, $3)")
        .bind(channel)
        .bind(CHANGED_CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The ids of a change notification: comma-separated, or empty ("look again") when too long
/// for one notification.
fn changed_payload(changed: &[u64]) -> String {
    let mut payload = String::new();
    for id in changed {
        if payload.len() > MAX_CHANGED_PAYLOAD {
            payload.clear();
            break;
        }
        if !payload.is_empty() {
            payload.push(',');
        }
        payload.push_str(&id.to_string());
    }
    payload
}

/// Wakes this replica's waiters after a commit: claimers when tasks became ready, and long
/// polls on the tasks that changed. (On PostgreSQL the notification wakes them too, a moment
/// later; a second look changes nothing.)
fn publish(shared: &Shared, ready_changed: bool, changed: Vec<u64>) {
    if ready_changed {
        shared.ready.send_modify(|v| *v = v.wrapping_add(1));
    }
    if !changed.is_empty() {
        let _ = shared.changes.send(Arc::from(changed));
    }
}

async fn writer(shared: std::sync::Weak<Shared>, mut commands: mpsc::Receiver<(Op, Reply)>) {
    let mut session = PgSession::default();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            command = commands.recv() => match command {
                Some(c) => batch.push(c),
                None => return,
            },
            _ = sweep.tick() => {}
        }
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // On PostgreSQL the sweeper settles expiries: an empty batch has nothing to do.
        if batch.is_empty() && matches!(shared.backend, Backend::Postgres(_)) {
            continue;
        }
        process(&shared, batch, &mut session).await;
    }
}

/// Applies a batch in one transaction; answers after the commit.
async fn process(shared: &Shared, batch: Vec<(Op, Reply)>, session: &mut PgSession) {
    let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.into_iter().unzip();
    let started = std::time::Instant::now();
    metrics::histogram!("shoal_tasks_batch_operations").record(ops.len() as f64);
    let result = match &shared.backend {
        Backend::Sqlite(conn) => process_sqlite(shared, conn, ops).await,
        Backend::Postgres(pool) => process_postgres(shared, pool, session, ops).await,
    };
    metrics::histogram!("shoal_tasks_batch_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok((outcomes, ready_changed, changed)) => {
            publish(shared, ready_changed, changed);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "commit failed; nothing of the batch was written");
            for reply in replies {
                let _ = reply.send(Err(QueueError::Storage(err.to_string())));
            }
        }
    }
}

type Outcomes = Vec<Result<Outcome, QueueError>>;

async fn process_sqlite(
    shared: &Shared,
    conn: &Mutex<SqliteConnection>,
    ops: Vec<Op>,
) -> Result<(Outcomes, bool, Vec<u64>), sqlx::Error> {
    let mut work = Work::new(&shared.limits);
    let mut conn = conn.lock().await;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // Leases and holds that ran out are settled before anything else is decided.
    sqlite_queries::expire(&mut work, &mut tx).await?;
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        outcomes.push(sqlite_queries::apply(&mut work, &mut tx, op).await?);
    }
    tx.commit().await?;
    Ok((outcomes, work.ready_changed, work.changed))
}

/// Times a batch that met a deadlock with another replica's is tried again.
const POSTGRES_BATCH_TRIES: u32 = 4;

/// The writer's PostgreSQL connection, kept between batches outside the pool: made on the
/// writer's own thread, and without the pool's ping before each use (a round trip).
#[derive(Default)]
struct PgSession {
    connection: Option<PgConnection>,
}

impl PgSession {
    /// The connection, made when there is none.
    async fn connection(&mut self, pool: &PgPool) -> Result<&mut PgConnection, sqlx::Error> {
        if self.connection.is_none() {
            // The batch's statements have one right plan whatever their arrays hold (index
            // lookups by id, key and the ready index). Left to choose, PostgreSQL planned the
            // read anew for nine batches in ten, which cost a fifth of the throughput of two
            // replicas.
            let options = (*pool.connect_options())
                .clone()
                .options([("plan_cache_mode", "force_generic_plan")]);
            let made = tokio::time::timeout(Duration::from_secs(10), options.connect())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
            self.connection = Some(made);
        }
        self.connection.as_mut().ok_or(sqlx::Error::PoolClosed)
    }
}

async fn process_postgres(
    shared: &Shared,
    pool: &PgPool,
    session: &mut PgSession,
    ops: Vec<Op>,
) -> Result<(Outcomes, bool, Vec<u64>), sqlx::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut work = Work::new(&shared.limits);
        // Claims settle expired leases at most every EXPIRY_EVERY (and the sweep every second),
        // not in every batch: two statements saved per batch, a lease returned at most that
        // much later.
        let last = shared
            .last_expiry
            .load(std::sync::atomic::Ordering::Relaxed);
        let expire = work.now.saturating_sub(last) >= millis(EXPIRY_EVERY);
        let mut begun = false;
        let attempt: Result<Outcomes, sqlx::Error> = async {
            let mut tx = sqlx::Connection::begin(session.connection(pool).await?).await?;
            begun = true;
            let outcomes = pg_batch::apply(&mut work, &mut tx, &ops, expire).await?;
            tx.commit().await?;
            Ok(outcomes
                .into_iter()
                .map(|o| o.unwrap_or(Err(QueueError::Closed)))
                .collect())
        }
        .await;
        let err = match attempt {
            Ok(outcomes) => {
                if expire && ops.iter().any(|op| matches!(op, Op::Claim { .. })) {
                    shared
                        .last_expiry
                        .store(work.now, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok((outcomes, work.ready_changed, work.changed));
            }
            Err(err) => err,
        };
        // An error of the server leaves the connection usable (the transaction was rolled
        // back); any other may have broken it (the server restarted since the last batch), so
        // a new one is made, and the batch is tried again if it had not begun.
        let lost = connection_lost(&err);
        if lost {
            session.connection = None;
        }
        let retry = is_retryable(&err) || (!begun && lost);
        if tries < POSTGRES_BATCH_TRIES && retry {
            metrics::counter!("shoal_tasks_batch_retries_total").increment(1);
            tracing::debug!(error = %err, tries, "batch met another replica's; retrying");
        } else {
            return Err(err);
        }
    }
}

/// The connection is unusable: broken, or ended by the server (shut down, restarted, or the
/// backend terminated by an administrator).
fn connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => true,
    }
}

/// A deadlock or serialization failure, or a create that met another replica's create with
/// the same idempotency key (unique violation): nothing was written, and trying again
/// succeeds (the retry finds the other replica's task).
fn is_retryable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("40P01" | "40001" | "23505")))
}

/// How often PostgreSQL batches with claims settle expired leases.
const EXPIRY_EVERY: Duration = Duration::from_millis(250);

struct Work<'a> {
    limits: &'a Limits,
    now: i64,
    ready_changed: bool,
    /// Tasks whose state changed.
    changed: Vec<u64>,
}

impl<'a> Work<'a> {
    fn new(limits: &'a Limits) -> Self {
        Self {
            limits,
            now: now_ms(),
            ready_changed: false,
            changed: Vec::new(),
        }
    }
}

/// A caller that names a claim must hold the current one: a slow worker whose lease ran out
/// and whose task was claimed again cannot finish or fail it.
fn check_lease(task: &Task, lease: Option<&str>) -> Result<(), QueueError> {
    match lease {
        Some(l) if task.lease.as_deref() != Some(l) => Err(QueueError::Conflict(format!(
            "lease {l} does not hold task {} (it ran out or the task was claimed again)",
            task.id
        ))),
        _ => Ok(()),
    }
}

impl Work<'_> {
    /// Applies an effect to a task in memory.
    fn change(&mut self, task: &mut Task, effect: Effect, reason: Option<String>) {
        match effect {
            Effect::Nothing => {}
            Effect::Claimed => {
                self.changed.push(task.id);
                task.state = State::InProgress;
                task.attempts = task.attempts.saturating_add(1);
                task.lease = Some(format!(
                    "{}-{}-{}",
                    task.id,
                    task.attempts,
                    uuid::Uuid::new_v4().simple()
                ));
                task.lease_expires_at = Some(self.now.saturating_add(millis(self.limits.lease)));
            }
            Effect::LeaseExtended => {
                task.lease_expires_at = Some(self.now.saturating_add(millis(self.limits.lease)));
            }
            Effect::MovesTo { state, error } => {
                self.changed.push(task.id);
                task.state = state;
                task.held = false;
                task.lease = None;
                task.lease_expires_at = None;
                task.hold_expires_at = None;
                if state == State::NotStarted {
                    self.ready_changed = true;
                }
                if state == State::Failed {
                    task.error = Some(error.or(reason).unwrap_or_else(|| "failed".to_owned()));
                } else if let Some(e) = error {
                    task.error = Some(e);
                }
            }
        }
    }
}

/// The operations, written once for both databases: `$lock` is the row lock a claim or an
/// expiry takes (PostgreSQL skips rows another replica holds), `$meta_lock` the lock on the id
/// counter (PostgreSQL waits for it, so ids stay consecutive across replicas).
macro_rules! queries {
    ($db:ty, $row:ty, $lock:literal, $meta_lock:literal) => {
        use sqlx::Row as _;

        use super::*;

        const SELECT_ALL: &str = "SELECT id, state, held, payload, attempts, error, lease, \
             lease_expires_at, hold_expires_at, worker FROM tasks ORDER BY id";
        const SELECT_BY_STATE: &str = "SELECT id, state, held, payload, attempts, error, lease, \
             lease_expires_at, hold_expires_at, worker FROM tasks WHERE state = $1 ORDER BY id";
        const SELECT_ONE: &str = "SELECT id, state, held, payload, attempts, error, lease, \
             lease_expires_at, hold_expires_at, worker FROM tasks WHERE id = $1";
        const SELECT_READY: &str = concat!(
            "SELECT id, state, held, payload, attempts, error, lease, lease_expires_at, \
             hold_expires_at, worker FROM tasks WHERE state = 0 AND held = 0 ORDER BY id LIMIT 1",
            $lock
        );
        const SELECT_EXPIRED_LEASES: &str = concat!(
            "SELECT id, state, held, payload, attempts, error, lease, lease_expires_at, \
             hold_expires_at, worker FROM tasks WHERE state = 1 AND lease_expires_at <= $1",
            $lock
        );
        const SELECT_EXPIRED_HOLDS: &str = concat!(
            "SELECT id, state, held, payload, attempts, error, lease, lease_expires_at, \
             hold_expires_at, worker FROM tasks WHERE state = 0 AND held = 1 AND hold_expires_at <= $1",
            $lock
        );
        const SELECT_BY_WORKER: &str = concat!(
            "SELECT id, state, held, payload, attempts, error, lease, lease_expires_at, \
             hold_expires_at, worker FROM tasks WHERE state = 1 AND worker = $1",
            $meta_lock
        );
        const SELECT_NEXT_ID: &str =
            concat!("SELECT next_id FROM tasks_meta WHERE id = 1", $meta_lock);

        pub(super) fn row_to_task(row: &$row) -> Task {
            Task {
                id: row.get::<i64, _>(0).max(0).cast_unsigned(),
                state: State::from_code(row.get(1)).unwrap_or(State::Failed),
                held: row.get::<i64, _>(2) != 0,
                payload: row.get(3),
                attempts: u32::try_from(row.get::<i64, _>(4)).unwrap_or(u32::MAX),
                error: row.get(5),
                lease: row.get(6),
                lease_expires_at: row.get(7),
                hold_expires_at: row.get(8),
                worker: row.get(9),
            }
        }

        pub(super) async fn get<'e, E>(executor: E, id: u64) -> Result<Option<Task>, sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let row = sqlx::query(SELECT_ONE)
                .bind(id.cast_signed())
                .fetch_optional(executor)
                .await?;
            Ok(row.as_ref().map(row_to_task))
        }

        pub(super) async fn list<'e, E>(executor: E, state: Option<State>) -> Result<Vec<Task>, sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let rows = match state {
                Some(s) => {
                    sqlx::query(SELECT_BY_STATE)
                        .bind(i64::from(s.code()))
                        .fetch_all(executor)
                        .await?
                }
                None => sqlx::query(SELECT_ALL).fetch_all(executor).await?,
            };
            Ok(rows.iter().map(row_to_task).collect())
        }

        /// Settles leases and holds that ran out, and deletes tasks past the retention.
        pub(super) async fn expire(
            work: &mut Work<'_>,
            tx: &mut <$db as sqlx::Database>::Connection,
        ) -> Result<(), sqlx::Error> {
            if let Some(retention) = work.limits.retention {
                let deleted = sqlx::query("DELETE FROM tasks WHERE state IN (2, 3) AND updated_at < $1")
                    .bind(work.now.saturating_sub(millis(retention)))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted > 0 {
                    // Kept for the counts (see `stats`).
                    sqlx::query("UPDATE tasks_meta SET deleted = deleted + $1 WHERE id = 1")
                        .bind(i64::try_from(deleted).unwrap_or(i64::MAX))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for (query, action) in [
                (SELECT_EXPIRED_LEASES, Action::LeaseExpired),
                (SELECT_EXPIRED_HOLDS, Action::HoldExpired),
            ] {
                let rows = sqlx::query(query)
                    .bind(work.now)
                    .fetch_all(&mut *tx)
                    .await?;
                for row in &rows {
                    let mut task = row_to_task(row);
                    if let Ok(effect) =
                        state::decide(task.snapshot(), action, work.limits.max_attempts)
                    {
                        work.change(&mut task, effect, None);
                        write(tx, &task, work.now).await?;
                        if action == Action::LeaseExpired {
                            metrics::counter!("shoal_tasks_leases_expired_total").increment(1);
                        }
                    }
                }
            }
            Ok(())
        }

        pub(super) async fn apply(
            work: &mut Work<'_>,
            tx: &mut <$db as sqlx::Database>::Connection,
            op: Op,
        ) -> Result<Result<Outcome, QueueError>, sqlx::Error> {
            match op {
                Op::Create { payload, held, key } => {
                    // After the counter's lock, so two creates with one key cannot both miss.
                    let id: i64 = sqlx::query(SELECT_NEXT_ID).fetch_one(&mut *tx).await?.get(0);
                    if let Some(key) = &key {
                        let existing = sqlx::query("SELECT id FROM tasks WHERE idempotency_key = $1")
                            .bind(key)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if let Some(row) = existing {
                            return Ok(Ok(Outcome::Existing(row.get::<i64, _>(0).cast_unsigned())));
                        }
                    }
                    let hold_expires_at =
                        held.then(|| work.now.saturating_add(millis(work.limits.hold_timeout)));
                    sqlx::query(
                        "INSERT INTO tasks (id, state, held, payload, attempts, error, lease, \
                         lease_expires_at, hold_expires_at, created_at, updated_at, \
                         idempotency_key) \
                         VALUES ($1, 0, $2, $3, 0, NULL, NULL, NULL, $4, $5, $5, $6)",
                    )
                    .bind(id)
                    .bind(i64::from(held))
                    .bind(payload)
                    .bind(hold_expires_at)
                    .bind(work.now)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE tasks_meta SET next_id = $1 WHERE id = 1")
                        .bind(id + 1)
                        .execute(&mut *tx)
                        .await?;
                    if !held {
                        work.ready_changed = true;
                    }
                    Ok(Ok(Outcome::Created(id.cast_unsigned())))
                }
                Op::Claim { worker } => {
                    let Some(row) = sqlx::query(SELECT_READY).fetch_optional(&mut *tx).await? else {
                        return Ok(Ok(Outcome::Claimed(None)));
                    };
                    let mut task = row_to_task(&row);
                    match state::decide(task.snapshot(), Action::Claim, work.limits.max_attempts) {
                        Ok(effect) => {
                            work.change(&mut task, effect, None);
                            task.worker = worker;
                            write(tx, &task, work.now).await?;
                            Ok(Ok(Outcome::Claimed(Some(task))))
                        }
                        Err(_) => Ok(Ok(Outcome::Claimed(None))),
                    }
                }
                Op::ReleaseWorker { worker } => {
                    let rows = sqlx::query(SELECT_BY_WORKER)
                        .bind(&worker)
                        .fetch_all(&mut *tx)
                        .await?;
                    let mut released = 0;
                    for row in &rows {
                        let mut task = row_to_task(row);
                        if let Ok(effect) =
                            state::decide(task.snapshot(), Action::LeaseExpired, work.limits.max_attempts)
                        {
                            work.change(&mut task, effect, None);
                            write(tx, &task, work.now).await?;
                            released += 1;
                        }
                    }
                    metrics::counter!("shoal_tasks_leases_released_total").increment(released);
                    Ok(Ok(Outcome::Released(released)))
                }
                Op::Act {
                    id,
                    action,
                    lease,
                    reason,
                } => {
                    let Some(mut task) = load(tx, id).await? else {
                        return Ok(Err(QueueError::NotFound(id)));
                    };
                    if let Err(e) = check_lease(&task, lease.as_deref()) {
                        return Ok(Err(e));
                    }
                    match state::decide(task.snapshot(), action, work.limits.max_attempts) {
                        Ok(effect) => {
                            work.change(&mut task, effect, reason);
                            write(tx, &task, work.now).await?;
                            Ok(Ok(Outcome::Done(task)))
                        }
                        Err(refusal) => Ok(Err(QueueError::Conflict(refusal.0))),
                    }
                }
                Op::Set {
                    id,
                    state: target,
                    lease,
                } => {
                    let Some(mut task) = load(tx, id).await? else {
                        return Ok(Err(QueueError::NotFound(id)));
                    };
                    if let Err(e) = check_lease(&task, lease.as_deref()) {
                        return Ok(Err(e));
                    }
                    match state::set_by_id(task.snapshot(), target, work.limits.max_attempts) {
                        Ok(effect) => {
                            work.change(&mut task, effect, None);
                            write(tx, &task, work.now).await?;
                            Ok(Ok(Outcome::Done(task)))
                        }
                        Err(refusal) => Ok(Err(QueueError::Conflict(refusal.0))),
                    }
                }
            }
        }

        /// The task, locked for this transaction on PostgreSQL.
        async fn load(tx: &mut <$db as sqlx::Database>::Connection, id: u64) -> Result<Option<Task>, sqlx::Error> {
            let row = sqlx::query(concat!(
                "SELECT id, state, held, payload, attempts, error, lease, lease_expires_at, \
                 hold_expires_at, worker FROM tasks WHERE id = $1",
                $meta_lock
            ))
            .bind(id.cast_signed())
            .fetch_optional(&mut *tx)
            .await?;
            Ok(row.as_ref().map(row_to_task))
        }

        async fn write(tx: &mut <$db as sqlx::Database>::Connection, task: &Task, now: i64) -> Result<(), sqlx::Error> {
            sqlx::query(
                "UPDATE tasks SET state = $1, held = $2, attempts = $3, error = $4, lease = $5, \
                 lease_expires_at = $6, hold_expires_at = $7, updated_at = $8, worker = $10 \
                 WHERE id = $9",
            )
            .bind(i64::from(task.state.code()))
            .bind(i64::from(task.held))
            .bind(i64::from(task.attempts))
            .bind(&task.error)
            .bind(&task.lease)
            .bind(task.lease_expires_at)
            .bind(task.hold_expires_at)
            .bind(now)
            .bind(task.id.cast_signed())
            .bind(&task.worker)
            .execute(&mut *tx)
            .await?;
            Ok(())
        }

        /// Tasks per state; held tasks apart (they are not waiting for a worker). Each count
        /// but the finished one reads a small partial index; finished tasks are the rest of
        /// every id made (less those retention deleted), so counting stays cheap however many
        /// there are. One statement, so one snapshot.
        pub(super) async fn stats<'e, E>(executor: E) -> Result<Stats, sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM tasks WHERE state = 0 AND held = 0), \
                 (SELECT COUNT(*) FROM tasks WHERE state = 0 AND held = 1), \
                 (SELECT COUNT(*) FROM tasks WHERE state = 1), \
                 (SELECT COUNT(*) FROM tasks WHERE state = 3), \
                 (SELECT next_id - deleted FROM tasks_meta WHERE id = 1)",
            )
            .fetch_one(executor)
            .await?;
            let count = |i: usize| row.get::<i64, _>(i).max(0).cast_unsigned();
            let stats = Stats {
                not_started: count(0),
                held: count(1),
                in_progress: count(2),
                failed: count(3),
                finished: 0,
            };
            let others = stats.not_started + stats.held + stats.in_progress + stats.failed;
            Ok(Stats {
                finished: count(4).saturating_sub(others),
                ..stats
            })
        }
    };
}

mod sqlite_queries {
    queries!(sqlx::Sqlite, sqlx::sqlite::SqliteRow, "", "");
}

mod postgres_queries {
    queries!(
        Postgres,
        sqlx::postgres::PgRow,
        " FOR UPDATE SKIP LOCKED",
        " FOR UPDATE"
    );
}
