//! `ten upgrade`: the running server starts its successor (the `ten` executable at the path it
//! was started from, usually a newer binary installed there, with the same arguments), hands it
//! its listening sockets and the data_dir lock, and lets it adopt every instance; it then
//! finishes the requests it has in flight and exits. Tenants do not restart; connections
//! arriving meanwhile wait in the listening sockets' queues.
//!
//! Between the two servers: the descriptors, by number, in `TEN_UPGRADE_FDS`
//! (`lock=N;control=N;front=N,N;secure=N,N;talk=N;handoff=N`; `secure`: the HTTPS listeners), and on `talk` (a socketpair) one line at
//! a time: the successor says `ready` once its configuration and stores are open; the
//! predecessor stops accepting and starting instances, says `go`, and sends every running
//! instance over `handoff` (`SOCK_SEQPACKET`: its shim's connection and its output pipes,
//! `tenement_runtime::adopt::send`); the successor adopts them (and any other shim it finds),
//! starts accepting and says `serving`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tenement_runtime::adopt::Found;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const ENV: &str = "TEN_UPGRADE_FDS";

/// How long a successor may take to be ready, then to serve.
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// `ten upgrade`: asks the server to hand over to a new process of its executable.
pub async fn run(client: &crate::client::Client) -> anyhow::Result<ExitCode> {
    let r = client.upgrade().await?;
    println!(
        "upgraded: ten serve is now pid {} ({} instances adopted; connections waited {:.1} ms)",
        r.pid, r.adopted, r.handover_ms
    );
    Ok(ExitCode::SUCCESS)
}

/// The descriptors a server hands to its successor.
pub struct Handed {
    pub lock: RawFd,
    pub control: RawFd,
    pub front: Vec<RawFd>,
    pub secure: Vec<RawFd>,
}

/// In a successor: what its predecessor handed over.
pub struct Inherited {
    pub lock: std::fs::File,
    pub control: Option<std::os::unix::net::UnixListener>,
    pub front: Vec<std::net::TcpListener>,
    pub secure: Vec<std::net::TcpListener>,
    talk: BufReader<UnixStream>,
    handoff: Option<OwnedFd>,
}

