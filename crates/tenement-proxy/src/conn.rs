//! The engine and a client connection: the fast path first ([`crate::fast`]), hyper for the
//! rest of the connection once a request is anything else; hyper's requests checked, routed
//! and proxied ([`Engine::handle`]).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::headers::Forwarding;
use crate::pool::{Pool, SWEEP_EVERY};
use crate::{Lease, Resolve, Route, proxy};

/// A response body: the engine's own answers, streamed upstream bodies, or the server's.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the engine treats requests (from `[settings]` in `ten serve`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long an upstream has to answer (counted from the request body's last move).
    pub upstream_timeout: Duration,
    /// The largest request head accepted, in bytes.
    pub max_head: usize,
    /// How long a client has to send a whole request head (and may idle between requests).
    pub header_timeout: Duration,
    /// Whether body-less requests take the engine's own HTTP/1.1 loop ([`crate::fast`]);
    /// off, hyper serves every request.
    pub fast_path: bool,
}

/// A client's byte stream, split in two halves that can be used at once (the fast path
/// watches for the client hanging up while it writes the answer).
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
}

impl ClientStream for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
}

/// Any other stream (TLS): its halves take turns through a lock (`tokio::io::split`).
pub struct Joined<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for Joined<S> {
    type Read<'a> = tokio::io::ReadHalf<&'a mut S>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut S>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(&mut self.0)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Joined<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Joined<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// How a client came: plain HTTP/1.1, or over TLS with the protocol it negotiated (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
    /// TLS with `h2`: HTTP/2 (hyper's), every request on hyper's path.
    TlsHttp2,
}

/// One client connection.
pub(crate) struct Client {
    pub(crate) peer: SocketAddr,
    pub(crate) forwarding: Forwarding,
}

/// The proxy engine of one front-door thread: its resolver, its upstream connection pool.
pub struct Engine<R> {
    pub(crate) resolver: R,
    pub(crate) pool: Arc<Pool>,
    pub(crate) settings: Settings,
    http1: http1::Builder,
    http2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
}

impl<R: Resolve> Engine<R> {
    pub fn new(resolver: R, settings: Settings) -> Arc<Self> {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .max_buf_size(settings.max_head.max(8192))
            .keep_alive(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(settings.max_head.max(8192) as u32)
            .max_concurrent_streams(100)
            .keep_alive_interval(Some(settings.header_timeout.max(Duration::from_secs(10))))
            .keep_alive_timeout(Duration::from_secs(20));
        Arc::new(Self {
            resolver,
            pool: Arc::default(),
            settings,
            http1,
            http2,
        })
    }

    pub fn resolver(&self) -> &R {
        &self.resolver
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Closes idle upstream connections past their time, every second, for as long as the
    /// future runs (spawn it on the thread that serves this engine's connections).
    pub async fn sweep_pool(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            self.pool.sweep();
        }
    }

    /// Serves one client connection from `peer` until it closes, idles past `header_timeout`,
    /// or `shutdown` (which lets a request on its way finish).
    pub async fn serve<S: ClientStream>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        transport: Transport,
        shutdown: CancellationToken,
    ) {
        let proto = match transport {
            Transport::Plain => "http",
            Transport::Tls | Transport::TlsHttp2 => "https",
        };
        let client = Arc::new(Client {
            peer,
            forwarding: Forwarding::new(peer, proto),
        });
        match transport {
            Transport::TlsHttp2 => self.serve_h2(stream, client, shutdown).await,
            _ if self.settings.fast_path => {
                crate::fast::serve(self, stream, client, shutdown).await;
            }
            _ => self.serve_hyper(stream, client, shutdown).await,
        }
    }

