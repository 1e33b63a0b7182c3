//! `slum`: the fleet's control plane (`slum serve`) and its command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::json;
use slum::SlumDb;
use slum::client::Client;

#[derive(Parser)]
#[command(
    name = "slum",
    version,
    about = "One control plane for a fleet of tenement servers"
)]
struct Cli {
    /// slum's API (`slum serve --listen`).
    #[arg(
        long,
        env = "SLUM_URL",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    url: String,
    /// The admin token; default: the file `slum serve` wrote beside its database.
    #[arg(long, env = "SLUM_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Where the token is kept when `--token` is not given.
    #[arg(long, default_value = "slum.db.token", global = true)]
    token_file: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve {
        /// The state (SQLite).
        #[arg(long, default_value = "slum.db")]
        db: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
        /// A server not heard from for this long is down (milliseconds).
        #[arg(long, default_value_t = 3000)]
        lease_ms: u64,
        /// The most servers that may join.
        #[arg(long, default_value_t = 1000)]
        max_servers: usize,
        /// slum.toml: operators, and the tenement servers they start and keep running.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List the servers of the fleet.
    Servers,
    /// Add or remove a server.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// List the tenants.
    Tenants,
    /// Add, move or remove a tenant.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(Subcommand)]
enum ServerCommand {
    /// `slum server add east http://east.example.com:8080`
    Add {
        id: String,
        /// Where its API and front door are.
        #[arg(value_name = "URL")]
        address: String,
    },
    /// Remove a server that has no tenants.
    Rm { id: String },
    /// Install this `ten` on a server of slum.toml and replace its `ten serve` without
    /// restarting its tenants.
    Upgrade { id: String },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// `slum tenant add customer.example.com api:prod [--server east]`: placed on the named
    /// server, or on the up server with the most free memory; returns once it runs there.
    Add {
        domain: String,
        /// `SERVICE:ID` on the server.
        instance: String,
        #[arg(long)]
        server: Option<String>,
    },
    /// Move a tenant to another server (started there, stopped where it was; its data is
    /// not moved).
    Move {
        domain: String,
        #[arg(long)]
        to: String,
    },
    Rm {
        domain: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Command::Serve {
        db,
        listen,
        lease_ms,
        max_servers,
        config,
    } = &cli.command
    {
        return serve(db, listen, *lease_ms, *max_servers, config.as_deref()).await;
    }
    let token = match &cli.token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(&cli.token_file)
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                format!(
                    "no token: give --token (or SLUM_TOKEN), or --token-file ({}: {e})",
                    cli.token_file.display()
                )
            })?,
    };
    let client = Client::new(&cli.url, &token);
    match cli.command {
        Command::Serve { .. } => unreachable!("handled above"),
        Command::Servers => {
            let servers = client.call("GET", "/api/servers", None).await?;
            println!(
                "{:<16} {:<8} {:>10} {:>6} {:>9}  URL",
                "SERVER", "STATE", "FREE MEM", "CPUS", "INSTANCES"
            );
            for s in servers.as_array().into_iter().flatten() {
                let c = |k: &str| s["capacity"][k].as_u64().unwrap_or(0);
                println!(
                    "{:<16} {:<8} {:>8}MB {:>6} {:>9}  {}",
                    s["id"].as_str().unwrap_or_default(),
                    s["state"].as_str().unwrap_or_default(),
                    c("free_memory_mb"),
                    c("cpus"),
                    c("instances"),
                    s["url"].as_str().unwrap_or_default()
                );
            }
        }
        Command::Server { command } => match command {
            ServerCommand::Add { id, address } => {
                client
                    .call(
                        "POST",
                        "/api/servers",
                        Some(json!({ "id": id, "url": address })),
                    )
                    .await?;
                println!("server {id} added");
            }
            ServerCommand::Upgrade { id } => {
                let v = client
                    .call("POST", &format!("/api/servers/{id}/upgrade"), None)
                    .await?;
                println!("{}", v["result"].as_str().unwrap_or_default());
            }
            ServerCommand::Rm { id } => {
                client
                    .call("DELETE", &format!("/api/servers/{id}"), None)
                    .await?;
                println!("server {id} removed");
            }
        },
        Command::Tenants => {
            let tenants = client.call("GET", "/api/tenants", None).await?;
            println!(
                "{:<32} {:<16} {:<24} {:<8} ERROR",
                "DOMAIN", "SERVER", "INSTANCE", "STATUS"
            );
            for t in tenants.as_array().into_iter().flatten() {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                println!(
                    "{:<32} {:<16} {:<24} {:<8} {}",
                    s("domain"),
                    s("server_id"),
                    format!("{}:{}", s("process"), s("instance_id")),
                    s("status"),
                    s("error")
                );
            }
        }
        Command::Tenant { command } => match command {
            TenantCommand::Add {
                domain,
                instance,
                server,
            } => {
                let (process, id) = instance
                    .split_once(':')
                    .ok_or_else(|| format!("{instance:?}: expected SERVICE:ID"))?;
                let body = json!({ "domain": domain, "server_id": server.unwrap_or_default(),
                                   "process": process, "instance_id": id });
                let placed = client.call("POST", "/api/tenants", Some(body)).await?;
                let on = placed["server_id"].as_str().unwrap_or_default();
                println!("tenant {domain} → {instance} on {on} (running)");
            }
            TenantCommand::Move { domain, to } => {
                let path = format!("/api/tenants/{domain}/move");
                client
                    .call("POST", &path, Some(json!({ "server_id": to })))
                    .await?;
                println!("tenant {domain} → {to}");
            }
            TenantCommand::Rm { domain } => {
                client
                    .call("DELETE", &format!("/api/tenants/{domain}"), None)
                    .await?;
                println!("tenant {domain} removed");
            }
        },
    }
    Ok(())
}

