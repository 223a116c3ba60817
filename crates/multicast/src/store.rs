//! Durable state: subscribers with their cursors, the outbox of accepted messages, idempotency
//! keys and final failures. SQLite in the data directory by default, PostgreSQL (schema
//! `shoal_multicast`) with `--database-url`.
//!
//! The query code is written once and stamped out for both databases by `queries!`: sqlx's
//! `QueryBuilder` writes each database's placeholders, and the SQL used is common to both.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::Mutex;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL schema holding the multicast tables.
pub const SCHEMA: &str = "shoal_multicast";
const CREATE_SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS shoal_multicast";

/// A subscriber as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberRow {
    /// Canonical `host:port`.
    pub address: String,
    /// First registration, unix ms.
    pub registered_at: i64,
    /// Last keep-alive, unix ms.
    pub keepalive_at: i64,
    /// The first message this subscriber receives.
    pub first_message_id: u64,
    /// The last message finished for it (delivered or failed).
    pub delivered_through: u64,
}

/// An accepted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    /// Position in acceptance order, from 1.
    pub id: u64,
    /// The stable id receivers deduplicate on (`webhook-id`).
    pub uid: String,
    /// The body, as sent.
    pub body: Bytes,
    /// The sender's `Content-Type`, passed on.
    pub content_type: Option<String>,
    /// Acceptance time, unix ms.
    pub accepted_at: i64,
}

/// A delivery that finally failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FailureRow {
    /// The subscriber.
    pub address: String,
    /// The message.
    pub message_id: u64,
    /// Its webhook id.
    pub uid: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why it failed.
    pub error: String,
    /// When, unix ms.
    pub failed_at: i64,
}

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Registered subscribers.
    pub subscribers: Vec<SubscriberRow>,
    /// Messages some subscriber still needs, in id order.
    pub messages: Vec<MessageRow>,
    /// Id the next accepted message gets.
    pub next_message_id: u64,
    /// Recent idempotency keys: key, message id, uid, accepted at.
    pub idempotency: Vec<(String, u64, String, i64)>,
}

/// One group commit's worth of changes.
#[derive(Debug, Default)]
pub struct Batch {
    /// New messages, with their idempotency keys.
    pub messages: Vec<(MessageRow, Option<String>)>,
    /// Subscribers registered or kept alive (one row per address), written after `removals`.
    pub upserts: Vec<SubscriberRow>,
    /// Subscribers removed (deregistered or expired), written first.
    pub removals: Vec<String>,
    /// Cursor advances: address, delivered through.
    pub cursors: Vec<(String, u64)>,
    /// Final failures to record.
    pub failures: Vec<FailureRow>,
    /// The next message id after this batch.
    pub next_message_id: u64,
}

impl Batch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.upserts.is_empty()
            && self.removals.is_empty()
            && self.cursors.is_empty()
            && self.failures.is_empty()
    }
}

fn signed(v: u64) -> i64 {
    v.cast_signed()
}

fn unsigned(v: i64) -> u64 {
    v.max(0).cast_unsigned()
}

/// Rows per multi-row statement: few enough parameters for SQLite's limit.
const CHUNK: usize = 1000;

