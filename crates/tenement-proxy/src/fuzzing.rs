//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): the engine's two parsers fed
//! arbitrary bytes, with the properties each must keep. Not an API.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::headers::Forwarding;
use crate::upstream::{Conn, request_head};
use crate::{Body, Endpoint, Resolve, Route, Unavailable};

/// A client's bytes as the fast path reads them. When it takes the request, the head it writes
/// for the upstream parses back whole to the same method and target, with one `Host` and none
/// of the headers that must not cross (hop-by-hop, `Transfer-Encoding`).
pub fn request(data: &[u8]) {
    let mut slots = [const { MaybeUninit::uninit() }; crate::fast::MAX_HEADERS];
    let Ok((httparse::Status::Complete(_), req)) = crate::fast::parse(data, &mut slots) else {
        return;
    };
    let Some(plan) = crate::fast::plan(&EveryHost, &req) else {
        return;
    };
    let forwarding = Forwarding::new(([192, 0, 2, 1], 4000).into(), "http");
    let path = req.path.expect("planned requests have a target");
    let head = request_head(
        plan.method.as_str(),
        path,
        || req.headers.iter().map(|h| (h.name, h.value)),
        &forwarding,
        false,
        None,
        plan.length,
        false,
    );
    let mut out = [httparse::EMPTY_HEADER; crate::fast::MAX_HEADERS + 8];
    let mut parsed = httparse::Request::new(&mut out);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.len(), "bytes after the head"),
        other => panic!("the upstream head does not parse ({other:?}): {head:?}"),
    }
    assert_eq!(parsed.method, Some(plan.method.as_str()));
    assert_eq!(parsed.path, Some(path));
    let named = |n: &str| {
        let same = |h: &&httparse::Header<'_>| h.name.eq_ignore_ascii_case(n);
        parsed
            .headers
            .iter()
            .filter(same)
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    assert_eq!(named("host").len(), 1, "{head:?}");
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
    ] {
        assert!(named(hop).is_empty(), "{hop} crossed: {head:?}");
    }
    assert!(named("content-length").iter().all(|v| *v == b"0"));
}

/// An upstream's bytes (after a first byte that says whether the request was a HEAD), read as
/// the engine reads an answer, in small pieces: its head, then its body as framed. Neither may
/// panic, wait for bytes that have all come, or give out more body than came.
pub fn response(data: &[u8]) {
    let Some((first, data)) = data.split_first() else {
        return;
    };
    let method = if first & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let data = data.to_vec();
    let mut conn = Conn::over(Box::new(Replay {
        data: data.clone(),
        at: 0,
    }));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut no_body = None;
    let answer = {
        let exchange = conn.exchange(b"GET / HTTP/1.1\r\n\r\n", &mut no_body, &method);
        match std::pin::pin!(exchange).poll(&mut cx) {
            Poll::Ready(answer) => answer,
            Poll::Pending => panic!("waits for an answer that has all come"),
        }
    };
    let Ok(answer) = answer else {
        return;
    };
    assert!(
        answer.status != StatusCode::CONTINUE,
        "an interim answer passed"
    );
    let _ = answer.response();
    let mut framing = answer.framing;
    let mut total = 0;
    loop {
        match conn.poll_piece(&mut cx, &mut framing) {
            Poll::Ready(Ok(Some(piece))) => {
                total += piece.len();
                assert!(total <= data.len(), "more body than bytes");
            }
            Poll::Ready(Ok(None) | Err(_)) => return,
            Poll::Pending => panic!("waits for a body that has all come"),
        }
    }
}

/// Every host routes upstream.
struct EveryHost;

impl Resolve for EveryHost {
    type Target = ();
    type Lease = Endpoint;

    fn route(&self, _: Option<&str>, _: &str) -> Route<()> {
        Route::Upstream(())
    }

    async fn lease(&self, (): &()) -> Result<Endpoint, Unavailable> {
        unreachable!("the fuzz targets lease nothing")
    }

    async fn local(
        &self,
        _: hyper::Request<hyper::body::Incoming>,
        _: std::net::SocketAddr,
    ) -> hyper::Response<Body> {
        unreachable!("the fuzz targets answer nothing")
    }
}

/// An upstream that has sent `data` and closed: read back a few bytes at a time.
struct Replay {
    data: Vec<u8>,
    at: usize,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Piece sizes of 1 to 7 bytes: every boundary a parser must survive.
        let n = (1 + self.at % 7)
            .min(self.data.len() - self.at)
            .min(buf.remaining());
        buf.put_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
