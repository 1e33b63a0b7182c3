//! Finding the instances an earlier `ten serve` left running: every shim listening in the
//! server's shims directory is connected to and becomes ours ([`crate::handover`]).

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::unistd::Pid;
use tracing::warn;

use crate::Started;
use crate::handover::{self, Hello, Msg};
use crate::process::ShimWorkload;

/// A running instance now owned by this server.
pub struct Found {
    pub hello: Hello,
    pub started: Started,
}

/// Adopts every shim listening in `dir` but those at `skip` (had already), all at once. A
/// socket nobody listens on any more (its shim ended) is removed; one that does not answer as
/// a shim is left alone and reported.
pub async fn find(dir: &Path, skip: &[std::path::PathBuf]) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let skip: std::collections::HashSet<&std::path::PathBuf> = skip.iter().collect();
    let mut tries = tokio::task::JoinSet::new();
    for path in entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| !skip.contains(p))
    {
        tries.spawn(async move {
            let found = tokio::time::timeout(Duration::from_secs(15), connect(&path)).await;
            (path, found)
        });
    }
    let t = std::time::Instant::now();
    let all = tries.join_all().await;
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1000.0,
        shims = all.len(),
        "shims answered"
    );
    let mut out = Vec::new();
    for (path, found) in all {
        match found {
            Ok(Ok(found)) => out.push(found),
            Ok(Err(e)) if gone(&e) => {
                let _ = std::fs::remove_file(&path);
            }
            Ok(Err(e)) => warn!(socket = %path.display(), error = %e, "cannot adopt"),
            Err(_) => warn!(socket = %path.display(), "cannot adopt: no answer within 15 s"),
        }
    }
    out
}

/// Whether the shim behind a socket has ended.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::ENOENT | libc::ENOTSOCK)
    )
}

/// Sends `found` (instances this server lets go of) to its successor over `to` (a
/// `SOCK_SEQPACKET` socket): their shims' connections and output pipes go with them, so the
/// shims are not even woken ([`handover::Msg::Batch`], then [`handover::Msg::End`]).
pub fn send(to: std::os::fd::BorrowedFd<'_>, found: &[Found]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let passable: Vec<&Found> = found
        .iter()
        .filter(|f| f.started.workload.control().is_some())
        .collect();
    for batch in passable.chunks(handover::BATCH) {
        let hellos: Vec<Hello> = batch.iter().map(|f| f.hello.clone()).collect();
        let mut fds = Vec::with_capacity(batch.len() * 3);
        for f in batch {
            let control = f.started.workload.control().expect("filtered");
            fds.extend([
                control.as_raw_fd(),
                f.started.stdout.as_raw_fd(),
                f.started.stderr.as_raw_fd(),
            ]);
        }
        handover::send(to, &Msg::Batch(hellos), &fds)?;
    }
    handover::send(to, &Msg::End, &[])
}

/// Receives what a predecessor [`send`]s, until its end.
pub fn receive(from: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<Found>> {
    let mut out = Vec::new();
    loop {
        let (hellos, fds) = match handover::recv_sized(from, 1 << 20)? {
            Some((Msg::Batch(h), fds)) if fds.len() == h.len() * 3 => (h, fds),
            Some((Msg::End, _)) | None => return Ok(out),
            Some(other) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected hand-over message {other:?}"),
                ));
            }
        };
        let mut fds = fds.into_iter();
        for hello in hellos {
            let (control, stdout, stderr) = (
                fds.next().expect("counted"),
                fds.next().expect("counted"),
                fds.next().expect("counted"),
            );
            let workload = ShimWorkload {
                child: None,
                pgid: Pid::from_raw(hello.pid as i32),
                control: crate::process::register(control)?,
            };
            out.push(Found {
                hello,
                started: Started {
                    workload: Box::new(workload),
                    stdout,
                    stderr,
                },
            });
        }
    }
}

async fn connect(path: &Path) -> std::io::Result<Found> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    // A full backlog (EAGAIN) means the shim is busy handing over: try again.
    let mut tries = 0;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EAGAIN) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let cred = socket::getsockopt(&fd, socket::sockopt::PeerCredentials)?;
    let strange = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    if cred.uid() != nix::unistd::geteuid().as_raw() {
        return Err(strange(format!(
            "its listener runs as uid {}, not as the server",
            cred.uid()
        )));
    }
    let control = crate::process::register(fd)?;
    // The shim answers once its previous owner (if any) let go of the instance.
    let (msg, mut fds) = loop {
        let mut ready = control.readable().await?;
        match ready.try_io(|fd| handover::recv(fd.get_ref().as_fd())) {
            Ok(Ok(Some(m))) => break m,
            Ok(Ok(None)) => return Err(std::io::ErrorKind::ConnectionReset.into()),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    };
    let hello = match msg {
        Msg::Hello(h) if h.pid as i32 == cred.pid() && fds.len() == 2 => h,
        other => return Err(strange(format!("unexpected first message {other:?}"))),
    };
    let stderr = fds.pop().expect("two descriptors");
    let stdout = fds.pop().expect("two descriptors");
    let workload = ShimWorkload {
        child: None,
        pgid: Pid::from_raw(hello.pid as i32),
        control,
    };
    Ok(Found {
        hello,
        started: Started {
            workload: Box::new(workload),
            stdout,
            stderr,
        },
    })
}
