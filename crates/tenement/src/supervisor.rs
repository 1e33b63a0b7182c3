//! The registry of instances and the operations on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenement_core::InstanceKey;
use tenement_core::config::{Config, Listen};
use tenement_core::fnv::Fnv;
use tenement_core::lifecycle::Input;
use tenement_runtime::Runtimes;
use tenement_runtime::cgroup::Cgroups;
use tenement_runtime::storage::{self, Quota};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::LogStore;
use crate::instance::{self, InstanceHandle, InstanceStatus, Setup};
use crate::logs::{LogLine, Sink};
use crate::ports::Ports;
use crate::probe::{Endpoint, Peer};
use crate::{Error, Store};
use tenement_core::config::socket as socket_template;

mod adopt;
mod fleet;
mod prepare;
mod reload;
mod restore;
mod status;
mod stop;

use stop::remove_instance_dir;

pub use adopt::{Kept, UpgradeRequest, Upgraded, find_running};
pub use reload::ReloadReport;

/// Size of a namespaced instance's private `/tmp` (and `/dev/shm`) when its service has no
/// storage quota (which is the size otherwise).
const TMP_SIZE_MB: u64 = 512;

/// Longest Unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration in force (replaced whole by [`Supervisor::reload`]).
    config: std::sync::RwLock<Arc<Config>>,
    /// Instances being replaced by a reload: a request for one waits for its successor.
    replacing: Mutex<std::collections::HashSet<InstanceKey>>,
    /// Held while a reload applies.
    reloading: tokio::sync::Mutex<()>,
    /// Bumped by every reload (the front door rebuilds its routes when it changes).
    generation: std::sync::atomic::AtomicU64,
    runtimes: &'static Runtimes,
    cgroups: Option<&'static Cgroups>,
    store: Store,
    tokens: crate::Tokens,
    domains: crate::domains::Domains,
    fleet: crate::fleet::Fleet,
    /// The domain requests are routed under (`ten serve --domain`).
    routing_domain: std::sync::OnceLock<String>,
    registry: Mutex<HashMap<InstanceKey, InstanceHandle, Fnv>>,
    /// Keys being created right now (so two creates of one key never both touch its files).
    creating: Mutex<std::collections::HashSet<InstanceKey>>,
    /// Keys being stopped for good (`ten stop`): their data goes even during a shutdown.
    forgetting: Mutex<std::collections::HashSet<InstanceKey>>,
    ports: Mutex<Ports>,
    users: crate::users::Users,
    /// Whether a background read of usage figures is running ([`Supervisor::list_cached`]).
    sampling: std::sync::atomic::AtomicBool,
    feed: broadcast::Sender<Arc<LogLine>>,
    logs: Option<LogStore>,
    tracker: TaskTracker,
    /// The runtime instance actors run on, whichever runtime asked for the instance (the front
    /// door runs one runtime per core).
    runtime: tokio::runtime::Handle,
    /// Cancelled when the server begins to shut down.
    stopping: CancellationToken,
    /// `ten upgrade` let the successor take over: no instance starts here any more.
    handing_over: CancellationToken,
    /// What the actors hand over then (`adopt.rs`).
    hand_to: Arc<Mutex<Vec<tenement_runtime::adopt::Found>>>,
    /// Instances starting at once ([`instance::Setup::start_slots`]).
    start_slots: Arc<tokio::sync::Semaphore>,
    /// `true` while [`Supervisor::restore`] registers the instances it brings back.
    restoring: tokio::sync::watch::Sender<bool>,
    /// Instances found running at start, until restore adopts them (`adopt.rs`).
    adoptable: Mutex<HashMap<InstanceKey, tenement_runtime::adopt::Found>>,
    upgrades: Mutex<Option<tokio::sync::mpsc::Sender<adopt::UpgradeRequest>>>,
}

