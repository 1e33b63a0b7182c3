//! `ten serve --slum URL --slum-token T`: this server joins a slum fleet and heartbeats.
//!
//! It joins with the fleet's join token (its id, the URL slum reaches it at, its capacity),
//! gets a secret of its own and the heartbeat period, and then reports its capacity every
//! period. A refused heartbeat (slum restarted with another state, or another server took
//! the id) joins again; an unreachable slum is retried every second, and this server keeps
//! serving whatever happens to slum.

use std::time::Duration;

use serde_json::{Value, json};
use slum::client::Client;
use tenement::Supervisor;
use tracing::{info, warn};

#[derive(clap::Args, Clone)]
pub struct SlumArgs {
    /// Join the slum fleet whose control plane is at URL (`http://slum.example.com:7400`).
    #[arg(long, value_name = "URL", requires = "slum_token")]
    pub slum: Option<String>,
    /// The fleet's join token (slum serve keeps it in `slum.db.join-token`).
    #[arg(
        long,
        env = "TEN_SLUM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub slum_token: Option<String>,
    /// This server's name in the fleet (default: the host name).
    #[arg(long, value_name = "ID")]
    pub slum_id: Option<String>,
    /// Where slum and the other servers reach this one (default: http://BIND:PORT).
    #[arg(long, value_name = "URL")]
    pub slum_advertise: Option<String>,
}

/// Starts joining and heartbeating, if `--slum` was given.
pub fn start(args: &SlumArgs, supervisor: Supervisor, default_url: String) {
    let (Some(slum), Some(token)) = (args.slum.clone(), args.slum_token.clone()) else {
        return;
    };
    let id = args.slum_id.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "tenement".into())
            .to_ascii_lowercase()
    });
    let url = args.slum_advertise.clone().unwrap_or(default_url);
    tokio::spawn(async move {
        let mut joined: Option<(String, Duration)> = None;
        loop {
            let capacity = capacity(&supervisor);
            match &joined {
                None => {
                    let body = json!({ "id": id, "url": url, "capacity": capacity });
                    match Client::new(&slum, &token)
                        .send("POST", "/api/join", Some(&body))
                        .await
                    {
                        Ok((200, v)) => {
                            let every =
                                Duration::from_millis(v["heartbeat_ms"].as_u64().unwrap_or(1000));
                            let secret = v["secret"].as_str().unwrap_or_default().to_owned();
                            info!(%slum, %id, "joined the slum fleet");
                            joined = Some((secret, every));
                            continue;
                        }
                        Ok((status, v)) => {
                            warn!(%slum, status, error = %v["error"], "slum refused the join")
                        }
                        Err(e) => warn!(%slum, error = %e, "cannot reach slum"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Some((secret, every)) => {
                    let every = *every;
                    let body = json!({ "id": id, "capacity": capacity });
                    let client = Client::new(&slum, secret);
                    match client.send("POST", "/api/heartbeat", Some(&body)).await {
                        Ok((204, _)) => {}
                        Ok((status, v)) => {
                            warn!(%slum, status, error = %v["error"], "slum refused a heartbeat: joining again");
                            joined = None;
                            continue;
                        }
                        Err(e) => warn!(%slum, error = %e, "cannot reach slum"),
                    }
                    tokio::time::sleep(every).await;
                }
            }
        }
    });
}

/// This machine's memory and cores, and how many instances this server runs.
fn capacity(supervisor: &Supervisor) -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    json!({
        "memory_mb": kb("MemTotal:") / 1024,
        "free_memory_mb": kb("MemAvailable:") / 1024,
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "instances": supervisor.count(),
    })
}
