//! What the front door asks of the building: an instance that can take a request now.
//! Waking a sleeping instance, waiting for one that is starting, creating one on request when
//! the service allows it, choosing among a service's instances by weight — and the weight,
//! route and deploy operations that steer that choice.

use std::time::Duration;

use tenement_core::lifecycle::Input;
use tenement_core::{InstanceKey, ServiceName};

use crate::activity::ActivityGuard;
use crate::instance::InstanceHandle;
use crate::probe::Endpoint;
use crate::supervisor::wait_settled;
use crate::{Error, InstanceStatus, Supervisor};

/// An instance ready for a request, kept awake while the lease (its guard) lives.
pub struct Lease {
    handle: InstanceHandle,
    pub guard: ActivityGuard,
    /// Whether the request had to wait for the instance (wake or start).
    pub waited: bool,
}

impl Lease {
    pub fn key(&self) -> &InstanceKey {
        &self.handle.key
    }
}

/// What the proxy engine needs of a lease: where the instance listens, its name for the log.
impl tenement_proxy::Lease for Lease {
    fn endpoint(&self) -> &Endpoint {
        &self.handle.endpoint
    }
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.key.fmt(f)
    }
}

/// The longest a request waits for the successor of an instance a reload replaces.
const REPLACE_WAIT: Duration = Duration::from_secs(120);

