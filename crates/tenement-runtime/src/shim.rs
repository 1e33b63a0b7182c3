//! The shim: a tiny supervisor between `ten serve` and each app.
//!
//! `ten __shim --control-fd FD --out-fd FD --err-fd FD --key KEY [--listen PATH]
//! [--adopt-timeout SECS] [--meta TEXT] [--cgroup DIR]... [--user UID:GID] [--namespace]
//! [--hostname H] [--hide DIR] [--keep DIR]... [--reveal DIR]... [--tmp-size MB] [--netns]
//! [--netns-fd FD] [--builtin]
//! -- ARGV...`
//!
//! First the shim joins the instance's cgroups (`--cgroup`), so the app and everything it
//! forks are inside from the start.
//!
//! `ten serve` starts the shim in a new process group, its stdout and stderr the write ends of
//! two pipes whose read ends it also passes (`--out-fd`, `--err-fd`): the shim holds them for
//! whichever server owns it next. The shim forks the app, which stays in that group, and then
//! serves its control connection ([`crate::handover`]) and signals:
//! - `SIGCHLD`: reap; when the app itself exits, tell the owner its status and kill what is
//!   left of the instance (its cgroup, its process group, the shim with it).
//! - a connection on `--listen` from the server's uid: the new owner ([`crate::handover`]).
//! - the owner's connection closing without a hand-over: `ten serve` crashed. The instance
//!   runs on for `--adopt-timeout` seconds; if no server adopts it by then, the shim kills it.
//! - anything else (`SIGTERM`, ...): ignored; `ten serve` signals the whole group, so the app
//!   got the same signal directly.
//!
//! With `--namespace`, the shim first enters new PID, mount, IPC and UTS namespaces
//! (unshare(2)); since a new PID namespace applies only to children, its child is PID 1 there:
//! our [`init`], which mounts a private `/proc`, starts the app as PID 2 in a process group of
//! its own, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to it, reaps every zombie, and exits with
//! the app's status — upon which the kernel kills whatever is left in the namespace.
//!
//! The app itself (after [`crate::walls`] under `--namespace`) becomes `--user` when given,
//! with no supplementary groups, `PR_SET_NO_NEW_PRIVS` set, in its working directory (the
//! shim's own), and is exec'd. Its errors there (a directory or program the user may not
//! reach) are printed as `tenement: ...` and it exits 127.
//!
//! This is what guarantees that no tenant process outlives `ten serve` by more than
//! `adopt_timeout` unless a new server adopted it, even when the app forked children of its
//! own. It runs before any thread exists (the `ten` binary
//! dispatches here before starting tokio), so fork is safe and the child may allocate.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvp, fork, sethostname, setpgid};

use crate::user::User;

mod owned;
use owned::Owned;

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

#[derive(Default)]
struct Options {
    namespace: bool,
    /// A network namespace of its own (for `runsc run`, whose control socket is abstract).
    netns: bool,
    /// An existing network namespace to join instead (`ten serve`'s empty one).
    netns_fd: Option<RawFd>,
    hostname: Option<OsString>,
    /// Directories covered by an empty tmpfs inside the namespace...
    hide: Vec<PathBuf>,
    /// ...except these, bind-mounted back.
    keep: Vec<PathBuf>,
    /// ...and these, bound back read-only where the app could not reach them.
    reveal: Vec<PathBuf>,
    /// Size of the private `/tmp` and `/dev/shm`.
    tmp_size_mb: u64,
    /// Who the app runs as (default: the shim's own user).
    user: Option<User>,
    /// The app's working directory (entered after the walls are up, as the app's user).
    workdir: Option<PathBuf>,
    /// `argv` is `ten __wasm ...`: run it in this process, already `ten`, instead of
    /// exec'ing the same binary again (a wake of a wasm instance is a process start).
    builtin: bool,
    /// cgroup directories to join first.
    cgroups: Vec<PathBuf>,
    /// The first owner's end of the control connection.
    control_fd: Option<RawFd>,
    /// Read ends of the app's stdout and stderr pipes, kept for the next owner.
    out_fd: Option<RawFd>,
    err_fd: Option<RawFd>,
    /// Where later owners connect.
    listen: Option<PathBuf>,
    adopt_timeout: u64,
    key: String,
    meta: String,
    argv: Vec<CString>,
}

