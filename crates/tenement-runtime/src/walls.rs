//! The mount-namespace walls of `isolation = "namespace"`, built by the shim (as root, before
//! the app exists) in the instance's fresh mount namespace:
//!
//! - every mount of the host is read-only; the instance's own directory and its socket
//!   directory (`--keep`) are bound back writable, so its storage quota bounds every write;
//! - `data_dir` (`--hide`) is covered by an empty tmpfs: other tenants and the server's state
//!   are invisible;
//! - `/tmp` and `/dev/shm` are private tmpfs of `--tmp-size` MB;
//! - `/dev` is a minimal tmpfs: `null zero full random urandom tty`, a private `devpts`;
//! - for an app that runs as an unprivileged user, each directory it needs (`--keep`,
//!   `--reveal`: its working directory and program) whose path it could not walk (a project
//!   under `/root`, mode 0700) gets the closed ancestor covered by a tmpfs it may walk, with
//!   the directory bound back: read-only for `--reveal`. The rest of that ancestor is hidden.
//!
//! `/proc/sys` and friends are made read-only by init, which mounts the namespace's `/proc`
//! ([`proc_walls`]). Each step is a mount(2); a failure ends the spawn with its reason.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};

use crate::user::{User, blocked_ancestor};

/// What the walls are built from (the shim's options).
pub struct Plan<'a> {
    pub hide: &'a [PathBuf],
    pub keep: &'a [PathBuf],
    pub reveal: &'a [PathBuf],
    pub tmp_size_mb: u64,
    pub user: Option<User>,
}

/// Device nodes an app gets in its `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

enum Op {
    /// A tmpfs over `path`: (mode, size in KB, read-only once everything is mounted).
    Cover(PathBuf, u32, u64, bool),
    /// `source` (opened before anything was covered) bound at `path`; writable or not.
    Bind(PathBuf, File, bool),
}

impl Op {
    fn path(&self) -> &Path {
        match self {
            Op::Cover(p, ..) | Op::Bind(p, ..) => p,
        }
    }
}

/// Builds the walls; call in the new mount namespace, after mounts were made private.
pub fn build(plan: &Plan<'_>) -> Result<(), String> {
    // O_PATH: a handle to bind from, without opening the thing itself (`/dev/tty` cannot be
    // opened without a terminal).
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(p)
            .map_err(|e| format!("open {}: {e}", p.display()))
    };
    let mut ops = Vec::new();
    let tmp_kb = plan.tmp_size_mb.max(1) * 1024;
    let hide: Vec<PathBuf> = plan
        .hide
        .iter()
        .cloned()
        .chain(["/tmp", "/dev/shm", "/dev"].map(PathBuf::from))
        .collect();
    for dir in plan.hide {
        ops.push(Op::Cover(dir.clone(), 0o755, 64, true));
    }
    ops.push(Op::Cover("/tmp".into(), 0o1777, tmp_kb, false));
    ops.push(Op::Cover("/dev".into(), 0o755, 64, true));
    ops.push(Op::Cover("/dev/shm".into(), 0o1777, tmp_kb, false));
    for dev in DEVICES {
        let path = Path::new("/dev").join(dev);
        if path.exists() {
            ops.push(Op::Bind(path.clone(), open(&path)?, true));
        }
    }
    for dir in plan.keep {
        ops.push(Op::Bind(dir.clone(), open(dir)?, true));
    }
    let mut covered: Vec<PathBuf> = Vec::new();
    for dir in plan.reveal.iter().chain(plan.keep) {
        let user = plan.user.filter(|u| !u.is_root());
        if let Some(blocked) = user.and_then(|u| blocked_ancestor(dir, u))
            && !hide.iter().chain(&covered).any(|h| blocked.starts_with(h))
        {
            ops.push(Op::Cover(blocked.clone(), 0o755, 64, true));
            covered.push(blocked);
        }
    }
    for dir in plan.reveal {
        if hide.iter().chain(&covered).any(|h| dir.starts_with(h))
            && !plan.keep.iter().any(|k| k == dir)
        {
            ops.push(Op::Bind(dir.clone(), open(dir)?, false));
        }
    }
    read_only_host()?;
    // Shallow before deep, covers before binds at one depth: a bind inside a cover lands in it.
    ops.sort_by_key(|op| (op.path().components().count(), matches!(op, Op::Bind(..))));
    for op in &ops {
        perform(op)?;
    }
    dev_extras()?;
    for op in &ops {
        if let Op::Cover(path, _, _, true) = op {
            remount(path, MsFlags::MS_RDONLY | nosuid_nodev_noexec(path))?;
        }
    }
    Ok(())
}

