//! `shoal bench`: load generators that measure a shoal service's throughput and latency.
//!
//! # Design
//!
//! A scenario ([`Scenario`]) describes what to send: `kv` (below), `multicast` (fan-out
//! through a multicast hub to subscribers the bench runs itself; see [`multicast`]), `tasks`
//! (create → claim → finish cycles through a task queue, and claim latency behind a large
//! backlog; see [`tasks`]) or `storage` (object uploads and downloads next to the same bytes
//! written and read with plain files, and downloaded from a server behind the same middleware
//! that holds them in memory; see [`storage`]) or `pipeline` (images through the whole image
//! pipeline next to the same processing done in-process, and a small image's upload → ready
//! latency; see [`pipeline`]). A kv run
//! is a closed loop: `--connections` tasks, each owning one keep-alive HTTP/1.1 connection, send
//! requests back to back until the deadline. An operation is drawn by the `--mix` weights
//! and a key uniformly from `--keys`, with a per-task xorshift generator (no shared state,
//! no `rand` dependency). Every task records latencies (µs) into its own HDR histograms,
//! one per operation, so nothing is shared while measuring; the histograms are merged once
//! at the end. A `--warmup` period runs the same load unrecorded first. Non-2xx answers and
//! transport errors count as errors; after a transport error the task reconnects.
//!
//! Without `--target`, the bench starts the service in this process on `127.0.0.1:0` with a
//! temporary data directory. With `--baseline` it also measures a trivial server (constant
//! answers) served by [`shoal_core::server::run`], i.e. behind exactly the middleware every
//! service has, so the report can say how much of the framework's ceiling the service
//! reaches (`kv/baseline throughput`).
//!
//! # Rounds
//!
//! The bench usually runs on a shared, noisy machine whose speed drifts by tens of percent
//! over seconds (other tenants, frequency scaling). Measured once each, a baseline and a
//! target ten seconds apart see different machines, and their ratio mostly measures the
//! drift: the same command gave kv/baseline 78% in one run and 115% in the next. So a run
//! is `--rounds` rounds (3 by default), each measuring every server once for `--duration`
//! after its own `--warmup`. Both servers are started, and the kv preloaded, once and stay
//! up for the whole run; the one not being measured sits idle.
//!
//! - **Pairs back to back.** Within a round the baseline and the target are measured one
//!   right after the other, so both see nearly the same machine and its speed largely
//!   cancels out of their ratio.
//! - **Alternating order.** Odd rounds measure the baseline first, even rounds the target
//!   first (B,T then T,B then B,T…). If the machine keeps getting faster or slower, whoever
//!   goes second in a round is favoured; alternating gives that edge to each side equally
//!   often, so a steady drift cancels across rounds instead of biasing every ratio the same
//!   way. (The target's own state also grows as sets accumulate; that drift alternates too.)
//! - **Median of per-round ratios.** The headline number is the median of the rounds'
//!   kv/baseline ratios, not the ratio of the two median throughputs: each per-round ratio
//!   compares measurements taken under the same conditions, whereas the ratio of medians
//!   may divide a slow round's kv by a fast round's baseline. The median rather than the mean,
//!   so one round spoilt by a burst of noise does not move it. The lowest and highest
//!   per-round ratio are shown next to it: a wide range says the machine was too noisy for
//!   the number to mean much, and more rounds (or a quieter machine) are needed.
//!
//! The report lists every measurement (prefixed `r1`, `r2`…), then per server and operation
//! the median req/s, p50 and p99 over the rounds (with the slowest request of any round and
//! the errors of all rounds), then the ratios. Without `--baseline`, rounds simply repeat the
//! target's measurement and the summary gives its medians. A measurement in which no request
//! succeeded fails the run: the remaining rounds are skipped, and the report of what was
//! measured is printed before the error.
//!
//! # Why a hand-rolled client
//!
//! The bench usually shares a small machine (two cores) with the server it measures, so
//! every cycle the client spends is a cycle the server does not get, and a heavy client
//! would make the service look slower than it is. A general-purpose client (reqwest) adds a
//! connection pool, redirect and proxy handling, and a dispatch task per request; here each
//! task drives its own `hyper::client::conn::http1` connection directly — the request goes
//! straight to the socket, and the response body is drained frame by frame without
//! buffering. No TLS: benchmark services over plain HTTP on a trusted network.
//!
//! # Layout
//! - [`kv`]: the kv scenario's flags and orchestration (servers, preload, rounds).
//! - [`multicast`]: the multicast scenario: subscribers, senders, the baseline, its report.
//! - [`load`]: the load loop and the statistics it collects.
//! - [`tasks`]: the tasks scenario: cycles, the backlog prefill, the backlog comparison.
//! - [`mix`]: the operation mix.
//! - [`report`]: the plain-text report, medians and ratios.
//! - [`storage`]: the storage scenario: uploads, downloads, the plain-file baseline, the
//!   HTTP-from-memory server, its report.
//! - [`pipeline`]: the pipeline scenario: the in-process stack, images through it, the
//!   in-process processing baseline, the small-image latency, its report.

