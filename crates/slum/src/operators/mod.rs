//! Operators: what provisions a tenement server of the fleet and keeps it running
//! (`[operators.NAME]` in slum.toml). One file per kind; `fly` and `hetzner` are parsed by
//! `config.rs` and refused until they are built.

pub mod local;
pub mod ssh;

use crate::config::{OperatorSpec, Server};

/// What an operator needs of slum to start a server that joins it.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// slum's API as the servers reach it.
    pub url: String,
    pub join_token: String,
    /// Where operators keep their files (logs, pids): beside slum's database.
    pub state_dir: std::path::PathBuf,
}

/// Provisions one kind of host.
pub trait Operator: Send + Sync {
    /// Makes sure `server` is running and joining `fleet` (called every few seconds while
    /// slum does not see it up). Errors are logged and tried again.
    fn ensure(&self, server: &Server, fleet: &Fleet) -> Result<(), String>;

    /// Puts this `ten` on the server's host and replaces its `ten serve` without restarting
    /// its tenants (`ten upgrade`); what happened.
    fn upgrade(&self, server: &Server, fleet: &Fleet) -> Result<String, String>;
}

/// The servers of slum.toml, each with its operator.
#[derive(Default)]
pub struct Members {
    pub fleet: Fleet,
    pub list: Vec<(Server, Box<dyn Operator>)>,
}

impl Members {
    pub fn new(fleet: Fleet, servers: Vec<(Server, OperatorSpec)>) -> Self {
        let list = servers
            .into_iter()
            .map(|(server, spec)| (server, from_spec(&spec)))
            .collect();
        Members { fleet, list }
    }

    pub fn get(&self, id: &str) -> Option<(&Server, &dyn Operator)> {
        self.list
            .iter()
            .find(|(s, _)| s.id == id)
            .map(|(s, o)| (s, &**o))
    }
}

/// The operator for a checked spec (`config::load` refused the kinds not built).
fn from_spec(spec: &OperatorSpec) -> Box<dyn Operator> {
    match spec {
        OperatorSpec::Local(settings) => Box::new(local::Local::new(settings.clone())),
        OperatorSpec::Ssh(settings) => Box::new(ssh::Ssh::new(settings.clone())),
        other => unreachable!(
            "{} operators are refused when slum.toml is loaded",
            other.kind()
        ),
    }
}
