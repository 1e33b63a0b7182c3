//! Starting a run (spawning, or taking over an adopted instance) and letting go of one
//! (`ten upgrade`, or a server adopting it).

use std::sync::Arc;
use std::time::Instant;

use tenement_core::lifecycle::ExitReason;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Actor;
use crate::logs::{self, Stream};
use crate::probe;

impl Actor {
    /// `ten upgrade`'s successor takes the instance over: stop reading its output (what was
    /// read is kept), then pass the shim's connection and the pipes on; were the pipes not
    /// to be had back, tell the shim instead that the next server to connect may adopt it.
    pub(super) async fn let_go(&mut self) {
        self.capturing.cancel();
        let mut pipes = Vec::new();
        for capture in self.captures.drain(..) {
            pipes.push(capture.await.ok().flatten());
        }
        self.handed_over = true;
        let Some(mut workload) = self.workload.take() else {
            return;
        };
        let pipes = (pipes.pop().flatten(), pipes.pop().flatten());
        if let (Some(stderr), Some(stdout)) = pipes {
            let hello = tenement_runtime::handover::Hello {
                key: self.key.to_string(),
                pid: workload.pid(),
                cgroups: self.setup.spec.cgroups.clone(),
                meta: self.setup.spec.handover.meta.clone(),
            };
            let started = tenement_runtime::Started {
                workload,
                stdout,
                stderr,
            };
            let found = tenement_runtime::adopt::Found { hello, started };
            self.setup
                .hand_to
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(found);
            return;
        }
        workload.let_go();
    }

    pub(super) fn spawn(&mut self) -> Result<(), ExitReason> {
        self.held_port = None; // the app's, from now on
        // A new run answers on new connections only.
        if let Ok(mut prober) = self.prober.try_lock() {
            prober.forget();
        }
        let cgroup = self.make_cgroup().map_err(ExitReason::SpawnFailed)?;
        self.setup.spec.cgroups = cgroup.as_ref().map(|c| c.dirs()).unwrap_or_default();
        let started = self.start_process();
        match (started, cgroup) {
            (Ok(()), cg) => {
                *self.cgroup.lock().unwrap_or_else(|p| p.into_inner()) = cg.map(Arc::new);
                Ok(())
            }
            (Err(e), Some(cg)) => {
                cg.remove();
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }

    fn start_process(&mut self) -> Result<(), ExitReason> {
        let adopted = self.setup.adopted.take();
        let was_running = adopted.is_some();
        let started = match adopted {
            Some(adopted) => adopted,
            None => {
                let plan = &self.setup.socket;
                crate::socket_dir::prepare(&plan.path, plan.own_dir.as_deref(), plan.user)
                    .map_err(ExitReason::SpawnFailed)?;
                let started = self.setup.runtime.start(&self.setup.spec).map_err(|e| {
                    let ours = matches!(&e, tenement_runtime::Error::Spawn { source, .. } if probe::server_short_of(source));
                    match ours {
                        true => ExitReason::ServerBusy(e.to_string()),
                        false => ExitReason::SpawnFailed(e.to_string()),
                    }
                })?;
                info!(instance = %self.key, pid = started.workload.pid(), "started");
                started
            }
        };
        self.capturing = CancellationToken::new();
        self.captures = [
            (started.stdout, Stream::Stdout),
            (started.stderr, Stream::Stderr),
        ]
        .into_iter()
        .map(|(pipe, stream)| {
            tokio::spawn(logs::capture(
                pipe,
                self.key.clone(),
                stream,
                self.tail.clone(),
                self.setup.sink.clone(),
                self.capturing.clone(),
            ))
        })
        .collect();
        self.workload = Some(started.workload);
        self.startup_deadline = Some(Instant::now() + self.setup.service.startup_timeout());
        let (endpoint, health) = (
            self.setup.endpoint.clone(),
            self.setup.service.health.clone(),
        );
        let last_error = Arc::new(std::sync::Mutex::new(None));
        self.ready_error = last_error.clone();
        if was_running {
            // Adopted: it was serving a moment ago; the periodic health checks take over
            // (a thousand readiness checks at once would only hold up the hand-over).
            self.probe = Some(Box::pin(std::future::ready(Ok(()))));
            return Ok(());
        }
        self.probe = Some(Box::pin(async move {
            probe::until_ready(&endpoint, health.as_deref(), &last_error).await;
            Ok(())
        }));
        Ok(())
    }
}
