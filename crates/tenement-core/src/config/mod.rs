//! The `tenement.toml` model, parsed and validated in one pass that reports every problem.
//!
//! See `docs/configuration.md` for the user-facing reference. Relative paths (`data_dir`,
//! `workdir`, `cache_dir`) are resolved against the directory of the configuration file.

mod error;
mod parse;
mod routing;
mod service;
pub mod socket;
pub mod template;
mod walk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use error::{ConfigError, ConfigErrors};
pub use template::{Template, Vars};

use crate::{InstanceKey, ServiceName};

/// A whole `tenement.toml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it was read from.
    #[serde(skip)]
    pub file: PathBuf,
    pub settings: Settings,
    #[serde(rename = "service")]
    pub services: BTreeMap<ServiceName, Service>,
    /// `[instances]`, flattened, in file order.
    #[serde(serialize_with = "parse::instances_as_map")]
    pub instances: Vec<InstanceKey>,
    pub routing: Routing,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Seconds between health checks.
    pub health_check_interval: u64,
    pub max_restarts: u32,
    /// Seconds.
    pub restart_window: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Largest request body the front door forwards, in MB.
    pub max_body_mb: u64,
    /// Largest request head (request line + headers) the front door reads, in KB.
    pub max_header_kb: u64,
    /// Seconds a client may take to send its request head (also the keep-alive idle limit).
    pub header_timeout: u64,
    /// Seconds a running instance outlives `ten serve` waiting for a new one to adopt it
    /// (after a crash); then its shim stops it. 0: it stops with the server.
    pub adopt_timeout: u64,
    /// Seconds an instance may take to start answering a proxied request (then 504).
    pub upstream_timeout: u64,
    pub tls: Tls,
    pub sandbox: Sandbox,
    /// `[settings.slum]`: this server joins a slum fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slum: Option<Slum>,
    /// Run instances whose limits cannot be applied (no cgroups here) instead of failing.
    pub allow_unlimited: bool,
    /// Whether `/metrics` needs a bearer token.
    pub metrics_auth: bool,
    /// Body-less proxied requests take the proxy engine's own HTTP/1.1 loop (else hyper
    /// serves every request; for comparing, or if the fast path is ever suspected).
    pub fast_path: bool,
    /// Days captured log lines are kept.
    pub log_retention_days: u64,
    /// Most space the log store may use, in MB (oldest lines go first).
    pub log_max_mb: u64,
    /// Most client connections the front door holds at once; 0 = sized from the file
    /// descriptor limit at start (see docs/routing.md).
    pub max_connections: u32,
    /// Most client connections from one address at once; 0 = no per-address cap.
    pub max_connections_per_ip: u32,
}

/// `[settings.sandbox]`: how `isolation = "sandbox"` runs gVisor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sandbox {
    /// The `runsc` executable (looked up in `PATH` when it has no `/`).
    pub runsc: String,
    /// gVisor platform: `ptrace` (works everywhere), `systrap` or `kvm`.
    pub platform: String,
    /// `none` (loopback only) or `host` (the host's network stack).
    pub network: String,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            runsc: "runsc".into(),
            platform: "ptrace".into(),
            network: "none".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tls {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub cache_dir: PathBuf,
    pub staging: bool,
    pub https_port: u16,
    pub http_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_provider: Option<String>,
    /// The ACME directory (default: Let's Encrypt's, production or staging).
    pub directory_url: String,
    /// A root certificate to trust for the directory (a private CA); none: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_root: Option<PathBuf>,
    /// How names are proven: `http-01` (on http_port) or `tls-alpn-01` (on https_port).
    pub challenge: String,
    /// Most certificates issued in 7 days (the CA's limit per registered domain, less a margin).
    pub max_certificates_per_week: u32,
    /// `[settings.tls.rfc2136]`: DNS-01 by dynamic update (`dns_provider = "rfc2136"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136>,
}

/// `[settings.slum]`: the fleet this server joins (`ten serve --slum` overrides each field).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slum {
    /// slum's API (`http://slum.example.com:7400`); none: given by `ten serve --slum`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The fleet's join token. Never shown by `GET /api/config`.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// This server's id in the fleet (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where slum and the other servers reach this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The memory this server offers the fleet, in MB (default: all of the machine's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

