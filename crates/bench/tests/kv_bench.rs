//! Runs `shoal bench kv --baseline` end to end against an in-process kv.

use std::time::{Duration, Instant};

use clap::Parser;
use shoal_bench::mix::Op;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: shoal_bench::Args,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_scenario_with_baseline_completes_without_errors() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "kv",
        "--baseline",
        "--connections",
        "4",
        "--duration",
        "300ms",
        "--warmup",
        "200ms",
        "--keys",
        "20",
        "--value-size",
        "32",
        "--mix",
        "get=80,set=20",
    ])?;
    let started = Instant::now();
    let report = shoal_bench::measure(&cli.bench).await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    report.check()?;

    let baseline = report.baseline.as_ref().expect("--baseline measured");
    for m in [baseline, &report.measured] {
        assert!(m.total.ok() > 0, "{}: no requests completed", m.label);
        assert_eq!(m.total.errors, 0, "{}: errors", m.label);
        for op in [Op::Get, Op::Set] {
            let stats = m.op(op).expect("op in the mix");
            assert!(stats.ok() > 0, "{} {op}: no requests", m.label);
            assert_eq!(stats.errors, 0, "{} {op}: errors", m.label);
        }
    }
    assert_eq!(report.measured.label, "kv");
    assert!(report.target_kind.starts_with("in-process"));

    let text = report.to_string();
    assert!(text.contains("kv/baseline throughput: total "), "{text}");
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
