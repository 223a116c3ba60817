//! `shoal bench pipeline`: images through the whole image pipeline (master, task database,
//! storage, worker) next to the same decode → op → encode done in this process, and how soon
//! a small image is ready on an idle stack.
//!
//! # Inputs
//!
//! Before anything is measured, the bench builds `min(--images, 4)` distinct photo-like RGB
//! images of `--size` in memory — smooth gradients and low-frequency waves plus ±8 of noise
//! per pixel, so PNG compresses them about as well as a photo, not like a flat colour — and
//! encodes each once as PNG (the `image` crate's default settings). Image `n` of a
//! measurement is input `n mod 4`. Each input is also run once through
//! [`shoal_imaging::process`] with `--op` and `--format`, and the result's format, size and
//! (for PNG and WebP results, which are lossless) a hash of its decoded pixels are kept as the
//! **expected result**.
//!
//! # The pipeline measurement
//!
//! `--images` images go through the service with `--concurrency` uploads in flight:
//! `min(--concurrency, --images)` client tasks, each owning one keep-alive HTTP/1.1
//! connection (the crate's lean client), take the next image number from a shared counter
//! until all are taken, and per image
//!
//! 1. `POST /new?op=OP[&format=F]` with the PNG as the body; a 200 answer carries the task id;
//! 2. `GET /isReady?id=N&wait=10s` on the same connection, repeated while it answers `0` —
//!    the master answers as soon as the task settles, so the client sends one request per
//!    10 s of waiting, not a polling storm; `1` means finished, 422 failed.
//!
//! The image's **latency** runs from just before the upload is handed to the connection until
//! the `1` arrived (upload → ready). Any other answer, a failed task, a transport error, or an
//! image not ready 2 minutes after its upload counts as an **error** (and the first one's text
//! is reported); after a transport error the client reconnects. **Images/s** are the images
//! that became ready divided by the time from the first upload to the last `1`, so the short
//! ramp-up and the tail (the last images finishing while fewer are in flight) are included,
//! as they are in the baseline.
//!
//! After each pipeline measurement (outside its timing), the first and the last finished
//! image's results are fetched with `GET /get?id=N`, decoded and compared with the expected
//! result: same format, same size and, for lossless results, the same pixels. A mismatch is a
//! **wrong result** and fails the run.
//!
//! # The baseline
//!
//! The same `--images` images (the same PNG bytes, same order) through
//! [`shoal_imaging::process`] with the same op and format — what a worker does per task —
//! on `--threads` OS threads in this process: each thread takes the next image number from a
//! shared counter until all are taken. No HTTP, no storage, no task database. Images/s are
//! the images divided by the time from starting the threads until the last one returned;
//! the latency shown is one `process` call. Its results' size and format are checked too.
//!
//! `--threads` is also the in-process worker's thread count (tasks processed at once, each on
//! the blocking pool), so both sides may run the same number of images at once; by default it
//! is the number of cores. The pipeline side shares those cores with everything else the
//! stack does per image (HTTP in and out of four services, the storage's writes, the task
//! database) and with the bench's own client, so pipeline/baseline is the share of the bare
//! image processing the whole stack delivers: at 80 % the services cost 20 %.
//!
//! # Rounds
//!
//! Before the first round, `min(--concurrency, --images)` images go through the pipeline and
//! one image per thread through the baseline, unrecorded (connections, discovery, caches and
//! the allocator warm up). Then, as in the other scenarios (see the crate docs), `--rounds`
//! rounds each measure both sides back to back, the baseline first in odd rounds and last in
//! even ones. The summary gives per side the median images/s, p50 and p99 over the rounds;
//! the ratio is the median of the per-round ratios pipeline/baseline, shown with its lowest
//! and highest value. A measurement in which no image succeeded stops the run (the report so
//! far is still printed) and fails it. `--no-baseline` measures the pipeline alone.
//!
//! # Small-image latency
//!
//! After the rounds, with nothing else in flight, `--latency-images` 64×64 PNGs (the same
//! kind of image) go through the pipeline one at a time on one connection, each uploaded only
//! after the previous one was ready plus a 10 ms pause, after one unrecorded image. Their
//! upload → ready latency is reported as p50, p99 and max: the stack's fixed cost per image,
//! since processing 64×64 pixels takes well under a millisecond — the report shows the p50 of
//! the same `process` call done as many times in this process, for comparison. The last
//! image's result is checked as above.
//!
//! # The stack
//!
//! Without `--target`, the bench starts the whole pipeline in this process, as `shoal up`
//! does: the k/v store, the task database, the storage and the master, each on
//! `127.0.0.1:0` with its own temporary data directory (removed afterwards), then a worker
//! with `--threads` threads; each registers in and finds the others through the k/v store.
//! The limits are the defaults `shoal up` runs with (the master's upload limit is raised only
//! if an input is larger than its default). The bench
//! waits until the master's `/readyz` answers 200. With `--target URL` (a master), the images
//! go there; the baseline still runs on this machine with `--threads` threads, so the ratio
//! only means something if the target's workers run on this machine with as many threads.

use std::fmt;
use std::hash::{DefaultHasher, Hasher as _};
use std::io::Cursor;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use shoal_core::config::Token;
use shoal_core::testkit::TestServer;
use shoal_imaging::{Format, Limits, Pipeline};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::client::{Sender, Target, fetch};
use crate::kv::stop_servers;
use crate::load::{RECONNECT_PAUSE, Stats};
use crate::mix::Rng;
use crate::report::{BASELINE, Spread, baseline_first, median_by, median_duration, ms, percent};
use crate::tasks::percent_encode;

/// The label of the pipeline's measurements.
pub const LABEL: &str = "pipeline";

/// The size of the small-image latency measurement's images.
pub const SMALL: ImageSize = ImageSize {
    width: 64,
    height: 64,
};

/// Distinct inputs built; image `n` is input `n mod DISTINCT`.
pub const DISTINCT: usize = 4;

/// The `wait=` of every `isReady` long poll.
const READY_WAIT: Duration = Duration::from_secs(10);

/// How long one image may take from its upload until it is ready before it counts as an error.
const IMAGE_LIMIT: Duration = Duration::from_secs(120);

/// How long the target gets to answer `/readyz` with 200.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Pause between `/readyz` attempts.
const READY_PAUSE: Duration = Duration::from_millis(50);

/// How long one `/get` of a result to check may take.
const CHECK_LIMIT: Duration = Duration::from_secs(60);

/// Pause between the small images, so each finds the stack idle.
const SMALL_PAUSE: Duration = Duration::from_millis(10);

/// The in-process worker's name on its claims.
const WORKER_NAME: &str = "shoal-bench-worker";

/// Flags of `shoal bench pipeline`.
#[derive(clap::Args, Clone, Debug)]
pub struct PipelineArgs {
    /// The master to benchmark (`HOST:PORT` or `http://HOST:PORT`). Without it, the whole
    /// stack (k/v store, task database, storage, master and a worker with --threads threads)
    /// is started in this process on 127.0.0.1 with temporary data directories.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Threads of the in-process worker and of the baseline (default: the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Images per measurement.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub images: u64,

    /// Width and height of every image (`WxH`).
    #[arg(long, value_name = "WxH", default_value = "1024x1024")]
    pub size: ImageSize,

    /// Uploads in flight: clients, each on its own keep-alive connection, uploading an image
    /// and waiting until it is ready before taking the next.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// The operations applied (`swap-rg`, `resize:800x600,grayscale`, …).
    #[arg(long, value_parser = parse_pipeline, default_value = "swap-rg")]
    pub op: Pipeline,