fn nosuid_nodev_noexec(path: &Path) -> MsFlags {
    // /dev must keep device nodes usable.
    if path == Path::new("/dev") {
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC
    } else {
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV
    }
}

fn perform(op: &Op) -> Result<(), String> {
    match op {
        Op::Cover(path, mode, kb, _) => {
            mkdirs(path)?;
            let opts = format!("mode={mode:o},size={kb}k");
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                nosuid_nodev_noexec(path),
                Some(opts.as_str()),
            )
            .map_err(|e| format!("tmpfs on {}: {e}", path.display()))
        }
        Op::Bind(path, source, writable) => {
            let is_dir = source.metadata().map(|m| m.is_dir()).unwrap_or(true);
            if is_dir {
                mkdirs(path)?;
            } else if !path.exists() {
                if let Some(dir) = path.parent() {
                    mkdirs(dir)?;
                }
                File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
            }
            let from = format!("/proc/self/fd/{}", source.as_raw_fd());
            mount::<str, PathBuf, str, str>(
                Some(&from),
                path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(|e| format!("bind {}: {e}", path.display()))?;
            if is_dir {
                let ro = if *writable {
                    MsFlags::empty()
                } else {
                    MsFlags::MS_RDONLY
                };
                remount_bind(path, ro | MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
            }
            Ok(())
        }
    }
}

fn mkdirs(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("mkdir {}: {e}", path.display()))
}

fn remount(path: &Path, flags: MsFlags) -> Result<(), String> {
    mount::<str, Path, str, str>(None, path, None, MsFlags::MS_REMOUNT | flags, None)
        .map_err(|e| format!("remount {}: {e}", path.display()))
}

fn remount_bind(path: &Path, flags: MsFlags) -> Result<(), String> {
    remount(path, MsFlags::MS_BIND | flags)
}

/// Every mount of this (new, private) namespace read-only, keeping its other flags.
fn read_only_host() -> Result<(), String> {
    let root = PathBuf::from("/");
    let mut points = crate::storage::mounts_below(&root);
    points.push(root);
    for point in points {
        let Ok(st) = statvfs(&point) else { continue }; // shadowed, or gone
        let have = st.flags();
        let mut flags = MsFlags::MS_RDONLY;
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if have.contains(fs) {
                flags |= ms;
            }
        }
        if let Err(e) = remount_bind(&point, flags) {
            // A mount point hidden below another one cannot be reached by its path; whatever
            // covers it is in the list too.
            if point == Path::new("/") {
                return Err(format!("making / read-only: {e}"));
            }
        }
    }
    Ok(())
}

/// `/dev`'s links and a private `devpts`.
fn dev_extras() -> Result<(), String> {
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, link).map_err(|e| format!("symlink {link}: {e}"))?;
    }
    mkdirs(Path::new("/dev/pts"))?;
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| format!("devpts: {e}"))
}

/// Paths of `/proc` an app may read but not write (Docker's list), and ones it may not read.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
const PROC_MASKED: [&str; 5] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
];

/// Run by init after it mounted the namespace's own `/proc`.
pub fn proc_walls() -> Result<(), String> {
    for name in PROC_READ_ONLY {
        let path = Path::new("/proc").join(name);
        if !path.exists() {
            continue;
        }
        mount::<Path, Path, str, str>(Some(&path), &path, None, MsFlags::MS_BIND, None)
            .map_err(|e| format!("bind {}: {e}", path.display()))?;
        remount_bind(
            &path,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    for name in PROC_MASKED {
        let path = Path::new("/proc").join(name);
        if path.exists() {
            mount::<str, Path, str, str>(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None)
                .map_err(|e| format!("mask {}: {e}", path.display()))?;
        }
    }
    Ok(())
}
