//! Connections to instances: a keep-alive pool per instance endpoint (hyper-util's pooled
//! client with a connector that dials the instance's Unix socket or TCP port), and one-off
//! connections for protocol upgrades.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::Uri;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tenement::probe::{Endpoint, Io};

/// Idle connections kept per instance.
const IDLE_PER_INSTANCE: usize = 64;

pub type Pool = Client<Connector, Body>;

pub fn pool() -> Pool {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_INSTANCE)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(Connector)
}

/// The URI authority that names `endpoint` in the pool (one pool per authority).
pub fn authority(endpoint: &Endpoint) -> String {
    let raw = match endpoint {
        Endpoint::Unix(p) => format!("u{}", p.display()),
        Endpoint::Tcp(port) => format!("t{port}"),
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(raw.len() * 2);
    for b in raw.bytes() {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

fn endpoint_of(uri: &Uri) -> Option<Endpoint> {
    let hex = uri.host()?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    match raw.split_at_checked(1)? {
        ("u", path) => Some(Endpoint::Unix(path.into())),
        ("t", port) => port.parse().ok().map(Endpoint::Tcp),
        _ => None,
    }
}

/// Dials the endpoint encoded in the URI's authority.
#[derive(Clone, Copy)]
pub struct Connector;

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let endpoint = endpoint_of(&uri)
                .ok_or_else(|| std::io::Error::other(format!("not an instance address: {uri}")))?;
            Ok(Conn(TokioIo::new(endpoint.connect().await?)))
        })
    }
}

/// A connection to an instance.
pub struct Conn(TokioIo<Box<dyn Io>>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A new connection that can switch protocols (websockets), outside the pool.
pub async fn connect_upgradable(endpoint: &Endpoint) -> std::io::Result<SendRequest<Body>> {
    let io = endpoint.connect().await?;
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip_through_the_authority() {
        for e in [
            Endpoint::Unix("/tmp/tenement/api-prod.sock".into()),
            Endpoint::Tcp(30001),
        ] {
            let uri: Uri = format!("http://{}/x?y", authority(&e)).parse().unwrap();
            assert_eq!(endpoint_of(&uri), Some(e));
        }
    }
}
