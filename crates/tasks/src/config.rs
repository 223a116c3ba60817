//! `shoal tasks` flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shoal_core::config::{CommonArgs, DatabaseArgs, ListenArgs, parse_duration, service_flag};

/// Configuration of `shoal tasks`.
#[derive(Args, Clone, Debug)]
#[command(
    mut_arg("listen", |a| service_flag(a, "SHOAL_TASKS_LISTEN", Some("127.0.0.1:3001"))),
    mut_arg("advertise", |a| service_flag(a, "SHOAL_TASKS_ADVERTISE", None)),
)]
pub struct Config {
    /// Where the API listens and the address registered as `databaseAddress`.
    #[command(flatten)]
    pub net: ListenArgs,

    /// Directory of the embedded SQLite database.
    #[arg(
        long,
        env = "SHOAL_TASKS_DATA_DIR",
        default_value = "./shoal-data/tasks"
    )]
    pub data_dir: PathBuf,

    /// fsync every commit (survives power loss, not only a killed process).
    #[arg(long, env = "SHOAL_TASKS_FULL_SYNC")]
    pub full_sync: bool,

    /// How long a claim holds a task before it goes back to the queue. Workers extend it
    /// every third of it while they work, so a long job keeps its task however long it takes,
    /// and a killed worker's task is free again within this time (plus a sweep, 1 s).
    #[arg(long, env = "SHOAL_TASKS_LEASE", value_parser = parse_duration, default_value = "20s")]
    pub lease: Duration,

    /// How long a held task waits for its release before it fails.
    #[arg(long, env = "SHOAL_TASKS_HOLD_TIMEOUT", value_parser = parse_duration, default_value = "10m")]
    pub hold_timeout: Duration,

    /// Claims a task gets; one that would go back to the queue after that many fails instead.
    #[arg(long, env = "SHOAL_TASKS_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Delete finished and failed tasks this long after their last change (e.g. `7d`); off by
    /// default. Ids are never reused.
    #[arg(long, env = "SHOAL_TASKS_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,

    /// Longest `wait=` a long-polling getNewTask may ask for; longer waits are cut to this.
    #[arg(long, env = "SHOAL_TASKS_MAX_WAIT", value_parser = parse_duration, default_value = "60s")]
    pub max_wait: Duration,

    /// Where state is kept when not in the embedded SQLite file.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Flags every service shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Every default, storing in `data_dir` (tests, `shoal up`).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            net: ListenArgs {
                listen: "127.0.0.1:3001".into(),
                advertise: None,
            },
            data_dir: data_dir.into(),
            full_sync: false,
            lease: Duration::from_secs(20),
            hold_timeout: Duration::from_secs(600),
            max_attempts: 5,
            retention: None,
            max_wait: Duration::from_secs(60),
            database: DatabaseArgs::default(),
            common: CommonArgs::default(),
        }
    }
}
