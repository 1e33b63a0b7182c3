//! The instance lifecycle as a pure state machine.
//!
//! [`Lifecycle::step`] takes an [`Input`] (a user action or something the actor observed), the
//! restart [`Policy`] and `now`, updates the phase and restart history, and returns the
//! [`Effect`]s the instance actor must perform. Timers are derived from the phase
//! ([`Phase::BackingOff`] carries its deadline), so there is no effect to cancel one: leaving the
//! phase cancels it.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::config::RestartPolicy;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Process spawned; waiting for its socket and first healthy check.
    Starting,
    /// Ready and serving.
    Running,
    /// SIGTERM sent; waiting for the process to exit, then doing `then`.
    Stopping(AfterStop),
    /// Waiting to restart after a failure.
    BackingOff { until: Instant },
    /// Exited and the restart policy says not to restart it.
    Exited,
    /// Restarted too often within the window; no more restarts until a user acts.
    Failed,
    /// Stopped because it was idle; the next request wakes it.
    Sleeping,
    /// Stopped by the user: the instance is to be forgotten.
    Stopped,
}

impl Phase {
    /// The name shown in `ten ps` and the API.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping(_) => "stopping",
            Phase::BackingOff { .. } => "backing-off",
            Phase::Exited => "exited",
            Phase::Failed => "failed",
            Phase::Sleeping => "sleeping",
            Phase::Stopped => "stopped",
        }
    }

    /// Whether a process is (or may be) alive in this phase.
    pub fn has_process(&self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Stopping(_))
    }
}

/// What to do once a stopping process has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// The user stopped it: forget the instance.
    Stop,
    /// The user restarted it: start again at once.
    Restart,
    /// It was idle: sleep until woken.
    Sleep,
    /// We killed it (health, startup timeout): apply the restart policy to this reason.
    Recover(Failure),
}

/// A failure tenement detected itself (the process did not exit on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    HealthCheck,
    StartupTimeout,
}

/// Why the last run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed by the kernel for going over `memory_limit_mb`.
    Oom,
    /// Killed by tenement because health checks failed.
    HealthCheck,
    /// Killed by tenement because it did not become ready within `startup_timeout`.
    StartupTimeout,
    /// Could not be started at all.
    SpawnFailed(String),
    /// Could not be started because the *server* ran out of something (file descriptors,
    /// memory, processes): not the instance's fault, so it is retried without spending its
    /// restart budget, whatever its restart policy.
    ServerBusy(String),
}

impl ExitReason {
    pub fn is_success(&self) -> bool {
        matches!(self, ExitReason::Code(0))
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit code {c}"),
            ExitReason::Signal(s) => write!(f, "killed by signal {s}"),
            ExitReason::Oom => f.write_str("oom"),
            ExitReason::HealthCheck => f.write_str("health check failed"),
            ExitReason::StartupTimeout => f.write_str("startup timeout"),
            ExitReason::SpawnFailed(e) => write!(f, "spawn failed: {e}"),
            ExitReason::ServerBusy(e) => {
                write!(f, "not started, the server is out of resources: {e}")
            }
        }
    }
}

impl From<Failure> for ExitReason {
    fn from(f: Failure) -> Self {
        match f {
            Failure::HealthCheck => ExitReason::HealthCheck,
            Failure::StartupTimeout => ExitReason::StartupTimeout,
        }
    }
}

/// Something that happened to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// User: start it (also the first input of a new instance).
    Start,
    /// User: restart it; forgets the restart history.
    Restart,
    /// User: stop and forget it.
    Stop,
    /// The socket answers and the first health check passed.
    Ready,
    /// Health checks failed `threshold` times in a row.
    Unhealthy,
    /// `startup_timeout` passed while starting.
    StartupTimeout,
    /// The process ended (or could not be spawned).
    Exited(ExitReason),
    /// The backoff delay is over.
    BackoffElapsed,
    /// No activity for `idle_timeout`.
    Idle,
    /// A request arrived for a sleeping instance.
    Wake,
}

/// What the actor must do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Start a new process.
    Spawn,
    /// SIGTERM the process group; SIGKILL it after the grace period.
    Terminate,
    /// The instance is stopped for good: deregister it and clean up.
    Forget,
}

/// How an instance is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub backoff: Backoff,
    /// A run at least this long resets the backoff and the restart budget.
    pub stable_after: Duration,
}

