//! `isolation = "process"`: no isolation at all, for debugging and same-trust code. The app
//! runs as a plain child of the shim, in its own process group.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tenement_core::config::Isolation;

use crate::{Error, Runtime, Spec, Started, Unavailable, Workload, shim};

pub struct ProcessRuntime {
    shim: PathBuf,
}

impl ProcessRuntime {
    pub fn new(shim: PathBuf) -> Self {
        Self { shim }
    }
}

impl Runtime for ProcessRuntime {
    fn isolation(&self) -> Isolation {
        Isolation::Process
    }

    fn probe(&self) -> Result<(), Unavailable> {
        Ok(())
    }

    fn start(&self, spec: &Spec) -> Result<Started, Error> {
        let Some(user) = spec.user else {
            return spawn_shim(&self.shim, spec, &[]);
        };
        spec.check_user(true)?;
        spawn_shim(&self.shim, spec, &["--user", &user.arg()])
    }
}

/// Starts `ten __shim` for `spec` in a new process group. `shim_args` go before the `--`.
pub(crate) fn spawn_shim(
    shim: &PathBuf,
    spec: &Spec,
    shim_args: &[&str],
) -> Result<Started, Error> {
    let fail = |source| Error::Spawn {
        key: spec.key.clone(),
        program: spec.argv.first().cloned().unwrap_or_default(),
        source,
    };
    if !spec.workdir.is_dir() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "working directory {} does not exist",
                spec.workdir.display()
            ),
        )));
    }
    let mut cmd = tokio::process::Command::new(shim);
    cmd.arg(shim::SUBCOMMAND);
    for dir in &spec.cgroups {
        cmd.arg("--cgroup").arg(dir);
    }
    cmd.args(shim_args)
        .arg(std::process::id().to_string())
        .arg("--")
        .args(&spec.argv)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(fail)?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    Ok(Started {
        workload: Box::new(ShimWorkload {
            child,
            pgid: Pid::from_raw(pid as i32),
        }),
        stdout,
        stderr,
    })
}

struct ShimWorkload {
    child: tokio::process::Child,
    pgid: Pid,
}

impl Workload for ShimWorkload {
    fn pid(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    fn terminate(&self) {
        let _ = killpg(self.pgid, Signal::SIGTERM);
    }

    fn kill(&self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }

    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<ExitStatus>> + Send + '_>> {
        Box::pin(async move {
            let status = self.child.wait().await;
            // The app's own children may still be in the group; the group id cannot be reused
            // while they are, so this reaches only them.
            let _ = killpg(self.pgid, Signal::SIGKILL);
            status
        })
    }
}
