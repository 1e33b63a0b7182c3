//! HTTP/2 through the engine (as after TLS with ALPN `h2`; here over plain TCP, which
//! `Transport::TlsHttp2` does not look at): the app gets the `:authority` as Host, a Host that
//! names another host is refused, and streams are admitted one by one by the resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tenement_proxy::{
    Body, Endpoint, Engine, Resolve, Route, Settings, Transport, Unavailable, plain,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Every host routes to the app; at most `streams` HTTP/2 streams in flight.
struct App {
    endpoint: Endpoint,
    streams: usize,
    in_flight: Arc<AtomicUsize>,
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Resolve for App {
    type Target = ();
    type Lease = Endpoint;

    fn route(&self, _: Option<&str>, _: &str) -> Route<()> {
        Route::Upstream(())
    }

    async fn lease(&self, (): &()) -> Result<Endpoint, Unavailable> {
        Ok(self.endpoint.clone())
    }

    async fn local(&self, _: Request<hyper::body::Incoming>, _: SocketAddr) -> Response<Body> {
        plain(StatusCode::OK, "local")
    }

    fn admit_stream(&self, _: std::net::IpAddr) -> Option<Box<dyn Send + Unpin>> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if n >= self.streams {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Box::new(Slot(self.in_flight.clone())))
    }
}

/// An app that answers with the Host it got, after `/slow` waits a second.
fn app(path: &std::path::Path) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                if head.starts_with("GET /slow") {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                    .unwrap_or("")
                    .to_owned();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{host}",
                    host.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
}

async fn start(streams: usize) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    app(&socket);
    let settings = Settings {
        max_body: 1 << 20,
        upstream_timeout: Duration::from_secs(10),
        max_head: 8192,
        header_timeout: Duration::from_secs(10),
        fast_path: true,
    };
    let resolver = App {
        endpoint: Endpoint::unix_any(&socket),
        streams,
        in_flight: Arc::default(),
    };
    let engine = Engine::new(resolver, settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let engine = engine.clone();
            let transport = Transport::TlsHttp2;
            tokio::spawn(engine.serve(stream, peer, transport, CancellationToken::new()));
        }
    });
    (addr, dir)
}

async fn client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn get(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    uri: &str,
    host: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::get(uri);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let res = send
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_authority_is_the_host_and_a_host_naming_another_is_refused() {
    let (addr, _dir) = start(100).await;
    let mut send = client(addr).await;
    let (status, host) = get(&mut send, "https://a.app.test/", None).await;
    assert_eq!((status, host.as_str()), (StatusCode::OK, "a.app.test"));
    let (status, _) = get(&mut send, "https://a.app.test/", Some("A.App.Test")).await;
    assert_eq!(status, StatusCode::OK, "the same host in another case");
    let (status, body) = get(&mut send, "https://a.app.test/", Some("b.app.test")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn streams_beyond_what_the_resolver_admits_are_refused_and_their_places_come_back() {
    let (addr, _dir) = start(3).await;
    let send = client(addr).await;
    let answers: Vec<_> = (0..6)
        .map(|_| {
            let mut send = send.clone();
            tokio::spawn(async move { get(&mut send, "https://a.app.test/slow", None).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for a in answers {
        statuses.push(a.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((ok, refused), (3, 3), "{statuses:?}");
    // Done streams give their places back.
    let mut send = send.clone();
    assert_eq!(
        get(&mut send, "https://a.app.test/", None).await.0,
        StatusCode::OK
    );
}
