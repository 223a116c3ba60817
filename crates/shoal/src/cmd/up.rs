//! `shoal up`: the whole pipeline in one process, on loopback, with embedded storage.
//!
//! It hosts the k/v store, the task database, the blob storage, the master, a worker and the
//! web frontend; each
//! registers in (and finds the others through) the k/v store exactly as it does when run on
//! its own, so the same code paths run here and across many hosts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};
use shoal_core::config::LogFormat;
use shoal_core::server;
use tokio_util::sync::CancellationToken;

/// The name the embedded worker's claims carry. Only this process's worker uses it, so at
/// start every claim still under it belongs to a worker that died with the previous run.
const EMBEDDED_WORKER: &str = "shoal-up-embedded";

/// How `shoal up` picks its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ports {
    /// The documented defaults (k/v 3000, tasks 3001, storage 3002, master 3003, frontend
    /// 8080), unless a `--*-listen` flag says otherwise.
    Default,
    /// Free ports picked by the system (for tests and for running several stacks).
    Auto,
}

/// Flags of `shoal up`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Directory for all state (each service uses a subdirectory).
    #[arg(long, env = "SHOAL_UP_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,

    /// `default` ports or `auto` (free ones).
    #[arg(long, env = "SHOAL_UP_PORTS", value_enum, default_value_t = Ports::Default)]
    pub ports: Ports,

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

    /// Address of the master.
    #[arg(long, env = "SHOAL_UP_MASTER_LISTEN", default_value = "127.0.0.1:3003")]
    pub master_listen: String,

    /// Address of the web frontend (the page users open).
    #[arg(
        long,
        env = "SHOAL_UP_FRONTEND_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub frontend_listen: String,

    /// Worker threads (default: the number of cores).
    #[arg(long, env = "SHOAL_UP_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// How long a claimed task stays claimed without a heartbeat.
    #[arg(long, env = "SHOAL_UP_LEASE", value_parser = shoal_core::config::parse_duration, default_value = "20s")]
    pub lease: Duration,

    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Starts every service and waits for SIGINT/SIGTERM; stops them all when one fails.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listen = |address: &str| match args.ports {
        Ports::Default => address.to_owned(),
        Ports::Auto => "127.0.0.1:0".to_owned(),
    };
    // Bind everything first: a taken port fails at once, before anything registers.
    let kv_listener = server::bind(&listen(&args.kv_listen)).await?;
    let tasks_listener = server::bind(&listen(&args.tasks_listen)).await?;
    let storage_listener = server::bind(&listen(&args.storage_listen)).await?;
    let master_listener = server::bind(&listen(&args.master_listen)).await?;
    let frontend_listener = server::bind(&listen(&args.frontend_listen)).await?;
    let url = |l: &tokio::net::TcpListener| -> anyhow::Result<String> {
        Ok(format!("http://{}", l.local_addr()?))
    };
    let kv_url = url(&kv_listener)?;
    let tasks_url = url(&tasks_listener)?;
    let storage_url = url(&storage_listener)?;
    let master_url = url(&master_listener)?;
    let frontend_url = url(&frontend_listener)?;

    let kv = shoal_kv::Config::with_data_dir(args.data_dir.join("kv"));
    let mut tasks = shoal_tasks::Config::with_data_dir(args.data_dir.join("tasks"));
    tasks.common.kv = vec![kv_url.clone()];
    tasks.lease = args.lease;
    let mut storage = shoal_storage::Config::with_data_dir(args.data_dir.join("storage"));
    storage.common.kv = vec![kv_url.clone()];
    // Storage's object limit and the master's result limit keep their (equal) defaults.
    let master = shoal_master::Config::with_kv(kv_url.clone());
    let mut worker = shoal_worker::Config::with_kv(kv_url.clone());
    worker.threads = args.threads;
    worker.name = Some(EMBEDDED_WORKER.to_owned());
    worker.data_dir = args.data_dir.join("worker");
    let frontend = shoal_frontend::Config::with_kv(kv_url.clone());

    // Started in dependency order and stopped in reverse, so each service deregisters from a
    // k/v store that is still there, and the worker finishes its tasks while the services it
    // reports to are still up.
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
    services.start("master", |stop| {
        shoal_master::run(master, master_listener, stop.cancelled_owned())
    });
    // The previous run's embedded worker died with it: the worker hands back the claims still
    // under its name when it starts, rather than leaving them until their leases run out.
    services.start("worker", |stop| {
        shoal_worker::run(worker, stop.cancelled_owned())
    });
    services.start("frontend", |stop| {
        shoal_frontend::run(frontend, frontend_listener, stop.cancelled_owned())
    });
    for (service, address) in [
        ("k/v store", &kv_url),
        ("task database", &tasks_url),
        ("storage", &storage_url),
        ("master", &master_url),
        ("frontend", &frontend_url),
    ] {
        println!("{service} listening on {address}");
    }
    // The page is announced once it works: the frontend is ready when the master is, which is
    // when the task database and the storage have registered and answer.
    tokio::select! {
        ready = wait_ready(&frontend_url) => if let Err(err) = ready {
            tracing::warn!(error = %format!("{err:#}"), "the pipeline is not ready yet; it may still be starting");
        },
        failed = services.first_exit() => {
            let stopped = services.stop_all().await;
            return stopped.and(Err(failed));
        }
        () = server::shutdown_signal() => return services.stop_all().await,
    }
    println!("shoal is up: open {frontend_url}/ to upload images. Ctrl-C stops it.");

    let result = tokio::select! {
        () = server::shutdown_signal() => Ok(()),
        failed = services.first_exit() => Err(failed),
    };
    let stopped = services.stop_all().await;
    // A service's own error says more than "stopped unexpectedly".
    stopped.and(result)
}

/// Waits (up to 30 s) for the frontend's `/readyz` to answer 200.
async fn wait_ready(frontend_url: &str) -> anyhow::Result<()> {
    let client = shoal_core::client::HttpClient::new(Default::default())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match client.get(&format!("{frontend_url}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = r.text().await.unwrap_or_default(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{last}")
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
