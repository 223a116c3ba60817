//! The embedded backend: one SQLite file in the data directory, WAL mode.
//!
//! `--sync normal` (the default) survives a crash of the process: a commit has been handed to
//! the operating system before it is acknowledged. `--sync full` also fsyncs the WAL on every
//! commit, so acknowledged writes survive power loss. Group commit makes either cheap per write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};
use tokio::sync::Mutex;

use super::{Changes, Commit, Row, Snapshot};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per upsert statement: 5 parameters each, below SQLite's limit of 32,766.
const MAX_ROWS_PER_STATEMENT: usize = 4096;

/// Statements for batches up to this size are kept prepared; larger ones are rare and
/// prepared per use, so they do not crowd the statement cache.
const CACHED_STATEMENT_ROWS: usize = 64;

/// Writes `rows` (at most one per key) with one multi-row upsert.
async fn upsert(conn: &mut SqliteConnection, rows: &[Row]) -> sqlx::Result<()> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO kv_entries (key, value, revision, expires_at, updated_at) ",
    );
    insert.push_values(rows, |mut values, row| {
        values
            .push_bind(&row.key)
            .push_bind(row.value.as_deref())
            .push_bind(rev(row.revision))
            .push_bind(row.expires_at)
            .push_bind(row.updated_at);
    });
    insert.push(
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
         revision = excluded.revision, expires_at = excluded.expires_at, \
         updated_at = excluded.updated_at",
    );
    insert
        .build()
        .persistent(rows.len() <= CACHED_STATEMENT_ROWS)
        .execute(conn)
        .await?;
    Ok(())
}

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
///
/// One connection, not a pool: every write comes from the single writer task and reads are
/// served from memory, and a pool would add a health-check round trip to SQLite's thread on
/// every commit.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    conn: Arc<Mutex<SqliteConnection>>,
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

fn rev(v: u64) -> i64 {
    v.cast_signed()
}

impl SqliteBackend {
    /// Opens (creating if needed) `kv.sqlite3` in `dir` and brings its schema up to date.
    pub async fn open(dir: &Path, sync: SyncMode) -> anyhow::Result<Self> {
        let path = dir.join("kv.sqlite3");
        let conn =
            shoal_core::db::open_sqlite_exclusive(&path, sync == SyncMode::Full, &MIGRATOR, "kv")
                .await?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) async fn load(&self) -> anyhow::Result<Snapshot> {
        let mut conn = self.conn.lock().await;
        let rows: Vec<RowTuple> =
            sqlx::query_as("SELECT key, value, revision, expires_at, updated_at FROM kv_entries")
                .fetch_all(&mut *conn)
                .await?;
        let (revision, purged_through): (i64, i64) =
            sqlx::query_as("SELECT revision, purged_through FROM kv_meta WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?;
        Ok(Snapshot {
            rows: rows.into_iter().map(to_row).collect(),
            revision: revision.cast_unsigned(),
            purged_through: purged_through.cast_unsigned(),
        })
    }

    /// Writes a batch. `base` is not checked: the exclusive lock means no other writer exists.
    pub(super) async fn commit(
        &self,
        _base: u64,
        rows: &[Row],
        _revision: u64,
    ) -> anyhow::Result<Commit> {
        let mut conn = self.conn.lock().await;
        if rows.len() <= MAX_ROWS_PER_STATEMENT {
            // The common case: one statement, atomic on its own (and the trigger moves the
            // store revision), so one round trip to SQLite's thread per batch. Those round
            // trips, not SQLite's work, dominated commit time on a busy machine.
            upsert(&mut conn, rows).await?;
        } else {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
                upsert(&mut tx, chunk).await?;
            }
            tx.commit().await?;
        }
        Ok(Commit::Done)
    }

    pub(super) async fn changes_since(&self, since: u64) -> anyhow::Result<Changes> {
        let mut conn = self.conn.lock().await;
        let (revision, purged_through): (i64, i64) =
            sqlx::query_as("SELECT revision, purged_through FROM kv_meta WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?;
        if purged_through.cast_unsigned() > since {
            drop(conn);
            return Ok(Changes::Reload(self.load().await?));
        }
        let rows: Vec<RowTuple> = sqlx::query_as(
            "SELECT key, value, revision, expires_at, updated_at FROM kv_entries \
             WHERE revision > ?1 ORDER BY revision",
        )
        .bind(rev(since))
        .fetch_all(&mut *conn)
        .await?;
        Ok(Changes::Rows(
            rows.into_iter().map(to_row).collect(),
            revision.cast_unsigned(),
        ))
    }

    pub(super) async fn purge_tombstones(&self, before: i64) -> anyhow::Result<()> {
        let mut conn = self.conn.lock().await;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
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
        sqlx::query("SELECT 1")
            .execute(&mut *self.conn.lock().await)
            .await?;
        Ok(())
    }
}
