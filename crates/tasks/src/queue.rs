//! The queue on the embedded SQLite file: one connection, one writer task.
//!
//! Every change goes through the writer, which applies whatever operations are waiting in one
//! transaction (group commit) and answers only after the commit, so an acknowledged transition
//! is durable. Each operation reads the task, asks [`crate::state::decide`] what the action
//! does, and writes the result: one decision function for every route. Expired leases are
//! returned at claim time (and by a once-a-second sweep, for visibility), never by a sleeping
//! task per claim.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::SqliteConnection;
use sqlx::{Row as _, Sqlite, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::state::{self, Action, Effect, State};
use crate::task::Task;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Timing and limits of the queue.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a claim holds a task.
    pub lease: Duration,
    /// How long a held task may wait for its release.
    pub hold_timeout: Duration,
    /// Claims a task gets before going back to the queue becomes failing.
    pub max_attempts: u32,
}

/// An operation on the queue.
#[derive(Debug)]
pub enum Op {
    /// A new task, optionally held.
    Create {
        /// JSON text.
        payload: Option<String>,
        /// Invisible to workers until released.
        held: bool,
    },
    /// Claim the oldest ready task.
    Claim,
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
    /// The claimed task, or none ready.
    Claimed(Option<Task>),
    /// The task after the action.
    Done(Task),
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

struct Shared {
    conn: Mutex<SqliteConnection>,
    commands: mpsc::Sender<(Op, Reply)>,
    ready: watch::Sender<u64>,
    limits: Limits,
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

fn row_to_task(row: &sqlx::sqlite::SqliteRow) -> Task {
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
    }
}

impl Queue {
    /// Opens `tasks.sqlite3` in `dir` and starts the writer; it stops with the last handle.
    pub async fn open(dir: &Path, full_sync: bool, limits: Limits) -> anyhow::Result<Self> {
        let conn = shoal_core::db::open_sqlite_exclusive(
            &dir.join("tasks.sqlite3"),
            full_sync,
            &MIGRATOR,
            "tasks",
        )
        .await?;
        let (commands, receiver) = mpsc::channel(MAX_BATCH);
        let (ready, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            commands,
            ready,
            limits,
        });
        tokio::spawn(writer(Arc::downgrade(&shared), receiver));
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
        let mut conn = self.shared.conn.lock().await;
        let row = sqlx::query(SELECT_ONE)
            .bind(id.cast_signed())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.as_ref().map(row_to_task))
    }

    /// Tasks in id order, optionally of one state.
    pub async fn list(&self, state: Option<State>) -> anyhow::Result<Vec<Task>> {
        let mut conn = self.shared.conn.lock().await;
        let rows = match state {
            Some(s) => {
                sqlx::query(SELECT_BY_STATE)
                    .bind(i64::from(s.code()))
                    .fetch_all(&mut *conn)
                    .await?
            }
            None => sqlx::query(SELECT_ALL).fetch_all(&mut *conn).await?,
        };
        Ok(rows.iter().map(row_to_task).collect())
    }

    /// Changes whenever tasks may have become ready (created, released, returned).
    pub fn ready(&self) -> watch::Receiver<u64> {
        self.shared.ready.subscribe()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.shared.conn.lock().await)
            .await?;
        Ok(())
    }
}

const SELECT_ALL: &str = "SELECT id, state, held, payload, attempts, error, lease, \
     lease_expires_at, hold_expires_at FROM tasks ORDER BY id";
const SELECT_BY_STATE: &str = "SELECT id, state, held, payload, attempts, error, lease, \
     lease_expires_at, hold_expires_at FROM tasks WHERE state = ?1 ORDER BY id";
const SELECT_ONE: &str = "SELECT id, state, held, payload, attempts, error, lease, \
     lease_expires_at, hold_expires_at FROM tasks WHERE id = ?1";
const SELECT_READY: &str = "SELECT id, state, held, payload, attempts, error, lease, \
     lease_expires_at, hold_expires_at FROM tasks WHERE state = 0 AND held = 0 ORDER BY id LIMIT 1";
const SELECT_EXPIRED_LEASES: &str = "SELECT id, state, held, payload, attempts, error, lease, \
     lease_expires_at, hold_expires_at FROM tasks WHERE state = 1 AND lease_expires_at <= ?1";
const SELECT_EXPIRED_HOLDS: &str = "SELECT id, state, held, payload, attempts, error, lease, \
     lease_expires_at, hold_expires_at FROM tasks WHERE state = 0 AND held = 1 AND hold_expires_at <= ?1";

async fn writer(shared: std::sync::Weak<Shared>, mut commands: mpsc::Receiver<(Op, Reply)>) {
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
        process(&shared, batch).await;
    }
}

