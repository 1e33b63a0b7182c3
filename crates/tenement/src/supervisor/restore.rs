//! Bringing instances back when `ten serve` starts: every recorded one and the configuration's
//! `[instances]`, registered first (so the first list is complete), then left to settle.

use std::future::Future;
use std::time::Duration;

use tenement_core::InstanceKey;
use tracing::warn;

use super::{Supervisor, wait_settled};
use crate::Error;

impl Supervisor {
    /// Brings back every recorded instance and the configuration's `[instances]`, all at once;
    /// one failure is logged and does not hold up the others. `[instances]` start, as the
    /// configuration asks. Other instances of services that scale to zero (`idle_timeout` > 0)
    /// come back asleep and start on their first request, so a restart does not start a
    /// thousand mostly idle processes at once.
    ///
    /// The instance list counts as incomplete from this call (not from the first poll of what
    /// it returns) until every instance is registered: [`Supervisor::registered`].
    pub fn restore(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.restoring.send_replace(true);
        let me = self.clone();
        async move { me.bring_back().await }
    }

    /// Returns once no [`Supervisor::restore`] is registering instances (at most `limit`):
    /// a list asked for while `ten serve` starts holds every instance it will bring back.
    pub async fn registered(&self, limit: Duration) {
        let mut rx = self.inner.restoring.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|restoring| !restoring)).await;
    }

    async fn bring_back(&self) {
        let store = self.inner.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>((store.list()?, store.kept_down()?))
        });
        let (recorded, kept_down) = match read.await.expect("store task") {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the state store; restoring nothing from it");
                Default::default()
            }
        };
        // (key, weight, whether the store has it already)
        let mut wanted: Vec<(InstanceKey, u8, bool)> =
            recorded.into_iter().map(|(k, w)| (k, w, true)).collect();
        let config = self.config();
        for key in &config.instances {
            // (Stopped by the user: down until spawned again.)
            if !wanted.iter().any(|(k, _, _)| k == key) && !kept_down.contains(key) {
                wanted.push((key.clone(), 100, false));
            }
        }
        let mut starts = tokio::task::JoinSet::new();
        for (key, weight, recorded) in wanted {
            let me = self.clone();
            let config = me.config();
            let asleep = !config.instances.contains(&key)
                && config
                    .service(&key.service)
                    .is_some_and(|s| s.idle_timeout > 0);
            starts.spawn(async move {
                match me.create_with(&key, weight, asleep, !recorded).await {
                    Ok(_) if asleep => None,
                    Ok(handle) => Some((key, handle)),
                    Err(e @ Error::UnknownService(_)) => {
                        warn!(instance = %key, error = %e, "not brought back: its service is no longer in the configuration; `ten stop {key}` forgets it");
                        None
                    }
                    Err(e) => {
                        warn!(instance = %key, error = %e, "could not bring instance back");
                        None
                    }
                }
            });
        }
        let started = starts.join_all().await;
        self.stop_unclaimed();
        // Every instance is registered: lists are complete from here on.
        self.inner.restoring.send_replace(false);
        let mut settling = tokio::task::JoinSet::new();
        for (key, handle) in started.into_iter().flatten() {
            settling.spawn(async move {
                if let Err(e) = wait_settled(&key, handle).await {
                    warn!(instance = %key, error = %e, "could not bring instance back");
                }
            });
        }
        settling.join_all().await;
    }
}
