//! Noticing the moment an instance's Unix socket appears, so a cold wake does not wait for the
//! next readiness poll.
//!
//! One inotify instance for the whole process, read by one thread, watches every socket
//! directory (`IN_CREATE`, `IN_MOVED_TO`) and wakes whoever waits for that path. It is never
//! closed: closing an inotify descriptor waits for an SRCU grace period in the kernel
//! (measured here: 14–24 ms), which is exactly the latency this is meant to remove. When
//! inotify is unavailable (limits, another filesystem) waiters simply time out and poll.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::Notify;

struct Watcher {
    inotify: Inotify,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    dirs: HashMap<WatchDescriptor, PathBuf>,
    waiting: HashMap<PathBuf, Arc<Notify>>,
}

fn watcher() -> Option<&'static Watcher> {
    static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();
    WATCHER
        .get_or_init(|| {
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC).ok()?;
            std::thread::Builder::new()
                .name("socket-watch".into())
                .spawn(read_events)
                .ok()?;
            Some(Watcher {
                inotify,
                state: Mutex::default(),
            })
        })
        .as_ref()
}

/// The reader thread: wakes the waiter of each path that appears.
fn read_events() {
    let Some(w) = watcher() else { return };
    loop {
        let Ok(events) = w.inotify.read_events() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut state = w.state.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                // The directory is gone (or unwatched): forget its descriptor.
                state.dirs.remove(&e.wd);
                continue;
            }
            if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: let everyone re-check.
                state.waiting.values().for_each(|n| n.notify_one());
                continue;
            }
            let (Some(dir), Some(name)) = (state.dirs.get(&e.wd), e.name) else {
                continue;
            };
            if let Some(n) = state.waiting.get(&dir.join(name)) {
                n.notify_one();
            }
        }
    }
}

/// Interest in one socket path, registered until dropped.
pub struct SocketWatch {
    path: PathBuf,
    notify: Arc<Notify>,
}

impl SocketWatch {
    /// Starts watching for `socket` to appear. `None` when its directory cannot be watched.
    pub fn new(socket: &Path) -> Option<Self> {
        let w = watcher()?;
        let dir = socket.parent()?;
        socket.file_name()?;
        // Re-adding an existing watch returns the same descriptor, and a directory that was
        // removed and made again gets a new one, so this is done on every call.
        let wd = w
            .inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
            )
            .ok()?;
        let notify = Arc::new(Notify::new());
        let mut state = w.state.lock().unwrap_or_else(|p| p.into_inner());
        state.dirs.insert(wd, dir.to_owned());
        state.waiting.insert(socket.to_owned(), notify.clone());
        Some(Self {
            path: socket.to_owned(),
            notify,
        })
    }

    /// Whether the socket appeared (now, or since the last call) within `at_most`.
    pub async fn created(&self, at_most: Duration) -> bool {
        tokio::time::timeout(at_most, self.notify.notified())
            .await
            .is_ok()
    }
}

impl Drop for SocketWatch {
    fn drop(&mut self) {
        if let Some(w) = watcher() {
            let mut state = w.state.lock().unwrap_or_else(|p| p.into_inner());
            if state
                .waiting
                .get(&self.path)
                .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
            {
                state.waiting.remove(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_when_the_socket_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let watch = SocketWatch::new(&path).expect("inotify works here");
        let other = dir.path().join("other.sock");
        let bind = {
            let (path, other) = (path.clone(), other.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let decoy = std::os::unix::net::UnixListener::bind(&other).unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                (
                    decoy,
                    std::os::unix::net::UnixListener::bind(&path).unwrap(),
                )
            })
        };
        // Far longer than any machine needs: a broken watch fails instead of passing late.
        assert!(watch.created(Duration::from_secs(60)).await);
        assert!(path.exists(), "woken only by our own socket, not the decoy");
        drop(bind.await.unwrap());
        drop(watch);
        let w = watcher().unwrap();
        assert!(!w.state.lock().unwrap().waiting.contains_key(&path));
    }
}
