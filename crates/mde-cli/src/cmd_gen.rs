//! Not implemented yet.

#[derive(clap::Args)]
pub struct GenerateArgs {}

#[derive(clap::Args)]
pub struct PostprocessArgs {}

pub fn run_generate(_args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("this command is not implemented yet")
}

pub fn run_postprocess(_args: PostprocessArgs) -> anyhow::Result<()> {
    anyhow::bail!("this command is not implemented yet")
}