    /// The results' format (`png`, `jpeg`, `webp`); default: the input's (PNG).
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,

    /// How many times to measure; each round measures the pipeline and the baseline back to
    /// back, alternating which goes first, and the ratio is the median of the per-round
    /// ratios.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Measure the baseline too (the default): the same decode → op → encode in this process
    /// on --threads threads, without services.
    #[arg(long, overrides_with = "no_baseline")]
    pub baseline: bool,

    /// Measure the pipeline alone.
    #[arg(long, overrides_with = "baseline")]
    pub no_baseline: bool,

    /// Small (64x64) images sent one at a time on the idle stack after the rounds, for the
    /// upload → ready latency; 0 skips the measurement.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(..=1_000_000))]
    pub latency_images: u32,

    /// Which service the clients talk to: `master` (the seed's `/new` and `isReady?wait=`) or
    /// `frontend` (the public API, `POST /api/v1/tasks` and long polls of
    /// `/api/v1/tasks/{id}?wait=&state=`). In-process, `frontend` also starts the frontend in
    /// front of the master; with --target, it says the target is a frontend.
    #[arg(long, value_enum, default_value_t = Via::Master)]
    pub via: Via,

    /// Bearer token to send to --target.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,
}

impl PipelineArgs {
    /// Flags with every default (in-process stack, 200 images of 1024x1024, 8 in flight,
    /// swap-rg, 3 rounds with the baseline, 50 small images).
    pub fn new() -> Self {
        Self {
            target: None,
            threads: None,
            images: 200,
            size: ImageSize {
                width: 1024,
                height: 1024,
            },
            concurrency: 8,
            op: Pipeline::default(),
            format: None,
            rounds: 3,
            baseline: false,
            no_baseline: false,
            latency_images: 50,
            via: Via::Master,
            token: None,
        }
    }

    /// Whether the baseline is measured.
    pub fn with_baseline(&self) -> bool {
        !self.no_baseline
    }

    /// `--threads`, or the number of cores.
    pub fn thread_count(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            |n| n as usize,
        )
    }
}

impl Default for PipelineArgs {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_pipeline(text: &str) -> Result<Pipeline, String> {
    text.parse::<Pipeline>().map_err(|e| e.to_string())
}

fn parse_format(text: &str) -> Result<Format, String> {
    text.parse::<Format>().map_err(|e| e.to_string())
}

/// The service the bench's clients upload to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// The master's seed routes.
    Master,
    /// The frontend's public API.
    Frontend,
}

/// An image's width and height, written `WxH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSize {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

impl ImageSize {
    /// Width × height.
    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

impl FromStr for ImageSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid size {text:?}: expected WxH, e.g. 1024x768");
        let (w, h) = text.split_once(['x', 'X']).ok_or_else(invalid)?;
        let width: u32 = w.trim().parse().map_err(|_| invalid())?;
        let height: u32 = h.trim().parse().map_err(|_| invalid())?;
        if width == 0 || height == 0 {
            return Err(format!(
                "invalid size {text:?}: both sides must be at least 1"
            ));
        }
        let size = Self { width, height };
        if size.pixels() > shoal_imaging::DEFAULT_MAX_PIXELS {
            return Err(format!(
                "invalid size {text:?}: at most {} pixels (the services' default limit)",
                shoal_imaging::DEFAULT_MAX_PIXELS
            ));
        }
        Ok(size)
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// What one measurement of one side in one round measured.
#[derive(Clone, Debug)]
pub struct PipelineMeasurement {
    /// `pipeline` or `baseline`.
    pub label: String,
    /// The round it belongs to, from 1.
    pub round: usize,
    /// Pipeline: from the first upload until the last image was ready; baseline: from
    /// starting the threads until the last returned.
    pub elapsed: Duration,
    /// Per finished image its latency (pipeline: upload → ready; baseline: one `process`
    /// call), and the images that failed.
    pub stats: Stats,
    /// Results compared with the expected ones.
    pub checked: u64,
    /// Results that differed from the expected ones.
    pub wrong: u64,
    /// What went wrong first (an error or a wrong result), if anything did.
    pub first_problem: Option<String>,
}

impl PipelineMeasurement {
    fn new(label: &str, round: usize) -> Self {
        Self {
            label: label.to_owned(),
            round,
            elapsed: Duration::ZERO,
            stats: Stats::new(),
            checked: 0,
            wrong: 0,
            first_problem: None,
        }
    }

    /// Finished images per second.
    pub fn images_per_sec(&self) -> f64 {
        self.stats.throughput(self.elapsed)
    }

    fn problem(&mut self, text: String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(text);
        }
    }

    fn merge(&mut self, other: PipelineMeasurement) {
        self.stats.merge(&other.stats);
        self.checked += other.checked;
        self.wrong += other.wrong;
        if let Some(text) = other.first_problem {
            self.problem(text);
        }
    }
}

/// The small-image latency on the idle stack.
#[derive(Clone, Debug)]
pub struct LatencyMeasurement {
    /// The images' size (64x64).
    pub size: ImageSize,
    /// Upload → ready of every finished image, and the images that failed.
    pub stats: Stats,
    /// The same `process` call, as many times, in this process.
    pub process: Stats,
    /// Results compared with the expected ones (the last image's).
    pub checked: u64,
    /// Results that differed.
    pub wrong: u64,
    /// What went wrong first, if anything did.
    pub first_problem: Option<String>,
}

/// One side over the rounds it was measured in.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSummary {
    /// How many measurements went into it.
    pub rounds: usize,
    /// Median of the rounds' images/s.
    pub images_per_sec: f64,
    /// Median of the rounds' median latencies.
    pub p50: Option<Duration>,
    /// Median of the rounds' 99th percentile latencies.
    pub p99: Option<Duration>,
    /// The slowest image of any round.
    pub max: Option<Duration>,
    /// Failed images, summed over the rounds.
    pub errors: u64,
    /// Results checked, summed over the rounds.
    pub checked: u64,
    /// Wrong results, summed over the rounds.
    pub wrong: u64,
}

/// Everything one `shoal bench pipeline` run measured, printed with `Display`.
#[derive(Clone, Debug)]
pub struct PipelineReport {
    /// The master's base URL.
    pub target: String,
    /// How the stack was started (`in-process: …` or `external`).
    pub target_kind: String,
    /// Images per measurement.
    pub images: u64,
    /// Their size.
    pub size: ImageSize,
    /// Distinct inputs.
    pub distinct: usize,
    /// The inputs' average PNG size in bytes.
    pub input_bytes: u64,
    /// The operations (canonical text form).
    pub op: String,
    /// The results' format.
    pub format: Format,
    /// Whether the format was asked for (`--format`) rather than the input's.
    pub format_given: bool,
    /// Uploads in flight.
    pub concurrency: usize,
    /// Worker threads (in-process) and baseline threads.
    pub threads: usize,
    /// Rounds asked for (`--rounds`); fewer ran when a measurement had no success.
    pub rounds: usize,
    /// Whether the baseline was measured.
    pub baseline: bool,
    /// Every measurement, in the order it ran.
    pub measurements: Vec<PipelineMeasurement>,
    /// The small-image latency, unless skipped (`--latency-images 0`) or not reached.
    pub latency: Option<LatencyMeasurement>,
    /// Remarks printed at the end.
    pub notes: Vec<String>,
}

