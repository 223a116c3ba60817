//! `shoal bench tasks`: the leased work queue's full cycle (create → claim → finish) and how
//! its claims slow down behind a large backlog.
//!
//! # Method
//!
//! Both measurements run the same closed loop: `--concurrency` tasks, each owning one
//! keep-alive HTTP/1.1 connection (the crate's lean client), repeat a **cycle** until the
//! deadline:
//!
//! 1. `POST /newTask` (no payload);
//! 2. `POST /getNewTask`, which claims the oldest ready task — with many workers, often one
//!    another worker created; that is fine;
//! 3. `POST /finishTask?id=N&lease=L` on the task just claimed.
//!
//! Each step's latency is recorded, and so is claim + finish (from sending the claim to the
//! finish's answer). A claim answered 404 (`No non-started task.`) counts as an **empty
//! claim** and the worker starts its next cycle. Any other non-2xx answer or transport error
//! counts as an error of its step and abandons the cycle (after a transport error the worker
//! reconnects). A cycle whose first request starts after the `--warmup` is recorded in full,
//! even if it ends after the deadline; no cycle starts after it. Cycles/s are the recorded
//! cycles divided by the time from the end of the warmup until the last worker stopped.
//!
//! The measurements:
//!
//! - **cycles**: on a fresh queue (empty backlog): full cycles/s and each step's latency.
//! - **backlog N**: the queue is first filled with `--backlog` tasks (created as fast as
//!   `--concurrency` connections allow, progress on stderr), then the same loop runs. Since
//!   every worker creates a task before it claims one, the backlog stays at N throughout (and
//!   a claim never finds the queue empty), so claims always search a queue of N ready tasks.
//! - **backlog 10**: the same on a fresh queue holding 10 tasks. The report compares the two:
//!   claim (and claim + finish) p50 and p99 at each backlog and their ratios.
//!
//! Without `--target`, each of the three runs on its own fresh in-process `shoal tasks`
//! (temporary data directory, default flags), started once for the run. With `--target`
//! everything runs against that one server: its backlog is N plus whatever it already held,
//! and the backlog-10 comparison is skipped (the report says so).
//!
//! Like the other scenarios, a run is `--rounds` rounds (1 by default): first every cycles
//! round, then the prefill, then per round the two backlog measurements back to back, the
//! large backlog first in odd rounds and last in even ones. The summary gives medians over
//! the rounds and the ratios are medians of the per-round ratios (see the crate docs).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use shoal_core::config::{Token, parse_duration};
use shoal_core::testkit::TestServer;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{Sender, Target, exchange, fetch};
use crate::load::Stats;
use crate::report::{Spread, median_by, median_duration, ms};

/// How long the target gets to answer its first `/healthz`.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// How long past the deadline a cycle may still take before its worker gives up on it.
const STRAGGLER_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed connect, so an unreachable target is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// How long one prefill request may take.
const PREFILL_REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// How often the prefill reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The small backlog the large one is compared with.
pub const SMALL_BACKLOG: u64 = 10;

/// The label of the cycles measurements.
pub const CYCLES: &str = "cycles";

/// Flags of `shoal bench tasks`.
#[derive(clap::Args, Clone, Debug)]
pub struct TasksArgs {
    /// The task queue to benchmark (`HOST:PORT` or `http://HOST:PORT`; several, separated by
    /// commas, for replicas of one queue on PostgreSQL: the workers are spread evenly over
    /// them). Without it, fresh queues are started in this process on 127.0.0.1 with
    /// temporary data directories. With it, the backlog is added to the target's queue and the
    /// backlog-10 comparison is skipped.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Concurrent workers, each on its own keep-alive connection, looping
    /// create → claim → finish. Also the connections the prefill uses.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// How long one measurement records, after its own warmup (`10s`, `500ms`, `1m`). A run
    /// is rounds × 3 measurements (2 with --target) plus the prefill.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// How long each measurement first runs the same load without recording it.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,

    /// Tasks created before the claim-latency measurement, which is compared with the same
    /// measurement on a queue holding 10.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,

