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
    pub state: ServerState,
    /// What it last reported.
    pub capacity: Capacity,
    /// Milliseconds since the Unix epoch of its last heartbeat (0: never).
    pub last_seen_ms: u64,
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
}
