//! `ten install` / `ten uninstall`: a systemd unit for `ten serve`.
//!
//! The unit is `Type=notify` (`ten serve` says READY, RELOADING and STOPPING, and pings the
//! watchdog: `crate::notify`), reloads with SIGHUP, and has `Delegate=yes` so that the
//! instances' cgroups are created below the service's own. `KillMode=process`: signals go to
//! `ten serve` alone. On `systemctl stop` it stops accepting, lets requests finish and stops
//! every instance in order; when it crashes (or the watchdog kills it), the instances run on
//! and the `ten serve` that `Restart=on-failure` starts adopts them (`adopt_timeout`).
//! `NotifyAccess=all`: after `ten upgrade` the successor (`MAINPID=`) speaks for the unit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::config_file;

#[derive(clap::Args)]
pub struct Args {
    /// Where unit files go.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// The unit's name (NAME.service).
    #[arg(long, default_value = "tenement")]
    name: String,
    /// A file of `VAR=value` lines for `ten serve`'s environment (`EnvironmentFile=`), for
    /// secrets kept out of the unit and the command line (`TEN_SLUM_TOKEN`).
    #[arg(long, value_name = "FILE")]
    environment_file: Option<PathBuf>,
    /// Arguments for `ten serve` (after `--`): `ten install -- --port 80 --domain example.com`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    #[arg(long, default_value = "tenement")]
    name: String,
}

/// The unit's text for `ten` at `exe` serving `config`.
pub fn unit(exe: &Path, config: &Path, env: Option<&Path>, serve_args: &[String]) -> String {
    let args: String = serve_args
        .iter()
        .map(|a| format!(" {}", quote(a)))
        .collect();
    let env = env
        .map(|e| {
            format!(
                "EnvironmentFile={}\n",
                e.display().to_string().replace('%', "%%")
            )
        })
        .unwrap_or_default();
    format!(
        "# Written by `ten install`; `ten uninstall` removes it.
[Unit]
Description=tenement: per-tenant services from {config}
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=all
{env}ExecStart={exe} serve --config {config}{args}
ExecReload=/bin/kill -HUP $MAINPID
# Signals to ten serve alone. `systemctl stop`: it stops accepting, lets requests finish,
# then stops every instance in order. A crash leaves the instances running, and the ten serve
# started next adopts them (adopt_timeout). `ten upgrade` replaces ten serve without
# restarting any instance.
KillMode=process
TimeoutStopSec=90
WatchdogSec=30
Restart=on-failure
RestartSec=2
# Instances' cgroups go below the service's own.
Delegate=yes
LimitNOFILE=1048576
TasksMax=infinity

[Install]
WantedBy=multi-user.target
",
        exe = quote(&exe.display().to_string()),
        config = quote(&config.display().to_string()),
    )
}

/// A word for a unit's command line, quoted when it has spaces or quotes (systemd.syntax(7)).
fn quote(s: &str) -> String {
    // `%` starts a specifier in unit files (systemd.unit(5)): `%%` is a `%`.
    let s = s.replace('%', "%%");
    if s.contains([' ', '"', '\'', '\\']) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

/// A unit name systemd accepts (systemd.unit(5)): letters, digits and `:-_.\@`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    anyhow::ensure!(
        ok,
        "{name:?} is not a unit name (letters, digits and :-_.\\@ only)"
    );
    Ok(())
}

pub fn install(explicit: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let config = std::fs::canonicalize(config_file::find(explicit)?)?;
    // Validated now, not at the first boot.
    config_file::load(Some(&config), None)?;
    let exe = std::env::current_exe().context("cannot find the ten executable")?;
    let path = args.unit_dir.join(format!("{}.service", args.name));
    std::fs::create_dir_all(&args.unit_dir)
        .with_context(|| format!("cannot create {}", args.unit_dir.display()))?;
    let env = args.environment_file.as_deref();
    if let Some(e) = env {
        let text = e.display().to_string();
        anyhow::ensure!(
            e.is_absolute() && !text.contains(['\n', '\r']),
            "--environment-file {text:?}: an absolute path on one line"
        );
    }
    std::fs::write(&path, unit(&exe, &config, env, &args.serve_args))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!(
        "next: systemctl daemon-reload && systemctl enable --now {}",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let path = args.unit_dir.join(format!("{}.service", args.name));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("no unit at {}", path.display()))?;
    anyhow::ensure!(
        text.starts_with("# Written by `ten install`"),
        "{} was not written by `ten install`; left alone",
        path.display()
    );
    std::fs::remove_file(&path)?;
    println!("removed {}", path.display());
    println!(
        "next: systemctl disable --now {} && systemctl daemon-reload",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}
