//! What `ten ps`, the API and `/metrics` show of instances: statuses with usage figures, read
//! after the registry's lock is released, or (for public endpoints) taken from the last read.

use std::time::Duration;

use tenement_core::InstanceKey;
use tenement_runtime::storage;

use super::Supervisor;
use crate::Error;
use crate::instance::{self, InstanceHandle, InstanceStatus};

impl Supervisor {
    pub fn get(&self, key: &InstanceKey) -> Result<InstanceStatus, Error> {
        Ok(status_of(&self.handle(key)?))
    }

    /// Every instance with usage figures read now (from its cgroup and quota filesystem:
    /// a few file reads each, made after the registry's lock is released).
    pub fn list(&self) -> Vec<InstanceStatus> {
        let mut all: Vec<InstanceStatus> = self.handles().iter().map(status_of).collect();
        all.sort_by(|a, b| a.instance.cmp(&b.instance));
        all
    }

    /// Every instance with the usage figures last read, without reading anything: for
    /// `/metrics`, which anyone may be allowed to ask for. When the figures are older than
    /// [`USAGE_MAX_AGE`], one refresh is started in the background for the next caller.
    pub fn list_cached(&self) -> Vec<InstanceStatus> {
        let handles = self.handles();
        let stale = handles.iter().any(|h| {
            let at = h.usage.lock().unwrap_or_else(|p| p.into_inner()).at;
            at.is_none_or(|t| t.elapsed() > USAGE_MAX_AGE)
        });
        let mut all: Vec<InstanceStatus> = handles.iter().map(cached_status).collect();
        if stale
            && !self
                .inner
                .sampling
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let me = self.clone();
            self.inner.runtime.spawn_blocking(move || {
                me.handles().iter().for_each(|h| drop(status_of(h)));
                me.inner
                    .sampling
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
        all.sort_by(|a, b| a.instance.cmp(&b.instance));
        all
    }

    /// How many instances there are (no figure read: `/health` is public).
    pub fn count(&self) -> usize {
        self.registry().len()
    }

    fn handles(&self) -> Vec<InstanceHandle> {
        self.registry().values().cloned().collect()
    }
}

/// The status with usage figures read now (and remembered for [`cached_status`]).
fn status_of(h: &InstanceHandle) -> InstanceStatus {
    let s = h.status.borrow().clone();
    let mut sample = instance::Sampled {
        at: Some(std::time::Instant::now()),
        ..Default::default()
    };
    if s.storage_quota_mb.is_some() {
        sample.storage_used_bytes = storage::usage(&s.data_dir).map(|(used, _)| used);
    }
    let cgroup = h.cgroup.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(cg) = cgroup {
        let usage = cg.usage();
        (sample.memory_bytes, sample.cpu_usec) = (usage.memory_bytes, usage.cpu_usec);
        sample.cgroups = cg.dirs();
    }
    *h.usage.lock().unwrap_or_else(|p| p.into_inner()) = sample;
    cached_status(h)
}

/// The status with the usage figures last read.
fn cached_status(h: &InstanceHandle) -> InstanceStatus {
    let mut s = h.status.borrow().clone();
    s.weight = h.activity.weight();
    let sample = h.usage.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if s.pid.is_some() {
        s.memory_bytes = sample.memory_bytes;
        s.cpu_usec = sample.cpu_usec;
        s.cgroups = sample.cgroups;
    }
    s.storage_used_bytes = sample.storage_used_bytes;
    s
}

/// How old cached usage figures may be before `/metrics` has them read again.
pub const USAGE_MAX_AGE: Duration = Duration::from_secs(5);
