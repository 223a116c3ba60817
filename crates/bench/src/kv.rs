//! `shoal bench kv`: gets and sets against a kv store, optionally next to a trivial baseline
//! server behind the same middleware.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use bytes::Bytes;
use clap::ValueEnum as _;
use shoal_core::config::{Token, parse_duration, parse_size};
use shoal_core::routes::{get, post};
use shoal_core::server::{self, ServerOptions};
use shoal_core::testkit::TestServer;
use shoal_kv::store::SyncMode;
use tokio::task::JoinSet;

use crate::client::{Target, fetch};
use crate::load::{self, Workload};
use crate::mix::{Mix, Op};
use crate::report::Report;

/// How long the target gets to answer its first `/healthz`.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// How long one preload `set` may take.
const PRELOAD_REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// What the baseline server's `/get` answers.
const BASELINE_GET_BODY: &str = "baseline";

/// Flags of `shoal bench kv`.
#[derive(clap::Args, Clone, Debug)]
pub struct KvArgs {
    /// The kv to benchmark (`HOST:PORT` or `http://HOST:PORT`). Without it, a fresh kv is
    /// started in this process on 127.0.0.1 with a temporary data directory.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Concurrent connections; each is one task sending requests back to back.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// How long to measure, after the warmup (`10s`, `500ms`, `1m`).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// How long to run the same load first without recording it.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,

    /// Relative weights of the operations: `get=90,set=10`, `get=100`, `set=100`.
    #[arg(long, value_parser = Mix::parse, default_value = "get=90,set=10")]
    pub mix: Mix,

    /// How many distinct keys (`bench-key-0` …) the requests spread over; each is set once
    /// before measuring, so gets find it.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,

    /// Size of each value written (`64`, `1KiB`).
    #[arg(long, value_parser = parse_value_size, default_value = "64")]
    pub value_size: usize,

    /// First measure a trivial server (constant answers, same middleware as kv) with the same
    /// load, and report kv's throughput relative to it.
    #[arg(long)]
    pub baseline: bool,

    /// Durability of the in-process kv's writes (default `normal`); not with --target.
    #[arg(long, value_enum, conflicts_with = "target")]
    pub sync: Option<SyncMode>,

    /// Bearer token to send to --target.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,
}

impl KvArgs {
    /// Flags with every default (in-process kv, 64 connections, 10 s, `get=90,set=10`).
    pub fn new() -> Self {
        Self {
            target: None,
            connections: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            mix: Mix::parse("get=90,set=10").expect("the default mix parses"),
            keys: 1000,
            value_size: 64,
            baseline: false,
            sync: None,
            token: None,
        }
    }
}

