//! `shoal bench`.

pub use shoal_bench::Args;

/// Runs the chosen load generator and prints its report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    shoal_bench::run(args).await
}
