//! The closed-loop load: N tasks, one connection each, firing requests back to back until
//! the deadline, each recording into its own histograms; merged once at the end.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::client::{Sender, Target, exchange};
use crate::mix::{Mix, Op, Rng};

/// Highest latency tracked exactly (60 s, in microseconds); slower requests count as 60 s.
const MAX_LATENCY_US: u64 = 60_000_000;

/// How long past the deadline a request may still take before the task gives up on it.
pub(crate) const STRAGGLER_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed connect, so an unreachable target is not hammered in a tight loop.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Successful requests' latencies and the count of failed ones, for one operation or all.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of each successful (2xx) request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Non-2xx responses plus transport errors (refused connections, resets, timeouts).
    pub errors: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty: 1 µs to 60 s at three significant digits.
    pub fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            errors: 0,
        }
    }

    /// Records one successful request.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us);
    }

    /// Successful requests.
    pub fn ok(&self) -> u64 {
        self.latency_us.len()
    }

    /// Adds `other`'s requests to these.
    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so adding cannot fail; saturate rather than panic if it
        // ever did.
        if self.latency_us.add(&other.latency_us).is_err() {
            for v in other.latency_us.iter_recorded() {
                self.latency_us
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.errors += other.errors;
    }

    /// Successful requests per second over `elapsed`.
    pub fn throughput(&self, elapsed: Duration) -> f64 {
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok() as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0..=1), or `None` without successful requests.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.latency_us.is_empty())
            .then(|| Duration::from_micros(self.latency_us.value_at_quantile(q)))
    }

    /// The slowest successful request.
    pub fn max(&self) -> Option<Duration> {
        (!self.latency_us.is_empty()).then(|| Duration::from_micros(self.latency_us.max()))
    }
}

/// What one run of the load against one server measured.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Which server: `baseline` or `kv`.
    pub label: String,
    /// The round it belongs to, from 1 (see `--rounds`).
    pub round: usize,
    /// From the end of the warmup until the last task finished.
    pub elapsed: Duration,
    /// Per operation in the mix, in report order.
    pub per_op: Vec<(Op, Stats)>,
    /// All operations together.
    pub total: Stats,
}

impl Measurement {
    /// Builds the totals from per-operation stats.
    pub fn new(
        label: impl Into<String>,
        round: usize,
        elapsed: Duration,
        per_op: Vec<(Op, Stats)>,
    ) -> Self {
        let mut total = Stats::new();
        for (_, stats) in &per_op {
            total.merge(stats);
        }
        Self {
            label: label.into(),
            round,
            elapsed,
            per_op,
            total,
        }
    }

    /// The stats of `op`, if it was in the mix.
    pub fn op(&self, op: Op) -> Option<&Stats> {
        self.per_op.iter().find(|(o, _)| *o == op).map(|(_, s)| s)
    }

    /// The stats of `op`, or the totals for `None`.
    pub fn stats(&self, op: Option<Op>) -> Option<&Stats> {
        match op {
            Some(op) => self.op(op),
            None => Some(&self.total),
        }
    }
}

