//! `shoal master` flags.

use std::time::Duration;

use clap::Args;
use shoal_core::config::{CommonArgs, ListenArgs, parse_duration, parse_size, service_flag};

/// Configuration of `shoal master`.
#[derive(Args, Clone, Debug)]
#[command(
    mut_arg("listen", |a| service_flag(a, "SHOAL_MASTER_LISTEN", Some("127.0.0.1:3003"))),
    mut_arg("advertise", |a| service_flag(a, "SHOAL_MASTER_ADVERTISE", None)),
)]
pub struct Config {
    /// Where the API listens and the address registered as `masterAddress`.
    #[command(flatten)]
    pub net: ListenArgs,

    /// Largest upload accepted (the seed's form limit was 10 MB).
    #[arg(long, env = "SHOAL_MASTER_MAX_UPLOAD", value_parser = parse_size, default_value = "10MB")]
    pub max_upload: u64,

    /// Most pixels an upload or a result may have (a decompression-bomb guard).
    #[arg(long, env = "SHOAL_MASTER_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

    /// Largest result the storage accepts (its --max-object-size; both default to 1 GiB). An
    /// upload whose result could be larger, whatever its content, is refused at once instead
    /// of failing later.
    #[arg(long, env = "SHOAL_MASTER_MAX_RESULT", value_parser = parse_size, default_value = "1GiB")]
    pub max_result: u64,

    /// Tasks waiting for a worker beyond which uploads are answered 503 with Retry-After.
    #[arg(long, env = "SHOAL_MASTER_MAX_QUEUE", default_value_t = 10_000)]
    pub max_queue: u64,

    /// Longest `wait=` a long poll (isReady, getNewTask) may ask for.
    #[arg(long, env = "SHOAL_MASTER_MAX_WAIT", value_parser = parse_duration, default_value = "60s")]
    pub max_wait: Duration,

    /// The task database's address, instead of `databaseAddress` from the k/v store.
    #[arg(long, env = "SHOAL_MASTER_TASKS", value_name = "URL")]
    pub tasks: Option<String>,

    /// The storage's address, instead of `storageAddress` from the k/v store.
    #[arg(long, env = "SHOAL_MASTER_STORAGE", value_name = "URL")]
    pub storage: Option<String>,

    /// Flags every service shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Every default; discovery through the k/v store at `kv` (tests, `shoal up`).
    pub fn with_kv(kv: impl Into<String>) -> Self {
        Self {
            net: ListenArgs {
                listen: "127.0.0.1:3003".into(),
                advertise: None,
            },
            max_upload: 10_000_000,
            max_pixels: 40_000_000,
            max_result: 1 << 30,
            max_queue: 10_000,
            max_wait: Duration::from_secs(60),
            tasks: None,
            storage: None,
            common: CommonArgs {
                kv: vec![kv.into()],
                ..CommonArgs::default()
            },
        }
    }
}
