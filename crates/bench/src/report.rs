//! The plain-text report: one line per measurement, then per label and operation the median
//! over the rounds, then (with a baseline) the median of the per-round throughput ratios.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use crate::load::{Measurement, Stats};
use crate::mix::{Mix, Op};

/// The label of the trivial server measured with `--baseline`.
pub const BASELINE: &str = "baseline";

/// Everything one `shoal bench` run measured, printed with `Display`.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name (`kv`).
    pub scenario: String,
    /// The measured server's base URL.
    pub target: String,
    /// How the target was started, e.g. `in-process, sync=normal` or `external`.
    pub target_kind: String,
    /// Concurrent connections.
    pub connections: usize,
    /// Recorded period of one measurement (after its own warmup).
    pub duration: Duration,
    /// The operation mix.
    pub mix: Mix,
    /// Rounds asked for (`--rounds`). Fewer ran when a measurement got no request through.
    pub rounds: usize,
    /// Every measurement, in the order it ran (each knows its round and label).
    pub measurements: Vec<Measurement>,
}

/// One label's total or one operation, summarized over the rounds it was measured in.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// How many measurements went into it.
    pub rounds: usize,
    /// Median of the rounds' successful requests per second.
    pub throughput: f64,
    /// Median of the rounds' median latencies (rounds without a successful request skipped).
    pub p50: Option<Duration>,
    /// Median of the rounds' 99th percentile latencies.
    pub p99: Option<Duration>,
    /// The slowest successful request of any round.
    pub max: Option<Duration>,
    /// Failed requests, summed over the rounds.
    pub errors: u64,
}

/// How per-round values spread: their median, lowest and highest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median (the mean of the two middle values for an even count).
    pub median: f64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, or `None` when there are none.
    pub fn of(values: Vec<f64>) -> Option<Self> {
        let min = values.iter().copied().reduce(f64::min)?;
        let max = values.iter().copied().reduce(f64::max)?;
        let median = median_by(values, f64::total_cmp, |a, b| (a + b) / 2.0)?;
        Some(Self { median, min, max })
    }
}

/// The middle of `values` in `cmp` order, or `halfway` between the two middle ones for an
/// even count; `None` when empty.
pub(crate) fn median_by<T: Copy>(
    mut values: Vec<T>,
    cmp: impl FnMut(&T, &T) -> Ordering,
    halfway: impl FnOnce(T, T) -> T,
) -> Option<T> {
    values.sort_by(cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[mid]),
        _ => Some(halfway(values[mid - 1], values[mid])),
    }
}

/// Whether round `round` (from 1) measures the baseline before the target: odd rounds do,
/// even rounds do not, so a steady drift of the machine's speed favours each side equally.
pub(crate) fn baseline_first(round: usize) -> bool {
    round % 2 == 1
}

/// `1KiB`, `2MiB` or `300 B`.
pub(crate) fn size_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

pub(crate) fn median_duration(values: impl Iterator<Item = Option<Duration>>) -> Option<Duration> {
    median_by(values.flatten().collect(), Ord::cmp, |a, b| (a + b) / 2)
}

