//! `shoal storage` flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shoal_core::config::{CommonArgs, ListenArgs, Secret, parse_duration, parse_size};

/// Configuration of `shoal storage`.
#[derive(Args, Clone, Debug)]
#[command(
    mut_arg("listen", |a| shoal_core::config::service_flag(a, "SHOAL_STORAGE_LISTEN", Some("127.0.0.1:3002"))),
    mut_arg("advertise", |a| shoal_core::config::service_flag(a, "SHOAL_STORAGE_ADVERTISE", None)),
)]
pub struct Config {
    /// Where the API listens and the address registered as `storageAddress`.
    #[command(flatten)]
    pub net: ListenArgs,

    /// Directory of the local backend (`working/N`, `finished/N`); unused with --s3-bucket.
    #[arg(
        long,
        env = "SHOAL_STORAGE_DATA_DIR",
        default_value = "./shoal-data/storage"
    )]
    pub data_dir: PathBuf,

    /// Largest object accepted; larger uploads are 413 before their body is read when they
    /// announce their length, and cut off at the limit when they do not. The default covers
    /// the largest result the master's default limits allow (40 MP as JPEG or PNG), so every
    /// upload the master accepts can be stored; bodies are streamed, so it costs no memory.
    #[arg(long, env = "SHOAL_STORAGE_MAX_OBJECT_SIZE", value_parser = parse_size, default_value = "1GiB")]
    pub max_object_size: u64,

    /// Remove objects last written longer ago than this (e.g. `7d`), checked every minute;
    /// off by default.
    #[arg(long, env = "SHOAL_STORAGE_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,

    /// Store in this S3 bucket instead of --data-dir.
    #[arg(long, env = "SHOAL_STORAGE_S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,

    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS itself when unset.
    #[arg(
        long,
        env = "SHOAL_STORAGE_S3_ENDPOINT",
        value_name = "URL",
        requires = "s3_bucket"
    )]
    pub s3_endpoint: Option<String>,

    /// The bucket's region; default AWS_REGION, else us-east-1.
    #[arg(
        long,
        env = "SHOAL_STORAGE_S3_REGION",
        value_name = "REGION",
        requires = "s3_bucket"
    )]
    pub s3_region: Option<String>,

    /// The S3 access key id (the standard variable; other AWS variables such as
    /// AWS_SESSION_TOKEN are read too).
    #[arg(
        long,
        env = "AWS_ACCESS_KEY_ID",
        value_name = "ID",
        requires = "s3_bucket"
    )]
    pub s3_access_key_id: Option<String>,

    /// The S3 secret access key.
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        value_name = "SECRET",
        hide_env_values = true,
        requires = "s3_bucket"
    )]
    pub s3_secret_access_key: Option<Secret>,

    /// An upload that sends nothing for this long is abandoned (408) and leaves nothing.
    #[arg(long, env = "SHOAL_STORAGE_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub idle_timeout: Duration,

    /// Longest an upload or download request may take in all.
    #[arg(long, env = "SHOAL_STORAGE_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "15m")]
    pub request_timeout: Duration,

    /// Flags every service shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Every default, storing in `data_dir` (tests, `shoal up`).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            net: ListenArgs {
                listen: "127.0.0.1:3002".into(),
                advertise: None,
            },
            data_dir: data_dir.into(),
            max_object_size: 1 << 30,
            retention: None,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15 * 60),
            common: CommonArgs::default(),
        }
    }
}
