//! An instance's cgroup for each run: made with the service's limits before the process
//! starts, and after it exits read for an OOM kill, emptied and removed.

use std::sync::Arc;

use tenement_runtime::cgroup::{Cgroup, Limits};
use tracing::warn;

use super::Actor;
use crate::logs::{self, LogLine, Stream};

impl Actor {
    /// The instance's cgroup for this run, with its limits; `None` when this host has no
    /// cgroups and no limit was asked for (or `allow_unlimited` is set).
    pub(super) fn make_cgroup(&self) -> Result<Option<Cgroup>, String> {
        if self.setup.adopted.is_some() {
            // Adopted: its cgroup is there, with these very limits (the spec digest matched).
            let name = crate::supervisor::cgroup_name(&self.key);
            return Ok(self.setup.cgroups.map(|c| c.open(&name)));
        }
        let svc = &self.setup.service;
        let limits = Limits {
            memory_mb: svc.memory_limit_mb,
            cpu_weight: svc.cpu_shares,
            pids_max: Some(svc.pids_max),
        };
        let asked = svc.memory_limit_mb.is_some() || svc.cpu_shares.is_some();
        let refuse = asked && !self.setup.settings.allow_unlimited;
        let Some(cgroups) = self.setup.cgroups else {
            if refuse {
                return Err("memory_limit_mb/cpu_shares need cgroups (memory and cpu controllers), which this host does not offer to ten serve; set [settings] allow_unlimited = true to run without limits".into());
            }
            return Ok(None);
        };
        let name = crate::supervisor::cgroup_name(&self.key);
        match cgroups.create(&name, &limits) {
            Ok(cg) => Ok(Some(cg)),
            Err(e) if refuse => Err(format!(
                "cannot apply limits: {e}; set [settings] allow_unlimited = true to run without"
            )),
            Err(e) => {
                warn!(instance = %self.key, error = %e, "running without a cgroup");
                Ok(None)
            }
        }
    }

    /// After the process exited: was it OOM-killed? Then kill anything left in its cgroup
    /// (processes that left the process group) and remove the cgroup.
    pub(super) async fn release_cgroup(&mut self) -> bool {
        let Some(cg) = self.cgroup.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return false;
        };
        let oom = cg.oom_kills() > 0;
        if oom {
            self.oom_kills += 1;
            let limit = self.setup.service.memory_limit_mb.unwrap_or(0);
            warn!(instance = %self.key, memory_limit_mb = limit, "killed by the kernel: out of memory");
            let note = Arc::new(LogLine {
                instance: self.key.clone(),
                ts_ms: logs::now_ms(),
                stream: Stream::Stderr,
                text: format!(
                    "[tenement] killed by the kernel: out of memory (memory_limit_mb = {limit})"
                ),
            });
            self.setup.sink.send(&self.tail, note);
        }
        let _ = tokio::task::spawn_blocking(move || {
            cg.kill_all();
            cg.remove();
        })
        .await;
        oom
    }
}