impl Report {
    /// The labels measured, the baseline first, then in the order they first ran.
    pub fn labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = Vec::new();
        if self.measurements.iter().any(|m| m.label == BASELINE) {
            labels.push(BASELINE);
        }
        for m in &self.measurements {
            if !labels.contains(&m.label.as_str()) {
                labels.push(&m.label);
            }
        }
        labels
    }

    /// The measurements of `label`, by round.
    pub fn of<'a>(&'a self, label: &'a str) -> impl Iterator<Item = &'a Measurement> + 'a {
        self.measurements.iter().filter(move |m| m.label == label)
    }

    /// The rounds that ran (the highest round number measured).
    pub fn rounds_run(&self) -> usize {
        self.measurements.iter().map(|m| m.round).max().unwrap_or(0)
    }

    /// `label`'s total (`op` `None`) or one operation over every round.
    pub fn summary(&self, label: &str, op: Option<Op>) -> Summary {
        let rows: Vec<(&Stats, Duration)> = self
            .of(label)
            .filter_map(|m| m.stats(op).map(|s| (s, m.elapsed)))
            .collect();
        let throughput = median_by(
            rows.iter().map(|(s, e)| s.throughput(*e)).collect(),
            f64::total_cmp,
            |a, b| (a + b) / 2.0,
        );
        Summary {
            rounds: rows.len(),
            throughput: throughput.unwrap_or(0.0),
            p50: median_duration(rows.iter().map(|(s, _)| s.quantile(0.5))),
            p99: median_duration(rows.iter().map(|(s, _)| s.quantile(0.99))),
            max: rows.iter().filter_map(|(s, _)| s.max()).max(),
            errors: rows.iter().map(|(s, _)| s.errors).sum(),
        }
    }

    /// `label`'s throughput as a percentage of the baseline's in the same round, spread over
    /// the rounds; `None` without a round where both ran and the baseline got a request
    /// through. Each ratio compares two measurements taken back to back, so the machine's
    /// drift between rounds cancels out of it.
    pub fn ratio(&self, label: &str, op: Option<Op>) -> Option<Spread> {
        let ratios = self
            .of(label)
            .filter_map(|m| {
                let base = self.of(BASELINE).find(|b| b.round == m.round)?;
                let base_rate = base.stats(op)?.throughput(base.elapsed);
                let rate = m.stats(op)?.throughput(m.elapsed);
                (base_rate > 0.0).then(|| 100.0 * rate / base_rate)
            })
            .collect();
        Spread::of(ratios)
    }

    /// Fails when a measurement has no successful request at all (every request failed, or
    /// none completed in time), or when nothing was measured.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.measurements.is_empty() {
            anyhow::bail!("nothing was measured");
        }
        for m in &self.measurements {
            if m.total.ok() > 0 {
                continue;
            }
            let round = if self.rounds > 1 {
                format!(" in round {} of {}", m.round, self.rounds)
            } else {
                String::new()
            };
            if m.total.errors > 0 {
                anyhow::bail!(
                    "every {} request failed ({} errors) against {}{round}",
                    m.label,
                    m.total.errors,
                    if m.label == BASELINE {
                        "the baseline"
                    } else {
                        &self.target
                    }
                );
            }
            anyhow::bail!("no {} request completed{round}", m.label);
        }
        Ok(())
    }
}

/// The `p`th percentile (nearest rank) of `sorted`; `None` when empty.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub(crate) fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2}", d.as_secs_f64() * 1e3),
    )
}

pub(crate) fn percent(spread: Option<Spread>) -> String {
    spread.map_or_else(
        || "-".to_owned(),
        |s| format!("{:.1}% ({:.1}–{:.1}%)", s.median, s.min, s.max),
    )
}

/// The first columns of every measurement and summary line: `r1`/`median`, label, op.
fn head(f: &mut fmt::Formatter<'_>, prefix: &str, label: &str, op: &str) -> fmt::Result {
    write!(f, "{prefix:<6} {label:<9} {op:<5}")
}

fn line(f: &mut fmt::Formatter<'_>, m: &Measurement, op: &str, stats: &Stats) -> fmt::Result {
    head(f, &format!("r{}", m.round), &m.label, op)?;
    writeln!(
        f,
        " {:>9} req  {:>10.1} req/s  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  errors {}",
        stats.ok(),
        stats.throughput(m.elapsed),
        ms(stats.quantile(0.5)),
        ms(stats.quantile(0.99)),
        ms(stats.max()),
        stats.errors,
    )
}

