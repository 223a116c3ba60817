//! `shoal bench storage`: upload and download throughput and latency of shoal storage, next
//! to two baselines: the same bytes written and read with local files directly, and the same
//! bytes downloaded over HTTP from a server that holds them in memory.
//!
//! # Method
//!
//! Every object is `--size` bytes, the same pseudo-random bytes for every upload (built once,
//! shared, so the client copies nothing per request). Each of `--concurrency` workers owns
//! `--objects` distinct ids: worker `w` uses `--first-id + w × objects` up to the next worker's
//! first id (all in state `working`), and cycles over them in order, so uploads keep
//! overwriting the same files, as a pipeline that rewrites an image's working copy does. Before
//! the first round every id is uploaded once (the prefill), so every download finds its object.
//!
//! A measurement is one **phase** of one side, run as a closed loop: every worker issues one
//! operation at a time, back to back, until the deadline. A `--warmup` period of the same
//! load runs unrecorded first; then `--duration` is recorded. An operation that starts before
//! the deadline is awaited and counted; none starts after it. The phases:
//!
//! - **upload**: `POST /sendImage?state=working&id=N` with the object as the body (with
//!   `Content-Length`); a 2xx answer is a success.
//! - **download**: `GET /getImage?state=working&id=N`; the body is drained frame by frame
//!   (never buffered) and its bytes counted. A 2xx answer with exactly `--size` bytes is a
//!   success; any other length is a **wrong size** (counted during the warmup too, since it
//!   is a correctness failure, not a speed) and fails the run.
//!
//! Each worker owns one keep-alive HTTP/1.1 connection (the crate's lean client). A non-2xx
//! answer or a transport error counts as an error; after a transport error the worker
//! reconnects. Latency runs from just before the request is handed to the connection until
//! the last body byte arrived. Per measurement the report gives objects/s and MiB/s (1 MiB =
//! 2^20 bytes: successes × `--size` ÷ the time from the end of the warmup until the last worker
//! stopped), p50, p99 and max latency, errors and wrong sizes.
//!
//! # The baselines
//!
//! Two yardsticks run by default; `--no-baseline` skips both.
//!
//! ## Plain files (`baseline`)
//!
//! The file baseline does, in this process, exactly what the local-directory backend does per
//! object, with `std::fs` and nothing else — no HTTP, no routing, no streaming:
//!
//! - **upload**: create a temporary file in the objects' directory, write the object, fsync it
//!   (`File::sync_all`), rename it over the object's file, fsync the directory (through a
//!   handle opened once, as the backend keeps its directories open);
//! - **download**: open the object's file and read it whole (into a buffer each worker
//!   reuses, so no allocation per read), checking the length as above.
//!
//! Each operation is one `tokio::task::spawn_blocking` call, and `--concurrency` workers issue
//! them one at a time each, so as many operations are in flight as against the service, and
//! the same closed loop, warmup, ids, prefill and metrics apply. Its files live in a fresh
//! temporary directory (removed afterwards) under `--baseline-dir`, by default the system's
//! temporary directory, where the in-process service's data directory is created too: both
//! write to the same filesystem. Both sides' downloads read objects that were just written,
//! so usually from the page cache: the download ratio compares the service's read path with
//! the plain read, not disks. Latency runs from just before the blocking call is spawned
//! until it returned.
//!
//! The service side pays for everything between a client and the files: the bench's own HTTP
//! client (on the same CPUs when the service runs in-process), the copies through the
//! loopback socket, the request handling and the backend's streaming. The ratio is that
//! whole cost, measured against the file operations alone. For uploads the fsyncs dominate
//! both sides, so the ratio is telling; for downloads the plain read is a memory copy out of
//! the page cache, far faster than any HTTP exchange, so that ratio mostly measures HTTP.
//!
//! ## HTTP from memory (`http-mem`, downloads only)
//!
//! A server started in this process on `127.0.0.1:0` with [`shoal_core::server::run`], i.e.
//! behind exactly the middleware every shoal service runs behind, with a single route:
//! `GET /getImage` answers the object's bytes from memory — a clone of one shared `Bytes`
//! holding the same `--size` bytes the uploads send, with the `Content-Type` storage would
//! give them (sniffed the same way) and `Content-Length`; no query parsing, no lookup, no
//! file. Its downloads are measured exactly as the service's: the same client, requests
//! (ids included), workers, connections, warmup, duration and checks. It answers about as
//! fast as any shoal service can answer a download of that size on this machine, so the
//! ratio storage/http-mem is the share of that ceiling the service reaches; the rest is what
//! its own read path (query, lookup, open, streaming from the file) costs on top of HTTP.
//!
//! # Rounds and ratios
//!
//! As in the other scenarios (see the crate docs), a run is `--rounds` rounds. A round
//! measures the upload phase (baseline and service), then the download phase (baseline,
//! service and http-mem), each phase's sides back to back. Odd rounds run them in the order
//! baseline, service, http-mem; even rounds in the reverse order. The service is always in
//! the middle, so it is measured right next to each of its yardsticks, and each yardstick
//! goes first in half the rounds: a steady drift of the machine's speed favours each side
//! equally often. The summary gives per side and phase the medians over the rounds (max:
//! slowest of any round; errors and wrong sizes: summed). The ratios are the service's MiB/s
//! as a percentage of a yardstick's **in the same round** — per phase for the file baseline,
//! downloads for http-mem — and the report shows the median of these per-round ratios with
//! their lowest and highest value. A measurement without a single success stops the run (the
//! report so far is still printed) and fails it.
//!
//! Without `--target` the service is `shoal_storage::run` in this process on `127.0.0.1:0`
//! with default settings on a temporary data directory (removed afterwards), its maximum
//! object size raised to `--size` if needed. With `--target`, the bench deletes the objects it
//! wrote at the end (`DELETE /deleteImage`); ids start at `--first-id` (10^9 by default) so
//! as not to overwrite real images. The baselines still run on this machine, so the file
//! ratio only means something when the target stores on this machine, on the filesystem of
//! `--baseline-dir`, and the http-mem ratio only when the target runs on this machine too
//! (over loopback, as the in-memory server is reached).

use std::fmt;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use shoal_core::config::{Token, parse_duration, parse_size};
use shoal_core::routes::get;
use shoal_core::server::{self, ServerOptions};
use shoal_core::testkit::TestServer;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{Sender, Target, exchange_counted, fetch};
use crate::kv::stop_servers;
use crate::load::{RECONNECT_PAUSE, STRAGGLER_GRACE, Stats};
use crate::mix::Rng;
use crate::report::{
    BASELINE, Spread, baseline_first, median_by, median_duration, ms, percent, size_text,
};

