//! The shim: a tiny supervisor between `ten serve` and each app (`ten __shim PPID -- ARGV...`).
//!
//! `ten serve` starts the shim in a new process group; the shim forks and execs the app, which
//! stays in that group. The shim then waits for signals:
//! - `SIGCHLD`: reap; when the app itself exits, exit with the same status (or die by the same
//!   signal), so `ten serve` sees the app's status as the shim's.
//! - anything else (`SIGTERM`, ...): if `ten serve` is gone — the kernel sends `SIGTERM` via
//!   `PR_SET_PDEATHSIG` when its parent dies, see prctl(2) — SIGKILL the whole process group,
//!   including itself. Otherwise ignore it: `ten serve` signals the whole group, so the app got
//!   the same signal directly.
//!
//! This is what guarantees that `kill -9` of `ten serve` leaves no tenant process behind, even
//! when the app forked children of its own. It runs before any thread exists (the `ten` binary
//! dispatches here before starting tokio), so fork is safe and the child may allocate.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

use nix::sys::prctl;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvp, fork, getpgrp, getppid};

/// The hidden `ten` subcommand that runs the shim.
pub const SUBCOMMAND: &str = "__shim";

/// Runs the shim with the arguments after the subcommand. Never returns.
pub fn run(args: &[OsString]) -> ! {
    let err = match shim(args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("tenement shim: {err}");
    std::process::exit(127)
}

fn shim(args: &[OsString]) -> Result<Infallible, String> {
    let usage = || format!("usage: ten {SUBCOMMAND} PARENT_PID -- PROGRAM [ARGS...]");
    let [parent, dashes, argv @ ..] = args else {
        return Err(usage());
    };
    let parent: i32 = parent.to_str().and_then(|p| p.parse().ok()).ok_or_else(usage)?;
    if dashes != "--" || argv.is_empty() {
        return Err(usage());
    }
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} contains NUL")))
        .collect::<Result<_, _>>()?;

    prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    if getppid().as_raw() != parent {
        return Err("ten serve exited before the instance started".into());
    }
    let mut watched = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        watched.add(s);
    }
    let old_mask = watched
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| format!("sigprocmask: {e}"))?;

    // SAFETY: the shim is single-threaded (no runtime has started in this process), so the child
    // may do anything the parent could, allocation included.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let _ = old_mask.thread_set_mask();
            // If the shim itself dies, the app dies with it.
            let _ = prctl::set_pdeathsig(Signal::SIGKILL);
            let e = execvp(&argv[0], &argv).unwrap_err();
            eprintln!("tenement: cannot execute {:?}: {}", argv[0], e.desc());
            std::process::exit(127)
        }
        ForkResult::Parent { child } => supervise(child, parent, &watched),
    }
}

fn supervise(app: Pid, parent: i32, watched: &SigSet) -> Result<Infallible, String> {
    loop {
        let sig = watched.wait().map_err(|e| format!("sigwait: {e}"))?;
        if sig != Signal::SIGCHLD {
            if getppid().as_raw() != parent {
                // ten serve is gone: take the whole instance down, the shim included.
                let _ = signal::killpg(getpgrp(), Signal::SIGKILL);
            }
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == app => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == app => die_by(sig),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// Ends the shim by the signal that ended the app, so the parent sees the same status.
fn die_by(sig: Signal) -> ! {
    // SAFETY: restoring the default disposition is always sound.
    let _ = unsafe { signal::signal(sig, signal::SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(sig);
    let _ = only.thread_unblock();
    let _ = signal::raise(sig);
    std::process::exit(128 + sig as i32)
}
