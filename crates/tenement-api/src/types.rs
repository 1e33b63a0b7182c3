//! The requests and answers of the management API.

use std::borrow::Cow;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tenement_core::InstanceKey;

/// An error answer: `{"error": "what went wrong", "code": "not_found"}`. `code` is stable, for
/// programs; `error` is for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

/// The outcome of the last health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet (or not running).
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// What `ten ps` and `GET /api/instances` show about an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub instance: InstanceKey,
    pub service: String,
    pub id: String,
    /// `starting`, `running`, `sleeping`, `stopping`, `stopped`, `failed`...
    pub state: Cow<'static, str>,
    pub health: Health,
    pub isolation: Cow<'static, str>,
    /// Process group id of the running instance (its shim).
    pub pid: Option<u32>,
    /// When the current run became ready, in ms since the Unix epoch.
    pub ready_since_ms: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Times the kernel OOM-killed this instance.
    pub oom_kills: u32,
    /// Failed health checks over the instance's life.
    pub health_check_failures: u64,
    /// Current memory use of the instance's cgroup, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time the current run has used, in microseconds.
    pub cpu_usec: Option<u64>,
    /// The instance's data directory (`HOME`).
    pub data_dir: PathBuf,
    pub storage_quota_mb: Option<u64>,
    /// Bytes used on the instance's quota'd filesystem.
    pub storage_used_bytes: Option<u64>,
    pub socket: PathBuf,
    pub port: u16,
    pub weight: u8,
    /// The current run's cgroup directories (one per controller hierarchy on a v1 host; none
    /// when not running or when the host has no cgroups).
    pub cgroups: Vec<PathBuf>,
}

/// `POST /api/instances`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub service: String,
    pub id: String,
}

/// `POST /api/instances/{key}/weight`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightRequest {
    pub weight: u32,
}

/// `POST /api/route`: move all of a service's traffic from one instance to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteRequest {
    pub service: String,
    pub from: String,
    pub to: String,
}

/// What `POST /api/route` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteAnswer {
    pub from: InstanceKey,
    pub from_weight: u8,
    pub to: InstanceKey,
    pub to_weight: u8,
}

/// `POST /api/deploy`: start an instance, wait until it is healthy, give it traffic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployRequest {
    pub service: String,
    pub id: String,
    pub weight: Option<u32>,
    /// Seconds to wait for the new instance to become healthy.
    pub timeout: Option<u64>,
    /// Id of the instance to replace once the new one is healthy.
    pub replace: Option<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadReport {
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_changed: Vec<String>,
    /// Instances replaced (changed service), started (new `[instances]`), stopped (removed).
    pub replaced: Vec<String>,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    /// Settings that changed and now apply to instances started from now on.
    pub settings_changed: Vec<String>,
    /// Settings that changed but need a restart of `ten serve` (their running value is kept).
    pub needs_restart: Vec<String>,
    /// Instances that could not be replaced or started, with why.
    pub failed: Vec<String>,
}

/// What `ten upgrade` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upgraded {
    /// The new server's pid.
    pub pid: u32,
    /// Instances it adopted.
    pub adopted: usize,
    /// How long connections waited in the listening sockets' queues.
    pub handover_ms: f64,
}

/// `POST /api/tokens` (an empty body makes an admin token).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Limit the token to instances with this id.
    pub tenant: Option<String>,
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub tenant: Option<String>,
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: i64,
    pub tenant: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

/// Which output of an instance a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A log line, as `GET /api/logs` answers it and `follow=true` streams it (`event: log`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredLine {
    /// Its row in the log store (live lines, not stored yet, have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// `service:id`.
    pub instance: String,
    pub stream: Stream,
    pub text: String,
}

/// `GET /api/logs` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogParams {
    /// `service:id`
    pub instance: Option<String>,
    pub service: Option<String>,
    /// `stdout` or `stderr`
    pub stream: Option<String>,
    /// Milliseconds since the epoch, or a duration back from now (`90s`, `10m`, `2h`, `7d`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub search: Option<String>,
    pub limit: Option<usize>,
    #[serde(default)]
    pub follow: bool,
}

impl LogParams {
    /// As a query string (`instance=api%3Aprod&limit=100`).
    pub fn to_query(&self) -> String {
        let limit = self.limit.map(|n| n.to_string());
        let follow = self.follow.then(|| "true".to_owned());
        [
            ("instance", &self.instance),
            ("service", &self.service),
            ("stream", &self.stream),
            ("since", &self.since),
            ("until", &self.until),
            ("search", &self.search),
            ("limit", &limit),
            ("follow", &follow),
        ]
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// Percent-encoding of a query value or path segment (everything but RFC 3986's unreserved
/// characters).
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A custom domain and the instance it routes to (`POST /api/domains` takes one; `GET`
/// lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    pub instance: InstanceKey,
}

/// `GET /health` (on the bare domain) and `GET /api/health`'s summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerHealth {
    pub status: String,
    pub instances: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_params_become_an_encoded_query() {
        let p = LogParams {
            instance: Some("api:prod".into()),
            search: Some("a b&c=d/é".into()),
            limit: Some(5),
            follow: true,
            ..LogParams::default()
        };
        assert_eq!(
            p.to_query(),
            "instance=api%3Aprod&search=a%20b%26c%3Dd%2F%C3%A9&limit=5&follow=true"
        );
    }
}
