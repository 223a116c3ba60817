//! `shoal bench nats`: the NATS patterns under load.
//!
//! Three measurements, each for `--duration` with `--concurrency` callers (tasks: until all
//! are done), everything but the NATS server in this process:
//! - **echo**: the floor, request/reply round trips against a bare subscriber that returns
//!   the payload (what NATS itself costs on this machine);
//! - **direct**: `UserNameById` request/reply round trips against one user provider;
//! - **frontend**: `GET /{id}` through the HTTP frontend, each page two concurrent NATS
//!   requests (user provider and time teller);
//! - **tasks**: `--tasks` word-count tasks (the tutorial's file) through an in-memory master,
//!   the file server and `N` worker loops, for each `N` in `--workers`: tasks per second from
//!   the first worker start to the last finish.
//!
//! With `--durable`, the tasks go through the JetStream-backed master instead (a fresh stream
//! per worker count). With no `--nats`, a `nats-server` is started on a free loopback port.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use prost::Message as _;
use shoal_core::testkit::nats::NatsServer;
use shoal_nats::master::{DEMO_CONTENT, Master};
use shoal_nats::subjects::USER_NAME_BY_ID;
use shoal_nats::{User, fileserver, frontend, providers, worker};
use tokio_util::sync::CancellationToken;

/// Flags of `shoal bench nats`.
#[derive(clap::Args, Clone, Debug)]
pub struct NatsBenchArgs {
    /// The NATS server; default: start a `nats-server` on a free loopback port.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// How long each request/reply measurement runs.
    #[arg(long, value_parser = shoal_core::config::parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Concurrent callers for the request/reply measurements.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Word-count tasks per worker setting.
    #[arg(long, default_value_t = 2000)]
    pub tasks: usize,
    /// Run the task measurement with the JetStream-backed master (`master --durable`).
    #[arg(long)]
    pub durable: bool,
    /// Worker loop counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub workers: Vec<u16>,
}

/// Round trips measured for one path.
#[derive(Clone, Debug, Default)]
pub struct RoundTrips {
    /// Successful round trips.
    pub ok: usize,
    /// Failed or timed-out ones.
    pub failed: usize,
    /// Wall time of the measurement.
    pub elapsed: Duration,
    /// Latencies of the successful ones, sorted.
    pub latencies: Vec<Duration>,
}

impl RoundTrips {
    /// Successful round trips per second.
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        crate::report::percentile(&self.latencies, p)
    }
}

/// Tasks through master and workers for one worker count.
#[derive(Clone, Debug)]
pub struct TaskRun {
    /// Worker loops.
    pub workers: u16,
    /// Tasks finished.
    pub finished: usize,
    /// From the workers' start to the last finish.
    pub elapsed: Duration,
}

