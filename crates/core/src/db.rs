//! Opening the databases services keep their state in, the same way everywhere.
//!
//! Embedded: one SQLite file owned by one process. It is migrated through a short-lived pool,
//! then served by one long-lived connection in WAL mode that holds SQLite's exclusive lock, so a
//! second process on the same data directory fails at start-up instead of serving a stale copy.
//! Shared: PostgreSQL, each service in a schema of its own (tables and migration history), so
//! several services can share one database without their migrations colliding.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::ConnectOptions as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode,
    SqlitePoolOptions, SqliteSynchronous,
};

/// Opens (creating it and its directory if needed) the SQLite file at `path` for this process
/// alone, and brings its schema up to date. `full_sync` fsyncs every commit (survives power
/// loss); otherwise a commit survives the process being killed. `service` names the service
/// in the error when another process holds the file.
pub async fn open_sqlite_exclusive(
    path: &Path,
    full_sync: bool,
    migrator: &'static Migrator,
    service: &str,
) -> anyhow::Result<SqliteConnection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let hint = || {
        format!(
            "cannot open {} (is another shoal {service} using this data directory?)",
            path.display()
        )
    };
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .locking_mode(SqliteLockingMode::Exclusive)
        .synchronous(if full_sync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .busy_timeout(Duration::from_millis(200));
    // The migrator's public entry point wants a pool; the long-lived connection comes after.
    let migrations = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .with_context(hint)?;
    migrator.run(&migrations).await.with_context(hint)?;
    migrations.close().await;
    options.connect().await.with_context(hint)
}

/// Connects a pool to PostgreSQL (TLS as the URL's `sslmode` says) whose connections use
/// `schema`, creates the schema with `create_schema` (a static `CREATE SCHEMA IF NOT EXISTS …`
/// for that schema) and runs the migrations there. Replicas may start together: the migrator
/// takes an advisory lock, and a lost race to create the schema is retried. `settings` are
/// server parameters every connection of the pool sets.
pub async fn open_postgres(
    url: &str,
    schema: &'static str,
    create_schema: &'static str,
    max_connections: u32,
    migrator: &'static Migrator,
    settings: &[(&'static str, &'static str)],
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("invalid --database-url")?
        .options([("search_path", schema)])
        .options(settings.iter().copied());
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")?;
    if let Err(err) = sqlx::query(create_schema).execute(&pool).await {
        sqlx::query(create_schema)
            .execute(&pool)
            .await
            .with_context(|| format!("cannot create schema {schema}: {err}"))?;
    }
    migrator
        .run(&pool)
        .await
        .with_context(|| format!("cannot migrate schema {schema}"))?;
    Ok(pool)
}