impl PipelineReport {
    /// The measurements of `label`, by round.
    pub fn of<'a>(&'a self, label: &'a str) -> impl Iterator<Item = &'a PipelineMeasurement> + 'a {
        self.measurements.iter().filter(move |m| m.label == label)
    }

    /// The labels measured: the baseline first (if measured), then the pipeline.
    pub fn labels(&self) -> Vec<&'static str> {
        [BASELINE, LABEL]
            .into_iter()
            .filter(|label| self.measurements.iter().any(|m| m.label == *label))
            .collect()
    }

    /// The rounds that ran (the highest round number measured).
    pub fn rounds_run(&self) -> usize {
        self.measurements.iter().map(|m| m.round).max().unwrap_or(0)
    }

    /// `label` over every round.
    pub fn summary(&self, label: &str) -> PipelineSummary {
        let rows: Vec<&PipelineMeasurement> = self.of(label).collect();
        PipelineSummary {
            rounds: rows.len(),
            images_per_sec: median_by(
                rows.iter().map(|m| m.images_per_sec()).collect(),
                f64::total_cmp,
                |a, b| (a + b) / 2.0,
            )
            .unwrap_or(0.0),
            p50: median_duration(rows.iter().map(|m| m.stats.quantile(0.5))),
            p99: median_duration(rows.iter().map(|m| m.stats.quantile(0.99))),
            max: rows.iter().filter_map(|m| m.stats.max()).max(),
            errors: rows.iter().map(|m| m.stats.errors).sum(),
            checked: rows.iter().map(|m| m.checked).sum(),
            wrong: rows.iter().map(|m| m.wrong).sum(),
        }
    }

    /// The pipeline's images/s as a percentage of the baseline's in the same round, spread
    /// over the rounds; `None` without a round where both ran and the baseline finished an
    /// image.
    pub fn ratio(&self) -> Option<Spread> {
        let ratios = self
            .of(LABEL)
            .filter_map(|m| {
                let base = self.of(BASELINE).find(|b| b.round == m.round)?;
                let base_rate = base.images_per_sec();
                (base_rate > 0.0).then(|| 100.0 * m.images_per_sec() / base_rate)
            })
            .collect();
        Spread::of(ratios)
    }

    /// Fails when nothing was measured, a measurement (or the small-image latency) finished
    /// no image, or a result was wrong.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.measurements.is_empty() {
            bail!("nothing was measured");
        }
        let why = |problem: &Option<String>| {
            problem
                .as_ref()
                .map_or_else(String::new, |p| format!(": {p}"))
        };
        for m in &self.measurements {
            let round = if self.rounds > 1 {
                format!(" in round {} of {}", m.round, self.rounds)
            } else {
                String::new()
            };
            if m.wrong > 0 {
                bail!(
                    "{} of {} checked {} results were wrong{round}{}",
                    m.wrong,
                    m.checked,
                    m.label,
                    why(&m.first_problem)
                );
            }
            if m.stats.ok() == 0 {
                bail!(
                    "no {} image finished{round} ({} errors){}",
                    m.label,
                    m.stats.errors,
                    why(&m.first_problem)
                );
            }
        }
        if let Some(l) = &self.latency {
            if l.wrong > 0 {
                bail!("the small-image result was wrong{}", why(&l.first_problem));
            }
            if l.stats.ok() == 0 {
                bail!(
                    "no small image finished ({} errors){}",
                    l.stats.errors,
                    why(&l.first_problem)
                );
            }
        }
        Ok(())
    }
}

fn head(f: &mut fmt::Formatter<'_>, prefix: &str, label: &str) -> fmt::Result {
    write!(f, "{prefix:<6} {label:<9}")
}