impl TaskRun {
    /// Tasks per second.
    pub fn per_second(&self) -> f64 {
        self.finished as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What `shoal bench nats` measured.
#[derive(Clone, Debug)]
pub struct NatsBenchReport {
    /// Concurrent callers.
    pub concurrency: usize,
    /// Request/reply against a bare echo subscriber (the baseline).
    pub echo: RoundTrips,
    /// Request/reply on the subject.
    pub direct: RoundTrips,
    /// Pages through the frontend.
    pub frontend: RoundTrips,
    /// Tasks per worker count.
    pub tasks: Vec<TaskRun>,
    /// Tasks asked for per run.
    pub tasks_asked: usize,
    /// Whether the master was the JetStream-backed one.
    pub durable: bool,
}

impl NatsBenchReport {
    /// Fails when a measurement had no success at all or tasks were left unfinished.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.echo.ok > 0, "no echo request/reply succeeded");
        anyhow::ensure!(self.direct.ok > 0, "no direct request/reply succeeded");
        anyhow::ensure!(self.frontend.ok > 0, "no frontend page succeeded");
        for run in &self.tasks {
            anyhow::ensure!(
                run.finished == self.tasks_asked,
                "{} of {} tasks finished with {} workers",
                run.finished,
                self.tasks_asked,
                run.workers
            );
        }
        Ok(())
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |_| format!("{} ms", crate::report::ms(d)))
}

impl fmt::Display for NatsBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nats: {} concurrent callers", self.concurrency)?;
        for (name, r) in [
            ("baseline: bare echo request/reply", &self.echo),
            ("direct request/reply (UserNameById)", &self.direct),
            ("frontend GET /{id} (2 requests per page)", &self.frontend),
        ] {
            writeln!(
                f,
                "  {name}: {:.0}/s  p50 {}  p99 {}  ({} ok, {} failed)",
                r.per_second(),
                ms(r.percentile(50.0)),
                ms(r.percentile(99.0)),
                r.ok,
                r.failed
            )?;
        }
        let ratio = |a: &RoundTrips, b: &RoundTrips| a.per_second() / b.per_second().max(1e-9);
        writeln!(
            f,
            "  ratios: direct/echo {:.2}  frontend pages/direct {:.2}",
            ratio(&self.direct, &self.echo),
            ratio(&self.frontend, &self.direct)
        )?;
        for run in &self.tasks {
            writeln!(
                f,
                "  word-count tasks ({} master), {} worker loops: {:.0} tasks/s  ({} tasks in {:.2} s)",
                if self.durable { "durable" } else { "in-memory" },
                run.workers,
                run.per_second(),
                run.finished,
                run.elapsed.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// Runs `concurrency` loops of `call` for `duration`.
async fn hammer<F, Fut>(concurrency: usize, duration: Duration, call: F) -> RoundTrips
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|caller| {
            let call = call.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0;
                let mut n = caller;
                while !done.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if call(n).await {
                        latencies.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                    n += concurrency;
                }
                (latencies, failed)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    done.store(true, Ordering::Relaxed);
    let mut result = RoundTrips::default();
    for handle in handles {
        if let Ok((latencies, failed)) = handle.await {
            result.ok += latencies.len();
            result.latencies.extend(latencies);
            result.failed += failed;
        }
    }
    result.elapsed = started.elapsed();
    result.latencies.sort();
    result
}

fn spawn_until<F>(make: impl FnOnce(CancellationToken) -> F) -> CancellationToken
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let future = make(stop.clone());
    tokio::spawn(async move {
        if let Err(err) = future.await {
            tracing::warn!(error = %format!("{err:#}"), "bench task failed");
        }
    });
    stop
}

/// Runs the scenario.
pub async fn measure(args: &NatsBenchArgs) -> anyhow::Result<NatsBenchReport> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let local;
    let url = match &args.nats {
        Some(url) => url.clone(),
        None => {
            local =
                NatsServer::start()?.context("no --nats given and nats-server is not installed")?;
            local.url()
        }
    };
    let connect = || async {
        async_nats::connect(url.as_str())
            .await
            .with_context(|| format!("cannot connect to {url}"))
    };
    let mut stops = Vec::new();

    // The floor: a bare subscriber echoing the payload.
    let echo_client = connect().await?;
    let mut echo_sub = echo_client.subscribe("shoal.bench.echo").await?;
    let echo_task = tokio::spawn({
        let client = echo_client.clone();
        async move {
            use futures::StreamExt as _;
            while let Some(message) = echo_sub.next().await {
                if let Some(reply) = message.reply {
                    let _ = client.publish(reply, message.payload).await;
                }
            }
        }
    });
    echo_client.flush().await?;
    let caller = connect().await?;
    let echo = {
        let caller = caller.clone();
        hammer(args.concurrency, args.duration, move |_| {
            let caller = caller.clone();
            async move {
                matches!(
                    tokio::time::timeout(
                        Duration::from_secs(1),
                        caller.request("shoal.bench.echo", Bytes::from_static(b"\x0a\x011"))
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
        })
        .await
    };
    echo_task.abort();

    // Direct request/reply.
    stops.push(spawn_until({
        let client = connect().await?;
        |stop| providers::serve_users(client, providers::seed_users(), stop)
    }));
    stops.push(spawn_until({
        let client = connect().await?;
        |stop| providers::serve_time(client, stop)
    }));
    wait_for_users(&caller).await?;
    let direct = {
        let caller = caller.clone();
        hammer(args.concurrency, args.duration, move |n| {
            let caller = caller.clone();
            async move {
                let user = User {
                    id: (n % 4 + 1).to_string(),
                    name: String::new(),
                };
                matches!(
                    tokio::time::timeout(
                        Duration::from_secs(1),
                        caller.request(USER_NAME_BY_ID, Bytes::from(user.encode_to_vec()))
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
        })
        .await
    };

    // Through the frontend.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let front_stop = CancellationToken::new();
    {
        let router = frontend::router_with(connect().await?, Duration::from_secs(1));
        let stop = front_stop.clone();
        tokio::spawn(shoal_core::server::run(
            router,
            listener,
            async move { stop.cancelled().await },
            shoal_core::server::ServerOptions::new("nats-frontend"),
        ));
    }
    shoal_core::client::install_crypto_provider();
    let http = reqwest::Client::new();
    let frontend = hammer(args.concurrency, args.duration, move |n| {
        let http = http.clone();
        async move {
            let url = format!("http://{address}/{}", n % 4 + 1);
            match http.get(url).send().await {
                Ok(response) if response.status().is_success() => {
                    let degraded = response.headers().contains_key("x-degraded");
                    response.bytes().await.is_ok() && !degraded
                }
                _ => false,
            }
        }
    })
    .await;
    front_stop.cancel();

    // Tasks through master, file server and workers.
    let dir = tempfile::tempdir()?;
    let files_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let files_url = format!("http://{}", files_listener.local_addr()?);
    let files_stop = CancellationToken::new();
    {
        let stop = files_stop.clone();
        tokio::spawn(shoal_core::server::run(
            fileserver::router(dir.path().to_path_buf(), 1 << 20, Duration::from_secs(30)),
            files_listener,
            async move { stop.cancelled().await },
            shoal_core::server::ServerOptions::new("nats-file-server"),
        ));
    }
    stops.push(spawn_until({
        let client = connect().await?;
        let address = files_url.clone();
        |stop| fileserver::serve_discovery(client, address, stop)
    }));
    let http = worker::http_client()?;
    let mut tasks = Vec::new();
    for &workers in &args.workers {
        anyhow::ensure!(workers > 0, "--workers values must be at least 1");
        let master = if args.durable {
            let stream = format!("SHOAL_BENCH_{}_{workers}", std::process::id());
            Master::durable(&connect().await?, &stream, Duration::from_secs(120)).await?
        } else {
            Master::memory(Duration::from_secs(120))
        };
        for _ in 0..args.tasks {
            let uuid = uuid_like();
            worker::upload(
                &http,
                &files_url,
                &uuid,
                Bytes::from_static(DEMO_CONTENT.as_bytes()),
            )
            .await?;
            master.add(&uuid).await?;
        }
        let master_stop = spawn_until({
            let client = connect().await?;
            let master = master.clone();
            |stop| shoal_nats::master::serve(client, master, stop)
        });
        let worker_client = connect().await?;
        // The master's subscriptions are live once it answers a status request.
        wait_for_status(&caller).await?;
        let started = Instant::now();
        let worker_stop = spawn_until({
            let client = worker_client.clone();
            move |stop| worker::work(client, workers, Duration::from_secs(1), stop)
        });
        let deadline = started + Duration::from_secs(600);
        let finished = loop {
            let status = master.status().await;
            let finished = status["counters"]["finished"].as_u64().unwrap_or(0) as usize;
            if finished >= args.tasks || Instant::now() > deadline {
                break finished;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let elapsed = started.elapsed();
        worker_stop.cancel();
        master_stop.cancel();
        tasks.push(TaskRun {
            workers,
            finished,
            elapsed,
        });
        // Let the loops wind down before the next setting.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    files_stop.cancel();
    for stop in stops {
        stop.cancel();
    }
    Ok(NatsBenchReport {
        concurrency: args.concurrency,
        echo,
        direct,
        frontend,
        tasks,
        tasks_asked: args.tasks,
        durable: args.durable,
    })
}

fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn wait_for_users(client: &async_nats::Client) -> anyhow::Result<()> {
    let started = Instant::now();
    let probe = Bytes::from(
        User {
            id: "1".into(),
            name: String::new(),
        }
        .encode_to_vec(),
    );
    while client
        .request(USER_NAME_BY_ID, probe.clone())
        .await
        .is_err()
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the user provider did not come up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn wait_for_status(client: &async_nats::Client) -> anyhow::Result<()> {
    let started = Instant::now();
    while client
        .request(shoal_nats::subjects::STATUS, Bytes::new())
        .await
        .is_err()
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the master did not come up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
