//! Steering traffic: `ten weight`, `ten route`, `ten deploy`.

use std::process::ExitCode;

use tenement_api::{DeployRequest, RouteRequest};
use tenement_core::{InstanceId, InstanceKey, ServiceName};

use crate::client::Client;

#[derive(clap::Args)]
pub struct WeightArgs {
    /// SERVICE:ID
    instance: String,
    /// 0-100
    #[arg(allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(0..=100))]
    weight: u32,
}

#[derive(clap::Args)]
pub struct RouteArgs {
    /// The service whose traffic moves (both instances are its).
    service: String,
    /// Instance id that loses its traffic.
    #[arg(long)]
    from: String,
    /// Instance id that gets it.
    #[arg(long)]
    to: String,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// The new instance: SERVICE:ID, or SERVICE with --id ID.
    #[command(flatten)]
    instance: crate::cmd::instance::SpawnArgs,
    /// Share of traffic once healthy (0-100).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    weight: u32,
    /// Seconds to wait for it to become healthy (default, and at most: the service's
    /// startup_timeout, which bounds every start).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Id of an instance to replace: it stops once the new one is healthy and its in-flight
    /// requests have finished.
    #[arg(long)]
    replace: Option<String>,
}

pub async fn weight(client: &Client, a: WeightArgs) -> anyhow::Result<ExitCode> {
    let key: InstanceKey = a.instance.parse()?;
    let s = client.set_weight(&key, a.weight).await?;
    println!("{key} weight {}", s.weight);
    Ok(ExitCode::SUCCESS)
}

pub async fn route(client: &Client, a: RouteArgs) -> anyhow::Result<ExitCode> {
    let service: ServiceName = a.service.parse()?;
    let (from, to): (InstanceId, InstanceId) = (a.from.parse()?, a.to.parse()?);
    let req = RouteRequest {
        service: service.to_string(),
        from: from.to_string(),
        to: to.to_string(),
    };
    let r = client.route(&req).await?;
    println!(
        "{} weight {}, {} weight {}",
        r.from, r.from_weight, r.to, r.to_weight
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn deploy(client: &Client, a: DeployArgs) -> anyhow::Result<ExitCode> {
    let key = a.instance.key()?;
    // --replace v1, or the whole key api:v1 (of the same service).
    let replace = match a.replace.as_deref().map(|r| r.split_once(':')) {
        Some(Some((service, id))) if service == key.service.as_str() => Some(id.to_owned()),
        Some(Some((service, _))) => {
            anyhow::bail!(
                "--replace names service `{service}`, but this deploys `{}`",
                key.service
            )
        }
        Some(None) => a.replace.clone(),
        None => None,
    };
    if let Some(old) = &replace {
        old.parse::<InstanceId>()?;
    }
    let req = DeployRequest {
        service: key.service.to_string(),
        id: key.id.to_string(),
        weight: Some(a.weight),
        timeout: a.timeout,
        replace: replace.clone(),
    };
    let s = client.deploy(&req).await?;
    println!("{key} {} (weight {})", s.state, s.weight);
    if let Some(old) = replace {
        println!("{}:{old} replaced", key.service);
    }
    Ok(ExitCode::SUCCESS)
}
