//! `ten token-gen [--tenant ID]`, `ten token list`, `ten token revoke ID`.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use tenement_core::InstanceId;

use crate::client::Client;

#[derive(clap::Args)]
pub struct GenArgs {
    /// Limit the token to instances with this id (e.g. every `*:alice`).
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Ids, tenants and creation times (never the secrets).
    List,
    /// Revoke a token at once.
    Revoke {
        /// The token's id (`ten token list`; the number after `ten_` in the token).
        id: i64,
    },
}

pub async fn generate(client: &Client, args: GenArgs) -> anyhow::Result<ExitCode> {
    let tenant = args
        .tenant
        .as_deref()
        .map(str::parse::<InstanceId>)
        .transpose()?;
    // Before the first `ten serve` there is no server to ask: write the token into the
    // state store it will open (SQLite in WAL mode; a server starting meanwhile is fine).
    if let Some(data_dir) = client.offline_data_dir() {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let store = tenement::Store::open(&data_dir.join("tenement.db"))?;
        let token = tenement::Tokens::new(store).generate(tenant).await?;
        println!("{token}");
        eprintln!(
            "no server was running: stored in {}; keep it safe: it cannot be shown again; use it as TENEMENT_TOKEN",
            data_dir.join("tenement.db").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let created = client.token_gen(tenant.as_ref()).await?;
    println!("{}", created.token);
    eprintln!("keep it safe: it is not stored and cannot be shown again; use it as TENEMENT_TOKEN");
    Ok(ExitCode::SUCCESS)
}

pub async fn run(client: &Client, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::List => {
            let tokens = client.tokens().await?;
            println!("{:<6} {:<20} CREATED (UTC)", "ID", "TENANT");
            for t in tokens {
                let created = UNIX_EPOCH + Duration::from_secs(t.created_at.max(0) as u64);
                println!(
                    "{:<6} {:<20} {}",
                    t.id,
                    t.tenant.as_deref().unwrap_or("(admin)"),
                    humantime::format_rfc3339_seconds(created)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            client.token_revoke(id).await?;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
