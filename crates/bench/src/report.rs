//! The plain-text report.

use std::fmt;
use std::time::Duration;

use crate::load::{Measurement, Stats};
use crate::mix::Mix;

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
    /// Recorded period (after the warmup).
    pub duration: Duration,
    /// The operation mix.
    pub mix: Mix,
    /// The trivial server measured first, with `--baseline`.
    pub baseline: Option<Measurement>,
    /// The target itself.
    pub measured: Measurement,
}

impl Report {
    /// The measurements, baseline first.
    pub fn measurements(&self) -> impl Iterator<Item = &Measurement> {
        self.baseline.iter().chain(std::iter::once(&self.measured))
    }

    /// Fails when a measurement has no successful request at all (every request failed, or
    /// none completed in time).
    pub fn check(&self) -> anyhow::Result<()> {
        for m in self.measurements() {
            if m.total.ok() > 0 {
                continue;
            }
            if m.total.errors > 0 {
                anyhow::bail!(
                    "every {} request failed ({} errors) against {}",
                    m.label,
                    m.total.errors,
                    if m.label == self.measured.label {
                        &self.target
                    } else {
                        "the baseline"
                    }
                );
            }
            anyhow::bail!("no {} request completed", m.label);
        }
        Ok(())
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2}", d.as_secs_f64() * 1e3),
    )
}

fn line(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    op: &str,
    stats: &Stats,
    elapsed: Duration,
) -> fmt::Result {
    writeln!(
        f,
        "{label:<9} {op:<5} {:>9} req  {:>10.1} req/s  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  errors {}",
        stats.ok(),
        stats.throughput(elapsed),
        ms(stats.quantile(0.5)),
        ms(stats.quantile(0.99)),
        ms(stats.max()),
        stats.errors,
    )
}

fn ratio(measured: &Stats, baseline: &Stats, elapsed: Duration, base_elapsed: Duration) -> String {
    let base = baseline.throughput(base_elapsed);
    if base > 0.0 {
        format!("{:.1}%", 100.0 * measured.throughput(elapsed) / base)
    } else {
        "-".to_owned()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {}  target {} ({})  connections {}  duration {}  mix {}",
            self.scenario,
            self.target,
            self.target_kind,
            self.connections,
            humantime::format_duration(self.duration),
            self.mix,
        )?;
        for m in self.measurements() {
            line(f, &m.label, "total", &m.total, m.elapsed)?;
            for (op, stats) in &m.per_op {
                line(f, &m.label, op.name(), stats, m.elapsed)?;
            }
        }
        if let Some(base) = &self.baseline {
            let m = &self.measured;
            write!(
                f,
                "{}/{} throughput: total {}",
                m.label,
                base.label,
                ratio(&m.total, &base.total, m.elapsed, base.elapsed)
            )?;
            for (op, stats) in &m.per_op {
                if let Some(base_stats) = base.op(*op) {
                    write!(
                        f,
                        "  {op} {}",
                        ratio(stats, base_stats, m.elapsed, base.elapsed)
                    )?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::Op;

    fn stats(latencies_us: &[u64], errors: u64) -> Stats {
        let mut s = Stats::new();
        for us in latencies_us {
            s.record(Duration::from_micros(*us));
        }
        s.errors = errors;
        s
    }

    #[test]
    fn formats_report_with_ratios() {
        let mix = Mix::parse("get=90,set=10").expect("mix");
        let second = Duration::from_secs(1);
        let baseline = Measurement::new(
            "baseline",
            second,
            vec![
                (Op::Get, stats(&[400; 8], 0)),
                (Op::Set, stats(&[500, 500], 0)),
            ],
        );
        let kv = Measurement::new(
            "kv",
            second,
            vec![(Op::Get, stats(&[410; 4], 0)), (Op::Set, stats(&[2000], 1))],
        );
        let report = Report {
            scenario: "kv".into(),
            target: "http://127.0.0.1:41234".into(),
            target_kind: "in-process, sync=normal".into(),
            connections: 64,
            duration: Duration::from_secs(10),
            mix,
            baseline: Some(baseline),
            measured: kv,
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert_eq!(
            lines[0],
            "scenario kv  target http://127.0.0.1:41234 (in-process, sync=normal)  \
             connections 64  duration 10s  mix get=90,set=10"
        );
        assert!(
            lines[1].starts_with("baseline  total        10 req"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("errors 0"), "{}", lines[1]);
        assert!(
            lines[4].starts_with("kv        total         5 req"),
            "{}",
            lines[4]
        );
        assert!(lines[1].contains("10.0 req/s"), "{}", lines[1]);
        assert!(lines[4].contains("5.0 req/s"), "{}", lines[4]);
        assert!(
            lines[6].contains("max    2.00 ms  errors 1"),
            "{}",
            lines[6]
        );
        assert!(lines[5].contains("p50    0.41 ms"), "{}", lines[5]);
        report.check().expect("requests succeeded");
        assert_eq!(
            lines[7],
            "kv/baseline throughput: total 50.0%  get 50.0%  set 50.0%"
        );
    }

    #[test]
    fn empty_stats_print_dashes() {
        let report = Report {
            scenario: "kv".into(),
            target: "http://x:1".into(),
            target_kind: "external".into(),
            connections: 1,
            duration: Duration::from_millis(300),
            mix: Mix::parse("set=1").expect("mix"),
            baseline: None,
            measured: Measurement::new("kv", Duration::ZERO, vec![(Op::Set, stats(&[], 3))]),
        };
        let text = report.to_string();
        assert!(text.contains("duration 300ms  mix set=1"), "{text}");
        assert!(text.contains("p50       - ms"), "{text}");
        assert!(!text.contains("throughput:"), "{text}");
        let err = report.check().expect_err("all failed");
        assert!(
            err.to_string()
                .contains("every kv request failed (3 errors)"),
            "{err}"
        );
    }
}
