//! `ten serve --slum URL --slum-token T` (or `[settings.slum]`): this server is a member of a
//! slum fleet.
//!
//! It joins with the fleet's join token (its id, the URL the fleet reaches it at, its routing
//! domain, its capacity), gets a secret of its own, and then heartbeats: each heartbeat carries
//! its capacity, the table version it has and a report on each tenant placed here; slum holds
//! the answer until the table changes or a heartbeat period passes, so a placement arrives at
//! once. A new table is applied here (tenants moved away are stopped first, tenants placed
//! here are started) and kept in the state store; the front door routes by it
//! (`tenement::fleet`).
//!
//! When slum cannot be reached and the lease (as this server counts it: from the sending of
//! its last answered heartbeat) has run out, it asks its peers: if every peer that was up has
//! lost slum too, slum is down and nothing can move, so it goes on serving; otherwise its
//! fleet tenants are fenced (refused at once by the front door, put to sleep here).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use slum::client::Client;
use tenement::Supervisor;
use tenement::fleet::Table;
use tenement_core::InstanceKey;
use tracing::{info, warn};

#[derive(clap::Args, Clone)]
pub struct SlumArgs {
    /// Join the slum fleet whose control plane is at URL (`http://slum.example.com:7400`);
    /// default: `[settings.slum] url`.
    #[arg(long, value_name = "URL")]
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
    /// Where slum and the other servers reach this one (default: http://BIND:PORT, and for
    /// an unspecified BIND the address this host reaches slum from).
    #[arg(long, value_name = "URL")]
    pub slum_advertise: Option<String>,
}

/// How a placement here went.
#[derive(Clone, PartialEq)]
enum Outcome {
    Starting,
    Running,
    Failed(String),
}

/// This server, as a member of its fleet.
struct Member {
    slum: String,
    token: String,
    id: String,
    url: String,
    memory_mb: Option<u64>,
    supervisor: Supervisor,
    /// Per domain placed here: the placement's epoch, and how it went.
    outcomes: Mutex<HashMap<String, (u64, Outcome)>>,
    /// An outcome changed: report it now rather than at the next heartbeat.
    news: tokio::sync::Notify,
    /// The heartbeat period slum asks for (ms).
    every: AtomicU64,
}

/// Starts membership if `--slum` (or `[settings.slum]`) says so; an error if it is half-given.
pub fn start(
    args: &SlumArgs,
    supervisor: Supervisor,
    front: std::net::SocketAddr,
) -> Result<(), String> {
    let config = supervisor.config();
    let file = config.settings.slum.as_ref();
    let Some(slum) = args
        .slum
        .clone()
        .or_else(|| file.and_then(|s| s.url.clone()))
    else {
        return Ok(());
    };
    let token = args
        .slum_token
        .clone()
        .or_else(|| file.and_then(|s| s.token.clone()))
        .ok_or("joining a slum fleet needs its join token: --slum-token, TEN_SLUM_TOKEN or [settings.slum] token")?;
    let id = args
        .slum_id
        .clone()
        .or_else(|| file.and_then(|s| s.id.clone()))
        .unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "tenement".into())
                .to_ascii_lowercase()
        });
    let url = args
        .slum_advertise
        .clone()
        .or_else(|| file.and_then(|s| s.advertise.clone()))
        .unwrap_or_else(|| format!("http://{}", advertised(front, &slum)));
    if args.slum_token.is_some() && std::env::var_os("TEN_SLUM_TOKEN").is_none() {
        warn!(
            "--slum-token on the command line can be read by every local user (tenants too) in /proc: give TEN_SLUM_TOKEN or [settings.slum] token = \"${{VAR}}\" instead"
        );
    }
    supervisor.fleet().set_peer_token(&token);
    let member = Arc::new(Member {
        slum,
        token,
        id,
        url,
        memory_mb: file.and_then(|s| s.memory_mb),
        supervisor,
        outcomes: Mutex::default(),
        news: tokio::sync::Notify::new(),
        every: AtomicU64::new(1000),
    });
    tokio::spawn(member.run());
    Ok(())
}

/// The front door's address as others reach it: an unspecified bind address becomes the
/// address this host reaches slum from.
fn advertised(front: std::net::SocketAddr, slum: &str) -> std::net::SocketAddr {
    if !front.ip().is_unspecified() {
        return front;
    }
    let authority = slum
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let outward = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut a| a.next())
        .and_then(|to| {
            let any: std::net::SocketAddr = match to {
                std::net::SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let probe = std::net::UdpSocket::bind(any).ok()?;
            probe.connect(to).ok()?;
            probe.local_addr().ok()
        });
    match outward {
        Some(a) => std::net::SocketAddr::new(a.ip(), front.port()),
        None => front,
    }
}