/// The label of the service's measurements.
pub const LABEL: &str = "storage";

/// The label of the HTTP-from-memory server's measurements (downloads only).
pub const MEMORY: &str = "http-mem";

/// The state every bench object is stored under.
pub const STATE: &str = "working";

/// Largest `--size` accepted.
pub const MAX_SIZE: u64 = 1 << 30;

/// Largest object id the service accepts (its ids are signed 64-bit).
pub const MAX_ID: u64 = i64::MAX as u64;

/// How long the target gets to answer its first `/healthz`.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// How long one prefill or clean-up request may take.
const SETUP_REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// Bytes in a MiB, the unit of the reported throughput.
const MIB: f64 = (1u64 << 20) as f64;

/// Flags of `shoal bench storage`.
#[derive(clap::Args, Clone, Debug)]
pub struct StorageArgs {
    /// The storage service to benchmark (`HOST:PORT` or `http://HOST:PORT`). Without it, a
    /// fresh one is started in this process on 127.0.0.1 with a temporary data directory.
    /// With it, the objects the bench wrote are deleted at the end.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Size of every object (`64KiB`, `1MiB`).
    #[arg(long, value_parser = parse_object_size, default_value = "1MiB")]
    pub size: usize,

    /// Concurrent workers, each on its own keep-alive connection (or, for the baseline, its
    /// own file operations), one operation at a time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// How long one measurement records, after its own warmup (`10s`, `500ms`). A round
    /// makes 5 measurements (2 without the baselines): uploads of the baseline and the
    /// service, downloads of those and of the HTTP-from-memory server.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// How long each measurement first runs the same load without recording it.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,

    /// Distinct objects per worker; uploads cycle over them, overwriting. Disk used per side:
    /// concurrency × objects × size.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub objects: u64,

    /// The first object id used; the bench uses concurrency × objects ids from there (all
    /// within the service's 0..=2^63-1).
    #[arg(long, default_value_t = 1_000_000_000, value_parser = clap::value_parser!(u64).range(..=MAX_ID))]
    pub first_id: u64,

    /// How many times to measure; each round measures the service next to each baseline
    /// back to back per phase, alternating which goes first, and the ratios are the medians
    /// of the per-round ratios.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Skip both baselines: writing and reading the same bytes to local files directly, and
    /// downloading them from an HTTP server (same middleware as storage) that holds them in
    /// memory.
    #[arg(long)]
    pub no_baseline: bool,

    /// Where the baseline writes: it creates a fresh temporary directory in DIR for its
    /// files and removes it afterwards. Default: the system's temporary directory, where the
    /// in-process service's data directory is created too, so both write to the same
    /// filesystem. With --target, give a directory on the target's filesystem.
    #[arg(long, value_name = "DIR", conflicts_with = "no_baseline")]
    pub baseline_dir: Option<PathBuf>,

    /// Bearer token to send to --target.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,
}

impl StorageArgs {
    /// Flags with every default (in-process service, 1 MiB objects, 16 workers, 8 objects
    /// each, 3 rounds of 10 s, with the baseline).
    pub fn new() -> Self {
        Self {
            target: None,
            size: 1 << 20,
            concurrency: 16,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            objects: 8,
            first_id: 1_000_000_000,
            rounds: 3,
            no_baseline: false,
            baseline_dir: None,
            token: None,
        }
    }
}

impl Default for StorageArgs {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_object_size(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if n == 0 {
        return Err("the object size must be at least 1 byte".into());
    }
    if n > MAX_SIZE {
        return Err(format!(
            "the object size must be at most {}",
            size_text(MAX_SIZE)
        ));
    }
    usize::try_from(n).map_err(|_| format!("object size out of range: {s}"))
}

/// What a measurement does: write objects or read them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `POST /sendImage`, or the baseline's durable write.
    Upload,
    /// `GET /getImage`, or the baseline's read.
    Download,
}

impl Phase {
    /// Both phases, in the order a round measures them.
    pub const ALL: [Phase; 2] = [Phase::Upload, Phase::Download];

    /// `upload` or `download`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Upload => "upload",
            Phase::Download => "download",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one phase of one side measured in one round.
#[derive(Clone, Debug)]
pub struct PhaseMeasurement {
    /// `storage`, `baseline` or `http-mem`.
    pub label: String,
    /// Upload or download.
    pub phase: Phase,
    /// The round it belongs to, from 1.
    pub round: usize,
    /// From the end of the warmup until the last worker stopped.
    pub elapsed: Duration,
    /// Bytes per object.
    pub size: usize,
    /// Latency of every successful operation, and the failed ones.
    pub stats: Stats,
    /// Downloads that succeeded but did not return `size` bytes (warmup included).
    pub wrong_size: u64,
}

impl PhaseMeasurement {
    fn new(label: &str, phase: Phase, round: usize, size: usize) -> Self {
        Self {
            label: label.to_owned(),
            phase,
            round,
            elapsed: Duration::ZERO,
            size,
            stats: Stats::new(),
            wrong_size: 0,
        }
    }

    /// Successful operations per second.
    pub fn objects_per_sec(&self) -> f64 {
        self.stats.throughput(self.elapsed)
    }

    /// Successful operations' bytes per second, in MiB (2^20 bytes).
    pub fn mib_per_sec(&self) -> f64 {
        self.objects_per_sec() * self.size as f64 / MIB
    }
}

/// One side's phase over the rounds it was measured in.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSummary {
    /// How many measurements went into it.
    pub rounds: usize,
    /// Median of the rounds' objects/s.
    pub objects_per_sec: f64,
    /// Median of the rounds' MiB/s.
    pub mib_per_sec: f64,
    /// Median of the rounds' median latencies.
    pub p50: Option<Duration>,
    /// Median of the rounds' 99th percentile latencies.
    pub p99: Option<Duration>,
    /// The slowest operation of any round.
    pub max: Option<Duration>,
    /// Failed operations, summed over the rounds.
    pub errors: u64,
    /// Wrong-size downloads, summed over the rounds.
    pub wrong_size: u64,
}

/// Everything one `shoal bench storage` run measured, printed with `Display`.
#[derive(Clone, Debug)]
pub struct StorageReport {
    /// The service's base URL.
    pub target: String,
    /// `in-process, local directory` or `external`.
    pub target_kind: String,
    /// The directory the baseline's temporary directory was created in; `None` without the
    /// baselines (`--no-baseline`).
    pub baseline_dir: Option<PathBuf>,
    /// The base URL of the HTTP-from-memory server; `None` without the baselines
    /// (`--no-baseline`).
    pub memory_target: Option<String>,
    /// Bytes per object.
    pub size: usize,
    /// Distinct objects per worker.
    pub objects: u64,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Recorded period of one measurement.
    pub duration: Duration,
    /// Rounds asked for (`--rounds`); fewer ran when a measurement had no success.
    pub rounds: usize,
    /// Every measurement, in the order it ran.
    pub measurements: Vec<PhaseMeasurement>,
    /// Remarks printed at the end.
    pub notes: Vec<String>,
}