impl Supervisor {
    /// `key`, awake and ready. A sleeping instance is woken; concurrent callers share the one
    /// start (they all watch the same status). Bounded by the service's `startup_timeout`.
    pub async fn lease(&self, key: &InstanceKey) -> Result<Lease, Error> {
        // An instance a reload is replacing: its successor is waited for, as a wake is.
        let until = tokio::time::Instant::now() + REPLACE_WAIT;
        loop {
            if self.replacing(key) {
                if tokio::time::Instant::now() >= until {
                    return Err(Error::NotReady {
                        key: key.clone(),
                        state: "stopping".into(),
                        reason: "being replaced by a reload".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let handle = match self.handle(key) {
                Ok(h) => h,
                Err(Error::NotFound(_)) => self.spawn_on_request(key).await?,
                Err(e) => return Err(e),
            };
            // Counted as activity from now on, so it cannot fall asleep under us (nor be
            // replaced: a reload waits for what is in flight).
            let guard = handle.activity.begin();
            if self.replacing(key) {
                continue; // it began meanwhile: this request waits for the successor
            }
            return self.lease_with(key, handle, guard).await;
        }
    }

    async fn lease_with(
        &self,
        key: &InstanceKey,
        handle: InstanceHandle,
        guard: ActivityGuard,
    ) -> Result<Lease, Error> {
        // The common case: already running, nothing to wait for (and no timer to arm).
        if handle.status.borrow().state == "running" {
            return Ok(Lease {
                handle,
                guard,
                waited: false,
            });
        }
        let wait = self
            .config()
            .service(&key.service)
            .map_or(Duration::from_secs(10), |s| {
                s.startup_timeout() + Duration::from_secs(1)
            });
        match tokio::time::timeout(wait, until_running(key, &handle)).await {
            Ok(Ok(())) => Ok(Lease {
                handle,
                guard,
                waited: true,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::NotReady {
                key: key.clone(),
                state: handle.status.borrow().state.clone(),
                reason: format!("not ready within {}s", wait.as_secs()),
            }),
        }
    }

    /// One of `service`'s instances with weight > 0, chosen in proportion to weight among
    /// those in the best state there is ([`tier`]): a stopping or backing-off instance is
    /// chosen only when no sibling can take the request.
    pub async fn lease_service(&self, service: &ServiceName) -> Result<Lease, Error> {
        let key = {
            let registry = self.registry();
            let mut candidates: Vec<(&InstanceKey, u32, u8)> = registry
                .iter()
                .filter(|(k, _)| k.service == *service)
                // One a reload is replacing takes no new request while another can; alone,
                // it is chosen, and the request waits for its successor.
                .filter_map(|(k, h)| {
                    let replacing = 3 * self.replacing(k) as u8;
                    Some((k, h.activity.weight() as u32, tier(h)? + replacing))
                })
                .filter(|(_, w, _)| *w > 0)
                .collect();
            let best = candidates.iter().map(|c| c.2).min().unwrap_or(0);
            candidates.retain(|c| c.2 == best);
            let candidates: Vec<(&InstanceKey, u32)> =
                candidates.into_iter().map(|(k, w, _)| (k, w)).collect();
            let total: u32 = candidates.iter().map(|(_, w)| w).sum();
            if total == 0 {
                return Err(Error::NoInstances(service.clone()));
            }
            let mut ticket = fastrand::u32(0..total);
            let mut chosen = candidates[0].0;
            for (k, w) in &candidates {
                if ticket < *w {
                    chosen = k;
                    break;
                }
                ticket -= w;
            }
            // Take the guard under the same lock `route` changes weights under: a deploy that
            // drains the old instance either sees this request in flight or it never chose it.
            let handle = registry[chosen].clone();
            let guard = handle.activity.begin();
            (chosen.clone(), handle, guard)
        };
        if self.replacing(&key.0) {
            drop(key.2);
            return self.lease(&key.0).await;
        }
        self.lease_with(&key.0, key.1, key.2).await
    }

    async fn spawn_on_request(&self, key: &InstanceKey) -> Result<InstanceHandle, Error> {
        let config = self.config();
        let service = config
            .service(&key.service)
            .ok_or_else(|| Error::UnknownService(key.service.clone()))?;
        if !service.spawn_on_request {
            return Err(Error::NotFound(key.clone()));
        }
        let max = service.max_instances;
        let count = self
            .registry()
            .keys()
            .filter(|k| k.service == key.service)
            .count();
        if max > 0 && count >= max as usize {
            return Err(Error::TooManyInstances {
                service: key.service.clone(),
                max,
            });
        }
        match self.create(key, 100, false).await {
            Err(Error::AlreadyExists(_)) => self.handle(key),
            other => other,
        }
    }

    /// Sets the share of `{service}.{domain}` traffic `key` gets (0 = none), durably.
    pub async fn set_weight(
        &self,
        key: &InstanceKey,
        weight: u32,
    ) -> Result<InstanceStatus, Error> {
        let weight = u8::try_from(weight)
            .ok()
            .filter(|w| *w <= 100)
            .ok_or(Error::BadWeight(weight))?;
        let handle = self.handle(key)?;
        let (store, k) = (self.store().clone(), key.clone());
        tokio::task::spawn_blocking(move || store.set_weights(&[(k, weight)]))
            .await
            .expect("store task")?;
        handle.activity.set_weight(weight);
        self.get(key)
    }

    /// Moves all of `from`'s traffic to `to` at once: `to` gets `from`'s weight added (at most
    /// 100, at least 1), `from` gets 0. Both change under the registry lock, so no request sees
    /// half of it.
    pub async fn route(&self, from: &InstanceKey, to: &InstanceKey) -> Result<(u8, u8), Error> {
        if from == to {
            return Err(Error::Invalid {
                key: from.clone(),
                message: "cannot route an instance's traffic to itself".into(),
            });
        }
        let (hf, ht) = (self.handle(from)?, self.handle(to)?);
        let new_to =
            (hf.activity.weight() as u32 + ht.activity.weight() as u32).clamp(1, 100) as u8;
        let (store, f, t) = (self.store().clone(), from.clone(), to.clone());
        tokio::task::spawn_blocking(move || store.set_weights(&[(t, new_to), (f, 0)]))
            .await
            .expect("store task")?;
        let _registry = self.registry();
        ht.activity.set_weight(new_to);
        hf.activity.set_weight(0);
        Ok((0, new_to))
    }

    /// Starts `key` with `weight`, waits up to `timeout` for it to be ready (stopping it again
    /// if it is not), then with `replace`: routes the old instance's traffic to it, waits for the
    /// old one's in-flight requests to finish (at most `drain`), and stops the old one.
    pub async fn deploy(
        &self,
        key: &InstanceKey,
        weight: u32,
        timeout: Duration,
        replace: Option<&InstanceKey>,
        drain: Duration,
    ) -> Result<InstanceStatus, Error> {
        let weight = u8::try_from(weight)
            .ok()
            .filter(|w| *w <= 100)
            .ok_or(Error::BadWeight(weight))?;
        if let Some(old) = replace {
            self.handle(old)?;
        }
        // Weight 0 until healthy: no request waits on it meanwhile, and a server that crashes
        // mid-deploy brings it back without traffic, not as if the deploy had succeeded.
        let handle = self.create(key, 0, false).await?;
        let settled = tokio::time::timeout(timeout, wait_settled(key, handle.clone())).await;
        let ready = match settled {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                let _ = self.stop(key).await;
                return Err(e);
            }
            Err(_) => {
                let _ = self.stop(key).await;
                return Err(Error::NotReady {
                    key: key.clone(),
                    state: "starting".into(),
                    reason: format!("not healthy within {}s; deploy undone", timeout.as_secs()),
                });
            }
        };
        self.set_weight(key, u32::from(weight)).await?;
        if let Some(old) = replace {
            self.route(old, key).await?;
            let old_handle = self.handle(old)?;
            let drained = async {
                while old_handle.activity.in_flight() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let _ = tokio::time::timeout(drain, drained).await;
            self.stop(old).await?;
        }
        Ok(self.get(key).unwrap_or(ready))
    }
}

async fn until_running(key: &InstanceKey, handle: &InstanceHandle) -> Result<(), Error> {
    let mut status = handle.status.clone();
    loop {
        let (state, reason) = {
            let s = status.borrow_and_update();
            (s.state.clone(), s.last_exit.clone())
        };
        match state.as_ref() {
            "running" => return Ok(()),
            "sleeping" => {
                let _ = handle.inputs.send(Input::Wake).await;
            }
            "exited" | "failed" | "stopped" => {
                return Err(Error::NotReady {
                    key: key.clone(),
                    state,
                    reason: reason.unwrap_or_else(|| "not running".into()),
                });
            }
            _ => {}
        }
        if status.changed().await.is_err() {
            return Err(Error::NotFound(key.clone()));
        }
    }
}

/// How fit an instance is to take a service's request, best first; `None`: not at all.
/// 0: running and not failing its checks, asleep (woken), or starting; 1: running but failing
/// its checks; 2: stopping or backing off (the request waits for it).
fn tier(h: &crate::instance::InstanceHandle) -> Option<u8> {
    let status = h.status.borrow();
    match status.state.as_ref() {
        "failed" | "exited" | "stopped" => None,
        "running" if status.health == crate::Health::Unhealthy => Some(1),
        "running" | "sleeping" | "starting" => Some(0),
        _ => Some(2),
    }
}
