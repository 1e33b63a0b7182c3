//! `ten token-gen [--tenant ID]`, `ten token list`, `ten token revoke ID`.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use hyper::Method;
use serde_json::{Value, json};
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
    let answer: Value = client
        .call(
            Method::POST,
            "/tokens",
            Some(json!({ "tenant": args.tenant })),
        )
        .await?;
    println!("{}", answer["token"].as_str().unwrap_or_default());
    eprintln!("keep it safe: it is not stored and cannot be shown again; use it as TENEMENT_TOKEN");
    Ok(ExitCode::SUCCESS)
}

pub async fn run(client: &Client, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::List => {
            let tokens: Vec<Value> = client.call(Method::GET, "/tokens", None).await?;
            println!("{:<6} {:<20} CREATED (UTC)", "ID", "TENANT");
            for t in tokens {
                let created =
                    UNIX_EPOCH + Duration::from_secs(t["created_at"].as_u64().unwrap_or(0));
                println!(
                    "{:<6} {:<20} {}",
                    t["id"].as_i64().unwrap_or(0),
                    t["tenant"].as_str().unwrap_or("(admin)"),
                    humantime::format_rfc3339_seconds(created)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let _: Value = client
                .call(Method::DELETE, &format!("/tokens/{id}"), None)
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
