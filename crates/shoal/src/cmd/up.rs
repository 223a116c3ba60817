//! `shoal up`: the whole pipeline in one process, on loopback, with embedded storage.
//!
//! Services join as they are built; today it hosts the k/v store that the others register in.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use shoal_core::config::LogFormat;
use shoal_core::server;

/// Flags of `shoal up`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Directory for all state (each service uses a subdirectory).
    #[arg(long, env = "SHOAL_UP_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,

    /// Address of the k/v store.
    #[arg(long, env = "SHOAL_UP_KV_LISTEN", default_value = "127.0.0.1:3000")]
    pub kv_listen: String,

    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Starts every service and waits for SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut kv = shoal_kv::Config::with_data_dir(args.data_dir.join("kv"));
    kv.listen = args.kv_listen;
    let listener = server::bind(&kv.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("shoal is up: k/v store at {url} (try: curl '{url}/list'). Ctrl-C stops it.");
    shoal_kv::run(kv, listener, server::shutdown_signal()).await
}
