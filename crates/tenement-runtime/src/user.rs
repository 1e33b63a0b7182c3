//! Who an app runs as, and what that user may touch.
//!
//! Permission checks here read mode bits only (owner, group, others; no ACLs, no supplementary
//! groups: an instance's user has none). They serve two purposes: the spawn-time check that
//! names the file an app cannot read ([`preflight`]), and the shim's choice of which
//! directories to cover so that the app can reach its working directory ([`blocked_ancestor`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A uid and gid to run an app as (the group is the user's own; no supplementary groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub const ROOT: User = User { uid: 0, gid: 0 };

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// `UID:GID`, as the shim's `--user` takes it.
    pub fn arg(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    pub fn parse_arg(s: &str) -> Option<User> {
        let (u, g) = s.split_once(':')?;
        Some(User {
            uid: u.parse().ok()?,
            gid: g.parse().ok()?,
        })
    }
}

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

/// Whether `user` has every permission in `want` (READ|WRITE|EXEC bits) on `meta`.
pub fn may(meta: &std::fs::Metadata, user: User, want: u32) -> bool {
    let mode = meta.mode();
    if user.is_root() {
        // root passes every check but executing a file nobody may execute.
        return want & EXEC == 0 || meta.is_dir() || mode & 0o111 != 0;
    }
    let bits = if meta.uid() == user.uid {
        mode >> 6
    } else if meta.gid() == user.gid {
        mode >> 3
    } else {
        mode
    } & 7;
    bits & want == want
}

/// The shallowest proper ancestor of `dir` that `user` cannot search (x), if any.
pub fn blocked_ancestor(dir: &Path, user: User) -> Option<PathBuf> {
    let mut path = PathBuf::from("/");
    for part in dir.parent()?.components().skip(1) {
        path.push(part);
        if let Ok(meta) = std::fs::metadata(&path)
            && !may(&meta, user, EXEC)
        {
            return Some(path);
        }
    }
    std::fs::metadata("/")
        .ok()
        .filter(|m| !may(m, user, EXEC))
        .map(|_| PathBuf::from("/"))
}

/// What `user` must be able to reach for the app to start, checked before anything starts:
/// the working directory (read and enter), the program when given as a path (execute), and
/// every argument that names an existing file (read: `python3 app.py`). With `ancestors`, the
/// directories above them too (under `process` isolation nothing covers them).
pub fn preflight(
    user: User,
    workdir: &Path,
    argv: &[String],
    ancestors: bool,
) -> Result<(), String> {
    if user.is_root() {
        return Ok(());
    }
    let check = |path: &Path, want: u32, what: &str| -> Result<(), String> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(()); // not there: the app's own error says so
        };
        if ancestors && let Some(blocked) = blocked_ancestor(path, user) {
            return Err(denied(user, &blocked, "enter", "o+x"));
        }
        if !may(&meta, user, want) {
            let fix = match want {
                w if w == READ | EXEC => "o+rx",
                EXEC => "o+x",
                _ => "o+r",
            };
            return Err(denied(user, path, what, fix));
        }
        Ok(())
    };
    check(workdir, READ | EXEC, "enter its working directory")?;
    if let Some(program) = argv.first().filter(|p| p.contains('/')) {
        check(&workdir.join(program), EXEC, "execute")?;
    }
    for arg in argv.iter().skip(1).filter(|a| !a.starts_with('-')) {
        let path = workdir.join(arg);
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            check(&path, READ, "read")?;
        }
    }
    Ok(())
}

fn denied(user: User, path: &Path, what: &str, chmod: &str) -> String {
    let (mode, owner) = std::fs::metadata(path)
        .map(|m| (m.mode() & 0o7777, m.uid()))
        .unwrap_or_default();
    format!(
        "the app runs as uid {} and cannot {what} {} (mode {mode:04o}, owner uid {owner}): `chmod {chmod} {}`, set `user` to a user who can, or `user = \"root\"` to run it as root (docs/isolation.md#users)",
        user.uid,
        path.display(),
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn mode_bits_for_owner_group_and_others() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let me = User {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        let other = User {
            uid: 4_000_123,
            gid: 4_000_123,
        };
        let table = [
            (0o600, me, READ | WRITE, true),
            (0o600, other, READ, false),
            (0o604, other, READ, true),
            (0o604, other, WRITE, false),
            (0o640, other, READ, false),
            (0o000, User::ROOT, READ, true),
            (0o644, User::ROOT, EXEC, false),
            (0o744, User::ROOT, EXEC, true),
        ];
        for (mode, user, want, expect) in table {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::metadata(&f).unwrap();
            assert_eq!(may(&meta, user, want), expect, "{mode:o} {user:?} {want}");
        }
    }

    #[test]
    fn a_closed_ancestor_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        let app = closed.join("proj");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("app.py"), "").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        let other = User {
            uid: 4_000_123,
            gid: 4_000_123,
        };
        if !nix::unistd::geteuid().is_root() {
            return; // the temp dir's owner decides otherwise; the root case is the one that matters
        }
        assert_eq!(blocked_ancestor(&app, other), Some(closed.clone()));
        let argv = ["python3".to_string(), "app.py".to_string()];
        let e = preflight(other, &app, &argv, true).unwrap_err();
        assert!(
            e.contains("uid 4000123") && e.contains(closed.to_str().unwrap()),
            "{e}"
        );
        assert!(preflight(other, &app, &argv, false).is_ok());
        std::fs::set_permissions(app.join("app.py"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let e = preflight(other, &app, &argv, false).unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("app.py") && e.contains("o+r"),
            "{e}"
        );
    }
}