fn parse(args: &[OsString]) -> Result<Options, String> {
    let usage = || {
        format!(
            "usage: ten {SUBCOMMAND} --control-fd FD --out-fd FD --err-fd FD --key KEY [OPTIONS] -- PROGRAM [ARGS...]"
        )
    };
    let mut o = Options::default();
    let mut it = args.iter();
    let fd = |v: Option<&OsString>| v.and_then(|v| v.to_str()?.parse().ok()).ok_or_else(usage);
    loop {
        let arg = it.next().ok_or_else(usage)?;
        match arg.to_str() {
            Some("--") => break,
            Some("--namespace") => o.namespace = true,
            Some("--netns") => o.netns = true,
            Some("--netns-fd") => o.netns_fd = Some(fd(it.next())?),
            Some("--builtin") => o.builtin = true,
            Some("--hostname") => o.hostname = Some(it.next().ok_or_else(usage)?.clone()),
            Some("--hide") => o.hide.push(it.next().ok_or_else(usage)?.into()),
            Some("--keep") => o.keep.push(it.next().ok_or_else(usage)?.into()),
            Some("--cgroup") => o.cgroups.push(it.next().ok_or_else(usage)?.into()),
            Some("--reveal") => o.reveal.push(it.next().ok_or_else(usage)?.into()),
            Some("--listen") => o.listen = Some(it.next().ok_or_else(usage)?.into()),
            Some("--control-fd") => o.control_fd = Some(fd(it.next())?),
            Some("--out-fd") => o.out_fd = Some(fd(it.next())?),
            Some("--err-fd") => o.err_fd = Some(fd(it.next())?),
            Some("--adopt-timeout") => o.adopt_timeout = fd(it.next())? as u64,
            Some("--tmp-size") => o.tmp_size_mb = fd(it.next())? as u64,
            Some("--key") => o.key = it.next().and_then(|v| v.to_str()).ok_or_else(usage)?.into(),
            Some("--meta") => o.meta = it.next().and_then(|v| v.to_str()).ok_or_else(usage)?.into(),
            Some("--user") => {
                o.user = Some(
                    it.next()
                        .and_then(|v| User::parse_arg(v.to_str()?))
                        .ok_or_else(usage)?,
                )
            }
            _ => return Err(usage()),
        }
    }
    if o.control_fd.is_none() || o.out_fd.is_none() || o.err_fd.is_none() {
        return Err(usage());
    }
    o.argv = it
        .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} contains NUL")))
        .collect::<Result<_, _>>()?;
    if o.argv.is_empty() {
        return Err(usage());
    }
    Ok(o)
}

/// Moves this (still single-threaded) process into the cgroup at `dir`. On v1 it writes to
/// `tasks`, which moves only the calling thread — all of us, since no thread exists yet — and so
/// skips the kernel's global threadgroup lock, whose RCU grace period made every
/// `cgroup.procs` write cost 7–22 ms here (measured; see docs/benchmarks.md). cgroup v2 has
/// no `tasks` file: `cgroup.procs` it is.
fn join_cgroup(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("tasks"))
    {
        Ok(mut tasks) => std::io::Write::write_all(&mut tasks, b"0"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(dir.join("cgroup.procs"), "0")
        }
        Err(e) => Err(e),
    }
}

fn shim(args: &[OsString]) -> Result<Infallible, String> {
    let mut o = parse(args)?;
    o.workdir = std::env::current_dir().ok();
    // SAFETY: `ten serve` passed these descriptors to us alone (cleared close-on-exec for
    // this exec only); nothing else in this process owns them.
    let own = |fd: Option<RawFd>| unsafe { OwnedFd::from_raw_fd(fd.expect("parsed")) };
    let owner = own(o.control_fd);
    let pipes = [own(o.out_fd), own(o.err_fd)];
    for fd in [&owner, &pipes[0], &pipes[1]] {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    // Join the instance's cgroups before anything forks, so every process of it is inside.
    for dir in &o.cgroups {
        join_cgroup(dir).map_err(|e| format!("joining cgroup {}: {e}", dir.display()))?;
    }
    // Bound before any namespace: the path is the host's.
    let listener = match &o.listen {
        Some(path) => {
            Some(listen(path).map_err(|e| format!("listening on {}: {e}", path.display()))?)
        }
        None => None,
    };
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
    let signals = SignalFd::with_flags(&watched, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;
    if let Some(fd) = o.netns_fd {
        // SAFETY: `ten serve` passed this descriptor to us alone, for this.
        let ns = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("joining the network namespace: {e}"))?;
    }
    if o.netns {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(network namespace): {e}"))?;
    }
    if o.namespace {
        enter_namespaces(&o)?;
    }
    let mut owned = Owned {
        owner: Some(owner),
        listener,
        signals,
        pipes,
        orphaned_at: None,
    };
    // SAFETY: the shim is single-threaded (no runtime has started in this process), so the child
    // may do anything the parent could, allocation included.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            // Only the shim serves its owner and holds the pipes' read ends: the connection
            // must close when the shim dies, whatever init keeps.
            drop(owned);
            match o.namespace {
                true => init(&o, &old_mask, &watched),
                false => exec_app(&o, &old_mask),
            }
        }
        ForkResult::Parent { child } => {
            owned.supervise(child, &o);
        }
    }
}

