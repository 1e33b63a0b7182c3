//! `ten logs TARGET [--search TEXT] [--stream stdout|stderr] [--since 10m] [--limit N] [-f]`:
//! captured output of an instance (`api:prod`) or of every instance of a service (`api`),
//! from the persistent log store, oldest first; `-f` keeps printing new lines.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::bail;
use http_body_util::BodyExt;
use tenement_api::{LogParams, StoredLine, Stream};
use tenement_core::{InstanceKey, ServiceName};

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// SERVICE:ID for one instance, or SERVICE for all of its instances.
    target: String,
    /// Only lines containing this text (full-text search).
    #[arg(long)]
    search: Option<String>,
    /// Only stdout or only stderr.
    #[arg(long, value_parser = ["stdout", "stderr"])]
    stream: Option<String>,
    /// Only lines newer than this: a duration back from now (30s, 10m, 2h, 7d) or ms since the epoch.
    #[arg(long)]
    since: Option<String>,
    /// How many of the newest matching lines to show.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep printing new lines as they arrive.
    #[arg(short, long)]
    follow: bool,
}

fn print(line: &StoredLine) {
    let stream = match line.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let at = UNIX_EPOCH + Duration::from_millis(line.ts_ms);
    let at = humantime::format_rfc3339_millis(at);
    let who = &line.instance;
    // Control characters shown, not obeyed: a line must not move the cursor, erase its own
    // prefix or retitle the terminal (and so pass for another instance's).
    let text: String = line
        .text
        .chars()
        .flat_map(|c| match c {
            '\t' => vec![c],
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect();
    println!("{at} {who} {stream} {text}");
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let (instance, service) = match args.target.contains(':') {
        true => (Some(args.target.parse::<InstanceKey>()?.to_string()), None),
        false => (None, Some(args.target.parse::<ServiceName>()?.to_string())),
    };
    let params = LogParams {
        instance,
        service,
        stream: args.stream,
        since: args.since,
        search: args.search,
        limit: Some(args.limit),
        ..LogParams::default()
    };
    if !args.follow {
        let lines = client.logs(&params).await?;
        lines.iter().rev().for_each(print);
        return Ok(ExitCode::SUCCESS);
    }
    let res = client.follow_logs(&params).await?;
    let mut body = res.into_body();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("lost the connection to ten serve ({e})"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim_start)
            };
            match (field("event").unwrap_or("message"), field("data")) {
                ("end", _) => bail!("ten serve is stopping: no more lines to follow"),
                ("lagged", Some(n)) => eprintln!(
                    "ten logs: {n} lines came too fast to follow and were skipped here; they are stored: `ten logs` without -f (with --since) shows them"
                ),
                ("log", Some(data)) => {
                    if let Ok(line) = serde_json::from_str::<StoredLine>(data) {
                        print(&line);
                    }
                }
                _ => {}
            }
        }
    }
    bail!("ten serve ended the stream")
}