impl fmt::Display for PipelineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario pipeline  target {} ({})  images {} of {}  op {}  format {}{}  \
             concurrency {}  threads {}  rounds {}",
            self.target,
            self.target_kind,
            self.images,
            self.size,
            self.op,
            self.format,
            if self.format_given {
                ""
            } else {
                " (the input's)"
            },
            self.concurrency,
            self.threads,
            self.rounds,
        )?;
        writeln!(
            f,
            "inputs: {} distinct photo-like {} RGB PNGs, {:.0} KiB on average; latency = \
             upload → ready (isReady?wait=10s)",
            self.distinct,
            self.size,
            self.input_bytes as f64 / 1024.0,
        )?;
        if self.baseline {
            writeln!(
                f,
                "{BASELINE}: shoal_imaging::process (decode → op → encode) on {} OS thread{} in \
                 this process, same images, op and format, no services; latency = one call",
                self.threads,
                if self.threads == 1 { "" } else { "s" },
            )?;
        }
        for m in &self.measurements {
            head(f, &format!("r{}", m.round), &m.label)?;
            writeln!(
                f,
                " {:>7} img  {:>8.2} img/s  p50 {:>8} ms  p99 {:>8} ms  max {:>8} ms  \
                 errors {}  checked {}  wrong {}",
                m.stats.ok(),
                m.images_per_sec(),
                ms(m.stats.quantile(0.5)),
                ms(m.stats.quantile(0.99)),
                ms(m.stats.max()),
                m.stats.errors,
                m.checked,
                m.wrong,
            )?;
        }
        let rounds_run = self.rounds_run();
        writeln!(
            f,
            "median of {rounds_run} round{} (max: slowest of any round; errors, checked, \
             wrong: summed)",
            if rounds_run == 1 { "" } else { "s" },
        )?;
        for label in self.labels() {
            let s = self.summary(label);
            head(f, "median", label)?;
            // No count: the counts of different rounds are not a median of anything useful.
            writeln!(
                f,
                " {:>7}      {:>8.2} img/s  p50 {:>8} ms  p99 {:>8} ms  max {:>8} ms  \
                 errors {}  checked {}  wrong {}",
                "",
                s.images_per_sec,
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                s.errors,
                s.checked,
                s.wrong,
            )?;
        }
        if self.baseline {
            writeln!(
                f,
                "{LABEL}/{BASELINE} images/s (median of per-round ratios): {}",
                percent(self.ratio()),
            )?;
        }
        if let Some(l) = &self.latency {
            writeln!(
                f,
                "idle latency {} one at a time: {} img  p50 {} ms  p99 {} ms  max {} ms  \
                 errors {}  checked {}  wrong {}  (process() alone: p50 {} ms)",
                l.size,
                l.stats.ok(),
                ms(l.stats.quantile(0.5)),
                ms(l.stats.quantile(0.99)),
                ms(l.stats.max()),
                l.stats.errors,
                l.checked,
                l.wrong,
                ms(l.process.quantile(0.5)),
            )?;
        }
        for m in &self.measurements {
            if let Some(problem) = &m.first_problem {
                writeln!(
                    f,
                    "note: r{} {}: first problem: {problem}",
                    m.round, m.label
                )?;
            }
        }
        if let Some(problem) = self.latency.as_ref().and_then(|l| l.first_problem.as_ref()) {
            writeln!(f, "note: idle latency: first problem: {problem}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// What a correct result looks like.
#[derive(Clone, Debug)]
struct Expected {
    format: Format,
    width: u32,
    height: u32,
    /// A hash of the decoded pixels, for lossless formats.
    pixels: Option<u64>,
}

impl Expected {
    /// Fails with what differs when `bytes` is not this result.
    fn compare(&self, bytes: &[u8]) -> Result<(), String> {
        let format = Format::from_magic(bytes);
        if format != Some(self.format) {
            return Err(format!(
                "expected a {} result, got {}",
                self.format,
                format.map_or_else(|| "an unknown format".to_owned(), |f| f.to_string())
            ));
        }
        let image = image::load_from_memory(bytes)
            .map_err(|e| format!("the result does not decode: {e}"))?;
        if (image.width(), image.height()) != (self.width, self.height) {
            return Err(format!(
                "expected {}x{}, got {}x{}",
                self.width,
                self.height,
                image.width(),
                image.height()
            ));
        }
        if let Some(expected) = self.pixels
            && pixel_hash(&image) != expected
        {
            return Err("the pixels differ from the library's result".to_owned());
        }
        Ok(())
    }
}

fn pixel_hash(image: &image::DynamicImage) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(format!("{:?}", image.color()).as_bytes());
    hasher.write(image.as_bytes());
    hasher.finish()
}

/// One input image: its PNG and its expected result.
#[derive(Clone, Debug)]
struct Input {
    png: Bytes,
    expected: Expected,
}

/// What every measurement sends, shared by the clients and the baseline's threads.
#[derive(Debug)]
struct Work {
    inputs: Vec<Input>,
    /// `/new?op=…[&format=…]`, or `/api/v1/tasks?op=…` for the public API.
    path: String,
    /// Whether the clients speak the public API (the frontend) rather than the seed's.
    public: bool,
    pipeline: Pipeline,
    format: Option<Format>,
}

impl Work {
    fn input(&self, n: u64) -> &Input {
        &self.inputs[(n % self.inputs.len() as u64) as usize]
    }
}

/// A smooth, photo-like RGB picture: gradients and low-frequency waves, plus ±8 of noise per
/// pixel, so PNG compresses it about as well as a photo.
fn photo(size: ImageSize, seed: u64) -> image::RgbImage {
    let mut rng = Rng::new(seed);
    let phase = (seed % 97) as f32;
    image::RgbImage::from_fn(size.width, size.height, |x, y| {
        let noise = rng.below(17) as f32 - 8.0;
        let (xf, yf) = (x as f32 + phase * 13.0, y as f32 + phase * 7.0);
        let r = 120.0 + 60.0 * (xf / 37.0).sin() * (yf / 23.0).cos() + xf * 0.05 + noise;
        let g = 100.0 + 50.0 * (xf / 91.0 + yf / 57.0).sin() + yf * 0.06 + noise;
        let b = 90.0 + 70.0 * ((xf * yf).sqrt() / 29.0).cos() + noise;
        image::Rgb([
            r.clamp(0.0, 255.0) as u8,
            g.clamp(0.0, 255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    })
}

/// Builds `count` inputs of `size` and their expected results (CPU-bound: call it on the
/// blocking pool).
fn build_inputs(
    size: ImageSize,
    count: usize,
    pipeline: &Pipeline,
    format: Option<Format>,
) -> anyhow::Result<Vec<Input>> {
    (0..count)
        .map(|i| {
            let picture = image::DynamicImage::ImageRgb8(photo(size, 1 + i as u64));
            let mut png = Cursor::new(Vec::new());
            picture
                .write_to(&mut png, image::ImageFormat::Png)
                .context("cannot encode an input image")?;
            let png = Bytes::from(png.into_inner());
            let processed = shoal_imaging::process(&png, pipeline, format, &Limits::default())
                .with_context(|| format!("the library cannot process a {size} input"))?;
            let lossless = processed.format != Format::Jpeg;
            let pixels = if lossless {
                let image = image::load_from_memory(&processed.bytes)
                    .context("the library's result does not decode")?;
                Some(pixel_hash(&image))
            } else {
                None
            };
            let expected = Expected {
                format: processed.format,
                width: processed.width,
                height: processed.height,
                pixels,
            };
            Ok(Input { png, expected })
        })
        .collect()
}

/// The pipeline started in this process.
struct Stack {
    dir: tempfile::TempDir,
    /// kv, tasks, storage, master, in start order.
    servers: Vec<(&'static str, TestServer)>,
    worker_stop: Option<oneshot::Sender<()>>,
    worker: JoinHandle<anyhow::Result<()>>,
    /// Where the clients send their uploads: the master, or the frontend in front of it.
    entry_url: String,
}

impl Stack {
    /// Starts kv → tasks → storage → master → worker (→ frontend with `frontend`), as
    /// `shoal up` does, on `127.0.0.1:0`.
    async fn start(threads: u32, max_upload: u64, frontend: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-pipeline-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let mut servers = Vec::new();
        let kv_config = shoal_kv::Config::with_data_dir(dir.path().join("kv"));
        let kv = TestServer::start(move |l, s| shoal_kv::run(kv_config, l, s))
            .await
            .context("cannot start the in-process k/v store")?;
        let kv_url = kv.base_url.clone();
        servers.push(("k/v store", kv));
        let mut tasks_config = shoal_tasks::Config::with_data_dir(dir.path().join("tasks"));
        tasks_config.common.kv = vec![kv_url.clone()];
        let tasks = TestServer::start(move |l, s| shoal_tasks::run(tasks_config, l, s))
            .await
            .context("cannot start the in-process task database")?;
        servers.push(("task database", tasks));
        let mut storage_config = shoal_storage::Config::with_data_dir(dir.path().join("storage"));
        storage_config.common.kv = vec![kv_url.clone()];
        let storage = TestServer::start(move |l, s| shoal_storage::run(storage_config, l, s))
            .await
            .context("cannot start the in-process storage")?;
        servers.push(("storage", storage));
        let mut master_config = shoal_master::Config::with_kv(kv_url.clone());
        master_config.max_upload = master_config.max_upload.max(max_upload);
        let master = TestServer::start(move |l, s| shoal_master::run(master_config, l, s))
            .await
            .context("cannot start the in-process master")?;
        let mut entry_url = master.base_url.clone();
        servers.push(("master", master));
        if frontend {
            let mut config = shoal_frontend::Config::with_kv(kv_url.clone());
            config.max_upload = config.max_upload.max(max_upload);
            let frontend = TestServer::start(move |l, s| shoal_frontend::run(config, l, s))
                .await
                .context("cannot start the in-process frontend")?;
            entry_url = frontend.base_url.clone();
            servers.push(("frontend", frontend));
        }
        let mut worker_config = shoal_worker::Config::with_kv(kv_url);
        worker_config.threads = Some(threads);
        worker_config.name = Some(WORKER_NAME.to_owned());
        let (worker_stop, stopped) = oneshot::channel::<()>();
        let worker = tokio::spawn(shoal_worker::run(worker_config, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            dir,
            servers,
            worker_stop: Some(worker_stop),
            worker,
            entry_url,
        })
    }

    /// The first service that has stopped on its own, if any.
    fn stopped(&self) -> Option<&'static str> {
        if self.worker.is_finished() {
            return Some("worker");
        }
        self.servers
            .iter()
            .find(|(_, server)| server.is_finished())
            .map(|(name, _)| *name)
    }

    /// Stops the worker, then the servers newest first, then removes the data; the run's
    /// error (`result`) wins over the services'.
    async fn stop<T>(mut self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Some(stop) = self.worker_stop.take() {
            let _ = stop.send(());
        }
        let worker = match self.worker.await {
            Ok(outcome) => outcome.context("the in-process worker failed"),
            Err(e) => Err(anyhow::Error::new(e).context("the in-process worker panicked")),
        };
        let result = match (result, worker) {
            (Ok(_), Err(e)) => Err(e),
            (result, _) => result,
        };
        let result = stop_servers(self.servers, result).await;
        let removed = self
            .dir
            .close()
            .context("cannot remove the temporary data directory");
        match (result, removed) {
            (Ok(_), Err(e)) => Err(e),
            (result, _) => result,
        }
    }
}

/// Waits until `target` answers `/readyz` with 200 (the master reaches the task database and
/// the storage).
async fn wait_ready(target: &Target) -> anyhow::Result<()> {
    target
        .probe(READY_LIMIT)
        .await
        .with_context(|| format!("the master at {} is not up", target.base_url))?;
    let deadline = Instant::now() + READY_LIMIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let mut sender = target.connect().await?;
            let request = target.request(Method::GET, "/readyz", Bytes::new())?;
            fetch(&mut sender, request).await
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok((status, _))) if status.is_success() => return Ok(()),
            Ok(Ok((status, body))) => {
                last = format!("{status}: {}", String::from_utf8_lossy(&body).trim());
            }
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => break,
        }
        tokio::time::sleep(READY_PAUSE).await;
    }
    bail!(
        "the master at {} was not ready within {} (last /readyz: {last})",
        target.base_url,
        humantime::format_duration(READY_LIMIT)
    )
}

/// Why an image did not finish.
enum Failure {
    /// The connection is unusable: reconnect.
    Broken(String),
    /// An answer said no (or the task failed, or took too long).
    Refused(String),
}

impl Failure {
    fn text(&self) -> &str {
        match self {
            Failure::Broken(text) | Failure::Refused(text) => text,
        }
    }
}

/// Uploads `body` and waits until its task is ready; returns the task id and when it became
/// ready.
async fn upload_and_wait(
    sender: &mut Sender,
    target: &Target,
    work: &Work,
    body: &Bytes,
    deadline: Instant,
) -> Result<(u64, Instant), Failure> {
    if work.public {
        return upload_and_wait_public(sender, target, &work.path, body, deadline).await;
    }
    let path = work.path.as_str();
    let request = target
        .request(Method::POST, path, body.clone())
        .map_err(|e| Failure::Refused(format!("{e:#}")))?;
    let (status, answer) = match tokio::time::timeout_at(deadline, fetch(sender, request)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(Failure::Broken(format!("POST /new: {e:#}"))),
        Err(_) => return Err(Failure::Broken("POST /new timed out".to_owned())),
    };
    let text = String::from_utf8_lossy(&answer);
    if status != StatusCode::OK {
        return Err(Failure::Refused(format!(
            "POST /new answered {status}: {}",
            text.trim()
        )));
    }
    let id: u64 = text.trim().parse().map_err(|_| {
        Failure::Refused(format!("POST /new answered {:?}, not an id", text.trim()))
    })?;
    let wait = format!("/isReady?id={id}&wait={}s", READY_WAIT.as_secs());
    loop {
        let request = target
            .request(Method::GET, &wait, Bytes::new())
            .map_err(|e| Failure::Refused(format!("{e:#}")))?;
        let (status, answer) = match tokio::time::timeout_at(deadline, fetch(sender, request)).await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Failure::Broken(format!("GET /isReady: {e:#}"))),
            Err(_) => {
                return Err(Failure::Broken(format!(
                    "task {id} not ready {} after its upload",
                    humantime::format_duration(IMAGE_LIMIT)
                )));
            }
        };
        let ready_at = Instant::now();
        let text = String::from_utf8_lossy(&answer);
        match (status, text.trim()) {
            (StatusCode::OK, "1") => return Ok((id, ready_at)),
            (StatusCode::OK, "0") if ready_at < deadline => {}
            (StatusCode::OK, "0") => {
                return Err(Failure::Refused(format!(
                    "task {id} not ready {} after its upload",
                    humantime::format_duration(IMAGE_LIMIT)
                )));
            }
            (StatusCode::UNPROCESSABLE_ENTITY, text) => {
                return Err(Failure::Refused(format!("task {id} failed: {text}")));
            }
            (status, text) => {
                return Err(Failure::Refused(format!(
                    "GET /isReady?id={id} answered {status}: {text}"
                )));
            }
        }
    }
}

