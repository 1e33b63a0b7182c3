//! `ten config [--check]`: print the resolved configuration, or only validate it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tenement_core::config::Config;
use tenement_runtime::Runtimes;

use crate::config_file;

#[derive(clap::Args)]
pub struct Args {
    /// Only validate: print errors, or one line saying the file is fine.
    #[arg(long)]
    check: bool,
}

pub fn run(
    explicit: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = config_file::load(explicit, data_dir)?;
    if args.check {
        // Every isolation level in use must be usable here: fail loudly now, not at spawn.
        let exe = std::env::current_exe()?;
        let runtimes = Runtimes::new(exe, &config.settings);
        let problems = unavailable(&config, &runtimes);
        if !problems.is_empty() {
            anyhow::bail!(
                "{}: isolation not available on this machine:\n  {}",
                config.file.display(),
                problems.join("\n  ")
            );
        }
        let problems = bad_programs(&config, &runtimes);
        if !problems.is_empty() {
            anyhow::bail!("{}:\n  {}", config.file.display(), problems.join("\n  "));
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

/// Services whose `user` does not exist here, each as `service.NAME.user: why`.
pub fn unknown_users(config: &Config) -> Vec<String> {
    config
        .services
        .iter()
        .filter_map(|(name, svc)| {
            let user = svc.user.as_deref()?;
            tenement::users::lookup(user)
                .err()
                .map(|e| format!("service.{name}.user: {e}"))
        })
        .collect()
}

/// Services whose `command` their level cannot run (a wasm service's component that is not
/// one tenement can serve), each as `service.NAME.command: why`. A command that depends on
/// the instance (`{id}`...) is checked at each spawn instead.
pub fn bad_programs(config: &Config, runtimes: &Runtimes) -> Vec<String> {
    config
        .services
        .iter()
        .filter(|(_, svc)| !svc.command.as_str().contains('{'))
        .filter_map(|(name, svc)| {
            let runtime = runtimes.get(svc.isolation).ok()?;
            let args: Vec<String> = svc.args.iter().map(|a| a.as_str().to_owned()).collect();
            let argv = tenement_runtime::argv_for(svc.command.as_str(), &args);
            runtime
                .check_program(&argv, &svc.workdir)
                .err()
                .map(|e| format!("service.{name}.command: {e}"))
        })
        .collect()
}

/// Services whose isolation level this machine cannot run, each as `service.NAME: why`.
pub fn unavailable(config: &Config, runtimes: &Runtimes) -> Vec<String> {
    config
        .services
        .iter()
        .filter_map(|(name, svc)| {
            runtimes
                .get(svc.isolation)
                .err()
                .map(|e| format!("service.{name}: {e}"))
        })
        .collect()
}

/// `ten reload`: the server reads its configuration file anew and applies it; prints what
/// changed.
pub async fn reload(client: &crate::client::Client) -> anyhow::Result<ExitCode> {
    let r = client.reload().await?;
    let mut said = false;
    for (items, what) in [
        (&r.services_added, "service added"),
        (&r.services_removed, "service removed"),
        (&r.services_changed, "service changed"),
        (&r.replaced, "replaced"),
        (&r.started, "started"),
        (&r.stopped, "stopped and forgotten"),
        (
            &r.settings_changed,
            "setting changed (applies to instances started from now on)",
        ),
        (
            &r.needs_restart,
            "setting changed, NOT applied: needs a restart of ten serve",
        ),
        (&r.failed, "FAILED"),
    ] {
        for item in items {
            println!("{what}: {item}");
            said = true;
        }
    }
    if !said {
        println!("no change");
    }
    Ok(if r.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