mod client;
pub mod gossip;
pub mod kv;
pub mod load;
pub mod mix;
pub mod multicast;
pub mod nats;
pub mod pipeline;
pub mod report;
pub mod storage;
pub mod tasks;

use std::fmt;

pub use crate::gossip::{GossipArgs, GossipReport};
pub use crate::kv::KvArgs;
pub use crate::multicast::{MulticastArgs, MulticastReport};
pub use crate::nats::{NatsBenchArgs, NatsBenchReport};
pub use crate::pipeline::{PipelineArgs, PipelineReport};
pub use crate::report::Report;
pub use crate::storage::{StorageArgs, StorageReport};
pub use crate::tasks::{TasksArgs, TasksReport};

/// Flags of `shoal bench`: which scenario to run.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The load scenarios, one per service.
#[derive(clap::Subcommand, Debug)]
pub enum Scenario {
    /// Gets and sets against a kv store (an in-process one unless --target is given).
    Kv(KvArgs),
    /// Messages fanned out by a multicast hub (an in-process one unless --target is given) to
    /// subscribers the bench runs, optionally next to the same deliveries made directly.
    Multicast(MulticastArgs),
    /// Create → claim → finish cycles through a task queue, and claim latency behind a large
    /// backlog compared with a small one (in-process queues unless --target is given).
    Tasks(TasksArgs),
    /// Uploads and downloads of objects to a storage service (an in-process one unless
    /// --target is given), next to the same bytes written durably and read back with plain
    /// files, and downloaded from an HTTP server holding them in memory.
    Storage(StorageArgs),
    /// Images through the whole image pipeline (an in-process stack unless --target names a
    /// master): images/s and upload → ready latency, next to the same decode → op → encode
    /// in this process without services, and a small image's latency on the idle stack.
    Pipeline(PipelineArgs),
    /// A gossip cluster started in this process: time until a set reaches every node, and
    /// until a killed node is seen dead by every other.
    Gossip(GossipArgs),
    /// The NATS patterns: request/reply round trips directly and through the frontend, and
    /// word-count tasks per second with N worker loops (starts a nats-server unless --nats).
    Nats(NatsBenchArgs),
}

/// What a scenario measured: its report.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// `shoal bench kv`.
    Kv(Report),
    /// `shoal bench multicast`.
    Multicast(MulticastReport),
    /// `shoal bench tasks`.
    Tasks(TasksReport),
    /// `shoal bench storage`.
    Storage(StorageReport),
    /// `shoal bench pipeline`.
    Pipeline(Box<PipelineReport>),
    /// `shoal bench gossip`.
    Gossip(GossipReport),
    /// `shoal bench nats`.
    Nats(NatsBenchReport),
}

