//! The proxy's HTTP/1.1 client for instances. The request's own task writes the request on
//! the connection and parses the answer (httparse) itself: no connection task and no channel
//! between them, and a response body is read from the socket only as the client takes it.
//!
//! Message framing follows RFC 9112 §6: `Content-Length`, `chunked`, or (responses only)
//! until the connection closes; no body for HEAD, 1xx, 204 and 304. Interim 1xx answers other
//! than 101 are skipped (the front door has already answered `Expect: 100-continue`).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::endpoint::{Endpoint, Io};
use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio_util::io::poll_read_buf;

use crate::framing::{Chunk, Framing, Piece, decode};
use crate::headers::{Forwarding, connection_tokens, hop_by_hop, line};
use crate::unix_conn;
use crate::upload::Upload;

/// Largest response head accepted from an instance.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines accepted in a response head.
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting: {0}")]
    Connect(io::Error),
    /// Sending the request head failed: the instance received nothing.
    #[error("sending the request: {0}")]
    Send(io::Error),
    /// The connection closed before any byte of an answer.
    #[error("the connection closed before an answer")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no answer within upstream_timeout")]
    TimedOut,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("request body larger than max_body_mb")]
    TooLarge,
    #[error("the client's request body failed: {0}")]
    Client(hyper::Error),
    /// The client's request body stopped coming for `upstream_timeout`.
    #[error("the request body stopped coming")]
    ClientStalled,
}

pub(crate) fn malformed(what: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Malformed(what.to_string())
}

/// One HTTP/1.1 connection to an instance, with the bytes read from it and not yet used.
pub struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// The rest of the request body, still being sent.
    upload: Option<Upload>,
    /// Sending the request failed part-way: the connection can never carry another.
    broken: bool,
}

/// An instance's answer: its head, ready for the client, and how its body is framed.
pub struct Answer {
    pub status: StatusCode,
    /// The status line and header lines to pass on (hop-by-hop ones left out), in HTTP/1.1
    /// wire form without the closing empty line; names as the app wrote them.
    pub head: Vec<u8>,
    /// Whether the app sent a `Date`.
    pub dated: bool,
    pub framing: Framing,
    /// Whether the connection can carry another request once the body has been read.
    pub reusable: bool,
}

impl Answer {
    /// An interim answer (1xx other than 101): skipped, the final one follows.
    fn interim(&self) -> bool {
        self.status.is_informational() && self.status != StatusCode::SWITCHING_PROTOCOLS
    }

    /// The head as an `http` response, for hyper to write.
    pub fn response(&self) -> Result<Response<()>, UpstreamError> {
        let mut lines = self.head.split(|b| *b == b'\n').skip(1);
        let mut headers = HeaderMap::new();
        for line in lines.by_ref() {
            let (name, value) = line
                .split_at_checked(line.iter().position(|b| *b == b':').unwrap_or(0))
                .ok_or_else(|| malformed("header line"))?;
            let name = HeaderName::from_bytes(name).map_err(malformed)?;
            let value = HeaderValue::from_bytes(value[1..].trim_ascii()).map_err(malformed)?;
            headers.append(name, value);
        }
        let mut res = Response::new(());
        *res.status_mut() = self.status;
        *res.headers_mut() = headers;
        Ok(res)
    }
}

