//! A batch of operations on PostgreSQL in four round trips, whatever its size.
//!
//! Applying a batch one operation at a time cost two to four round trips per operation inside
//! the transaction, and even one set-based statement per kind of operation left a batch of ten
//! round trips, most of its time spent waiting on the loopback. Here a batch is `BEGIN`, one
//! statement that reads, one that writes, and `COMMIT`:
//!
//! 1. **read** — in one statement: the tasks the batch names by id (finish, fail, extend,
//!    release, cancel, setById), locked in id order (`FOR UPDATE`, so batches of two replicas
//!    never wait on each other in a cycle); the `k` oldest ready tasks for the batch's `k`
//!    claims (`FOR UPDATE SKIP LOCKED`: never waits, another replica's claims are passed
//!    over); and the tasks that already have one of the batch's idempotency keys;
//! 2. **decide** in memory, in the order the operations came, with [`crate::state::decide`] as
//!    everywhere: named operations first, then claims (a candidate a named operation of the
//!    batch changed is decided in its new state), then creates;
//! 3. **write** — in one statement: every changed task (`UPDATE … FROM UNNEST(…)`), the id
//!    counter advanced by the number of new tasks, the new tasks (one multi-row `INSERT`), and
//!    the notifications that wake the other replicas' long polls (sent only if it commits).
//!
//! The id counter row is locked only from the write to the commit, so ids stay consecutive
//! across replicas: the counter is transactional, and a batch that fails gives its ids back.
//! Two replicas creating with one key at once both miss in their reads; the unique index then
//! refuses the second `INSERT`, its batch is retried whole, and the retry finds the first
//! replica's task. Hand-backs of a worker's claims (rare) and the settling of expired leases
//! (at most every 250 ms) run as statements of their own before the read.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::Row as _;
use sqlx::postgres::PgConnection;

use super::{
    CHANGED_CHANNEL, Op, Outcome, QueueError, READY_CHANNEL, Work, changed_payload, check_lease,
    millis, postgres_queries,
};
use crate::state::{self, Action};
use crate::task::Task;

/// What each operation of the batch came to, by position; `None` for none yet.
type Slots = Vec<Option<Result<Outcome, QueueError>>>;

/// The read of a batch: named tasks (`part` 0), claim candidates oldest first (1) and the ids
/// of known idempotency keys (2). Columns 0–9 are `row_to_task`'s.
const READ: &str = "WITH named AS (\
       SELECT id, state, held, payload, attempts, error, lease, lease_expires_at, \
       hold_expires_at, worker FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE), \
     ready AS (\
       SELECT id, state, held, payload, attempts, error, lease, lease_expires_at, \
       hold_expires_at, worker FROM tasks WHERE state = 0 AND held = 0 \
       ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED), \
     keyed AS (SELECT id, idempotency_key FROM tasks WHERE idempotency_key = ANY($3)) \
     SELECT *, 0 AS part, NULL::text AS key FROM named \
     UNION ALL SELECT *, 1, NULL FROM ready \
     UNION ALL SELECT id, 0::bigint, 0::bigint, NULL, 0::bigint, NULL, NULL, NULL::bigint, \
       NULL::bigint, NULL, 2, idempotency_key FROM keyed";

/// The write of a batch; answers the first new id (NULL without creates). Every part runs
/// exactly once whether or not the final `SELECT` names it.
const WRITE: &str = "WITH changed AS (\
       UPDATE tasks AS t SET state = u.state, held = u.held, attempts = u.attempts, \
       error = u.error, lease = u.lease, lease_expires_at = u.lease_expires_at, \
       hold_expires_at = u.hold_expires_at, updated_at = $10, worker = u.worker \
       FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], \
       $6::text[], $7::bigint[], $8::bigint[], $9::text[]) \
       AS u(id, state, held, attempts, error, lease, lease_expires_at, hold_expires_at, worker) \
       WHERE t.id = u.id), \
     counter AS (\
       UPDATE tasks_meta SET next_id = next_id + $11 WHERE id = 1 AND $11 > 0 \
       RETURNING next_id - $11 AS first), \
     created AS (\
       INSERT INTO tasks (id, state, held, payload, attempts, error, lease, lease_expires_at, \
       hold_expires_at, created_at, updated_at, idempotency_key) \
       SELECT counter.first + u.n - 1, 0, u.held, u.payload, 0, NULL, NULL, NULL, \
       u.hold_expires_at, $10, $10, u.key \
       FROM counter, UNNEST($12::bigint[], $13::text[], $14::bigint[], $15::text[]) \
       WITH ORDINALITY AS u(held, payload, hold_expires_at, key, n)) \
     SELECT (SELECT first FROM counter), \
       CASE WHEN $16 THEN pg_notify($17, '') END, \
       CASE WHEN $18 THEN pg_notify($19, $20) END";