    /// How many times to repeat each measurement; the summary shows medians over the rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Bearer token to send to --target.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,
}

impl TasksArgs {
    /// Flags with every default (in-process queues, 64 workers, 1 round of 10 s, a backlog
    /// of 1,000,000).
    pub fn new() -> Self {
        Self {
            target: None,
            concurrency: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            backlog: 1_000_000,
            rounds: 1,
            token: None,
        }
    }
}

impl Default for TasksArgs {
    fn default() -> Self {
        Self::new()
    }
}

/// What one run of the cycle loop against one queue measured.
#[derive(Clone, Debug)]
pub struct TasksMeasurement {
    /// `cycles` or `backlog N`.
    pub label: String,
    /// The ready tasks the queue held when the measurement began (`None` for `cycles`).
    pub backlog: Option<u64>,
    /// The round it belongs to, from 1.
    pub round: usize,
    /// From the end of the warmup until the last worker stopped.
    pub elapsed: Duration,
    /// Recorded complete cycles (create, claim and finish all succeeded).
    pub cycles: u64,
    /// Claims answered 404: no ready task at that moment.
    pub empty_claims: u64,
    /// `POST /newTask`.
    pub create: Stats,
    /// `POST /getNewTask` (successful claims only; empty ones are not latencies).
    pub claim: Stats,
    /// `POST /finishTask`.
    pub finish: Stats,
    /// From sending the claim until the finish was answered, for complete cycles.
    pub claim_finish: Stats,
}

impl TasksMeasurement {
    fn new(label: String, backlog: Option<u64>, round: usize) -> Self {
        Self {
            label,
            backlog,
            round,
            elapsed: Duration::ZERO,
            cycles: 0,
            empty_claims: 0,
            create: Stats::new(),
            claim: Stats::new(),
            finish: Stats::new(),
            claim_finish: Stats::new(),
        }
    }

    fn merge(&mut self, other: &TasksMeasurement) {
        self.cycles += other.cycles;
        self.empty_claims += other.empty_claims;
        self.create.merge(&other.create);
        self.claim.merge(&other.claim);
        self.finish.merge(&other.finish);
        self.claim_finish.merge(&other.claim_finish);
    }

    /// Failed requests of every step (non-2xx answers other than empty claims, transport
    /// errors).
    pub fn errors(&self) -> u64 {
        self.create.errors + self.claim.errors + self.finish.errors
    }

    /// Complete cycles per second.
    pub fn cycles_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.cycles as f64 / secs
        } else {
            0.0
        }
    }

    /// The steps in report order, with their names.
    pub fn steps(&self) -> [(&'static str, &Stats); 4] {
        [
            ("create", &self.create),
            ("claim", &self.claim),
            ("finish", &self.finish),
            ("claim+finish", &self.claim_finish),
        ]
    }
}

/// Everything one `shoal bench tasks` run measured, printed with `Display`.
#[derive(Clone, Debug)]
pub struct TasksReport {
    /// The measured server's base URL (the large-backlog queue's when in-process).
    pub target: String,
    /// `in-process` or `external`.
    pub target_kind: String,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Recorded period of one measurement.
    pub duration: Duration,
    /// Rounds asked for.
    pub rounds: usize,
    /// The large backlog (`--backlog`).
    pub backlog: u64,
    /// The small backlog compared with, `None` when skipped (with --target).
    pub small_backlog: Option<u64>,
    /// Every measurement, in the order it ran.
    pub measurements: Vec<TasksMeasurement>,
    /// Remarks printed at the end (e.g. why a comparison was skipped).
    pub notes: Vec<String>,
}

/// One label's step over the rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSummary {
    /// Median of the rounds' median latencies.
    pub p50: Option<Duration>,
    /// Median of the rounds' 99th percentile latencies.
    pub p99: Option<Duration>,
    /// The slowest of any round.
    pub max: Option<Duration>,
    /// Summed over the rounds.
    pub errors: u64,
}

