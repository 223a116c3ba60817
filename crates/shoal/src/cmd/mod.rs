//! The command line: one subcommand per service, one file per subcommand.

mod bench;
mod frontend;
mod gossip;
mod kv;
mod master;
mod multicast;
mod nats;
mod storage;
mod submit;
mod tasks;
mod up;
mod worker;

use clap::{Parser, Subcommand};
use shoal_core::config::LogFormat;

/// shoal: durable, observable microservices for an image-processing pipeline and friends.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size difference between variants costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the image pipeline on this machine with embedded storage, and print its URL.
    Up(up::Args),
    /// Key-value store for configuration and service discovery.
    Kv(shoal_kv::Config),
    /// Task database: a durable leased work queue for the image pipeline's workers.
    Tasks(shoal_tasks::Config),
    /// Blob storage for images: streaming, atomic, on a local directory or S3.
    Storage(shoal_storage::Config),
    /// The image pipeline's front door: uploads in, tasks out, results back.
    Master(shoal_master::Config),
    /// Takes image tasks from the master and transforms them, on every core.
    Worker(shoal_worker::Config),
    /// The web page and public API of the image pipeline.
    Frontend(shoal_frontend::Config),
    /// A one-value replicated database on SWIM membership: set on any node, read on all.
    Gossip(shoal_gossip::Config),
    /// Event fan-out (webhooks): durable, ordered, retried delivery to subscribers.
    Multicast(multicast::Args),
    /// The NATS messaging patterns on a NATS server: request/reply behind a web frontend,
    /// master and workers with discovery, typed events.
    Nats(nats::Args),
    /// Upload images to a running pipeline, wait, and download the results.
    Submit(submit::Args),
    /// Load generators: measure a service's throughput and latency.
    Bench(bench::Args),
}

impl Command {
    /// The log format the subcommand asked for.
    pub fn log_format(&self) -> LogFormat {
        match self {
            Self::Up(args) => args.log_format,
            Self::Kv(config) => config.common.log_format,
            Self::Tasks(config) => config.common.log_format,
            Self::Storage(config) => config.common.log_format,
            Self::Master(config) => config.common.log_format,
            Self::Worker(config) => config.common.log_format,
            Self::Frontend(config) => config.common.log_format,
            Self::Gossip(config) => config.log_format,
            Self::Multicast(args) => args.log_format(),
            Self::Nats(args) => args.log_format(),
            Self::Bench(_) | Self::Submit(_) => LogFormat::Text,
        }
    }

    /// Runs the subcommand to completion.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Up(args) => up::run(args).await,
            Self::Kv(config) => kv::run(config).await,
            Self::Tasks(config) => tasks::run(config).await,
            Self::Storage(config) => storage::run(config).await,
            Self::Master(config) => master::run(config).await,
            Self::Worker(config) => worker::run(config).await,
            Self::Frontend(config) => frontend::run(config).await,
            Self::Gossip(config) => gossip::run(config).await,
            Self::Multicast(args) => multicast::run(args).await,
            Self::Nats(args) => nats::run(args).await,
            Self::Bench(args) => bench::run(args).await,
            Self::Submit(args) => submit::run(args).await,
        }
    }
}
