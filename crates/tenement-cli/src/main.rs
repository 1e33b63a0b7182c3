//! `ten`: the tenement command line. `ten serve` runs the server; every other command talks to
//! a running server through its control socket (`{data_dir}/ten.sock`) or, with `--server`,
//! over HTTP.

mod client;
mod cmd;
mod config_file;
mod notify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ten",
    version,
    about = "tenement: cramped housing for your processes"
)]
struct Cli {
    /// Configuration file (default: $TENEMENT_CONFIG, then tenement.toml here or in a parent).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides [settings] data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Talk to a remote server over HTTP instead of the local control socket.
    #[arg(long, global = true, env = "TENEMENT_SERVER")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, global = true, env = "TENEMENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: supervise instances and answer HTTP.
    Serve(cmd::serve::Args),
    /// Start an instance: `ten spawn api --id prod` or `ten spawn api:prod`.
    Spawn(cmd::instance::SpawnArgs),
    /// Stop an instance and forget it.
    Stop(cmd::instance::KeyArg),
    /// Restart an instance (also revives a failed one).
    Restart(cmd::instance::KeyArg),
    /// List instances.
    Ps(cmd::ps::Args),
    /// Health of every instance.
    Health(cmd::ps::Args),
    /// Captured output of an instance.
    Logs(cmd::logs::Args),
    /// Print the resolved configuration, or validate it with --check.
    Config(cmd::config::Args),
    /// Set an instance's share of `{service}.{domain}` traffic (0-100; 0 = none).
    Weight(cmd::traffic::WeightArgs),
    /// Move all of one instance's traffic to another, atomically.
    Route(cmd::traffic::RouteArgs),
    /// Start an instance and wait until it is healthy; optionally replace another.
    Deploy(cmd::traffic::DeployArgs),
    /// Re-read tenement.toml and apply it to the running server (as SIGHUP does).
    Reload,
    /// Hand the running server over to a new process of its executable (a newer `ten`
    /// installed at the same path): instances keep running, no connection is refused.
    Upgrade,
    /// Print a Caddyfile for Caddy in front of ten serve (wildcards by DNS-01, on-demand TLS
    /// asking ten which names route).
    Caddyfile(cmd::caddyfile::Args),
    /// Custom domains: add, rm, ls.
    #[command(subcommand)]
    Domain(cmd::domain::DomainCommand),
    /// Create an API token for `--server`/`TENEMENT_SERVER` (printed once).
    TokenGen(cmd::tokens::GenArgs),
    /// List or revoke API tokens.
    #[command(subcommand)]
    Token(cmd::tokens::TokenCommand),
    /// Write a commented starter tenement.toml.
    Init(cmd::init::Args),
    /// Write a systemd unit that runs `ten serve` with this configuration.
    Install(cmd::install::Args),
    /// Remove the unit `ten install` wrote.
    Uninstall(cmd::install::UninstallArgs),
}

fn main() -> std::process::ExitCode {
    // rustls is built with two crypto providers (aws-lc-rs, ours; ring, wasmtime-wasi-http's),
    // so it cannot pick one by itself: every TLS client and server of this process uses
    // aws-lc-rs (a wasm host forked by the shim included). No thread is started.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The shim must run before any thread exists: dispatch before clap and tokio.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw
        .get(1)
        .is_some_and(|a| a == tenement_runtime::shim::SUBCOMMAND)
    {
        tenement_runtime::shim::run(&raw[2..]);
    }
    #[cfg(feature = "wasm")]
    if raw.get(1).is_some_and(|a| a == tenement_wasm::SUBCOMMAND) {
        tenement_wasm::host::run(&raw[2..]);
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A client writing into a closed pipe (`ten ps | head -3`) ends quietly, as Unix tools
        // do, instead of panicking. (`ten serve` keeps SIGPIPE ignored: its peers may vanish.)
        // SAFETY: setting a signal's disposition to the default runs no handler code.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let result = match cli.command {
        Command::Config(args) => cmd::config::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Init(args) => cmd::init::run(cli.config.as_deref(), args),
        Command::Caddyfile(args) => cmd::caddyfile::run(cli.config.as_deref(), args),
        Command::Install(args) => cmd::install::install(cli.config.as_deref(), args),
        Command::Uninstall(args) => cmd::install::uninstall(args),
        command => run_async(cli.config, cli.data_dir, cli.server, cli.token, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_async(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    server: Option<String>,
    token: Option<String>,
    command: Command,
) -> anyhow::Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if let Command::Serve(args) = command {
            return cmd::serve::run(config, data_dir, args).await;
        }
        let client = client::Client::resolve(config.as_deref(), data_dir, server, token)?;
        match command {
            Command::Spawn(a) => cmd::instance::spawn(&client, a).await,
            Command::Stop(a) => cmd::instance::stop(&client, a).await,
            Command::Restart(a) => cmd::instance::restart(&client, a).await,
            Command::Ps(a) => cmd::ps::ps(&client, a).await,
            Command::Health(a) => cmd::ps::health(&client, a).await,
            Command::Logs(a) => cmd::logs::run(&client, a).await,
            Command::TokenGen(a) => cmd::tokens::generate(&client, a).await,
            Command::Token(c) => cmd::tokens::run(&client, c).await,
            Command::Domain(c) => cmd::domain::run(&client, c).await,
            Command::Weight(a) => cmd::traffic::weight(&client, a).await,
            Command::Route(a) => cmd::traffic::route(&client, a).await,
            Command::Deploy(a) => cmd::traffic::deploy(&client, a).await,
            Command::Reload => cmd::config::reload(&client).await,
            Command::Upgrade => cmd::upgrade::run(&client).await,
            Command::Serve(_)
            | Command::Config(_)
            | Command::Init(_)
            | Command::Caddyfile(_)
            | Command::Install(_)
            | Command::Uninstall(_) => {
                unreachable!("handled above")
            }
        }
    })
}
