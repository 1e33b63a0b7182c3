//! `isolation = "namespace"` (the default): new PID, mount, IPC and UTS namespaces per
//! instance, a private `/proc`, and the data directory showing only the instance's own
//! directory. The app runs as PID 2 under our init (see [`crate::shim`]). No syscall filtering:
//! this is for trusted code that should not see its neighbours.

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
        let hostname = format!("{}-{}", spec.key.id, spec.key.service);
        let data_root = spec.data_root.to_string_lossy();
        let instance_dir = spec.instance_dir.to_string_lossy();
        let mut args = vec![
            "--namespace",
            "--hostname",
            &hostname,
            "--hide",
            &data_root,
            "--keep",
            &instance_dir,
        ];
        let socket_dir = spec.socket.parent().map(|d| d.to_string_lossy());
        if let Some(dir) = &socket_dir
            && spec.socket.starts_with(&spec.data_root)
        {
            args.extend(["--keep", dir]);
        }
        spawn_shim(&self.shim, spec, &args)
    }
}
