//! `shoal kv` flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shoal_core::config::{CommonArgs, DatabaseArgs, parse_duration, parse_size};

use crate::store::{Limits, SyncMode};

/// Configuration of `shoal kv`.
#[derive(Args, Clone, Debug)]
// The k/v store is what the others discover through; it registers nowhere itself. The shared
// flag stays accepted (one `SHOAL_KV` may describe a whole deployment) but is not offered.
#[command(mut_arg("kv", |a| a.hide(true)))]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(long, env = "SHOAL_KV_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: String,

    /// Directory of the embedded SQLite store (unused with --database-url).
    #[arg(long, env = "SHOAL_KV_DATA_DIR", default_value = "./shoal-data/kv")]
    pub data_dir: PathBuf,

    /// When an acknowledged write is on disk: `normal` survives a killed process, `full`
    /// (fsync per commit) survives power loss too. SQLite only.
    #[arg(long, env = "SHOAL_KV_SYNC", value_enum, default_value_t = SyncMode::Normal)]
    pub sync: SyncMode,

    /// Longest key accepted (413 beyond).
    #[arg(long, env = "SHOAL_KV_MAX_KEY_SIZE", value_parser = parse_size, default_value = "1KiB")]
    pub max_key_size: u64,

    /// Largest value accepted (413 beyond).
    #[arg(long, env = "SHOAL_KV_MAX_VALUE_SIZE", value_parser = parse_size, default_value = "1MiB")]
    pub max_value_size: u64,

    /// Most keys the store holds; a set that would add one more is refused with 413.
    #[arg(long, env = "SHOAL_KV_MAX_KEYS", default_value_t = 1_000_000)]
    pub max_keys: usize,

    /// Most bytes of keys and values together (they are all kept in memory).
    #[arg(long, env = "SHOAL_KV_MAX_TOTAL_SIZE", value_parser = parse_size, default_value = "1GiB")]
    pub max_total_size: u64,

    /// Longest `wait=` a long-polling get may ask for; longer waits are cut to this.
    #[arg(long, env = "SHOAL_KV_MAX_WAIT", value_parser = parse_duration, default_value = "5m")]
    pub max_wait: Duration,

    /// How long removed keys are remembered, so watchers can learn of the removal.
    #[arg(long, env = "SHOAL_KV_TOMBSTONE_RETENTION", value_parser = parse_duration, default_value = "10m")]
    pub tombstone_retention: Duration,

    /// Where state is kept when not in the embedded SQLite file.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Flags every service shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// A configuration with every default, storing in `data_dir` (for tests and `shoal up`).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: "127.0.0.1:3000".into(),
            data_dir: data_dir.into(),
            sync: SyncMode::Normal,
            max_key_size: 1 << 10,
            max_value_size: 1 << 20,
            max_keys: 1_000_000,
            max_total_size: 1 << 30,
            max_wait: Duration::from_secs(300),
            tombstone_retention: Duration::from_secs(600),
            database: DatabaseArgs::default(),
            common: CommonArgs::default(),
        }
    }

    /// The limits the store enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_key_size: usize::try_from(self.max_key_size).unwrap_or(usize::MAX),
            max_value_size: usize::try_from(self.max_value_size).unwrap_or(usize::MAX),
            max_keys: self.max_keys,
            max_total_size: self.max_total_size,
            tombstone_retention: self.tombstone_retention,
        }
    }
}