impl Supervisor {
    /// A supervisor for `config`, keeping its state in `store`. `runtimes` lives as long as the
    /// process (instance actors borrow backends from it). Must be called within a tokio runtime:
    /// instance actors run on it.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        runtimes: &'static Runtimes,
        cgroups: Option<&'static Cgroups>,
    ) -> Self {
        let recorded = store.uids().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the instances' uids from the state store");
            Vec::new()
        });
        let users = crate::users::Users::new(&config.settings.data_dir, recorded);
        let domains = store.domains().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the custom domains from the state store");
            Vec::new()
        });
        let fleet = fleet::kept(&store);
        Self {
            inner: Arc::new(Inner {
                fleet,
                replacing: Mutex::default(),
                generation: Default::default(),
                reloading: Default::default(),
                users,
                sampling: Default::default(),
                config: std::sync::RwLock::new(config),
                runtimes,
                cgroups,
                tokens: crate::Tokens::new(store.clone()),
                domains: crate::domains::Domains::new(domains),
                routing_domain: Default::default(),
                store,
                registry: Mutex::new(HashMap::default()),
                creating: Mutex::default(),
                forgetting: Mutex::default(),
                ports: Mutex::new(Ports::default()),
                feed: broadcast::channel(1024).0,
                logs: None,
                tracker: TaskTracker::new(),
                runtime: tokio::runtime::Handle::current(),
                stopping: CancellationToken::new(),
                handing_over: CancellationToken::new(),
                hand_to: Arc::default(),
                start_slots: Arc::new(tokio::sync::Semaphore::new(start_slots())),
                restoring: tokio::sync::watch::Sender::new(false),
                adoptable: Mutex::default(),
                upgrades: Mutex::default(),
            }),
        }
    }

    /// Persists every captured line in `store` from now on (call before spawning anything).
    pub fn with_log_store(mut self, store: LogStore) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("called right after new")
            .logs = Some(store);
        self
    }

    pub fn log_store(&self) -> Option<&LogStore> {
        self.inner.logs.as_ref()
    }

    pub fn tokens(&self) -> &crate::Tokens {
        &self.inner.tokens
    }

    /// The custom domains ([`crate::domains`]).
    pub fn domains(&self) -> &crate::domains::Domains {
        &self.inner.domains
    }

    /// Sets the domain requests are routed under (once, when the server starts).
    pub fn set_routing_domain(&self, domain: &str) {
        let _ = self.inner.routing_domain.set(domain.to_owned());
    }

    pub fn routing_domain(&self) -> &str {
        self.inner
            .routing_domain
            .get()
            .map_or("localhost", String::as_str)
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Changes whenever the configuration in force does.
    pub fn config_generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the configuration file anew and applies it ([`Supervisor::reload`]); an invalid
    /// file changes nothing and its errors come back.
    pub async fn reload_from_file(
        &self,
    ) -> Result<ReloadReport, tenement_core::config::ConfigErrors> {
        let file = self.config().file.clone();
        let new = tokio::task::spawn_blocking(move || Config::load(&file))
            .await
            .expect("config task")?;
        Ok(self.reload(new).await)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.inner
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn registry(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<InstanceKey, InstanceHandle, Fnv>> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn handle(&self, key: &InstanceKey) -> Result<InstanceHandle, Error> {
        self.registry()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(key.clone()))
    }

    /// Starts `key` (recording it first, so it comes back after a server restart) and waits
    /// until it is ready or has failed to become ready.
    pub async fn spawn(&self, key: &InstanceKey) -> Result<InstanceStatus, Error> {
        let handle = self.create(key, 100, false).await?;
        wait_settled(key, handle).await
    }

    /// Registers `key` and starts its actor: spawning at once, or (`asleep`) sleeping until
    /// its first request.
    pub(crate) async fn create(
        &self,
        key: &InstanceKey,
        weight: u8,
        asleep: bool,
    ) -> Result<InstanceHandle, Error> {
        self.create_with(key, weight, asleep, true).await
    }

    /// [`Supervisor::create`]; `record`: write the instance to the state store (not when it
    /// comes from there).
    pub(crate) async fn create_with(
        &self,
        key: &InstanceKey,
        weight: u8,
        asleep: bool,
        record: bool,
    ) -> Result<InstanceHandle, Error> {
        if self.inner.stopping.is_cancelled() || self.inner.handing_over.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        {
            let mut creating = self
                .inner
                .creating
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if self.registry().contains_key(key) || !creating.insert(key.clone()) {
                return Err(Error::AlreadyExists(key.clone()));
            }
        }
        let result = self.create_reserved(key, weight, asleep, record).await;
        self.inner
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        result
    }

    async fn create_reserved(
        &self,
        key: &InstanceKey,
        weight: u8,
        asleep: bool,
        record: bool,
    ) -> Result<InstanceHandle, Error> {
        let config = self.config();
        let service = config
            .service(&key.service)
            .ok_or_else(|| Error::UnknownService(key.service.clone()))?;
        let runtime = self.inner.runtimes.get(service.isolation)?;
        let port = {
            let mut ports = self.inner.ports.lock().unwrap_or_else(|p| p.into_inner());
            match self.adopted_port(key).filter(|p| ports.claim(*p)) {
                Some(p) => p,
                None => ports
                    .allocate(service.listen == Listen::Tcp)
                    .ok_or(Error::NoFreePort)?,
            }
        };
        let invalid = |message: String| Error::Invalid {
            key: key.clone(),
            message,
        };
        let (run_as, new_uid) = match self.inner.users.run_as(key, service, runtime) {
            Ok(r) => r,
            Err(e) => {
                self.release_port(port);
                return Err(invalid(e));
            }
        };
        let (mut spec, socket, data) = match self.prepare(key, service, port, run_as.user) {
            Ok(p) => p,
            Err(e) => {
                self.release_port(port);
                return Err(e);
            }
        };
        let quota = Quota::of(
            service.storage_quota_mb,
            service.storage_persist,
            &config.settings.data_dir,
            &cgroup_name(key),
        );
        let adopted = self.adopt(key, service, runtime, &mut spec, port).await;
        if let Some(q) = quota.clone().filter(|_| adopted.is_none()) {
            let dir = data.clone();
            let mounted = tokio::task::spawn_blocking(move || q.mount(&dir))
                .await
                .expect("mount task");
            if let Err(e) = mounted {
                self.release_port(port);
                return Err(invalid(e.to_string()));
            }
        }
        // The data directory (and the quota mount on it) belongs to the app's user (an
        // adopted instance's has since it started).
        if let Some(user) = run_as.user.filter(|_| adopted.is_none())
            && let Err(e) = crate::socket_dir::chown_tree(&data, user)
        {
            self.release_port(port);
            return Err(invalid(e));
        }
        let cgroup = instance::SharedCgroup::default();
        let peer = Peer {
            uid: run_as
                .user
                .filter(|_| run_as.own && runtime.app_listens())
                .map(|u| u.uid),
            cgroup: Some(cgroup.clone()),
            refuse_self: true,
        };
        let endpoint = match service.listen {
            Listen::Unix => Endpoint::Unix(socket.clone(), Arc::new(peer)),
            Listen::Tcp => Endpoint::Tcp((std::net::Ipv4Addr::LOCALHOST, port).into()),
        };
        let data_root = config.settings.data_dir.to_string_lossy();
        let (prefix, suffix) =
            socket_template::split(&service.socket, key.service.as_str(), &data_root);
        // The first directory of the socket's path that holds the id is the instance's own.
        let own_socket_dir = suffix
            .find('/')
            .map(|i| PathBuf::from(format!("{prefix}{}{}", key.id, &suffix[..i])));
        let me = self.clone();
        let (cleanup_key, persist) = (key.clone(), service.storage_persist);
        let has_quota = quota.is_some();
        let setup = Setup {
            key: key.clone(),
            service: Arc::new(service.clone()),
            settings: Arc::new(config.settings.clone()),
            runtime,
            spec,
            socket: instance::SocketPlan {
                path: socket.clone(),
                own_dir: own_socket_dir,
                user: run_as.user,
            },
            endpoint,
            cgroup,
            port,
            weight,
            sink: Sink {
                feed: self.inner.feed.clone(),
                store: self.inner.logs.clone(),
            },
            cleanup: Box::new(move || {
                me.cleanup(&cleanup_key, &socket, &data, persist, has_quota, port)
            }),
            cgroups: self.inner.cgroups,
            asleep: asleep && adopted.is_none(),
            handing_over: self.inner.handing_over.clone(),
            hand_to: self.inner.hand_to.clone(),
            start_slots: self.inner.start_slots.clone(),
            adopted,
        };
        let (handle, actor) = instance::start(setup);
        self.registry().insert(key.clone(), handle.clone());
        // Start at once and record in parallel: the fsync is not on the path to ready, but
        // the caller hears back only once the instance is recorded.
        self.inner.tracker.spawn_on(actor, &self.inner.runtime);
        if !record && new_uid.is_none() {
            return Ok(handle);
        }
        let (store, k) = (self.inner.store.clone(), key.clone());
        let stored = tokio::task::spawn_blocking(move || {
            if let Some(uid) = new_uid {
                store.set_uid(&k, uid)?;
            }
            match record {
                true => store.insert_with_weight(&k, weight),
                false => Ok(()),
            }
        })
        .await
        .expect("store task");
        if let Err(e) = stored {
            stop_and_wait(handle).await;
            return Err(e);
        }
        Ok(handle)
    }

    /// Runs when an instance actor ends: forget it and remove what it leaves behind.
    #[allow(clippy::too_many_arguments)]
    fn cleanup(
        &self,
        key: &InstanceKey,
        socket: &Path,
        data: &Path,
        persist: bool,
        quota: bool,
        port: u16,
    ) {
        self.registry().remove(key);
        self.release_port(port);
        let _ = crate::socket_dir::clear(socket);
        if quota {
            storage::unmount(data);
        }
        // A server shutting down keeps the data of the instances it will bring back, as a
        // crash would: only `ten stop` removes it (even when a shutdown overtakes the stop).
        let shutting_down = self.inner.stopping.is_cancelled();
        let forgotten = self
            .inner
            .forgetting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        // An instance a reload replaces keeps its data and uid for its successor.
        if !persist && !self.replacing(key) && (forgotten || !shutting_down) {
            remove_instance_dir(&self.config().settings.data_dir, key, data);
            // Its files are gone: its uid may serve another instance.
            self.inner.users.release(key);
            let (store, k) = (self.inner.store.clone(), key.clone());
            self.inner.runtime.spawn_blocking(move || {
                if let Err(e) = store.remove_uid(&k) {
                    warn!(instance = %k, error = %e, "cannot forget the instance's uid");
                }
            });
        }
    }

    fn release_port(&self, port: u16) {
        self.inner
            .ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(port);
    }

    /// Restarts `key` (also un-fails a failed instance) and waits until it is ready.
    pub async fn restart(&self, key: &InstanceKey) -> Result<InstanceStatus, Error> {
        let handle = self.handle(key)?;
        let mut status = handle.status.clone();
        status.mark_unchanged();
        handle
            .inputs
            .send(Input::Restart)
            .await
            .map_err(|_| Error::NotFound(key.clone()))?;
        // Wait for the restart to begin before waiting for it to settle.
        let _ = tokio::time::timeout(
            Duration::from_secs(60),
            status.wait_for(|s| s.state == "starting" || s.state == "stopped"),
        )
        .await;
        wait_settled(key, handle).await
    }

    /// The newest `limit` captured lines of `key`, oldest first.
    pub fn logs(&self, key: &InstanceKey, limit: usize) -> Result<Vec<Arc<LogLine>>, Error> {
        Ok(self.handle(key)?.tail.last(limit))
    }

    /// Cancelled when the server begins to shut down (streams to clients end with it).
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// Every captured line from now on, of every instance.
    pub fn follow_logs(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.inner.feed.subscribe()
    }

    /// Stops every instance (in parallel) without forgetting them: the next `ten serve` brings
    /// them back.
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
        self.inner.restoring.send_replace(false); // a restore cut short registers no more
        let handles: Vec<InstanceHandle> = self.registry().values().cloned().collect();
        let mut stops = tokio::task::JoinSet::new();
        for h in handles {
            stops.spawn(stop_and_wait(h));
        }
        stops.join_all().await;
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

pub(crate) async fn stop_and_wait(handle: InstanceHandle) {
    let mut status = handle.status.clone();
    let _ = handle.inputs.send(Input::Stop).await;
    let _ = status.wait_for(|s| s.state == "stopped").await;
}

/// Waits until a starting instance is running (Ok) or has given up starting (Err).
pub(crate) async fn wait_settled(
    key: &InstanceKey,
    handle: InstanceHandle,
) -> Result<InstanceStatus, Error> {
    let mut rx = handle.status.clone();
    let settled = rx
        .wait_for(|s| !matches!(s.state.as_ref(), "starting" | "stopping"))
        .await
        .map(|s| s.clone());
    let status = match settled {
        Ok(s) => s,
        Err(_) => return Err(Error::NotFound(key.clone())),
    };
    if status.state == "running" {
        return Ok(status);
    }
    Err(Error::NotReady {
        key: key.clone(),
        state: status.state.clone(),
        reason: status
            .last_exit
            .clone()
            .unwrap_or_else(|| "not ready".into()),
    })
}

/// `service.id`: the instance's name for its cgroup and storage image (unambiguous: `.` is
/// not allowed in either part).
/// Instances that may be starting at once: 16 per core (an app waiting on its own start-up,
/// not on the CPU, leaves room for others).
fn start_slots() -> usize {
    16 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn cgroup_name(key: &InstanceKey) -> String {
    format!("{}.{}", key.service, key.id)
}

/// `{data_dir}/{service}/{id}`: safe because both parts are validated DNS labels.
pub fn instance_dir(data_dir: &Path, key: &InstanceKey) -> PathBuf {
    data_dir.join(key.service.as_str()).join(key.id.as_str())
}
