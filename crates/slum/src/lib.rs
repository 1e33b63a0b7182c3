//! slum, "the neighborhood": spreads tenants over a fleet of tenement servers.
//!
//! This first part is the state: which servers there are ([`Server`]) and which tenant
//! (a custom domain) lives on which server as which instance ([`Tenant`]), behind the
//! [`Store`] seam. [`SlumDb`] is the embedded store (SQLite, WAL, foreign keys on): what
//! `slum serve` uses by default. A highly available store on an existing distributed engine
//! (etcd: leases, watches, election) implements the same trait in a later step; slum never
//! implements consensus itself.
//!
//! ```no_run
//! # async fn f() -> Result<(), slum::Error> {
//! use slum::{SlumDb, Server, Tenant};
//! let db = SlumDb::init("slum.db").await?;
//! db.add_server(&Server { id: "east".into(), url: "http://east.example.com".into(), ..Default::default() }).await?;
//! db.add_tenant(&Tenant { domain: "customer.example.com".into(), server_id: "east".into(),
//!                         process: "api".into(), instance_id: "prod".into(), ..Default::default() }).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod client;
pub mod config;
pub mod operators;
pub(crate) mod sqlite;
mod types;

pub use sqlite::SlumDb;
pub use types::{Capacity, Report, Server, ServerState, Tenant};

use std::future::Future;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no server {0:?}")]
    UnknownServer(String),
    #[error("server {0:?} exists already")]
    ServerExists(String),
    #[error("no tenant {0:?}")]
    UnknownTenant(String),
    #[error("the domain {0:?} is taken (tenant of server {1:?})")]
    DomainTaken(String, String),
    #[error("server {0:?} has a tenant on {1} already")]
    InstanceTaken(String, String),
    #[error("server {0:?} still has {1} tenant(s): move or remove them first")]
    ServerInUse(String, usize),
    #[error("unauthorized: join again")]
    Unauthorized,
    #[error(
        "server {0:?} has joined before: only it (with its secret) can join under that id; `slum server rm {0}` lets another machine take it"
    )]
    ServerLive(String),
    #[error("the fleet has {0} servers, its most (slum serve --max-servers)")]
    Full(usize),
    #[error("no server can take {0}: {1}")]
    NoRoom(String, String),
    #[error("server {0:?} is {1}: only a server that is up (heartbeating) takes tenants")]
    NotUp(String, &'static str),
    #[error("server {server:?} could not start {domain}: {why}")]
    Refused {
        server: String,
        domain: String,
        why: String,
    },
    #[error("server {server:?} did not start {domain} within {secs} s")]
    NotStarted {
        server: String,
        domain: String,
        secs: u64,
    },
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("slum store {path}: {source}")]
    Store {
        path: String,
        source: rusqlite::Error,
    },
}

/// slum's state, wherever it is kept: [`SlumDb`] (SQLite) now; a highly available store on an
/// existing distributed engine (etcd: leases, watches, transactions) is a file that implements
/// this. Every method is one atomic change or read; `slum serve`'s API ([`api::Api`]) works
/// over any of them.
pub trait Store: Clone + Send + Sync + 'static {
    fn add_server(&self, server: &Server) -> impl Future<Output = Result<(), Error>> + Send;
    fn server(&self, id: &str) -> impl Future<Output = Result<Server, Error>> + Send;
    fn servers(&self) -> impl Future<Output = Result<Vec<Server>, Error>> + Send;
    /// Removes a server that has no tenants.
    fn remove_server(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    fn add_tenant(&self, tenant: &Tenant) -> impl Future<Output = Result<(), Error>> + Send;
    fn tenant(&self, domain: &str) -> impl Future<Output = Result<Tenant, Error>> + Send;
    fn tenants(&self) -> impl Future<Output = Result<Vec<Tenant>, Error>> + Send;
    /// Points the tenant at another server (and instance).
    fn move_tenant(
        &self,
        domain: &str,
        server_id: &str,
    ) -> impl Future<Output = Result<Tenant, Error>> + Send;
    fn remove_tenant(&self, domain: &str) -> impl Future<Output = Result<Tenant, Error>> + Send;

    // The fleet's moving parts (see `SlumDb`'s methods of the same names).

    /// A server joins: added or updated, `up`, a new secret (one that joined before only with
    /// its own).
    fn join(
        &self,
        id: &str,
        url: &str,
        domain: &str,
        capacity: Capacity,
        secret: &str,
    ) -> impl Future<Output = Result<String, Error>> + Send;
    /// A heartbeat with the server's secret: its lease renewed, its reports taken; whether a
    /// tenant's status changed.
    fn heartbeat(
        &self,
        id: &str,
        secret: &str,
        at: (&str, &str),
        capacity: Capacity,
        reports: Vec<Report>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Marks down the servers silent for `lease_ms`; their ids.
    fn expire(&self, lease_ms: u64) -> impl Future<Output = Result<Vec<String>, Error>> + Send;
    /// A full lease for every up server from now (a control plane that starts again).
    fn grace(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// The table's version.
    fn version(&self) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Places a tenant (named server, or by free capacity), `pending`, with a new epoch.
    fn place(&self, tenant: &Tenant) -> impl Future<Output = Result<Tenant, Error>> + Send;
    /// Removes a tenant still at placement `epoch`; whether it did.
    fn unplace(&self, domain: &str, epoch: u64)
    -> impl Future<Output = Result<bool, Error>> + Send;
    /// Moves the tenants of down servers to settled up ones: (domain, from, to) for each.
    fn fail_over(
        &self,
        lease_ms: u64,
    ) -> impl Future<Output = Result<Vec<(String, String, String)>, Error>> + Send;
    /// The table server `me` follows (JSON: version, me, tenants, servers).
    fn table(&self, me: &str) -> impl Future<Output = Result<serde_json::Value, Error>> + Send;
}

/// A name slum accepts (server ids, services, instance ids): `[a-z0-9]` first, then
/// `[a-z0-9_-]`, at most 63.
pub fn valid_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Constant-time equality (a secret's bytes never decide how long a comparison takes).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
