//! `shoal up`: the whole pipeline in one process, on loopback, with embedded storage.
//!
//! Services join as they are built; today it hosts the k/v store and the task database, which
//! registers in the k/v store as `databaseAddress` exactly as it does when run on its own.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use shoal_core::config::LogFormat;
use shoal_core::server;
use tokio_util::sync::CancellationToken;

/// Flags of `shoal up`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Directory for all state (each service uses a subdirectory).
    #[arg(long, env = "SHOAL_UP_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,

    /// Address of the k/v store.
    #[arg(long, env = "SHOAL_UP_KV_LISTEN", default_value = "127.0.0.1:3000")]
    pub kv_listen: String,

    /// Address of the task database.
    #[arg(long, env = "SHOAL_UP_TASKS_LISTEN", default_value = "127.0.0.1:3001")]
    pub tasks_listen: String,

    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Starts every service and waits for SIGINT/SIGTERM; stops them all when one fails.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Bind everything first: a taken port fails at once, before anything registers.
    let kv_listener = server::bind(&args.kv_listen).await?;
    let tasks_listener = server::bind(&args.tasks_listen).await?;
    let kv_url = format!("http://{}", kv_listener.local_addr()?);
    let tasks_url = format!("http://{}", tasks_listener.local_addr()?);

    let stop = CancellationToken::new();
    let mut kv = shoal_kv::Config::with_data_dir(args.data_dir.join("kv"));
    kv.listen = args.kv_listen;
    let mut tasks = shoal_tasks::Config::with_data_dir(args.data_dir.join("tasks"));
    tasks.common.kv = Some(kv_url.clone());

    let mut services = tokio::task::JoinSet::new();
    let s = stop.clone();
    services.spawn(async move {
        shoal_kv::run(kv, kv_listener, async move { s.cancelled().await })
            .await
            .map_err(|e| e.context("k/v store"))
    });
    let s = stop.clone();
    services.spawn(async move {
        shoal_tasks::run(tasks, tasks_listener, async move { s.cancelled().await })
            .await
            .map_err(|e| e.context("task database"))
    });
    println!(
        "shoal is up: k/v store at {kv_url} (try: curl '{kv_url}/list'), task database at {tasks_url}. Ctrl-C stops it."
    );

    let mut result = Ok(());
    tokio::select! {
        () = server::shutdown_signal() => {}
        Some(done) = services.join_next() => {
            result = done.map_err(anyhow::Error::from).and_then(|r| r);
            if result.is_ok() {
                result = Err(anyhow::anyhow!("a service stopped unexpectedly"));
            }
        }
    }
    stop.cancel();
    while let Some(done) = services.join_next().await {
        if let Err(err) = done.map_err(anyhow::Error::from).and_then(|r| r)
            && result.is_ok()
        {
            result = Err(err);
        }
    }
    result
}
