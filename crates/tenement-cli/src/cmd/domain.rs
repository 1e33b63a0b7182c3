//! `ten domain add NAME SERVICE:ID`, `ten domain rm NAME`, `ten domain ls`: custom domains.

use std::process::ExitCode;

use tenement_core::InstanceKey;

use crate::client::Client;

#[derive(clap::Subcommand)]
pub enum DomainCommand {
    /// Route a domain of a customer's own to an instance (and, with HTTPS, get its
    /// certificate now). Point the domain's DNS at this server first.
    Add {
        /// The domain, e.g. shop.customer.org.
        name: String,
        /// The instance, as SERVICE:ID.
        instance: String,
    },
    /// Stop routing a domain.
    Rm { name: String },
    /// The custom domains and their instances.
    Ls,
}

pub async fn run(client: &Client, cmd: DomainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DomainCommand::Add { name, instance } => {
            let key: InstanceKey = instance.parse()?;
            let added = client.domain_add(&name, &key).await?;
            println!("{} → {}", added.name, added.instance);
        }
        DomainCommand::Rm { name } => {
            client.domain_remove(&name).await?;
            println!("{name} removed");
        }
        DomainCommand::Ls => {
            let list = client.domains().await?;
            println!("{:<40} INSTANCE", "DOMAIN");
            for d in list {
                println!("{:<40} {}", d.name, d.instance);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
