//! Connections to instances: keep-alive HTTP/1 connections per instance endpoint, one pool
//! per front-door thread (its lock is never contended and no request hops threads), and
//! one-off connections for protocol upgrades.
//!
//! A connection is lent for one exchange and given back ([`Pool::put`]) once its response
//! body has been read to the end, so a pooled connection is always ready for a new request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tenement::probe::Endpoint;

/// Idle connections kept per instance and thread.
const IDLE_PER_INSTANCE: usize = 64;
/// An idle connection unused this long is closed (the app may hold a file or thread for it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub type Sender = SendRequest<Body>;
pub type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Endpoint, Idle, BuildHasherDefault<Fnv>>>,
}

/// Idle connections to one endpoint, each with when it was given back.
type Idle = Vec<(Sender, Instant)>;

/// FNV-1a: the pool is looked up twice per request, and its keys are socket paths from the
/// configuration, never client input, so a DoS-resistant hash buys nothing here.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Pool {
    /// Sends `req` on an idle connection to `endpoint`, or on a new one. A request the idle
    /// connection could not take (the app closed it meanwhile) goes on a new connection.
    /// Returns the connection with the response; give it back with [`Pool::put`].
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Sender), UpstreamError> {
        if let Some(mut sender) = self.take(endpoint) {
            match sender.try_send_request(req).await {
                Ok(res) => return Ok((res, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = connect(endpoint, false).await?;
        let res = sender.send_request(req).await?;
        Ok((res, sender))
    }

    fn take(&self, endpoint: &Endpoint) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(endpoint)?;
        while let Some((sender, _)) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Gives a connection back after its exchange is complete: the response body read to the
    /// end. (hyper reports a connection ready as soon as the response head is in: pooled
    /// earlier, the next request would queue behind the rest of a possibly endless body.)
    pub fn put(&self, endpoint: &Endpoint, sender: Sender) {
        if !sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = match idle.get_mut(endpoint) {
            Some(list) => list,
            None => idle.entry(endpoint.clone()).or_default(),
        };
        if list.len() < IDLE_PER_INSTANCE {
            list.push((sender, Instant::now()));
        }
    }

    /// Closes connections idle for [`IDLE_TIMEOUT`] or closed by the app.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|(sender, since)| sender.is_ready() && since.elapsed() < IDLE_TIMEOUT);
            !list.is_empty()
        });
    }

    #[cfg(test)]
    fn idle_count(&self, endpoint: &Endpoint) -> usize {
        let idle = self.idle.lock().unwrap();
        idle.get(endpoint).map_or(0, Vec::len)
    }
}

/// A response body that gives its connection back to the pool once read to the end (an
/// abandoned body closes the connection instead: hyper cannot reuse it).
pub struct Returning {
    body: Incoming,
    back: Option<(Arc<Pool>, Endpoint, Sender)>,
}

impl Returning {
    pub fn new(body: Incoming, pool: Arc<Pool>, endpoint: Endpoint, sender: Sender) -> Self {
        let mut this = Self {
            body,
            back: Some((pool, endpoint, sender)),
        };
        if this.body.is_end_stream() {
            this.give_back(); // nothing to read (HEAD, 204, 304, empty)
        }
        this
    }

    /// Once the body is read to its end. hyper's server stops polling a body as soon as it
    /// reports its end, so this runs on the last frame, not on a final `None`; the connection
    /// becomes ready moments later, hence the wait for it.
    fn give_back(&mut self) {
        if let Some((pool, endpoint, mut sender)) = self.back.take() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(&endpoint, sender);
                }
            });
        }
    }
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A new connection (its task runs on the calling thread's runtime); with `upgrades` it can
/// switch protocols (websockets) and is never pooled.
pub async fn connect(endpoint: &Endpoint, upgrades: bool) -> Result<Sender, UpstreamError> {
    let io = endpoint.connect().await?;
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    if upgrades {
        tokio::spawn(conn.with_upgrades());
    } else {
        tokio::spawn(conn);
    }
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny HTTP/1 server on a real Unix socket: answers `n` requests per connection, then
    /// closes it; counts connections.
    fn serve(
        path: &std::path::Path,
        per_conn: usize,
    ) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = s.read(&mut buf).await.unwrap();
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                        }
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                    }
                });
            }
        });
        conns
    }

    /// Polls `cond` (the connection goes back from a task of its own).
    async fn wait_until(cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 10 s");
    }

    fn get() -> Request<Body> {
        Request::get("/x")
            .header("host", "a.tiny.example.com")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn reuses_connections_and_survives_the_app_closing_one() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::Unix(dir.path().join("app.sock"));
        let Endpoint::Unix(path) = &endpoint else {
            unreachable!()
        };
        // The app closes each connection after 3 requests.
        let conns = serve(path, 3);
        let pool = Pool::default();
        for _ in 0..9 {
            let (res, sender) = pool.send(&endpoint, get()).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(
                &res.into_body().collect().await.unwrap().to_bytes()[..],
                b"ok"
            );
            pool.put(&endpoint, sender);
            // Let the connection task see a close before the next checkout (a request racing
            // the app's close is the one case a keep-alive pool cannot hide).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(pool.idle_count(&endpoint) <= 1);
    }

    #[tokio::test]
    async fn a_streaming_body_keeps_its_connection_until_read_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::Unix(dir.path().join("app.sock"));
        let Endpoint::Unix(path) = &endpoint else {
            unreachable!()
        };
        let conns = serve(path, 100);
        let pool = Arc::new(Pool::default());
        let (res, sender) = pool.send(&endpoint, get()).await.unwrap();
        let mut body = Returning::new(res.into_body(), pool.clone(), endpoint.clone(), sender);
        assert_eq!(pool.idle_count(&endpoint), 0, "body not read yet");
        // Meanwhile another request gets a connection of its own and is answered.
        let (other, sender2) = pool.send(&endpoint, get()).await.unwrap();
        assert_eq!(other.status(), 200);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop((other, sender2));
        // Read the way hyper's server does: until the body says it has ended, not to `None`.
        while !body.is_end_stream() {
            body.frame().await.unwrap().unwrap();
        }
        wait_until(|| pool.idle_count(&endpoint) == 1).await;
    }
}
