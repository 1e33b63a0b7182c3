//! `ten stop`: an instance stopped for good and forgotten, whatever state it is in.

use tenement_core::InstanceKey;
use tracing::{info, warn};

use std::path::Path;

use super::{Supervisor, instance_dir, stop_and_wait};
use crate::Error;

impl Supervisor {
    /// Stops `key` for good: SIGTERM, grace period, SIGKILL; forgets it. A recorded instance
    /// that is not running (its service left the configuration) is forgotten all the same.
    pub async fn stop(&self, key: &InstanceKey) -> Result<(), Error> {
        let handle = match self.handle(key) {
            Ok(h) => h,
            Err(e) => return self.forget_record(key).await?.then_some(()).ok_or(e),
        };
        // An `[instances]` entry stays down across restarts too, until spawned again.
        let listed = self.config().instances.contains(key);
        let record = || {
            let (store, k) = (self.inner.store.clone(), key.clone());
            tokio::task::spawn_blocking(move || match listed {
                true => store.keep_down(&k),
                false => store.remove(&k),
            })
        };
        let recorded = record().await.expect("store task");
        self.inner
            .forgetting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        match recorded {
            Ok(()) => stop_and_wait(handle).await,
            // The disk is full (the tenant being stopped may be what filled it): stop it
            // first, which frees its data, then record that it is gone.
            Err(e) if e.is_disk_full() => {
                warn!(instance = %key, "data_dir's disk is full: stopping first, then recording the stop");
                stop_and_wait(handle).await;
                record().await.expect("store task")?;
            }
            Err(e) => {
                self.inner
                    .forgetting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                return Err(e);
            }
        }
        info!(instance = %key, "stopped by user");
        Ok(())
    }

    /// Removes the record (and data) of an instance that is recorded but not registered;
    /// whether there was one.
    async fn forget_record(&self, key: &InstanceKey) -> Result<bool, Error> {
        let (store, k) = (self.inner.store.clone(), key.clone());
        let existed = tokio::task::spawn_blocking(move || {
            let existed = store.contains(&k)?;
            if existed {
                store.remove(&k)?;
                store.remove_uid(&k)?;
            }
            Ok::<_, Error>(existed)
        })
        .await
        .expect("store task")?;
        if existed {
            let data_dir = self.config().settings.data_dir.clone();
            remove_instance_dir(&data_dir, key, &instance_dir(&data_dir, key));
            self.inner.users.release(key);
            info!(instance = %key, "forgot the record of an instance that was not running");
        }
        Ok(existed)
    }
}

/// Removes an instance's data directory, and nothing else: it must be exactly
/// `{data_dir}/{service}/{id}` and a real directory, not a symlink planted by a tenant.
pub(super) fn remove_instance_dir(data_dir: &Path, key: &InstanceKey, dir: &Path) {
    if dir != instance_dir(data_dir, key) {
        warn!(instance = %key, dir = %dir.display(), "refusing to remove unexpected directory");
        return;
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                warn!(instance = %key, error = %e, "could not remove data directory");
            }
            // Remove the service directory too once it is empty; ignore "not empty".
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        Ok(_) => {
            warn!(instance = %key, dir = %dir.display(), "data directory is not a directory; left alone")
        }
        Err(_) => {}
    }
}
