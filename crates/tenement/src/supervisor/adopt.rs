//! Taking over the instances an earlier `ten serve` left running (after a crash, or handed
//! over by `ten upgrade`): each is adopted as it is, when its service's definition still gives
//! the same process; otherwise it is stopped and started anew ([`tenement_runtime::handover`]).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tenement_core::InstanceKey;
use tenement_core::config::Service;
use tenement_runtime::adopt::Found;
use tenement_runtime::{Runtime, Spec, Started};
use tracing::warn;

use super::{Supervisor, cgroup_name};

/// Where instances' shims listen for their next owner (0700).
fn shims_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(".shims")
}

/// What of an earlier server's leftovers belongs to instances still running: spared by the
/// clean-up at start.
#[derive(Debug, Default)]
pub struct Kept {
    pub keys: Vec<InstanceKey>,
    /// Their cgroups' names.
    pub cgroups: Vec<String>,
    /// Their data directories (quota mounts).
    pub dirs: Vec<PathBuf>,
}

/// Takes over every instance an earlier server of `data_dir` left running (this server is
/// their owner from now on: each stops `adopt_timeout` after this one ends, unless adopted
/// again); what of theirs must be kept.
/// `had`: instances handed over by a predecessor already (not asked again).
pub async fn find_running(data_dir: &Path, had: Vec<Found>) -> std::io::Result<(Vec<Found>, Kept)> {
    let dir = shims_dir(data_dir);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    // Whatever is in it is connected to and what is dead removed: only a directory of the
    // server's own will do, not a link to somewhere else nor one another user could change.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of the server's own (a symbolic link, a file, or owned by uid {}): remove it",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let skip: Vec<PathBuf> = had
        .iter()
        .filter_map(|f| f.hello.key.parse::<InstanceKey>().ok())
        .map(|k| tenement_runtime::handover::socket_path(&dir, &k))
        .collect();
    let mut found = tenement_runtime::adopt::find(&dir, &skip).await;
    found.extend(had);
    let mut kept = Kept::default();
    for key in found
        .iter()
        .filter_map(|f| f.hello.key.parse::<InstanceKey>().ok())
    {
        kept.cgroups.push(cgroup_name(&key));
        kept.dirs.push(super::instance_dir(data_dir, &key));
        kept.keys.push(key);
    }
    Ok((found, kept))
}

/// What a shim keeps for whoever adopts its instance: the instance's `PORT` and a digest of
/// everything that made its process ([`digest`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    port: u16,
    digest: String,
}

impl Supervisor {
    /// The instances found running at start ([`tenement_runtime::adopt::find`]), adopted when
    /// [`Supervisor::restore`] brings their records back.
    pub fn with_adopted(self, found: Vec<Found>) -> Self {
        let mut map = self
            .inner
            .adoptable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for f in found {
            match f.hello.key.parse::<InstanceKey>() {
                Ok(key) => {
                    map.insert(key, f);
                }
                Err(_) => stop_found(f, Duration::from_secs(10)),
            }
        }
        drop(map);
        self
    }

    /// The port an adopted instance had, if `key` is one.
    pub(super) fn adopted_port(&self, key: &InstanceKey) -> Option<u16> {
        let map = self
            .inner
            .adoptable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let meta: Meta = serde_json::from_str(&map.get(key)?.hello.meta).ok()?;
        Some(meta.port)
    }

