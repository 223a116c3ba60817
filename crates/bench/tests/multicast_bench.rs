//! Runs `shoal bench multicast` end to end against an in-process hub, with a baseline.

use std::time::{Duration, Instant};

use clap::Parser;
use shoal_bench::multicast::LABEL;
use shoal_bench::report::BASELINE;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: shoal_bench::Args,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_scenario_with_baseline_delivers_everything_in_order() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "multicast",
        "--subscribers",
        "5",
        "--messages",
        "200",
        "--size",
        "256",
        "--senders",
        "4",
        "--baseline",
        "--timeout",
        "60s",
    ])?;
    let started = Instant::now();
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_multicast()
        .expect("a multicast report");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let text = report.to_string();
    report.check().map_err(|e| e.context(text.clone()))?;
    assert_eq!(report.target_kind, "in-process");
    assert_eq!(
        (report.subscribers, report.messages, report.size),
        (5, 200, 256)
    );

    // One round: the baseline first, then the hub.
    let order: Vec<(usize, &str)> = report
        .measurements
        .iter()
        .map(|m| (m.round, m.label.as_str()))
        .collect();
    assert_eq!(order, [(1, BASELINE), (1, LABEL)]);
    for m in &report.measurements {
        let at = &m.label;
        assert_eq!(m.expected, 5 * 200, "{at}");
        assert_eq!(m.delivered, m.expected, "{at}: lost deliveries\n{text}");
        assert_eq!(m.lost(), 0, "{at}");
        assert_eq!(m.out_of_order, 0, "{at}: order violations\n{text}");
        assert_eq!(m.invalid, 0, "{at}");
        assert_eq!(m.latency.ok(), m.expected, "{at}: one latency per delivery");
        assert!(m.rate() > 0.0, "{at}");
        assert!(
            m.latency.max() < Some(Duration::from_secs(30)),
            "{at}\n{text}"
        );
    }
    assert_eq!(
        report.measurements[0].duplicates, 0,
        "the baseline never repeats"
    );
    let hub = &report.measurements[1];
    let accepted = hub.accepted.expect("the hub accepted every send");
    assert_eq!(accepted.messages, 200);
    assert!(accepted.rate() > 0.0);
    assert!(report.measurements[0].accepted.is_none());
    let ratio = report.ratio().expect("both ran");
    assert!(ratio.median > 0.0, "{ratio:?}");

    assert!(
        text.starts_with("scenario multicast  target http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains(
            "(in-process)  subscribers 5  messages 200  size 256 B  senders 4  rounds 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("\nr1     baseline       1000 of 1000 delivered in "),
        "{text}"
    );
    assert!(
        text.contains("\nr1     multicast      1000 of 1000 delivered in "),
        "{text}"
    );
    assert!(
        text.contains("\nr1     multicast       200 accepted in "),
        "{text}"
    );
    assert!(text.contains("lost 0  duplicates "), "{text}");
    assert!(text.contains("multicast/baseline deliveries/s: "), "{text}");
    assert!(!text.contains("median of"), "one round: no medians\n{text}");
    Ok(())
}

#[tokio::test]
async fn hub_only_rounds_repeat() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "multicast",
        "--subscribers",
        "2",
        "--messages",
        "30",
        "--size",
        "12",
        "--senders",
        "2",
        "--rounds",
        "2",
    ])?;
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_multicast()
        .expect("a multicast report");
    let text = report.to_string();
    report.check().map_err(|e| e.context(text.clone()))?;
    let order: Vec<(usize, &str)> = report
        .measurements
        .iter()
        .map(|m| (m.round, m.label.as_str()))
        .collect();
    assert_eq!(order, [(1, LABEL), (2, LABEL)]);
    assert!(report.measurements.iter().all(|m| m.delivered == 60));
    assert!(report.ratio().is_none());
    assert!(text.contains("\nmedian of 2 rounds"), "{text}");
    assert!(text.contains("\nmedian multicast "), "{text}");
    assert!(!text.contains("baseline"), "{text}");
    Ok(())
}

#[tokio::test]
async fn unreachable_hub_is_an_error() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "multicast",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--subscribers",
        "1",
        "--messages",
        "1",
    ])?;
    let err = shoal_bench::measure(&cli.bench)
        .await
        .expect_err("nothing listens there");
    assert!(format!("{err:#}").contains("cannot reach"), "{err:#}");
    Ok(())
}