/// The load's shape, shared by every task.
#[derive(Debug)]
pub(crate) struct Workload {
    pub(crate) target: Target,
    pub(crate) mix: Mix,
    pub(crate) keys: u64,
    pub(crate) value: Bytes,
    pub(crate) connections: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

/// Runs the load against `work.target`: `warmup` unrecorded, then `duration` recorded; the
/// result is labelled `label`, round `round`.
pub(crate) async fn measure(
    label: &str,
    round: usize,
    work: Arc<Workload>,
) -> anyhow::Result<Measurement> {
    let start = Instant::now();
    let warmup_end = start + work.warmup;
    let deadline = warmup_end + work.duration;
    let seed_base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let tasks: Vec<_> = (0..work.connections)
        .map(|i| {
            let work = Arc::clone(&work);
            let seed = seed_base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            tokio::spawn(worker(work, seed, warmup_end, deadline))
        })
        .collect();
    let mut per_op: Vec<(Op, Stats)> = work.mix.ops().map(|op| (op, Stats::new())).collect();
    for task in tasks {
        let stats = task.await.context("a load task panicked")??;
        for ((_, into), (_, from)) in per_op.iter_mut().zip(&stats) {
            into.merge(from);
        }
    }
    let elapsed = Instant::now().saturating_duration_since(warmup_end);
    Ok(Measurement::new(label, round, elapsed, per_op))
}

/// One connection's loop. Requests started before `warmup_end` are not recorded; no request
/// starts at or after `deadline`.
async fn worker(
    work: Arc<Workload>,
    seed: u64,
    warmup_end: Instant,
    deadline: Instant,
) -> anyhow::Result<Vec<(Op, Stats)>> {
    let mut rng = Rng::new(seed);
    let mut stats = Op::ALL.map(|_| Stats::new());
    let hard_stop = deadline + STRAGGLER_GRACE;
    let mut conn: Option<Sender> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let recording = now >= warmup_end;
        let op = work.mix.pick(rng.next_u64());
        let key = rng.below(work.keys);
        if conn.as_ref().is_none_or(Sender::is_closed) {
            match tokio::time::timeout_at(hard_stop, work.target.connect()).await {
                Ok(Ok(sender)) => conn = Some(sender),
                Ok(Err(_)) | Err(_) => {
                    conn = None;
                    if recording {
                        stats[op.index()].errors += 1;
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };
        let request = work.target.op_request(op, key, &work.value)?;
        let sent = Instant::now();
        let outcome = tokio::time::timeout_at(hard_stop, exchange(sender, request)).await;
        let latency = sent.elapsed();
        let entry = &mut stats[op.index()];
        match outcome {
            Ok(Ok(status)) if status.is_success() => {
                if recording {
                    entry.record(latency);
                }
            }
            Ok(Ok(_)) => {
                if recording {
                    entry.errors += 1;
                }
            }
            Ok(Err(_)) | Err(_) => {
                if recording {
                    entry.errors += 1;
                }
                // The connection is in an unknown state: start over on a fresh one.
                conn = None;
            }
        }
    }
    Ok(work
        .mix
        .ops()
        .map(|op| (op, std::mem::take(&mut stats[op.index()])))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_errors() {
        let mut a = Stats::new();
        a.record(Duration::from_micros(100));
        a.record(Duration::from_micros(200));
        a.errors = 1;
        let mut b = Stats::new();
        b.record(Duration::from_millis(5));
        b.errors = 2;
        a.merge(&b);
        assert_eq!(a.ok(), 3);
        assert_eq!(a.errors, 3);
        let max = a.max().expect("max");
        assert!(max >= Duration::from_micros(4990) && max <= Duration::from_micros(5010));
        let p50 = a.quantile(0.5).expect("p50");
        assert!(p50 >= Duration::from_micros(199) && p50 <= Duration::from_micros(201));
        assert!((a.throughput(Duration::from_secs(2)) - 1.5).abs() < 1e-9);
    }

    #[test]
    fn measurement_totals_span_operations() {
        let mut get = Stats::new();
        get.record(Duration::from_micros(10));
        let mut set = Stats::new();
        set.record(Duration::from_micros(20));
        set.record(Duration::from_micros(30));
        set.errors = 4;
        let m = Measurement::new(
            "kv",
            1,
            Duration::from_secs(1),
            vec![(Op::Get, get), (Op::Set, set)],
        );
        assert_eq!(m.total.ok(), 3);
        assert_eq!(m.total.errors, 4);
        assert_eq!(m.op(Op::Set).map(Stats::ok), Some(2));
        assert_eq!(m.stats(Some(Op::Get)).map(Stats::ok), Some(1));
        assert_eq!(m.stats(None).map(Stats::ok), Some(3));
        assert_eq!(m.round, 1);
    }

    #[test]
    fn huge_latencies_saturate() {
        let mut s = Stats::new();
        s.record(Duration::from_secs(3600));
        assert_eq!(s.ok(), 1);
        assert!(s.max().expect("max") <= Duration::from_secs(61));
    }
}