impl StorageReport {
    /// The measurements of `label`'s `phase`, by round.
    pub fn of<'a>(
        &'a self,
        label: &'a str,
        phase: Phase,
    ) -> impl Iterator<Item = &'a PhaseMeasurement> + 'a {
        self.measurements
            .iter()
            .filter(move |m| m.label == label && m.phase == phase)
    }

    /// The labels measured: the baselines first (those measured), then the service.
    pub fn labels(&self) -> Vec<&'static str> {
        [BASELINE, MEMORY, LABEL]
            .into_iter()
            .filter(|label| self.measurements.iter().any(|m| m.label == *label))
            .collect()
    }

    /// The rounds that ran (the highest round number measured).
    pub fn rounds_run(&self) -> usize {
        self.measurements.iter().map(|m| m.round).max().unwrap_or(0)
    }

    /// `label`'s `phase` over every round.
    pub fn summary(&self, label: &str, phase: Phase) -> PhaseSummary {
        let rows: Vec<&PhaseMeasurement> = self.of(label, phase).collect();
        let median = |values: Vec<f64>| {
            median_by(values, f64::total_cmp, |a, b| (a + b) / 2.0).unwrap_or(0.0)
        };
        PhaseSummary {
            rounds: rows.len(),
            objects_per_sec: median(rows.iter().map(|m| m.objects_per_sec()).collect()),
            mib_per_sec: median(rows.iter().map(|m| m.mib_per_sec()).collect()),
            p50: median_duration(rows.iter().map(|m| m.stats.quantile(0.5))),
            p99: median_duration(rows.iter().map(|m| m.stats.quantile(0.99))),
            max: rows.iter().filter_map(|m| m.stats.max()).max(),
            errors: rows.iter().map(|m| m.stats.errors).sum(),
            wrong_size: rows.iter().map(|m| m.wrong_size).sum(),
        }
    }

    /// The service's MiB/s in `phase` as a percentage of the file baseline's in the same
    /// round, spread over the rounds; `None` without a round where both ran and the baseline
    /// had a success.
    pub fn ratio(&self, phase: Phase) -> Option<Spread> {
        self.ratio_to(BASELINE, phase)
    }

    /// The service's download MiB/s as a percentage of the HTTP-from-memory server's in the
    /// same round, spread over the rounds; `None` without a round where both ran and that
    /// server had a success.
    pub fn memory_ratio(&self) -> Option<Spread> {
        self.ratio_to(MEMORY, Phase::Download)
    }

    /// The service's MiB/s in `phase` as a percentage of `yardstick`'s in the same round,
    /// spread over the rounds.
    fn ratio_to(&self, yardstick: &str, phase: Phase) -> Option<Spread> {
        let ratios = self
            .of(LABEL, phase)
            .filter_map(|m| {
                let base = self.of(yardstick, phase).find(|b| b.round == m.round)?;
                let base_rate = base.mib_per_sec();
                (base_rate > 0.0).then(|| 100.0 * m.mib_per_sec() / base_rate)
            })
            .collect();
        Spread::of(ratios)
    }

    /// Fails when nothing was measured, a measurement had no successful operation, or a
    /// download returned the wrong number of bytes.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.measurements.is_empty() {
            bail!("nothing was measured");
        }
        for m in &self.measurements {
            let round = if self.rounds > 1 {
                format!(" in round {} of {}", m.round, self.rounds)
            } else {
                String::new()
            };
            if m.wrong_size > 0 {
                bail!(
                    "{} {}: {} downloads did not return {} bytes{round}",
                    m.label,
                    m.phase,
                    m.wrong_size,
                    m.size
                );
            }
            if m.stats.ok() == 0 {
                if m.stats.errors > 0 {
                    bail!(
                        "every {} {} failed ({} errors){round}",
                        m.label,
                        m.phase,
                        m.stats.errors
                    );
                }
                bail!("no {} {} completed{round}", m.label, m.phase);
            }
        }
        Ok(())
    }
}

fn head(f: &mut fmt::Formatter<'_>, prefix: &str, label: &str, phase: Phase) -> fmt::Result {
    write!(f, "{prefix:<6} {label:<9} {:<8}", phase.name())
}

impl fmt::Display for StorageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario storage  target {} ({})  size {}  objects {} per worker  concurrency {}  \
             duration {}  rounds {}",
            self.target,
            self.target_kind,
            size_text(self.size as u64),
            self.objects,
            self.concurrency,
            humantime::format_duration(self.duration),
            self.rounds,
        )?;
        if let Some(dir) = &self.baseline_dir {
            writeln!(
                f,
                "baseline: std::fs under {}: upload = temp file, write, fsync, rename, fsync \
                 dir; download = open, read whole",
                dir.display()
            )?;
        }
        if let Some(url) = &self.memory_target {
            writeln!(
                f,
                "{MEMORY}: shoal_core::server::run at {url}: download = GET /getImage answered \
                 from one Bytes in memory"
            )?;
        }
        for m in &self.measurements {
            head(f, &format!("r{}", m.round), &m.label, m.phase)?;
            write!(
                f,
                " {:>9} obj  {:>9.1} obj/s  {:>9.1} MiB/s  p50 {:>7} ms  p99 {:>7} ms  \
                 max {:>7} ms  errors {}",
                m.stats.ok(),
                m.objects_per_sec(),
                m.mib_per_sec(),
                ms(m.stats.quantile(0.5)),
                ms(m.stats.quantile(0.99)),
                ms(m.stats.max()),
                m.stats.errors,
            )?;
            if m.phase == Phase::Download {
                write!(f, "  wrong size {}", m.wrong_size)?;
            }
            writeln!(f)?;
        }
        let rounds_run = self.rounds_run();
        writeln!(
            f,
            "median of {rounds_run} round{} (max: slowest of any round; errors, wrong sizes: \
             summed)",
            if rounds_run == 1 { "" } else { "s" },
        )?;
        for label in self.labels() {
            for phase in Phase::ALL {
                let s = self.summary(label, phase);
                if s.rounds == 0 {
                    continue;
                }
                head(f, "median", label, phase)?;
                // No count: the counts of different rounds are not a median of anything useful.
                write!(
                    f,
                    " {:>9}      {:>9.1} obj/s  {:>9.1} MiB/s  p50 {:>7} ms  p99 {:>7} ms  \
                     max {:>7} ms  errors {}",
                    "",
                    s.objects_per_sec,
                    s.mib_per_sec,
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max),
                    s.errors,
                )?;
                if phase == Phase::Download {
                    write!(f, "  wrong size {}", s.wrong_size)?;
                }
                writeln!(f)?;
            }
        }
        if self.baseline_dir.is_some() {
            writeln!(
                f,
                "{LABEL}/{BASELINE} MiB/s (median of per-round ratios): upload {}  download {}",
                percent(self.ratio(Phase::Upload)),
                percent(self.ratio(Phase::Download)),
            )?;
        }
        if self.memory_target.is_some() {
            writeln!(
                f,
                "{LABEL}/{MEMORY} MiB/s (median of per-round ratios): download {}",
                percent(self.memory_ratio()),
            )?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// The shape of every measurement, shared by the workers.
#[derive(Debug)]
struct Load {
    /// The object uploaded, every time.
    body: Bytes,
    concurrency: usize,
    objects: u64,
    first_id: u64,
    warmup: Duration,
    duration: Duration,
}

impl Load {
    /// The id of worker `worker`'s `n`th operation (cycling over its objects).
    fn id(&self, worker: usize, n: u64) -> u64 {
        self.first_id + worker as u64 * self.objects + n % self.objects
    }

    /// Every id worker `worker` uses.
    fn ids(&self, worker: usize) -> impl Iterator<Item = u64> + '_ {
        (0..self.objects).map(move |n| self.id(worker, n))
    }

    fn size(&self) -> usize {
        self.body.len()
    }
}

