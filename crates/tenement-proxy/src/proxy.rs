//! Forwarding one request to an instance: bodies streamed both ways, websockets tunnelled,
//! the instance kept awake (its activity guard travels with the response body or the tunnel).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::{Body, Settings, full, log_failure, plain};
use crate::endpoint::Endpoint;
use crate::framing::Framing;
use crate::headers::{Forwarding, pairs, wants_upgrade};
use crate::pool::{Pool, Streaming};
use crate::upload::{Clock, Upload};
use crate::upstream::{Answer, Conn, UpstreamError, idempotent, request_head};

/// Response bodies up to this size (with a Content-Length) are read whole before answering.
const SMALL_BODY: u64 = 16 * 1024;

/// Proxies a request hyper parsed to the upstream `lease` names.
pub async fn forward<L: crate::Lease>(
    pool: &Arc<Pool>,
    lease: L,
    mut req: Request<Incoming>,
    forwarding: &Forwarding,
    limits: Settings,
) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // The body goes as the client framed it: with its declared length, else chunked.
    let (length, chunked) = match (body.is_end_stream(), declared) {
        (true, _) => (declared, false),
        (false, Some(n)) => (Some(n), false),
        (false, None) => (None, true),
    };
    let mut upload = (!body.is_end_stream()).then(|| Upload::new(body, chunked, limits.max_body));
    // An absolute-form target (`GET http://other.host/x`) would name another authority than
    // the Host that routed the request: the instance gets the origin form.
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let head = request_head(
        parts.method.as_str(),
        target,
        || pairs(&parts.headers),
        forwarding,
        upgrade,
        lease.host(),
        length,
        chunked,
    );
    let endpoint = lease.endpoint();
    let expired = upstream_deadline(limits.upstream_timeout, upload.as_ref().map(Upload::clock));
    let fetched = fetch(
        pool,
        endpoint,
        &head,
        &mut upload,
        &parts.method,
        upgrade,
        expired,
    );
    let (answer, reply) = match fetched.await {
        Ok(answer) => answer,
        Err(failure) => {
            log_failure(&lease, &failure);
            return plain(failure.0, failure.message());
        }
    };
    let Ok(head) = answer.response() else {
        return plain(StatusCode::BAD_GATEWAY, "the instance failed to answer");
    };
    match reply {
        Reply::Whole(bytes) => head.map(|()| full(bytes)),
        Reply::Stream(conn) => {
            let (framing, reusable) = (answer.framing, answer.reusable);
            let body = Streaming::new(conn, framing, reusable, pool.clone(), endpoint.clone());
            head.map(|()| {
                Guarded {
                    body,
                    _lease: lease,
                }
                .map_err(Into::into)
                .boxed_unsync()
            })
        }
        Reply::Switched(conn) => match client_upgrade {
            Some(client) => {
                tunnel(conn, client, lease);
                head.map(|()| full(Bytes::new()))
            }
            None => plain(
                StatusCode::BAD_GATEWAY,
                "the instance switched protocols unasked",
            ),
        },
    }
}

/// Why a request got no answer from its instance: the status to answer with, and the cause.
pub struct Failure(pub StatusCode, pub UpstreamError);

impl Failure {
    pub fn message(&self) -> &'static str {
        match self.0 {
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large",
            StatusCode::BAD_REQUEST => "the request body could not be read",
            StatusCode::GATEWAY_TIMEOUT => "the instance did not answer in time",
            StatusCode::REQUEST_TIMEOUT => "the request body stopped coming",
            _ => "the instance failed to answer",
        }
    }
}

