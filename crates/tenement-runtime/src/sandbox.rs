//! `isolation = "sandbox"`: gVisor. tenement writes an OCI bundle for the instance (root = the
//! host's `/`, read-only; the working directory read-only; data_dir hidden under an empty tmpfs
//! except the instance's own directory; the data and socket directories writable; a private
//! `/tmp`), and the shim runs `runsc run` on it with
//! `--host-uds=create` (so the app's Unix socket is reachable from the host) and
//! `--ignore-cgroups` (tenement owns cgroups). `runsc run` runs attached: if it dies, the
//! sandbox dies with it, so the shim's process-group kill still takes everything down.
//! After exit, the container's state and bundle are deleted.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;

use serde_json::json;
use tenement_core::config::{Isolation, Sandbox};

use crate::process::spawn_shim;
use crate::{Error, Runtime, Spec, Started, Unavailable, Workload};

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
        let bind = |path: &Path, mode: &str| json!({ "destination": path, "type": "bind", "source": path, "options": ["rbind", mode] });
        let tmpfs = |path: &Path, mode: &str| json!({ "destination": path, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", mode] });
        let mut mounts = vec![
            json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
            tmpfs(Path::new("/tmp"), "mode=1777"),
            bind(&spec.workdir, "ro"),
            // Other tenants' data and the server's state hidden, as with namespace: an empty
            // tmpfs over data_dir (after the working directory, which may hold it), with the
            // instance's own directory bound back.
            tmpfs(&spec.data_root, "mode=755"),
            bind(&spec.instance_dir, "rw"),
        ];
        if let Some(dir) = spec.socket.parent() {
            mounts.push(bind(dir, "rw"));
        }
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
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

    /// Forgets containers of an earlier server (they died with it: `runsc run` is attached).
    fn clean_stale(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
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

    fn start(&self, spec: &Spec) -> Result<Started, Error> {
        self.probe()?;
        let runsc = self.runsc.clone().expect("probed");
        // runsc names its control socket after the container id in the abstract namespace,
        // which is host-wide: tell apart servers with different data directories.
        let id = format!(
            "{}_{}_{:08x}",
            spec.key.service,
            spec.key.id,
            crate::fnv1a(self.root.as_os_str().as_encoded_bytes())
        );
        let fail = |source| Error::Spawn {
            key: spec.key.clone(),
            program: runsc.display().to_string(),
            source,
        };
        let bundle = self.bundle(spec, &id).map_err(fail)?;
        let state = self.root.join("state");
        let runsc_args = |verb: &[&str]| -> Vec<String> {
            let mut v = vec![
                runsc.display().to_string(),
                "--root".into(),
                state.display().to_string(),
                format!("--platform={}", self.settings.platform),
                format!("--network={}", self.settings.network),
                "--host-uds=create".into(),
                "--ignore-cgroups".into(),
            ];
            v.extend(verb.iter().map(|s| s.to_string()));
            v
        };
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
        let started = spawn_shim(&self.shim, &run, &[])?;
        Ok(Started {
            workload: Box::new(SandboxWorkload {
                inner: started.workload,
                delete: runsc_args(&["delete", "--force", &id]),
                bundle,
            }),
            ..started
        })
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

    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<ExitStatus>> + Send + '_>> {
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
