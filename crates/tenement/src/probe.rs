//! Reaching an instance: its endpoint (Unix socket, or TCP for `listen = "tcp"`), connecting
//! with a retry when the listener's backlog is full, and the readiness and health probes.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
pub use tenement_proxy::{Endpoint, Io, Verify, connect_unix};

/// Who may answer on an instance's Unix socket. Every connection, the front door's and the
/// health checks', is checked after `connect` (SO_PEERCRED, unix(7)) before a byte is sent:
/// whatever a tenant or a leftover file puts at the socket's path (a symlink to `ten.sock` or
/// to a neighbour's socket, a squatter's listener), traffic reaches only the instance's own
/// processes, or nothing.
#[derive(Clone)]
pub struct Peer {
    /// The listener's uid, when the instance has a uid of its own and listens itself.
    pub uid: Option<u32>,
    /// The listener's process must be in the instance's (current) cgroup, if it has one.
    pub cgroup: Option<crate::instance::SharedCgroup>,
    /// Refuse `ten serve` itself (always, but in unit tests whose app runs in-process).
    pub refuse_self: bool,
}

impl Default for Peer {
    fn default() -> Self {
        Self {
            uid: None,
            cgroup: None,
            refuse_self: true,
        }
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("uid", &self.uid)
            .field("cgroup", &self.cgroup.is_some())
            .finish()
    }
}

impl Verify for Peer {
    /// Checks the process listening at the other end of `stream`.
    fn verify(&self, stream: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let cred = getsockopt(&stream, PeerCredentials).map_err(std::io::Error::from)?;
        let refuse = |why: String| {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refused: the socket is served by pid {} (uid {}), {why}",
                    cred.pid(),
                    cred.uid()
                ),
            ))
        };
        if self.refuse_self && cred.pid() == std::process::id() as i32 {
            return refuse("ten serve itself".into());
        }
        if let Some(uid) = self.uid
            && cred.uid() != uid
        {
            return refuse(format!("not the instance's user (uid {uid})"));
        }
        // Also the cgroup, where there is one: a root process (a `user = "root"` tenant) can
        // take any uid, not another instance's cgroup.
        let cgroup = self.cgroup.as_ref().and_then(|c| {
            c.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(std::sync::Arc::clone)
        });
        match cgroup {
            Some(cg) if !cg.contains(cred.pid()) => {
                refuse("not a process of the instance's cgroup".into())
            }
            _ => Ok(()),
        }
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ProbeError {
    /// Whether the check failed for lack of the server's own resources, not the instance's.
    pub fn is_ours(&self) -> bool {
        matches!(self, ProbeError::Connect(e) if server_short_of(e))
    }
}

/// Errors that mean this process (or the host) ran out of file descriptors, memory or
/// processes: never an instance's fault.
pub fn server_short_of(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// The most of a health answer's body that is read.
const HEALTH_BODY_MAX: usize = 64 * 1024;

/// `GET path` at `endpoint`; success is a 2xx answer within `timeout`.
pub async fn http_get(
    endpoint: &Endpoint,
    path: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let attempt = async {
        let stream = endpoint.connect().await.map_err(ProbeError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::USER_AGENT, "tenement-health")
            .body(Empty::<Bytes>::new())
            .expect("a static request is valid");
        let res = sender.send_request(req).await;
        let status = match res {
            Ok(res) => {
                let status = res.status();
                // The body is read before hanging up: an app that writes it after the head
                // would otherwise fail its write (Python's http.server logs a BrokenPipeError
                // traceback for every check). Health answers are small; more is not waited for.
                let _ = Limited::new(res.into_body(), HEALTH_BODY_MAX)
                    .collect()
                    .await;
                Ok(status)
            }
            Err(e) => Err(e),
        };
        conn.abort();
        let status = status?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(status.as_u16()))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// The periodic health check of one instance, on a kept-alive connection: a check costs one
/// request on it, not a connect, a peer check, an HTTP handshake and a task each time (that
/// was most of ten serve's CPU with a thousand idle tenants). A connection the app closed, or
/// one that fails its request, is replaced, and the check tried once more on the new one.
#[derive(Default)]
pub struct Prober {
    conn: Option<(
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    )>,
    /// What was at the socket's path when the connection was made: if that changes (the app
    /// replaced its socket, a symlink went in), the path is checked anew with a new connection.
    at_path: Option<(u64, u64)>,
}

/// Device and inode of what is at `endpoint`'s path (not following a symlink).
fn path_id(endpoint: &Endpoint) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    match endpoint {
        Endpoint::Unix(path, _) => std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino())),
        Endpoint::Tcp(_) => None,
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.forget();
    }
}

