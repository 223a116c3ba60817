//! Runs `shoal bench pipeline` end to end against an in-process stack.

use std::time::{Duration, Instant};

use clap::Parser;
use shoal_bench::pipeline::{LABEL, SMALL};
use shoal_bench::report::BASELINE;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: shoal_bench::Args,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_scenario_measures_the_stack_the_baseline_and_idle_latency() -> anyhow::Result<()>
{
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "pipeline",
        "--images",
        "6",
        "--size",
        "64x64",
        "--concurrency",
        "2",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--latency-images",
        "3",
    ])?;
    let started = Instant::now();
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_pipeline()
        .expect("a pipeline report");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    report.check()?;
    assert!(report.target_kind.starts_with("in-process"), "{report}");
    assert_eq!((report.threads, report.concurrency), (1, 2));

    let labels: Vec<(&str, usize)> = report
        .measurements
        .iter()
        .map(|m| (m.label.as_str(), m.round))
        .collect();
    assert_eq!(labels, [(BASELINE, 1), (LABEL, 1)], "{report}");
    for m in &report.measurements {
        assert_eq!(m.stats.ok(), 6, "{}: {report}", m.label);
        assert_eq!(m.stats.errors, 0, "{}: {report}", m.label);
        assert!(m.images_per_sec() > 0.0, "{}: {report}", m.label);
        assert!(m.checked > 0, "{}: {report}", m.label);
        assert_eq!(m.wrong, 0, "{}: {report}", m.label);
        assert!(m.stats.quantile(0.99).is_some(), "{}", m.label);
    }
    let ratio = report.ratio().expect("both sides measured");
    assert!(ratio.median > 0.0, "{ratio:?}");

    let latency = report.latency.as_ref().expect("idle latency measured");
    assert_eq!(latency.size, SMALL);
    assert_eq!(latency.stats.ok(), 3, "{report}");
    assert_eq!(latency.stats.errors, 0, "{report}");
    assert_eq!((latency.checked, latency.wrong), (1, 0), "{report}");
    assert!(latency.stats.quantile(0.5).is_some());
    assert_eq!(latency.process.ok(), 3);

    let text = report.to_string();
    assert!(
        text.starts_with("scenario pipeline  target http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("\nr1     baseline        6 img  "), "{text}");
    assert!(text.contains("\nr1     pipeline        6 img  "), "{text}");
    assert!(
        text.contains("pipeline/baseline images/s (median of per-round ratios): "),
        "{text}"
    );
    assert!(
        text.contains("idle latency 64x64 one at a time: 3 img  p50 "),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_scenario_through_the_frontend_uses_the_public_api() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "pipeline",
        "--via",
        "frontend",
        "--images",
        "5",
        "--size",
        "48x32",
        "--concurrency",
        "2",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--no-baseline",
        "--latency-images",
        "2",
        "--op",
        "grayscale",
        "--format",
        "webp",
    ])?;
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_pipeline()
        .expect("a pipeline report");
    report.check()?;
    assert!(report.target_kind.contains("frontend"), "{report}");
    let m = report
        .measurements
        .iter()
        .find(|m| m.label == LABEL)
        .expect("the pipeline measured");
    assert_eq!((m.stats.ok(), m.stats.errors), (5, 0), "{report}");
    assert!(m.checked > 0 && m.wrong == 0, "{report}");
    let latency = report.latency.as_ref().expect("idle latency measured");
    assert_eq!((latency.stats.ok(), latency.wrong), (2, 0), "{report}");
    Ok(())
}

#[tokio::test]
async fn unreachable_target_is_an_error() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "pipeline",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--images",
        "1",
        "--size",
        "8x8",
    ])?;
    let err = shoal_bench::measure(&cli.bench)
        .await
        .expect_err("nothing listens there");
    assert!(format!("{err:#}").contains("cannot reach"), "{err:#}");
    Ok(())
}
