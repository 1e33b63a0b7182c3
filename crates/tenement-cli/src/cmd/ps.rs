//! `ten ps` and `ten health`: tables of instances.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use tenement_api::Health;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn ps(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let list = client.instances().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = list.iter().map(|i| {
        vec![
            i.instance.to_string(),
            i.state.to_string(),
            i.health.as_str().to_owned(),
            i.isolation.to_string(),
            uptime(i.ready_since_ms),
            bytes(i.memory_bytes),
            cpu(i.cpu_usec),
            i.restarts.to_string(),
            i.pid.map_or("-".into(), |p| p.to_string()),
            i.last_exit.clone().unwrap_or_default(),
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
    let list = client.instances().await?;
    let all_healthy = list
        .iter()
        .all(|i| i.health == Health::Healthy || i.state == "sleeping");
    if args.json {
        let summary: Vec<serde_json::Value> = list
            .iter()
            .map(|i| serde_json::json!({ "instance": i.instance, "state": i.state, "health": i.health }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let rows = list.iter().map(|i| {
            vec![
                i.instance.to_string(),
                i.state.to_string(),
                i.health.as_str().into(),
            ]
        });
        print_table(&["INSTANCE", "STATE", "HEALTH"], rows);
    }
    Ok(if all_healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bytes(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b < 1024 * 1024 => format!("{}K", b / 1024),
        Some(b) if b < 1024 * 1024 * 1024 => format!("{:.1}M", b as f64 / 1048576.0),
        Some(b) => format!("{:.2}G", b as f64 / 1073741824.0),
    }
}

fn cpu(usec: Option<u64>) -> String {
    usec.map_or("-".into(), |u| format!("{:.2}s", u as f64 / 1e6))
}

fn uptime(since_ms: Option<u64>) -> String {
    let Some(since) = since_ms else {
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