/// Sends the request (`head`, then `upload`) and reads the answer's head, and a small body
/// whole, unless `expired` (the `upstream_timeout`) comes first.
pub async fn fetch(
    pool: &Pool,
    endpoint: &Endpoint,
    head: &[u8],
    upload: &mut Option<Upload>,
    method: &Method,
    upgrade: bool,
    expired: impl Future<Output = UpstreamError>,
) -> Result<(Answer, Reply), Failure> {
    let exchange = async {
        let (mut conn, answer) = send(pool, endpoint, head, upload, method, upgrade).await?;
        if answer.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((answer, Reply::Switched(conn)));
        }
        match answer.framing {
            Framing::Length(n) if n <= SMALL_BODY => {
                // A small body of known length is read whole, so head and body go out in one
                // write (nginx's proxy_buffering does the same); anything larger streams.
                let whole = conn.read_body(n as usize).await?;
                if answer.reusable {
                    pool.put(endpoint, conn);
                }
                Ok((answer, Reply::Whole(whole)))
            }
            _ => Ok((answer, Reply::Stream(conn))),
        }
    };
    let outcome = tokio::select! {
        biased;
        outcome = exchange => outcome,
        timeout = expired => Err(timeout),
    };
    outcome.map_err(|e| match e {
        UpstreamError::TooLarge => Failure(StatusCode::PAYLOAD_TOO_LARGE, e),
        UpstreamError::ClientStalled => Failure(StatusCode::REQUEST_TIMEOUT, e),
        UpstreamError::Client(_) => Failure(StatusCode::BAD_REQUEST, e),
        UpstreamError::TimedOut => Failure(StatusCode::GATEWAY_TIMEOUT, e),
        e => Failure(StatusCode::BAD_GATEWAY, e),
    })
}

/// Resolves once the instance has had `timeout` to answer, counted from the request body's
/// last move (`clock`): an upload that keeps moving never expires. A body that stopped coming
/// from the client is the client's fault (408), not the instance's (504).
async fn upstream_deadline(timeout: Duration, clock: Option<Clock>) -> UpstreamError {
    let mut since = Instant::now();
    loop {
        tokio::time::sleep_until((since + timeout).into()).await;
        let Some(clock) = &clock else {
            return UpstreamError::TimedOut;
        };
        match clock.last() {
            (moved, _) if moved > since => since = moved,
            (_, true) => return UpstreamError::ClientStalled,
            (_, false) => return UpstreamError::TimedOut,
        }
    }
}

/// An instance's answer past its head.
pub enum Reply {
    /// A small body, read whole.
    Whole(Bytes),
    /// A body to stream from the connection (framed as the answer says).
    Stream(Conn),
    /// `101 Switching Protocols`: the connection is now the other protocol's.
    Switched(Conn),
}

/// Sends the request on a pooled connection (a new one for upgrades, which are never pooled).
/// When a kept-alive connection turns out closed, the request goes once more on a new one: if
/// its head could not be written, or (body-less idempotent requests only, as nginx does) if
/// the connection closed before any answer.
async fn send(
    pool: &Pool,
    endpoint: &Endpoint,
    head: &[u8],
    upload: &mut Option<Upload>,
    method: &Method,
    upgrade: bool,
) -> Result<(Conn, Answer), UpstreamError> {
    let (mut conn, reused) = if upgrade {
        (Conn::open(endpoint).await?, false)
    } else {
        pool.checkout(endpoint).await?
    };
    match conn.exchange(head, upload, method).await {
        Ok(answer) => return Ok((conn, answer)),
        Err(UpstreamError::Send(_)) if reused => {}
        Err(UpstreamError::Closed) if reused && upload.is_none() && idempotent(method) => {}
        Err(e) => return Err(e),
    }
    let mut conn = Conn::open(endpoint).await?;
    let answer = conn.exchange(head, upload, method).await?;
    Ok((conn, answer))
}

/// How long a tunnel outlives one side's close while nothing comes from the other: a websocket
/// whose close handshake is done, but whose client keeps its socket, must not keep the instance
/// awake (and two descriptors open) for ever.
const HALF_CLOSED_IDLE: Duration = Duration::from_secs(10);