/// How one step's latency at the large backlog compares with the small one's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BacklogRatio {
    /// Large-backlog p50 ÷ small-backlog p50, over the rounds.
    pub p50: Spread,
    /// Large-backlog p99 ÷ small-backlog p99, over the rounds.
    pub p99: Spread,
}

/// The label of a backlog measurement.
pub fn backlog_label(backlog: u64) -> String {
    format!("backlog {backlog}")
}

impl TasksReport {
    /// The measurements of `label`, by round.
    pub fn of<'a>(&'a self, label: &'a str) -> impl Iterator<Item = &'a TasksMeasurement> + 'a {
        self.measurements.iter().filter(move |m| m.label == label)
    }

    /// The labels measured, in the order they first ran.
    pub fn labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = Vec::new();
        for m in &self.measurements {
            if !labels.contains(&m.label.as_str()) {
                labels.push(&m.label);
            }
        }
        labels
    }

    /// Median cycles/s of `label` over its rounds.
    pub fn cycles_per_sec(&self, label: &str) -> f64 {
        median_by(
            self.of(label)
                .map(TasksMeasurement::cycles_per_sec)
                .collect(),
            f64::total_cmp,
            |a, b| (a + b) / 2.0,
        )
        .unwrap_or(0.0)
    }

    /// `label`'s step `step` (`create`, `claim`, `finish`, `claim+finish`) over its rounds.
    pub fn step(&self, label: &str, step: &str) -> StepSummary {
        let stats: Vec<&Stats> = self
            .of(label)
            .filter_map(|m| m.steps().into_iter().find(|(n, _)| *n == step))
            .map(|(_, s)| s)
            .collect();
        StepSummary {
            p50: median_duration(stats.iter().map(|s| s.quantile(0.5))),
            p99: median_duration(stats.iter().map(|s| s.quantile(0.99))),
            max: stats.iter().filter_map(|s| s.max()).max(),
            errors: stats.iter().map(|s| s.errors).sum(),
        }
    }

    /// Step `step`'s latency at the large backlog relative to the small one, as the median of
    /// the per-round ratios; `None` without a round where both have latencies.
    pub fn backlog_ratio(&self, step: &str) -> Option<BacklogRatio> {
        let small = backlog_label(self.small_backlog?);
        let large = backlog_label(self.backlog);
        let quantile = |m: &TasksMeasurement, q| {
            m.steps()
                .into_iter()
                .find(|(n, _)| *n == step)
                .and_then(|(_, s)| s.quantile(q))
        };
        let ratios = |q: f64| {
            self.of(&large)
                .filter_map(|l| {
                    let s = self.of(&small).find(|s| s.round == l.round)?;
                    let (a, b) = (quantile(l, q)?, quantile(s, q)?);
                    (!b.is_zero()).then(|| a.as_secs_f64() / b.as_secs_f64())
                })
                .collect::<Vec<f64>>()
        };
        Some(BacklogRatio {
            p50: Spread::of(ratios(0.5))?,
            p99: Spread::of(ratios(0.99))?,
        })
    }

    /// Fails when nothing was measured or a measurement completed no cycle.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.measurements.is_empty() {
            bail!("nothing was measured");
        }
        for m in &self.measurements {
            if m.cycles == 0 {
                bail!(
                    "no {} cycle completed in round {} ({} errors, {} empty claims)",
                    m.label,
                    m.round,
                    m.errors(),
                    m.empty_claims
                );
            }
        }
        Ok(())
    }
}

fn ratio_text(s: Spread, rounds: usize) -> String {
    if rounds > 1 {
        format!("{:.2}x ({:.2}–{:.2}x)", s.median, s.min, s.max)
    } else {
        format!("{:.2}x", s.median)
    }
}

fn head(f: &mut fmt::Formatter<'_>, prefix: &str, label: &str, step: &str) -> fmt::Result {
    write!(f, "{prefix:<6} {label:<16} {step:<12}")
}