impl Inherited {
    /// What `TEN_UPGRADE_FDS` names, if this process was started by `ten upgrade`.
    pub fn from_env() -> anyhow::Result<Option<Inherited>> {
        let Some(spec) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        let spec = spec.to_string_lossy().into_owned();
        let mut fds = std::collections::HashMap::new();
        for part in spec.split(';') {
            let (name, list) = part.split_once('=').context("malformed TEN_UPGRADE_FDS")?;
            let list: Vec<RawFd> = list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .context("malformed TEN_UPGRADE_FDS")?;
            fds.insert(name.to_string(), list);
        }
        let one = |name: &str| -> anyhow::Result<RawFd> {
            match fds.get(name).map(Vec::as_slice) {
                Some([fd]) => Ok(*fd),
                _ => bail!("TEN_UPGRADE_FDS has no {name}"),
            }
        };
        let (lock, control, talk) = (one("lock")?, one("control")?, one("talk")?);
        let handoff = one("handoff")?;
        let front = fds.get("front").cloned().unwrap_or_default();
        let secure = fds.get("secure").cloned().unwrap_or_default();
        for fd in [lock, control, talk, handoff]
            .iter()
            .chain(&front)
            .chain(&secure)
        {
            // Open descriptors, not to be inherited further: checked before owning them.
            // SAFETY: only borrowed for this call; fcntl on a closed number fails cleanly.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
            nix::fcntl::fcntl(
                borrowed,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .with_context(|| format!("TEN_UPGRADE_FDS names a closed descriptor {fd}"))?;
        }
        let listeners = |fds: &[RawFd]| {
            fds.iter()
                // SAFETY: our predecessor passed these listening sockets to this process
                // alone (checked open above); nothing else here owns them.
                .map(|fd| unsafe { std::net::TcpListener::from_raw_fd(*fd) })
                .collect::<Vec<_>>()
        };
        let (front, secure) = (listeners(&front), listeners(&secure));
        // SAFETY: our predecessor passed these descriptors to this process alone (checked
        // open above); nothing else here owns them.
        let (lock, control, talk, handoff) = unsafe {
            (
                std::fs::File::from_raw_fd(lock),
                std::os::unix::net::UnixListener::from_raw_fd(control),
                std::os::unix::net::UnixStream::from_raw_fd(talk),
                OwnedFd::from_raw_fd(handoff),
            )
        };
        control.set_nonblocking(true)?;
        talk.set_nonblocking(true)?;
        Ok(Some(Inherited {
            lock,
            control: Some(control),
            front,
            secure,
            talk: BufReader::new(UnixStream::from_std(talk)?),
            handoff: Some(handoff),
        }))
    }

    /// Tells the predecessor we are ready, waits for its `go` (also when it is gone: then
    /// the instances are ours anyway) and receives the instances it hands over.
    pub async fn take_over(&mut self) -> anyhow::Result<Vec<Found>> {
        // A predecessor that died meanwhile (a write or read error, an end of stream) leaves
        // its instances to the shims' sockets: adopted as after a crash.
        let _ = self.talk.get_mut().write_all(b"ready\n").await;
        let mut line = String::new();
        if !matches!(self.talk.read_line(&mut line).await, Ok(n) if n > 0) {
            tracing::warn!("the old server is gone: adopting its instances as after a crash");
            return Ok(Vec::new());
        }
        let Some(handoff) = self.handoff.take() else {
            return Ok(Vec::new());
        };
        // (Blocking reads: nothing else happens here until the instances are ours.)
        let received =
            tokio::task::spawn_blocking(move || tenement_runtime::adopt::receive(handoff.as_fd()))
                .await?;
        let received = received.context("receiving the instances from the old server")?;
        tracing::info!(instances = received.len(), "received from the old server");
        Ok(received)
    }

    /// Tells the predecessor we are serving.
    pub async fn serving(&mut self, adopted: usize) {
        let _ = self
            .talk
            .get_mut()
            .write_all(format!("serving {adopted}\n").as_bytes())
            .await;
    }
}

/// In a predecessor: the successor being started.
pub struct Successor {
    child: std::process::Child,
    talk: BufReader<UnixStream>,
    handoff: OwnedFd,
}

impl Successor {
    /// Starts `exe` with this process's arguments and the `handed` descriptors; returns once
    /// it is ready to take over.
    pub async fn start(exe: &std::path::Path, handed: &Handed) -> anyhow::Result<Successor> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let (handoff, their_handoff) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let list = |fds: &[RawFd]| {
            fds.iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let talk = theirs.as_raw_fd();
        let spec = format!(
            "lock={};control={};front={};secure={};talk={talk};handoff={}",
            handed.lock,
            handed.control,
            list(&handed.front),
            list(&handed.secure),
            their_handoff.as_raw_fd(),
        );
        let mut passed = vec![handed.lock, handed.control, talk, their_handoff.as_raw_fd()];
        passed.extend(&handed.front);
        passed.extend(&handed.secure);
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1))
            .env(ENV, spec)
            // systemd's watchdog is for the main process, which the successor becomes
            // (MAINPID=): its pings must not be refused for a pid that is not its own.
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null());
        // SAFETY: between fork and exec only fcntl(2), async-signal-safe: the descriptors
        // are inherited by the successor alone.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &passed {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        drop((theirs, their_handoff));
        ours.set_nonblocking(true)?;
        let mut me = Successor {
            child,
            talk: BufReader::new(UnixStream::from_std(ours)?),
            handoff,
        };
        if let Err(e) = me.expect("ready").await {
            let _ = me.child.kill();
            let _ = me.child.wait();
            return Err(e);
        }
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Gives the successor the running instances (`found`, let go of by this server);
    /// returns once it serves (how many it adopted, and how long since `stopped_accepting`).
    pub async fn go(
        &mut self,
        found: Vec<Found>,
        stopped_accepting: Instant,
    ) -> anyhow::Result<(usize, Duration)> {
        self.talk.get_mut().write_all(b"go\n").await?;
        let handoff = self.handoff.try_clone()?;
        // Sent, then closed here: the successor holds the only copies from now on.
        tokio::task::spawn_blocking(move || tenement_runtime::adopt::send(handoff.as_fd(), &found))
            .await?
            .context("handing the instances over")?;
        let adopted = self.expect("serving").await?;
        Ok((adopted.parse().unwrap_or(0), stopped_accepting.elapsed()))
    }

    /// Waits for `word` (what follows it on the line is returned).
    async fn expect(&mut self, word: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(STEP_LIMIT, self.talk.read_line(&mut line)).await;
        match read {
            Ok(Ok(n)) if n > 0 && line.starts_with(word) => {
                Ok(line[word.len()..].trim().to_string())
            }
            Ok(_) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "the new server ended before saying {word}{} (its log says why)",
                    status.map(|s| format!(" ({s})")).unwrap_or_default()
                )
            }
            Err(_) => bail!("the new server did not say {word} within {STEP_LIMIT:?}"),
        }
    }
}
