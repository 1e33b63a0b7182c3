//! The front door's own HTTP/1.1 loop for what most traffic is: body-less requests proxied to
//! an instance. Every client connection starts here. The first request that is anything else
//! (a body, an upgrade, `Expect`, HTTP/1.0, two `Host` headers, tenement's own endpoints, a head
//! that does not parse) hands the connection, with the bytes already read, to hyper for the
//! rest of its life, so hyper answers everything unusual exactly as before.
//!
//! Why: hyper's server side cost ~9k of the ~25k instructions of a proxied request
//! (callgrind). Here the head is parsed by httparse and copied to the instance as it came,
//! the answer's head is written out directly, and the header-read timeout is one timer per
//! connection, moved on only when it fires.

use std::cell::RefCell;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::conn::{Client, ClientStream, Engine, Rewind, log_failure};
use crate::framing::Framing;
use crate::headers::{connection_tokens, line};
use crate::proxy::{Reply, fetch};
use crate::upstream::{Answer, Conn, UpstreamError, request_head};
use crate::{Lease, Resolve, Route};

/// Most header lines in a request head the fast path takes (hyper's limit too).
pub(crate) const MAX_HEADERS: usize = 100;

/// Serves one client connection until it closes, idles past `header_timeout`, or `shutdown`.
pub(crate) async fn serve<R: Resolve, S: ClientStream>(
    door: Arc<Engine<R>>,
    mut stream: S,
    client: Arc<Client>,
    shutdown: CancellationToken,
) {
    let mut buf = BytesMut::new();
    // Bytes of `buf` known not to end a head: after a partial parse, httparse runs again only
    // once a blank line has come (a head trickling in is not rescanned for every byte).
    let mut scanned = None;
    let mut waiting_since = Instant::now();
    let timer = tokio::time::sleep(door.settings.header_timeout);
    let stopping = shutdown.clone().cancelled_owned();
    let mut draining = false;
    tokio::pin!(timer, stopping);
    loop {
        // Parsed in place: the head's bytes stay in `buf` while the request is proxied.
        let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let parsed = match scanned {
            Some(from) if !ends_head(&buf, from) => Ok((httparse::Status::Partial, None)),
            _ => parse(&buf, &mut slots).map(|(status, req)| (status, Some(req))),
        };
        match parsed {
            Ok((httparse::Status::Complete(len), Some(req))) => {
                // Over max_header_kb (it came in one read): hyper answers 431, as it would.
                let plan = (len <= door.settings.max_head)
                    .then(|| plan(&door.resolver, &req))
                    .flatten();
                let Some(mut plan) = plan else {
                    let read = buf.freeze();
                    let io = Rewind { read, stream };
                    return door.serve_hyper(io, client, shutdown).await;
                };
                // Shutting down: this answer says so, and is the last.
                plan.close |= shutdown.is_cancelled();
                let close = plan.close;
                let (mut reader, mut writer) = stream.halves();
                let served = proxy(&door, &client, &req, plan, &mut writer, timer.as_mut());
                let mut early = Vec::new();
                let keep = if buf.len() == len {
                    // Nothing more from the client yet: if it hangs up meanwhile (a long poll
                    // or stream abandoned), the request is dropped, and with it the instance's
                    // activity and the upstream connection, as hyper does.
                    tokio::select! {
                        biased;
                        keep = served => keep,
                        () = hung_up(&mut reader, &mut early) => false,
                    }
                } else {
                    served.await
                };
                if !keep || close {
                    return;
                }
                buf.advance(len); // a pipelined next request may follow
                buf.extend_from_slice(&early);
                scanned = None;
                waiting_since = Instant::now();
                // The timer may have been moved on for the answer: bring it back.
                let due = (waiting_since + door.settings.header_timeout).into();
                if timer.deadline() > due {
                    timer.as_mut().reset(due);
                }
                continue;
            }
            Ok((httparse::Status::Partial, _)) if buf.len() <= door.settings.max_head => {
                scanned = Some(buf.len());
            }
            // Malformed or oversized: hyper answers it (400, 431).
            _ => {
                let io = Rewind {
                    read: buf.freeze(),
                    stream,
                };
                return door.serve_hyper(io, client, shutdown).await;
            }
        }
        buf.reserve(4096);
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            () = &mut timer => {
                // No whole head within header_timeout of the last answer: closed, as hyper
                // does. (The timer is moved on only when it fires.)
                let deadline = waiting_since + door.settings.header_timeout;
                if draining || Instant::now() >= deadline {
                    return;
                }
                timer.as_mut().reset(deadline.into());
            }
            () = &mut stopping, if !draining => {
                // Shutting down (or handing over): a request already on its way, on a
                // connection just accepted or kept alive, is still answered (with `close`);
                // only a connection that stays quiet for LAST_CALL is closed. Closing at once
                // would reset those requests.
                draining = true;
                let last = tokio::time::Instant::now() + LAST_CALL;
                if timer.deadline() > last {
                    timer.as_mut().reset(last);
                }
            }
        }
    }
}

