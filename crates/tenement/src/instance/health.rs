//! What a health check's result does to an instance: ready, healthy again, one more failure
//! (three in a row restart it), or nothing at all when the server itself was short.

use std::time::Instant;

use tenement_core::lifecycle::{Input, Phase};
use tracing::warn;

use super::{Actor, HEALTH_FAILURES, Health};
use crate::probe;

/// When the next periodic check is due: `interval` from now, rounded up to the server's next
/// [`BATCH`] boundary, so that a thousand instances' checks come in a few batches a second
/// (one wake-up of the runtime each) rather than one by one.
fn next_check(interval: std::time::Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let due = Instant::now() + interval;
    let since = due.duration_since(epoch).as_nanos();
    let batch = BATCH.as_nanos();
    let rounded = since.div_ceil(batch) * batch;
    epoch + std::time::Duration::from_nanos(rounded as u64)
}

/// See [`next_check`].
const BATCH: std::time::Duration = std::time::Duration::from_millis(250);

impl Actor {
    pub(super) fn on_probe(&mut self, result: Result<(), probe::ProbeError>) {
        let interval = self.setup.settings.health_check_interval();
        match (self.life.phase, result) {
            (Phase::Starting, Ok(())) => {
                self.activity.touch();
                self.health = Health::Healthy;
                self.next_health = Some(next_check(interval));
                self.apply(Input::Ready);
            }
            (Phase::Running, Ok(())) => {
                // Nothing to tell anyone when it was healthy already (the usual case).
                let changed = self.health != Health::Healthy;
                self.health = Health::Healthy;
                self.health_failures = 0;
                self.next_health = Some(next_check(interval));
                if changed {
                    self.publish();
                }
            }
            // The server's own shortage (file descriptors, memory): says nothing about the
            // instance, so it is not held against it.
            (Phase::Running, Err(e)) if e.is_ours() => {
                warn!(instance = %self.key, error = %e, "health check not run: the server is out of resources; not counted");
                self.next_health = Some(next_check(interval));
            }
            (Phase::Running, Err(e)) => {
                self.health = Health::Unhealthy;
                self.health_failures += 1;
                self.status.send_modify(|s| s.health_check_failures += 1);
                warn!(instance = %self.key, failures = self.health_failures, error = %e, "health check failed");
                self.next_health = Some(next_check(interval));
                if self.health_failures >= HEALTH_FAILURES {
                    self.apply(Input::Unhealthy);
                } else {
                    self.publish();
                }
            }
            _ => {}
        }
    }
}
