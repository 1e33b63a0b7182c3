//! The HTTP side of tenement: the management API (JSON) served on the local control socket and
//! on the public listener.
//!
//! # Design
//! Handlers are thin: parse and validate the request (an invalid instance id is refused here,
//! before it reaches the supervisor), call the [`tenement::Supervisor`], map its error to a
//! status in one place ([`error`]).
//!
//! # Limitations
//! Subdomain routing and the reverse proxy arrive with the front-door work. Over TCP, `/api/`
//! needs a bearer token (`ten token-gen`); the control socket is trusted by its file mode.
//! Tokens are all admin tokens for now (tenant scoping, listing, revocation come later).

mod api;
mod auth;
mod conn_limit;
mod dashboard;
mod domains_api;
mod error;
mod frontdoor;
mod https;
mod logs_api;
pub mod metrics;
mod openapi;

pub use api::router;
pub use auth::{Access, PeerAddr, RateLimiter};
pub use frontdoor::{bind, front_door};
pub use https::{Https, Routable};

/// Serves the API on `listener` until `shutdown` is cancelled (in-flight requests finish).
pub async fn serve<L>(
    listener: L,
    supervisor: tenement::Supervisor,
    access: Access,
    tls: Option<std::sync::Arc<tenement_tls::Tls>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(
        listener,
        router(supervisor, access, RateLimiter::default(), tls),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}
