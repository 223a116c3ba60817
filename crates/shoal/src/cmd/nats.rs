//! `shoal nats …`: the NATS messaging patterns, one program per subcommand.

use clap::{Args as ClapArgs, Subcommand};
use shoal_core::config::{LogFormat, MetricsArgs};
use shoal_core::server::{self, ServerOptions};
use shoal_nats::events::{PublishConfig, SubscribeConfig};
use shoal_nats::fileserver::FileServerConfig;
use shoal_nats::frontend::FrontendConfig;
use shoal_nats::master::MasterConfig;
use shoal_nats::providers::{TimeTellerConfig, UserProviderConfig};
use shoal_nats::submit::SubmitConfig;
use shoal_nats::worker::WorkerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `shoal nats` and its programs.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The program to run.
    #[command(subcommand)]
    pub program: Program,
}

/// The programs.
#[derive(Subcommand, Debug)]
pub enum Program {
    /// Answer `UserNameById` requests (queue group `userNameByIdProviders`).
    UserProvider(UserProviderConfig),
    /// Answer `TimeTeller` requests with the time in RFC 3339 (queue group `TimeTellers`).
    TimeTeller(TimeTellerConfig),
    /// HTTP `GET /{id}`: the user's name and the time, within the timeout whatever happens.
    Frontend(FrontendConfig),
    /// Serve task files over HTTP and answer `Discovery.FileServer`.
    FileServer(FileServerConfig),
    /// Hand out word-count tasks (`Work.TaskToDo`, `Work.TaskFinished`, `Work.NewTask`).
    Master(MasterConfig),
    /// Do word-count tasks: fetch, count, upload, report.
    Worker(WorkerConfig),
    /// Upload comma-separated files as tasks, wait, and print each file's word counts.
    Submit(SubmitConfig),
    /// Print the master's state (`Work.Status`) as JSON.
    Status(StatusArgs),
    /// Send the tutorial's events: 5 published, 5 requests, 5 through a channel.
    Publish(PublishConfig),
    /// Print the tutorial's events as they arrive and answer the requests.
    Subscribe(SubscribeConfig),
}

impl Args {
    /// The log format asked for.
    pub fn log_format(&self) -> LogFormat {
        match &self.program {
            Program::UserProvider(c) => c.log_format,
            Program::TimeTeller(c) => c.log_format,
            Program::Frontend(c) => c.log_format,
            Program::FileServer(c) => c.log_format,
            Program::Master(c) => c.log_format,
            Program::Worker(c) => c.log_format,
            Program::Subscribe(c) => c.log_format,
            Program::Submit(_) | Program::Publish(_) | Program::Status(_) => LogFormat::Text,
        }
    }
}

/// `shoal nats status` flags.
#[derive(ClapArgs, Debug)]
pub struct StatusArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: shoal_nats::NatsArgs,
}

/// Serves `/healthz` and `/metrics` on `--metrics-listen`, if given, until `stop`.
async fn metrics_server(
    args: &MetricsArgs,
    service: &'static str,
    stop: &CancellationToken,
) -> anyhow::Result<Option<JoinHandle<anyhow::Result<()>>>> {
    let Some(address) = &args.metrics_listen else {
        return Ok(None);
    };
    let listener = server::bind(address).await?;
    let stop = stop.clone();
    Ok(Some(tokio::spawn(server::run_metrics_only(
        listener,
        async move { stop.cancelled().await },
        ServerOptions::new(service),
    ))))
}

async fn finish(metrics: Option<JoinHandle<anyhow::Result<()>>>) {
    if let Some(handle) = metrics {
        let _ = handle.await;
    }
}

/// Runs the program until it is done, or until SIGINT or SIGTERM (then drains).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let stop = server::watch_shutdown(server::shutdown_signal());
    let result = run_program(args.program, stop.clone()).await;
    match result {
        // Asked to stop before NATS answered: that is a normal exit, not a failure.
        Err(err) if stop.is_cancelled() => {
            tracing::info!(reason = %format!("{err:#}"), "stopped");
            Ok(())
        }
        other => other,
    }
}