/// Applies `ops` inside `tx`; the outcome of each, by position. Expired leases are settled
/// before the claims when `expire` says they are due. The notifications for the other
/// replicas are part of the write.
pub(super) async fn apply(
    work: &mut Work<'_>,
    tx: &mut PgConnection,
    ops: &[Op],
    expire: bool,
) -> Result<Slots, sqlx::Error> {
    let mut outcomes: Slots = (0..ops.len()).map(|_| None).collect();
    for (i, op) in ops.iter().enumerate() {
        if matches!(op, Op::ReleaseWorker { .. }) {
            outcomes[i] = Some(postgres_queries::apply(work, tx, op.clone()).await?);
        }
    }
    let claims = ops
        .iter()
        .filter(|op| matches!(op, Op::Claim { .. }))
        .count();
    // A claim must see the tasks whose leases ran out as ready again.
    if claims > 0 && expire {
        postgres_queries::expire(work, tx).await?;
    }
    let mut read = read(tx, ops, claims).await?;
    let mut changed = BTreeMap::new();
    named(work, ops, &mut read.named, &mut outcomes, &mut changed);
    claim(work, ops, &mut read, &mut outcomes, &mut changed);
    let fresh = creates(work, ops, &read.keys, &mut outcomes);
    write(tx, work, &changed, &fresh, ops, &mut outcomes).await?;
    Ok(outcomes)
}

/// What the read found.
#[derive(Default)]
struct Read {
    /// The tasks named by the batch's operations, by id.
    named: HashMap<u64, Task>,
    /// Ready tasks for the claims, oldest first.
    ready: Vec<Task>,
    /// Which task has each known idempotency key.
    keys: HashMap<String, i64>,
}

/// Step 1: one statement for everything the batch must see, or none when it needs nothing.
async fn read(tx: &mut PgConnection, ops: &[Op], claims: usize) -> Result<Read, sqlx::Error> {
    let ids: Vec<i64> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Act { id, .. } | Op::Set { id, .. } => Some(id.cast_signed()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let keys: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Create { key: Some(k), .. } => Some(k.as_str()),
            _ => None,
        })
        .collect();
    let mut read = Read::default();
    if ids.is_empty() && keys.is_empty() && claims == 0 {
        return Ok(read);
    }
    let rows = sqlx::query(READ)
        .bind(&ids)
        .bind(i64::try_from(claims).unwrap_or(i64::MAX))
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
    for row in &rows {
        match row.get::<i32, _>(10) {
            0 => {
                let task = postgres_queries::row_to_task(row);
                read.named.insert(task.id, task);
            }
            1 => read.ready.push(postgres_queries::row_to_task(row)),
            _ => {
                read.keys.insert(row.get(11), row.get(0));
            }
        }
    }
    Ok(read)
}

/// Step 2a: every operation on a task named by id, in the order they came.
fn named(
    work: &mut Work<'_>,
    ops: &[Op],
    tasks: &mut HashMap<u64, Task>,
    outcomes: &mut Slots,
    changed: &mut BTreeMap<u64, Task>,
) {
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
                changed.insert(id, task.clone());
                Ok(Outcome::Done(task.clone()))
            }
            Err(refusal) => Err(QueueError::Conflict(refusal.0)),
        });
    }
}

/// What an operation on a named task asks.
enum Decision {
    Act(Action, Option<String>),
    Set(state::State),
}

/// Step 2b: every claim of the batch, from the ready tasks the read locked.
fn claim(
    work: &mut Work<'_>,
    ops: &[Op],
    read: &mut Read,
    outcomes: &mut Slots,
    changed: &mut BTreeMap<u64, Task>,
) {
    let mut ready = std::mem::take(&mut read.ready).into_iter();
    for (i, op) in ops.iter().enumerate() {
        let Op::Claim { worker } = op else {
            continue;
        };
        let mut outcome = Outcome::Claimed(None);
        // A task the state machine refuses to hand out (now, after this batch's named
        // operations) is skipped for the next one.
        for candidate in ready.by_ref() {
            let mut task = read.named.get(&candidate.id).cloned().unwrap_or(candidate);
            if let Ok(effect) =
                state::decide(task.snapshot(), Action::Claim, work.limits.max_attempts)
            {
                work.change(&mut task, effect, None);
                task.worker.clone_from(worker);
                outcome = Outcome::Claimed(Some(task.clone()));
                changed.insert(task.id, task);
                break;
            }
        }
        outcomes[i] = Some(Ok(outcome));
    }
}