/// The request head for the instance: `method` and `target` (origin form), the `headers`
/// rewritten by `forwarding`; `length`: the body's declared length (the client's
/// `Content-Length` is written from it, never copied); `chunked`: a body of unknown length
/// follows; `host`: the Host the upstream gets instead of the client's ([`crate::Lease::host`]).
#[allow(clippy::too_many_arguments)]
pub fn request_head<'a, I: Iterator<Item = (&'a str, &'a [u8])>>(
    method: &str,
    target: &str,
    headers: impl Fn() -> I,
    forwarding: &Forwarding,
    upgrade: bool,
    host: Option<&str>,
    length: Option<u64>,
    chunked: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    forwarding.write_headers(headers, upgrade, host.map(str::as_bytes), &mut out);
    if let Some(n) = length {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Methods a request may be sent again for when a kept-alive connection turned out closed.
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Conn {
    pub async fn open(endpoint: &Endpoint) -> Result<Self, UpstreamError> {
        let io = unix_conn::connect(endpoint)
            .await
            .map_err(UpstreamError::Connect)?;
        Ok(Self {
            io,
            buf: BytesMut::new(),
            upload: None,
            broken: false,
        })
    }

    /// A connection over `io` (the fuzz targets' recorded answers).
    pub(crate) fn over(io: Box<dyn Io>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            upload: None,
            broken: false,
        }
    }

    /// For a connection back from the pool: whether nothing has arrived on it since its last
    /// exchange. An instance that closed it has sent EOF, which shows here without waiting.
    pub async fn is_idle(&mut self) -> bool {
        poll_fn(|cx| Poll::Ready(self.poll_fill(cx).is_pending())).await
    }

    /// Whether the instance closed this idle connection (or sent something unasked), checked
    /// without waiting.
    pub fn is_closed_now(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.poll_fill(&mut cx).is_ready()
    }

    /// Ready to rest in the pool: the request sent whole, no stray bytes; holding no buffer.
    pub fn park(mut self) -> Option<Self> {
        (self.buf.is_empty() && self.upload.is_none() && !self.broken).then(|| {
            self.buf = BytesMut::new();
            self
        })
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Sends a request (`head` from [`request_head`], then the body, taken from `upload` once
    /// the head is written) and reads the answer's head. What the instance has not taken of
    /// the body when it answers keeps going out while the answer is read ([`Conn::poll_piece`]).
    pub async fn exchange(
        &mut self,
        head: &[u8],
        upload: &mut Option<Upload>,
        method: &Method,
    ) -> Result<Answer, UpstreamError> {
        self.io.write_all(head).await.map_err(UpstreamError::Send)?;
        self.upload = upload.take();
        let head_request = method == Method::HEAD;
        match poll_fn(|cx| self.poll_early(cx, head_request)).await? {
            Some(answer) => Ok(answer),
            None => self.read_answer(head_request).await,
        }
    }

    /// Sends the body until it is all out or the instance answers (interim 1xx answers
    /// skipped); the answer, if a whole head came meanwhile.
    fn poll_early(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<Option<Answer>, UpstreamError>> {
        loop {
            if self.poll_upload(cx)?.is_ready() {
                return Poll::Ready(Ok(None));
            }
            // Waiting on the client's body or the socket: has the instance answered?
            match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => {}
            }
            while let Some(answer) = self.parse_answer(head_request)? {
                if !answer.interim() {
                    return Poll::Ready(Ok(Some(answer)));
                }
            }
            if !self.buf.is_empty() {
                return Poll::Ready(Ok(None)); // an answer has begun: read_answer finishes it
            }
        }
    }

    /// Drives the rest of the request body; ready when none is left to send. A failed write
    /// (the instance stopped reading) ends the upload: its answer may still be coming.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        let Some(upload) = self.upload.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let sent = ready!(upload.poll_send(cx, &mut self.io));
        self.upload = None;
        match sent {
            Ok(()) => Poll::Ready(Ok(())),
            Err(UpstreamError::Io(_)) => {
                self.broken = true;
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                self.broken = true;
                Poll::Ready(Err(e))
            }
        }
    }

    /// Reads an answer's head, skipping interim (1xx other than 101) answers.
    async fn read_answer(&mut self, head_request: bool) -> Result<Answer, UpstreamError> {
        let mut interim = false;
        loop {
            if let Some(answer) = self.parse_answer(head_request)? {
                if answer.interim() {
                    interim = true;
                    continue;
                }
                return Ok(answer);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(malformed("response head larger than 64 KB"));
            }
            match self.fill().await {
                Ok(0) | Err(_) if self.buf.is_empty() && !interim => {
                    return Err(UpstreamError::Closed);
                }
                Ok(0) if self.buf.is_empty() => {
                    return Err(malformed("connection closed after an interim answer"));
                }
                Ok(0) => return Err(malformed("connection closed inside the head")),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Parses a complete head at the start of the buffer, if there is one, and takes it out.
    fn parse_answer(&mut self, head_request: bool) -> Result<Option<Answer>, UpstreamError> {
        let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let (len, parsed) = match parse(&self.buf, &mut slots) {
            Ok((httparse::Status::Complete(len), parsed)) => (len, parsed),
            Ok((httparse::Status::Partial, _)) => return Ok(None),
            Err(e) => return Err(malformed(e)),
        };
        let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(malformed)?;
        let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;

        let mut connection: Vec<&[u8]> = Vec::new();
        let (mut length, mut encoded) = (None, false);
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                connection.push(h.value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // `chunked` is the one transfer coding every client understands, and the
                // header does not reach the client (hop-by-hop): any other is refused.
                let only_chunked = connection_tokens(&[h.value])
                    .all(|t| t.is_empty() || t.eq_ignore_ascii_case(b"chunked"));
                if encoded || !only_chunked {
                    return Err(malformed("unsupported Transfer-Encoding"));
                }
                encoded = true;
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let digits = h.value.trim_ascii();
                let n = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u64>().ok())
                    .ok_or_else(|| malformed("bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(malformed("conflicting Content-Length"));
                }
                length = Some(n);
            }
        }
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = match (bodiless, encoded, length) {
            (true, _, _) => Framing::Length(0),
            (false, true, _) => Framing::Chunked(Chunk::Size),
            (false, false, Some(n)) => Framing::Length(n),
            (false, false, None) => Framing::Close,
        };
        let close = connection_tokens(&connection).any(|t| t.eq_ignore_ascii_case(b"close"));
        let keep_alive =
            connection_tokens(&connection).any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
        // Transfer-Encoding and Content-Length both: the app's framing is suspect (RFC 9112
        // §6.3), so its connection is not used again.
        let reusable = !close
            && (parsed.version == Some(1) || keep_alive)
            && framing != Framing::Close
            && !(encoded && length.is_some())
            && !upgraded;

        let mut head = Vec::with_capacity(len + 32);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        head.extend_from_slice(b"\r\n");
        let mut dated = false;
        for h in parsed.headers.iter() {
            // With Transfer-Encoding, Content-Length is meaningless (and the body is decoded).
            if hop_by_hop(h.name, &connection, upgraded)
                || (encoded && h.name.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            dated |= h.name.eq_ignore_ascii_case("date");
            line(&mut head, h.name, h.value);
        }
        if upgraded {
            line(&mut head, "connection", b"upgrade");
        }
        head.truncate(head.len() - 2); // no CRLF after the last line
        self.buf.advance(len);
        Ok(Some(Answer {
            status,
            head,
            dated,
            framing,
            reusable,
        }))
    }

    /// The whole body of `n` bytes (a small one, read before answering the client).
    pub async fn read_body(&mut self, n: usize) -> Result<Bytes, UpstreamError> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(malformed("connection closed inside the body"));
            }
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// The next piece of a body framed by `framing`, reading as needed; `None` at its end.
    pub fn poll_piece(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Result<Option<Bytes>, UpstreamError>> {
        // The rest of the request body, if any, keeps going out meanwhile. A failure there only
        // means the connection is not kept: the answer is what the client is waiting for.
        if let Poll::Ready(Err(_)) = self.poll_upload(cx) {
            self.broken = true;
        }
        loop {
            match decode(framing, &mut self.buf)? {
                Piece::Data(data) => return Poll::Ready(Ok(Some(data))),
                Piece::End => return Poll::Ready(Ok(None)),
                Piece::More => {}
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(match framing {
                    Framing::Close => Ok(None),
                    _ => Err(malformed("connection closed inside the body")),
                });
            }
        }
    }

    /// The connection itself and any bytes already read from it (after a 101 answer).
    pub fn into_parts(self) -> (Box<dyn Io>, BytesMut) {
        (self.io, self.buf)
    }
}

/// Parses a response head at the start of `buf`, into header slots left uninitialised.
fn parse<'b>(
    buf: &'b [u8],
    slots: &'b mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<(httparse::Status<usize>, httparse::Response<'b, 'b>), httparse::Error> {
    let mut res = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, slots)?;
    Ok((status, res))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `raw` as an answer to a GET (or a HEAD).
    fn answer(raw: &[u8], head_request: bool) -> Result<Answer, UpstreamError> {
        let (io, _) = tokio::io::duplex(64);
        let mut conn = Conn {
            io: Box::new(io),
            buf: BytesMut::from(raw),
            upload: None,
            broken: false,
        };
        Ok(conn.parse_answer(head_request)?.expect("a complete head"))
    }

    #[test]
    fn answer_heads() {
        let a = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-App: yes\r\n\r\nhello",
            false,
        )
        .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!((a.framing, a.reusable), (Framing::Length(5), true));
        let res = a.response().unwrap();
        let h = res.headers();
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["x-app"], "yes");
        assert!(h.get("x-hop").is_none() && h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());

        let a = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::Chunked(Chunk::Size));
        assert!(
            a.response()
                .unwrap()
                .headers()
                .get("content-length")
                .is_none()
        );
        assert!(
            a.response()
                .unwrap()
                .headers()
                .get("transfer-encoding")
                .is_none()
        );
        assert!(
            !a.reusable,
            "both framings: the connection is not trusted again"
        );

        let a = answer(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!a.reusable, "Connection: close");
        let a = answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false).unwrap();
        assert!(!a.reusable, "HTTP/1.0 without keep-alive");
        let a = answer(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((a.framing, a.reusable), (Framing::Close, false));
        let a = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
        assert_eq!(a.framing, Framing::Length(0), "HEAD has no body");
        assert_eq!(a.response().unwrap().headers()["content-length"], "10");
        let a = answer(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::Length(0));
        let a = answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false).unwrap();
        assert_eq!(a.response().unwrap().headers()["upgrade"], "websocket");
        assert_eq!(a.response().unwrap().headers()["connection"], "upgrade");
        assert!(!a.reusable);

        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            assert!(
                matches!(answer(bad, false), Err(UpstreamError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