/// Applies a batch in one transaction; answers after the commit.
async fn process(shared: &Shared, batch: Vec<(Op, Reply)>) {
    let now = now_ms();
    let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.into_iter().unzip();
    let mut work = Work {
        limits: &shared.limits,
        now,
        ready_changed: false,
    };
    let mut conn = shared.conn.lock().await;
    let result: Result<Vec<Result<Outcome, QueueError>>, sqlx::Error> = async {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // Leases and holds that ran out are settled before anything else is decided.
        work.expire(&mut tx).await?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(work.apply(&mut tx, op).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
    .await;
    drop(conn);
    match result {
        Ok(outcomes) => {
            if work.ready_changed {
                shared.ready.send_modify(|v| *v = v.wrapping_add(1));
            }
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

struct Work<'a> {
    limits: &'a Limits,
    now: i64,
    ready_changed: bool,
}

impl Work<'_> {
    async fn expire(&mut self, tx: &mut Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        let leases = sqlx::query(SELECT_EXPIRED_LEASES)
            .bind(self.now)
            .fetch_all(&mut **tx)
            .await?;
        for row in &leases {
            let mut task = row_to_task(row);
            if let Ok(effect) = state::decide(
                task.snapshot(),
                Action::LeaseExpired,
                self.limits.max_attempts,
            ) {
                self.change(&mut task, effect, None);
                write(tx, &task, self.now).await?;
            }
        }
        let holds = sqlx::query(SELECT_EXPIRED_HOLDS)
            .bind(self.now)
            .fetch_all(&mut **tx)
            .await?;
        for row in &holds {
            let mut task = row_to_task(row);
            if let Ok(effect) = state::decide(
                task.snapshot(),
                Action::HoldExpired,
                self.limits.max_attempts,
            ) {
                self.change(&mut task, effect, None);
                write(tx, &task, self.now).await?;
            }
        }
        Ok(())
    }

    /// Applies an effect to a task in memory.
    fn change(&mut self, task: &mut Task, effect: Effect, reason: Option<String>) {
        match effect {
            Effect::Nothing => {}
            Effect::Claimed => {
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

    async fn apply(
        &mut self,
        tx: &mut Transaction<'_, Sqlite>,
        op: Op,
    ) -> Result<Result<Outcome, QueueError>, sqlx::Error> {
        match op {
            Op::Create { payload, held } => {
                let id: i64 = sqlx::query("SELECT next_id FROM tasks_meta WHERE id = 1")
                    .fetch_one(&mut **tx)
                    .await?
                    .get(0);
                let hold_expires_at =
                    held.then(|| self.now.saturating_add(millis(self.limits.hold_timeout)));
                sqlx::query(
                    "INSERT INTO tasks (id, state, held, payload, attempts, error, lease, \
                     lease_expires_at, hold_expires_at, created_at, updated_at) \
                     VALUES (?1, 0, ?2, ?3, 0, NULL, NULL, NULL, ?4, ?5, ?5)",
                )
                .bind(id)
                .bind(i64::from(held))
                .bind(payload)
                .bind(hold_expires_at)
                .bind(self.now)
                .execute(&mut **tx)
                .await?;
                sqlx::query("UPDATE tasks_meta SET next_id = ?1 WHERE id = 1")
                    .bind(id + 1)
                    .execute(&mut **tx)
                    .await?;
                if !held {
                    self.ready_changed = true;
                }
                Ok(Ok(Outcome::Created(id.cast_unsigned())))
            }
            Op::Claim => {
                let Some(row) = sqlx::query(SELECT_READY).fetch_optional(&mut **tx).await? else {
                    return Ok(Ok(Outcome::Claimed(None)));
                };
                let mut task = row_to_task(&row);
                match state::decide(task.snapshot(), Action::Claim, self.limits.max_attempts) {
                    Ok(effect) => {
                        self.change(&mut task, effect, None);
                        write(tx, &task, self.now).await?;
                        Ok(Ok(Outcome::Claimed(Some(task))))
                    }
                    Err(_) => Ok(Ok(Outcome::Claimed(None))),
                }
            }
            Op::Act {
                id,
                action,
                lease,
                reason,
            } => {
                let Some(mut task) = self.load(tx, id).await? else {
                    return Ok(Err(QueueError::NotFound(id)));
                };
                if let Err(e) = check_lease(&task, lease.as_deref()) {
                    return Ok(Err(e));
                }
                match state::decide(task.snapshot(), action, self.limits.max_attempts) {
                    Ok(effect) => {
                        self.change(&mut task, effect, reason);
                        write(tx, &task, self.now).await?;
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
                let Some(mut task) = self.load(tx, id).await? else {
                    return Ok(Err(QueueError::NotFound(id)));
                };
                if let Err(e) = check_lease(&task, lease.as_deref()) {
                    return Ok(Err(e));
                }
                match state::set_by_id(task.snapshot(), target, self.limits.max_attempts) {
                    Ok(effect) => {
                        self.change(&mut task, effect, None);
                        write(tx, &task, self.now).await?;
                        Ok(Ok(Outcome::Done(task)))
                    }
                    Err(refusal) => Ok(Err(QueueError::Conflict(refusal.0))),
                }
            }
        }
    }

    async fn load(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        id: u64,
    ) -> Result<Option<Task>, sqlx::Error> {
        let row = sqlx::query(SELECT_ONE)
            .bind(id.cast_signed())
            .fetch_optional(&mut **tx)
            .await?;
        Ok(row.as_ref().map(row_to_task))
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

async fn write(tx: &mut Transaction<'_, Sqlite>, task: &Task, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tasks SET state = ?1, held = ?2, attempts = ?3, error = ?4, lease = ?5, \
         lease_expires_at = ?6, hold_expires_at = ?7, updated_at = ?8 WHERE id = ?9",
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}
