//! Keep-alive connections to instances: one pool per front-door thread (its lock is never
//! contended and no request hops threads), idle connections per instance endpoint.
//!
//! A connection is lent for one exchange and given back ([`Pool::put`]) once its response
//! body has been read to the end, so a pooled connection is always ready for a new request.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tenement_core::fnv::Fnv;

use crate::framing::Framing;
use crate::upstream::{Conn, UpstreamError};

/// Idle connections kept per instance and thread.
const IDLE_PER_INSTANCE: usize = 64;
/// An idle connection unused this long is closed (the app may hold a file or thread for it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are looked over ([`Pool::sweep`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Endpoint, Idle, Fnv>>,
}

/// Idle connections to one endpoint, each with when it was given back.
type Idle = Vec<(Conn, Instant)>;

impl Pool {
    /// An idle connection to `endpoint` that the instance has not closed meanwhile (`true`:
    /// reused), or a new one.
    pub async fn checkout(&self, endpoint: &Endpoint) -> Result<(Conn, bool), UpstreamError> {
        while let Some(mut conn) = self.take(endpoint) {
            if conn.is_idle().await {
                return Ok((conn, true));
            }
        }
        Ok((Conn::open(endpoint).await?, false))
    }

    fn take(&self, endpoint: &Endpoint) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(endpoint)?.pop().map(|(conn, _)| conn)
    }

    /// Gives a connection back once its exchange is complete: the response body read to
    /// the end. (Pooled earlier, the next request would queue behind the rest of a possibly
    /// endless body.)
    pub fn put(&self, endpoint: &Endpoint, conn: Conn) {
        let Some(conn) = conn.park() else {
            return;
        };
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = match idle.get_mut(endpoint) {
            Some(list) => list,
            None => idle.entry(endpoint.clone()).or_default(),
        };
        if list.len() < IDLE_PER_INSTANCE {
            list.push((conn, Instant::now()));
        }
    }

    /// Closes connections idle for [`IDLE_TIMEOUT`], and those the instance closed (it went
    /// to sleep, say): their file descriptors go now, not at the timeout.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain_mut(|(conn, since)| {
                since.elapsed() < IDLE_TIMEOUT && !conn.is_closed_now()
            });
            !list.is_empty()
        });
    }

    #[cfg(test)]
    fn idle_count(&self, endpoint: &Endpoint) -> usize {
        let idle = self.idle.lock().unwrap();
        idle.get(endpoint).map_or(0, Vec::len)
    }
}

/// A response body read from its connection as the client takes it. The connection goes back
/// to the pool once the body has been read to the end; an abandoned body closes it.
pub struct Streaming {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    pool: Arc<Pool>,
    endpoint: Endpoint,
}

impl Streaming {
    pub fn new(
        conn: Conn,
        framing: Framing,
        reusable: bool,
        pool: Arc<Pool>,
        endpoint: Endpoint,
    ) -> Self {
        let mut this = Self {
            conn: Some(conn),
            framing,
            reusable,
            pool,
            endpoint,
        };
        if framing.is_done() {
            this.finish();
        }
        this
    }

    /// The body has been read to its end. (hyper's server stops polling a body as soon as it
    /// reports its end, so this runs with the last piece, not only on a final `None`.)
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
        {
            self.pool.put(&self.endpoint, conn);
        }
    }
}

impl HttpBody for Streaming {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(conn.poll_piece(cx, &mut this.framing)) {
            Ok(Some(data)) => {
                if this.framing.is_done() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(e) => {
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny HTTP/1 app on a real Unix socket. On each connection it reads requests and
    /// follows `script`: `true` answers `200 ok`, `false` closes without answering; at the end
    /// of the script it closes. Counts connections. (Also used by proxy.rs's tests.)
    pub(crate) fn app(
        path: &std::path::Path,
        script: Vec<bool>,
    ) -> Arc<std::sync::atomic::AtomicUsize> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let script = script.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    for answer in script {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        if !answer {
                            return;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        s.write_all(ok).await.unwrap();
                    }
                });
            }
        });
        conns
    }

    /// One GET through the pool: the answer's status, framing and connection.
    async fn get(pool: &Pool, endpoint: &Endpoint) -> (u16, Framing, Conn, bool) {
        let (mut conn, _) = pool.checkout(endpoint).await.unwrap();
        let head = b"GET /x HTTP/1.1\r\nhost: a.tiny.example.com\r\n\r\n";
        let answer = conn
            .exchange(head, &mut None, &hyper::Method::GET)
            .await
            .unwrap();
        let status = answer.status.as_u16();
        (status, answer.framing, conn, answer.reusable)
    }

    #[tokio::test]
    async fn reuses_connections_and_notices_the_app_closing_one() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::unix_any(dir.path().join("app.sock"));
        let Endpoint::Unix(path, _) = &endpoint else {
            unreachable!()
        };
        // The app closes each connection after 3 requests.
        let conns = app(path, vec![true; 3]);
        let pool = Pool::default();
        for _ in 0..9 {
            let (status, framing, mut conn, reusable) = get(&pool, &endpoint).await;
            assert_eq!((status, framing, reusable), (200, Framing::Length(2), true));
            assert_eq!(&conn.read_body(2).await.unwrap()[..], b"ok");
            pool.put(&endpoint, conn);
            // Let the close reach this end before the next checkout (a request racing the
            // app's close is retried by the proxy; see proxy.rs).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(pool.idle_count(&endpoint) <= 1);
    }

    #[tokio::test]
    async fn a_streaming_body_keeps_its_connection_until_read_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::unix_any(dir.path().join("app.sock"));
        let Endpoint::Unix(path, _) = &endpoint else {
            unreachable!()
        };
        let conns = app(path, vec![true; 100]);
        let pool = Arc::new(Pool::default());
        let (_, framing, conn, reusable) = get(&pool, &endpoint).await;
        let mut body = Streaming::new(conn, framing, reusable, pool.clone(), endpoint.clone());
        assert_eq!(pool.idle_count(&endpoint), 0, "body not read yet");
        // Meanwhile another request gets a connection of its own and is answered.
        let (status, ..) = get(&pool, &endpoint).await;
        assert_eq!(status, 200);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Read the way hyper's server does: until the body says it has ended, not to `None`.
        let mut got = Vec::new();
        while !body.is_end_stream() {
            got.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
        }
        assert_eq!(got, b"ok");
        assert_eq!(pool.idle_count(&endpoint), 1);
    }
}
