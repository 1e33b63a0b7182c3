//! `ten config [--check]`: print the resolved configuration, or only validate it.

use std::path::Path;
use std::process::ExitCode;

use crate::config_file;

#[derive(clap::Args)]
pub struct Args {
    /// Only validate; print nothing but errors.
    #[arg(long)]
    check: bool,
}

pub fn run(explicit: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    let config = config_file::load(explicit)?;
    if args.check {
        println!(
            "{}: ok ({} service{})",
            config.file.display(),
            config.services.len(),
            if config.services.len() == 1 { "" } else { "s" }
        );
    } else {
        println!("# resolved from {}", config.file.display());
        print!("{}", toml::to_string_pretty(&config)?);
    }
    Ok(ExitCode::SUCCESS)
}