/// How long a quiet connection stays open once the front door stops accepting.
const LAST_CALL: Duration = Duration::from_secs(1);

/// Whether `buf` may hold a whole head: a blank line (`\n\n` or `\n\r\n`) in the bytes from
/// `from` on (or just before it).
fn ends_head(buf: &[u8], from: usize) -> bool {
    let mut at = from.saturating_sub(3);
    while let Some(nl) = buf[at..].iter().position(|b| *b == b'\n') {
        at += nl + 1;
        match buf.get(at) {
            Some(b'\n') => return true,
            Some(b'\r') if buf.get(at + 1) == Some(&b'\n') => return true,
            _ => {}
        }
    }
    false
}

/// Returns once the client has closed its side (or its connection failed); never if it sends
/// more (a pipelined request: it is still there, read into `early`).
async fn hung_up(reader: &mut (impl AsyncRead + Unpin), early: &mut Vec<u8>) {
    let mut read = [0u8; 1024];
    if let Ok(n @ 1..) = reader.read(&mut read).await {
        early.extend_from_slice(&read[..n]);
        std::future::pending::<()>().await;
    }
}

/// Parses a request head at the start of `buf`, into header slots left uninitialised.
pub(crate) fn parse<'b>(
    buf: &'b [u8],
    slots: &'b mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<(httparse::Status<usize>, httparse::Request<'b, 'b>), httparse::Error> {
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, slots)?;
    Ok((status, req))
}

/// A request the fast path proxies.
pub(crate) struct Plan<T> {
    target: T,
    pub(crate) method: Method,
    /// The client asked to close the connection after this request.
    close: bool,
    /// `Content-Length: 0` as sent (kept for apps that want it on a POST).
    pub(crate) length: Option<u64>,
}

/// Whether the fast path takes this request: HTTP/1.1, origin-form target, one Host routed
/// to an instance or service, no body, no upgrade, no `Expect`.
pub(crate) fn plan<R: Resolve>(
    resolver: &R,
    req: &httparse::Request<'_, '_>,
) -> Option<Plan<R::Target>> {
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let path = req.path?;
    // Origin form of plain URI characters only: anything else (a fragment, characters a URI
    // may not hold, an absolute or asterisk form, a huge target) is hyper's to judge.
    if method == Method::CONNECT
        || !path.starts_with('/')
        || path.len() > 65_534
        || !path.bytes().all(uri_char)
    {
        return None;
    }
    let (mut host, mut close, mut length) = (None, false, None);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.replace(h.value).is_some() {
                return None;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() || h.value.trim_ascii() != b"0" {
                return None;
            }
            length = Some(0);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= connection_tokens(&[h.value]).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
    }
    let host = std::str::from_utf8(host?).ok()?;
    let route_path = path.split_once('?').map_or(path, |(p, _)| p);
    match resolver.route(Some(host), route_path) {
        Route::Upstream(target) => Some(Plan {
            target,
            method,
            close,
            length,
        }),
        _ => None,
    }
}

/// RFC 3986 unreserved, sub-delims, `:@/?%`.
fn uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Proxies one request and answers it; whether the connection can carry another.
async fn proxy<R: Resolve>(
    door: &Engine<R>,
    client: &Client,
    req: &httparse::Request<'_, '_>,
    plan: Plan<R::Target>,
    stream: &mut (impl AsyncWrite + Unpin),
    timer: Pin<&mut Sleep>,
) -> bool {
    let started = Instant::now();
    let head_request = plan.method == Method::HEAD;
    let mut out = Vec::with_capacity(1024);
    let (status, keep) = match door.resolver.lease(&plan.target).await {
        Err(e) => {
            plain(&mut out, e.status, &e.message, plan.close, head_request);
            (e.status, stream.write_all(&out).await.is_ok())
        }
        Ok(lease) => {
            let upstream = request_head(
                plan.method.as_str(),
                req.path.unwrap_or("/"),
                || req.headers.iter().map(|h| (h.name, h.value)),
                &client.forwarding,
                false,
                lease.host(),
                plan.length,
                false,
            );
            let (endpoint, mut no_body) = (lease.endpoint(), None);
            let expired = async {
                lapse(timer, started + door.settings.upstream_timeout).await;
                UpstreamError::TimedOut
            };
            let fetched = fetch(
                &door.pool,
                endpoint,
                &upstream,
                &mut no_body,
                &plan.method,
                false,
                expired,
            );
            match fetched.await {
                Err(failure) => {
                    log_failure(&lease, &failure);
                    plain(
                        &mut out,
                        failure.0,
                        failure.message(),
                        plan.close,
                        head_request,
                    );
                    (failure.0, stream.write_all(&out).await.is_ok())
                }
                Ok((_, Reply::Switched(_))) => {
                    let status = StatusCode::BAD_GATEWAY;
                    let msg = "the instance switched protocols unasked";
                    plain(&mut out, status, msg, plan.close, head_request);
                    (status, stream.write_all(&out).await.is_ok())
                }
                Ok((answer, Reply::Whole(body))) => {
                    answer_head(&mut out, &answer, false, plan.close);
                    out.extend_from_slice(&body);
                    (answer.status, stream.write_all(&out).await.is_ok())
                }
                Ok((answer, Reply::Stream(mut conn))) => {
                    // Counted when the head is ready, as on hyper's path (a stream may be long).
                    door.resolver.record(&plan.target, answer.status, started);
                    let chunked = !matches!(answer.framing, Framing::Length(_));
                    answer_head(&mut out, &answer, chunked, plan.close);
                    let sent = stream.write_all(&out).await.is_ok()
                        && relay(&mut conn, answer.framing, chunked, stream).await;
                    if sent && answer.reusable {
                        door.pool.put(endpoint, conn);
                    }
                    return sent;
                }
            }
            // The lease (and with it the instance's activity) ends here, the body sent.
        }
    };
    door.resolver.record(&plan.target, status, started);
    keep
}