impl Policy {
    fn wants_restart(&self, reason: &ExitReason) -> bool {
        match self.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !reason.is_success(),
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lifecycle transition: {input:?} while {from:?}")]
pub struct InvalidTransition {
    pub from: Phase,
    pub input: Input,
}

/// How long an instance that the server could not start for lack of resources waits.
pub const SERVER_BUSY_RETRY: Duration = Duration::from_secs(1);

/// Phase plus the restart history that decides between backing off and failing.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub phase: Phase,
    /// When each restart within the current window was scheduled.
    recent: Vec<Instant>,
    /// Consecutive restarts since the last stable run: the backoff exponent.
    consecutive: u32,
    /// Restarts over the instance's life (shown in `ten ps`).
    pub restarts: u32,
    /// When the current run became ready.
    pub ready_since: Option<Instant>,
    pub last_exit: Option<ExitReason>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A new instance, not yet started: feed it [`Input::Start`].
    pub fn new() -> Self {
        Self {
            phase: Phase::Exited,
            recent: Vec::new(),
            consecutive: 0,
            restarts: 0,
            ready_since: None,
            last_exit: None,
        }
    }

    /// An instance that begins asleep: the first [`Input::Wake`] (or `Start`) spawns it.
    pub fn asleep() -> Self {
        Self {
            phase: Phase::Sleeping,
            ..Self::new()
        }
    }

    /// Applies one input. `jitter` is a random number in `[0, 1)` for the backoff.
    pub fn step(
        &mut self,
        input: Input,
        policy: &Policy,
        now: Instant,
        jitter: f64,
    ) -> Result<Vec<Effect>, InvalidTransition> {
        use Phase::*;
        let effects = match (self.phase, &input) {
            (Exited | Failed | BackingOff { .. } | Sleeping, Input::Start) => self.spawn(),
            (Starting | Running, Input::Start) => vec![],
            (Sleeping, Input::Wake) => self.spawn(),
            // Anything else is already up, on its way up, or will not come up by a request.
            (_, Input::Wake) if self.phase != Stopped => vec![],
            (Running, Input::Idle) => self.stop(AfterStop::Sleep),
            (Exited | Failed | BackingOff { .. } | Sleeping, Input::Restart) => {
                self.forget_history();
                self.spawn()
            }
            (Starting | Running | Stopping(_), Input::Restart) => {
                self.forget_history();
                self.stop(AfterStop::Restart)
            }
            (Starting | Running | Stopping(_), Input::Stop) => self.stop(AfterStop::Stop),
            (Exited | Failed | BackingOff { .. } | Sleeping, Input::Stop) => {
                self.phase = Stopped;
                vec![Effect::Forget]
            }
            (Starting, Input::Ready) => {
                self.phase = Running;
                self.ready_since = Some(now);
                vec![]
            }
            (Running, Input::Unhealthy) => self.stop(AfterStop::Recover(Failure::HealthCheck)),
            (Starting, Input::StartupTimeout) => {
                self.stop(AfterStop::Recover(Failure::StartupTimeout))
            }
            (Starting | Running, Input::Exited(reason)) => {
                self.decide(reason.clone(), policy, now, jitter)
            }
            (Stopping(then), Input::Exited(reason)) => match then {
                AfterStop::Stop => {
                    self.last_exit = Some(reason.clone());
                    self.ready_since = None;
                    self.phase = Stopped;
                    vec![Effect::Forget]
                }
                AfterStop::Restart => {
                    self.last_exit = Some(reason.clone());
                    self.ready_since = None;
                    self.spawn()
                }
                AfterStop::Sleep => {
                    self.ready_since = None;
                    self.phase = Sleeping;
                    vec![]
                }
                AfterStop::Recover(failure) => self.decide(failure.into(), policy, now, jitter),
            },
            (BackingOff { .. }, Input::BackoffElapsed) => self.spawn(),
            (from, _) => return Err(InvalidTransition { from, input }),
        };
        Ok(effects)
    }

    fn spawn(&mut self) -> Vec<Effect> {
        self.phase = Phase::Starting;
        vec![Effect::Spawn]
    }

    fn stop(&mut self, then: AfterStop) -> Vec<Effect> {
        let already = matches!(self.phase, Phase::Stopping(_));
        self.phase = Phase::Stopping(then);
        if already {
            vec![]
        } else {
            vec![Effect::Terminate]
        }
    }

    fn forget_history(&mut self) {
        self.recent.clear();
        self.consecutive = 0;
    }

    /// The run ended on its own (or we killed it for a failure): restart, give up, or stay down.
    fn decide(
        &mut self,
        reason: ExitReason,
        policy: &Policy,
        now: Instant,
        jitter: f64,
    ) -> Vec<Effect> {
        if let ExitReason::ServerBusy(_) = reason {
            self.last_exit = Some(reason);
            self.phase = Phase::BackingOff {
                until: now + SERVER_BUSY_RETRY,
            };
            return vec![];
        }
        if let Some(since) = self.ready_since.take()
            && now.saturating_duration_since(since) >= policy.stable_after
        {
            self.forget_history();
        }
        let restart = policy.wants_restart(&reason);
        self.last_exit = Some(reason);
        if !restart {
            self.phase = Phase::Exited;
            return vec![];
        }
        self.recent
            .retain(|t| now.saturating_duration_since(*t) < policy.restart_window);
        if self.recent.len() >= policy.max_restarts as usize {
            self.phase = Phase::Failed;
            return vec![];
        }
        self.recent.push(now);
        self.restarts += 1;
        let delay = policy.backoff.delay(self.consecutive, jitter);
        self.consecutive += 1;
        self.phase = Phase::BackingOff { until: now + delay };
        vec![]
    }
}

#[cfg(test)]
mod tests;