impl Outcome {
    /// Fails when the measurements say the run failed (see [`Report::check`],
    /// [`MulticastReport::check`], [`TasksReport::check`], [`StorageReport::check`] and
    /// [`PipelineReport::check`]).
    pub fn check(&self) -> anyhow::Result<()> {
        match self {
            Outcome::Kv(report) => report.check(),
            Outcome::Multicast(report) => report.check(),
            Outcome::Tasks(report) => report.check(),
            Outcome::Storage(report) => report.check(),
            Outcome::Pipeline(report) => report.check(),
            Outcome::Gossip(report) => report.check(),
            Outcome::Nats(report) => report.check(),
        }
    }

    /// The kv report, if this was the kv scenario.
    pub fn into_kv(self) -> Option<Report> {
        match self {
            Outcome::Kv(report) => Some(report),
            Outcome::Multicast(_)
            | Outcome::Tasks(_)
            | Outcome::Storage(_)
            | Outcome::Pipeline(_)
            | Outcome::Gossip(_)
            | Outcome::Nats(_) => None,
        }
    }

    /// The multicast report, if this was the multicast scenario.
    pub fn into_multicast(self) -> Option<MulticastReport> {
        match self {
            Outcome::Multicast(report) => Some(report),
            Outcome::Kv(_)
            | Outcome::Tasks(_)
            | Outcome::Storage(_)
            | Outcome::Pipeline(_)
            | Outcome::Gossip(_)
            | Outcome::Nats(_) => None,
        }
    }

    /// The tasks report, if this was the tasks scenario.
    pub fn into_tasks(self) -> Option<TasksReport> {
        match self {
            Outcome::Tasks(report) => Some(report),
            Outcome::Kv(_)
            | Outcome::Multicast(_)
            | Outcome::Storage(_)
            | Outcome::Pipeline(_)
            | Outcome::Gossip(_)
            | Outcome::Nats(_) => None,
        }
    }

    /// The storage report, if this was the storage scenario.
    pub fn into_storage(self) -> Option<StorageReport> {
        match self {
            Outcome::Storage(report) => Some(report),
            Outcome::Kv(_)
            | Outcome::Multicast(_)
            | Outcome::Tasks(_)
            | Outcome::Pipeline(_)
            | Outcome::Gossip(_)
            | Outcome::Nats(_) => None,
        }
    }

    /// The pipeline report, if this was the pipeline scenario.
    pub fn into_pipeline(self) -> Option<PipelineReport> {
        match self {
            Outcome::Pipeline(report) => Some(*report),
            Outcome::Kv(_)
            | Outcome::Multicast(_)
            | Outcome::Tasks(_)
            | Outcome::Storage(_)
            | Outcome::Gossip(_)
            | Outcome::Nats(_) => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Kv(report) => report.fmt(f),
            Outcome::Multicast(report) => report.fmt(f),
            Outcome::Tasks(report) => report.fmt(f),
            Outcome::Storage(report) => report.fmt(f),
            Outcome::Pipeline(report) => report.fmt(f),
            Outcome::Gossip(report) => report.fmt(f),
            Outcome::Nats(report) => report.fmt(f),
        }
    }
}

/// Measures the chosen scenario and prints its report to stdout. Fails when a server cannot
/// be started or reached, or when every request of a measurement failed.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    print!("{report}");
    report.check()
}

/// Measures the chosen scenario and returns the report without printing it.
pub async fn measure(args: &Args) -> anyhow::Result<Outcome> {
    match &args.scenario {
        Scenario::Kv(kv) => kv::measure(kv).await.map(Outcome::Kv),
        Scenario::Multicast(multicast) => {
            multicast::measure(multicast).await.map(Outcome::Multicast)
        }
        Scenario::Tasks(tasks) => tasks::measure(tasks).await.map(Outcome::Tasks),
        Scenario::Storage(storage) => storage::measure(storage).await.map(Outcome::Storage),
        Scenario::Pipeline(pipeline) => pipeline::measure(pipeline)
            .await
            .map(|report| Outcome::Pipeline(Box::new(report))),
        Scenario::Gossip(gossip) => gossip::measure(gossip).await.map(Outcome::Gossip),
        Scenario::Nats(nats) => nats::measure(nats).await.map(Outcome::Nats),
    }
}