/// Resolves at `deadline`, on the connection's one timer (the header timer, idle while a
/// request is proxied): moved to `deadline` only when it fires earlier, so a request that is
/// answered in time costs no timer work.
async fn lapse(mut timer: Pin<&mut Sleep>, deadline: Instant) {
    let deadline = deadline.into();
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    loop {
        timer.as_mut().await;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        timer.as_mut().reset(deadline);
    }
}

/// Copies a streamed body from the instance to the client, chunk-framed when its length is
/// not known; whether it all went through.
async fn relay(
    conn: &mut Conn,
    mut framing: Framing,
    chunked: bool,
    to: &mut (impl AsyncWrite + Unpin),
) -> bool {
    let mut framed = Vec::new();
    loop {
        let piece = match poll_fn(|cx| conn.poll_piece(cx, &mut framing)).await {
            Ok(piece) => piece,
            // The instance failed mid-body: closing the connection tells the client.
            Err(_) => return false,
        };
        let written = match (piece, chunked) {
            (Some(data), false) => to.write_all(&data).await,
            (Some(data), true) => {
                framed.clear();
                framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                framed.extend_from_slice(&data);
                framed.extend_from_slice(b"\r\n");
                to.write_all(&framed).await
            }
            (None, true) => return to.write_all(b"0\r\n\r\n").await.is_ok(),
            (None, false) => return true,
        };
        if written.is_err() {
            return false;
        }
    }
}

/// The head of the instance's answer, for the client: `chunked` when the front door frames
/// the body, `close` when the client asked to close after it.
fn answer_head(out: &mut Vec<u8>, answer: &Answer, chunked: bool, close: bool) {
    out.extend_from_slice(&answer.head);
    out.extend_from_slice(b"\r\n");
    if !answer.dated {
        date(out);
    }
    if chunked {
        line(out, "transfer-encoding", b"chunked");
    }
    if close {
        line(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// A short plain-text answer of the front door's own (the fast path's twin of
/// [`crate::proxy::plain`]).
fn plain(out: &mut Vec<u8>, status: StatusCode, msg: &str, close: bool, head_request: bool) {
    status_line(out, status);
    line(out, "content-type", b"text/plain; charset=utf-8");
    line(
        out,
        "content-length",
        (msg.len() + 1).to_string().as_bytes(),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        line(out, "retry-after", b"5");
    }
    date(out);
    if close {
        line(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(msg.as_bytes());
        out.push(b'\n');
    }
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A `Date` header, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        line(out, "date", text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_line_is_found_however_the_head_arrives() {
        let head = b"GET / HTTP/1.1\r\nHost: a.web.example.com\r\n\r\n";
        assert!(ends_head(head, 0));
        assert!(!ends_head(&head[..head.len() - 1], 0));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        // The blank line completed by the last byte read, its start read earlier.
        for split in head.len() - 4..head.len() {
            assert!(ends_head(head, split), "new bytes from {split}");
        }
        assert!(ends_head(b"GET / HTTP/1.1\nHost: a\n\n", 10), "bare LF");
    }

    #[test]
    fn only_plain_uri_characters_take_the_fast_path() {
        assert!(
            b"/a/b-c_d.e~f?x=1&y=%20;z@:!$'()*+,"
                .iter()
                .all(|b| uri_char(*b))
        );
        for b in [b'#', b'<', b'>', b'"', b'`', b' ', b'{', b'\\', 0x80] {
            assert!(!uri_char(b), "{}", b as char);
        }
    }
}
