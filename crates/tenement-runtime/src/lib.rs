//! Isolation backends for tenement instances, behind one trait.
//!
//! A [`Runtime`] turns a [`Spec`] (argv, environment, working directory) into a running
//! [`Workload`]: a process tree that can be signalled as a whole and awaited. Every backend runs
//! the app under a small supervisor of our own, the *shim* (`ten __shim`, see [`shim`]), which
//! is what makes "nothing outlives its owner" hold: the shim notices when `ten serve` dies
//! (`PR_SET_PDEATHSIG`) and kills the instance's whole process group.
//!
//! # Design
//! Adding a backend adds a file and an entry in [`Runtimes::new`], not an arm in a central
//! `match`. An unavailable backend is an error naming what is missing; there is never a silent
//! fallback to weaker isolation.
//!
//! # Limitations
//! Knows nothing about HTTP, restart policy or persistence. cgroups and storage quotas are not
//! here yet (see the resource-limits work).

pub mod adopt;
pub mod cgroup;
mod command;
pub mod handover;
mod landlock;
mod namespace;
mod process;
mod sandbox;
pub mod shim;
pub mod storage;
pub mod user;
mod walls;
#[cfg(feature = "wasm")]
mod wasm;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;

use std::os::fd::OwnedFd;

use tenement_core::InstanceKey;
use tenement_core::config::Isolation;

pub use command::argv_for;
pub use namespace::NamespaceRuntime;
pub use process::ProcessRuntime;
pub use sandbox::SandboxRuntime;
pub use user::User;

/// FNV-1a: a short, stable name for a data directory in host-wide namespaces (cgroup scope,
/// runsc container ids).
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c9dc5u32, |h, b| {
        (h ^ *b as u32).wrapping_mul(0x01000193)
    })
}

/// Everything a backend needs to start one instance.
#[derive(Debug, Clone)]
pub struct Spec {
    pub key: InstanceKey,
    /// Program and arguments; `argv[0]` is looked up in the spec's `PATH`.
    pub argv: Vec<String>,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// The server's `data_dir` (hidden from namespaced instances but for their own parts).
    pub data_root: PathBuf,
    /// `{data_dir}/{service}/{id}`.
    pub instance_dir: PathBuf,
    /// Where the app must listen.
    pub socket: PathBuf,
    /// cgroup directories the instance's processes join (before the app starts).
    pub cgroups: Vec<PathBuf>,
    /// Who the app runs as; `None`: the server's own user.
    pub user: Option<User>,
    /// Size of a private `/tmp` (and `/dev/shm`), where the level has one.
    pub tmp_size_mb: u64,
    pub handover: Handover,
    /// The service's `memory_limit_mb` (the cgroup's, and a wasm component's linear memory).
    pub memory_limit_mb: Option<u64>,
    /// `wasm`: CPU time one request may use, and whether the component may reach the network.
    pub request_cpu_ms: u64,
    pub outbound: bool,
}

/// How the instance may outlive its server ([`handover`]).
#[derive(Debug, Clone, Default)]
pub struct Handover {
    /// The shim's socket for its next owner; `None`: it cannot be adopted.
    pub listen: Option<PathBuf>,
    /// Seconds the instance runs on without an owner.
    pub adopt_timeout: u64,
    /// Given back to whoever adopts the instance ([`handover::Hello::meta`]).
    pub meta: String,
}

impl Spec {
    /// Whether the app's user can reach what it needs ([`user::preflight`]); `ancestors`: the
    /// directories above them too (nothing covers closed ones at this level).
    pub fn check_user(&self, ancestors: bool) -> Result<(), Error> {
        let Some(user) = self.user else {
            return Ok(());
        };
        user::preflight(user, &self.workdir, &self.argv, ancestors).map_err(|message| {
            Error::Denied {
                key: self.key.clone(),
                message,
            }
        })
    }

    /// The directory holding the program when it is given as a path (`./app`, `/opt/x/app`).
    pub fn program_dir(&self) -> Option<PathBuf> {
        let program = self.argv.first().filter(|p| p.contains('/'))?;
        let path = self.workdir.join(program);
        path.parent().map(std::path::Path::to_path_buf)
    }
}

