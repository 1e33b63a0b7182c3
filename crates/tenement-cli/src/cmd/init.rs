//! `ten init`: a commented starter `tenement.toml`.

use std::process::ExitCode;

use anyhow::bail;

#[derive(clap::Args)]
pub struct Args {
    /// Overwrite an existing tenement.toml.
    #[arg(long)]
    force: bool,
}

const STARTER: &str = include_str!("starter.toml");

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = std::path::Path::new(crate::config_file::FILE_NAME);
    if path.exists() && !args.force {
        bail!(
            "{} already exists (use --force to overwrite)",
            path.display()
        );
    }
    std::fs::write(path, STARTER)?;
    println!("wrote {}; edit it, then run `ten serve`", path.display());
    Ok(ExitCode::SUCCESS)
}
