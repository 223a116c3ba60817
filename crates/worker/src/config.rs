//! `shoal worker` flags.

use std::time::Duration;

use clap::Args;
use shoal_core::config::{CommonArgs, MetricsArgs, parse_duration};

/// Configuration of `shoal worker`.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Tasks processed at once (each on its own core); default: the number of cores.
    #[arg(long, env = "SHOAL_WORKER_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// This worker's name on its claims (default: host name and process id). A host that
    /// restarts can hand back the claims its dead workers held by this name.
    #[arg(long, env = "SHOAL_WORKER_NAME")]
    pub name: Option<String>,

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
    /// Every default; discovery through the k/v store at `kv` (tests, `shoal up`).
    pub fn with_kv(kv: impl Into<String>) -> Self {
        Self {
            threads: None,
            name: None,
            master: None,
            storage: None,
            poll_wait: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(60),
            max_pixels: 40_000_000,
            metrics: MetricsArgs::default(),
            common: CommonArgs {
                kv: Some(kv.into()),
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

    /// The name claims carry: `--name`, or `HOST-PID`.
    pub fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}