/// A listening `SOCK_SEQPACKET` socket at `path` (0600), for the shim's next owner.
fn listen(path: &std::path::Path) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, socket};
    let _ = std::fs::remove_file(path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )?;
    nix::sys::socket::listen(&fd, Backlog::new(8)?)?;
    Ok(fd)
}

/// New PID (for our children), mount, IPC and UTS namespaces; mounts made private so nothing
/// we mount leaks to the host; then the walls ([`crate::walls`]).
fn enter_namespaces(o: &Options) -> Result<(), String> {
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    unshare(flags).map_err(|e| format!("unshare(PID|mount|IPC|UTS namespaces): {e}"))?;
    mount::<str, str, str, str>(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
        .map_err(|e| format!("making mounts private: {e}"))?;
    // Other instances' mounts under a hidden directory (their storage quotas) would otherwise
    // stay referenced, shadowed, for this namespace's whole life, and a stopped instance's
    // loop device could not be freed. Only this namespace's copies are detached.
    for hidden in &o.hide {
        for point in crate::storage::mounts_below(hidden) {
            if !o.keep.iter().any(|k| point.starts_with(k)) {
                let _ = umount2(&point, MntFlags::MNT_DETACH);
            }
        }
    }
    crate::walls::build(&crate::walls::Plan {
        hide: &o.hide,
        keep: &o.keep,
        reveal: &o.reveal,
        tmp_size_mb: o.tmp_size_mb,
        user: o.user,
    })?;
    if let Some(h) = &o.hostname {
        sethostname(h).map_err(|e| format!("sethostname: {e}"))?;
    }
    Ok(())
}

/// Capabilities an app keeps under `namespace` isolation: Docker's default set. Without
/// CAP_SYS_ADMIN it cannot unmount what hides data_dir (and so reach the control socket), nor
/// remount the cgroup tree writable; without CAP_DAC_READ_SEARCH it cannot open files by handle
/// around its mount namespace; without CAP_SYS_PTRACE, CAP_SYS_MODULE... the rest. Unlike
/// Docker's set, no CAP_NET_RAW: the instance shares the host's network namespace, where raw
/// sockets would see every tenant's traffic. (Only `user = "root"` keeps any of these: an
/// app of its own uid has none.)
const KEPT_CAPS: [u32; 13] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL (its PID namespace holds only its own processes)
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// Drops every other capability from the bounding set: the app, exec'd as root next, gets
/// only [`KEPT_CAPS`].
fn drop_capabilities() -> Result<(), String> {
    for cap in (0..64u32).filter(|c| !KEPT_CAPS.contains(c)) {
        // SAFETY: prctl(2) with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(()); // past the kernel's last capability
            }
            return Err(format!("dropping capability {cap}: {e}"));
        }
    }
    Ok(())
}