/// A create answered with a new task's id: its operation's position and the number of that
/// task among the batch's new tasks (from 0). The create that makes the task and later
/// creates of the batch with the same key have one each (`makes` tells them apart).
struct Numbered {
    op: usize,
    n: i64,
    makes: bool,
}

/// Step 2c: which creates make a task; the others are answered with the task that has their
/// key (already stored, or made by an earlier create of this batch once its id is known).
fn creates(
    work: &mut Work<'_>,
    ops: &[Op],
    stored: &HashMap<String, i64>,
    outcomes: &mut Slots,
) -> Vec<Numbered> {
    let mut in_batch: HashMap<&str, i64> = HashMap::new();
    let mut numbered = Vec::new();
    let mut made = 0_i64;
    for (i, op) in ops.iter().enumerate() {
        let Op::Create { key, held, .. } = op else {
            continue;
        };
        let key = key.as_deref();
        if let Some(&id) = key.and_then(|k| stored.get(k)) {
            outcomes[i] = Some(Ok(Outcome::Existing(id.cast_unsigned())));
        } else if let Some(&n) = key.and_then(|k| in_batch.get(k)) {
            numbered.push(Numbered {
                op: i,
                n,
                makes: false,
            });
        } else {
            if let Some(k) = key {
                in_batch.insert(k, made);
            }
            if !held {
                work.ready_changed = true;
            }
            numbered.push(Numbered {
                op: i,
                n: made,
                makes: true,
            });
            made += 1;
        }
    }
    numbered
}

/// Step 3: one statement that writes the batch, numbers its new tasks and tells the other
/// replicas; or none when there is nothing to write or tell.
async fn write(
    tx: &mut PgConnection,
    work: &Work<'_>,
    changed: &BTreeMap<u64, Task>,
    numbered: &[Numbered],
    ops: &[Op],
    outcomes: &mut Slots,
) -> Result<(), sqlx::Error> {
    if changed.is_empty() && numbered.is_empty() && !work.ready_changed && work.changed.is_empty() {
        return Ok(());
    }
    let tasks: Vec<&Task> = changed.values().collect();
    let ids: Vec<i64> = tasks.iter().map(|t| t.id.cast_signed()).collect();
    let states: Vec<i64> = tasks.iter().map(|t| i64::from(t.state.code())).collect();
    let held: Vec<i64> = tasks.iter().map(|t| i64::from(t.held)).collect();
    let attempts: Vec<i64> = tasks.iter().map(|t| i64::from(t.attempts)).collect();
    let errors: Vec<Option<&str>> = tasks.iter().map(|t| t.error.as_deref()).collect();
    let leases: Vec<Option<&str>> = tasks.iter().map(|t| t.lease.as_deref()).collect();
    let lease_expiry: Vec<Option<i64>> = tasks.iter().map(|t| t.lease_expires_at).collect();
    let hold_expiry: Vec<Option<i64>> = tasks.iter().map(|t| t.hold_expires_at).collect();
    let workers: Vec<Option<&str>> = tasks.iter().map(|t| t.worker.as_deref()).collect();

    let (mut new_held, mut payloads, mut holds, mut keys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for f in numbered.iter().filter(|f| f.makes) {
        let Op::Create { payload, held, key } = &ops[f.op] else {
            continue;
        };
        new_held.push(i64::from(*held));
        payloads.push(payload.as_deref());
        holds.push(held.then(|| work.now.saturating_add(millis(work.limits.hold_timeout))));
        keys.push(key.as_deref());
    }
    let count = i64::try_from(new_held.len()).unwrap_or(i64::MAX);
    let first: Option<i64> = sqlx::query(WRITE)
        .bind(&ids)
        .bind(&states)
        .bind(&held)
        .bind(&attempts)
        .bind(&errors)
        .bind(&leases)
        .bind(&lease_expiry)
        .bind(&hold_expiry)
        .bind(&workers)
        .bind(work.now)
        .bind(count)
        .bind(&new_held)
        .bind(&payloads)
        .bind(&holds)
        .bind(&keys)
        .bind(work.ready_changed)
        .bind(READY_CHANNEL)
        .bind(!work.changed.is_empty())
        .bind(CHANGED_CHANNEL)
        .bind(changed_payload(&work.changed))
        .fetch_one(&mut *tx)
        .await?
        .get(0);
    if let Some(first) = first {
        for f in numbered {
            let id = (first + f.n).cast_unsigned();
            outcomes[f.op] = Some(Ok(if f.makes {
                Outcome::Created(id)
            } else {
                Outcome::Existing(id)
            }));
        }
    }
    Ok(())
}
