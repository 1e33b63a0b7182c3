//! Which user each instance's app runs as.
//!
//! Under `namespace` and `sandbox` (the levels whose backend says
//! [`tenement_runtime::Runtime::own_user`]), every instance gets an unprivileged uid of its own,
//! as systemd's `DynamicUser=` does: no `/etc/passwd` entry, its own group of the same number,
//! no supplementary groups. Its data directory and socket directory belong to it; nothing else
//! on the host does. The uid is recorded in the state store, so the instance keeps it across
//! restarts of `ten serve` (its files stay its own), and is given back when its data goes.
//!
//! Each server draws from its own block of [`BLOCK`] uids, chosen by its data directory, so
//! two servers on one host do not hand out the same uid.
//!
//! `user = "name"` (or a number) runs the app as that existing user; `user = "root"` is the
//! explicit opt-out. `process` runs as the server's own user unless `user` is set.

use std::collections::HashMap;
use std::sync::Mutex;

use tenement_core::InstanceKey;
use tenement_core::config::Service;
use tenement_runtime::{Runtime, User};

/// The first uid any server hands out.
pub const FIRST: u32 = 2_000_000;
/// uids per server.
pub const BLOCK: u32 = 65_536;
/// Blocks to choose from (FIRST + BLOCKS * BLOCK stays below 2^31).
const BLOCKS: u32 = 4_096;

/// Who an instance's app runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// `None`: the server's own user.
    pub user: Option<User>,
    /// Whether the uid is this instance's alone (so its socket's peer can be told by uid).
    pub own: bool,
}

pub struct Users {
    first: u32,
    given: Mutex<HashMap<InstanceKey, u32>>,
}

impl Users {
    /// The uids of the server with this data directory; `recorded` are those given before.
    pub fn new(data_dir: &std::path::Path, recorded: Vec<(InstanceKey, u32)>) -> Self {
        let block = tenement_runtime::fnv1a(data_dir.as_os_str().as_encoded_bytes()) % BLOCKS;
        Self {
            first: FIRST + block * BLOCK,
            given: Mutex::new(recorded.into_iter().collect()),
        }
    }

    /// The uids this server hands out.
    pub fn range(&self) -> std::ops::Range<u32> {
        self.first..self.first + BLOCK
    }

    /// Who `key` runs as; `Some(uid)` in the second place: a uid newly given, to be recorded.
    pub fn run_as(
        &self,
        key: &InstanceKey,
        service: &Service,
        runtime: &dyn Runtime,
    ) -> Result<(RunAs, Option<u32>), String> {
        if let Some(name) = &service.user {
            let user = lookup(name)?;
            return Ok((
                RunAs {
                    user: Some(user),
                    own: false,
                },
                None,
            ));
        }
        if !runtime.own_user() || !nix::unistd::geteuid().is_root() {
            return Ok((
                RunAs {
                    user: None,
                    own: false,
                },
                None,
            ));
        }
        let mut given = self.given.lock().unwrap_or_else(|p| p.into_inner());
        let (uid, new) = match given.get(key) {
            Some(uid) => (*uid, None),
            None => {
                let taken: std::collections::HashSet<u32> = given.values().copied().collect();
                // Not a uid this host uses otherwise: a user of its, or a process's (someone
                // who runs as it could read the instance's files and /proc).
                let running = process_uids();
                let uid = self
                    .range()
                    .filter(|u| !taken.contains(u) && !running.contains(u))
                    .find(|u| !matches!(nix::unistd::User::from_uid((*u).into()), Ok(Some(_))))
                    .ok_or_else(|| format!("all {BLOCK} uids of this server are in use"))?;
                given.insert(key.clone(), uid);
                (uid, Some(uid))
            }
        };
        let user = User { uid, gid: uid };
        Ok((
            RunAs {
                user: Some(user),
                own: true,
            },
            new,
        ))
    }

    /// Forgets `key`'s uid (its data is gone).
    pub fn release(&self, key: &InstanceKey) {
        self.given
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The uids of every process on the host.
fn process_uids() -> std::collections::HashSet<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .filter_map(|e| e.metadata().ok().map(|m| m.uid()))
                .collect()
        })
        .unwrap_or_default()
}

/// A user name or numeric uid from the system's user database.
pub fn lookup(name: &str) -> Result<User, String> {
    if let Ok(uid) = name.parse::<u32>() {
        let gid = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        return Ok(User { uid, gid });
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(User {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(format!("user {name:?} does not exist on this host")),
        Err(e) => Err(format!("looking up user {name:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_gets_its_own_uid_and_keeps_it() {
        let a: InstanceKey = "api:a".parse().unwrap();
        let b: InstanceKey = "api:b".parse().unwrap();
        let users = Users::new(std::path::Path::new("/var/lib/tenement"), vec![]);
        let first = users.range().start;
        let recorded = vec![(a.clone(), first)];
        let users = Users::new(std::path::Path::new("/var/lib/tenement"), recorded);
        assert!(users.range().start >= FIRST && users.range().end <= i32::MAX as u32);
        let given = users.given.lock().unwrap().get(&a).copied();
        assert_eq!(given, Some(first));
        // The next one skips the recorded uid.
        let mut g = users.given.lock().unwrap();
        let taken: std::collections::HashSet<u32> = g.values().copied().collect();
        let next = users.range().find(|u| !taken.contains(u)).unwrap();
        g.insert(b.clone(), next);
        assert_eq!(next, first + 1);
        drop(g);
        users.release(&a);
        assert!(!users.given.lock().unwrap().contains_key(&a));
        assert_eq!(lookup("root").unwrap(), User::ROOT);
        assert_eq!(lookup("0").unwrap(), User::ROOT);
        assert!(lookup("no-such-user-here").is_err());
    }
}
