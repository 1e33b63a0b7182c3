//! `isolation = "namespace"` (the default): new PID, mount, IPC and UTS namespaces per
//! instance, a private `/proc`, and the data directory showing only the instance's own
//! directory, the host's filesystem read-only ([`crate::walls`]), and the app as an
//! unprivileged user of its own unless `user` says otherwise. The app runs as PID 2 under our
//! init (see [`crate::shim`]). No syscall filtering: the kernel's whole syscall surface is
//! reachable (use `sandbox` for code you do not trust at all).

use tenement_core::config::Isolation;

use crate::process::spawn_shim;
use crate::{Error, Runtime, Spec, Started, Unavailable};

pub struct NamespaceRuntime {
    shim: std::path::PathBuf,
}

impl NamespaceRuntime {
    pub fn new(shim: std::path::PathBuf) -> Self {
        Self { shim }
    }
}

impl Runtime for NamespaceRuntime {
    fn isolation(&self) -> Isolation {
        Isolation::Namespace
    }

    fn own_user(&self) -> bool {
        true
    }

    fn probe(&self) -> Result<(), Unavailable> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Unavailable {
                isolation: "namespace",
                reason: "creating PID and mount namespaces needs root (CAP_SYS_ADMIN); run ten serve as root or use isolation = \"process\"".into(),
            });
        }
        Ok(())
    }

    fn start(&self, spec: &Spec) -> Result<Started, Error> {
        spec.check_user(false)?;
        let args = shim_args(spec);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_shim(&self.shim, spec, &args)
    }
}

/// The shim's options that build `spec`'s namespace and walls (shared with `wasm`).
pub(crate) fn shim_args(spec: &Spec) -> Vec<String> {
    let hostname = format!("{}-{}", spec.key.id, spec.key.service);
    let tmp_size = spec.tmp_size_mb.to_string();
    let user = spec.user.map(|u| u.arg());
    let mut args: Vec<String> = vec![
        "--namespace".into(),
        "--hostname".into(),
        hostname,
        "--hide".into(),
        path(&spec.data_root),
        "--keep".into(),
        path(&spec.instance_dir),
        "--reveal".into(),
        path(&spec.workdir),
        "--tmp-size".into(),
        tmp_size,
    ];
    if let Some(dir) = spec.socket.parent() {
        args.extend(["--keep".into(), path(dir)]);
    }
    if let Some(dir) = spec.program_dir() {
        args.extend(["--reveal".into(), path(&dir)]);
    }
    if let Some(user) = user {
        args.extend(["--user".into(), user]);
    }
    args
}

pub(crate) fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}
