//! cgroups for instances, delegated: every instance cgroup is created *below the cgroup that
//! `ten serve` runs in* (`<own>/<scope>/<instance>`), never at the root of a hierarchy. The
//! scope names the server (`tenement-<hash of data_dir>`), so servers with different data
//! directories in the same cgroup never touch each other's instances.
//!
//! cgroup v2 is first-class ([`v2`]); hosts whose memory/cpu controllers are still on v1 use
//! [`v1`]. Both are rooted at injected paths, so the file formats are unit-tested against a
//! temp directory. The shim joins the instance cgroup before it forks the app (it writes `0`
//! to each v1 `tasks` file, or to v2's `cgroup.procs`), so every process of the instance is
//! inside from the start.

pub mod v1;
pub mod v2;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Limits of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: Option<u64>,
    /// 1–10000, cgroup v2 semantics (default 100).
    pub cpu_weight: Option<u32>,
    pub pids_max: Option<u32>,
}

/// Current usage of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    pub path: PathBuf,
    pub source: io::Error,
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn mkdir(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.events, cpu.stat, memory.oom_control).
pub(crate) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Where instance cgroups go on this host.
pub enum Cgroups {
    V2(v2::Tree),
    V1(v1::Tree),
}

/// One instance's cgroup (one directory on v2, one per controller on v1).
pub enum Cgroup {
    V2(v2::Group),
    V1(v1::Group),
}

impl Cgroups {
    /// Finds the hierarchies `ten serve` is in: v2 when its cgroup offers the memory
    /// controller, else v1 if memory is mounted there. `None` if neither.
    pub fn detect(scope: &str) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        if let Some(tree) = v2::Tree::detect(&own, &mounts, scope) {
            return Some(Cgroups::V2(tree));
        }
        v1::Tree::detect(&own, &mounts, scope).map(Cgroups::V1)
    }

    /// The scope name for a server with this data directory.
    pub fn scope_for(data_dir: &Path) -> String {
        format!(
            "tenement-{:08x}",
            crate::fnv1a(data_dir.as_os_str().as_encoded_bytes())
        )
    }

    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V2(_) => "v2",
            Cgroups::V1(_) => "v1",
        }
    }

    /// Creates (or reuses) `<own>/<scope>/<name>` with `limits` applied.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        match self {
            Cgroups::V2(t) => t.create(name, limits).map(Cgroup::V2),
            Cgroups::V1(t) => t.create(name, limits).map(Cgroup::V1),
        }
    }

    /// The existing instance cgroup `name` of an adopted instance, as it is (nothing written).
    pub fn open(&self, name: &str) -> Cgroup {
        match self {
            Cgroups::V2(t) => Cgroup::V2(v2::Group {
                dir: t.parent().join(name),
            }),
            Cgroups::V1(t) => Cgroup::V1(t.open(name)),
        }
    }

    /// The directories an instance cgroup called `name` has (or would have).
    pub fn dirs_of(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V2(t) => vec![t.parent().join(name)],
            Cgroups::V1(t) => t.parents().into_iter().map(|p| p.join(name)).collect(),
        }
    }

    /// Removes this server's scope directory (at shutdown; fails harmlessly if not empty).
    pub fn remove_scope(&self) {
        let parents = match self {
            Cgroups::V2(t) => vec![t.parent().to_path_buf()],
            Cgroups::V1(t) => t.parents(),
        };
        for p in parents {
            let _ = std::fs::remove_dir(p);
        }
    }

    /// Kills whatever is left in instance cgroups of an earlier server and removes them, but
    /// for those named in `adopted` (their instances run on).
    pub fn clean_stale(&self, adopted: &[String]) {
        let names = match self {
            Cgroups::V2(t) => t.children(),
            Cgroups::V1(t) => t.children(),
        };
        for name in names.into_iter().filter(|n| !adopted.contains(n)) {
            if let Ok(group) = self.create(&name, &Limits::default()) {
                group.kill_all();
                group.remove();
            }
        }
    }
}

impl Cgroup {
    /// Directories the shim joins.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V2(g) => vec![g.dir.clone()],
            Cgroup::V1(g) => g.dirs(),
        }
    }

    pub fn usage(&self) -> Usage {
        match self {
            Cgroup::V2(g) => g.usage(),
            Cgroup::V1(g) => g.usage(),
        }
    }

    /// Times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        match self {
            Cgroup::V2(g) => g.oom_kills(),
            Cgroup::V1(g) => g.oom_kills(),
        }
    }

    /// Pids still inside.
    pub fn pids(&self) -> Vec<i32> {
        match self {
            Cgroup::V2(g) => v1::read_pids(&g.dir),
            Cgroup::V1(g) => g.pids(),
        }
    }

    /// Whether process `pid` is in this cgroup (one read of `cgroup.procs`).
    pub fn contains(&self, pid: i32) -> bool {
        self.dirs()
            .first()
            .is_some_and(|d| v1::read_pids(d).contains(&pid))
    }

    /// SIGKILLs every process inside and waits (at most 2 s) until it is empty.
    pub fn kill_all(&self) {
        match self {
            Cgroup::V2(g) => g.kill_all(),
            Cgroup::V1(g) => g.kill_all(),
        }
        let until = Instant::now() + Duration::from_secs(2);
        while !self.pids().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the cgroup (its processes must be gone).
    pub fn remove(&self) {
        for dir in self.dirs() {
            for _ in 0..100 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The mount point of a cgroup hierarchy (`fstype` cgroup2, or cgroup with `controller` in its
/// super options) from /proc/self/mountinfo.
pub(crate) fn mount_point(
    mountinfo: &str,
    fstype: &str,
    controller: Option<&str>,
) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != fstype {
            return None;
        }
        let options = r.nth(1).unwrap_or("");
        if let Some(c) = controller
            && !options.split(',').any(|o| o == c)
        {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}
