//! `shoal multicast` flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shoal_core::config::{CommonArgs, DatabaseArgs, parse_duration, parse_size};

use crate::guard::parse_cidr;
use crate::hub::HubOptions;
use crate::signing::SigningSecret;

/// Configuration of `shoal multicast`.
#[derive(Args, Clone, Debug)]
// The hub finds nothing through the k/v store yet: the shared `--kv` stays accepted (one
// `SHOAL_KV` may describe a whole deployment) but is not offered.
#[command(mut_arg("kv", |a| a.hide(true)))]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(long, env = "SHOAL_MULTICAST_LISTEN", default_value = "127.0.0.1:3010")]
    pub listen: String,

    /// Directory of the embedded SQLite outbox (unused with --database-url).
    #[arg(
        long,
        env = "SHOAL_MULTICAST_DATA_DIR",
        default_value = "./shoal-data/multicast"
    )]
    pub data_dir: PathBuf,

    /// A subscriber that has not kept alive for this long is removed.
    #[arg(long, env = "SHOAL_MULTICAST_EXPIRE", value_parser = parse_duration, default_value = "2m")]
    pub expire: Duration,

    /// Time allowed for one delivery request.
    #[arg(long, env = "SHOAL_MULTICAST_DELIVERY_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub delivery_timeout: Duration,

    /// Attempts per delivery before it is recorded as failed.
    #[arg(long, env = "SHOAL_MULTICAST_MAX_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// A delivery of a message older than this is not retried any more.
    #[arg(long, env = "SHOAL_MULTICAST_MAX_RETRY_AGE", value_parser = parse_duration, default_value = "24h")]
    pub max_retry_age: Duration,

    /// Delay before the first retry (doubling per attempt, with jitter).
    #[arg(long, env = "SHOAL_MULTICAST_RETRY_INITIAL", value_parser = parse_duration, default_value = "1s")]
    pub retry_initial: Duration,

    /// Longest delay between retries.
    #[arg(long, env = "SHOAL_MULTICAST_RETRY_MAX", value_parser = parse_duration, default_value = "5m")]
    pub retry_max: Duration,

    /// Delivery requests in flight across all subscribers (each subscriber has one at most).
    #[arg(long, env = "SHOAL_MULTICAST_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Most subscribers.
    #[arg(
        long,
        env = "SHOAL_MULTICAST_MAX_SUBSCRIBERS",
        default_value_t = 10_000
    )]
    pub max_subscribers: usize,

    /// Largest message accepted (413 beyond).
    #[arg(long, env = "SHOAL_MULTICAST_MAX_MESSAGE_SIZE", value_parser = parse_size, default_value = "1MiB")]
    pub max_message_size: u64,

    /// Most bytes of accepted messages waiting for delivery; beyond it sends are answered 503.
    #[arg(long, env = "SHOAL_MULTICAST_MAX_BACKLOG", value_parser = parse_size, default_value = "1GiB")]
    pub max_backlog: u64,

    /// A subscriber with more messages pending than this is removed (with a failure record),
    /// so one dead subscriber cannot fill the backlog everyone shares.
    #[arg(long, env = "SHOAL_MULTICAST_MAX_PENDING", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending: u64,

    /// Sign deliveries (Standard Webhooks headers) with this secret (`whsec_<base64>` or text).
    #[arg(long, env = "SHOAL_MULTICAST_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<SigningSecret>,

    /// Allow deliveries to this network even if the built-in guard refuses it (repeatable).
    #[arg(long = "allow-cidr", env = "SHOAL_MULTICAST_ALLOW_CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub allow_cidr: Vec<ipnet::IpNet>,

    /// Refuse deliveries to this network (repeatable; beats --allow-cidr), e.g. 127.0.0.0/8.
    #[arg(long = "deny-cidr", env = "SHOAL_MULTICAST_DENY_CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub deny_cidr: Vec<ipnet::IpNet>,

    /// Where state is kept when not in the embedded SQLite file.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Flags every service shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Every default, storing in `data_dir` (tests, `shoal up`, benchmarks).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let hub = HubOptions::default();
        Self {
            listen: "127.0.0.1:3010".into(),
            data_dir: data_dir.into(),
            expire: hub.expire,
            delivery_timeout: hub.delivery_timeout,
            max_attempts: hub.max_attempts,
            max_retry_age: hub.max_retry_age,
            retry_initial: hub.retry_initial,
            retry_max: hub.retry_max,
            max_in_flight: hub.max_in_flight,
            max_subscribers: hub.max_subscribers,
            max_message_size: 1 << 20,
            max_backlog: hub.max_backlog_bytes,
            max_pending: hub.max_pending,
            signing_secret: None,
            allow_cidr: Vec::new(),
            deny_cidr: Vec::new(),
            database: DatabaseArgs::default(),
            common: CommonArgs::default(),
        }
    }

    /// The hub's behaviour.
    pub fn hub_options(&self) -> HubOptions {
        HubOptions {
            expire: self.expire,
            delivery_timeout: self.delivery_timeout,
            max_attempts: self.max_attempts,
            max_retry_age: self.max_retry_age,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            max_in_flight: self.max_in_flight,
            max_subscribers: self.max_subscribers,
            max_backlog_bytes: self.max_backlog,
            max_pending: self.max_pending,
            signing: self.signing_secret.clone(),
            ..HubOptions::default()
        }
    }
}
