//! What slum keeps.

use serde::{Deserialize, Serialize};

/// A tenement server of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Server {
    /// A short name (`east`): letters, digits, `-` and `_`.
    pub id: String,
    /// Where its API and front door are (`http://east.example.com`).
    pub url: String,
    /// Its routing domain (`[settings] domain`): its instance `api:prod` is
    /// `prod.api.{domain}` there. Reported when it joins.
    pub domain: String,
    pub state: ServerState,
    /// What it last reported.
    pub capacity: Capacity,
    /// Milliseconds since the Unix epoch of its last heartbeat (0: never).
    pub last_seen_ms: u64,
    /// Since when it has been `up` (a server takes over another's tenants only after one
    /// full lease up).
    pub up_since_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Added, never heard from.
    #[default]
    New,
    /// Heartbeating within its lease.
    Up,
    /// Its lease ran out: its tenants were (or are being) placed elsewhere.
    Down,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::New => "new",
            ServerState::Up => "up",
            ServerState::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ServerState::New, ServerState::Up, ServerState::Down]
            .into_iter()
            .find(|v| v.name() == s)
    }
}

/// A server's resources, as it reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capacity {
    pub memory_mb: u64,
    pub free_memory_mb: u64,
    pub cpus: u32,
    pub instances: u32,
}

impl Capacity {
    /// Within what SQLite keeps (a server reporting u64::MAX gets the most, not an error).
    pub fn clamped(self) -> Self {
        const MOST: u64 = i64::MAX as u64;
        Capacity {
            memory_mb: self.memory_mb.min(MOST),
            free_memory_mb: self.free_memory_mb.min(MOST),
            cpus: self.cpus,
            instances: self.instances,
        }
    }
}

/// A customer's domain, served by one instance on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tenant {
    /// `customer.example.com`: the key.
    pub domain: String,
    pub server_id: String,
    /// The service (`[service.NAME]` of the server's tenement.toml).
    pub process: String,
    pub instance_id: String,
    /// Milliseconds since the Unix epoch when it was added (set by the store).
    pub created_ms: u64,
    /// Bumped at every placement (add, move, failover): a server's report names the placement
    /// it is about.
    pub epoch: u64,
    /// `pending` (placed, not reported running yet), `running` or `failed`.
    pub status: String,
    /// Why the server could not start it (`failed`).
    pub error: String,
}

/// What a server says of one of its placements in a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub domain: String,
    pub epoch: u64,
    /// `running`, `starting` or `failed`.
    pub state: String,
    pub error: String,
}
