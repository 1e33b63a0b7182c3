//! `isolation = "sandbox"`: gVisor. tenement writes an OCI bundle for the instance (root = the
//! host's `/`, read-only; the app as its own unprivileged user unless `user` says otherwise;
//! see [`mounts`] for what it sees), and the shim runs `runsc run` on it with
//! `--host-uds=create` (so the app's Unix socket is reachable from the host) and
//! `--ignore-cgroups` (tenement owns cgroups). `runsc run` runs attached: if it dies, the
//! sandbox dies with it, so the shim's process-group kill still takes everything down.
//! After exit, the container's state and bundle are deleted.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde_json::json;
use tenement_core::config::{Isolation, Sandbox};

use crate::process::spawn_shim;
use crate::{Error, Runtime, Spec, Started, Unavailable, User, Workload};

pub struct SandboxRuntime {
    shim: PathBuf,
    runsc: Option<PathBuf>,
    settings: Sandbox,
    /// `{data_dir}/.runsc`: bundles and runsc state (not a valid service name, so no clash).
    root: PathBuf,
}

impl SandboxRuntime {
    pub fn new(shim: PathBuf, settings: &Sandbox, data_dir: &Path) -> Self {
        Self {
            shim,
            runsc: find_executable(&settings.runsc),
            settings: settings.clone(),
            root: data_dir.join(".runsc"),
        }
    }

    fn bundle(&self, spec: &Spec, id: &str) -> std::io::Result<PathBuf> {
        let dir = self.root.join("bundles").join(id);
        std::fs::create_dir_all(&dir)?;
        // The bundle holds the instance's environment (its secrets): for the server alone.
        crate::storage::set_mode(&self.root, 0o700)?;
        let user = spec.user.unwrap_or(User::ROOT);
        let mounts = mounts(spec);
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": user.uid, "gid": user.gid },
                "args": spec.argv,
                "env": env,
                "cwd": spec.workdir,
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536 }],
            },
            "root": { "path": "/", "readonly": true },
            "hostname": format!("{}-{}", spec.key.id, spec.key.service),
            "mounts": mounts,
            "linux": { "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "network" }
            ] },
        });
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )?;
        Ok(dir)
    }
}

impl Runtime for SandboxRuntime {
    fn isolation(&self) -> Isolation {
        Isolation::Sandbox
    }

    /// Forgets containers of an earlier server (they died with it: `runsc run` is attached),
    /// unless some were adopted (a stale container is deleted before its name is used again).
    fn clean_stale(&self, adopted: &[tenement_core::InstanceKey]) {
        if adopted.is_empty() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn own_user(&self) -> bool {
        true
    }

    fn probe(&self) -> Result<(), Unavailable> {
        let unavailable = |reason: String| Unavailable {
            isolation: "sandbox",
            reason,
        };
        if self.runsc.is_none() {
            return Err(unavailable(format!(
                "gVisor's runsc ({}) was not found; install it (Debian: `apt-get install runsc`, or see https://gvisor.dev/docs/user_guide/install/) or set [settings.sandbox] runsc = \"/path/to/runsc\"",
                self.settings.runsc
            )));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(unavailable(
                "runsc needs root; run ten serve as root".into(),
            ));
        }
        Ok(())
    }

    fn app_listens(&self) -> bool {
        false
    }

    fn start(&self, spec: &Spec) -> Result<Started, Error> {
        self.probe()?;
        spec.check_user(false)?;
        let runsc = self.runsc.clone().expect("probed");
        let id = self.container_id(spec);
        let fail = |source| Error::Spawn {
            key: spec.key.clone(),
            program: runsc.display().to_string(),
            source,
        };
        let bundle = self.bundle(spec, &id).map_err(fail)?;
        let runsc_args = |verb: &[&str]| self.runsc_args(verb);
        // A container of the same name left by a crash would make `run` fail.
        let _ = std::process::Command::new(&runsc)
            .args(&runsc_args(&["delete", "--force", &id])[1..])
            .stderr(std::process::Stdio::null())
            .status();
        let bundle_arg = bundle.display().to_string();
        let run = Spec {
            argv: runsc_args(&["run", "--bundle", &bundle_arg, &id]),
            env: spec
                .env
                .iter()
                .filter(|(k, _)| k == "PATH")
                .cloned()
                .collect(),
            ..spec.clone()
        };
        // runsc (this version) serves its control socket in the abstract namespace of its own
        // network namespace, without checking who connects: anyone in the host's could run
        // commands in the sandbox as root. With `network = "none"` it needs no network at all,
        // so it gets a namespace of its own. (`network = "host"` cannot: docs/isolation.md.)
        let shim_args: &[&str] = if self.settings.network == "none" {
            &["--netns"]
        } else {
            &[]
        };
        let started = spawn_shim(&self.shim, &run, shim_args)?;
        Ok(self.adopt(spec, started))
    }

    fn adopt(&self, spec: &Spec, found: Started) -> Started {
        let id = self.container_id(spec);
        Started {
            workload: Box::new(SandboxWorkload {
                inner: found.workload,
                delete: self.runsc_args(&["delete", "--force", &id]),
                bundle: self.root.join("bundles").join(&id),
            }),
            ..found
        }
    }
}

impl SandboxRuntime {
    /// runsc names its control socket after the container id in the abstract namespace,
    /// which is host-wide: tell apart servers with different data directories.
    fn container_id(&self, spec: &Spec) -> String {
        format!(
            "{}_{}_{:08x}",
            spec.key.service,
            spec.key.id,
            crate::fnv1a(self.root.as_os_str().as_encoded_bytes())
        )
    }

