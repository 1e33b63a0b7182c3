//! Forwarding one request to an instance: bodies streamed both ways, websockets tunnelled,
//! the instance kept awake (its activity guard travels with the response body or the tunnel).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tenement::{ActivityGuard, Lease};
use tracing::debug;

use crate::headers::{Forwarding, strip_hop_by_hop, wants_upgrade};
use crate::pool::{Pool, Returning, Sender, UpstreamError, connect};

/// Front-door limits, from `[settings]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub upstream_timeout: Duration,
}

/// Response bodies up to this size (with a Content-Length) are read whole before answering.
const SMALL_BODY: usize = 16 * 1024;

/// A short plain-text answer.
pub fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut res = Response::new(Body::from(format!("{msg}\n")));
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

pub async fn forward(
    pool: &Arc<Pool>,
    lease: Lease,
    mut req: Request<Incoming>,
    forwarding: &Forwarding,
    limits: Limits,
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
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    forwarding.apply(&mut parts.headers);
    // An absolute-form target (`GET http://other.host/x`) would name another authority than
    // the Host that routed it: the app gets the origin form, as routed.
    if parts.uri.authority().is_some() {
        let origin = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match origin.parse() {
            Ok(uri) => uri,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request target"),
        };
    }
    if let Some(client_upgrade) = client_upgrade {
        return tunnel(lease, parts, client_upgrade, limits).await;
    }
    let body = if body.is_end_stream() {
        Body::empty()
    } else {
        Body::new(Limited::new(body, limits.max_body))
    };
    let out = Request::from_parts(parts, body);
    let exchange = async {
        let (res, sender) = pool.send(lease.endpoint(), out).await?;
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let small = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n <= SMALL_BODY);
        if !small {
            return Ok::<_, UpstreamError>((parts, Reply::Stream(body, sender)));
        }
        // A small body of known length is read whole, so head and body go out in one write
        // (nginx's proxy_buffering does the same); anything larger or open-ended streams.
        let whole = body.collect().await?.to_bytes();
        pool.put(lease.endpoint(), sender);
        Ok((parts, Reply::Whole(whole)))
    };
    match tokio::time::timeout(limits.upstream_timeout, exchange).await {
        Ok(Ok((parts, Reply::Whole(bytes)))) => Response::from_parts(parts, Body::from(bytes)),
        Ok(Ok((parts, Reply::Stream(body, sender)))) => {
            let body = Returning::new(body, pool.clone(), lease.endpoint().clone(), sender);
            Response::from_parts(
                parts,
                Body::new(Guarded {
                    body,
                    _guard: lease.guard,
                }),
            )
        }
        Ok(Err(e)) => {
            debug!(instance = %lease.key(), error = %e, "upstream failed");
            plain(StatusCode::BAD_GATEWAY, "the instance failed to answer")
        }
        Err(_) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "the instance did not answer in time",
        ),
    }
}

/// An instance's answer: read whole, or streamed on the connection it came on.
enum Reply {
    Whole(Bytes),
    Stream(Incoming, Sender),
}

/// Websocket (or any `Upgrade`): a fresh connection, then bytes copied both ways for as long
/// as either side keeps it open, with the instance counted as active throughout.
async fn tunnel(
    lease: Lease,
    parts: hyper::http::request::Parts,
    client_upgrade: hyper::upgrade::OnUpgrade,
    limits: Limits,
) -> Response<Body> {
    let out = Request::from_parts(parts, Body::empty());
    let mut sender = match connect(lease.endpoint(), true).await {
        Ok(s) => s,
        Err(_) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                "the instance is not accepting connections",
            );
        }
    };
    let mut res =
        match tokio::time::timeout(limits.upstream_timeout, sender.send_request(out)).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => return plain(StatusCode::BAD_GATEWAY, "the instance failed to answer"),
            Err(_) => {
                return plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the instance did not answer in time",
                );
            }
        };
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(
            parts,
            Body::new(Guarded {
                body,
                _guard: lease.guard,
            }),
        );
    }
    let upstream_upgrade = hyper::upgrade::on(&mut res);
    let guard = lease.guard;
    tokio::spawn(async move {
        let _guard = guard;
        let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
            return;
        };
        let _ =
            tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream))
                .await;
    });
    let (mut parts, _) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers, true);
    Response::from_parts(parts, Body::empty())
}

/// A response body that keeps its instance awake until it is finished or dropped.
struct Guarded<B> {
    body: B,
    _guard: ActivityGuard,
}

impl<B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin> HttpBody for Guarded<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
