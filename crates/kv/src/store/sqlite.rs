//! The embedded backend: one SQLite file in the data directory, WAL mode.
//!
//! `--sync normal` (the default) survives a crash of the process: a commit has been handed to
//! the operating system before it is acknowledged. `--sync full` also fsyncs the WAL on every
//! commit, so acknowledged writes survive power loss. Group commit makes either cheap per write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::{Changes, Commit, Row, Snapshot};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// When an acknowledged write has reached the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// Survives the process being killed; a power loss may take the last writes.
    #[default]
    Normal,
    /// fsync on every commit: survives power loss.
    Full,
}

/// The SQLite file and its one connection. The connection holds an exclusive lock, so a
/// second process cannot open the same store and serve a stale copy of it.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    pool: SqlitePool,
    path: PathBuf,
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

fn in_use_hint(path: &Path) -> String {
    format!(
        "cannot open {} (is another shoal kv using this data directory?)",
        path.display()
    )
}

fn rev(v: u64) -> i64 {
    v.cast_signed()
}

impl SqliteBackend {
    /// Opens (creating if needed) `kv.sqlite3` in `dir` and brings its schema up to date.
    pub async fn open(dir: &Path, sync: SyncMode) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let path = dir.join("kv.sqlite3");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .locking_mode(SqliteLockingMode::Exclusive)
            .synchronous(match sync {
                SyncMode::Normal => SqliteSynchronous::Normal,
                SyncMode::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_millis(200));
        // One connection for life: every write goes through the single writer task, reads
        // are served from memory, and keeping the connection keeps the exclusive lock.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .with_context(|| in_use_hint(&path))?;
        MIGRATOR
            .run(&pool)
            .await
            .with_context(|| in_use_hint(&path))?;
        Ok(Self { pool, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) async fn load(&self) -> anyhow::Result<Snapshot> {
        let rows: Vec<RowTuple> =
            sqlx::query_as("SELECT key, value, revision, expires_at, updated_at FROM kv_entries")
                .fetch_all(&self.pool)
                .await?;
        let (revision, purged_through): (i64, i64) =
            sqlx::query_as("SELECT revision, purged_through FROM kv_meta WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
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
        let (current,): (i64,) = sqlx::query_as("SELECT revision FROM kv_meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        if current.cast_unsigned() != base {
            tx.rollback().await?;
            return Ok(Commit::Stale(self.changes_since(base).await?));
        }
        for row in rows {
            sqlx::query(
                "INSERT INTO kv_entries (key, value, revision, expires_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 revision = excluded.revision, expires_at = excluded.expires_at, \
                 updated_at = excluded.updated_at",
            )
            .bind(&row.key)
            .bind(row.value.as_deref())
            .bind(rev(row.revision))
            .bind(row.expires_at)
            .bind(row.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE kv_meta SET revision = ?1 WHERE id = 1")
            .bind(rev(revision))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Commit::Done)
    }

    pub(super) async fn changes_since(&self, since: u64) -> anyhow::Result<Changes> {
        let (revision, purged_through): (i64, i64) =
            sqlx::query_as("SELECT revision, purged_through FROM kv_meta WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        if purged_through.cast_unsigned() > since {
            return Ok(Changes::Reload(self.load().await?));
        }
        let rows: Vec<RowTuple> = sqlx::query_as(
            "SELECT key, value, revision, expires_at, updated_at FROM kv_entries \
             WHERE revision > ?1 ORDER BY revision",
        )
        .bind(rev(since))
        .fetch_all(&self.pool)
        .await?;
        Ok(Changes::Rows(
            rows.into_iter().map(to_row).collect(),
            revision.cast_unsigned(),
        ))
    }

    pub(super) async fn purge_tombstones(&self, before: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE kv_meta SET purged_through = MAX(purged_through, COALESCE( \
             (SELECT MAX(revision) FROM kv_entries WHERE value IS NULL AND updated_at < ?1), 0)) \
             WHERE id = 1",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM kv_entries WHERE value IS NULL AND updated_at < ?1")
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
}