fn summary_line(f: &mut fmt::Formatter<'_>, label: &str, op: &str, s: &Summary) -> fmt::Result {
    head(f, "median", label, op)?;
    // No request count: the counts of different rounds are not a median of anything useful.
    writeln!(
        f,
        " {:>9}      {:>10.1} req/s  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  errors {}",
        "",
        s.throughput,
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        s.errors,
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {}  target {} ({})  connections {}  duration {}  rounds {}  mix {}",
            self.scenario,
            self.target,
            self.target_kind,
            self.connections,
            humantime::format_duration(self.duration),
            self.rounds,
            self.mix,
        )?;
        for m in &self.measurements {
            line(f, m, "total", &m.total)?;
            for (op, stats) in &m.per_op {
                line(f, m, op.name(), stats)?;
            }
        }
        let labels = self.labels();
        writeln!(
            f,
            "median of {} round{} (max: slowest of any round; errors: summed)",
            self.rounds_run(),
            if self.rounds_run() == 1 { "" } else { "s" },
        )?;
        for label in &labels {
            summary_line(f, label, "total", &self.summary(label, None))?;
            for op in self.mix.ops() {
                summary_line(f, label, op.name(), &self.summary(label, Some(op)))?;
            }
        }
        if labels.first() == Some(&BASELINE) {
            for label in labels.iter().skip(1) {
                write!(
                    f,
                    "{label}/{BASELINE} throughput (median of per-round ratios): total {}",
                    percent(self.ratio(label, None))
                )?;
                for op in self.mix.ops() {
                    write!(f, "  {op} {}", percent(self.ratio(label, Some(op))))?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(latencies_us: &[u64], errors: u64) -> Stats {
        let mut s = Stats::new();
        for us in latencies_us {
            s.record(Duration::from_micros(*us));
        }
        s.errors = errors;
        s
    }

    /// One second of `label` in `round`: `gets` gets of `get_us` each, and `sets`.
    fn measured(label: &str, round: usize, get: Stats, set: Stats) -> Measurement {
        Measurement::new(
            label,
            round,
            Duration::from_secs(1),
            vec![(Op::Get, get), (Op::Set, set)],
        )
    }

    fn report(rounds: usize, mix: &str, measurements: Vec<Measurement>) -> Report {
        Report {
            scenario: "kv".into(),
            target: "http://127.0.0.1:41234".into(),
            target_kind: "in-process, sync=normal".into(),
            connections: 64,
            duration: Duration::from_secs(10),
            mix: Mix::parse(mix).expect("mix"),
            rounds,
            measurements,
        }
    }

    #[test]
    fn formats_rounds_medians_and_ratios() {
        let base = |round| measured(BASELINE, round, stats(&[400; 8], 0), stats(&[500; 2], 0));
        // kv/baseline per round: total 50%, 80%, 90%; get 50%, 75%, 100%; set 50%, 100%, 50%.
        let report = report(
            3,
            "get=90,set=10",
            vec![
                base(1),
                measured("kv", 1, stats(&[410; 4], 0), stats(&[2000], 1)),
                measured("kv", 2, stats(&[600; 6], 0), stats(&[1000; 2], 0)),
                base(2),
                base(3),
                measured("kv", 3, stats(&[800; 8], 0), stats(&[3000], 0)),
            ],
        );
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        // Header, 6 measurements × 3 lines, summary header, 2 labels × 3 lines, ratio line.
        assert_eq!(lines.len(), 1 + 18 + 1 + 6 + 1, "{text}");
        assert_eq!(
            lines[0],
            "scenario kv  target http://127.0.0.1:41234 (in-process, sync=normal)  \
             connections 64  duration 10s  rounds 3  mix get=90,set=10"
        );
        // Measurement lines in the order they ran, alternating which server went first.
        let heads: Vec<&str> = lines[1..19].iter().step_by(3).map(|l| &l[..15]).collect();
        assert_eq!(
            heads,
            [
                "r1     baseline",
                "r1     kv      ",
                "r2     kv      ",
                "r2     baseline",
                "r3     baseline",
                "r3     kv      ",
            ]
        );
        assert!(
            lines[1].starts_with("r1     baseline  total        10 req        10.0 req/s"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("errors 0"), "{}", lines[1]);
        assert!(lines[5].contains("p50    0.41 ms"), "{}", lines[5]);
        assert!(lines[6].starts_with("r1     kv        set"), "{}", lines[6]);
        assert!(
            lines[6].contains("max    2.00 ms  errors 1"),
            "{}",
            lines[6]
        );

        assert_eq!(
            lines[19],
            "median of 3 rounds (max: slowest of any round; errors: summed)"
        );
        assert!(
            lines[20].starts_with("median baseline  total                      10.0 req/s"),
            "{}",
            lines[20]
        );
        // Aligned with the measurement lines.
        assert_eq!(lines[20].find("req/s"), lines[1].find("req/s"), "{text}");
        assert_eq!(lines[20].find("errors"), lines[1].find("errors"), "{text}");
        assert!(
            lines[23].starts_with("median kv        total"),
            "{}",
            lines[23]
        );
        assert!(lines[23].contains(" 8.0 req/s"), "{}", lines[23]);
        // kv get p50s 0.41, 0.60, 0.80 ms: the median is 0.60.
        assert!(
            lines[24].contains(" 6.0 req/s  p50    0.60 ms"),
            "{}",
            lines[24]
        );
        // kv set: p50s 2, 1, 3 ms; the max is the slowest of any round, errors are summed.
        assert!(
            lines[25].contains("p50    2.00 ms  p99    2.00 ms  max    3.00 ms  errors 1"),
            "{}",
            lines[25]
        );
        assert_eq!(
            lines[26],
            "kv/baseline throughput (median of per-round ratios): total 80.0% (50.0–90.0%)  \
             get 75.0% (50.0–100.0%)  set 50.0% (50.0–100.0%)"
        );
        report.check().expect("requests succeeded");

        let kv = report.summary("kv", None);
        assert_eq!(kv.rounds, 3);
        assert!((kv.throughput - 8.0).abs() < 1e-9);
        assert_eq!(report.labels(), ["baseline", "kv"]);
    }

    #[test]
    fn medians_of_even_counts_take_the_middle_pair() {
        let s = Spread::of(vec![3.0, 1.0]).expect("spread");
        assert_eq!(
            s,
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        let s = Spread::of(vec![5.0, 1.0, 2.0]).expect("spread");
        assert_eq!(
            s,
            Spread {
                median: 2.0,
                min: 1.0,
                max: 5.0
            }
        );
        assert!(Spread::of(Vec::new()).is_none());
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(median_duration([ms(4), None, ms(2)].into_iter()), ms(3));
        assert_eq!(median_duration([None, None].into_iter()), None);
    }

    #[test]
    fn empty_stats_print_dashes() {
        let mut report = report(
            1,
            "set=1",
            vec![Measurement::new(
                "kv",
                1,
                Duration::ZERO,
                vec![(Op::Set, stats(&[], 3))],
            )],
        );
        report.target = "http://x:1".into();
        report.duration = Duration::from_millis(300);
        let text = report.to_string();
        assert!(
            text.contains("duration 300ms  rounds 1  mix set=1"),
            "{text}"
        );
        assert!(
            text.contains("r1     kv        set           0 req"),
            "{text}"
        );
        assert!(text.contains("p50       - ms"), "{text}");
        assert!(text.contains("median of 1 round "), "{text}");
        assert!(!text.contains("throughput"), "{text}");
        let err = report.check().expect_err("all failed");
        assert_eq!(
            err.to_string(),
            "every kv request failed (3 errors) against http://x:1"
        );
    }

    #[test]
    fn a_failed_round_fails_the_check_and_names_the_round() {
        let report = report(
            3,
            "get=1",
            vec![
                measured(BASELINE, 1, stats(&[100; 10], 0), Stats::new()),
                measured("kv", 1, stats(&[100; 5], 0), Stats::new()),
                // Round 2 stopped after kv got nothing through.
                measured("kv", 2, stats(&[], 7), Stats::new()),
            ],
        );
        let err = report.check().expect_err("round 2 failed");
        assert_eq!(
            err.to_string(),
            "every kv request failed (7 errors) against http://127.0.0.1:41234 in round 2 of 3"
        );
        // Only round 1 has both servers, so it alone makes the ratio.
        let ratio = report.ratio("kv", None).expect("round 1 ratio");
        assert_eq!(
            ratio,
            Spread {
                median: 50.0,
                min: 50.0,
                max: 50.0
            }
        );
        let text = report.to_string();
        assert!(text.contains("median of 2 rounds"), "{text}");
        assert!(
            text.contains(
                "throughput (median of per-round ratios): total 50.0% (50.0–50.0%)  get 50.0%"
            ),
            "{text}"
        );
    }
}
