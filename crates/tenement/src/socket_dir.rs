//! Where an instance's socket may live, prepared before each start.
//!
//! Rules (docs/isolation.md, "Sockets"):
//! - A directory of the socket's path that holds the instance id (the default
//!   `{data_dir}/{name}/{id}/app.sock`) is the instance's own: created by the server, owned by
//!   the instance's user, mode 0700. One that exists already must be a real directory (not a
//!   symlink) owned by the server or by that user.
//! - A shared directory (`/tmp/tenement/` in `/tmp/tenement/{name}-{id}.sock`) must be a real
//!   directory owned by the server's user (or root), and writable by others only with the
//!   sticky bit, as must every directory above it: otherwise someone else could swap the
//!   socket. The server creates one as `1733` (others may create entries, not list or remove
//!   them) when its instances run as users of their own, else `0755`.
//! - Whatever is at the socket's path before a start (a stale socket, a symlink, a
//!   squatter's file) is removed. Every connection is then checked anyway
//!   ([`crate::probe::Peer`]).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tenement_runtime::User;

/// Prepares the directories of `socket` for one start. `own` is the first directory of the
/// path that belongs to the instance alone, if any; `user` who the app runs as.
pub fn prepare(socket: &Path, own: Option<&Path>, user: Option<User>) -> Result<(), String> {
    let parent = socket
        .parent()
        .ok_or_else(|| format!("socket path {} has no directory", socket.display()))?;
    let shared = own.and_then(Path::parent).unwrap_or(parent);
    let needs_write = user.is_some_and(|u| u.uid != nix::unistd::geteuid().as_raw());
    shared_dir(shared, needs_write && own.is_none())?;
    if let Some(own) = own {
        let mut dirs: Vec<&Path> = parent.ancestors().take_while(|d| *d != shared).collect();
        dirs.reverse();
        debug_assert!(dirs.first() == Some(&own));
        for dir in dirs {
            own_dir(dir, user)?;
        }
    }
    clear(socket)
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn unsafe_dir(dir: &Path, why: String) -> String {
    format!(
        "unsafe socket directory {}: {why}; remove it or choose another `socket` path (docs/isolation.md#sockets)",
        dir.display()
    )
}

/// Writable by group or others without the sticky bit: anyone could replace its entries.
fn open_to_others(meta: &std::fs::Metadata) -> bool {
    meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0
}

fn shared_dir(dir: &Path, others_bind_here: bool) -> Result<(), String> {
    let mode = if others_bind_here { 0o1733 } else { 0o755 };
    if std::fs::symlink_metadata(dir).is_err() {
        // Nothing is created until what exists above is known to be safe: not through a
        // symlink someone planted, not in a directory someone else may write to.
        let existing = dir
            .ancestors()
            .find(|a| std::fs::symlink_metadata(a).is_ok())
            .unwrap_or(Path::new("/"));
        safe_existing(existing, dir)?;
        let missing: Vec<&Path> = dir.ancestors().take_while(|a| *a != existing).collect();
        for (i, d) in missing.iter().rev().enumerate() {
            let last = i + 1 == missing.len();
            match std::fs::DirBuilder::new()
                .mode(if last { mode } else { 0o755 })
                .create(d)
            {
                Ok(()) if last => set_mode(d, mode)?,
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", d.display())),
            }
            let meta = std::fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
            if !meta.is_dir() {
                return Err(unsafe_dir(
                    dir,
                    format!("{} is not a directory", d.display()),
                ));
            }
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir(dir, "it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir(dir, "it is not a directory".into()));
    }
    if meta.uid() != me() && meta.uid() != 0 {
        return Err(unsafe_dir(
            dir,
            format!("it is owned by uid {}, not by the server", meta.uid()),
        ));
    }
    if open_to_others(&meta) {
        return Err(unsafe_dir(
            dir,
            format!(
                "mode {:04o} lets others replace what is in it (no sticky bit)",
                meta.mode() & 0o7777
            ),
        ));
    }
    // Apps of other users must be able to bind in it: ours to open up, sticky.
    if others_bind_here && meta.mode() & 0o003 != 0o003 {
        set_mode(dir, 0o1733)?;
    }
    ancestors_safe(dir)
}

/// `existing` (an ancestor of the socket directory `dir` that exists) is a real directory of
/// root or the server, not open to others but with the sticky bit, and so is everything above.
fn safe_existing(existing: &Path, dir: &Path) -> Result<(), String> {
    let meta =
        std::fs::symlink_metadata(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
    let bad = if meta.file_type().is_symlink() {
        Some("is a symbolic link".to_string())
    } else if !meta.is_dir() {
        Some("is not a directory".to_string())
    } else if meta.uid() != me() && meta.uid() != 0 {
        Some(format!("is owned by uid {}", meta.uid()))
    } else if open_to_others(&meta) {
        Some(format!("has mode {:04o}", meta.mode() & 0o7777))
    } else {
        None
    };
    match bad {
        Some(why) => Err(unsafe_dir(
            dir,
            format!("{} above it {why}", existing.display()),
        )),
        None => ancestors_safe(existing),
    }
}

/// Every directory above `dir` (symlinks resolved) is owned by root or the server and not
/// open to others.
fn ancestors_safe(dir: &Path) -> Result<(), String> {
    let real = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for up in real.ancestors().skip(1) {
        let meta = std::fs::metadata(up).map_err(|e| format!("{}: {e}", up.display()))?;
        if (meta.uid() != 0 && meta.uid() != me()) || open_to_others(&meta) {
            return Err(unsafe_dir(
                dir,
                format!(
                    "{} above it is owned by uid {} with mode {:04o}",
                    up.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

fn own_dir(dir: &Path, user: Option<User>) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(unsafe_dir(dir, "it is not a directory".into()));
    }
    let owner = user.map_or(me(), |u| u.uid);
    if meta.uid() != me() && meta.uid() != owner {
        return Err(unsafe_dir(
            dir,
            format!("it is owned by uid {}, not by the instance", meta.uid()),
        ));
    }
    if let Some(u) = user {
        std::os::unix::fs::lchown(dir, Some(u.uid), Some(u.gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    set_mode(dir, 0o700)
}

fn set_mode(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))
}

/// Removes whatever is at the socket's path: a stale socket, a symlink, a file or directory
/// a squatter put there (its contents, never what a symlink in it points to).
pub fn clear(socket: &Path) -> Result<(), String> {
    let removed = match std::fs::symlink_metadata(socket) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(socket),
        Ok(_) => std::fs::remove_file(socket),
        Err(_) => return Ok(()),
    };
    removed.map_err(|e| format!("cannot remove {}: {e}", socket.display()))
}

/// Gives `dir` and everything in it to `user` (not following symlinks), when `dir` itself is
/// not theirs yet: data kept from an earlier uid (or from a version that ran apps as root).
pub fn chown_tree(dir: &Path, user: User) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() == user.uid && meta.gid() == user.gid {
        return set_mode(dir, 0o700);
    }
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    set_mode(dir, 0o700)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn shared_directories_must_be_ours_and_closed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let shared = t.path().join("s");
        let sock = shared.join("a-x.sock");
        prepare(&sock, None, None).unwrap();
        assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o7777, 0o755);
        // Open to everyone without the sticky bit: refused.
        set_mode(&shared, 0o777).unwrap();
        let e = prepare(&sock, None, None).unwrap_err();
        assert!(e.contains("no sticky bit"), "{e}");
        set_mode(&shared, 0o1777).unwrap();
        prepare(&sock, None, None).unwrap();
        // A symlink in place of the directory: refused.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let linked = t.path().join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        let e = prepare(&linked.join("a-x.sock"), None, None).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        // Another user's directory: refused.
        if root() {
            let theirs = t.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(4_000_001), None).unwrap();
            let e = prepare(&theirs.join("a-x.sock"), None, None).unwrap_err();
            assert!(e.contains("owned by uid 4000001"), "{e}");
        }
        // Whatever sits at the socket's path goes.
        std::os::unix::fs::symlink("/etc/passwd", &sock).unwrap();
        prepare(&sock, None, None).unwrap();
        assert!(std::fs::symlink_metadata(&sock).is_err());
        assert!(std::fs::metadata("/etc/passwd").is_ok());
        std::fs::create_dir_all(sock.join("sub")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, sock.join("sub/link")).unwrap();
        std::fs::write(elsewhere.join("kept"), "x").unwrap();
        prepare(&sock, None, None).unwrap();
        assert!(std::fs::symlink_metadata(&sock).is_err());
        assert!(elsewhere.join("kept").exists(), "not through the symlink");
        // Nothing is created through a symlinked ancestor before the refusal.
        let deep = linked.join("x/y");
        let e = prepare(&deep.join("a.sock"), None, None).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!elsewhere.join("x").exists(), "created through the symlink");
    }

    #[test]
    fn an_instance_directory_is_the_instances() {
        if !root() {
            return; // chown needs root
        }
        let t = tempfile::tempdir().unwrap();
        let user = User {
            uid: 4_000_002,
            gid: 4_000_002,
        };
        let own = t.path().join("api").join("prod");
        let sock = own.join("app.sock");
        prepare(&sock, Some(&own), Some(user)).unwrap();
        let meta = std::fs::metadata(&own).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (user.uid, 0o700));
        // A directory someone else made there first: refused.
        let squat = t.path().join("api").join("dev");
        std::fs::create_dir(&squat).unwrap();
        std::os::unix::fs::chown(&squat, Some(4_000_003), None).unwrap();
        let e = prepare(&squat.join("app.sock"), Some(&squat), Some(user)).unwrap_err();
        assert!(e.contains("not by the instance"), "{e}");
        // A shared directory for apps of other users opens up, sticky.
        let shared = t.path().join("shared");
        prepare(&shared.join("a.sock"), None, Some(user)).unwrap();
        assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o7777, 0o1733);
        // chown_tree gives a kept tree to a new owner.
        std::fs::write(own.join("f"), "x").unwrap();
        chown_tree(
            &own,
            User {
                uid: 4_000_004,
                gid: 4_000_004,
            },
        )
        .unwrap();
        assert_eq!(std::fs::metadata(own.join("f")).unwrap().uid(), 4_000_004);
    }
}