impl Member {
    async fn run(self: Arc<Self>) {
        // A server that joined before (a restart) heartbeats with its secret: no join.
        let mut secret: Option<String> = self.supervisor.fleet_secret().await;
        let mut fenced = false;
        loop {
            let Some(key) = secret.clone() else {
                match self.join().await {
                    Ok(s) => secret = Some(s),
                    Err(e) => {
                        warn!(slum = %self.slum, error = %e, "cannot join the slum fleet");
                        fenced = self.lost(fenced).await;
                        tokio::time::sleep(RETRY).await;
                    }
                }
                continue;
            };
            let sent = tenement::now_ms();
            let answer = tokio::select! {
                a = self.heartbeat(&key) => Some(a),
                // A placement here settled: report it now (the held heartbeat is dropped).
                _ = self.news.notified() => None,
            };
            match answer {
                None => continue,
                Some(Ok(v)) => {
                    let mut new_table = false;
                    if let Some(table) = v.get("table") {
                        match serde_json::from_value::<Table>(table.clone()) {
                            Ok(t) => {
                                self.apply(t).await;
                                new_table = true;
                            }
                            Err(e) => {
                                warn!(error = %e, "slum sent a table this server cannot read")
                            }
                        }
                    }
                    let lease = v["lease_ms"].as_u64().unwrap_or(3000);
                    let every = v["heartbeat_ms"].as_u64().unwrap_or(1000);
                    self.every.store(every, Ordering::Relaxed);
                    let fleet = self.supervisor.fleet();
                    fleet.hold_until(sent + lease);
                    if fenced {
                        info!("slum answers again: serving the fleet's tenants placed here");
                        fenced = false;
                    }
                    if let Err(e) = self.supervisor.keep_fleet(new_table).await {
                        warn!(error = %e, "cannot keep the fleet's table in the state store");
                    }
                }
                Some(Err(Refusal::Unauthorized(e))) => {
                    warn!(slum = %self.slum, error = %e, "slum refused a heartbeat: joining again");
                    secret = None;
                }
                Some(Err(Refusal::Other(e))) => {
                    warn!(slum = %self.slum, error = %e, "cannot reach slum");
                    fenced = self.lost(fenced).await;
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    async fn join(&self) -> Result<String, String> {
        let body = json!({
            "id": self.id, "url": self.url,
            "domain": self.supervisor.routing_domain(),
            "capacity": self.capacity(),
            "secret": self.supervisor.fleet_secret().await.unwrap_or_default(),
        });
        let v = Client::new(&self.slum, &self.token)
            .call("POST", "/api/join", Some(body))
            .await?;
        let secret = v["secret"].as_str().unwrap_or_default().to_owned();
        if let Err(e) = self.supervisor.keep_fleet_secret(&secret).await {
            warn!(error = %e, "cannot keep the fleet secret: after a restart this server cannot join under its id until `slum server rm` frees it");
        }
        info!(slum = %self.slum, id = %self.id, url = %self.url, "joined the slum fleet");
        Ok(secret)
    }

    async fn heartbeat(&self, secret: &str) -> Result<Value, Refusal> {
        let body = json!({
            "id": self.id,
            "url": self.url,
            "domain": self.supervisor.routing_domain(),
            "capacity": self.capacity(),
            "version": self.supervisor.fleet().table().version,
            "reports": self.reports(),
        });
        // slum holds the answer for up to a heartbeat period: longer means it is gone.
        let mut client = Client::new(&self.slum, secret);
        client.patience = Duration::from_millis(self.every.load(Ordering::Relaxed) + 1000);
        match client.send("POST", "/api/heartbeat", Some(&body)).await {
            Ok((200, v)) => Ok(v),
            Ok((401, v)) => Err(Refusal::Unauthorized(v["error"].to_string())),
            Ok((status, v)) => Err(Refusal::Other(format!("{status}: {}", v["error"]))),
            Err(e) => Err(Refusal::Other(e)),
        }
    }

    fn reports(&self) -> Vec<Value> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        outcomes
            .iter()
            .map(|(domain, (epoch, outcome))| {
                let (state, error) = match outcome {
                    Outcome::Starting => ("starting", ""),
                    Outcome::Running => ("running", ""),
                    Outcome::Failed(e) => ("failed", e.as_str()),
                };
                json!({ "domain": domain, "epoch": epoch, "state": state, "error": error })
            })
            .collect()
    }

    /// Takes a new table: tenants no longer placed here are stopped (their names refused
    /// meanwhile), then tenants newly placed here are started.
    async fn apply(self: &Arc<Self>, table: Table) {
        let fleet = self.supervisor.fleet();
        let before = fleet.here();
        if table.me != self.id {
            warn!(me = %table.me, id = %self.id, "slum sent another server's table: ignored");
            return;
        }
        let here: Vec<(String, u64, InstanceKey)> = table
            .tenants
            .iter()
            .filter(|t| t.server_id == self.id)
            .filter_map(|t| Some((t.domain.clone(), t.epoch, t.key()?)))
            .collect();
        fleet.set(table);
        for key in before
            .iter()
            .filter(|k| !here.iter().any(|(_, _, h)| h == *k))
        {
            match self.supervisor.stop(key).await {
                Ok(()) => info!(instance = %key, "moved or removed by slum: stopped"),
                Err(tenement::Error::NotFound(_)) => {}
                Err(e) => {
                    warn!(instance = %key, error = %e, "cannot stop an instance slum moved away")
                }
            }
            fleet.left(key);
        }
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        outcomes.retain(|domain, _| here.iter().any(|(d, _, _)| d == domain));
        for (domain, epoch, key) in here {
            if outcomes.get(&domain).is_some_and(|(e, _)| *e == epoch) {
                continue;
            }
            outcomes.insert(domain.clone(), (epoch, Outcome::Starting));
            let member = self.clone();
            tokio::spawn(async move {
                let outcome = match member.supervisor.spawn(&key).await {
                    Ok(_) | Err(tenement::Error::AlreadyExists(_)) => Outcome::Running,
                    Err(e) => Outcome::Failed(e.to_string()),
                };
                match &outcome {
                    Outcome::Failed(e) => {
                        warn!(%domain, instance = %key, error = %e, "cannot start a tenant slum placed here")
                    }
                    _ => info!(%domain, instance = %key, "started a tenant slum placed here"),
                }
                let mut outcomes = member.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(o) = outcomes.get_mut(&domain).filter(|(e, _)| *e == epoch) {
                    o.1 = outcome;
                    member.news.notify_one();
                }
            });
        }
    }

    /// slum could not be reached: asks the peers that were up whether they still hold their
    /// leases. If none does, slum is down (or has lost every server, and marks them all down:
    /// it moves tenants only to a server up for a full lease, long after this server asks
    /// again), so it can move nothing, and this server serves on, even past its lease. Asked at
    /// every failed attempt (every 500 ms), so the answer comes soon after the last peer's lease
    /// ends. Once its own lease is out and slum is not known to be down, it fences (puts its
    /// fleet tenants to sleep). Whether it is fenced now.
    ///
    /// (Not "have the peers been silent a while": a peer whose answer is merely slow would make
    /// a cut-off server serve its old copy. A lease that a peer no longer holds is a fact.)
    async fn lost(&self, fenced: bool) -> bool {
        let fleet = self.supervisor.fleet();
        let table = fleet.table();
        let peers: Vec<_> = table
            .servers
            .iter()
            .filter(|p| p.id != self.id && p.state == "up")
            .collect();
        let asked = peers.iter().map(|p| async {
            let mut client = Client::new(&p.url, &self.token);
            client.patience = Duration::from_secs(1);
            match client.call("GET", "/api/fleet/lease", None).await {
                Ok(v) => v["lease_held"].as_bool(),
                Err(_) => None,
            }
        });
        let answers = futures_util::future::join_all(asked).await;
        let slum_down = answers.iter().all(|a| *a == Some(false));
        fleet.set_slum_down(slum_down);
        if fleet.lease_held() {
            return false;
        }
        if slum_down {
            if fenced {
                info!("every peer has lost slum too: slum is down, serving on");
            }
            return false;
        }
        if !fenced {
            warn!(
                "lost the fleet lease and a peer still hears from slum (or cannot be asked): fencing this server's fleet tenants"
            );
            for key in fleet.here() {
                let _ = self.supervisor.put_to_sleep(&key).await;
            }
        }
        true
    }

    /// This machine's memory and cores, and how many instances this server runs.
    fn capacity(&self) -> Value {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb = |key: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (total, available) = (kb("MemTotal:") / 1024, kb("MemAvailable:") / 1024);
        // Offered memory: what the machine has, or what [settings.slum] memory_mb offers, less
        // what this server's instances may take (their memory limits).
        let (offered, free) = match self.memory_mb {
            Some(offered) => {
                let config = self.supervisor.config();
                let committed: u64 = self
                    .supervisor
                    .list_cached()
                    .iter()
                    .filter_map(|s| config.service(&s.instance.service)?.memory_limit_mb)
                    .sum();
                (offered, offered.saturating_sub(committed).min(available))
            }
            None => (total, available),
        };
        json!({
            "memory_mb": offered,
            "free_memory_mb": free,
            "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "instances": self.supervisor.count(),
        })
    }
}

/// How soon a server that cannot reach slum tries again (and asks its peers).
const RETRY: Duration = Duration::from_millis(500);

enum Refusal {
    /// The secret is not (or no longer) good: join again.
    Unauthorized(String),
    Other(String),
}