    /// Serves an HTTP/2 connection (every stream a request on hyper's path).
    async fn serve_h2<I>(self: Arc<Self>, io: I, client: Arc<Client>, shutdown: CancellationToken)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http2 = self.http2.clone();
        let conn = http2.serve_connection(TokioIo::new(io), self.service(client));
        until_done(conn, shutdown, |c| c.graceful_shutdown()).await;
    }

    /// Each request of a hyper connection, to [`Engine::handle`].
    fn service(
        self: Arc<Self>,
        client: Arc<Client>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
    > + Clone {
        service_fn(move |req| {
            let (engine, client) = (self.clone(), client.clone());
            async move { Ok::<_, Infallible>(engine.handle(req, &client).await) }
        })
    }

    /// Serves a client connection with hyper from here on (`io` may start with bytes the fast
    /// path has read already), until it closes or `shutdown`, which lets the request in
    /// progress finish.
    pub(crate) async fn serve_hyper<I>(
        self: Arc<Self>,
        io: I,
        client: Arc<Client>,
        shutdown: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http1 = self.http1.clone();
        let conn = http1
            .serve_connection(TokioIo::new(io), self.service(client))
            .with_upgrades();
        until_done(conn, shutdown, |c| c.graceful_shutdown()).await;
    }

    /// A request hyper parsed: checked, then routed, then proxied or answered locally.
    async fn handle(&self, mut req: Request<Incoming>, client: &Client) -> Response<Body> {
        if req.version() == Version::HTTP_2 {
            let Some(slot) = self.resolver.admit_stream(client.peer.ip()) else {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in flight from this address",
                );
            };
            if let Err(why) = host_from_authority(&mut req) {
                return plain(StatusCode::BAD_REQUEST, why);
            }
            let res = self.route_and_answer(req, client).await;
            return res.map(|body| proxy::hold(body, slot));
        }
        self.route_and_answer(req, client).await
    }

    /// Checks, routes and answers (proxied or local) one request.
    async fn route_and_answer(&self, req: Request<Incoming>, client: &Client) -> Response<Body> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let raw_host = hosts.next();
        if hosts.next().is_some() {
            // Routed by one, read by the app as another: refused (RFC 9112 §3.2).
            return plain(StatusCode::BAD_REQUEST, "more than one Host header");
        }
        let Ok(host) = raw_host.map(|h| h.to_str()).transpose() else {
            return plain(StatusCode::BAD_REQUEST, "malformed Host header: not ASCII");
        };
        if req.method() == Method::CONNECT {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported here",
            );
        }
        if req.uri().scheme().is_none() && req.uri().authority().is_some() {
            // `GET name HTTP/1.1`: a target that is neither a path nor an absolute URI.
            return plain(
                StatusCode::BAD_REQUEST,
                "the request target must be a path: /...",
            );
        }
        if let Some(coding) = crate::headers::unsupported_coding(req.headers()) {
            let msg = format!("transfer coding `{coding}` is not supported (only chunked)");
            return plain(StatusCode::NOT_IMPLEMENTED, &msg);
        }
        if host.is_none() && req.version() != Version::HTTP_10 {
            // HTTP/1.0 may leave Host out; HTTP/1.1 must send it (RFC 9112 §3.2).
            return plain(StatusCode::BAD_REQUEST, "malformed Host header: missing");
        }
        let target = match self.resolver.route(host, req.uri().path()) {
            Route::Upstream(target) => target,
            Route::Local => return self.resolver.local(req, client.peer).await,
            Route::Refused(status, msg) => return plain(status, &msg),
        };
        let started = Instant::now();
        let res = match self.resolver.lease(&target).await {
            Ok(lease) => {
                proxy::forward(&self.pool, lease, req, &client.forwarding, self.settings).await
            }
            Err(e) => plain(e.status, &e.message),
        };
        self.resolver.record(&target, res.status(), started);
        res
    }
}

/// Runs a hyper connection to its end; at `shutdown`, lets the request in progress finish and
/// takes no other.
async fn until_done<C, E>(conn: C, shutdown: CancellationToken, graceful: fn(Pin<&mut C>))
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

/// HTTP/2 names the host in `:authority` (RFC 9113 §8.3.1): the app gets it as Host, as from
/// an HTTP/1.1 client. A Host header that says otherwise is refused (routed by one, read as
/// the other by something in between).
fn host_from_authority(req: &mut Request<Incoming>) -> Result<(), &'static str> {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    match (authority, req.headers().get(header::HOST)) {
        (Some(a), Some(host)) if !host.as_bytes().eq_ignore_ascii_case(a.as_bytes()) => {
            Err(":authority and Host name different hosts")
        }
        (Some(a), None) => {
            if let Ok(value) = header::HeaderValue::from_str(&a) {
                req.headers_mut().insert(header::HOST, value);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A short plain-text answer.
pub fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut res = Response::new(full(Bytes::from(format!("{msg}\n"))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    res
}

/// A body of these bytes.
pub(crate) fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Logs why a request got no answer from its upstream: the upstream's failures (502, 504) as
/// warnings, since an operator wants to see them; the client's own (400, 408, 413) only when
/// debugging.
pub(crate) fn log_failure(lease: &impl Lease, failure: &proxy::Failure) {
    let (status, error) = (failure.0.as_u16(), &failure.1);
    if failure.0.is_server_error() {
        tracing::warn!(instance = %lease, status, %error, "proxied request failed");
    } else {
        debug!(instance = %lease, status, %error, "proxied request failed");
    }
}

/// A client stream with the bytes already read from it put back in front.
pub(crate) struct Rewind<S> {
    pub(crate) read: Bytes,
    pub(crate) stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let taken = self.read.split_to(n);
            buf.put_slice(&taken);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
