//! A batch of operations on PostgreSQL in a handful of statements, whatever its size.
//!
//! Applying a batch one operation at a time costs two to four round trips per operation
//! inside the transaction, which made a batch of 64 operations take longer than its commit.
//! Here each kind of operation is one set-based step, in this lock order (so batches of
//! different replicas rarely wait on each other and never wait in a cycle):
//!
//! 1. operations on named tasks (finish, fail, extend, release, cancel, setById): their rows
//!    are locked in id order in one `SELECT … WHERE id = ANY(…) ORDER BY id FOR UPDATE`,
//!    decided in memory in the order the operations came ([`crate::state::decide`], as
//!    everywhere), and written back in one `UPDATE … FROM UNNEST(…)`; hand-backs of a
//!    worker's claims (rare) then run as before;
//! 2. claims: expired leases settled (when due), then the `k` oldest ready tasks taken in one
//!    `SELECT … LIMIT k FOR UPDATE SKIP LOCKED` (never waits), written in one statement;
//! 3. creates, last, so the id counter row is locked only from here to the commit: one lookup
//!    of every idempotency key of the batch, one counter update that reserves the ids, one
//!    multi-row `INSERT`. Ids stay consecutive across replicas: the
//!    counter is transactional, so a batch that fails gives its ids back. Two replicas creating
//!    with one key at once both miss in the lookup; the unique index then refuses the second
//!    `INSERT`, its batch is retried whole, and the retry finds the first replica's task.

use std::collections::{BTreeSet, HashMap};

use sqlx::{Postgres, Row as _, Transaction};

use super::{Op, Outcome, QueueError, Work, check_lease, millis, postgres_queries};
use crate::state::{self, Action};
use crate::task::Task;

/// The task columns, in `row_to_task`'s order.
macro_rules! columns {
    () => {
        "id, state, held, payload, attempts, error, lease, lease_expires_at, hold_expires_at, worker"
    };
}

/// What each operation of the batch came to, by position; `None` for none yet.
type Slots = Vec<Option<Result<Outcome, QueueError>>>;

/// Applies `ops` inside `tx`; the outcome of each, by position. Expired leases are settled
/// before the claims when `expire` says they are due.
pub(super) async fn apply(
    work: &mut Work<'_>,
    tx: &mut Transaction<'_, Postgres>,
    ops: &[Op],
    expire: bool,
) -> Result<Slots, sqlx::Error> {
    let mut outcomes: Slots = (0..ops.len()).map(|_| None).collect();
    named(work, tx, ops, &mut outcomes).await?;
    for (i, op) in ops.iter().enumerate() {
        if matches!(op, Op::ReleaseWorker { .. }) {
            outcomes[i] = Some(postgres_queries::apply(work, tx, op.clone()).await?);
        }
    }
    claims(work, tx, ops, &mut outcomes, expire).await?;
    creates(work, tx, ops, &mut outcomes).await?;
    Ok(outcomes)
}

/// Step 1: every operation on a task named by id.
async fn named(
    work: &mut Work<'_>,
    tx: &mut Transaction<'_, Postgres>,
    ops: &[Op],
    outcomes: &mut Slots,
) -> Result<(), sqlx::Error> {
    let ids: BTreeSet<i64> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Act { id, .. } | Op::Set { id, .. } => Some(id.cast_signed()),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = ids.into_iter().collect();
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut tasks: HashMap<u64, Task> = rows
        .iter()
        .map(postgres_queries::row_to_task)
        .map(|t| (t.id, t))
        .collect();
    let mut dirty = BTreeSet::new();
    for (i, op) in ops.iter().enumerate() {
        let (id, lease, decision) = match op {
            Op::Act {
                id,
                action,
                lease,
                reason,
            } => (*id, lease, Decision::Act(*action, reason.clone())),
            Op::Set {
                id,
                state: target,
                lease,
            } => (*id, lease, Decision::Set(*target)),
            _ => continue,
        };
        let Some(task) = tasks.get_mut(&id) else {
            outcomes[i] = Some(Err(QueueError::NotFound(id)));
            continue;
        };
        if let Err(e) = check_lease(task, lease.as_deref()) {
            outcomes[i] = Some(Err(e));
            continue;
        }
        let max = work.limits.max_attempts;
        let (decided, reason) = match decision {
            Decision::Act(action, reason) => (state::decide(task.snapshot(), action, max), reason),
            Decision::Set(target) => (state::set_by_id(task.snapshot(), target, max), None),
        };
        outcomes[i] = Some(match decided {
            Ok(effect) => {
                work.change(task, effect, reason);
                dirty.insert(id);
                Ok(Outcome::Done(task.clone()))
            }
            Err(refusal) => Err(QueueError::Conflict(refusal.0)),
        });
    }
    let changed: Vec<&Task> = dirty.iter().filter_map(|id| tasks.get(id)).collect();
    write_many(tx, &changed, work.now).await
}