/// PID 1 of the instance's namespace.
fn init(o: &Options, old_mask: &SigSet, watched: &SigSet) -> ! {
    // If the shim dies, init dies, and the kernel kills the whole namespace.
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount::<str, str, str, str>(Some("proc"), "/proc", Some("proc"), flags, None) {
        eprintln!("tenement init: mounting a private /proc: {e}");
        std::process::exit(127);
    }
    if let Err(e) = crate::walls::proc_walls() {
        eprintln!("tenement init: {e}");
        std::process::exit(127);
    }
    // SAFETY: still single-threaded.
    let app = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // A group of its own, so forwarded signals reach the app and its children.
            let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
            if let Err(e) = drop_capabilities() {
                eprintln!("tenement init: {e}");
                std::process::exit(127);
            }
            exec_app(o, old_mask)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("tenement init: fork: {e}");
            std::process::exit(127);
        }
    };
    loop {
        let Ok(sig) = watched.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = signal::killpg(app, sig);
            continue;
        }
        reap(app);
    }
}

/// Becomes the app: its user, no way to gain privileges, its working directory, its program.
fn exec_app(o: &Options, old_mask: &SigSet) -> ! {
    let _ = old_mask.thread_set_mask();
    // If our parent (shim or init) dies, the app dies with it.
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let fail = |e: String| -> ! {
        eprintln!("tenement: {e}");
        std::process::exit(127)
    };
    // `ten __wasm`, run in this process (already `ten`: no second exec): its component is
    // loaded now, as root, since the compiled artifact is readable by root alone. What an
    // exec would have given it is here already: the app's environment, signal mask, and no
    // descriptors but stdio (`Owned` was dropped).
    #[cfg(feature = "wasm")]
    let wasm_host =
        builtin_args(o).map(|args| tenement_wasm::host::load(&args).unwrap_or_else(|e| fail(e)));
    if let Some(user) = o.user {
        become_user(user).unwrap_or_else(|e| fail(e));
    }
    // setuid executables and file capabilities grant nothing from here on (prctl(2)).
    if let Err(e) = prctl::set_no_new_privs() {
        fail(format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"));
    }
    // Abstract sockets and signals outside its own processes: out of reach (crate::landlock).
    if o.namespace
        && let Err(e) = crate::landlock::scope_to_self()
    {
        fail(e);
    }
    if let Some(dir) = &o.workdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        fail(format!(
            "cannot enter the working directory {} as uid {}: {e}",
            dir.display(),
            nix::unistd::getuid()
        ));
    }
    #[cfg(feature = "wasm")]
    if let Some(host) = wasm_host {
        host.serve();
    }
    let e = execvp(&o.argv[0], &o.argv).unwrap_err();
    fail(format!(
        "cannot execute {:?} as uid {}: {}",
        o.argv[0],
        nix::unistd::getuid(),
        e.desc()
    ))
}

/// The arguments of `ten __wasm` when the app is that builtin (`--builtin`).
#[cfg(feature = "wasm")]
fn builtin_args(o: &Options) -> Option<Vec<OsString>> {
    let ours = o.argv.get(1)?.as_bytes() == tenement_wasm::SUBCOMMAND.as_bytes();
    (o.builtin && ours).then(|| {
        o.argv[2..]
            .iter()
            .map(|a| std::ffi::OsStr::from_bytes(a.as_bytes()).to_owned())
            .collect()
    })
}

/// Drops to `user`: no supplementary groups, then gid, then uid (after which every capability
/// is gone: capabilities(7), "Effect of user ID changes on capabilities").
fn become_user(user: User) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid({}): {e}", user.gid))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid({}): {e}", user.uid))
}

/// SIGKILLs every process of the cgroup at `dir` but this one (cgroup v2: `cgroup.kill`,
/// which takes this one too), until none is left or a few rounds have passed (a process
/// forking meanwhile lands in the same cgroup and is caught by the next round).
fn kill_cgroup(dir: &std::path::Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let me = std::process::id().to_string();
    for _ in 0..100 {
        let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let others: Vec<i32> = procs
            .lines()
            .filter(|p| *p != me)
            .filter_map(|p| p.parse().ok())
            .collect();
        if others.is_empty() {
            return;
        }
        for pid in others {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Reaps every exited child; when it is `main`, ends this process with `main`'s status.
fn reap(main: Pid) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => die_by(sig),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Ends this process by the signal that ended the app, so the parent sees the same status.
/// (A namespace's init cannot be killed by its own signal; it exits with 128 + signal.)
fn die_by(sig: Signal) -> ! {
    // SAFETY: restoring the default disposition is always sound.
    let _ = unsafe { signal::signal(sig, signal::SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(sig);
    let _ = only.thread_unblock();
    let _ = signal::raise(sig);
    std::process::exit(128 + sig as i32)
}