async fn run_program(program: Program, stop: CancellationToken) -> anyhow::Result<()> {
    match program {
        Program::UserProvider(config) => {
            let users = shoal_nats::providers::load_users(config.users.as_deref())?;
            let metrics = metrics_server(&config.metrics, "nats-user-provider", &stop).await?;
            let client =
                shoal_nats::connect(&config.nats, "shoal-nats-user-provider", &stop).await?;
            shoal_nats::providers::serve_users(client.clone(), users, stop.clone()).await?;
            shoal_nats::connection::close(&client).await;
            stop.cancel();
            finish(metrics).await;
            Ok(())
        }
        Program::TimeTeller(config) => {
            let metrics = metrics_server(&config.metrics, "nats-time-teller", &stop).await?;
            let client = shoal_nats::connect(&config.nats, "shoal-nats-time-teller", &stop).await?;
            shoal_nats::providers::serve_time(client.clone(), stop.clone()).await?;
            shoal_nats::connection::close(&client).await;
            stop.cancel();
            finish(metrics).await;
            Ok(())
        }
        Program::Frontend(config) => {
            let listener = server::bind(&config.listen).await?;
            shoal_nats::frontend::run(config, listener, async move { stop.cancelled().await }).await
        }
        Program::FileServer(config) => {
            let listener = server::bind(&config.listen).await?;
            shoal_nats::fileserver::run(config, listener, async move { stop.cancelled().await })
                .await
        }
        Program::Master(config) => {
            let metrics = metrics_server(&config.metrics, "nats-master", &stop).await?;
            let result = shoal_nats::master::run(config, stop.clone()).await;
            stop.cancel();
            finish(metrics).await;
            result
        }
        Program::Worker(config) => {
            let metrics = metrics_server(&config.metrics, "nats-worker", &stop).await?;
            let result = shoal_nats::worker::run(config, stop.clone()).await;
            stop.cancel();
            finish(metrics).await;
            result
        }
        Program::Submit(config) => submit(config, stop).await,
        Program::Status(args) => status(args, stop).await,
        Program::Publish(config) => publish(config, stop).await,
        Program::Subscribe(config) => subscribe(config, stop).await,
    }
}

async fn submit(config: SubmitConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let client = shoal_nats::connect(&config.nats, "shoal-nats-submit", &stop).await?;
    let outcomes = tokio::select! {
        outcomes = shoal_nats::submit::submit(&client, &config.files, config.timeout) => outcomes?,
        () = stop.cancelled() => anyhow::bail!("interrupted"),
    };
    let mut failed = 0;
    for outcome in &outcomes {
        let id = outcome
            .id
            .map_or_else(|| "-".to_string(), |id| id.to_string());
        match &outcome.result {
            Ok(counts) => {
                println!("{} (task {id}):", outcome.file.display());
                for line in counts.lines() {
                    println!("  {line}");
                }
            }
            Err(reason) => {
                failed += 1;
                eprintln!("{} (task {id}): FAILED: {reason}", outcome.file.display());
            }
        }
    }
    shoal_nats::connection::close(&client).await;
    if failed > 0 {
        anyhow::bail!("{failed} of {} files failed", outcomes.len());
    }
    Ok(())
}

async fn publish(config: PublishConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let client = shoal_nats::connect(&config.nats, "shoal-nats-publish", &stop).await?;
    let report = shoal_nats::events::publish(&client, config.count, config.timeout).await?;
    println!(
        "published {} standard messages and {} through the channel",
        report.standard.len(),
        report.channel
    );
    for (id, reply) in &report.replies {
        match reply {
            Ok(message) => println!("{} with id {}", message.body, message.id),
            Err(reason) => eprintln!("request {id} failed: {reason}"),
        }
    }
    shoal_nats::connection::close(&client).await;
    let failed = report.failed_requests();
    if failed > 0 {
        anyhow::bail!("{failed} of {} requests got no reply", report.replies.len());
    }
    Ok(())
}

async fn subscribe(config: SubscribeConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let client = shoal_nats::connect(&config.nats, "shoal-nats-subscribe", &stop).await?;
    let subscriptions = shoal_nats::events::Subscriptions::start(&client).await?;
    tracing::info!("subscribed to Messaging.Text.Standard, .Respond and .Channel");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let running = tokio::spawn(subscriptions.run(stop, tx));
    while let Some(received) = rx.recv().await {
        println!("{received}");
    }
    let _ = running.await;
    shoal_nats::connection::close(&client).await;
    Ok(())
}

async fn status(args: StatusArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let client = shoal_nats::connect(&args.nats, "shoal-nats-status", &stop).await?;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.request(shoal_nats::subjects::STATUS, bytes::Bytes::new()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no master answered Work.Status within 5 s"))?
    .map_err(|err| anyhow::anyhow!("no master answered Work.Status: {err}"))?;
    println!("{}", String::from_utf8_lossy(&reply.payload));
    Ok(())
}