/// [`upload_and_wait`] through the public API: `201 {"id": N}`, then long polls keyed by the
/// state last seen.
async fn upload_and_wait_public(
    sender: &mut Sender,
    target: &Target,
    path: &str,
    body: &Bytes,
    deadline: Instant,
) -> Result<(u64, Instant), Failure> {
    let request = target
        .request(Method::POST, path, body.clone())
        .map_err(|e| Failure::Refused(format!("{e:#}")))?;
    let (status, answer) = match tokio::time::timeout_at(deadline, fetch(sender, request)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(Failure::Broken(format!("POST /api/v1/tasks: {e:#}"))),
        Err(_) => return Err(Failure::Broken("POST /api/v1/tasks timed out".to_owned())),
    };
    let text = String::from_utf8_lossy(&answer);
    if status != StatusCode::CREATED {
        return Err(Failure::Refused(format!(
            "POST /api/v1/tasks answered {status}: {}",
            text.trim()
        )));
    }
    let id = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["id"].as_u64())
        .ok_or_else(|| Failure::Refused(format!("POST /api/v1/tasks answered {text:?}, no id")))?;
    let mut state = String::from("queued");
    loop {
        let wait = format!(
            "/api/v1/tasks/{id}?wait={}s&state={state}",
            READY_WAIT.as_secs()
        );
        let request = target
            .request(Method::GET, &wait, Bytes::new())
            .map_err(|e| Failure::Refused(format!("{e:#}")))?;
        let (status, answer) = match tokio::time::timeout_at(deadline, fetch(sender, request)).await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Failure::Broken(format!("GET /api/v1/tasks/{id}: {e:#}"))),
            Err(_) => {
                return Err(Failure::Broken(format!(
                    "task {id} not ready {} after its upload",
                    humantime::format_duration(IMAGE_LIMIT)
                )));
            }
        };
        let ready_at = Instant::now();
        let task: serde_json::Value = match (status, serde_json::from_slice(&answer)) {
            (StatusCode::OK, Ok(task)) => task,
            _ => {
                return Err(Failure::Refused(format!(
                    "GET /api/v1/tasks/{id} answered {status}: {}",
                    String::from_utf8_lossy(&answer).trim()
                )));
            }
        };
        match task["state"].as_str().unwrap_or("") {
            "finished" => return Ok((id, ready_at)),
            "failed" => {
                return Err(Failure::Refused(format!(
                    "task {id} failed: {}",
                    task["error"]
                )));
            }
            _ if ready_at >= deadline => {
                return Err(Failure::Refused(format!(
                    "task {id} not ready {} after its upload",
                    humantime::format_duration(IMAGE_LIMIT)
                )));
            }
            other => other.clone_into(&mut state),
        }
    }
}

