//! Runs `shoal bench kv` end to end against an in-process kv, with and without a baseline.

use std::time::{Duration, Instant};

use clap::Parser;
use shoal_bench::mix::Op;
use shoal_bench::report::BASELINE;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: shoal_bench::Args,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_scenario_with_baseline_runs_alternating_rounds() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "kv",
        "--baseline",
        "--rounds",
        "2",
        "--connections",
        "4",
        "--duration",
        "250ms",
        "--warmup",
        "100ms",
        "--keys",
        "20",
        "--value-size",
        "32",
        "--mix",
        "get=80,set=20",
    ])?;
    let started = Instant::now();
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_kv()
        .expect("a kv report");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    report.check()?;
    assert!(report.target_kind.starts_with("in-process"));
    assert_eq!(report.rounds, 2);

    // Four measurements, the baseline first in round 1 and last in round 2.
    let order: Vec<(usize, &str)> = report
        .measurements
        .iter()
        .map(|m| (m.round, m.label.as_str()))
        .collect();
    assert_eq!(order, [(1, BASELINE), (1, "kv"), (2, "kv"), (2, BASELINE)]);
    for m in &report.measurements {
        let at = format!("{} in round {}", m.label, m.round);
        assert!(m.total.ok() > 0, "{at}: no requests completed");
        assert_eq!(m.total.errors, 0, "{at}: errors");
        for op in [Op::Get, Op::Set] {
            let stats = m.op(op).expect("op in the mix");
            assert!(stats.ok() > 0, "{at} {op}: no requests");
            assert_eq!(stats.errors, 0, "{at} {op}: errors");
        }
    }
    let ratio = report
        .ratio("kv", None)
        .expect("both servers ran in each round");
    assert!(
        ratio.min <= ratio.median && ratio.median <= ratio.max && ratio.min > 0.0,
        "{ratio:?}"
    );

    let text = report.to_string();
    assert!(text.contains("  rounds 2  "), "{text}");
    assert!(text.contains("\nr1     baseline  total "), "{text}");
    assert!(text.contains("\nr2     kv        set   "), "{text}");
    assert!(text.contains("\nmedian of 2 rounds"), "{text}");
    assert!(text.contains("\nmedian kv        get   "), "{text}");
    assert!(
        text.contains("kv/baseline throughput (median of per-round ratios): total "),
        "{text}"
    );
    assert!(text.contains("%)  get "), "{text}");
    Ok(())
}

#[tokio::test]
async fn rounds_without_baseline_repeat_the_target() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "kv",
        "--rounds",
        "2",
        "--connections",
        "2",
        "--duration",
        "150ms",
        "--warmup",
        "50ms",
        "--keys",
        "10",
        "--mix",
        "set=1",
    ])?;
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_kv()
        .expect("a kv report");
    report.check()?;
    let order: Vec<(usize, &str)> = report
        .measurements
        .iter()
        .map(|m| (m.round, m.label.as_str()))
        .collect();
    assert_eq!(order, [(1, "kv"), (2, "kv")]);
    assert_eq!(report.summary("kv", Some(Op::Set)).rounds, 2);
    let text = report.to_string();
    assert!(text.contains("\nmedian kv        set   "), "{text}");
    assert!(!text.contains("throughput"), "{text}");
    Ok(())
}

#[tokio::test]
async fn unreachable_target_is_an_error() -> anyhow::Result<()> {
    // Bind then drop a listener: the port is very likely closed afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "kv",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--duration",
        "100ms",
    ])?;
    let err = shoal_bench::measure(&cli.bench)
        .await
        .expect_err("nothing listens there");
    assert!(format!("{err:#}").contains("cannot reach"), "{err:#}");
    Ok(())
}
