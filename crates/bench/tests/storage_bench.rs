//! Runs `shoal bench storage` end to end against in-process storage services.

use std::time::{Duration, Instant};

use clap::Parser;
use shoal_bench::report::BASELINE;
use shoal_bench::storage::{LABEL, MEMORY, Phase};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: shoal_bench::Args,
}

const SIZE: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_scenario_measures_the_service_and_the_baselines() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "storage",
        "--size",
        "64KiB",
        "--concurrency",
        "4",
        "--objects",
        "3",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--rounds",
        "1",
    ])?;
    let started = Instant::now();
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_storage()
        .expect("a storage report");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    report.check()?;
    assert_eq!(report.target_kind, "in-process, local directory");
    assert_eq!(report.size, SIZE);
    assert_eq!(report.baseline_dir, Some(std::env::temp_dir()));
    let memory_url = report
        .memory_target
        .clone()
        .expect("the in-memory server ran");
    assert!(memory_url.starts_with("http://127.0.0.1:"), "{memory_url}");
    assert_ne!(memory_url, report.target);

    // Round 1 measures the baseline first, upload then download; the in-memory server only
    // downloads, right after the service.
    let order: Vec<(&str, Phase, usize)> = report
        .measurements
        .iter()
        .map(|m| (m.label.as_str(), m.phase, m.round))
        .collect();
    assert_eq!(
        order,
        [
            (BASELINE, Phase::Upload, 1),
            (LABEL, Phase::Upload, 1),
            (BASELINE, Phase::Download, 1),
            (LABEL, Phase::Download, 1),
            (MEMORY, Phase::Download, 1),
        ]
    );
    for m in &report.measurements {
        let what = format!("{} {}", m.label, m.phase);
        assert!(m.stats.ok() > 0, "{what}: no operation");
        assert_eq!(m.stats.errors, 0, "{what}: errors");
        assert_eq!(m.wrong_size, 0, "{what}: wrong sizes");
        assert!(m.objects_per_sec() > 0.0, "{what}");
        assert!(m.mib_per_sec() > 0.0, "{what}");
        assert!(m.stats.quantile(0.99).is_some(), "{what}");
    }
    for phase in Phase::ALL {
        let ratio = report.ratio(phase).expect("both sides measured");
        assert!(
            ratio.median > 0.0 && ratio.min > 0.0 && ratio.max >= ratio.min,
            "{phase}: {ratio:?}"
        );
        let s = report.summary(LABEL, phase);
        assert_eq!(s.rounds, 1);
        assert!(s.mib_per_sec > 0.0, "{phase}");
    }
    // The HTTP-from-memory server: downloads measured, none failed, every byte there.
    let memory: Vec<_> = report.of(MEMORY, Phase::Download).collect();
    assert_eq!(memory.len(), 1);
    assert!(memory[0].stats.ok() > 0, "no in-memory download");
    assert_eq!(memory[0].stats.errors, 0);
    assert_eq!(memory[0].wrong_size, 0);
    assert_eq!(report.of(MEMORY, Phase::Upload).count(), 0);
    let s = report.summary(MEMORY, Phase::Download);
    assert!(
        s.mib_per_sec > 0.0 && s.p50.is_some() && s.p99.is_some(),
        "{s:?}"
    );
    let ratio = report
        .memory_ratio()
        .expect("storage and http-mem downloads measured");
    assert!(
        ratio.median > 0.0 && ratio.min > 0.0 && ratio.max >= ratio.min,
        "{ratio:?}"
    );
    assert_eq!(report.labels(), [BASELINE, MEMORY, LABEL]);

    let text = report.to_string();
    assert!(
        text.starts_with("scenario storage  target http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("size 64KiB  objects 3 per worker"), "{text}");
    assert!(text.contains("\nbaseline: std::fs under "), "{text}");
    assert!(text.contains(" MiB/s  p50 "), "{text}");
    assert!(
        text.contains("\nstorage/baseline MiB/s (median of per-round ratios): upload "),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nhttp-mem: shoal_core::server::run at {memory_url}: download = GET /getImage"
        )),
        "{text}"
    );
    assert!(text.contains("\nr1     http-mem  download "), "{text}");
    assert!(
        text.contains("\nstorage/http-mem MiB/s (median of per-round ratios): download "),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_is_measured_and_cleaned_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = shoal_storage::Config::with_data_dir(dir.path());
    let server = shoal_core::testkit::TestServer::start(move |listener, shutdown| {
        shoal_storage::run(config, listener, shutdown)
    })
    .await?;
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "storage",
        "--target",
        &server.base_url,
        "--size",
        "10KiB",
        "--concurrency",
        "2",
        "--objects",
        "2",
        "--duration",
        "200ms",
        "--warmup",
        "50ms",
        "--rounds",
        "2",
        "--no-baseline",
    ])?;
    let report = shoal_bench::measure(&cli.bench)
        .await?
        .into_storage()
        .expect("a storage report");
    server.stop().await?;
    report.check()?;
    assert_eq!(report.target_kind, "external");
    assert_eq!(report.baseline_dir, None);
    assert_eq!(report.memory_target, None);
    assert_eq!(report.labels(), [LABEL]);
    assert!(report.memory_ratio().is_none());
    assert_eq!(report.measurements.len(), 4, "2 rounds × 2 phases");
    assert!(report.ratio(Phase::Upload).is_none());
    let text = report.to_string();
    assert!(!text.contains("baseline"), "{text}");
    assert!(!text.contains(MEMORY), "{text}");
    assert!(
        text.contains(
            "note: deleted the 4 bench objects (ids 1000000000..=1000000003) from the target"
        ),
        "{text}"
    );
    // Nothing of the bench's is left in the target's data directory.
    let objects = dir.path().join("working");
    let left: Vec<_> = std::fs::read_dir(&objects)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "left in {}: {left:?}", objects.display());
    Ok(())
}

#[tokio::test]
async fn unreachable_target_is_an_error() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cli = Cli::try_parse_from([
        "shoal-bench",
        "storage",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--duration",
        "100ms",
        "--no-baseline",
    ])?;
    let err = shoal_bench::measure(&cli.bench)
        .await
        .expect_err("nothing listens there");
    assert!(format!("{err:#}").contains("cannot reach"), "{err:#}");
    Ok(())
}