impl Default for KvArgs {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_value_size(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if n == 0 {
        return Err("the value size must be at least 1 byte (kv refuses empty values)".into());
    }
    usize::try_from(n).map_err(|_| format!("value size out of range: {s}"))
}

/// Runs the scenario and returns what it measured. Fails when a server cannot be started or
/// reached or the preload is refused; a run whose requests all failed still returns its
/// report (see [`Report::check`]).
pub async fn measure(args: &KvArgs) -> anyhow::Result<Report> {
    if args.duration.is_zero() {
        bail!("--duration must be more than zero");
    }
    let connections = usize::try_from(args.connections).context("--connections out of range")?;
    let value = Bytes::from(
        (0..args.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let workload = |target: Target| {
        Arc::new(Workload {
            target,
            mix: args.mix.clone(),
            keys: args.keys,
            value: value.clone(),
            connections,
            warmup: args.warmup,
            duration: args.duration,
        })
    };
    let plan = format!(
        "{} warmup + {}, {connections} connections, mix {}",
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration),
        args.mix
    );

    let baseline = if args.baseline {
        let server = TestServer::start(|listener, shutdown| async move {
            server::run(
                baseline_router(),
                listener,
                shutdown,
                ServerOptions::new("baseline"),
            )
            .await
        })
        .await
        .context("cannot start the baseline server")?;
        let target = Target::parse(&server.base_url, None)?;
        let measured = with_server(server, "baseline", async {
            target.probe(PROBE_LIMIT).await?;
            eprintln!("bench: measuring baseline at {} ({plan})", target.base_url);
            load::measure("baseline", workload(target.clone())).await
        })
        .await?;
        Some(measured)
    } else {
        None
    };

    let run_kv = |target: Target| {
        let work = workload(target);
        async move {
            work.target.probe(PROBE_LIMIT).await?;
            eprintln!(
                "bench: preloading {} keys of {} bytes into {}",
                work.keys,
                work.value.len(),
                work.target.base_url
            );
            preload(&work).await?;
            eprintln!("bench: measuring kv at {} ({plan})", work.target.base_url);
            load::measure("kv", work).await
        }
    };
    let (target_url, target_kind, measured) = match &args.target {
        Some(url) => {
            let target = Target::parse(url, args.token.as_ref())?;
            let base_url = target.base_url.clone();
            (base_url, "external".to_owned(), run_kv(target).await?)
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("shoal-bench-kv-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            let sync = args.sync.unwrap_or_default();
            let mut config = shoal_kv::Config::with_data_dir(dir.path());
            config.sync = sync;
            let server = TestServer::start(move |listener, shutdown| {
                shoal_kv::run(config, listener, shutdown)
            })
            .await
            .context("cannot start the in-process kv")?;
            let target = Target::parse(&server.base_url, None)?;
            let base_url = target.base_url.clone();
            let measured = with_server(server, "kv", run_kv(target)).await?;
            // The store is closed now; only then remove its files.
            dir.close()
                .context("cannot remove the temporary data directory")?;
            let sync = sync
                .to_possible_value()
                .map_or_else(|| format!("{sync:?}"), |v| v.get_name().to_owned());
            (base_url, format!("in-process, sync={sync}"), measured)
        }
    };

    Ok(Report {
        scenario: "kv".into(),
        target: target_url,
        target_kind,
        connections,
        duration: args.duration,
        mix: args.mix.clone(),
        baseline,
        measured,
    })
}

/// The baseline: constant answers, no state, behind the same middleware as every service.
/// `/set` still reads the body, as kv does.
fn baseline_router() -> Router {
    Router::new()
        .route("/get", get(|| async { BASELINE_GET_BODY }))
        .route("/set", post(|_body: Bytes| async { "success" }))
}

/// Runs `work` while `server` runs, then stops the server. When the work failed because the
/// server had died, the server's own error is the one worth showing.
async fn with_server<T>(
    server: TestServer,
    name: &str,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let result = work.await;
    let stopped = server.stop().await;
    match (result, stopped) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(e)) => Err(e.context(format!("the in-process {name} server failed"))),
        (Err(e), Err(server_error)) => {
            Err(server_error.context(format!("the in-process {name} server failed ({e:#})")))
        }
        (Err(e), Ok(())) => Err(e),
    }
}

/// Sets every key once, over up to `connections` connections, so gets hit existing keys.
async fn preload(work: &Arc<Workload>) -> anyhow::Result<()> {
    let lanes = u64::try_from(work.connections)
        .unwrap_or(u64::MAX)
        .min(work.keys)
        .max(1);
    let mut tasks = JoinSet::new();
    for lane in 0..lanes {
        let work = Arc::clone(work);
        tasks.spawn(async move {
            let mut sender = work.target.connect().await?;
            let mut key = lane;
            while key < work.keys {
                let request = work.target.op_request(Op::Set, key, &work.value)?;
                let (status, body) =
                    tokio::time::timeout(PRELOAD_REQUEST_LIMIT, fetch(&mut sender, request))
                        .await
                        .with_context(|| format!("preloading bench-key-{key} timed out"))?
                        .with_context(|| format!("preloading bench-key-{key} failed"))?;
                if !status.is_success() {
                    bail!(
                        "preloading bench-key-{key}: POST /set answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    );
                }
                key += lanes;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a preload task panicked")??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        kv: KvArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "bench",
            "--target",
            "127.0.0.1:3000",
            "--connections",
            "8",
            "--duration",
            "2s",
            "--warmup",
            "250ms",
            "--mix",
            "get=100",
            "--value-size",
            "1KiB",
            "--baseline",
        ])
        .expect("flags parse");
        assert_eq!(cli.kv.connections, 8);
        assert_eq!(cli.kv.duration, Duration::from_secs(2));
        assert_eq!(cli.kv.warmup, Duration::from_millis(250));
        assert_eq!(cli.kv.mix.to_string(), "get=100");
        assert_eq!(cli.kv.value_size, 1024);
        assert!(cli.kv.baseline);

        let defaults = Cli::try_parse_from(["bench"]).expect("defaults parse");
        assert_eq!(defaults.kv.mix, KvArgs::new().mix);
        assert_eq!(defaults.kv.connections, 64);
        assert_eq!(defaults.kv.keys, 1000);

        assert!(Cli::try_parse_from(["bench", "--mix", "get=90,put=10"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--value-size", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["bench", "--target", "x:1", "--sync", "full"]).is_err(),
            "--sync only applies to the in-process kv"
        );
    }
}
