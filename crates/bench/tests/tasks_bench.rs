//! Runs `shoal bench tasks` end to end against in-process task queues.

use std::time::{Duration, Instant};

use clap::Parser;
use shoal_bench::tasks::{CYCLES, SMALL_BACKLOG, backlog_label};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: shoal_bench::Args,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_scenario_measures_cycles_and_both_backlogs() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "tasks",
        "--concurrency",
        "4",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--backlog",
        "200",
    ])?;
    let started = Instant::now();
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_tasks()
        .expect("a tasks report");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    report.check()?;
    assert_eq!(report.target_kind, "in-process");
    assert_eq!(report.small_backlog, Some(SMALL_BACKLOG));

    let large = backlog_label(200);
    let small = backlog_label(SMALL_BACKLOG);
    let labels: Vec<(&str, usize)> = report
        .measurements
        .iter()
        .map(|m| (m.label.as_str(), m.round))
        .collect();
    assert_eq!(
        labels,
        [(CYCLES, 1), (large.as_str(), 1), (small.as_str(), 1)]
    );
    for m in &report.measurements {
        assert!(m.cycles > 0, "{}: no cycles", m.label);
        assert_eq!(m.errors(), 0, "{}: errors", m.label);
        assert_eq!(m.claim.ok(), m.cycles, "{}", m.label);
        assert_eq!(m.claim_finish.ok(), m.cycles, "{}", m.label);
        assert!(m.claim.quantile(0.99).is_some(), "{}", m.label);
    }
    // Every worker creates before it claims, so a backlog never runs dry.
    for label in [&large, &small] {
        let m = report.of(label).next().expect("measured");
        assert_eq!(m.empty_claims, 0, "{label}");
    }
    let ratio = report
        .backlog_ratio("claim")
        .expect("both backlogs measured");
    assert!(
        ratio.p50.median > 0.0 && ratio.p99.median > 0.0,
        "{ratio:?}"
    );

    let text = report.to_string();
    assert!(text.starts_with("scenario tasks  target http://"), "{text}");
    assert!(text.contains("cycles/s  empty claims "), "{text}");
    assert!(text.contains("\nclaim p50/p99 at backlog 200: "), "{text}");
    assert!(text.contains(" vs at backlog 10: "), "{text}");
    assert!(text.contains("ratio p50 "), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_is_measured_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = shoal_tasks::Config::with_data_dir(dir.path());
    let server = shoal_core::testkit::TestServer::start(move |listener, shutdown| {
        shoal_tasks::run(config, listener, shutdown)
    })
    .await?;
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "tasks",
        "--target",
        &server.base_url,
        "--concurrency",
        "2",
        "--duration",
        "200ms",
        "--warmup",
        "50ms",
        "--backlog",
        "50",
    ])?;
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_tasks()
        .expect("a tasks report");
    server.stop().await?;
    report.check()?;
    assert_eq!(report.target_kind, "external");
    assert_eq!(report.small_backlog, None);
    let labels: Vec<&str> = report.labels();
    assert_eq!(labels, [CYCLES, backlog_label(50).as_str()]);
    assert!(report.backlog_ratio("claim").is_none());
    let text = report.to_string();
    assert!(!text.contains(" vs at backlog "), "{text}");
    assert!(
        text.contains("note: --target given: only it was measured"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_target_is_an_error() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "tasks",
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
