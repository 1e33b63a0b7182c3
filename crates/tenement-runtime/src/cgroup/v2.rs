//! cgroup v2: one tree. Delegation follows the "no internal processes" rule: if `ten serve`'s
//! own cgroup is not the root, `ten serve` moves itself into `<own>/supervisor` before it
//! enables controllers for `<own>/tenement`.

use std::path::{Path, PathBuf};

use super::{CgroupError, Limits, Usage, mkdir, read_keyed, read_u64, write};

pub struct Tree {
    /// `<own>/<scope>`.
    parent: PathBuf,
}

pub struct Group {
    pub dir: PathBuf,
}

impl Tree {
    pub(super) fn detect(own: &str, mountinfo: &str, scope: &str) -> Option<Tree> {
        let mount = super::mount_point(mountinfo, "cgroup2", None)?;
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let base = mount.join(path.trim_start_matches('/'));
        let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        Tree::at(&base, path == "/", scope).ok()
    }

    /// Sets up `<base>/<scope>` below `base` (the cgroup `ten serve` runs in).
    pub fn at(base: &Path, is_root: bool, scope: &str) -> Result<Tree, CgroupError> {
        let available =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
        if !is_root {
            // A cgroup with processes cannot hand controllers to children: move ourselves out.
            let me = base.join("supervisor");
            mkdir(&me)?;
            write(&me.join("cgroup.procs"), &std::process::id().to_string())?;
        }
        write(&base.join("cgroup.subtree_control"), enable.trim())?;
        let parent = base.join(scope);
        mkdir(&parent)?;
        write(&parent.join("cgroup.subtree_control"), enable.trim())?;
        Ok(Tree { parent })
    }

    pub(super) fn children(&self) -> Vec<String> {
        list_dirs(&self.parent)
    }

    pub(super) fn parent(&self) -> &Path {
        &self.parent
    }

    pub(super) fn create(&self, name: &str, limits: &Limits) -> Result<Group, CgroupError> {
        let dir = self.parent.join(name);
        mkdir(&dir)?;
        if let Some(mb) = limits.memory_mb {
            write(&dir.join("memory.max"), &(mb * 1024 * 1024).to_string())?;
            // No swap: the limit is the limit. Absent when the kernel has no swap accounting.
            if dir.join("memory.swap.max").exists() {
                write(&dir.join("memory.swap.max"), "0")?;
            }
        }
        if let Some(w) = limits.cpu_weight {
            write(&dir.join("cpu.weight"), &w.to_string())?;
        }
        if let Some(n) = limits.pids_max {
            write(&dir.join("pids.max"), &n.to_string())?;
        }
        Ok(Group { dir })
    }
}

impl Group {
    pub(super) fn usage(&self) -> Usage {
        Usage {
            memory_bytes: read_u64(&self.dir.join("memory.current")),
            cpu_usec: read_keyed(&self.dir.join("cpu.stat"), "usage_usec"),
        }
    }

    pub(super) fn oom_kills(&self) -> u64 {
        read_keyed(&self.dir.join("memory.events"), "oom_kill").unwrap_or(0)
    }

    pub(super) fn kill_all(&self) {
        // cgroup.kill (Linux 5.14) kills every member atomically, including ones forking now.
        if write(&self.dir.join("cgroup.kill"), "1").is_err() {
            for pid in super::v1::read_pids(&self.dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

pub(super) fn list_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake v2 cgroup directory: the kernel's files are plain files here.
    #[test]
    fn delegation_and_limit_files() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::write(
            base.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let tree = Tree::at(base, false, "tenement").unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("supervisor/cgroup.procs")).unwrap(),
            std::process::id().to_string()
        );
        std::fs::create_dir_all(base.join("tenement/api-prod")).unwrap();
        std::fs::write(base.join("tenement/api-prod/memory.swap.max"), "max").unwrap();
        let g = tree
            .create(
                "api-prod",
                &Limits {
                    memory_mb: Some(256),
                    cpu_weight: Some(200),
                    pids_max: Some(512),
                },
            )
            .unwrap();
        let read = |f: &str| std::fs::read_to_string(g.dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 * 1024 * 1024).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.weight"), "200");
        assert_eq!(read("pids.max"), "512");
        std::fs::write(
            g.dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(g.dir.join("memory.current"), "1048576\n").unwrap();
        std::fs::write(g.dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        assert_eq!(g.oom_kills(), 1);
        assert_eq!(
            g.usage(),
            Usage {
                memory_bytes: Some(1048576),
                cpu_usec: Some(1500)
            }
        );
        assert_eq!(tree.children(), ["api-prod"]);
    }
}
