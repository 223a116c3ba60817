//! The PostgreSQL backend, for several `shoal kv` replicas sharing one database.
//!
//! Tables and migration history live in their own schema (`shoal_kv`), so kv, tasks and
//! multicast can share a database. Writers serialise on the `kv_meta` row (`FOR UPDATE`):
//! revisions are therefore assigned in commit order, and a replica that finds the stored
//! revision ahead of its own first catches up, then plans its batch again. Every commit sends a
//! `NOTIFY`; each replica listens and applies others' changes to its memory within
//! milliseconds (and polls every few seconds in case a notification was missed), so reads stay
//! in memory and coherent: a replica reads its own writes at once, others' after the
//! notification arrives.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use sqlx::postgres::{PgListener, PgPool};

use super::{Changes, Command, Commit, Row, Shared, Snapshot};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The schema holding the kv tables.
pub const SCHEMA: &str = "shoal_kv";
const CREATE_SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS shoal_kv";
/// The notification channel replicas listen on.
const CHANNEL: &str = "shoal_kv_changes";

/// A pool of connections to the shared database.
#[derive(Clone, Debug)]
pub struct PostgresBackend {
    pool: PgPool,
}

type RowTuple = (String, Option<Vec<u8>>, i64, Option<i64>, i64);

fn to_row((key, value, revision, expires_at, updated_at): RowTuple) -> Row {
    Row {
        key,
        value: value.map(Bytes::from),
        revision: revision.max(0).cast_unsigned(),
        expires_at,
        updated_at,
    }
}

impl PostgresBackend {
    /// Connects (TLS as the URL's `sslmode` says), creates the schema if needed and brings it up
    /// to date. Concurrent replicas may start together: migrations take an advisory lock.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let pool =
            shoal_core::db::open_postgres(url, SCHEMA, CREATE_SCHEMA, 8, &MIGRATOR, &[]).await?;
        Ok(Self { pool })
    }

    pub(super) async fn load(&self) -> anyhow::Result<Snapshot> {
        let mut tx = self.pool.begin().await?;
        // One consistent view of rows and counter.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        let (revision, purged_through): (i64, i64) =
            sqlx::query_as("SELECT revision, purged_through FROM kv_meta WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        let rows: Vec<RowTuple> =
            sqlx::query_as("SELECT key, value, revision, expires_at, updated_at FROM kv_entries")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Snapshot {
            rows: rows.into_iter().map(to_row).collect(),
            revision: revision.cast_unsigned(),
            purged_through: purged_through.cast_unsigned(),
        })
    }

    pub(super) async fn commit(
        &self,
        base: u64,
        rows: &[Row],
        revision: u64,
    ) -> anyhow::Result<Commit> {
        let mut tx = self.pool.begin().await?;
        let (current,): (i64,) =
            sqlx::query_as("SELECT revision FROM kv_meta WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        if current.cast_unsigned() != base {
            tx.rollback().await?;
            return Ok(Commit::Stale(self.changes_since(base).await?));
        }
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let values: Vec<Option<&[u8]>> = rows.iter().map(|r| r.value.as_deref()).collect();
        let revisions: Vec<i64> = rows.iter().map(|r| r.revision.cast_signed()).collect();
        let expiries: Vec<Option<i64>> = rows.iter().map(|r| r.expires_at).collect();
        let updated: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
        // One statement for the whole batch: rows hold one entry per key, as ON CONFLICT needs.
        sqlx::query(
            "INSERT INTO kv_entries (key, value, revision, expires_at, updated_at) \
             SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bigint[], $4::bigint[], $5::bigint[]) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             revision = excluded.revision, expires_at = excluded.expires_at, \
             updated_at = excluded.updated_at",
        )
        .bind(&keys)
        .bind(&values)
        .bind(&revisions)
        .bind(&expiries)
        .bind(&updated)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE kv_meta SET revision = $1 WHERE id = 1")
            .bind(revision.cast_signed())
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(revision.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Commit::Done)
    }

    pub(super) async fn changes_since(&self, since: u64) -> anyhow::Result<Changes> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        let (revision, purged_through): (i64, i64) =
            sqlx::query_as("SELECT revision, purged_through FROM kv_meta WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        if purged_through.cast_unsigned() > since {
            tx.commit().await?;
            return Ok(Changes::Reload(self.load().await?));
        }
        let rows: Vec<RowTuple> = sqlx::query_as(
            "SELECT key, value, revision, expires_at, updated_at FROM kv_entries \
             WHERE revision > $1 ORDER BY revision",
        )
        .bind(since.cast_signed())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Changes::Rows(
            rows.into_iter().map(to_row).collect(),
            revision.cast_unsigned(),
        ))
    }

    pub(super) async fn purge_tombstones(&self, before: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM kv_meta WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE kv_meta SET purged_through = GREATEST(purged_through, COALESCE( \
             (SELECT MAX(revision) FROM kv_entries WHERE value IS NULL AND updated_at < $1), 0)) \
             WHERE id = 1",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM kv_entries WHERE value IS NULL AND updated_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Listens for other replicas' commits and asks the writer to catch up with them.
    pub(super) fn spawn_listener(&self, shared: Weak<Shared>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut listener: Option<PgListener> = None;
            loop {
                let notified = match listener.as_mut() {
                    None => {
                        match PgListener::connect_with(&pool).await {
                            Ok(mut l) => match l.listen(CHANNEL).await {
                                Ok(()) => listener = Some(l),
                                Err(err) => tracing::warn!(error = %err, "LISTEN failed"),
                            },
                            Err(err) => {
                                tracing::warn!(error = %err, "cannot open the LISTEN connection");
                            }
                        }
                        if listener.is_none() {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        // Commits made before LISTEN took effect sent notifications we never
                        // saw: catch up at once whenever (re)listening starts.
                        None
                    }
                    Some(l) => {
                        match tokio::time::timeout(Duration::from_secs(5), l.try_recv()).await {
                            Ok(Ok(Some(n))) => n.payload().parse::<u64>().ok(),
                            // Connection lost (it reconnects on the next call) or poll interval: check.
                            Ok(Ok(None)) | Err(_) => None,
                            Ok(Err(err)) => {
                                tracing::warn!(error = %err, "LISTEN connection failed");
                                listener = None;
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                None
                            }
                        }
                    }
                };
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let ours = shared
                    .state
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .revision;
                if notified.is_none_or(|r| r > ours) {
                    let _ = shared.commands.try_send(Command::CatchUp);
                }
            }
        });
    }
}
