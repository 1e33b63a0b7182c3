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
        // Every isolation level in use must be usable here: fail loudly now, not at spawn.
        let exe = std::env::current_exe()?;
        let runtimes = tenement_runtime::Runtimes::new(exe, &config.settings);
        let problems: Vec<String> = config
            .services
            .iter()
            .filter_map(|(name, svc)| {
                runtimes
                    .get(svc.isolation)
                    .err()
                    .map(|e| format!("service.{name}: {e}"))
            })
            .collect();
        if !problems.is_empty() {
            anyhow::bail!(
                "{}: isolation not available on this machine:\n  {}",
                config.file.display(),
                problems.join("\n  ")
            );
        }
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
