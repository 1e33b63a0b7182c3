//! `ten spawn`, `ten stop`, `ten restart`.

use std::process::ExitCode;

use anyhow::bail;
use tenement_core::{InstanceId, InstanceKey, ServiceName};

use crate::client::Client;

#[derive(clap::Args)]
pub struct SpawnArgs {
    /// SERVICE (with --id) or SERVICE:ID.
    target: String,
    /// Instance id (also accepted as --version, as in blue-green guides).
    #[arg(long, alias = "version")]
    id: Option<String>,
}

#[derive(clap::Args)]
pub struct KeyArg {
    /// The instance, as SERVICE:ID.
    instance: String,
}

impl SpawnArgs {
    pub fn key(&self) -> anyhow::Result<InstanceKey> {
        Ok(match (&self.id, self.target.contains(':')) {
            (Some(id), false) => InstanceKey::new(
                self.target.parse::<ServiceName>()?,
                id.parse::<InstanceId>()?,
            ),
            (None, true) => self.target.parse()?,
            (Some(_), true) => bail!("give either SERVICE:ID or SERVICE --id ID, not both"),
            (None, false) => bail!("which instance? give `{} --id ID` or `{0}:ID`", self.target),
        })
    }
}

impl KeyArg {
    pub fn key(&self) -> anyhow::Result<InstanceKey> {
        Ok(self.instance.parse()?)
    }
}

pub async fn spawn(client: &Client, args: SpawnArgs) -> anyhow::Result<ExitCode> {
    let key = args.key()?;
    let status = client.spawn(&key).await?;
    println!("{key} {}", status.state);
    Ok(ExitCode::SUCCESS)
}

pub async fn stop(client: &Client, args: KeyArg) -> anyhow::Result<ExitCode> {
    let key = args.key()?;
    client.stop(&key).await?;
    println!("{key} stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn restart(client: &Client, args: KeyArg) -> anyhow::Result<ExitCode> {
    let key = args.key()?;
    let status = client.restart(&key).await?;
    println!("{key} {}", status.state);
    Ok(ExitCode::SUCCESS)
}
