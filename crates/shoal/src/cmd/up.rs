//! `shoal up`: the whole pipeline in one process, on loopback, with embedded storage.
//!
//! Services join as they are built; today it hosts the k/v store, the task database and the
//! blob storage, which register in the k/v store as `databaseAddress` and `storageAddress`
//! exactly as they do when run on their own.

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

    /// Address of the blob storage.
    #[arg(
        long,
        env = "SHOAL_UP_STORAGE_LISTEN",
        default_value = "127.0.0.1:3002"
    )]
    pub storage_listen: String,

    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Starts every service and waits for SIGINT/SIGTERM; stops them all when one fails.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Bind everything first: a taken port fails at once, before anything registers.
    let kv_listener = server::bind(&args.kv_listen).await?;
    let tasks_listener = server::bind(&args.tasks_listen).await?;
    let storage_listener = server::bind(&args.storage_listen).await?;
    let kv_url = format!("http://{}", kv_listener.local_addr()?);
    let tasks_url = format!("http://{}", tasks_listener.local_addr()?);
    let storage_url = format!("http://{}", storage_listener.local_addr()?);

    let mut kv = shoal_kv::Config::with_data_dir(args.data_dir.join("kv"));
    kv.listen = args.kv_listen;
    let mut tasks = shoal_tasks::Config::with_data_dir(args.data_dir.join("tasks"));
    tasks.common.kv = Some(kv_url.clone());
    let mut storage = shoal_storage::Config::with_data_dir(args.data_dir.join("storage"));
    storage.common.kv = Some(kv_url.clone());

    // Started in dependency order and stopped in reverse, so each service deregisters from a
    // k/v store that is still there.
    let mut services = Services::default();
    services.start("k/v store", |stop| {
        shoal_kv::run(kv, kv_listener, stop.cancelled_owned())
    });
    services.start("task database", |stop| {
        shoal_tasks::run(tasks, tasks_listener, stop.cancelled_owned())
    });
    services.start("blob storage", |stop| {
        shoal_storage::run(storage, storage_listener, stop.cancelled_owned())
    });
    println!(
        "shoal is up: k/v store at {kv_url} (try: curl '{kv_url}/list'), task database at {tasks_url}, blob storage at {storage_url}. Ctrl-C stops it."
    );

    let result = tokio::select! {
        () = server::shutdown_signal() => Ok(()),
        failed = services.first_exit() => Err(failed),
    };
    let stopped = services.stop_all().await;
    // A service's own error says more than "stopped unexpectedly".
    stopped.and(result)
}

/// The services of one `shoal up`, in start order.
#[derive(Default)]
struct Services {
    running: Vec<Service>,
    exits: tokio::task::JoinSet<&'static str>,
}

struct Service {
    name: &'static str,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Services {
    fn start<F, Fut>(&mut self, name: &'static str, run: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let exited = CancellationToken::new();
        let guard = exited.clone().drop_guard();
        let future = run(stop.clone());
        let task = tokio::spawn(async move {
            let _exited = guard;
            future.await
        });
        self.exits.spawn(async move {
            exited.cancelled().await;
            name
        });
        self.running.push(Service { name, stop, task });
    }

    /// Resolves when any service stops on its own (an error, since they run until told).
    async fn first_exit(&mut self) -> anyhow::Error {
        match self.exits.join_next().await {
            Some(Ok(name)) => anyhow::anyhow!("the {name} stopped unexpectedly"),
            _ => anyhow::anyhow!("no service is running"),
        }
    }

    /// Stops the services newest first, waiting for each; returns the first error.
    async fn stop_all(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for service in self.running.into_iter().rev() {
            service.stop.cancel();
            let outcome = match service.task.await {
                Ok(outcome) => outcome,
                Err(join) => Err(join.into()),
            };
            if let Err(err) = outcome
                && result.is_ok()
            {
                result = Err(err.context(service.name));
            }
        }
        result
    }
}
