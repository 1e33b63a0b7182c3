//! `ten serve`'s public listener: every request is routed by its Host header and path
//! ([`tenement_core::route`]) to tenement itself (API, `/health`, dashboard) or proxied to an
//! instance, which is woken first if it sleeps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tenement::{Error, Supervisor};
use tenement_core::route::{RouteError, Router, Target};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use crate::pool::{Pool, pool};
use crate::proxy::{Limits, forward, plain};
use crate::{Access, router};

struct FrontDoor {
    supervisor: Supervisor,
    routes: Router,
    api: axum::Router,
    pool: Pool,
    limits: Limits,
}

/// Serves the front door on `listener` for `domain` until `shutdown`; then stops accepting and
/// lets open connections finish (at most 10 s).
pub async fn front_door(
    listener: TcpListener,
    supervisor: Supervisor,
    domain: &str,
    shutdown: CancellationToken,
) {
    let config = supervisor.config();
    let s = &config.settings;
    let routes = Router::new(
        domain,
        config.routing.clone(),
        config.services.keys().cloned(),
    );
    let limits = Limits {
        max_body: (s.max_body_mb as usize).saturating_mul(1024 * 1024),
        upstream_timeout: Duration::from_secs(s.upstream_timeout),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(s.header_timeout))
        .max_buf_size((s.max_header_kb as usize * 1024).max(8192))
        .keep_alive(true);
    let door = Arc::new(FrontDoor {
        api: router(supervisor.clone(), Access::Network),
        supervisor,
        routes,
        pool: pool(),
        limits,
    });
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let door = door.clone();
        let service = service_fn(move |req| {
            let door = door.clone();
            async move { Ok::<_, Infallible>(door.handle(req, peer).await) }
        });
        let mut conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let result = tokio::select! {
                r = &mut conn => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in progress, then close.
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), connections.wait()).await;
}

impl FrontDoor {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let target = match self.routes.route(host.as_deref(), req.uri().path()) {
            Ok(t) => t,
            Err(e @ RouteError::BadHost(_)) => {
                return plain(StatusCode::BAD_REQUEST, &e.to_string());
            }
            Err(e) => return plain(StatusCode::NOT_FOUND, &e.to_string()),
        };
        let lease = match target {
            Target::Building => {
                return match self.api.clone().oneshot(req.map(Body::new)).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
            }
            Target::Instance(key) => self.supervisor.lease(&key).await,
            Target::Service(service) => self.supervisor.lease_service(&service).await,
        };
        match lease {
            Ok(lease) => {
                forward(
                    &self.pool,
                    lease,
                    req,
                    peer,
                    host.as_deref().unwrap_or(""),
                    self.limits,
                )
                .await
            }
            Err(e) => unavailable(e),
        }
    }
}

fn unavailable(e: Error) -> Response<Body> {
    let status = match &e {
        Error::NotFound(_) | Error::UnknownService(_) => StatusCode::NOT_FOUND,
        Error::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    plain(status, &e.to_string())
}
