//! One actor per instance: a tokio task that owns the instance's lifecycle, process, health
//! probe and log tail. Others talk to it through an [`InstanceHandle`].

use std::future::{Future, pending};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenement_core::InstanceKey;
use tenement_core::config::{Listen, Service, Settings};
use tenement_core::lifecycle::{Effect, ExitReason, Input, Lifecycle, Phase, Policy};
use tenement_runtime::cgroup::{Cgroup, Cgroups};
use tenement_runtime::{Runtime, Spec, Workload};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod cgroup;
mod health;
mod start;

use crate::activity::Activity;
use crate::logs::{Sink, Tail};
use crate::probe::{self, Endpoint};

/// Consecutive failed health checks that restart an instance.
pub const HEALTH_FAILURES: u32 = 3;

pub use tenement_api::{Health, InstanceStatus};

/// The cheap, cloneable way to reach an instance actor (one reference count: the front door
/// clones it for every request).
#[derive(Clone)]
pub struct InstanceHandle(Arc<Handle>);

impl std::ops::Deref for InstanceHandle {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.0
    }
}

pub struct Handle {
    pub key: InstanceKey,
    pub inputs: mpsc::Sender<Input>,
    pub status: watch::Receiver<InstanceStatus>,
    pub tail: Arc<Tail>,
    pub activity: Arc<Activity>,
    pub endpoint: Endpoint,
    /// The current run's cgroup, for usage figures.
    pub cgroup: SharedCgroup,
    /// The latest usage figures read (see `Supervisor::list_cached`).
    pub usage: std::sync::Mutex<Sampled>,
}

/// Usage figures as read at one time.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    pub at: Option<Instant>,
    pub memory_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    pub storage_used_bytes: Option<u64>,
    pub cgroups: Vec<PathBuf>,
}

pub type SharedCgroup = Arc<std::sync::Mutex<Option<Arc<Cgroup>>>>;

/// Everything the actor needs, prepared by the supervisor.
pub struct Setup {
    pub key: InstanceKey,
    pub service: Arc<Service>,
    pub settings: Arc<Settings>,
    pub runtime: &'static dyn Runtime,
    pub spec: Spec,
    pub socket: SocketPlan,
    pub endpoint: Endpoint,
    /// The current run's cgroup (the endpoint's peer check reads it too).
    pub cgroup: SharedCgroup,
    pub port: u16,
    pub weight: u8,
    pub sink: Sink,
    /// Runs once the instance is stopped for good, before the final status is published.
    pub cleanup: Box<dyn FnOnce() + Send>,
    pub cgroups: Option<&'static Cgroups>,
    /// Begin asleep (woken by the first request) instead of starting at once.
    pub asleep: bool,
    /// The instance as an earlier server left it running: its first "start" takes it over.
    pub adopted: Option<tenement_runtime::Started>,
    /// Cancelled when `ten upgrade` gave the instances to a new server.
    pub handing_over: CancellationToken,
    /// Where the instance goes then (its shim connection and pipes, for the successor).
    pub hand_to: Arc<std::sync::Mutex<Vec<tenement_runtime::adopt::Found>>>,
    /// How many instances may be starting at once, server-wide: ten thousand starting
    /// together on a few cores would each miss `startup_timeout`, and restart, and miss again.
    pub start_slots: Arc<tokio::sync::Semaphore>,
}

type Probe = Pin<Box<dyn Future<Output = Result<(), probe::ProbeError>> + Send>>;