/// What an operation on a named task asks.
enum Decision {
    Act(Action, Option<String>),
    Set(state::State),
}

/// Step 2: every claim of the batch, from one selection of ready tasks.
async fn claims(
    work: &mut Work<'_>,
    tx: &mut Transaction<'_, Postgres>,
    ops: &[Op],
    outcomes: &mut Slots,
    expire: bool,
) -> Result<(), sqlx::Error> {
    let claimers: Vec<(usize, Option<String>)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            Op::Claim { worker } => Some((i, worker.clone())),
            _ => None,
        })
        .collect();
    if claimers.is_empty() {
        return Ok(());
    }
    // A claim must see the tasks whose leases ran out as ready again.
    if expire {
        postgres_queries::expire(work, tx).await?;
    }
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM tasks WHERE state = 0 AND held = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(i64::try_from(claimers.len()).unwrap_or(i64::MAX))
    .fetch_all(&mut **tx)
    .await?;
    let mut ready = rows.iter().map(postgres_queries::row_to_task);
    let mut claimed = Vec::new();
    for (i, worker) in claimers {
        let mut outcome = Outcome::Claimed(None);
        // A task the state machine refuses to hand out is skipped for the next one.
        for mut task in ready.by_ref() {
            if let Ok(effect) =
                state::decide(task.snapshot(), Action::Claim, work.limits.max_attempts)
            {
                work.change(&mut task, effect, None);
                task.worker = worker;
                outcome = Outcome::Claimed(Some(task.clone()));
                claimed.push(task);
                break;
            }
        }
        outcomes[i] = Some(Ok(outcome));
    }
    let claimed: Vec<&Task> = claimed.iter().collect();
    write_many(tx, &claimed, work.now).await
}

