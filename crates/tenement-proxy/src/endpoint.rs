//! Where an upstream listens, who must be listening there, and connecting to it.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// Where an upstream listens. Compared and hashed by the socket path's bytes (one `write` to
/// the hasher, not `Path`'s component walk: the engine looks endpoints up twice per request).
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A Unix socket, and the check on who may answer there.
    Unix(PathBuf, Arc<dyn Verify>),
    Tcp(SocketAddr),
}

/// Who may answer on a Unix socket: checked on every connection after `connect`, before a byte
/// is sent (a tenant can put anything at its socket's path: a link to another socket, a
/// listener of its own).
pub trait Verify: std::fmt::Debug + Send + Sync + 'static {
    fn verify(&self, stream: BorrowedFd<'_>) -> std::io::Result<()>;
}

/// Anyone may answer: for tests whose upstream is a task of the test process itself.
#[derive(Debug)]
pub struct Anyone;

impl Verify for Anyone {
    fn verify(&self, _: BorrowedFd<'_>) -> std::io::Result<()> {
        Ok(())
    }
}

impl Endpoint {
    /// A Unix socket anyone may answer on.
    pub fn unix_any(path: impl Into<PathBuf>) -> Self {
        Endpoint::Unix(path.into(), Arc::new(Anyone))
    }

    /// Connects (a Unix socket's full backlog is waited out briefly: [`connect_unix`]).
    pub async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        match self {
            Endpoint::Tcp(addr) => {
                // A host that is gone answers nothing: give up rather than wait for the
                // kernel's SYN retries (minutes).
                let connect = tokio::net::TcpStream::connect(addr);
                let s = tokio::time::timeout(TCP_CONNECT, connect)
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
            Endpoint::Unix(path, peer) => Ok(Box::new(connect_unix(path, &**peer).await?)),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path, _) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// An endpoint is a lease of itself, for resolvers with nothing to keep awake.
impl crate::Lease for Endpoint {
    fn endpoint(&self) -> &Endpoint {
        self
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Endpoint::Unix(a, _), Endpoint::Unix(b, _)) => a.as_os_str() == b.as_os_str(),
            (Endpoint::Tcp(a), Endpoint::Tcp(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Endpoint {}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Endpoint::Unix(path, _) => state.write(path.as_os_str().as_bytes()),
            Endpoint::Tcp(addr) => addr.hash(state),
        }
    }
}

/// A connected byte stream to an upstream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long a TCP upstream may take to accept a connection.
const TCP_CONNECT: Duration = Duration::from_secs(2);

/// How long a connect keeps retrying while the listener's backlog is full (EAGAIN).
const BACKLOG_RETRY: Duration = Duration::from_secs(2);

/// Connects to a Unix socket, retrying briefly while its backlog is full: that fails at once
/// with EAGAIN (unlike TCP, which queues); then checks who listens there ([`Verify`]).
pub async fn connect_unix(
    path: &Path,
    peer: &dyn Verify,
) -> std::io::Result<tokio::net::UnixStream> {
    let deadline = tokio::time::Instant::now() + BACKLOG_RETRY;
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(stream) => return peer.verify(stream.as_fd()).map(|()| stream),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            connected => return connected,
        }
    }
}