/// What is measured: the service over HTTP, the baseline's files in a directory, or the
/// HTTP-from-memory server (downloads only).
#[derive(Clone, Debug)]
enum Side {
    Service(Arc<Target>),
    Baseline(Arc<BaselineDir>),
    Memory(Arc<Target>),
}

/// The directory the baseline keeps its objects in, with a handle to it opened once (as the
/// backend keeps its directories open) for the fsync after every rename.
#[derive(Debug)]
struct BaselineDir {
    path: PathBuf,
    handle: File,
}

impl BaselineDir {
    /// Creates `path` and opens it.
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let handle =
            File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path, handle })
    }

    /// The file of object `id`.
    fn object(&self, id: u64) -> PathBuf {
        self.path.join(id.to_string())
    }

    /// What the local backend does per upload: a temporary file in the directory, the bytes,
    /// fsync, rename to `path`, fsync the directory.
    fn write_durably(&self, path: &Path, body: &[u8]) -> io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(&self.path)?;
        file.write_all(body)?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        self.handle.sync_all()
    }
}

impl Side {
    fn label(&self) -> &'static str {
        match self {
            Side::Service(_) => LABEL,
            Side::Baseline(_) => BASELINE,
            Side::Memory(_) => MEMORY,
        }
    }

    fn location(&self) -> String {
        match self {
            Side::Service(target) | Side::Memory(target) => target.base_url.clone(),
            Side::Baseline(dir) => dir.path.display().to_string(),
        }
    }

    /// Whether this side has a `phase` to measure: the in-memory server only downloads.
    fn measures(&self, phase: Phase) -> bool {
        !matches!(self, Side::Memory(_)) || phase == Phase::Download
    }
}

/// The sides of `phase` in `round`, in the order they are measured: baseline, service,
/// http-mem in odd rounds, the reverse in even rounds. The service sits in the middle, right
/// next to each yardstick, and each yardstick goes first in half the rounds.
fn round_order<'a>(round: usize, phase: Phase, sides: &[&'a Side]) -> Vec<&'a Side> {
    let mut order: Vec<&Side> = sides
        .iter()
        .copied()
        .filter(|side| side.measures(phase))
        .collect();
    if !baseline_first(round) {
        order.reverse();
    }
    order
}

/// The HTTP-from-memory server's routes: `GET /getImage` answers `body` whatever the query,
/// with the headers storage gives the same bytes' content.
fn memory_router(body: Bytes) -> Router {
    Router::new()
        .route("/getImage", get(answer_from_memory))
        .with_state(body)
}

