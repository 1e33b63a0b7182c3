//! Per-instance storage quotas, enforced by the kernel.
//!
//! - no `storage_quota_mb`: the data directory is a plain directory;
//! - quota, `storage_persist = false`: a tmpfs of that size is mounted on it (gone at stop);
//! - quota, `storage_persist = true`: a sparse ext4 image `{data_dir}/.images/{name}.ext4`,
//!   loop-mounted on it; kept across stops and server restarts, grown when the quota grows.
//!
//! Writing past the quota fails with ENOSPC inside the app. Mounts live in the server's mount
//! namespace; a server that was killed leaves them behind, so [`clean_stale`] unmounts
//! everything below `data_dir` when the next one starts.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage quota on {dir}: {what}: {source}")]
    Io {
        dir: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("storage quota on {dir}: {command} failed: {output}")]
    Command {
        dir: PathBuf,
        command: String,
        output: String,
    },
}

/// How an instance's data directory is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub mb: u64,
    /// The ext4 image for persistent storage.
    pub image: Option<PathBuf>,
}

impl Quota {
    /// The quota for an instance named `name` (`service.id`), if it has one.
    pub fn of(quota_mb: Option<u64>, persist: bool, data_root: &Path, name: &str) -> Option<Quota> {
        quota_mb.map(|mb| Quota {
            mb,
            image: persist.then(|| data_root.join(".images").join(format!("{name}.ext4"))),
        })
    }

    /// Mounts the quota'd filesystem on `dir` (creating image and directory as needed).
    pub fn mount(&self, dir: &Path) -> Result<(), StorageError> {
        let io = |what| {
            move |source| StorageError::Io {
                dir: dir.to_path_buf(),
                what,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("create directory"))?;
        unmount(dir);
        match &self.image {
            None => {
                let opts = format!("size={}m,mode=0755", self.mb);
                mount(
                    Some("tmpfs"),
                    dir,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(opts.as_str()),
                )
                .map_err(|e| io("mount tmpfs")(e.into()))
            }
            Some(image) => {
                self.prepare_image(dir, image)?;
                run(
                    dir,
                    Command::new("mount")
                        .args(["-o", "loop,nosuid,nodev"])
                        .arg(image)
                        .arg(dir),
                )
            }
        }
    }

    fn prepare_image(&self, dir: &Path, image: &Path) -> Result<(), StorageError> {
        let io = |what| {
            move |source| StorageError::Io {
                dir: dir.to_path_buf(),
                what,
                source,
            }
        };
        let want = self.mb * 1024 * 1024;
        if let Some(parent) = image.parent() {
            std::fs::create_dir_all(parent).map_err(io("create image directory"))?;
            // Tenants' data, byte for byte: for the server alone.
            set_mode(parent, 0o700).map_err(io("chmod image directory"))?;
        }
        let exists = image.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(image)
            .map_err(io("open image"))?;
        set_mode(image, 0o600).map_err(io("chmod image"))?;
        let have = file.metadata().map_err(io("stat image"))?.len();
        if !exists || have == 0 {
            file.set_len(want).map_err(io("size image"))?; // sparse
            return run(
                dir,
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-m", "0"])
                    .arg(image),
            );
        }
        if have < want {
            file.set_len(want).map_err(io("grow image"))?;
            run(dir, Command::new("e2fsck").args(["-f", "-p"]).arg(image))?;
            run(dir, Command::new("resize2fs").arg(image))?;
        }
        Ok(())
    }
}

/// Bytes used and available on the filesystem at `dir`.
pub fn usage(dir: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = s.fragment_size();
    let total = s.blocks() * frag;
    Some((total - s.blocks_free() * frag, total))
}

/// Unmounts whatever is mounted on `dir` (a no-op if nothing is).
pub fn unmount(dir: &Path) {
    // Lazily: a process still holding a file open must not make a stop fail.
    while umount2(dir, MntFlags::MNT_DETACH).is_ok() {}
}

/// Unmounts every mount below `data_dir` (left by a server that was killed), deepest first,
/// but those of the instance directories in `adopted` (their instances run on).
pub fn clean_stale(data_dir: &Path, adopted: &[PathBuf]) {
    for p in mounts_below(data_dir) {
        if adopted.iter().any(|dir| p.starts_with(dir)) {
            continue;
        }
        unmount(&p);
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

/// The mount points strictly below `root` in this mount namespace, deepest first.
pub(crate) fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape)
        .filter(|p| p.starts_with(root) && p != root)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> PathBuf {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                continue;
            }
        }
        out.push(c);
    }
    PathBuf::from(out)
}

fn run(dir: &Path, cmd: &mut Command) -> Result<(), StorageError> {
    let out = cmd.output().map_err(|source| StorageError::Io {
        dir: dir.to_path_buf(),
        what: "run a filesystem tool (is e2fsprogs installed?)",
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(StorageError::Command {
        dir: dir.to_path_buf(),
        command: format!("{cmd:?}"),
        output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_kinds_and_mountinfo_escapes() {
        let root = Path::new("/var/lib/tenement");
        assert_eq!(Quota::of(None, true, root, "api.prod"), None);
        assert_eq!(
            Quota::of(Some(10), false, root, "api.prod"),
            Some(Quota {
                mb: 10,
                image: None
            })
        );
        assert_eq!(
            Quota::of(Some(10), true, root, "api.prod")
                .unwrap()
                .image
                .unwrap(),
            Path::new("/var/lib/tenement/.images/api.prod.ext4")
        );
        assert_eq!(unescape(r"/a\040b/c"), Path::new("/a b/c"));
    }
}
