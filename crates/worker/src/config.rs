//! `shoal worker` flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shoal_core::config::{CommonArgs, MetricsArgs, parse_duration};

/// Configuration of `shoal worker`.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Tasks processed at once (each on its own core); default: the number of cores.
    #[arg(long, env = "SHOAL_WORKER_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// This worker's name on its claims. At start the worker hands back every claim still
    /// held under its name (its previous life's, after a crash), so no task waits for a
    /// lease to run out. Default: the host name and an id kept in --data-dir; give a name
    /// only if no other live worker uses it.
    #[arg(long, env = "SHOAL_WORKER_NAME")]
    pub name: Option<String>,

    /// Where the worker keeps its id (`worker-id`), locked while it runs: one directory per
    /// worker process on a host.
    #[arg(
        long,
        env = "SHOAL_WORKER_DATA_DIR",
        default_value = "./shoal-data/worker"
    )]
    pub data_dir: PathBuf,

    /// The master's address, instead of `masterAddress` from the k/v store.
    #[arg(long, env = "SHOAL_WORKER_MASTER", value_name = "URL")]
    pub master: Option<String>,

    /// The storage's address, instead of `storageAddress` from the k/v store.
    #[arg(long, env = "SHOAL_WORKER_STORAGE", value_name = "URL")]
    pub storage: Option<String>,

    /// How long one request for a task waits for one to appear.
    #[arg(long, env = "SHOAL_WORKER_POLL_WAIT", value_parser = parse_duration, default_value = "20s")]
    pub poll_wait: Duration,

    /// After SIGTERM, how long tasks in hand get to finish before the worker exits anyway
    /// (their leases then run out and other workers take them).
    #[arg(long, env = "SHOAL_WORKER_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,

    /// Most pixels an image may have (a decompression-bomb guard; the master checks too).
    #[arg(long, env = "SHOAL_WORKER_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

    /// `/healthz` and `/metrics`.
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// Flags every service shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Every default but the name, which is made up (so several in-process workers never
    /// share the default data directory's lock); discovery through the k/v store at `kv`
    /// (tests, `shoal up`, which names its worker).
    pub fn with_kv(kv: impl Into<String>) -> Self {
        Self {
            threads: None,
            name: Some(format!("worker-{}", uuid::Uuid::new_v4().simple())),
            data_dir: PathBuf::from("./shoal-data/worker"),
            master: None,
            storage: None,
            poll_wait: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(60),
            max_pixels: 40_000_000,
            metrics: MetricsArgs::default(),
            common: CommonArgs {
                kv: vec![kv.into()],
                ..CommonArgs::default()
            },
        }
    }

    /// The thread count: `--threads`, or the number of cores.
    pub fn thread_count(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            |n| n as usize,
        )
    }

    /// The worker's identity: `--name`, or the host name and the id kept in `--data-dir`.
    pub fn identity(&self) -> anyhow::Result<crate::identity::Identity> {
        match &self.name {
            Some(name) => crate::identity::Identity::named(name),
            None => crate::identity::Identity::persistent(&self.data_dir),
        }
    }
}