/// Step 3: every create of the batch, holding the id counter only from here to the commit.
async fn creates(
    work: &mut Work<'_>,
    tx: &mut Transaction<'_, Postgres>,
    ops: &[Op],
    outcomes: &mut Slots,
) -> Result<(), sqlx::Error> {
    if !ops.iter().any(|op| matches!(op, Op::Create { .. })) {
        return Ok(());
    }
    let keys: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Create { key: Some(k), .. } => Some(k.clone()),
            _ => None,
        })
        .collect();
    let mut known: HashMap<String, Known> = if keys.is_empty() {
        HashMap::new()
    } else {
        sqlx::query("SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| (row.get::<String, _>(0), Known::Stored(row.get::<i64, _>(1))))
            .collect()
    };
    // Which creates make a task (numbered from 0 within the batch); the others are answered
    // with the task that has their key.
    let mut fresh: Vec<(usize, i64)> = Vec::new();
    let mut same_key_later: Vec<(usize, i64)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Op::Create { key, .. } = op else {
            continue;
        };
        match key.as_ref().and_then(|k| known.get(k).copied()) {
            Some(Known::Stored(id)) => {
                outcomes[i] = Some(Ok(Outcome::Existing(id.cast_unsigned())));
            }
            Some(Known::InBatch(n)) => same_key_later.push((i, n)),
            None => {
                let n = i64::try_from(fresh.len()).unwrap_or(i64::MAX);
                if let Some(k) = key {
                    known.insert(k.clone(), Known::InBatch(n));
                }
                fresh.push((i, n));
            }
        }
    }
    if fresh.is_empty() {
        return Ok(());
    }
    let count = i64::try_from(fresh.len()).unwrap_or(i64::MAX);
    if fresh
        .iter()
        .any(|(i, _)| matches!(&ops[*i], Op::Create { held: false, .. }))
    {
        work.ready_changed = true;
    }
    // Reserves the ids; the lock on the counter row is held until the commit, so ids are
    // handed out in commit order across replicas.
    let first: i64 = sqlx::query(
        "UPDATE tasks_meta SET next_id = next_id + $1 WHERE id = 1 RETURNING next_id - $1",
    )
    .bind(count)
    .fetch_one(&mut **tx)
    .await?
    .get(0);
    let (mut ids, mut held, mut payloads, mut holds, mut new_keys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &(i, n) in &fresh {
        let Op::Create {
            payload,
            held: is_held,
            key,
        } = &ops[i]
        else {
            continue;
        };
        let id = first + n;
        ids.push(id);
        held.push(i64::from(*is_held));
        payloads.push(payload.clone());
        holds.push(is_held.then(|| work.now.saturating_add(millis(work.limits.hold_timeout))));
        new_keys.push(key.clone());
        outcomes[i] = Some(Ok(Outcome::Created(id.cast_unsigned())));
    }
    for (i, n) in same_key_later {
        outcomes[i] = Some(Ok(Outcome::Existing((first + n).cast_unsigned())));
    }
    sqlx::query(
        "INSERT INTO tasks (id, state, held, payload, attempts, error, lease, lease_expires_at, \
         hold_expires_at, created_at, updated_at, idempotency_key) \
         SELECT u.id, 0, u.held, u.payload, 0, NULL, NULL, NULL, u.hold_expires_at, $5, $5, u.key \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $6::text[]) \
         AS u(id, held, payload, hold_expires_at, key)",
    )
    .bind(&ids)
    .bind(&held)
    .bind(&payloads)
    .bind(&holds)
    .bind(work.now)
    .bind(&new_keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Where the task with an idempotency key is.
#[derive(Clone, Copy)]
enum Known {
    /// Already stored, with this id.
    Stored(i64),
    /// Made by this batch: its `n`-th new task.
    InBatch(i64),
}

/// Writes the changed fields of `tasks` in one statement.
async fn write_many(
    tx: &mut Transaction<'_, Postgres>,
    tasks: &[&Task],
    now: i64,
) -> Result<(), sqlx::Error> {
    if tasks.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = tasks.iter().map(|t| t.id.cast_signed()).collect();
    let states: Vec<i64> = tasks.iter().map(|t| i64::from(t.state.code())).collect();
    let held: Vec<i64> = tasks.iter().map(|t| i64::from(t.held)).collect();
    let attempts: Vec<i64> = tasks.iter().map(|t| i64::from(t.attempts)).collect();
    let errors: Vec<Option<String>> = tasks.iter().map(|t| t.error.clone()).collect();
    let leases: Vec<Option<String>> = tasks.iter().map(|t| t.lease.clone()).collect();
    let lease_expiry: Vec<Option<i64>> = tasks.iter().map(|t| t.lease_expires_at).collect();
    let hold_expiry: Vec<Option<i64>> = tasks.iter().map(|t| t.hold_expires_at).collect();
    let workers: Vec<Option<String>> = tasks.iter().map(|t| t.worker.clone()).collect();
    sqlx::query(
        "UPDATE tasks AS t SET state = u.state, held = u.held, attempts = u.attempts, \
         error = u.error, lease = u.lease, lease_expires_at = u.lease_expires_at, \
         hold_expires_at = u.hold_expires_at, updated_at = $10, worker = u.worker \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], \
         $6::text[], $7::bigint[], $8::bigint[], $9::text[]) \
         AS u(id, state, held, attempts, error, lease, lease_expires_at, hold_expires_at, worker) \
         WHERE t.id = u.id",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&held)
    .bind(&attempts)
    .bind(&errors)
    .bind(&leases)
    .bind(&lease_expiry)
    .bind(&hold_expiry)
    .bind(&workers)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
