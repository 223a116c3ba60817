//! placeholder
#[derive(clap::Args, Debug)]
pub struct Args {}
pub async fn run(_a: Args) -> anyhow::Result<()> {
    Ok(())
}