/// A DNS server taking signed (TSIG, hmac-sha256) dynamic updates for the zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rfc2136 {
    /// `host:port` of the primary server.
    pub server: String,
    /// The zone (default: the TLS domain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub key_name: String,
    /// Base64, as `tsig-keygen` prints it. Never shown by `GET /api/config`.
    #[serde(skip_serializing)]
    pub key_secret: String,
}

/// The service whose instances' data (`{data_dir}/{service}`, the tenants' own directories)
/// would hold `[settings.tls] cache_dir`, and why that is refused.
pub fn cache_in_service<'a>(
    settings: &Settings,
    mut services: impl Iterator<Item = &'a ServiceName>,
) -> Option<(&'a ServiceName, String)> {
    let cache = &settings.tls.cache_dir;
    let name = services.find(|n| cache.starts_with(settings.data_dir.join(n.as_str())))?;
    let msg = format!(
        "its instances' data ({}) would hold [settings.tls] cache_dir {}, the certificates' keys: rename the service or set cache_dir elsewhere",
        settings.data_dir.join(name.as_str()).display(),
        cache.display()
    );
    Some((name, msg))
}

/// Let's Encrypt's ACME directories.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// A template for instances: `[service.NAME]` (or the legacy `[process.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub command: Template,
    pub args: Vec<Template>,
    pub workdir: PathBuf,
    pub socket: Template,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Seconds to wait for the socket and the first healthy check.
    pub startup_timeout: u64,
    /// Seconds of inactivity before the instance is stopped; 0 = never.
    pub idle_timeout: u64,
    pub restart: RestartPolicy,
    pub isolation: Isolation,
    /// Seconds between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: u64,
    /// Where the app listens: its Unix socket (`SOCKET_PATH`), or TCP on `127.0.0.1:$PORT`.
    pub listen: Listen,
    /// Whether a request for an instance that does not exist creates it.
    pub spawn_on_request: bool,
    /// Cap on instances of this service created on request (0 = no cap).
    pub max_instances: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
    /// Most processes (and threads) the instance may have at once.
    pub pids_max: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_quota_mb: Option<u64>,
    pub storage_persist: bool,
    pub env: BTreeMap<String, Template>,
    /// Who the app runs as: a user name or numeric uid; `None` is the level's default (an
    /// unprivileged uid of its own under namespace and sandbox, the server's user under
    /// process). See `docs/isolation.md`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `wasm` only: CPU time one request may use (default [`Service::REQUEST_CPU_MS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_cpu_ms: Option<u64>,
    /// `wasm` only: whether the component may open outbound connections.
    pub outbound: bool,
}

impl Service {
    /// CPU time a wasm request may use unless `request_cpu_ms` says otherwise.
    pub const REQUEST_CPU_MS: u64 = 10_000;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Listen {
    Unix,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// How strongly an instance is walled off. See `docs/isolation.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Process,
    Namespace,
    Sandbox,
    Wasm,
    Firecracker,
    Qemu,
}

impl Isolation {
    pub const ALL: [(&'static str, Isolation); 7] = [
        ("process", Isolation::Process),
        ("namespace", Isolation::Namespace),
        ("sandbox", Isolation::Sandbox),
        ("wasm", Isolation::Wasm),
        ("firecracker", Isolation::Firecracker),
        ("qemu", Isolation::Qemu),
        // `vm` is the roadmap's name for the VM level; QEMU is the VM that runs here.
        ("vm", Isolation::Qemu),
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Namespace => "namespace",
            Isolation::Sandbox => "sandbox",
            Isolation::Wasm => "wasm",
            Isolation::Firecracker => "firecracker",
            Isolation::Qemu => "qemu",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Routing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<ServiceName>,
    pub subdomain: BTreeMap<String, ServiceName>,
    pub path: BTreeMap<String, ServiceName>,
}

impl Config {
    /// Reads and validates a configuration file, with `${VAR}` taken from the process
    /// environment.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        Self::load_with(file, &|name| std::env::var(name).ok())
    }

    /// Reads and validates a configuration file; `env` answers `${VAR}` lookups.
    pub fn load_with(
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(file).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read configuration: {e}"),
            }])
        })?;
        Self::parse(&src, file, env)
    }

    /// Parses `src` as if read from `file`; `env` answers `${VAR}` lookups.
    pub fn parse(
        src: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        parse::parse(src, file, env)
    }

    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.services.get(name)
    }
}

impl Settings {
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_secs(self.health_check_interval)
    }
}

impl Service {
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout)
    }
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout)
    }
}

#[cfg(test)]
mod tests;
