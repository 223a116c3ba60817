//! `shoal bench kv`: gets and sets against a kv store, optionally next to a trivial baseline
//! server behind the same middleware.
//!
//! The servers are started (and the kv preloaded) once and kept running for the whole run;
//! then `--rounds` rounds each measure every server once, the baseline first in odd rounds
//! and last in even ones. See the crate docs for why.

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
use crate::load::{self, Measurement, Workload};
use crate::mix::{Mix, Op};
use crate::report::{BASELINE, Report, baseline_first};

/// How long the target gets to answer its first `/healthz`.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// How long one preload `set` may take.
const PRELOAD_REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// The label of the kv's measurements.
const LABEL: &str = "kv";

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

    /// How long one measurement records, after its own warmup (`10s`, `500ms`, `1m`). Each
    /// round measures each server once, so a run takes about rounds × servers × (warmup +
    /// duration).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// How long each measurement first runs the same load without recording it.
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

    /// Also measure a trivial server (constant answers, same middleware as kv) with the same
    /// load, in every round next to kv, and report kv's throughput relative to it.
    #[arg(long)]
    pub baseline: bool,

    /// How many times to measure each server. With --baseline each round measures the
    /// baseline and kv back to back, alternating which goes first, and the report gives the
    /// median of the per-round ratios; the summary shows medians over the rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

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
    /// Flags with every default (in-process kv, 64 connections, 3 rounds of 10 s,
    /// `get=90,set=10`).
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
            rounds: 3,
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
/// reached, the preload is refused or an in-process server stops during the run; a run whose
/// requests all failed still returns its report (see [`Report::check`]), which then holds
/// the measurements up to the one that failed: the remaining rounds are skipped.
pub async fn measure(args: &KvArgs) -> anyhow::Result<Report> {
    if args.duration.is_zero() {
        bail!("--duration must be more than zero");
    }
    let connections = usize::try_from(args.connections).context("--connections out of range")?;
    let rounds = usize::try_from(args.rounds).context("--rounds out of range")?;
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

    // Both servers run for the whole run: started once, the kv preloaded once, then measured
    // in turn. The data directory outlives the kv that uses it.
    let mut data_dir = None;
    let mut servers: Vec<(&'static str, TestServer)> = Vec::new();
    let baseline = if args.baseline {
        let server = TestServer::start(|listener, shutdown| async move {
            server::run(
                baseline_router(),
                listener,
                shutdown,
                ServerOptions::new(BASELINE),
            )
            .await
        })
        .await
        .context("cannot start the baseline server")?;
        let target = Target::parse(&server.base_url, None)?;
        servers.push((BASELINE, server));
        Some(workload(target))
    } else {
        None
    };
    let (target, target_kind) = match &args.target {
        Some(url) => (
            Target::parse(url, args.token.as_ref())?,
            "external".to_owned(),
        ),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("shoal-bench-kv-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            let sync = args.sync.unwrap_or_default();
            let mut config = shoal_kv::Config::with_data_dir(dir.path());
            config.sync = sync;
            data_dir = Some(dir);
            let server = TestServer::start(move |listener, shutdown| {
                shoal_kv::run(config, listener, shutdown)
            })
            .await
            .context("cannot start the in-process kv")?;
            let target = Target::parse(&server.base_url, None)?;
            servers.push((LABEL, server));
            let sync = sync
                .to_possible_value()
                .map_or_else(|| format!("{sync:?}"), |v| v.get_name().to_owned());
            (target, format!("in-process, sync={sync}"))
        }
    };
    let kv = workload(target);
    let target_url = kv.target.base_url.clone();

    let result = run_rounds(args, rounds, baseline.as_ref(), &kv, &servers).await;
    let measurements = stop_servers(servers, result).await?;
    if let Some(dir) = data_dir {
        // Every store is closed now; only then remove its files.
        dir.close()
            .context("cannot remove the temporary data directory")?;
    }

    Ok(Report {
        scenario: "kv".into(),
        target: target_url,
        target_kind,
        connections,
        duration: args.duration,
        mix: args.mix.clone(),
        rounds,
        measurements,
    })
}

/// Probes the servers, preloads the kv, then measures `rounds` rounds. Stops early, with the
/// measurements so far, after a measurement without a single successful request; fails
/// when an in-process server (one of `servers`) has stopped.
async fn run_rounds(
    args: &KvArgs,
    rounds: usize,
    baseline: Option<&Arc<Workload>>,
    kv: &Arc<Workload>,
    servers: &[(&'static str, TestServer)],
) -> anyhow::Result<Vec<Measurement>> {
    if let Some(base) = baseline {
        base.target.probe(PROBE_LIMIT).await?;
    }
    kv.target.probe(PROBE_LIMIT).await?;
    eprintln!(
        "bench: preloading {} keys of {} bytes into {}",
        kv.keys,
        kv.value.len(),
        kv.target.base_url
    );
    preload(kv).await?;

    let per_round: u32 = if baseline.is_some() { 2 } else { 1 };
    let one = args.warmup.saturating_add(args.duration);
    eprintln!(
        "bench: {rounds} round{} of {} measurement{} ({} warmup + {} each, \
         {} connections, mix {}): about {} in all",
        if rounds == 1 { "" } else { "s" },
        per_round,
        if per_round == 1 { "" } else { "s" },
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration),
        kv.connections,
        args.mix,
        humantime::format_duration(one.saturating_mul(per_round).saturating_mul(args.rounds)),
    );

    let mut measurements = Vec::new();
    for round in 1..=rounds {
        let order = match baseline {
            Some(base) if baseline_first(round) => vec![(BASELINE, base), (LABEL, kv)],
            Some(base) => vec![(LABEL, kv), (BASELINE, base)],
            None => vec![(LABEL, kv)],
        };
        for (label, work) in order {
            eprintln!(
                "bench: round {round}/{rounds}: measuring {label} at {}",
                work.target.base_url
            );
            let measured = load::measure(label, round, Arc::clone(work)).await?;
            let failed = measured.total.ok() == 0;
            measurements.push(measured);
            if let Some((name, _)) = servers.iter().find(|(_, server)| server.is_finished()) {
                bail!("the in-process {name} server stopped during round {round}");
            }
            if failed {
                eprintln!(
                    "bench: no {label} request succeeded in round {round}; skipping the rest"
                );
                return Ok(measurements);
            }
        }
    }
    Ok(measurements)
}

/// The baseline: constant answers, no state, behind the same middleware as every service.
/// `/set` still reads the body, as kv does.
fn baseline_router() -> Router {
    Router::new()
        .route("/get", get(|| async { BASELINE_GET_BODY }))
        .route("/set", post(|_body: Bytes| async { "success" }))
}

/// Stops every server after the run that produced `result`. When the run failed because a
/// server had died, the server's own error is the one worth showing.
pub(crate) async fn stop_servers<T>(
    servers: Vec<(&'static str, TestServer)>,
    mut result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    // In reverse order of starting: the kv, then the baseline.
    for (name, server) in servers.into_iter().rev() {
        let stopped = server.stop().await;
        result = match (result, stopped) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(e)) => Err(e.context(format!("the in-process {name} server failed"))),
            (Err(e), Err(server_error)) => {
                Err(server_error.context(format!("the in-process {name} server failed ({e:#})")))
            }
            (Err(e), Ok(())) => Err(e),
        };
    }
    result
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
            "--rounds",
            "5",
        ])
        .expect("flags parse");
        assert_eq!(cli.kv.connections, 8);
        assert_eq!(cli.kv.duration, Duration::from_secs(2));
        assert_eq!(cli.kv.warmup, Duration::from_millis(250));
        assert_eq!(cli.kv.mix.to_string(), "get=100");
        assert_eq!(cli.kv.value_size, 1024);
        assert!(cli.kv.baseline);
        assert_eq!(cli.kv.rounds, 5);

        let defaults = Cli::try_parse_from(["bench"]).expect("defaults parse");
        assert_eq!(defaults.kv.mix, KvArgs::new().mix);
        assert_eq!(defaults.kv.connections, 64);
        assert_eq!(defaults.kv.keys, 1000);
        assert_eq!(defaults.kv.rounds, 3);
        assert_eq!(defaults.kv.rounds, KvArgs::new().rounds);

        assert!(Cli::try_parse_from(["bench", "--mix", "get=90,put=10"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--value-size", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--rounds", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["bench", "--target", "x:1", "--sync", "full"]).is_err(),
            "--sync only applies to the in-process kv"
        );
    }

    #[test]
    fn rounds_alternate_which_server_goes_first() {
        let firsts: Vec<bool> = (1..=4).map(baseline_first).collect();
        assert_eq!(firsts, [true, false, true, false]);
    }
}
