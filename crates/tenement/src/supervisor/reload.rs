//! `ten reload` and SIGHUP: the configuration, read and validated anew, applied to the
//! running server without touching what did not change.
//!
//! - a new service is usable at once; a new `[instances]` entry is started;
//! - a removed service's instances are stopped and forgotten (as `ten stop`);
//! - a changed service's instances are replaced one at a time: each is stopped (its record,
//!   data and uid kept) and started again with the new definition; a request for it meanwhile
//!   waits, as during a wake ([`Supervisor::replacing`]);
//! - `[settings]` apply to instances started from now on; `data_dir`, `[settings.tls]` and
//!   the front door's connection caps need a restart of `ten serve` and are reported so (the
//!   running values are kept).
//!
//! An invalid file changes nothing: the caller gets every error, with file, line and field.

use std::sync::Arc;

use tenement_core::InstanceKey;
use tenement_core::config::Config;
use tracing::{info, warn};

use super::{Supervisor, stop_and_wait, wait_settled};
use crate::Error;

pub use tenement_api::ReloadReport;

/// Settings that only a new `ten serve` can take (the front door's are read when it starts).
const RESTART_ONLY: [&str; 9] = [
    "data_dir",
    "tls",
    "max_connections",
    "max_connections_per_ip",
    "fast_path",
    "max_body_mb",
    "max_header_kb",
    "header_timeout",
    "upstream_timeout",
];

impl Supervisor {
    /// Applies `new` (already validated) and says what changed.
    pub async fn reload(&self, mut new: Config) -> ReloadReport {
        // One at a time: a second reload applies to what the first left.
        let _one = self.inner.reloading.lock().await;
        let old = self.config();
        let mut report = ReloadReport::default();
        settings_diff(&old, &mut new, &mut report);
        for (name, svc) in &new.services {
            match old.services.get(name) {
                None => report.services_added.push(name.to_string()),
                Some(before) if before != svc => report.services_changed.push(name.to_string()),
                Some(_) => {}
            }
        }
        let removed: Vec<_> = old
            .services
            .keys()
            .filter(|n| !new.services.contains_key(*n))
            .cloned()
            .collect();
        report.services_removed = removed.iter().map(|n| n.to_string()).collect();
        let new = Arc::new(new);
        *self.inner.config.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        let keys: Vec<InstanceKey> = self.registry().keys().cloned().collect();
        for key in keys.iter().filter(|k| removed.contains(&k.service)) {
            match self.stop(key).await {
                Ok(()) => report.stopped.push(key.to_string()),
                Err(e) => report.failed.push(format!("{key}: {e}")),
            }
        }
        // One at a time; a service whose first replacement fails keeps its other instances
        // (on the old definition) serving: the rollout of that service stops there.
        let mut halted: Vec<&tenement_core::ServiceName> = Vec::new();
        for key in keys.iter().filter(|k| {
            report
                .services_changed
                .iter()
                .any(|s| s == k.service.as_str())
        }) {
            if halted.contains(&&key.service) {
                report.failed.push(format!(
                    "{key}: not replaced (a replacement of its service failed; it keeps running the previous definition)"
                ));
                continue;
            }
            match self.replace(key).await {
                Ok(()) => report.replaced.push(key.to_string()),
                Err(e) => {
                    report.failed.push(format!("{key}: {e}"));
                    halted.push(&key.service);
                }
            }
        }
        for key in new.instances.iter().filter(|k| !old.instances.contains(k)) {
            if self.registry().contains_key(key) {
                continue;
            }
            match self.spawn(key).await {
                Ok(_) => report.started.push(key.to_string()),
                Err(e) => report.failed.push(format!("{key}: {e}")),
            }
        }
        info!(?report, "configuration reloaded");
        report
    }

    /// Stops `key` keeping its record, data and uid, and starts it again from the
    /// configuration in force; requests for it wait meanwhile.
    async fn replace(&self, key: &InstanceKey) -> Result<(), Error> {
        let handle = self.handle(key)?;
        let weight = handle.activity.weight();
        self.inner
            .replacing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        // New requests wait for the successor from now on; those in flight finish first.
        let drain = std::time::Duration::from_secs(self.config().settings.upstream_timeout);
        let until = std::time::Instant::now() + drain;
        while handle.activity.in_flight() > 0 && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        stop_and_wait(handle).await;
        let created = self.create(key, weight, false).await;
        self.inner
            .replacing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let handle = created?;
        if let Err(e) = wait_settled(key, handle).await {
            warn!(instance = %key, error = %e, "replaced instance did not become ready");
            return Err(e);
        }
        Ok(())
    }

    /// Whether `key` is being replaced by a reload right now.
    pub(crate) fn replacing(&self, key: &InstanceKey) -> bool {
        self.inner
            .replacing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }
}

/// Fills `report` with the settings that changed; keeps the running value of those that
/// need a restart.
fn settings_diff(old: &Config, new: &mut Config, report: &mut ReloadReport) {
    let (Ok(before), Ok(after)) = (
        serde_json::to_value(&old.settings),
        serde_json::to_value(&new.settings),
    ) else {
        return;
    };
    let (Some(before), Some(after)) = (before.as_object(), after.as_object()) else {
        return;
    };
    for (name, value) in after {
        if before.get(name) == Some(value) {
            continue;
        }
        if RESTART_ONLY.contains(&name.as_str()) {
            report.needs_restart.push(name.clone());
        } else {
            report.settings_changed.push(name.clone());
        }
    }
    new.settings.data_dir = old.settings.data_dir.clone();
    new.settings.tls = old.settings.tls.clone();
    new.settings.max_connections = old.settings.max_connections;
    new.settings.max_connections_per_ip = old.settings.max_connections_per_ip;
    new.settings.fast_path = old.settings.fast_path;
    new.settings.max_body_mb = old.settings.max_body_mb;
    new.settings.max_header_kb = old.settings.max_header_kb;
    new.settings.header_timeout = old.settings.header_timeout;
    new.settings.upstream_timeout = old.settings.upstream_timeout;
}
