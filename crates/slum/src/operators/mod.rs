//! Operators: what provisions a tenement server of the fleet and keeps it running
//! (`[operators.NAME]` in slum.toml). One file per kind; `fly`, `hetzner` and `ssh` are parsed
//! by `config.rs` and refused until they are built.

pub mod local;

use crate::config::{OperatorSpec, Server};

/// What an operator needs of slum to start a server that joins it.
#[derive(Debug, Clone)]
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
}

/// The operator for a checked spec (`config::load` refused the kinds not built).
pub fn from_spec(spec: &OperatorSpec) -> Box<dyn Operator> {
    match spec {
        OperatorSpec::Local(settings) => Box::new(local::Local::new(settings.clone())),
        other => unreachable!(
            "{} operators are refused when slum.toml is loaded",
            other.kind()
        ),
    }
}
