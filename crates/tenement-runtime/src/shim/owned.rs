//! The shim after the fork: its owner's connection, the listener for the next owner,
//! signals, and the adopt timeout ([`crate::handover`]).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{self, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::{Pid, getpgrp};

use super::{Options, kill_cgroup};
use crate::handover::{self, Msg};

/// What the shim serves after the fork.
pub(super) struct Owned {
    /// The server the shim answers to; `None` between a crash and an adoption.
    pub(super) owner: Option<OwnedFd>,
    pub(super) listener: Option<OwnedFd>,
    pub(super) signals: SignalFd,
    /// Read ends of the app's stdout and stderr.
    pub(super) pipes: [OwnedFd; 2],
    pub(super) orphaned_at: Option<Instant>,
}

impl Owned {
    pub(super) fn supervise(&mut self, app: Pid, o: &Options) -> ! {
        let timeout = Duration::from_secs(o.adopt_timeout);
        loop {
            let left = self
                .orphaned_at
                .map(|at| timeout.saturating_sub(at.elapsed()));
            if left.is_some_and(|l| l.is_zero()) {
                // Nobody adopted the instance in time.
                self.kill_all(&o.cgroups);
            }
            let poll_timeout = match left {
                Some(l) => PollTimeout::try_from(l.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            let (sig, conn, own) = {
                let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
                if let Some(l) = &self.listener {
                    fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                }
                if let Some(c) = &self.owner {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                }
                if poll(&mut fds, poll_timeout).is_err() {
                    continue;
                }
                let ready = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                let l = self.listener.is_some() as usize;
                (
                    ready(0),
                    self.listener.is_some() && ready(1),
                    self.owner.is_some() && ready(1 + l),
                )
            };
            if sig {
                self.on_signal(app, &o.cgroups);
            }
            if own {
                self.on_owner();
            }
            if conn {
                self.on_connection(o);
            }
        }
    }

    fn on_signal(&mut self, app: Pid, cgroups: &[PathBuf]) {
        let Ok(Some(info)) = self.signals.read_signal() else {
            return;
        };
        if info.ssi_signo != Signal::SIGCHLD as u32 {
            return; // the app got it too (ten serve signals the whole group)
        }
        if let Some(status) = reap_status(app) {
            if let Some(owner) = &self.owner {
                let _ = handover::send(owner.as_fd(), &Msg::Exit(status), &[]);
            }
            self.kill_all(cgroups);
        }
    }

    /// The owner wrote or went away.
    fn on_owner(&mut self) {
        let Some(owner) = &self.owner else { return };
        match handover::recv(owner.as_fd()) {
            // `released` unasked: the owner is handing over (`ten upgrade`); the next one
            // needs to wait for nobody.
            Ok(Some((Msg::Released, _))) | Ok(None) | Err(_) => {
                self.owner = None;
                self.orphaned_at = Some(Instant::now());
            }
            Ok(Some(_)) => {}
        }
    }

    /// A server connected: if it is ours (same uid) and the instance has no owner (its server
    /// crashed, or let go of it), it becomes the owner. A live owner keeps it: no other
    /// process, even of the server's uid, takes an instance from a running server.
    fn on_connection(&mut self, o: &Options) {
        let Some(listener) = &self.listener else {
            return;
        };
        let Ok(raw) = nix::sys::socket::accept(listener.as_raw_fd()) else {
            return;
        };
        // SAFETY: accept(2) just returned this descriptor to us.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = nix::fcntl::fcntl(
            &conn,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        if handover::peer_uid(conn.as_fd()).ok() != Some(nix::unistd::geteuid().as_raw())
            || self.owner.is_some()
        {
            return;
        }
        let hello = Msg::Hello(handover::Hello {
            key: o.key.clone(),
            pid: std::process::id(),
            cgroups: o.cgroups.clone(),
            meta: o.meta.clone(),
        });
        let fds = [self.pipes[0].as_raw_fd(), self.pipes[1].as_raw_fd()];
        if handover::send(conn.as_fd(), &hello, &fds).is_ok() {
            self.owner = Some(conn);
            self.orphaned_at = None;
        } else if self.orphaned_at.is_none() {
            self.orphaned_at = Some(Instant::now());
        }
    }

    /// Kills every process of the instance, the shim last. Never returns.
    fn kill_all(&self, cgroups: &[PathBuf]) -> ! {
        // With the processes that left the group (setsid) but not the instance's cgroup.
        if let Some(dir) = cgroups.first() {
            kill_cgroup(dir);
        }
        let _ = signal::killpg(getpgrp(), Signal::SIGKILL);
        std::process::exit(137)
    }
}

/// Reaps every exited child; the wait status of `main` if it was among them.
fn reap_status(main: Pid) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return None;
        }
        if pid == main.as_raw() {
            return Some(status);
        }
    }
}