/// Fetches task `id`'s result and compares it with `expected`.
async fn check_result(
    sender: &mut Option<Sender>,
    target: &Target,
    public: bool,
    id: u64,
    expected: &Expected,
) -> Result<(), String> {
    let attempt = async {
        let conn = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => target.connect().await?,
        };
        let sender = sender.insert(conn);
        let path = if public {
            format!("/api/v1/tasks/{id}/result")
        } else {
            format!("/get?id={id}")
        };
        let request = target.request(Method::GET, &path, Bytes::new())?;
        fetch(sender, request).await
    };
    let (status, body) = tokio::time::timeout(CHECK_LIMIT, attempt)
        .await
        .map_err(|_| format!("GET /get?id={id} timed out"))?
        .map_err(|e| format!("GET /get?id={id}: {e:#}"))?;
    if status != StatusCode::OK {
        return Err(format!(
            "GET /get?id={id} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let expected = expected.clone();
    tokio::task::spawn_blocking(move || expected.compare(&body))
        .await
        .map_err(|e| format!("the check panicked: {e}"))?
        .map_err(|e| format!("task {id}: {e}"))
}

/// What one client did.
struct Tally {
    stats: Stats,
    first_problem: Option<String>,
    first_sent: Option<Instant>,
    last_ready: Option<Instant>,
    /// Finished images: (task id, image number).
    finished: Vec<(u64, u64)>,
}

/// One client: takes image numbers from `next` until `count` are taken, uploading each and
/// waiting until it is ready.
async fn client(target: Arc<Target>, work: Arc<Work>, next: Arc<AtomicU64>, count: u64) -> Tally {
    let mut tally = Tally {
        stats: Stats::new(),
        first_problem: None,
        first_sent: None,
        last_ready: None,
        finished: Vec::new(),
    };
    let mut conn: Option<Sender> = None;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= count {
            break;
        }
        let deadline = Instant::now() + IMAGE_LIMIT;
        let mut failure = None;
        if conn.as_ref().is_none_or(Sender::is_closed) {
            match tokio::time::timeout_at(deadline, target.connect()).await {
                Ok(Ok(sender)) => conn = Some(sender),
                Ok(Err(e)) => failure = Some(Failure::Broken(format!("{e:#}"))),
                Err(_) => failure = Some(Failure::Broken("connecting timed out".to_owned())),
            }
        }
        if let Some(sender) = conn.as_mut().filter(|_| failure.is_none()) {
            let sent = Instant::now();
            tally.first_sent.get_or_insert(sent);
            let input = work.input(n);
            match upload_and_wait(sender, &target, &work, &input.png, deadline).await {
                Ok((id, ready_at)) => {
                    tally.stats.record(ready_at - sent);
                    tally.last_ready = Some(tally.last_ready.map_or(ready_at, |t| t.max(ready_at)));
                    tally.finished.push((id, n));
                    continue;
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(failure) = failure {
            tally.stats.errors += 1;
            if tally.first_problem.is_none() {
                tally.first_problem = Some(failure.text().to_owned());
            }
            if matches!(failure, Failure::Broken(_)) {
                conn = None;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
    tally
}

/// Sends `count` images through the pipeline with `concurrency` in flight, then checks the
/// first and the last finished image's results.
async fn run_pipeline(
    target: &Arc<Target>,
    work: &Arc<Work>,
    count: u64,
    concurrency: usize,
    round: usize,
) -> anyhow::Result<PipelineMeasurement> {
    let clients = u64::try_from(concurrency).unwrap_or(u64::MAX).min(count);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        tasks.spawn(client(
            Arc::clone(target),
            Arc::clone(work),
            Arc::clone(&next),
            count,
        ));
    }
    let mut m = PipelineMeasurement::new(LABEL, round);
    let mut first_sent: Option<Instant> = None;
    let mut last_ready: Option<Instant> = None;
    let mut finished = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.context("a client panicked")?;
        m.stats.merge(&tally.stats);
        if let Some(p) = tally.first_problem {
            m.problem(p);
        }
        first_sent = first_sent.into_iter().chain(tally.first_sent).min();
        last_ready = last_ready.into_iter().chain(tally.last_ready).max();
        finished.extend(tally.finished);
    }
    m.elapsed = match (first_sent, last_ready) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => started.elapsed(),
    };
    finished.sort_unstable_by_key(|(_, n)| *n);
    let mut samples = Vec::new();
    samples.extend(finished.first());
    if finished.len() > 1 {
        samples.extend(finished.last());
    }
    let mut conn = None;
    for &(id, n) in samples {
        m.checked += 1;
        if let Err(problem) =
            check_result(&mut conn, target, work.public, id, &work.input(n).expected).await
        {
            m.wrong += 1;
            m.problem(problem);
        }
    }
    Ok(m)
}

/// Runs `count` images through [`shoal_imaging::process`] on `threads` OS threads.
async fn run_baseline(
    work: &Arc<Work>,
    count: u64,
    threads: usize,
    round: usize,
) -> anyhow::Result<PipelineMeasurement> {
    let work = Arc::clone(work);
    tokio::task::spawn_blocking(move || {
        let next = AtomicU64::new(0);
        let limits = Limits::default();
        let started = std::time::Instant::now();
        let mut m = PipelineMeasurement::new(BASELINE, round);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (work, next, limits) = (&work, &next, &limits);
                    scope.spawn(move || {
                        let mut mine = PipelineMeasurement::new(BASELINE, round);
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= count {
                                break;
                            }
                            let input = work.input(n);
                            let t = std::time::Instant::now();
                            match shoal_imaging::process(
                                &input.png,
                                &work.pipeline,
                                work.format,
                                limits,
                            ) {
                                Ok(out) => {
                                    mine.stats.record(t.elapsed());
                                    let e = &input.expected;
                                    mine.checked += 1;
                                    if (out.format, out.width, out.height)
                                        != (e.format, e.width, e.height)
                                    {
                                        mine.wrong += 1;
                                        mine.problem(format!(
                                            "expected a {}x{} {}, got a {}x{} {}",
                                            e.width,
                                            e.height,
                                            e.format,
                                            out.width,
                                            out.height,
                                            out.format
                                        ));
                                    }
                                    std::hint::black_box(out);
                                }
                                Err(e) => {
                                    mine.stats.errors += 1;
                                    mine.problem(e.to_string());
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            for handle in handles {
                match handle.join() {
                    Ok(mine) => m.merge(mine),
                    Err(_) => {
                        m.stats.errors += 1;
                        m.problem("a baseline thread panicked".to_owned());
                    }
                }
            }
        });
        m.elapsed = started.elapsed();
        m
    })
    .await
    .context("the baseline panicked")
}

/// Sends `count` small images one at a time (after one unrecorded), each once the previous
/// is ready and a short pause has passed; checks the last result; then times `process` on the
/// same image as many times.
async fn run_latency(
    target: &Arc<Target>,
    work: &Arc<Work>,
    count: u32,
) -> anyhow::Result<LatencyMeasurement> {
    let input = work.input(0).clone();
    let mut l = LatencyMeasurement {
        size: SMALL,
        stats: Stats::new(),
        process: Stats::new(),
        checked: 0,
        wrong: 0,
        first_problem: None,
    };
    let mut conn: Option<Sender> = None;
    let mut last = None;
    for i in 0..=count {
        tokio::time::sleep(SMALL_PAUSE).await;
        let deadline = Instant::now() + IMAGE_LIMIT;
        if conn.as_ref().is_none_or(Sender::is_closed) {
            match tokio::time::timeout_at(deadline, target.connect()).await {
                Ok(Ok(sender)) => conn = Some(sender),
                Ok(Err(_)) | Err(_) => {
                    l.stats.errors += u64::from(i > 0);
                    l.first_problem
                        .get_or_insert_with(|| format!("cannot connect to {}", target.base_url));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };
        let sent = Instant::now();
        match upload_and_wait(sender, target, work, &input.png, deadline).await {
            Ok((id, ready_at)) => {
                if i > 0 {
                    l.stats.record(ready_at - sent);
                }
                last = Some(id);
            }
            Err(failure) => {
                l.stats.errors += u64::from(i > 0);
                l.first_problem
                    .get_or_insert_with(|| failure.text().to_owned());
                if matches!(failure, Failure::Broken(_)) {
                    conn = None;
                }
            }
        }
    }
    if let Some(id) = last {
        l.checked += 1;
        if let Err(problem) =
            check_result(&mut conn, target, work.public, id, &input.expected).await
        {
            l.wrong += 1;
            l.first_problem.get_or_insert(problem);
        }
    }
    let work = Arc::clone(work);
    l.process = tokio::task::spawn_blocking(move || {
        let mut stats = Stats::new();
        let limits = Limits::default();
        for _ in 0..count {
            let t = std::time::Instant::now();
            match shoal_imaging::process(&input.png, &work.pipeline, work.format, &limits) {
                Ok(out) => {
                    stats.record(t.elapsed());
                    std::hint::black_box(out);
                }
                Err(_) => stats.errors += 1,
            }
        }
        stats
    })
    .await
    .context("timing process() panicked")?;
    Ok(l)
}

/// The sides measured in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Pipeline,
    Baseline,
}

/// The run's settings, shared by every measurement.
struct Plan<'a> {
    target: &'a Arc<Target>,
    work: &'a Arc<Work>,
    small: &'a Arc<Work>,
    images: u64,
    concurrency: usize,
    threads: usize,
    rounds: usize,
    baseline: bool,
    latency_images: u32,
    stack: Option<&'a Stack>,
}

/// Warms up, measures the rounds, then the small-image latency, into `report`. Stops early
/// (Ok) after a measurement without a finished image; fails when the target is not ready or
/// an in-process service stopped.
async fn run_rounds(plan: &Plan<'_>, report: &mut PipelineReport) -> anyhow::Result<()> {
    wait_ready(plan.target).await?;
    let warm = plan.images.min(plan.concurrency as u64);
    eprintln!(
        "bench: warming up: {warm} image{} through the pipeline{}",
        if warm == 1 { "" } else { "s" },
        if plan.baseline {
            format!(", {} through the baseline", plan.threads)
        } else {
            String::new()
        }
    );
    let warmup = run_pipeline(plan.target, plan.work, warm, plan.concurrency, 0).await?;
    if warmup.stats.ok() == 0 {
        bail!(
            "no image got through the pipeline during the warmup ({} errors){}",
            warmup.stats.errors,
            warmup
                .first_problem
                .map_or_else(String::new, |p| format!(": {p}"))
        );
    }
    if plan.baseline {
        run_baseline(plan.work, plan.threads as u64, plan.threads, 0).await?;
    }
    let rounds = plan.rounds;
    for round in 1..=rounds {
        let order: &[Side] = if !plan.baseline {
            &[Side::Pipeline]
        } else if baseline_first(round) {
            &[Side::Baseline, Side::Pipeline]
        } else {
            &[Side::Pipeline, Side::Baseline]
        };
        for side in order {
            let m = match side {
                Side::Pipeline => {
                    eprintln!(
                        "bench: round {round}/{rounds}: {LABEL}: {} images, {} in flight, at {}",
                        plan.images, plan.concurrency, plan.target.base_url
                    );
                    run_pipeline(plan.target, plan.work, plan.images, plan.concurrency, round)
                        .await?
                }
                Side::Baseline => {
                    eprintln!(
                        "bench: round {round}/{rounds}: {BASELINE}: {} images on {} threads",
                        plan.images, plan.threads
                    );
                    run_baseline(plan.work, plan.images, plan.threads, round).await?
                }
            };
            let failed = m.stats.ok() == 0;
            eprintln!(
                "bench:   {:.2} images/s, {} errors",
                m.images_per_sec(),
                m.stats.errors
            );
            report.measurements.push(m);
            if let Some(name) = plan.stack.and_then(Stack::stopped) {
                bail!("the in-process {name} stopped during round {round}");
            }
            if failed {
                eprintln!("bench: no image finished in round {round}; skipping the rest");
                return Ok(());
            }
        }
    }
    if plan.latency_images > 0 {
        eprintln!(
            "bench: idle latency: {} images of {SMALL}, one at a time",
            plan.latency_images
        );
        report.latency = Some(run_latency(plan.target, plan.small, plan.latency_images).await?);
        if let Some(name) = plan.stack.and_then(Stack::stopped) {
            bail!("the in-process {name} stopped during the latency measurement");
        }
    }
    Ok(())
}

/// The `/new` path for `pipeline` and `format`.
fn new_path(pipeline: &Pipeline, format: Option<Format>) -> String {
    let mut path = format!("/new?op={}", percent_encode(&pipeline.to_string()));
    if let Some(format) = format {
        path.push_str(&format!("&format={format}"));
    }
    path
}

/// Runs the scenario and returns what it measured. Fails when the inputs cannot be built or
/// processed, the stack cannot be started, reached or made ready, or an in-process service
/// stops; a run with a measurement in which no image finished still returns its report,
/// holding the measurements up to that one (see [`PipelineReport::check`]).
pub async fn measure(args: &PipelineArgs) -> anyhow::Result<PipelineReport> {
    let threads = args.thread_count();
    let concurrency = usize::try_from(args.concurrency).context("--concurrency out of range")?;
    let rounds = usize::try_from(args.rounds).context("--rounds out of range")?;
    let distinct = usize::try_from(args.images.min(DISTINCT as u64)).unwrap_or(DISTINCT);
    let (pipeline, format, size) = (args.op.clone(), args.format, args.size);
    eprintln!("bench: building {distinct} photo-like {size} PNG inputs and their expected results");
    let (inputs, small_inputs) = tokio::task::spawn_blocking(move || {
        let inputs = build_inputs(size, distinct, &pipeline, format)?;
        let small = build_inputs(SMALL, 1, &pipeline, format)?;
        anyhow::Ok((inputs, small))
    })
    .await
    .context("building the inputs panicked")??;
    let input_bytes =
        inputs.iter().map(|i| i.png.len() as u64).sum::<u64>() / inputs.len().max(1) as u64;
    let largest = inputs
        .iter()
        .chain(&small_inputs)
        .map(|i| i.png.len() as u64)
        .max()
        .unwrap_or(0);
    let public = args.via == Via::Frontend;
    let path = if public {
        new_path(&args.op, args.format).replacen("/new?", "/api/v1/tasks?", 1)
    } else {
        new_path(&args.op, args.format)
    };
    let output_format = inputs
        .first()
        .map_or(Format::Png, |input| input.expected.format);
    let work = Arc::new(Work {
        inputs,
        path: path.clone(),
        public,
        pipeline: args.op.clone(),
        format: args.format,
    });
    let small = Arc::new(Work {
        inputs: small_inputs,
        path,
        public,
        pipeline: args.op.clone(),
        format: args.format,
    });

    let mut report = PipelineReport {
        target: String::new(),
        target_kind: String::new(),
        images: args.images,
        size,
        distinct,
        input_bytes,
        op: args.op.to_string(),
        format: output_format,
        format_given: args.format.is_some(),
        concurrency,
        threads,
        rounds,
        baseline: args.with_baseline(),
        measurements: Vec::new(),
        latency: None,
        notes: Vec::new(),
    };
    let default_upload = shoal_master::Config::with_kv("").max_upload;
    let (stack, target) = match &args.target {
        Some(url) => (None, Target::parse(url, args.token.as_ref())),
        None => {
            let threads = u32::try_from(threads).context("--threads out of range")?;
            if largest > default_upload {
                report.notes.push(format!(
                    "the in-process master's upload limit was raised from {default_upload} to \
                     {largest} bytes to take these inputs"
                ));
            }
            let stack = Stack::start(threads, largest, public).await?;
            let target = Target::parse(&stack.entry_url, None);
            (Some(stack), target)
        }
    };
    let target = match target {
        Ok(target) => Arc::new(target),
        Err(e) => {
            return match stack {
                Some(stack) => stack.stop(Err(e)).await,
                None => Err(e),
            };
        }
    };
    report.target = target.base_url.clone();
    report.target_kind = match &args.target {
        Some(_) => "external".to_owned(),
        None => format!(
            "in-process: k/v store, task database, storage, master, worker with {threads} \
             thread{}{}",
            if threads == 1 { "" } else { "s" },
            if public {
                ", frontend (clients use its public API)"
            } else {
                ""
            }
        ),
    };
    if args.target.is_some() && args.with_baseline() {
        report.notes.push(format!(
            "--target given: the baseline ran on this machine with {threads} threads, so the \
             ratio only means something if the target's workers run here with as many"
        ));
    }
    let plan = Plan {
        target: &target,
        work: &work,
        small: &small,
        images: args.images,
        concurrency,
        threads,
        rounds,
        baseline: args.with_baseline(),
        latency_images: args.latency_images,
        stack: stack.as_ref(),
    };
    let result = run_rounds(&plan, &mut report).await;
    match stack {
        Some(stack) => stack.stop(result).await?,
        None => result?,
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        pipeline: PipelineArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "bench",
            "--target",
            "127.0.0.1:3003",
            "--threads",
            "3",
            "--images",
            "20",
            "--size",
            "640x480",
            "--concurrency",
            "4",
            "--op",
            "resize:320x240,grayscale",
            "--format",
            "jpeg",
            "--rounds",
            "5",
            "--no-baseline",
            "--latency-images",
            "0",
        ])
        .expect("flags parse");
        let args = cli.pipeline;
        assert_eq!(args.thread_count(), 3);
        assert_eq!(args.images, 20);
        assert_eq!(
            args.size,
            ImageSize {
                width: 640,
                height: 480
            }
        );
        assert_eq!(args.concurrency, 4);
        assert_eq!(args.op.to_string(), "resize:320x240,grayscale");
        assert_eq!(args.format, Some(Format::Jpeg));
        assert_eq!(args.rounds, 5);
        assert!(!args.with_baseline());
        assert_eq!(args.latency_images, 0);

        let defaults = Cli::try_parse_from(["bench"])
            .expect("defaults parse")
            .pipeline;
        let new = PipelineArgs::new();
        assert_eq!(defaults.images, new.images);
        assert_eq!(defaults.size, new.size);
        assert_eq!(defaults.concurrency, new.concurrency);
        assert_eq!(defaults.op, new.op);
        assert_eq!(defaults.op.to_string(), "swap-rg");
        assert_eq!(defaults.rounds, new.rounds);
        assert_eq!(defaults.latency_images, new.latency_images);
        assert!(defaults.with_baseline());
        assert!(defaults.format.is_none());
        // --baseline is the default; the last of --baseline / --no-baseline wins.
        let on = Cli::try_parse_from(["bench", "--no-baseline", "--baseline"]).expect("parse");
        assert!(on.pipeline.with_baseline());

        for bad in [
            &["--size", "0x10"][..],
            &["--size", "100"],
            &["--size", "10000x10000"],
            &["--op", "sharpen"],
            &["--format", "gif"],
            &["--images", "0"],
            &["--concurrency", "0"],
            &["--rounds", "0"],
            &["--threads", "0"],
        ] {
            let args = std::iter::once("bench").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn builds_paths_and_inputs() {
        let pipeline: Pipeline = "resize:8x6,grayscale".parse().expect("op");
        assert_eq!(
            new_path(&pipeline, Some(Format::WebP)),
            "/new?op=resize%3A8x6%2Cgrayscale&format=webp"
        );
        assert_eq!(new_path(&Pipeline::default(), None), "/new?op=swap-rg");

        let size = ImageSize {
            width: 16,
            height: 12,
        };
        let inputs = build_inputs(size, 2, &pipeline, None).expect("inputs");
        assert_ne!(inputs[0].png, inputs[1].png, "distinct inputs");
        let e = &inputs[0].expected;
        assert_eq!((e.format, e.width, e.height), (Format::Png, 8, 6));
        let result = shoal_imaging::process(&inputs[0].png, &pipeline, None, &Limits::default())
            .expect("processes");
        assert_eq!(e.compare(&result.bytes), Ok(()));
        // Another image's result has other pixels; the input itself has another size.
        let other = shoal_imaging::process(&inputs[1].png, &pipeline, None, &Limits::default())
            .expect("processes");
        assert!(e.compare(&other.bytes).is_err());
        assert!(e.compare(&inputs[0].png).is_err());
        assert!(e.compare(b"not an image").is_err());
    }

    fn measured(label: &str, round: usize, images: u64, secs: u64) -> PipelineMeasurement {
        let mut m = PipelineMeasurement::new(label, round);
        m.elapsed = Duration::from_secs(secs);
        for _ in 0..images {
            m.stats.record(Duration::from_millis(100));
        }
        m.checked = 2;
        m
    }

    fn report(measurements: Vec<PipelineMeasurement>) -> PipelineReport {
        PipelineReport {
            target: "http://127.0.0.1:1".into(),
            target_kind: "in-process".into(),
            images: 10,
            size: ImageSize {
                width: 32,
                height: 32,
            },
            distinct: 4,
            input_bytes: 2048,
            op: "swap-rg".into(),
            format: Format::Png,
            format_given: false,
            concurrency: 2,
            threads: 1,
            rounds: 3,
            baseline: true,
            measurements,
            latency: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn reports_ratios_and_checks() {
        // pipeline/baseline per round: 80%, 50%, 100%.
        let mut report = report(vec![
            measured(BASELINE, 1, 10, 1),
            measured(LABEL, 1, 8, 1),
            measured(LABEL, 2, 10, 2),
            measured(BASELINE, 2, 10, 1),
            measured(BASELINE, 3, 10, 1),
            measured(LABEL, 3, 10, 1),
        ]);
        let ratio = report.ratio().expect("ratio");
        assert_eq!(
            ratio,
            Spread {
                median: 80.0,
                min: 50.0,
                max: 100.0
            }
        );
        assert!((report.summary(LABEL).images_per_sec - 8.0).abs() < 1e-9);
        assert_eq!(report.summary(LABEL).checked, 6);
        assert_eq!(report.labels(), [BASELINE, LABEL]);
        report.check().expect("fine");
        let text = report.to_string();
        assert!(
            text.starts_with("scenario pipeline  target http://"),
            "{text}"
        );
        assert!(
            text.contains(
                "pipeline/baseline images/s (median of per-round ratios): 80.0% (50.0–100.0%)"
            ),
            "{text}"
        );
        assert!(
            text.contains("r1     baseline       10 img     10.00 img/s"),
            "{text}"
        );
        assert!(
            text.contains("median pipeline                   8.00 img/s"),
            "{text}"
        );
        assert!(!text.contains("idle latency"), "{text}");

        let mut stats = Stats::new();
        stats.record(Duration::from_millis(1));
        report.latency = Some(LatencyMeasurement {
            size: SMALL,
            stats,
            process: Stats::new(),
            checked: 1,
            wrong: 0,
            first_problem: None,
        });
        let text = report.to_string();
        assert!(
            text.contains("idle latency 64x64 one at a time: 1 img  p50 1.00 ms"),
            "{text}"
        );
        report.check().expect("fine");

        report.measurements[1].wrong = 1;
        report.measurements[1].first_problem = Some("expected 8x8".into());
        let err = report.check().expect_err("a wrong result");
        assert_eq!(
            err.to_string(),
            "1 of 2 checked pipeline results were wrong in round 1 of 3: expected 8x8"
        );
        report.measurements[1].wrong = 0;
        report.measurements[2].stats = Stats::new();
        report.measurements[2].stats.errors = 10;
        let err = report.check().expect_err("nothing finished");
        assert!(
            err.to_string()
                .starts_with("no pipeline image finished in round 2 of 3 (10 errors)"),
            "{err}"
        );
        assert!(
            report
                .to_string()
                .contains("note: r1 pipeline: first problem: expected 8x8")
        );
    }
}
