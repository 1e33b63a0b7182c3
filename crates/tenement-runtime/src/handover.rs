//! The shim's control connection: how an instance outlives `ten serve` and is adopted by the
//! next one.
//!
//! Each shim has one *owner*, the `ten serve` it answers to, over a `SOCK_SEQPACKET` Unix
//! connection (one message per packet, descriptors attached to it). The first owner is the
//! server that spawned it (a socketpair inherited as `--control-fd`); a later one connects to
//! the shim's own socket, `{data_dir}/.shims/{hash of the key}` (directory 0700; the shim
//! accepts only the server's own uid). Messages, shim → owner:
//!
//! - `hello {json}` (to a server that connects): the instance key, the shim's pid (= the
//!   process group), its cgroups, the `meta` the first server gave it, and the read ends of the
//!   app's stdout and stderr pipes (`SCM_RIGHTS`), which the shim has held all along, so no
//!   line is lost while nobody reads: the app blocks once the pipe (64 KiB) is full.
//! - `exit {wait status}`: the app ended; the shim then kills what is left of the instance and
//!   itself.
//! - A server that connects while the instance has a live owner gets nothing (the connection
//!   is closed): only an instance whose server crashed, or let go of it (`released`, owner →
//!   shim), is adopted, so two servers never read the same pipe and no process takes an
//!   instance from a running server. (`ten upgrade` passes the connection itself instead:
//!   `adopt::send`.)
//!
//! When the owner's connection closes (the server crashed or was killed), or it says `released`,
//! the shim waits `--adopt-timeout` seconds for a new owner, then kills the instance.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

/// Where a shim listens for its next owner.
pub fn socket_path(shims_dir: &Path, key: &tenement_core::InstanceKey) -> PathBuf {
    let name = format!("{}/{}", key.service, key.id);
    shims_dir.join(format!("{:08x}", crate::fnv1a(name.as_bytes())))
}

/// What a shim tells a server that connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// `service:id`.
    pub key: String,
    /// The shim's pid, also the instance's process group.
    pub pid: u32,
    pub cgroups: Vec<PathBuf>,
    /// Opaque to the shim: what the spawning server wants its successors to know.
    pub meta: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    /// From a server to its successor (`ten upgrade`): instances, each with three
    /// descriptors attached in order (control connection, stdout, stderr).
    Batch(Vec<Hello>),
    /// The last batch was sent.
    End,
    /// The app's wait status (waitpid(2)).
    Exit(i32),
    /// Owner → shim: this server let go of the instance (the next to connect adopts it).
    Released,
}

impl Hello {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key, "pid": self.pid, "cgroups": self.cgroups, "meta": self.meta,
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<Hello> {
        Some(Hello {
            key: v["key"].as_str()?.to_string(),
            pid: v["pid"].as_u64()?.try_into().ok()?,
            cgroups: v["cgroups"]
                .as_array()?
                .iter()
                .map(|c| c.as_str().map(PathBuf::from))
                .collect::<Option<_>>()?,
            meta: v["meta"].as_str()?.to_string(),
        })
    }
}

/// Instances per [`Msg::Batch`]: three descriptors each, under the kernel's 253 per message.
pub const BATCH: usize = 64;

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Hello(h) => format!("hello {}", h.json()).into_bytes(),
            Msg::Batch(hellos) => {
                let list: Vec<serde_json::Value> = hellos.iter().map(Hello::json).collect();
                format!("batch {}", serde_json::Value::Array(list)).into_bytes()
            }
            Msg::End => b"end".to_vec(),
            Msg::Exit(status) => format!("exit {status}").into_bytes(),
            Msg::Released => b"released".to_vec(),
        }
    }

    fn decode(bytes: &[u8]) -> Option<Msg> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        Some(match word {
            "hello" => Msg::Hello(Hello::from_json(&serde_json::from_str(rest).ok()?)?),
            "batch" => {
                let v: serde_json::Value = serde_json::from_str(rest).ok()?;
                Msg::Batch(
                    v.as_array()?
                        .iter()
                        .map(Hello::from_json)
                        .collect::<Option<_>>()?,
                )
            }
            "end" => Msg::End,
            "exit" => Msg::Exit(rest.parse().ok()?),
            "released" => Msg::Released,
            _ => return None,
        })
    }
}

/// Sends one message with `fds` attached.
pub fn send(fd: BorrowedFd<'_>, msg: &Msg, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = msg.encode();
    let iov = [IoSlice::new(&bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and the descriptors attached to it; `None` at end of stream. A message
/// this version does not know is an error.
pub fn recv(fd: BorrowedFd<'_>) -> std::io::Result<Option<(Msg, Vec<OwnedFd>)>> {
    recv_sized(fd, 8192)
}

/// [`recv`] of messages up to `max` bytes (with up to [`BATCH`] × 3 descriptors).
pub fn recv_sized(fd: BorrowedFd<'_>, max: usize) -> std::io::Result<Option<(Msg, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([RawFd; BATCH * 3]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in r.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us; nothing else
                // owns them.
                fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        (r.bytes, fds)
    };
    if n == 0 {
        return Ok(None);
    }
    match Msg::decode(&buf[..n]) {
        Some(msg) => Ok(Some((msg, fds))),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "unknown shim message {:?}",
                String::from_utf8_lossy(&buf[..n.min(64)])
            ),
        )),
    }
}

/// The uid at the other end of a Unix socket.
pub fn peer_uid(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    let cred = socket::getsockopt(&fd, socket::sockopt::PeerCredentials)?;
    Ok(cred.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let hello = Hello {
            key: "api:prod".into(),
            pid: 42,
            cgroups: vec!["/sys/fs/cgroup/x".into()],
            meta: "{\"port\":3000}".into(),
        };
        let batch = Msg::Batch(vec![hello.clone(), hello.clone()]);
        for msg in [
            Msg::Hello(hello),
            batch,
            Msg::End,
            Msg::Exit(9),
            Msg::Released,
        ] {
            assert_eq!(Msg::decode(&msg.encode()), Some(msg));
        }
        assert_eq!(Msg::decode(b"hello {}"), None);
        assert_eq!(Msg::decode(b"reboot"), None);
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(
            std::os::fd::AsFd::as_fd(&a),
            &Msg::Exit(0),
            &[r.as_raw_fd()],
        )
        .unwrap();
        drop(r);
        let (msg, fds) = recv(std::os::fd::AsFd::as_fd(&b)).unwrap().unwrap();
        assert_eq!(msg, Msg::Exit(0));
        assert_eq!(fds.len(), 1);
        nix::unistd::write(&w, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(nix::unistd::read(&fds[0], &mut byte).unwrap(), 1);
        drop(a);
        assert!(recv(std::os::fd::AsFd::as_fd(&b)).unwrap().is_none());
    }
}
