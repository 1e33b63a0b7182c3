//! The building: the supervisor that owns every instance.
//!
//! [`Supervisor`] keeps a registry of instance handles; each instance is a tokio task (an
//! *actor*, [`instance`]) that owns its lifecycle state machine, its process, its health probe
//! and its log buffer. Desired state (which instances exist, their weights) lives in SQLite
//! ([`store`]), so a restarted `ten serve` brings back what was running.
//!
//! # Design
//! No shared mutable instance state: the registry maps keys to cheap handles (an mpsc sender
//! plus a watch receiver of the instance's status). Everything that decides (restart or not,
//! how long to back off) is the pure [`tenement_core::lifecycle`] state machine; the actor only
//! performs its effects.
//!
//! # Limitations
//! Knows nothing about HTTP routing (that is `tenement-edge`).

mod activity;
pub mod domains;
mod error;
pub mod fleet;
mod instance;
mod logs;
mod logstore;
mod ports;
pub mod probe;
mod reserve;
mod socket_dir;
mod socket_watch;
pub mod store;
mod supervisor;
mod tokens;
pub mod users;
mod wake;

pub use activity::{Activity, ActivityGuard};
pub use error::Error;
pub use instance::{Health, InstanceStatus};
pub use logs::{LogLine, Stream, now_ms};
pub use logstore::{LogQuery, LogStore, Retention, StoredLine};
pub use store::{Damaged, OpenError, Store, backup_path, restore_backup};
pub use supervisor::{Kept, ReloadReport, Supervisor, UpgradeRequest, Upgraded, find_running};
pub use tokens::{Check, Principal, TokenInfo, Tokens};
pub use wake::Lease;