macro_rules! queries {
    ($db:ty, $conn:ty) => {
        use sqlx::{QueryBuilder, Row as _};

        use super::*;

        pub(super) async fn load(conn: &mut $conn, idempotency_since: i64) -> anyhow::Result<Loaded> {
            let subscribers = sqlx::query(
                "SELECT address, registered_at, keepalive_at, first_message_id, delivered_through \
                 FROM mc_subscribers",
            )
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| SubscriberRow {
                address: r.get(0),
                registered_at: r.get(1),
                keepalive_at: r.get(2),
                first_message_id: unsigned(r.get(3)),
                delivered_through: unsigned(r.get(4)),
            })
            .collect::<Vec<_>>();
            let next: i64 = sqlx::query("SELECT next_message_id FROM mc_meta WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?
                .get(0);
            let oldest_needed = subscribers
                .iter()
                .map(|s| s.delivered_through + 1)
                .min()
                .unwrap_or(unsigned(next));
            let messages = sqlx::query(
                "SELECT id, uid, body, content_type, accepted_at FROM mc_messages \
                 WHERE id >= $1 ORDER BY id",
            )
            .bind(signed(oldest_needed))
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| MessageRow {
                id: unsigned(r.get(0)),
                uid: r.get(1),
                body: Bytes::from(r.get::<Vec<u8>, _>(2)),
                content_type: r.get(3),
                accepted_at: r.get(4),
            })
            .collect();
            let idempotency = sqlx::query(
                "SELECT key, message_id, uid, accepted_at FROM mc_idempotency WHERE accepted_at >= $1",
            )
            .bind(idempotency_since)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| (r.get(0), unsigned(r.get(1)), r.get(2), r.get(3)))
            .collect();
            Ok(Loaded {
                subscribers,
                messages,
                next_message_id: unsigned(next),
                idempotency,
            })
        }

        pub(super) async fn commit(conn: &mut $conn, batch: &Batch) -> anyhow::Result<()> {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            for chunk in batch.messages.chunks(CHUNK) {
                let mut q = QueryBuilder::<$db>::new(
                    "INSERT INTO mc_messages (id, uid, body, content_type, accepted_at) ",
                );
                q.push_values(chunk, |mut v, (m, _)| {
                    v.push_bind(signed(m.id))
                        .push_bind(&m.uid)
                        .push_bind(m.body.as_ref())
                        .push_bind(&m.content_type)
                        .push_bind(m.accepted_at);
                });
                q.build().execute(&mut *tx).await?;
                let keyed: Vec<_> = chunk.iter().filter(|(_, k)| k.is_some()).collect();
                if !keyed.is_empty() {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO mc_idempotency (key, message_id, uid, accepted_at) ",
                    );
                    q.push_values(keyed, |mut v, (m, k)| {
                        v.push_bind(k.as_deref().unwrap_or_default())
                            .push_bind(signed(m.id))
                            .push_bind(&m.uid)
                            .push_bind(m.accepted_at);
                    });
                    q.push(" ON CONFLICT (key) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
            }
            for chunk in batch.removals.chunks(CHUNK) {
                let mut q = QueryBuilder::<$db>::new("DELETE FROM mc_subscribers WHERE address IN (");
                let mut list = q.separated(", ");
                for address in chunk {
                    list.push_bind(address);
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
            for chunk in batch.upserts.chunks(CHUNK) {
                let mut q = QueryBuilder::<$db>::new(
                    "INSERT INTO mc_subscribers \
                     (address, registered_at, keepalive_at, first_message_id, delivered_through) ",
                );
                q.push_values(chunk, |mut v, s| {
                    v.push_bind(&s.address)
                        .push_bind(s.registered_at)
                        .push_bind(s.keepalive_at)
                        .push_bind(signed(s.first_message_id))
                        .push_bind(signed(s.delivered_through));
                });
                q.push(" ON CONFLICT (address) DO UPDATE SET keepalive_at = excluded.keepalive_at");
                q.build().execute(&mut *tx).await?;
            }
            // Cursors only ever move forward; one statement for all of them.
            for chunk in batch.cursors.chunks(CHUNK) {
                let mut q = QueryBuilder::<$db>::new(
                    "UPDATE mc_subscribers SET delivered_through = v.column2 FROM (",
                );
                q.push_values(chunk, |mut v, (address, through)| {
                    v.push_bind(address).push_bind(signed(*through));
                });
                q.push(
                    ") AS v WHERE mc_subscribers.address = v.column1 \
                     AND mc_subscribers.delivered_through < v.column2",
                );
                q.build().execute(&mut *tx).await?;
            }
            for chunk in batch.failures.chunks(CHUNK) {
                let mut q = QueryBuilder::<$db>::new(
                    "INSERT INTO mc_failures (address, message_id, uid, attempts, error, failed_at) ",
                );
                q.push_values(chunk, |mut v, f| {
                    v.push_bind(&f.address)
                        .push_bind(signed(f.message_id))
                        .push_bind(&f.uid)
                        .push_bind(i64::from(f.attempts))
                        .push_bind(&f.error)
                        .push_bind(f.failed_at);
                });
                q.build().execute(&mut *tx).await?;
            }
            if !batch.messages.is_empty() {
                sqlx::query("UPDATE mc_meta SET next_message_id = $1 WHERE id = 1")
                    .bind(signed(batch.next_message_id))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(super) async fn collect_garbage(
            conn: &mut $conn,
            messages_before: u64,
            idempotency_before: i64,
            failures_before: i64,
        ) -> anyhow::Result<()> {
            sqlx::query("DELETE FROM mc_messages WHERE id < $1")
                .bind(signed(messages_before))
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM mc_idempotency WHERE accepted_at < $1")
                .bind(idempotency_before)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM mc_failures WHERE failed_at < $1")
                .bind(failures_before)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        pub(super) async fn failures(
            conn: &mut $conn,
            address: Option<&str>,
            limit: i64,
        ) -> anyhow::Result<Vec<FailureRow>> {
            let rows = match address {
                Some(a) => {
                    sqlx::query(
                        "SELECT address, message_id, uid, attempts, error, failed_at FROM mc_failures \
                         WHERE address = $1 ORDER BY id DESC LIMIT $2",
                    )
                    .bind(a)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
                }
                None => {
                    sqlx::query(
                        "SELECT address, message_id, uid, attempts, error, failed_at FROM mc_failures \
                         ORDER BY id DESC LIMIT $1",
                    )
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
                }
            };
            Ok(rows
                .into_iter()
                .map(|r| FailureRow {
                    address: r.get(0),
                    message_id: unsigned(r.get(1)),
                    uid: r.get(2),
                    attempts: u32::try_from(r.get::<i64, _>(3)).unwrap_or(u32::MAX),
                    error: r.get(4),
                    failed_at: r.get(5),
                })
                .collect())
        }
    };
}

mod sqlite_queries {
    queries!(sqlx::Sqlite, SqliteConnection);
}

mod postgres_queries {
    queries!(sqlx::Postgres, sqlx::PgConnection);
}

/// Where the hub's state lives.
#[derive(Clone, Debug)]
pub enum Store {
    /// One SQLite connection, holding the file's exclusive lock.
    Sqlite(Arc<Mutex<SqliteConnection>>),
    /// A pool on a PostgreSQL database, and the connection holding the advisory lock that
    /// makes this hub the database's only one.
    Postgres(PgPool, Arc<Mutex<sqlx::PgConnection>>),
}

impl Store {
    /// Opens `multicast.sqlite3` in `dir` (WAL; `NORMAL` sync survives a killed process).
    pub async fn open_sqlite(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("multicast.sqlite3");
        let conn =
            shoal_core::db::open_sqlite_exclusive(&path, false, &SQLITE_MIGRATOR, "multicast")
                .await?;
        Ok(Self::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// Connects to PostgreSQL, creating and migrating the `shoal_multicast` schema. One hub
    /// per database: a second hub would deliver every message twice, so it is refused.
    pub async fn open_postgres(url: &str) -> anyhow::Result<Self> {
        let pool =
            shoal_core::db::open_postgres(url, SCHEMA, CREATE_SCHEMA, 4, &POSTGRES_MIGRATOR, &[])
                .await?;
        // Held for the life of the hub: the session lock goes when this connection does.
        let mut lock = pool.acquire().await?.detach();
        let (locked,): (bool,) =
            sqlx::query_as("SELECT pg_try_advisory_lock(hashtext('shoal_multicast'))")
                .fetch_one(&mut lock)
                .await?;
        if !locked {
            anyhow::bail!(
                "another shoal multicast is using this database (two hubs on one outbox would deliver everything twice)"
            );
        }
        Ok(Self::Postgres(pool, Arc::new(Mutex::new(lock))))
    }

    /// Loads subscribers, undelivered messages and idempotency keys newer than `since` (ms).
    pub async fn load(&self, idempotency_since: i64) -> anyhow::Result<Loaded> {
        match self {
            Self::Sqlite(c) => sqlite_queries::load(&mut *c.lock().await, idempotency_since).await,
            Self::Postgres(p, _) => {
                postgres_queries::load(&mut *p.acquire().await?, idempotency_since).await
            }
        }
    }

    /// Writes a batch in one transaction.
    pub async fn commit(&self, batch: &Batch) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(c) => sqlite_queries::commit(&mut *c.lock().await, batch).await,
            Self::Postgres(p, _) => postgres_queries::commit(&mut *p.acquire().await?, batch).await,
        }
    }

    /// Deletes messages below `messages_before`, and idempotency keys and failure records
    /// older than the given times.
    pub async fn collect_garbage(
        &self,
        messages_before: u64,
        idempotency_before: i64,
        failures_before: i64,
    ) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(c) => {
                sqlite_queries::collect_garbage(
                    &mut *c.lock().await,
                    messages_before,
                    idempotency_before,
                    failures_before,
                )
                .await
            }
            Self::Postgres(p, _) => {
                postgres_queries::collect_garbage(
                    &mut *p.acquire().await?,
                    messages_before,
                    idempotency_before,
                    failures_before,
                )
                .await
            }
        }
    }

    /// The most recent final failures, newest first.
    pub async fn failures(
        &self,
        address: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<FailureRow>> {
        match self {
            Self::Sqlite(c) => sqlite_queries::failures(&mut *c.lock().await, address, limit).await,
            Self::Postgres(p, _) => {
                postgres_queries::failures(&mut *p.acquire().await?, address, limit).await
            }
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(c) => {
                sqlx::query("SELECT 1")
                    .execute(&mut *c.lock().await)
                    .await?;
            }
            Self::Postgres(p, _) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
        }
        Ok(())
    }
}
