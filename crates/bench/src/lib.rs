//! `shoal bench`: load generators that measure a shoal service's throughput and latency.
//!
//! # Design
//!
//! A scenario ([`Scenario`]) describes what to send; today there is one, `kv`. Each run is a
//! closed loop: `--connections` tasks, each owning one keep-alive HTTP/1.1 connection, send
//! requests back to back until the deadline. An operation is drawn by the `--mix` weights
//! and a key uniformly from `--keys`, with a per-task xorshift generator (no shared state,
//! no `rand` dependency). Every task records latencies (µs) into its own HDR histograms,
//! one per operation, so nothing is shared while measuring; the histograms are merged once
//! at the end. A `--warmup` period runs the same load unrecorded first. Non-2xx answers and
//! transport errors count as errors; after a transport error the task reconnects.
//!
//! Without `--target`, the bench starts the service in this process on `127.0.0.1:0` with a
//! temporary data directory. With `--baseline` it first measures a trivial server (constant
//! answers) served by [`shoal_core::server::run`], i.e. behind exactly the middleware every
//! service has, so the report can say how much of the framework's ceiling the service
//! reaches (`kv/baseline throughput`).
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
//! - [`kv`]: the kv scenario's flags and orchestration (servers, preload, measurements).
//! - [`load`]: the load loop and the statistics it collects.
//! - [`mix`]: the operation mix.
//! - [`report`]: the plain-text report.

mod client;
pub mod kv;
pub mod load;
pub mod mix;
pub mod report;

pub use crate::kv::KvArgs;
pub use crate::report::Report;

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
}

/// Measures the chosen scenario and prints its report to stdout. Fails when a server cannot
/// be started or reached, or when every request of a measurement failed.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    print!("{report}");
    report.check()
}

/// Measures the chosen scenario and returns the report without printing it.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    match &args.scenario {
        Scenario::Kv(kv) => kv::measure(kv).await,
    }
}