impl Prober {
    /// Drops the kept connection (a new run of the instance will not answer on it).
    pub fn forget(&mut self) {
        if let Some((_, task)) = self.conn.take() {
            task.abort();
        }
    }

    /// `GET health` within `timeout` (a connect without a health path).
    pub async fn check(
        &mut self,
        endpoint: &Endpoint,
        health: Option<&str>,
        timeout: Duration,
    ) -> Result<(), ProbeError> {
        let Some(path) = health else {
            return check(endpoint, None, timeout).await;
        };
        tokio::time::timeout(timeout, async {
            let reused = self.conn.is_some();
            match self.get(endpoint, path).await {
                Err(e) if reused && !matches!(e, ProbeError::Status(_)) => {
                    self.forget();
                    self.get(endpoint, path).await
                }
                answered => answered,
            }
        })
        .await
        .unwrap_or_else(|_| {
            self.forget();
            Err(ProbeError::Timeout(timeout))
        })
    }

    async fn get(&mut self, endpoint: &Endpoint, path: &str) -> Result<(), ProbeError> {
        if self.conn.is_some() && path_id(endpoint) != self.at_path {
            self.forget();
        }
        if let Some((sender, _)) = &mut self.conn
            && sender.ready().await.is_err()
        {
            self.forget();
        }
        if self.conn.is_none() {
            self.at_path = path_id(endpoint);
            let stream = endpoint.connect().await.map_err(ProbeError::Connect)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some((sender, task));
        }
        let (sender, _) = self.conn.as_mut().expect("connected above");
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::USER_AGENT, "tenement-health")
            .body(Empty::<Bytes>::new())
            .expect("a static request is valid");
        let res = match sender.send_request(req).await {
            Ok(res) => res,
            Err(e) => {
                self.forget();
                return Err(e.into());
            }
        };
        let status = res.status();
        // Read to the end, so the connection is ready for the next check.
        if Limited::new(res.into_body(), HEALTH_BODY_MAX)
            .collect()
            .await
            .is_err()
        {
            self.forget();
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(status.as_u16()))
        }
    }
}

/// The periodic check: the health path if there is one, else a connect.
pub async fn check(
    endpoint: &Endpoint,
    health: Option<&str>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    match health {
        Some(path) => http_get(endpoint, path, timeout).await,
        None => tokio::time::timeout(timeout, endpoint.connect())
            .await
            .map_err(|_| ProbeError::Timeout(timeout))?
            .map(drop)
            .map_err(ProbeError::Connect),
    }
}

/// Polls until the instance is ready: it accepts connections and, with a health path, answers
/// 2xx. Never gives up by itself; the caller bounds it with `startup_timeout`, and can say why
/// from `last_error` (what the latest check found).
///
/// A Unix socket that is not there yet is waited for with inotify on its directory, so the
/// check runs the moment the app binds instead of at the next tick of tokio's 1 ms timer
/// (cold wakes wait on this); each wait is bounded by 20 ms, so a missed event costs at most
/// that. Between bind and listen a connect is refused: the task yields and retries (16 times)
/// before falling back to the timer.
pub async fn until_ready(
    endpoint: &Endpoint,
    health: Option<&str>,
    last_error: &std::sync::Mutex<Option<String>>,
) {
    let watch = match endpoint {
        Endpoint::Unix(path, _) => crate::socket_watch::SocketWatch::new(path),
        Endpoint::Tcp(_) => None,
    };
    let (mut attempts, mut refused) = (0u32, 0u32);
    loop {
        let error = match check(endpoint, health, Duration::from_secs(2)).await {
            Ok(()) => return,
            Err(e) => e,
        };
        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        attempts += 1;
        // Poll every millisecond for the first half second (most apps are up by then).
        let pause = Duration::from_millis(if attempts < 500 { 1 } else { 20 });
        let kind = match &error {
            ProbeError::Connect(e) => Some(e.kind()),
            _ => None,
        };
        refused = match kind {
            Some(std::io::ErrorKind::ConnectionRefused) => refused + 1,
            _ => 0,
        };
        match (&watch, kind) {
            (Some(w), Some(std::io::ErrorKind::NotFound)) => {
                w.created(pause.max(Duration::from_millis(20))).await;
            }
            // Bound, not listening yet: that takes microseconds.
            (_, Some(std::io::ErrorKind::ConnectionRefused)) if refused <= 16 => {
                tokio::task::yield_now().await
            }
            _ => tokio::time::sleep(pause).await,
        }
    }
}