async fn answer_from_memory(State(body): State<Bytes>) -> Response {
    let head = &body[..body.len().min(shoal_storage::sniff::SNIFF_LEN)];
    let content_type = shoal_storage::sniff::content_type(head);
    let length = body.len();
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// `endpoint?state=working&id=N`.
fn object_path(endpoint: &str, id: u64) -> String {
    format!("{endpoint}?state={STATE}&id={id}")
}

/// `size` pseudo-random bytes (incompressible, like image data).
fn object_body(size: usize) -> Bytes {
    let mut rng = Rng::new(size as u64);
    let mut body = Vec::with_capacity(size + 8);
    while body.len() < size {
        body.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    body.truncate(size);
    Bytes::from(body)
}

/// Runs the scenario and returns what it measured. Fails when the service cannot be started
/// or reached, the prefill fails or the in-process service stops during the run; a run with a
/// measurement without any success still returns its report, holding the measurements up to
/// that one (see [`StorageReport::check`]).
pub async fn measure(args: &StorageArgs) -> anyhow::Result<StorageReport> {
    if args.duration.is_zero() {
        bail!("--duration must be more than zero");
    }
    if args.concurrency == 0 || args.objects == 0 || args.size == 0 {
        bail!("--concurrency, --objects and --size must be at least 1");
    }
    let concurrency = usize::try_from(args.concurrency).context("--concurrency out of range")?;
    let rounds = usize::try_from(args.rounds).context("--rounds out of range")?;
    let last_id = args
        .objects
        .checked_mul(u64::from(args.concurrency))
        .and_then(|n| args.first_id.checked_add(n - 1));
    if last_id.is_none_or(|id| id > MAX_ID) {
        bail!(
            "--first-id + --concurrency × --objects goes past the largest id the service \
             accepts ({MAX_ID})"
        );
    }
    let load = Arc::new(Load {
        body: object_body(args.size),
        concurrency,
        objects: args.objects,
        first_id: args.first_id,
        warmup: args.warmup,
        duration: args.duration,
    });
    let temp_dir = |parent: &Path, prefix: &str| {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .with_context(|| {
                format!(
                    "cannot create a temporary directory in {}",
                    parent.display()
                )
            })
    };
    let system_temp = std::env::temp_dir();
    let baseline_parent = (!args.no_baseline).then(|| {
        args.baseline_dir
            .clone()
            .unwrap_or_else(|| system_temp.clone())
    });
    let baseline_dir = match &baseline_parent {
        Some(parent) => Some(temp_dir(parent, "shoal-bench-storage-baseline-")?),
        None => None,
    };

    let mut data_dir = None;
    let mut servers: Vec<(&'static str, TestServer)> = Vec::new();
    let memory = if args.no_baseline {
        None
    } else {
        let body = load.body.clone();
        let server = TestServer::start(move |listener, shutdown| async move {
            server::run(
                memory_router(body),
                listener,
                shutdown,
                ServerOptions::new(MEMORY),
            )
            .await
        })
        .await
        .context("cannot start the HTTP-from-memory server")?;
        let target = Target::parse(&server.base_url, None)?;
        servers.push((MEMORY, server));
        Some(Side::Memory(Arc::new(target)))
    };
    let (target, target_kind) = match &args.target {
        Some(url) => (
            Target::parse(url, args.token.as_ref())?,
            "external".to_owned(),
        ),
        None => {
            let dir = temp_dir(&system_temp, "shoal-bench-storage-")?;
            let mut config = shoal_storage::Config::with_data_dir(dir.path());
            config.max_object_size = config.max_object_size.max(args.size as u64);
            data_dir = Some(dir);
            let server = TestServer::start(move |listener, shutdown| {
                shoal_storage::run(config, listener, shutdown)
            })
            .await
            .context("cannot start the in-process storage service")?;
            let target = Target::parse(&server.base_url, None)?;
            servers.push((LABEL, server));
            (target, "in-process, local directory".to_owned())
        }
    };
    let target = Arc::new(target);
    let service = Side::Service(Arc::clone(&target));
    let baseline = match &baseline_dir {
        Some(dir) => {
            // Objects in a directory of their own, as the backend keeps one per state.
            let objects = BaselineDir::create(dir.path().join(STATE))?;
            Some(Side::Baseline(Arc::new(objects)))
        }
        None => None,
    };

    let mut report = StorageReport {
        target: target.base_url.clone(),
        target_kind,
        baseline_dir: baseline_parent,
        memory_target: memory.as_ref().map(Side::location),
        size: args.size,
        objects: args.objects,
        concurrency,
        duration: args.duration,
        rounds,
        measurements: Vec::new(),
        notes: Vec::new(),
    };

    let mut sides: Vec<&Side> = Vec::new();
    sides.extend(baseline.as_ref());
    sides.push(&service);
    sides.extend(memory.as_ref());
    let result = run_rounds(&load, rounds, &sides, &servers).await;
    if args.target.is_some() {
        match delete_objects(&target, &load).await {
            Ok(()) => report.notes.push(format!(
                "deleted the {} bench objects (ids {}..={}) from the target",
                load.objects * concurrency as u64,
                load.first_id,
                load.id(concurrency - 1, load.objects - 1),
            )),
            Err(e) => report
                .notes
                .push(format!("cannot delete the bench objects: {e:#}")),
        }
        if baseline.is_some() {
            report.notes.push(
                "--target given: the baseline ran on this machine, so its ratios only mean \
                 something if the target stores on this machine, on the filesystem of \
                 --baseline-dir"
                    .to_owned(),
            );
        }
        if memory.is_some() {
            report.notes.push(format!(
                "--target given: {MEMORY} ran in this process on 127.0.0.1, so its ratio only \
                 means something if the target runs on this machine too"
            ));
        }
    }
    report.measurements = stop_servers(servers, result).await?;
    // The service is stopped now; only then remove the files.
    if let Some(dir) = data_dir {
        dir.close()
            .context("cannot remove the temporary data directory")?;
    }
    if let Some(dir) = baseline_dir {
        dir.close()
            .context("cannot remove the baseline's temporary directory")?;
    }
    Ok(report)
}

/// Probes the HTTP sides, prefills the service and the file baseline, then measures `rounds`
/// rounds. `sides` are in odd rounds' order (see [`round_order`]). Stops early, with the
/// measurements so far, after a measurement without a single success; fails when an
/// in-process server (in `servers`) has stopped.
async fn run_rounds(
    load: &Arc<Load>,
    rounds: usize,
    sides: &[&Side],
    servers: &[(&'static str, TestServer)],
) -> anyhow::Result<Vec<PhaseMeasurement>> {
    for side in sides {
        if let Side::Service(target) | Side::Memory(target) = side {
            target.probe(PROBE_LIMIT).await?;
        }
    }
    let total = load.objects * load.concurrency as u64;
    for side in sides {
        if matches!(side, Side::Memory(_)) {
            // It holds its one object in memory already.
            continue;
        }
        eprintln!(
            "bench: prefilling {total} objects of {} into {} {}",
            size_text(load.size() as u64),
            side.label(),
            side.location(),
        );
        prefill(side, load).await?;
    }

    let per_phase = |phase: Phase| -> Vec<&str> {
        round_order(1, phase, sides)
            .iter()
            .map(|side| side.label())
            .collect()
    };
    let per_round: usize = Phase::ALL.iter().map(|p| per_phase(*p).len()).sum();
    let one = load.warmup.saturating_add(load.duration);
    eprintln!(
        "bench: {rounds} round{} of {per_round} measurement{} ({}; {} warmup + {} each, {} \
         workers): about {} in all",
        if rounds == 1 { "" } else { "s" },
        if per_round == 1 { "" } else { "s" },
        Phase::ALL
            .iter()
            .map(|p| format!("{p}: {}", per_phase(*p).join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
        humantime::format_duration(load.warmup),
        humantime::format_duration(load.duration),
        load.concurrency,
        humantime::format_duration(
            one.saturating_mul(u32::try_from(per_round).unwrap_or(u32::MAX))
                .saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX))
        ),
    );

    let mut measurements = Vec::new();
    for round in 1..=rounds {
        for phase in Phase::ALL {
            for side in round_order(round, phase, sides) {
                eprintln!(
                    "bench: round {round}/{rounds}: {} {phase} at {}",
                    side.label(),
                    side.location()
                );
                let measured = measure_phase(side, phase, round, load).await?;
                let failed = measured.stats.ok() == 0;
                measurements.push(measured);
                if let Some((name, _)) = servers.iter().find(|(_, server)| server.is_finished()) {
                    bail!("the in-process {name} service stopped during round {round}");
                }
                if failed {
                    eprintln!(
                        "bench: no {} {phase} succeeded in round {round}; skipping the rest",
                        side.label()
                    );
                    return Ok(measurements);
                }
            }
        }
    }
    Ok(measurements)
}

/// Writes every id once, so downloads find their objects: over HTTP, one connection per
/// worker, or with the baseline's durable write, one blocking task per worker. The in-memory
/// server has nothing to write.
async fn prefill(side: &Side, load: &Arc<Load>) -> anyhow::Result<()> {
    match side {
        Side::Memory(_) => Ok(()),
        Side::Service(target) => {
            on_every_object(target, load, Method::POST, "/sendImage", load.body.clone()).await
        }
        Side::Baseline(dir) => {
            let mut tasks = JoinSet::new();
            for worker in 0..load.concurrency {
                let (dir, load) = (Arc::clone(dir), Arc::clone(load));
                tasks.spawn_blocking(move || {
                    for id in load.ids(worker) {
                        let path = dir.object(id);
                        dir.write_durably(&path, &load.body)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(joined) = tasks.join_next().await {
                joined.context("a prefill task panicked")??;
            }
            Ok(())
        }
    }
}

/// Deletes every id from the target (a 404 is fine: nothing to delete).
async fn delete_objects(target: &Arc<Target>, load: &Arc<Load>) -> anyhow::Result<()> {
    on_every_object(target, load, Method::DELETE, "/deleteImage", Bytes::new()).await
}

/// Sends `method endpoint` with `body` for every id, one connection per worker. Fails on the
/// first answer that is neither 2xx nor (for a `DELETE`) 404, showing it.
async fn on_every_object(
    target: &Arc<Target>,
    load: &Arc<Load>,
    method: Method,
    endpoint: &'static str,
    body: Bytes,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for worker in 0..load.concurrency {
        let (target, load) = (Arc::clone(target), Arc::clone(load));
        let (method, body) = (method.clone(), body.clone());
        tasks.spawn(async move {
            let mut sender = target.connect().await?;
            for id in load.ids(worker) {
                let path = object_path(endpoint, id);
                let request = target.request(method.clone(), &path, body.clone())?;
                let (status, answer) =
                    tokio::time::timeout(SETUP_REQUEST_LIMIT, fetch(&mut sender, request))
                        .await
                        .with_context(|| format!("{method} {path} timed out"))?
                        .with_context(|| format!("{method} {path} failed"))?;
                let gone = method == Method::DELETE && status == StatusCode::NOT_FOUND;
                if !status.is_success() && !gone {
                    bail!(
                        "{method} {path} answered {status}: {}",
                        String::from_utf8_lossy(&answer).trim()
                    );
                }
            }
            anyhow::Ok(())
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.context("a setup task panicked").and_then(|r| r) {
            result = Err(e);
            tasks.abort_all();
        }
    }
    result
}

/// One worker's share of a measurement.
#[derive(Debug, Default)]
struct Tally {
    stats: Stats,
    wrong_size: u64,
}

/// Runs `phase` of `side` with `load.concurrency` workers: `load.warmup` unrecorded, then
/// `load.duration` recorded.
async fn measure_phase(
    side: &Side,
    phase: Phase,
    round: usize,
    load: &Arc<Load>,
) -> anyhow::Result<PhaseMeasurement> {
    let start = Instant::now();
    let warmup_end = start + load.warmup;
    let deadline = warmup_end + load.duration;
    let workers: Vec<_> = (0..load.concurrency)
        .map(|worker| {
            let load = Arc::clone(load);
            match side {
                Side::Service(target) | Side::Memory(target) => tokio::spawn(service_worker(
                    Arc::clone(target),
                    load,
                    phase,
                    worker,
                    warmup_end,
                    deadline,
                )),
                Side::Baseline(dir) => tokio::spawn(baseline_worker(
                    Arc::clone(dir),
                    load,
                    phase,
                    worker,
                    warmup_end,
                    deadline,
                )),
            }
        })
        .collect();
    let mut measured = PhaseMeasurement::new(side.label(), phase, round, load.size());
    for w in workers {
        let tally = w.await.context("a worker panicked")??;
        measured.stats.merge(&tally.stats);
        measured.wrong_size += tally.wrong_size;
    }
    measured.elapsed = Instant::now().saturating_duration_since(warmup_end);
    Ok(measured)
}

/// One worker's loop against an HTTP side (the service or the in-memory server). Operations
/// started before `warmup_end` are not recorded; none starts at or after `deadline`.
async fn service_worker(
    target: Arc<Target>,
    load: Arc<Load>,
    phase: Phase,
    worker: usize,
    warmup_end: Instant,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let hard_stop = deadline + STRAGGLER_GRACE;
    let mut conn: Option<Sender> = None;
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let recording = now >= warmup_end;
        if conn.as_ref().is_none_or(Sender::is_closed) {
            match tokio::time::timeout_at(hard_stop, target.connect()).await {
                Ok(Ok(sender)) => conn = Some(sender),
                Ok(Err(_)) | Err(_) => {
                    conn = None;
                    if recording {
                        tally.stats.errors += 1;
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };
        let id = load.id(worker, n);
        n += 1;
        let request = match phase {
            Phase::Upload => target.request(
                Method::POST,
                &object_path("/sendImage", id),
                load.body.clone(),
            )?,
            Phase::Download => {
                target.request(Method::GET, &object_path("/getImage", id), Bytes::new())?
            }
        };
        let sent = Instant::now();
        let outcome = tokio::time::timeout_at(hard_stop, exchange_counted(sender, request)).await;
        let latency = sent.elapsed();
        match outcome {
            Ok(Ok((status, received))) if status.is_success() => {
                if phase == Phase::Download && received != load.size() as u64 {
                    tally.wrong_size += 1;
                } else if recording {
                    tally.stats.record(latency);
                }
            }
            Ok(Ok(_)) => {
                if recording {
                    tally.stats.errors += 1;
                }
            }
            Ok(Err(_)) | Err(_) => {
                if recording {
                    tally.stats.errors += 1;
                }
                // The connection is in an unknown state: start over on a fresh one.
                conn = None;
            }
        }
    }
    Ok(tally)
}

/// One worker's loop of the baseline: each operation is one blocking task. Operations started
/// before `warmup_end` are not recorded; none starts at or after `deadline`.
async fn baseline_worker(
    dir: Arc<BaselineDir>,
    load: Arc<Load>,
    phase: Phase,
    worker: usize,
    warmup_end: Instant,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut buffer: Vec<u8> = Vec::with_capacity(load.size());
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let recording = now >= warmup_end;
        let path = dir.object(load.id(worker, n));
        n += 1;
        let sent = Instant::now();
        let outcome = match phase {
            Phase::Upload => {
                let (dir, load) = (Arc::clone(&dir), Arc::clone(&load));
                tokio::task::spawn_blocking(move || dir.write_durably(&path, &load.body))
                    .await
                    .context("a baseline write panicked")?
                    .map(|()| None)
            }
            Phase::Download => {
                let reused = std::mem::take(&mut buffer);
                let (reused, read) = tokio::task::spawn_blocking(move || read_whole(&path, reused))
                    .await
                    .context("a baseline read panicked")?;
                buffer = reused;
                read.map(Some)
            }
        };
        let latency = sent.elapsed();
        match outcome {
            Ok(Some(read)) if read != load.size() => tally.wrong_size += 1,
            Ok(_) => {
                if recording {
                    tally.stats.record(latency);
                }
            }
            Err(_) => {
                if recording {
                    tally.stats.errors += 1;
                }
            }
        }
    }
    Ok(tally)
}

/// Reads all of `path` into `buffer` (cleared first, its capacity kept) and returns it with
/// the number of bytes read.
fn read_whole(path: &Path, mut buffer: Vec<u8>) -> (Vec<u8>, io::Result<usize>) {
    buffer.clear();
    let read = File::open(path).and_then(|mut file| file.read_to_end(&mut buffer));
    (buffer, read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        storage: StorageArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "bench",
            "--target",
            "127.0.0.1:3002",
            "--size",
            "64KiB",
            "--concurrency",
            "4",
            "--duration",
            "2s",
            "--warmup",
            "250ms",
            "--objects",
            "3",
            "--first-id",
            "7",
            "--rounds",
            "5",
            "--baseline-dir",
            "/var/tmp",
        ])
        .expect("flags parse");
        let s = &cli.storage;
        assert_eq!(s.target.as_deref(), Some("127.0.0.1:3002"));
        assert_eq!(s.size, 64 << 10);
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.duration, Duration::from_secs(2));
        assert_eq!(s.warmup, Duration::from_millis(250));
        assert_eq!(s.objects, 3);
        assert_eq!(s.first_id, 7);
        assert_eq!(s.rounds, 5);
        assert!(!s.no_baseline);
        assert_eq!(s.baseline_dir.as_deref(), Some(Path::new("/var/tmp")));

        let defaults = Cli::try_parse_from(["bench"]).expect("defaults parse");
        let new = StorageArgs::new();
        assert_eq!(defaults.storage.size, 1 << 20);
        assert_eq!(defaults.storage.size, new.size);
        assert_eq!(defaults.storage.concurrency, new.concurrency);
        assert_eq!(defaults.storage.duration, new.duration);
        assert_eq!(defaults.storage.warmup, new.warmup);
        assert_eq!(defaults.storage.objects, new.objects);
        assert_eq!(defaults.storage.first_id, new.first_id);
        assert_eq!(defaults.storage.rounds, new.rounds);
        assert!(!defaults.storage.no_baseline);

        assert!(Cli::try_parse_from(["bench", "--size", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--size", "2GiB"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--objects", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--rounds", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--first-id", &(MAX_ID + 1).to_string()]).is_err());
        let skipped = Cli::try_parse_from(["bench", "--no-baseline"]).expect("flags parse");
        assert!(skipped.storage.no_baseline);
        assert!(
            Cli::try_parse_from(["bench", "--no-baseline", "--baseline-dir", "/tmp"]).is_err(),
            "--baseline-dir is where the baseline writes"
        );
    }

    #[test]
    fn workers_cycle_over_their_own_ids() {
        let load = Load {
            body: object_body(10),
            concurrency: 3,
            objects: 4,
            first_id: 100,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
        };
        assert_eq!(load.ids(0).collect::<Vec<_>>(), [100, 101, 102, 103]);
        assert_eq!(load.ids(2).collect::<Vec<_>>(), [108, 109, 110, 111]);
        assert_eq!(load.id(1, 5), 105);
        assert_eq!(load.size(), 10);
        assert_eq!(object_path("/getImage", 7), "/getImage?state=working&id=7");
        let body = object_body(1001);
        assert_eq!(body.len(), 1001);
        assert_eq!(body, object_body(1001), "the same bytes every run");
    }

    #[test]
    fn baseline_writes_durably_and_reads_back() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = BaselineDir::create(parent.path().join(STATE)).expect("directory");
        let path = dir.object(42);
        dir.write_durably(&path, b"first version").expect("write");
        dir.write_durably(&path, b"second").expect("overwrite");
        let (buffer, read) = read_whole(&path, Vec::with_capacity(64));
        assert_eq!(read.expect("read"), 6);
        assert_eq!(buffer, b"second");
        let (_, read) = read_whole(&path, buffer);
        assert_eq!(read.expect("read again"), 6);
        // Only the object is left: the temporary files were renamed over it.
        let names: Vec<_> = std::fs::read_dir(&dir.path)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["42"]);
        let (_, missing) = read_whole(&dir.object(43), Vec::new());
        assert!(missing.is_err());
    }

    fn measured(
        label: &str,
        phase: Phase,
        round: usize,
        ops: usize,
        latency_us: u64,
    ) -> PhaseMeasurement {
        let mut m = PhaseMeasurement::new(label, phase, round, 1 << 20);
        m.elapsed = Duration::from_secs(1);
        for _ in 0..ops {
            m.stats.record(Duration::from_micros(latency_us));
        }
        m
    }

    fn report(measurements: Vec<PhaseMeasurement>) -> StorageReport {
        StorageReport {
            target: "http://127.0.0.1:41234".into(),
            target_kind: "in-process, local directory".into(),
            baseline_dir: Some(PathBuf::from("/tmp")),
            memory_target: None,
            size: 1 << 20,
            objects: 8,
            concurrency: 16,
            duration: Duration::from_secs(10),
            rounds: 3,
            measurements,
            notes: Vec::new(),
        }
    }

    #[test]
    fn reports_phases_medians_and_ratios() {
        use Phase::{Download, Upload};
        // storage/baseline upload per round: 50%, 80%, 60%; download: 90%, 100%, 70%.
        let report = report(vec![
            measured(BASELINE, Upload, 1, 100, 1000),
            measured(LABEL, Upload, 1, 50, 2000),
            measured(BASELINE, Download, 1, 200, 500),
            measured(LABEL, Download, 1, 180, 600),
            measured(LABEL, Upload, 2, 80, 1500),
            measured(BASELINE, Upload, 2, 100, 1000),
            measured(LABEL, Download, 2, 200, 500),
            measured(BASELINE, Download, 2, 200, 500),
            measured(BASELINE, Upload, 3, 100, 1000),
            measured(LABEL, Upload, 3, 60, 1800),
            measured(BASELINE, Download, 3, 200, 500),
            measured(LABEL, Download, 3, 140, 700),
        ]);
        report.check().expect("every phase succeeded");
        let up = report.ratio(Upload).expect("upload ratio");
        assert!((up.median - 60.0).abs() < 1e-9, "{up:?}");
        assert!((up.min - 50.0).abs() < 1e-9 && (up.max - 80.0).abs() < 1e-9);
        let down = report.ratio(Download).expect("download ratio");
        assert!((down.median - 90.0).abs() < 1e-9, "{down:?}");

        let s = report.summary(LABEL, Upload);
        assert_eq!(s.rounds, 3);
        assert!((s.objects_per_sec - 60.0).abs() < 1e-9);
        // 1 MiB objects: MiB/s equals objects/s.
        assert!((s.mib_per_sec - 60.0).abs() < 1e-9);
        assert_eq!(s.p50, Some(Duration::from_micros(1800)));
        assert_eq!(report.labels(), [BASELINE, LABEL]);

        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        // Header, baseline line, 12 measurements, summary header, 4 summaries, ratio line.
        assert_eq!(lines.len(), 2 + 12 + 1 + 4 + 1, "{text}");
        assert_eq!(
            lines[0],
            "scenario storage  target http://127.0.0.1:41234 (in-process, local directory)  \
             size 1MiB  objects 8 per worker  concurrency 16  duration 10s  rounds 3"
        );
        assert!(
            lines[1].starts_with("baseline: std::fs under /tmp: "),
            "{text}"
        );
        assert!(
            lines[2].starts_with(
                "r1     baseline  upload         100 obj      100.0 obj/s      100.0 MiB/s  \
                 p50    1.00 ms"
            ),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("errors 0"), "{}", lines[2]);
        assert!(lines[4].ends_with("errors 0  wrong size 0"), "{}", lines[4]);
        assert_eq!(
            lines[14],
            "median of 3 rounds (max: slowest of any round; errors, wrong sizes: summed)"
        );
        assert!(
            lines[17].starts_with("median storage   upload                       60.0 obj/s"),
            "{}",
            lines[17]
        );
        // Aligned with the measurement lines.
        assert_eq!(lines[17].find("obj/s"), lines[2].find("obj/s"), "{text}");
        assert_eq!(lines[17].find("errors"), lines[2].find("errors"), "{text}");
        assert_eq!(
            lines[19],
            "storage/baseline MiB/s (median of per-round ratios): upload 60.0% (50.0–80.0%)  \
             download 90.0% (70.0–100.0%)"
        );
    }

    #[test]
    fn reports_the_memory_servers_download_ratio() {
        use Phase::{Download, Upload};
        // storage/http-mem download per round: 40%, 50%; storage/baseline: 20%, 25%.
        let mut report = report(vec![
            measured(BASELINE, Upload, 1, 100, 1000),
            measured(LABEL, Upload, 1, 50, 2000),
            measured(BASELINE, Download, 1, 1000, 100),
            measured(LABEL, Download, 1, 200, 500),
            measured(MEMORY, Download, 1, 500, 200),
            measured(MEMORY, Download, 2, 400, 250),
            measured(LABEL, Download, 2, 200, 500),
            measured(BASELINE, Download, 2, 800, 100),
        ]);
        report.memory_target = Some("http://127.0.0.1:41235".into());
        report.check().expect("every phase succeeded");
        let mem = report.memory_ratio().expect("memory ratio");
        assert!((mem.median - 45.0).abs() < 1e-9, "{mem:?}");
        assert!((mem.min - 40.0).abs() < 1e-9 && (mem.max - 50.0).abs() < 1e-9);
        let file = report.ratio(Download).expect("file ratio");
        assert!((file.median - 22.5).abs() < 1e-9, "{file:?}");
        assert_eq!(report.labels(), [BASELINE, MEMORY, LABEL]);
        assert_eq!(report.summary(MEMORY, Upload).rounds, 0);
        assert_eq!(report.summary(MEMORY, Download).rounds, 2);

        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        // Header, 2 baseline lines, 8 measurements, summary header, 5 summaries, 2 ratio lines.
        assert_eq!(lines.len(), 3 + 8 + 1 + 5 + 2, "{text}");
        assert_eq!(
            lines[2],
            "http-mem: shoal_core::server::run at http://127.0.0.1:41235: download = GET \
             /getImage answered from one Bytes in memory"
        );
        assert!(
            lines[7].starts_with("r1     http-mem  download       500 obj"),
            "{}",
            lines[7]
        );
        assert_eq!(lines[7].find("obj/s"), lines[3].find("obj/s"), "{text}");
        assert!(
            lines[14].starts_with("median http-mem  download                    450.0 obj/s"),
            "{}",
            lines[14]
        );
        assert_eq!(
            lines[17],
            "storage/baseline MiB/s (median of per-round ratios): upload 50.0% (50.0–50.0%)  \
             download 22.5% (20.0–25.0%)"
        );
        assert_eq!(
            lines[18],
            "storage/http-mem MiB/s (median of per-round ratios): download 45.0% (40.0–50.0%)"
        );
    }

    #[test]
    fn the_service_is_measured_between_its_yardsticks() {
        let target = || Arc::new(Target::parse("127.0.0.1:1", None).expect("target"));
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = BaselineDir::create(parent.path().join(STATE)).expect("directory");
        let (base, service, memory) = (
            Side::Baseline(Arc::new(dir)),
            Side::Service(target()),
            Side::Memory(target()),
        );
        let sides = [&base, &service, &memory];
        let labels = |round, phase| -> Vec<&str> {
            round_order(round, phase, &sides)
                .iter()
                .map(|s| s.label())
                .collect()
        };
        assert_eq!(labels(1, Phase::Upload), [BASELINE, LABEL]);
        assert_eq!(labels(1, Phase::Download), [BASELINE, LABEL, MEMORY]);
        assert_eq!(labels(2, Phase::Upload), [LABEL, BASELINE]);
        assert_eq!(labels(2, Phase::Download), [MEMORY, LABEL, BASELINE]);
        assert_eq!(labels(3, Phase::Download), [BASELINE, LABEL, MEMORY]);
        assert_eq!(
            round_order(2, Phase::Download, &[&service])
                .iter()
                .map(|s| s.label())
                .collect::<Vec<_>>(),
            [LABEL]
        );
    }

    #[test]
    fn check_fails_on_wrong_sizes_and_empty_phases() {
        let mut wrong = measured(LABEL, Phase::Download, 1, 10, 100);
        wrong.wrong_size = 1;
        let err = report(vec![wrong]).check().expect_err("a wrong size");
        assert!(
            err.to_string().contains("did not return 1048576 bytes"),
            "{err}"
        );

        let mut failed = measured(LABEL, Phase::Upload, 1, 0, 100);
        failed.stats.errors = 3;
        let err = report(vec![failed]).check().expect_err("no success");
        assert!(
            err.to_string()
                .contains("every storage upload failed (3 errors)"),
            "{err}"
        );
        assert!(report(Vec::new()).check().is_err());
        assert!(report(Vec::new()).ratio(Phase::Upload).is_none());
    }
}
