//! cgroup v1 (hosts whose memory and cpu controllers are still on v1): one directory per
//! controller, `<mount>/<own path>/<scope>/<instance>` in each.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CgroupError, Limits, Usage, mkdir, read_keyed, read_u64, write};

const CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

pub struct Tree {
    /// `<mount>/<own path>/<scope>` per controller that is mounted.
    parents: Vec<(&'static str, PathBuf)>,
}

pub struct Group {
    dirs: Vec<(&'static str, PathBuf)>,
}

impl Tree {
    pub(super) fn detect(own: &str, mountinfo: &str, scope: &str) -> Option<Tree> {
        let mut parents = Vec::new();
        for controller in CONTROLLERS {
            let Some(mount) = super::mount_point(mountinfo, "cgroup", Some(controller)) else {
                continue;
            };
            // "4:memory:/path" (or a co-mounted "2:cpu,cpuacct:/path")
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names.split(',').any(|n| n == controller).then_some(path)
            })?;
            parents.push((
                controller,
                mount.join(path.trim_start_matches('/')).join(scope),
            ));
        }
        parents
            .iter()
            .any(|(c, _)| *c == "memory")
            .then_some(Tree { parents })
    }

    pub fn at(parents: Vec<(&'static str, PathBuf)>) -> Tree {
        Tree { parents }
    }

    pub(super) fn parents(&self) -> Vec<PathBuf> {
        self.parents.iter().map(|(_, p)| p.clone()).collect()
    }

    pub(super) fn children(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .parents
            .iter()
            .flat_map(|(_, p)| super::v2::list_dirs(p))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    pub(super) fn open(&self, name: &str) -> Group {
        Group {
            dirs: self
                .parents
                .iter()
                .map(|(c, p)| (*c, p.join(name)))
                .collect(),
        }
    }

    pub(super) fn create(&self, name: &str, limits: &Limits) -> Result<Group, CgroupError> {
        let mut dirs = Vec::new();
        for (controller, parent) in &self.parents {
            let dir = parent.join(name);
            mkdir(&dir)?;
            match *controller {
                "memory" => {
                    if let Some(mb) = limits.memory_mb {
                        let bytes = (mb * 1024 * 1024).to_string();
                        write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                        // memory+swap = memory: no swap. Absent without swap accounting.
                        if dir.join("memory.memsw.limit_in_bytes").exists() {
                            write(&dir.join("memory.memsw.limit_in_bytes"), &bytes)?;
                        }
                    }
                }
                "cpu" => {
                    if let Some(w) = limits.cpu_weight {
                        write(&dir.join("cpu.shares"), &weight_to_shares(w).to_string())?;
                    }
                }
                "pids" => {
                    if let Some(n) = limits.pids_max {
                        write(&dir.join("pids.max"), &n.to_string())?;
                    }
                }
                _ => {}
            }
            dirs.push((*controller, dir));
        }
        Ok(Group { dirs })
    }
}

/// cgroup v2's `cpu.weight` (1–10000, default 100) as v1 `cpu.shares` (default 1024).
pub fn weight_to_shares(weight: u32) -> u64 {
    (weight as u64 * 1024 / 100).max(2)
}

impl Group {
    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    pub(super) fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    pub(super) fn usage(&self) -> Usage {
        Usage {
            memory_bytes: self
                .dir("memory")
                .and_then(|d| read_u64(&d.join("memory.usage_in_bytes"))),
            cpu_usec: self
                .dir("cpuacct")
                .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                .map(|ns| ns / 1000),
        }
    }

    pub(super) fn oom_kills(&self) -> u64 {
        self.dir("memory")
            .and_then(|d| read_keyed(&d.join("memory.oom_control"), "oom_kill"))
            .unwrap_or(0)
    }

    pub(super) fn pids(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self.dirs.iter().flat_map(|(_, d)| read_pids(d)).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Freezes the group (so nothing forks away), SIGKILLs every member, thaws.
    pub(super) fn kill_all(&self) {
        let freezer = self.dir("freezer");
        if let Some(f) = freezer {
            let _ = write(&f.join("freezer.state"), "FROZEN");
            let until = Instant::now() + Duration::from_millis(500);
            while std::fs::read_to_string(f.join("freezer.state"))
                .is_ok_and(|s| s.trim() == "FREEZING")
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(f) = freezer {
            let _ = write(&f.join("freezer.state"), "THAWED");
        }
    }
}

pub(super) fn read_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_own_paths_per_controller() {
        let own = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let mounts = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let t = Tree::detect(own, mounts, "tenement").unwrap();
        let m: Vec<(&str, &str)> = t
            .parents
            .iter()
            .map(|(c, p)| (*c, p.to_str().unwrap()))
            .collect();
        assert_eq!(
            m,
            [
                ("memory", "/sys/fs/cgroup/memory/process_api/abc/tenement"),
                ("cpu", "/sys/fs/cgroup/cpu/tenement"),
                ("cpuacct", "/sys/fs/cgroup/cpuacct/tenement"),
                ("pids", "/sys/fs/cgroup/pids/tenement"),
                ("freezer", "/sys/fs/cgroup/freezer/tenement"),
            ]
        );
    }

    #[test]
    fn limit_files() {
        let tmp = tempfile::tempdir().unwrap();
        let t = Tree::at(
            ["memory", "cpu", "pids"]
                .into_iter()
                .map(|c| (c, tmp.path().join(c).join("tenement")))
                .collect(),
        );
        std::fs::create_dir_all(tmp.path().join("memory/tenement/a-b")).unwrap();
        std::fs::write(
            tmp.path()
                .join("memory/tenement/a-b/memory.memsw.limit_in_bytes"),
            "",
        )
        .unwrap();
        let g = t
            .create(
                "a-b",
                &Limits {
                    memory_mb: Some(64),
                    cpu_weight: Some(50),
                    pids_max: Some(100),
                },
            )
            .unwrap();
        let read = |c: &str, f: &str| std::fs::read_to_string(g.dir(c).unwrap().join(f)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("pids", "pids.max"), "100");
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10000), 102400);
    }
}