    /// Sets what `spec`'s shim keeps for its successors; then, if an instance of `key` was
    /// found running with this very spec, its workload (else it is stopped, and `None`).
    pub(super) async fn adopt(
        &self,
        key: &InstanceKey,
        service: &Service,
        runtime: &dyn Runtime,
        spec: &mut Spec,
        port: u16,
    ) -> Option<Started> {
        let settings = &self.config().settings;
        let meta = Meta {
            port,
            digest: digest(spec, service),
        };
        spec.handover = tenement_runtime::Handover {
            listen: Some(tenement_runtime::handover::socket_path(
                &shims_dir(&settings.data_dir),
                key,
            )),
            adopt_timeout: settings.adopt_timeout,
            meta: serde_json::to_string(&meta).expect("json"),
        };
        let found = self
            .inner
            .adoptable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)?;
        let cgroups = self
            .inner
            .cgroups
            .map(|c| c.dirs_of(&cgroup_name(key)))
            .unwrap_or_default();
        let theirs: Option<Meta> = serde_json::from_str(&found.hello.meta).ok();
        let same = theirs.is_some_and(|m| m.port == port && m.digest == meta.digest);
        if same && found.hello.cgroups == cgroups {
            tracing::debug!(instance = %key, pid = found.hello.pid, "adopted");
            return Some(runtime.adopt(spec, found.started));
        }
        warn!(instance = %key, "found running with a definition other than the configuration's: starting it anew");
        stop_found_and_wait(found, service.stop_timeout()).await;
        None
    }

    /// Stops whatever was found running and not brought back (its record is gone, or its
    /// service left the configuration).
    pub(super) fn stop_unclaimed(&self) {
        let left: Vec<(InstanceKey, Found)> = self
            .inner
            .adoptable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (key, found) in left {
            warn!(instance = %key, "found running without a record or a service: stopping it");
            stop_found(found, Duration::from_secs(10));
        }
    }
}

/// Everything that makes an instance's process, in a fixed form: an adopted instance whose
/// digest differs from what the configuration now gives is started anew.
fn digest(spec: &Spec, service: &Service) -> String {
    let made = format!(
        "{:?}|{:?}|{:?}|{:?}|{}|{}|{:?}|{:?}|{}|{:?}|{}",
        spec.argv,
        spec.env,
        spec.workdir,
        spec.user.map(|u| (u.uid, u.gid)),
        spec.tmp_size_mb,
        service.isolation.name(),
        service.memory_limit_mb,
        service.cpu_shares,
        service.pids_max,
        service.storage_quota_mb,
        service.listen == tenement_core::config::Listen::Tcp,
    );
    let hash = Sha256::digest(made.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stops a found instance in the background: SIGTERM, SIGKILL after `grace`.
fn stop_found(found: Found, grace: Duration) {
    tokio::spawn(stop_found_and_wait(found, grace));
}

async fn stop_found_and_wait(found: Found, grace: Duration) {
    let mut w = found.started.workload;
    w.terminate();
    if tokio::time::timeout(grace, w.wait()).await.is_err() {
        w.kill();
        let _ = w.wait().await;
    }
}

pub use tenement_api::Upgraded;

/// A `ten upgrade` asked of the server, and where its answer goes.
pub type UpgradeRequest = tokio::sync::oneshot::Sender<Result<Upgraded, String>>;

impl Supervisor {
    /// Where `ten upgrade` requests arrive (for `ten serve`, which alone can hand over).
    pub fn upgrade_requests(&self) -> tokio::sync::mpsc::Receiver<UpgradeRequest> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        *self
            .inner
            .upgrades
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// From now on the successor of `ten upgrade` owns the instances: none starts here any
    /// more, every actor ends, and what runs is returned, for [`tenement_runtime::adopt::send`]
    /// (shim connections and pipes: this server no longer reads them).
    pub async fn hand_over(&self) -> Vec<Found> {
        self.inner.handing_over.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        std::mem::take(&mut *self.inner.hand_to.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Requests, streams and websockets in flight to any instance (the proxy's activity).
    pub fn in_flight(&self) -> u64 {
        self.registry()
            .values()
            .map(|h| h.activity.in_flight() as u64)
            .sum()
    }

    /// Hands the server over to a new process of its executable ([`Upgraded`]).
    pub async fn upgrade(&self) -> Result<Upgraded, String> {
        let tx = self
            .inner
            .upgrades
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("this server cannot hand over")?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.try_send(reply)
            .map_err(|_| "an upgrade is already under way".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the server stopped before the upgrade finished".into()))
    }
}
