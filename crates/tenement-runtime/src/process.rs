//! `isolation = "process"`: no isolation at all, for debugging and same-trust code. The app
//! runs as a plain child of the shim, in its own process group.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{Pid, pipe2};
use tenement_core::config::Isolation;
use tokio::io::unix::AsyncFd;

use crate::handover::{self, Msg};
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
    spawn_shim_keeping(shim, spec, shim_args, None)
}

/// [`spawn_shim`], the shim also inheriting `keep` (a descriptor its options name).
pub(crate) fn spawn_shim_keeping(
    shim: &PathBuf,
    spec: &Spec,
    shim_args: &[&str],
    keep: Option<std::os::fd::RawFd>,
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
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| fail(e.into()))?;
    // The shim's end blocks (SOCK_NONBLOCK is per open file: only ours was made so).
    let _ = nix::fcntl::fcntl(&theirs, FcntlArg::F_SETFL(OFlag::empty()));
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| fail(e.into()))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| fail(e.into()))?;
    let passed = [theirs.as_raw_fd(), out_r.as_raw_fd(), err_r.as_raw_fd()];
    let inherited = keep;
    let h = &spec.handover;
    // std's Command, not tokio's: tokio's keeps a pidfd per child, a fifth descriptor per
    // instance in `ten serve` (the shim is reaped once its connection closes: `wait`).
    let mut cmd = std::process::Command::new(shim);
    cmd.arg(shim::SUBCOMMAND)
        .arg("--control-fd")
        .arg(passed[0].to_string())
        .arg("--out-fd")
        .arg(passed[1].to_string())
        .arg("--err-fd")
        .arg(passed[2].to_string())
        .arg("--key")
        .arg(spec.key.to_string())
        .arg("--meta")
        .arg(&h.meta)
        .arg("--adopt-timeout")
        .arg(h.adopt_timeout.to_string());
    if let Some(path) = &h.listen {
        cmd.arg("--listen").arg(path);
    }
    for dir in &spec.cgroups {
        cmd.arg("--cgroup").arg(dir);
    }
    cmd.args(shim_args)
        .arg("--")
        .args(&spec.argv)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe; it clears
    // close-on-exec on the three descriptors in the child alone (another spawn running on
    // another thread meanwhile does not inherit them).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for fd in passed.into_iter().chain(inherited) {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(fail)?;
    drop(cmd); // the write ends: only the shim and the app hold them now
    let pid = child.id();
    let control = register(ours).map_err(fail)?;
    Ok(Started {
        workload: Box::new(ShimWorkload {
            child: Some(child),
            pgid: Pid::from_raw(pid as i32),
            control,
        }),
        stdout: out_r,
        stderr: err_r,
    })
}

/// `fd` on tokio's reactor.
pub(crate) fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` stays open, on the same file description, until dropped, which
    // happens only with the `AsyncFd`.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// An instance's shim, seen from the server that owns it ([`crate::handover`]).
pub(crate) struct ShimWorkload {
    /// Present when this server spawned the shim (and must reap it).
    pub(crate) child: Option<std::process::Child>,
    pub(crate) pgid: Pid,
    pub(crate) control: AsyncFd<OwnedFd>,
}

impl ShimWorkload {
    async fn next(&mut self) -> std::io::Result<Option<Msg>> {
        loop {
            let mut ready = self.control.readable().await?;
            match ready.try_io(|fd| handover::recv(fd.get_ref().as_fd())) {
                Ok(Ok(m)) => return Ok(m.map(|(msg, _)| msg)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
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
            let mut status = None;
            loop {
                match self.next().await {
                    Ok(Some(Msg::Exit(raw))) => status = Some(ExitStatus::from_raw(raw)),
                    Ok(Some(_)) => {}
                    // The shim is gone (it kills itself right after saying how the app ended).
                    Ok(None) | Err(_) => break,
                }
            }
            if let Some(mut child) = self.child.take() {
                // Its connection closed: it has exited, or is about to (killed by itself).
                let reaped = tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .map_err(std::io::Error::other)?;
                if status.is_none() {
                    status = Some(reaped?);
                }
            }
            // The app's own children may still be in the group; the group id cannot be reused
            // while they are, so this reaches only them.
            let _ = killpg(self.pgid, Signal::SIGKILL);
            // A shim that died without a word was killed.
            Ok(status.unwrap_or(ExitStatus::from_raw(libc::SIGKILL)))
        })
    }

    fn let_go(&mut self) {
        let _ = handover::send(self.control.get_ref().as_fd(), &Msg::Released, &[]);
        // Not ours to reap any more: a zombie until this server exits (`ten upgrade`), then
        // init's.
        self.child = None;
    }

    fn control(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.control.get_ref().as_fd())
    }
}