struct Actor {
    setup: Setup,
    key: Arc<InstanceKey>,
    policy: Policy,
    life: Lifecycle,
    workload: Option<Box<dyn Workload>>,
    probe: Option<Probe>,
    /// Kept-alive connection for periodic health checks.
    prober: Arc<tokio::sync::Mutex<probe::Prober>>,
    startup_deadline: Option<Instant>,
    kill_deadline: Option<Instant>,
    next_health: Option<Instant>,
    health: Health,
    health_failures: u32,
    tail: Arc<Tail>,
    activity: Arc<Activity>,
    cgroup: SharedCgroup,
    oom_kills: u32,
    status: watch::Sender<InstanceStatus>,
    /// While a `listen = "tcp"` instance sleeps, its port, listened on (nothing accepted) so
    /// that no other program takes it before the next request wakes the instance.
    held_port: Option<std::net::TcpListener>,
    /// What the current run's latest readiness check found, while it is not ready.
    ready_error: Arc<std::sync::Mutex<Option<String>>>,
    /// The current run's output readers, stopped when another server adopts the instance
    /// (they give the pipes back).
    captures: Vec<tokio::task::JoinHandle<Option<std::os::fd::OwnedFd>>>,
    capturing: CancellationToken,
    /// Another server took the instance over: this actor ends without touching it.
    handed_over: bool,
    /// A start slot, held from spawn until the run is ready or over ([`Setup::start_slots`]).
    start_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// `starting`, waiting for a start slot.
    awaiting_slot: bool,
}

/// Where the instance's socket goes, prepared before every start ([`crate::socket_dir`]).
pub struct SocketPlan {
    pub path: PathBuf,
    /// The first directory of the path that is the instance's own, if any.
    pub own_dir: Option<PathBuf>,
    pub user: Option<tenement_runtime::User>,
}

/// Starts the actor for a new instance; it spawns the process at once.
pub fn start(setup: Setup) -> (InstanceHandle, impl Future<Output = ()> + Send) {
    let (inputs, rx) = mpsc::channel(8);
    let tail = Arc::new(Tail::default());
    let s = &setup.settings;
    let policy = Policy {
        restart: setup.service.restart,
        max_restarts: s.max_restarts,
        restart_window: Duration::from_secs(s.restart_window),
        backoff: tenement_core::backoff::Backoff {
            base: Duration::from_millis(s.backoff_base_ms),
            max: Duration::from_millis(s.backoff_max_ms),
        },
        // A run that outlasts the longest backoff has broken the crash loop.
        stable_after: Duration::from_millis(s.backoff_max_ms).max(Duration::from_secs(10)),
    };
    let initial = InstanceStatus {
        instance: setup.key.clone(),
        service: setup.key.service.to_string(),
        id: setup.key.id.to_string(),
        state: "starting".into(),
        health: Health::Unknown,
        isolation: setup.service.isolation.name().into(),
        pid: None,
        ready_since_ms: None,
        restarts: 0,
        last_exit: None,
        oom_kills: 0,
        health_check_failures: 0,
        memory_bytes: None,
        cpu_usec: None,
        data_dir: setup.spec.instance_dir.clone(),
        storage_quota_mb: setup.service.storage_quota_mb,
        storage_used_bytes: None,
        socket: setup.socket.path.clone(),
        port: setup.port,
        weight: setup.weight,
        cgroups: Vec::new(),
    };
    let (status, status_rx) = watch::channel(initial);
    let activity = Arc::new(Activity::new(setup.weight));
    let endpoint = setup.endpoint.clone();
    let cgroup = setup.cgroup.clone();
    let actor = Actor {
        cgroup: cgroup.clone(),
        oom_kills: 0,
        held_port: None,
        ready_error: Arc::default(),
        captures: Vec::new(),
        capturing: CancellationToken::new(),
        handed_over: false,
        start_slot: None,
        awaiting_slot: false,
        activity: activity.clone(),
        key: Arc::new(setup.key.clone()),
        setup,
        policy,
        life: Lifecycle::new(),
        workload: None,
        probe: None,
        prober: Arc::default(),
        startup_deadline: None,
        kill_deadline: None,
        next_health: None,
        health: Health::Unknown,
        health_failures: 0,
        tail: tail.clone(),
        status,
    };
    let handle = InstanceHandle(Arc::new(Handle {
        key: actor.setup.key.clone(),
        inputs,
        status: status_rx,
        tail,
        activity,
        endpoint,
        cgroup,
        usage: Default::default(),
    }));
    (handle, actor.run(rx))
}

