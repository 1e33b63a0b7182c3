//! `ten logs INSTANCE [--limit N] [-f]`: the captured output tail, optionally followed live.

use std::process::ExitCode;

use anyhow::bail;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;
use tenement_core::InstanceKey;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// The instance, as SERVICE:ID.
    instance: String,
    /// How many of the newest lines to show.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep printing new lines as they arrive.
    #[arg(short, long)]
    follow: bool,
}

fn print(line: &Value) {
    let stream = line["stream"].as_str().unwrap_or("?");
    let text = line["text"].as_str().unwrap_or("");
    let ts = line["ts_ms"].as_u64().unwrap_or(0);
    println!("{}.{:03} {stream} {text}", ts / 1000, ts % 1000);
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let key: InstanceKey = args.instance.parse()?;
    let path = format!("/instances/{key}/logs?limit={}", args.limit);
    if !args.follow {
        let lines: Vec<Value> = client.call(Method::GET, &path, None).await?;
        lines.iter().for_each(print);
        return Ok(ExitCode::SUCCESS);
    }
    let res = client
        .request(Method::GET, &format!("{path}&follow=true"), None)
        .await?;
    if !res.status().is_success() {
        let body = res.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        bail!("{}", v["error"].as_str().unwrap_or("cannot follow logs"));
    }
    let mut body = res.into_body();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                if let Ok(line) = serde_json::from_str::<Value>(data.trim_start()) {
                    print(&line);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