/// Websocket (or any `Upgrade`) after the instance's 101: bytes copied both ways while both
/// sides keep it open, with the instance counted as active throughout; once one side has
/// closed, the other direction goes on until it is done or idle for [`HALF_CLOSED_IDLE`].
fn tunnel(conn: Conn, client: hyper::upgrade::OnUpgrade, lease: impl crate::Lease) {
    let (upstream, early) = conn.into_parts();
    tokio::spawn(async move {
        let _lease = lease;
        let Ok(client) = client.await else {
            return;
        };
        let mut client = TokioIo::new(client);
        // Whatever the instance sent right after its 101 came in with the head.
        if !early.is_empty() && client.write_all(&early).await.is_err() {
            return;
        }
        let ((mut from_client, mut to_client), (mut from_app, mut to_app)) =
            (tokio::io::split(client), tokio::io::split(upstream));
        let (closing, _) = tokio::sync::watch::channel(false);
        tokio::join!(
            async {
                pipe(&mut from_client, &mut to_app, closing.subscribe()).await;
                closing.send_replace(true);
            },
            async {
                pipe(&mut from_app, &mut to_client, closing.subscribe()).await;
                closing.send_replace(true);
            },
        );
    });
}

/// Copies `from` to `to` until EOF or an error, then shuts `to` down for writing. Once
/// `closing` (the other direction has ended), a wait of [`HALF_CLOSED_IDLE`] for more ends it.
async fn pipe(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let read = if *closing.borrow() {
            match tokio::time::timeout(HALF_CLOSED_IDLE, from.read(&mut buf)).await {
                Ok(read) => read,
                Err(_idle) => break,
            }
        } else {
            tokio::select! {
                read = from.read(&mut buf) => read,
                // (A read is cancel-safe: it starts again, now with the idle limit.)
                _ = closing.changed() => continue,
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) if to.write_all(&buf[..n]).await.is_err() => break,
            Ok(_) => {}
        }
    }
    let _ = to.shutdown().await;
}

/// `body`, holding `held` until it is finished or dropped.
pub(crate) fn hold<L: Send + Unpin + 'static>(body: Body, held: L) -> Body {
    Guarded { body, _lease: held }.boxed_unsync()
}

/// A response body that holds its lease (and so keeps its upstream awake) until it is
/// finished or dropped.
struct Guarded<B, L> {
    body: B,
    _lease: L,
}

impl<B: HttpBody<Data = Bytes> + Unpin, L: Unpin> HttpBody for Guarded<B, L> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    async fn once(pool: &Pool, endpoint: &Endpoint, method: Method) -> Result<u16, String> {
        let head = format!("{method} / HTTP/1.1\r\nhost: a.web.example.com\r\n\r\n");
        let (mut conn, answer) = send(pool, endpoint, head.as_bytes(), &mut None, &method, false)
            .await
            .map_err(|e| e.to_string())?;
        conn.read_body(2).await.unwrap();
        pool.put(endpoint, conn);
        Ok(answer.status.as_u16())
    }

    #[tokio::test]
    async fn a_dead_kept_alive_connection_is_retried_only_for_idempotent_requests() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::unix_any(dir.path().join("app.sock"));
        let Endpoint::Unix(path, _) = &endpoint else {
            unreachable!()
        };
        // The app answers the first request on each connection, then reads the next one and
        // closes without answering: a kept-alive connection that dies under the next request.
        let conns = crate::pool::tests::app(path, vec![true, false]);
        let pool = Pool::default();
        assert_eq!(once(&pool, &endpoint, Method::GET).await, Ok(200));
        // The pooled connection dies under this GET: it goes again on a new connection.
        assert_eq!(once(&pool, &endpoint, Method::GET).await, Ok(200));
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // A POST the app may have acted on is never sent twice.
        let err = once(&pool, &endpoint, Method::POST).await.unwrap_err();
        assert!(err.contains("closed before an answer"), "{err}");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }
}
