//! `ten init`: a commented starter `tenement.toml`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;

#[derive(clap::Args)]
pub struct Args {
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

const STARTER: &str = include_str!("starter.toml");

/// Writes the starter to `--config FILE`, or `tenement.toml` here.
pub fn run(explicit: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    let path = explicit.unwrap_or(Path::new(crate::config_file::FILE_NAME));
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
