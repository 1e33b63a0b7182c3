use tenement_core::{InstanceKey, ServiceName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown service `{0}` (not in the configuration)")]
    UnknownService(ServiceName),
    #[error("no instance {0}")]
    NotFound(InstanceKey),
    #[error("instance {0} already exists")]
    AlreadyExists(InstanceKey),
    #[error(transparent)]
    Unavailable(#[from] tenement_runtime::Unavailable),
    #[error("{key} is {state}: {reason}")]
    NotReady {
        key: InstanceKey,
        state: std::borrow::Cow<'static, str>,
        reason: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: InstanceKey, message: String },
    #[error("state store {path}: {source}")]
    Store {
        path: String,
        source: rusqlite::Error,
    },
    #[error("log store {path}: {source}")]
    LogStore {
        path: String,
        source: rusqlite::Error,
    },
    #[error("no instance of `{0}` can take traffic (none exists, or all have weight 0)")]
    NoInstances(ServiceName),
    #[error("{service} already has {max} instances (max_instances)")]
    TooManyInstances { service: ServiceName, max: u32 },
    #[error("weight must be 0-100, got {0}")]
    BadWeight(u32),
    #[error("no free TCP port left in 30000-40000")]
    NoFreePort,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    BadDomain(String),
    #[error("{0} already routes to {1}")]
    DomainTaken(String, InstanceKey),
    #[error("no custom domain {0}")]
    UnknownDomain(String),
}

impl Error {
    /// A state store write that failed for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Store { source, .. }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull))
    }
}
