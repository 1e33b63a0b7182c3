//! tenement's proxy engine: HTTP/1.1 from clients (plain TCP or any other stream, such as TLS),
//! each request routed through a [`Resolve`] seam to an upstream on a Unix socket or TCP,
//! bodies streamed both ways, websockets tunnelled, upstream connections pooled.
//!
//! # Design
//! - [`Resolve`] is the only thing the engine asks of its user: where a request goes
//!   ([`Route`]), an upstream for it ([`Resolve::lease`], which may wait, e.g. to wake an
//!   instance), the server's own requests ([`Resolve::local`]) and what to count
//!   ([`Resolve::record`]). `ten serve`'s front door implements it over the supervisor; a fleet
//!   router implements it over its placement.
//! - Every connection starts on the fast path ([`fast`]), an HTTP/1.1 loop of its own for
//!   body-less proxied requests; anything else goes to hyper for the rest of the connection.
//!   [`Settings::fast_path`] turns it off (hyper serves every request).
//! - The upstream side is HTTP/1.1 written and parsed here ([`upstream`], [`framing`]): one
//!   task per request, no connection task, a body read only as the client takes it.
//!
//! # Limitations
//! Clients speak HTTP/1.1 (or 1.0); upstreams HTTP/1.1 only.

mod conn;
mod endpoint;
mod fast;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod headers;
mod pool;
mod proxy;
mod unix_conn;
mod upload;
mod upstream;

use std::future::Future;
use std::time::Instant;

use hyper::StatusCode;

pub use conn::{Body, BoxError, ClientStream, Engine, Joined, Settings, Transport, plain};
pub use endpoint::{Anyone, Endpoint, Io, Verify, connect_unix};

/// Where requests go: what the engine asks of the server it runs in.
pub trait Resolve: Send + Sync + 'static {
    /// What a routed request is for (an instance, a service...).
    type Target: Send + Sync + 'static;
    /// An upstream leased for one request. It is dropped once the answer (body, tunnel) is
    /// done: whatever keeps the upstream awake meanwhile lives in it.
    type Lease: Lease;

    /// Where a request for `host` (`None`: an HTTP/1.0 request without one) and `path` goes.
    /// Called on every request: keep it cheap.
    fn route(&self, host: Option<&str>, path: &str) -> Route<Self::Target>;

    /// An upstream for `target`, ready for the request (it may wait, e.g. for a wake).
    fn lease(
        &self,
        target: &Self::Target,
    ) -> impl Future<Output = Result<Self::Lease, Unavailable>> + Send;

    /// Answers a request routed [`Route::Local`] (the server's own API, health, metrics...).
    fn local(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        peer: std::net::SocketAddr,
    ) -> impl Future<Output = hyper::Response<Body>> + Send;

    /// A proxied request for `target` was answered with `status` (its head, for a stream).
    fn record(&self, target: &Self::Target, status: StatusCode, started: Instant) {
        let _ = (target, status, started);
    }

    /// A place for one more HTTP/2 stream from `peer` (held until its answer is done), or
    /// `None` when that address has too much in flight: an HTTP/2 connection carries many
    /// requests at once, so a cap on connections alone does not bound one client. The
    /// default admits every stream.
    fn admit_stream(&self, peer: std::net::IpAddr) -> Option<Box<dyn Send + Unpin>> {
        let _ = peer;
        Some(Box::new(()))
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<T> {
    /// Proxied to an upstream leased for `T`.
    Upstream(T),
    /// Answered by the server itself ([`Resolve::local`]).
    Local,
    /// Answered at once with this status and message (an unknown name: 404, a bad one: 400).
    Refused(StatusCode, String),
}

/// An upstream leased for a request; shown in the log when it fails.
pub trait Lease: std::fmt::Display + Send + Unpin + 'static {
    fn endpoint(&self) -> &Endpoint;

    /// The `Host` the upstream gets instead of the client's (which stays in the forwarding
    /// headers): `None` keeps the client's.
    fn host(&self) -> Option<&str> {
        None
    }
}

/// Why no upstream could be leased: the status and message the client gets.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub status: StatusCode,
    pub message: String,
}