    /// A `runsc` command line (program first) with our global flags, then `verb`.
    fn runsc_args(&self, verb: &[&str]) -> Vec<String> {
        let runsc = self.runsc.as_deref().unwrap_or(Path::new("runsc"));
        let mut v = vec![
            runsc.display().to_string(),
            "--root".into(),
            self.root.join("state").display().to_string(),
            format!("--platform={}", self.settings.platform),
            format!("--network={}", self.settings.network),
            "--host-uds=create".into(),
            "--ignore-cgroups".into(),
        ];
        v.extend(verb.iter().map(|s| s.to_string()));
        v
    }
}

struct SandboxWorkload {
    inner: Box<dyn Workload>,
    /// The `runsc delete` command line for this container.
    delete: Vec<String>,
    bundle: PathBuf,
}

impl Workload for SandboxWorkload {
    fn pid(&self) -> u32 {
        self.inner.pid()
    }

    fn terminate(&self) {
        // SIGTERM to the group reaches `runsc run`, which stops the container.
        self.inner.terminate()
    }

    fn kill(&self) {
        // SIGKILL of `runsc run` takes the attached sandbox with it.
        self.inner.kill()
    }

    fn let_go(&mut self) {
        self.inner.let_go()
    }

    fn control(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.control()
    }

    fn wait(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<std::process::ExitStatus>> + Send + '_>> {
        Box::pin(async move {
            let status = self.inner.wait().await;
            let _ = tokio::process::Command::new(&self.delete[0])
                .args(&self.delete[1..])
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            let _ = tokio::fs::remove_dir_all(&self.bundle).await;
            status
        })
    }
}

/// The bundle's mounts, shallow before deep (a mount inside a tmpfs lands in it):
/// - `/tmp` a private tmpfs; data_dir an empty tmpfs (other tenants and the server's state
///   hidden), the instance's own directory and its socket directory bound back writable;
/// - the working directory and the program's directory read-only: visible even under `/tmp`
///   or data_dir;
/// - for an unprivileged app, each closed directory above those (`/root`, mode 0700) covered
///   by a tmpfs it may walk, so that it reaches them and nothing else there.
fn mounts(spec: &Spec) -> Vec<serde_json::Value> {
    let bind = |path: &Path, mode: &str| json!({ "destination": path, "type": "bind", "source": path, "options": ["rbind", mode] });
    let tmpfs = |path: &Path, mode: &str| json!({ "destination": path, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", mode] });
    let mut covers = vec![PathBuf::from("/tmp"), spec.data_root.clone()];
    let mut ro: Vec<PathBuf> = vec![spec.workdir.clone()];
    ro.extend(spec.program_dir());
    let mut rw = vec![spec.instance_dir.clone()];
    rw.extend(spec.socket.parent().map(Path::to_path_buf));
    if let Some(user) = spec.user.filter(|u| !u.is_root()) {
        for dir in ro.iter().chain(&rw) {
            if let Some(blocked) = crate::user::blocked_ancestor(dir, user)
                && !covers.iter().any(|c| blocked.starts_with(c))
            {
                covers.push(blocked);
            }
        }
    }
    let mut all: Vec<(usize, usize, serde_json::Value)> = Vec::new();
    let depth = |p: &Path| p.components().count();
    for c in &covers {
        let mode = if c == Path::new("/tmp") {
            "mode=1777"
        } else {
            "mode=755"
        };
        all.push((depth(c), 0, tmpfs(c, mode)));
    }
    for d in ro.iter().filter(|d| !rw.contains(d)) {
        all.push((depth(d), 1, bind(d, "ro")));
    }
    for d in &rw {
        all.push((depth(d), 1, bind(d, "rw")));
    }
    all.sort_by_key(|(depth, kind, _)| (*depth, *kind));
    std::iter::once(json!({ "destination": "/proc", "type": "proc", "source": "proc" }))
        .chain(all.into_iter().map(|(_, _, m)| m))
        .collect()
}

/// `name` if it contains a `/` and exists, else the first match in `PATH`.
fn find_executable(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}