impl Actor {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        if self.setup.asleep {
            self.life = Lifecycle::asleep();
            self.hold_port();
            self.publish();
        } else {
            self.apply(Input::Start);
        }
        while self.life.phase != Phase::Stopped {
            let deadline = self.next_deadline();
            tokio::select! {
                input = inputs.recv() => self.apply(input.unwrap_or(Input::Stop)),
                status = wait_exit(&mut self.workload) => {
                    self.workload = None;
                    // Its stop deadline goes with it: a restart's new process has none.
                    self.kill_deadline = None;
                    let mut reason = match status {
                        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                            (Some(code), _) => ExitReason::Code(code),
                            (None, Some(sig)) => ExitReason::Signal(sig),
                            (None, None) => ExitReason::Code(-1),
                        },
                        Err(e) => ExitReason::SpawnFailed(format!("wait: {e}")),
                    };
                    if self.release_cgroup().await {
                        reason = ExitReason::Oom;
                    }
                    self.apply(Input::Exited(reason));
                }
                result = run_probe(&mut self.probe) => {
                    self.probe = None;
                    self.on_probe(result);
                }
                _ = sleep_until(deadline) => self.on_timer(),
                slot = self.setup.start_slots.clone().acquire_owned(), if self.awaiting_slot => {
                    self.awaiting_slot = false;
                    self.start_slot = slot.ok();
                    if let Err(reason) = self.spawn() {
                        self.apply(Input::Exited(reason));
                    }
                    self.publish();
                }
                _ = self.setup.handing_over.cancelled() => {
                    // The successor takes the instance over: what runs goes to it directly
                    // (its shim is not even told); the rest is the successor's to bring back.
                    self.let_go().await;
                    break;
                }
            }
        }
        if self.handed_over {
            // The instance, its socket, data and record are the next server's now; the last
            // status (running) stays, for requests still finishing here.
            info!(instance = %self.key, "handed over");
            return;
        }
        let cleanup = std::mem::replace(&mut self.setup.cleanup, Box::new(|| {}));
        cleanup();
        info!(instance = %self.key, "stopped");
        self.publish();
    }

    /// Feeds one input to the state machine and performs the effects; inputs that effects
    /// produce (a spawn that fails) are fed in turn.
    fn apply(&mut self, input: Input) {
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let before = self.life.phase;
            match self
                .life
                .step(input.clone(), &self.policy, Instant::now(), fastrand::f64())
            {
                Ok(effects) => {
                    for effect in effects {
                        if let Some(next) = self.perform(effect) {
                            queue.push(next);
                        }
                    }
                }
                Err(e) => warn!(instance = %self.key, error = %e, "ignored"),
            }
            self.on_phase_change(before);
        }
        self.publish();
    }

    fn perform(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            // Once handed over, only the successor starts instances.
            Effect::Spawn if self.setup.handing_over.is_cancelled() => None,
            // Starting takes one of the server's start slots (adopting does not: nothing
            // starts); without one, it waits, `starting`, for the next (see `run`).
            Effect::Spawn if self.setup.adopted.is_some() || self.start_slot.is_some() => {
                self.spawn().err().map(Input::Exited)
            }
            Effect::Spawn => {
                self.awaiting_slot = true;
                None
            }
            Effect::Terminate => {
                match &self.workload {
                    Some(w) => {
                        w.terminate();
                        self.kill_deadline =
                            Some(Instant::now() + self.setup.service.stop_timeout());
                    }
                    None => return Some(Input::Exited(ExitReason::Code(0))),
                }
                None
            }
            Effect::Forget => None,
        }
    }

    fn on_phase_change(&mut self, before: Phase) {
        let now = self.life.phase;
        if before == now {
            return;
        }
        info!(instance = %self.key, from = before.name(), to = now.name(), "state");
        if now != Phase::Starting {
            self.startup_deadline = None;
            self.start_slot = None;
            self.awaiting_slot = false;
        }
        if !now.has_process() {
            self.kill_deadline = None;
        }
        if !matches!(now, Phase::Starting | Phase::Running) {
            self.probe = None;
            self.next_health = None;
            self.health = Health::Unknown;
            self.health_failures = 0;
        }
        if let Phase::BackingOff { until } = now {
            let delay_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
            warn!(instance = %self.key, restarts = self.life.restarts, delay_ms, reason = ?self.life.last_exit, "exited; backing off");
        }
        if now == Phase::Failed {
            warn!(instance = %self.key, "restarted too often; giving up until a user acts (ten restart)");
        }
        if now == Phase::Sleeping {
            self.hold_port();
        }
    }

    /// Holds the port of a sleeping `listen = "tcp"` instance (see `held_port`). Listening,
    /// with `SO_REUSEADDR` (what std sets): it binds despite the app's connections lingering
    /// in TIME_WAIT, and a listener is the one thing another `SO_REUSEADDR` socket cannot
    /// share a port with.
    fn hold_port(&mut self) {
        if self.setup.service.listen != Listen::Tcp || self.held_port.is_some() {
            return;
        }
        match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, self.setup.port)) {
            Ok(socket) => self.held_port = Some(socket),
            Err(e) => {
                warn!(instance = %self.key, port = self.setup.port, error = %e, "cannot hold the port while asleep")
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let backoff = match self.life.phase {
            Phase::BackingOff { until } => Some(until),
            _ => None,
        };
        let health = self.next_health.filter(|_| self.probe.is_none());
        [
            backoff,
            self.startup_deadline,
            self.kill_deadline,
            health,
            self.idle_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the instance will have been idle for `idle_timeout` (re-checked while busy).
    fn idle_deadline(&self) -> Option<Instant> {
        let idle = Duration::from_secs(self.setup.service.idle_timeout);
        if self.life.phase != Phase::Running || idle.is_zero() {
            return None;
        }
        Some(self.activity.idle_since().unwrap_or_else(Instant::now) + idle)
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.idle_deadline().is_some_and(|d| d <= now) && self.activity.idle_since().is_some() {
            info!(instance = %self.key, "idle; going to sleep");
            self.apply(Input::Idle);
        }
        if self.kill_deadline.is_some_and(|d| d <= now) {
            self.kill_deadline = None;
            if let Some(w) = &self.workload {
                warn!(instance = %self.key, "did not stop within stop_timeout; killing");
                w.kill();
            }
        }
        if self.startup_deadline.is_some_and(|d| d <= now) {
            self.startup_deadline = None;
            let why = self
                .ready_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let why = why.as_deref().unwrap_or("no check has run");
            warn!(instance = %self.key, last_check = why, "not ready within startup_timeout");
            self.apply(Input::StartupTimeout);
        }
        if matches!(self.life.phase, Phase::BackingOff { until } if until <= now) {
            self.apply(Input::BackoffElapsed);
        }
        if self.life.phase == Phase::Running
            && self.probe.is_none()
            && self.next_health.is_some_and(|d| d <= now)
        {
            self.next_health = None;
            let (endpoint, health) = (
                self.setup.endpoint.clone(),
                self.setup.service.health.clone(),
            );
            let prober = self.prober.clone();
            self.probe = Some(Box::pin(async move {
                let mut prober = prober.lock().await;
                prober
                    .check(&endpoint, health.as_deref(), Duration::from_secs(5))
                    .await
            }));
        }
    }

    fn publish(&self) {
        let ready_since_ms = self.life.ready_since.map(|since| {
            let ago = since.elapsed();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            now.saturating_sub(ago).as_millis() as u64
        });
        let pid = self.workload.as_ref().map(|w| w.pid());
        self.status.send_modify(|s| {
            s.state = self.life.phase.name().into();
            s.health = self.health;
            s.pid = pid;
            s.ready_since_ms = ready_since_ms.filter(|_| self.life.phase == Phase::Running);
            s.restarts = self.life.restarts;
            s.last_exit = self.life.last_exit.as_ref().map(|r| match r {
                // Why it never got ready, as the latest readiness check found.
                ExitReason::StartupTimeout => {
                    match &*self.ready_error.lock().unwrap_or_else(|p| p.into_inner()) {
                        Some(e) => format!("{r} (health check: {e})"),
                        None => r.to_string(),
                    }
                }
                r => r.to_string(),
            });
            s.oom_kills = self.oom_kills;
        });
    }
}

async fn wait_exit(w: &mut Option<Box<dyn Workload>>) -> std::io::Result<std::process::ExitStatus> {
    match w {
        Some(w) => w.wait().await,
        None => pending().await,
    }
}

async fn run_probe(p: &mut Option<Probe>) -> Result<(), probe::ProbeError> {
    match p {
        Some(p) => p.await,
        None => pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => pending().await,
    }
}