impl fmt::Display for TasksReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario tasks  target {} ({})  concurrency {}  duration {}  rounds {}  backlog {}",
            self.target,
            self.target_kind,
            self.concurrency,
            humantime::format_duration(self.duration),
            self.rounds,
            self.backlog,
        )?;
        for m in &self.measurements {
            let prefix = format!("r{}", m.round);
            head(f, &prefix, &m.label, "total")?;
            writeln!(
                f,
                " {:>9}      {:>10.1} cycles/s  empty claims {}  errors {}",
                m.cycles,
                m.cycles_per_sec(),
                m.empty_claims,
                m.errors(),
            )?;
            for (name, stats) in m.steps() {
                head(f, &prefix, &m.label, name)?;
                writeln!(
                    f,
                    " {:>9} req  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  errors {}",
                    stats.ok(),
                    ms(stats.quantile(0.5)),
                    ms(stats.quantile(0.99)),
                    ms(stats.max()),
                    stats.errors,
                )?;
            }
        }
        let rounds_run = self.measurements.iter().map(|m| m.round).max().unwrap_or(0);
        writeln!(
            f,
            "median of {rounds_run} round{} (max: slowest of any round; errors: summed)",
            if rounds_run == 1 { "" } else { "s" },
        )?;
        for label in self.labels() {
            head(f, "median", label, "total")?;
            writeln!(
                f,
                " {:>9}      {:>10.1} cycles/s",
                "",
                self.cycles_per_sec(label)
            )?;
            for step in ["create", "claim", "finish", "claim+finish"] {
                let s = self.step(label, step);
                head(f, "median", label, step)?;
                writeln!(
                    f,
                    " {:>9}      p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  errors {}",
                    "",
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max),
                    s.errors,
                )?;
            }
        }
        if let Some(small) = self.small_backlog {
            let large_label = backlog_label(self.backlog);
            let small_label = backlog_label(small);
            for step in ["claim", "claim+finish"] {
                let l = self.step(&large_label, step);
                let s = self.step(&small_label, step);
                write!(
                    f,
                    "{step} p50/p99 at backlog {}: {} / {} ms  vs at backlog {small}: {} / {} ms",
                    self.backlog,
                    ms(l.p50),
                    ms(l.p99),
                    ms(s.p50),
                    ms(s.p99),
                )?;
                match self.backlog_ratio(step) {
                    Some(r) => writeln!(
                        f,
                        "  ratio p50 {}  p99 {}",
                        ratio_text(r.p50, rounds_run),
                        ratio_text(r.p99, rounds_run)
                    )?,
                    None => writeln!(f, "  ratio -")?,
                }
            }
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// A queue the bench started in this process, with the directory it stores in.
struct Local {
    server: TestServer,
    dir: tempfile::TempDir,
}

impl Local {
    async fn start(what: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-tasks-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let config = shoal_tasks::Config::with_data_dir(dir.path());
        let server = TestServer::start(move |listener, shutdown| {
            shoal_tasks::run(config, listener, shutdown)
        })
        .await
        .with_context(|| format!("cannot start the in-process tasks queue ({what})"))?;
        Ok(Self { server, dir })
    }

    fn target(&self) -> anyhow::Result<Target> {
        Target::parse(&self.server.base_url, None)
    }

    /// Stops the server, then removes its files.
    async fn stop(self, what: &str) -> anyhow::Result<()> {
        self.server
            .stop()
            .await
            .with_context(|| format!("the in-process tasks queue ({what}) failed"))?;
        self.dir
            .close()
            .context("cannot remove the temporary data directory")
    }
}

/// Stops `locals` after the run that produced `result`; the run's error wins.
async fn stop_all<T>(locals: Vec<(String, Local)>, result: anyhow::Result<T>) -> anyhow::Result<T> {
    let mut result = result;
    for (what, local) in locals.into_iter().rev() {
        let stopped = local.stop(&what).await;
        if let (Ok(_), Err(e)) = (&result, stopped) {
            result = Err(e);
        }
    }
    result
}

/// The shape of one measurement.
#[derive(Clone, Copy, Debug)]
struct Load {
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
}

/// Runs the scenario and returns what it measured. Fails when a server cannot be started or
/// reached or the prefill is refused; a run whose cycles all failed still returns its report
/// (see [`TasksReport::check`]).
pub async fn measure(args: &TasksArgs) -> anyhow::Result<TasksReport> {
    if args.duration.is_zero() {
        bail!("--duration must be more than zero");
    }
    let load = Load {
        concurrency: usize::try_from(args.concurrency).context("--concurrency out of range")?,
        warmup: args.warmup,
        duration: args.duration,
    };
    let rounds = usize::try_from(args.rounds).context("--rounds out of range")?;
    let mut report = TasksReport {
        target: String::new(),
        target_kind: String::new(),
        concurrency: load.concurrency,
        duration: args.duration,
        rounds,
        backlog: args.backlog,
        small_backlog: None,
        measurements: Vec::new(),
        notes: Vec::new(),
    };
    let one = args.warmup.saturating_add(args.duration);
    match &args.target {
        Some(urls) => {
            let mut targets = Vec::new();
            for url in urls.split(',').filter(|u| !u.trim().is_empty()) {
                let target = Arc::new(Target::parse(url, args.token.as_ref())?);
                target.probe(PROBE_LIMIT).await?;
                targets.push(target);
            }
            let Some(target) = targets.first().cloned() else {
                bail!("--target: no address given");
            };
            report.target = targets
                .iter()
                .map(|t| t.base_url.as_str())
                .collect::<Vec<_>>()
                .join(",");
            report.target_kind = if targets.len() == 1 {
                "external".into()
            } else {
                format!("external, {} replicas", targets.len())
            };
            eprintln!(
                "bench: {rounds} round(s) of cycles, then a prefill of {} tasks, then \
                 {rounds} round(s) at that backlog ({} warmup + {} each, {} workers) against {}",
                args.backlog,
                humantime::format_duration(args.warmup),
                humantime::format_duration(args.duration),
                load.concurrency,
                report.target,
            );
            for round in 1..=rounds {
                let m = run_cycles(CYCLES.into(), None, round, &targets, load).await?;
                report.measurements.push(m);
            }
            prefill(&target, args.backlog, load.concurrency).await?;
            for round in 1..=rounds {
                let label = backlog_label(args.backlog);
                let m = run_cycles(label, Some(args.backlog), round, &targets, load).await?;
                report.measurements.push(m);
            }
            report.notes.push(format!(
                "--target given: only it was measured (its backlog is {} plus whatever it \
                 already held); the comparison with a backlog of {SMALL_BACKLOG} was skipped",
                args.backlog
            ));
        }
        None => {
            report.target_kind = "in-process".into();
            report.small_backlog = Some(SMALL_BACKLOG);
            eprintln!(
                "bench: {rounds} round(s) of cycles, a prefill of {} tasks, then {rounds} \
                 round(s) at backlogs {} and {SMALL_BACKLOG} ({} warmup + {} each, {} workers): \
                 about {} plus the prefill",
                args.backlog,
                args.backlog,
                humantime::format_duration(args.warmup),
                humantime::format_duration(args.duration),
                load.concurrency,
                humantime::format_duration(one.saturating_mul(3).saturating_mul(args.rounds)),
            );
            // Cycles on a fresh, empty queue.
            let local = Local::start(CYCLES).await?;
            let result = async {
                let target = Arc::new(local.target()?);
                target.probe(PROBE_LIMIT).await?;
                let mut measured = Vec::new();
                for round in 1..=rounds {
                    measured.push(
                        run_cycles(
                            CYCLES.into(),
                            None,
                            round,
                            std::slice::from_ref(&target),
                            load,
                        )
                        .await?,
                    );
                }
                anyhow::Ok(measured)
            }
            .await;
            report
                .measurements
                .extend(stop_all(vec![(CYCLES.to_owned(), local)], result).await?);

            // Claims behind a large and a small backlog, each on its own fresh queue.
            let large_label = backlog_label(args.backlog);
            let small_label = backlog_label(SMALL_BACKLOG);
            let large = Local::start(&large_label).await?;
            let small = match Local::start(&small_label).await {
                Ok(small) => small,
                Err(e) => return stop_all(vec![(large_label, large)], Err(e)).await,
            };
            report.target = large.server.base_url.clone();
            let result = async {
                let large_target = Arc::new(large.target()?);
                let small_target = Arc::new(small.target()?);
                large_target.probe(PROBE_LIMIT).await?;
                small_target.probe(PROBE_LIMIT).await?;
                prefill(&large_target, args.backlog, load.concurrency).await?;
                prefill(&small_target, SMALL_BACKLOG, load.concurrency).await?;
                let mut measured = Vec::new();
                for round in 1..=rounds {
                    let mut order = vec![
                        (&large_label, args.backlog, &large_target),
                        (&small_label, SMALL_BACKLOG, &small_target),
                    ];
                    if round % 2 == 0 {
                        order.reverse();
                    }
                    for (label, backlog, target) in order {
                        measured.push(
                            run_cycles(
                                label.clone(),
                                Some(backlog),
                                round,
                                std::slice::from_ref(target),
                                load,
                            )
                            .await?,
                        );
                    }
                }
                anyhow::Ok(measured)
            }
            .await;
            let locals = vec![(large_label.clone(), large), (small_label.clone(), small)];
            report.measurements.extend(stop_all(locals, result).await?);
        }
    }
    Ok(report)
}

/// Creates `count` tasks over up to `connections` connections, printing progress to stderr.
async fn prefill(target: &Arc<Target>, count: u64, connections: usize) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    eprintln!("bench: creating {count} tasks in {}", target.base_url);
    let started = Instant::now();
    let lanes = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .min(count)
        .max(1);
    let done = Arc::new(AtomicU64::new(0));
    let progress = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "bench:   {n}/{count} tasks created ({:.0}%, {:.0}/s)",
                    100.0 * n as f64 / count as f64,
                    n as f64 / secs.max(1e-9),
                );
            }
        })
    };
    let mut tasks = JoinSet::new();
    for lane in 0..lanes {
        let target = Arc::clone(target);
        let done = Arc::clone(&done);
        // Lane i creates every lanes-th task.
        let mine = count / lanes + u64::from(lane < count % lanes);
        tasks.spawn(async move {
            let mut sender = target.connect().await?;
            for _ in 0..mine {
                let request = target.request(Method::POST, "/newTask", Bytes::new())?;
                let (status, body) =
                    tokio::time::timeout(PREFILL_REQUEST_LIMIT, fetch(&mut sender, request))
                        .await
                        .context("creating a task timed out")?
                        .context("creating a task failed")?;
                if !status.is_success() {
                    bail!(
                        "creating a task: POST /newTask answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    );
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.context("a prefill task panicked").and_then(|r| r) {
            result = Err(e);
            tasks.abort_all();
        }
    }
    progress.abort();
    result?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: created {count} tasks in {secs:.1} s ({:.0}/s)",
        count as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Runs the cycle loop with `load.concurrency` workers spread evenly over `targets`
/// (replicas of one queue).
async fn run_cycles(
    label: String,
    backlog: Option<u64>,
    round: usize,
    targets: &[Arc<Target>],
    load: Load,
) -> anyhow::Result<TasksMeasurement> {
    eprintln!(
        "bench: round {round}: measuring {label} at {}",
        targets
            .iter()
            .map(|t| t.base_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let start = Instant::now();
    let warmup_end = start + load.warmup;
    let deadline = warmup_end + load.duration;
    let workers: Vec<_> = (0..load.concurrency)
        .map(|i| {
            tokio::spawn(worker(
                Arc::clone(&targets[i % targets.len()]),
                label.clone(),
                backlog,
                round,
                warmup_end,
                deadline,
            ))
        })
        .collect();
    let mut measured = TasksMeasurement::new(label, backlog, round);
    for w in workers {
        let part = w.await.context("a worker panicked")??;
        measured.merge(&part);
    }
    measured.elapsed = Instant::now().saturating_duration_since(warmup_end);
    Ok(measured)
}

/// What one step's request came back with.
enum Answer {
    /// 2xx, with the body.
    Ok(Bytes),
    /// Any other status.
    Status(StatusCode),
    /// A transport error or timeout: the connection is unusable.
    Broken,
}

/// Sends one request; `keep_body` collects the body, otherwise it is drained.
async fn step(
    sender: &mut Sender,
    target: &Target,
    path: &str,
    keep_body: bool,
    hard_stop: Instant,
) -> anyhow::Result<Answer> {
    let request = target.request(Method::POST, path, Bytes::new())?;
    let answer = if keep_body {
        match tokio::time::timeout_at(hard_stop, fetch(sender, request)).await {
            Ok(Ok((status, body))) if status.is_success() => Answer::Ok(body),
            Ok(Ok((status, _))) => Answer::Status(status),
            Ok(Err(_)) | Err(_) => Answer::Broken,
        }
    } else {
        match tokio::time::timeout_at(hard_stop, exchange(sender, request)).await {
            Ok(Ok(status)) if status.is_success() => Answer::Ok(Bytes::new()),
            Ok(Ok(status)) => Answer::Status(status),
            Ok(Err(_)) | Err(_) => Answer::Broken,
        }
    };
    Ok(answer)
}

/// One worker's loop of cycles. Cycles started before `warmup_end` are not recorded; none
/// starts at or after `deadline`.
async fn worker(
    target: Arc<Target>,
    label: String,
    backlog: Option<u64>,
    round: usize,
    warmup_end: Instant,
    deadline: Instant,
) -> anyhow::Result<TasksMeasurement> {
    let mut m = TasksMeasurement::new(label, backlog, round);
    let hard_stop = deadline + STRAGGLER_GRACE;
    let mut conn: Option<Sender> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let recording = now >= warmup_end;
        // Counts an error of `stats` when recording; `broken` also drops the connection.
        macro_rules! failed {
            ($stats:expr, $broken:expr) => {{
                if recording {
                    $stats.errors += 1;
                }
                if $broken {
                    conn = None;
                }
                continue;
            }};
        }
        if conn.as_ref().is_none_or(Sender::is_closed) {
            match tokio::time::timeout_at(hard_stop, target.connect()).await {
                Ok(Ok(sender)) => conn = Some(sender),
                Ok(Err(_)) | Err(_) => {
                    conn = None;
                    if recording {
                        m.create.errors += 1;
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };

        let sent = Instant::now();
        match step(sender, &target, "/newTask", false, hard_stop).await? {
            Answer::Ok(_) => {
                if recording {
                    m.create.record(sent.elapsed());
                }
            }
            Answer::Status(_) => failed!(m.create, false),
            Answer::Broken => failed!(m.create, true),
        }

        let claim_sent = Instant::now();
        let (id, lease) = match step(sender, &target, "/getNewTask", true, hard_stop).await? {
            Answer::Ok(body) => {
                let latency = claim_sent.elapsed();
                match parse_claim(&body) {
                    Some(claimed) => {
                        if recording {
                            m.claim.record(latency);
                        }
                        claimed
                    }
                    None => failed!(m.claim, false),
                }
            }
            Answer::Status(StatusCode::NOT_FOUND) => {
                if recording {
                    m.empty_claims += 1;
                }
                continue;
            }
            Answer::Status(_) => failed!(m.claim, false),
            Answer::Broken => failed!(m.claim, true),
        };

        let path = format!("/finishTask?id={id}&lease={}", percent_encode(&lease));
        let sent = Instant::now();
        match step(sender, &target, &path, false, hard_stop).await? {
            Answer::Ok(_) => {
                if recording {
                    let now = Instant::now();
                    m.finish.record(now - sent);
                    m.claim_finish.record(now - claim_sent);
                    m.cycles += 1;
                }
            }
            Answer::Status(_) => failed!(m.finish, false),
            Answer::Broken => failed!(m.finish, true),
        }
    }
    Ok(m)
}

/// The id and lease of a claimed task's JSON, `None` if it has neither.
fn parse_claim(body: &[u8]) -> Option<(u64, String)> {
    let task: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = task.get("id")?.as_u64()?;
    let lease = task.get("lease")?.as_str()?.to_owned();
    Some((id, lease))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        tasks: TasksArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "bench",
            "--target",
            "127.0.0.1:3001",
            "--concurrency",
            "8",
            "--duration",
            "2s",
            "--warmup",
            "250ms",
            "--backlog",
            "5000",
            "--rounds",
            "3",
        ])
        .expect("flags parse");
        assert_eq!(cli.tasks.concurrency, 8);
        assert_eq!(cli.tasks.duration, Duration::from_secs(2));
        assert_eq!(cli.tasks.warmup, Duration::from_millis(250));
        assert_eq!(cli.tasks.backlog, 5000);
        assert_eq!(cli.tasks.rounds, 3);
        let defaults = Cli::try_parse_from(["bench"]).expect("defaults parse");
        assert_eq!(defaults.tasks.concurrency, TasksArgs::new().concurrency);
        assert_eq!(defaults.tasks.backlog, 1_000_000);
        assert_eq!(defaults.tasks.rounds, 1);
        assert!(Cli::try_parse_from(["bench", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--rounds", "0"]).is_err());
    }

    #[test]
    fn parses_claims_and_encodes_leases() {
        let body = br#"{"attempts":1,"error":null,"held":false,"id":42,"lease":"42-1-ab",
            "lease_expires_at":"2030-01-01T00:00:00.000Z","payload":{"id":7},"state":1}"#;
        assert_eq!(parse_claim(body), Some((42, "42-1-ab".to_owned())));
        assert_eq!(parse_claim(br#"{"id":1,"lease":null}"#), None);
        assert_eq!(parse_claim(b"not json"), None);
        assert_eq!(percent_encode("42-1-ab_c.~"), "42-1-ab_c.~");
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }

    fn measured(
        label: &str,
        backlog: Option<u64>,
        round: usize,
        claim_us: u64,
    ) -> TasksMeasurement {
        let mut m = TasksMeasurement::new(label.into(), backlog, round);
        m.elapsed = Duration::from_secs(1);
        m.cycles = 10;
        for _ in 0..10 {
            m.create.record(Duration::from_micros(100));
            m.claim.record(Duration::from_micros(claim_us));
            m.finish.record(Duration::from_micros(100));
            m.claim_finish.record(Duration::from_micros(claim_us + 100));
        }
        m
    }

    #[test]
    fn reports_backlog_ratios() {
        let report = TasksReport {
            target: "http://127.0.0.1:1".into(),
            target_kind: "in-process".into(),
            concurrency: 4,
            duration: Duration::from_secs(1),
            rounds: 1,
            backlog: 1000,
            small_backlog: Some(SMALL_BACKLOG),
            measurements: vec![
                measured(CYCLES, None, 1, 200),
                measured("backlog 1000", Some(1000), 1, 400),
                measured("backlog 10", Some(10), 1, 200),
            ],
            notes: Vec::new(),
        };
        report.check().expect("cycles completed");
        let ratio = report.backlog_ratio("claim").expect("ratio");
        assert!((ratio.p50.median - 2.0).abs() < 0.01, "{ratio:?}");
        assert!((report.cycles_per_sec(CYCLES) - 10.0).abs() < 1e-9);
        let text = report.to_string();
        assert!(
            text.contains("claim p50/p99 at backlog 1000: 0.40 / 0.40 ms  vs at backlog 10: 0.20 / 0.20 ms  ratio p50 2.00x  p99 2.00x"),
            "{text}"
        );
        assert!(text.contains("r1     cycles           total "), "{text}");
        assert!(
            text.contains("10.0 cycles/s  empty claims 0  errors 0"),
            "{text}"
        );
    }
}