/// A token: the environment variable `var`, else `{db}.{suffix}` (made, 0600, on first
/// start).
fn server_token(
    db: &std::path::Path,
    var: &str,
    suffix: &str,
) -> Result<(String, Option<PathBuf>), String> {
    if let Ok(t) = std::env::var(var) {
        if t.len() < 16 {
            return Err(format!("{var} must be at least 16 characters"));
        }
        return Ok((t, None));
    }
    let path = PathBuf::from(format!("{}.{suffix}", db.display()));
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok((t.trim().to_owned(), Some(path)));
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("random token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((token, Some(path)))
}

async fn serve(
    db_path: &std::path::Path,
    listen: &str,
    lease_ms: u64,
    max_servers: usize,
    config: Option<&std::path::Path>,
) -> Result<(), String> {
    // A bad slum.toml is refused before anything starts.
    let members = match config {
        Some(path) => slum::config::load(path)?.servers,
        None => Vec::new(),
    };
    let db = SlumDb::init(db_path).await.map_err(|e| e.to_string())?;
    let (token, file) = server_token(db_path, "SLUM_TOKEN", "token")?;
    let (join_token, join_file) = server_token(db_path, "SLUM_JOIN_TOKEN", "join-token")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // One line (a reader that stops after it must not break a later write).
    let admin = match file {
        Some(f) => format!("admin token in {}", f.display()),
        None => "admin token from SLUM_TOKEN".into(),
    };
    let joining = match join_file {
        Some(f) => format!("join token in {}", f.display()),
        None => "join token from SLUM_JOIN_TOKEN".into(),
    };
    println!(
        "slum serve on http://{addr}, state in {}, {admin}, {joining}",
        db_path.display()
    );
    let state_dir = db_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let reach = match addr.ip().is_unspecified() {
        true => std::net::SocketAddr::new([127, 0, 0, 1].into(), addr.port()),
        false => addr,
    };
    let fleet = slum::operators::Fleet {
        url: format!("http://{reach}"),
        join_token: join_token.clone(),
        state_dir,
    };
    let members = Arc::new(slum::operators::Members::new(fleet, members));
    tokio::spawn(keep_members(db.clone(), members.clone()));
    let mut api = slum::api::Api::new(db, &token, &join_token, lease_ms);
    api.members = members;
    api.max_servers = max_servers;
    tokio::spawn(api.clone().watch_leases());
    let app = slum::api::router(api);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())
}

/// The servers of slum.toml: each one its operator starts (again) while slum does not see it
/// up, checked every 2 s.
async fn keep_members(db: SlumDb, members: Arc<slum::operators::Members>) {
    if members.list.is_empty() {
        return;
    }
    loop {
        for (server, _) in &members.list {
            let up =
                matches!(db.server(&server.id).await, Ok(s) if s.state == slum::ServerState::Up);
            if up {
                continue;
            }
            let (m, id) = (members.clone(), server.id.clone());
            let ensured = tokio::task::spawn_blocking(move || {
                let (server, operator) = m.get(&id).expect("a member");
                operator.ensure(server, &m.fleet)
            })
            .await
            .expect("an operator task");
            if let Err(e) = ensured {
                tracing::error!(server = %server.id, error = %e, "cannot start a server of slum.toml");
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}
