//! `ten ps` and `ten health`: tables of instances.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::Method;
use serde_json::Value;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

async fn fetch(client: &Client) -> anyhow::Result<Vec<Value>> {
    client.call(Method::GET, "/instances", None).await
}

pub async fn ps(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let list = fetch(client).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = list.iter().map(|i| {
        vec![
            s(&i["instance"]),
            s(&i["state"]),
            s(&i["health"]),
            s(&i["isolation"]),
            uptime(&i["ready_since_ms"]),
            bytes(&i["memory_bytes"]),
            cpu(&i["cpu_usec"]),
            i["restarts"].to_string(),
            i["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            i["last_exit"].as_str().unwrap_or("").to_owned(),
        ]
    });
    let header = [
        "INSTANCE",
        "STATE",
        "HEALTH",
        "ISOLATION",
        "UPTIME",
        "MEM",
        "CPU",
        "RESTARTS",
        "PID",
        "LAST EXIT",
    ];
    print_table(&header, rows);
    Ok(ExitCode::SUCCESS)
}

/// Exit status 1 when any instance is not healthy, so scripts can use it. A sleeping instance
/// is fine: sleeping is how scale to zero looks, and the next request wakes it.
pub async fn health(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let list = fetch(client).await?;
    let all_healthy = list
        .iter()
        .all(|i| i["health"] == "healthy" || i["state"] == "sleeping");
    if args.json {
        let summary: Vec<Value> = list
            .iter()
            .map(|i| serde_json::json!({ "instance": i["instance"], "state": i["state"], "health": i["health"] }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let rows = list
            .iter()
            .map(|i| vec![s(&i["instance"]), s(&i["state"]), s(&i["health"])]);
        print_table(&["INSTANCE", "STATE", "HEALTH"], rows);
    }
    Ok(if all_healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bytes(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(b) if b < 1024 * 1024 => format!("{}K", b / 1024),
        Some(b) if b < 1024 * 1024 * 1024 => format!("{:.1}M", b as f64 / 1048576.0),
        Some(b) => format!("{:.2}G", b as f64 / 1073741824.0),
    }
}

fn cpu(usec: &Value) -> String {
    usec.as_u64()
        .map_or("-".into(), |u| format!("{:.2}s", u as f64 / 1e6))
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

fn uptime(since_ms: &Value) -> String {
    let Some(since) = since_ms.as_u64() else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(since) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}