/// A started (or adopted) instance and the read ends of its output pipes.
pub struct Started {
    pub workload: Box<dyn Workload>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A running process tree.
pub trait Workload: Send {
    /// The process group id of the instance (the shim's pid).
    fn pid(&self) -> u32;
    /// Asks the whole instance to stop (SIGTERM to its process group).
    fn terminate(&self);
    /// Ends the whole instance now (SIGKILL to its process group).
    fn kill(&self);
    /// Resolves when the instance has exited; every process of it is gone afterwards.
    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<ExitStatus>> + Send + '_>>;
    /// Tells the shim this server has stopped reading the output and lets go of the
    /// instance: the next server to connect adopts it. Not this server's any more.
    fn let_go(&mut self);
    /// The connection to the instance's shim, to pass to a successor ([`adopt::send`]).
    fn control(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// An isolation backend.
pub trait Runtime: Send + Sync {
    fn isolation(&self) -> Isolation;
    /// Whether this backend can run here; the error says what is missing and how to get it.
    fn probe(&self) -> Result<(), Unavailable>;
    fn start(&self, spec: &Spec) -> Result<Started, Error>;
    /// Takes over an instance an earlier server started with this `spec` ([`adopt`]).
    fn adopt(&self, _spec: &Spec, found: Started) -> Started {
        found
    }
    /// Whether the process that listens on the instance's socket is the app itself, with the
    /// app's uid (so a peer check may compare uids). Not so under gVisor, whose own process
    /// holds the host side of the socket.
    fn app_listens(&self) -> bool {
        true
    }
    /// Whether an app at this level runs as an unprivileged uid of its own unless its
    /// service sets `user` (see the `tenement` crate's `users`).
    fn own_user(&self) -> bool {
        false
    }
    /// Checks what the service's `command` names before anything starts (`ten config
    /// --check`, `ten serve`): `argv` as the service gives it, relative to `workdir`. Levels
    /// that run any program have nothing to check.
    fn check_program(&self, _argv: &[String], _workdir: &std::path::Path) -> Result<(), String> {
        Ok(())
    }
    /// Removes what an earlier server left behind (called once, when `ten serve` starts),
    /// but for the instances in `adopted`.
    fn clean_stale(&self, _adopted: &[InstanceKey]) {}
}

/// Why an isolation level cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("isolation `{isolation}` is not available: {reason}")]
pub struct Unavailable {
    pub isolation: &'static str,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("cannot start {key}: {message}")]
    Denied { key: InstanceKey, message: String },
    #[error("cannot start {key} ({program}): {source}")]
    Spawn {
        key: InstanceKey,
        program: String,
        source: std::io::Error,
    },
}

/// The backends this build has, by isolation level.
pub struct Runtimes {
    by_level: HashMap<Isolation, Box<dyn Runtime>>,
}

impl Runtimes {
    /// All backends of this build. `shim` is the `ten` executable that provides `ten __shim`.
    pub fn new(shim: PathBuf, settings: &tenement_core::config::Settings) -> Self {
        let backends: Vec<Box<dyn Runtime>> = vec![
            Box::new(ProcessRuntime::new(shim.clone())),
            Box::new(NamespaceRuntime::new(shim.clone())),
            Box::new(SandboxRuntime::new(
                shim.clone(),
                &settings.sandbox,
                &settings.data_dir,
            )),
            #[cfg(feature = "wasm")]
            Box::new(wasm::WasmRuntime::new(shim, &settings.data_dir)),
        ];
        Self {
            by_level: backends.into_iter().map(|b| (b.isolation(), b)).collect(),
        }
    }

    /// See [`Runtime::clean_stale`].
    pub fn clean_stale(&self, adopted: &[InstanceKey]) {
        self.by_level.values().for_each(|b| b.clean_stale(adopted));
    }

    /// The backend for `level`, if it is built in and usable here.
    pub fn get(&self, level: Isolation) -> Result<&dyn Runtime, Unavailable> {
        let runtime = self.by_level.get(&level).ok_or_else(|| Unavailable {
            isolation: level.name(),
            reason: not_built_reason(level),
        })?;
        runtime.probe()?;
        Ok(runtime.as_ref())
    }
}

fn not_built_reason(level: Isolation) -> String {
    let hint = "use isolation = \"process\", \"namespace\", \"sandbox\" or \"wasm\" until it lands (docs/isolation.md)";
    match level {
        Isolation::Wasm => "this build of ten has no wasm support (it was built without the \
            `wasm` cargo feature, which is on by default): rebuild with default features"
            .into(),
        Isolation::Firecracker | Isolation::Qemu => {
            format!("VM backends are not implemented in this build yet; {hint}")
        }
        Isolation::Process | Isolation::Namespace | Isolation::Sandbox => {
            "unreachable: always built".into()
        }
    }
}
