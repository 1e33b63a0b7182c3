//! `ten serve`'s public listener: every request is routed by its Host header and path
//! ([`tenement_core::route`]) to tenement itself (API, `/health`, dashboard) or proxied to an
//! instance, which is woken first if it sleeps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tenement::{Error, Lease, Supervisor};
use tenement_core::route::{RouteError, Router, Target};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use crate::error::ApiError;
use crate::headers::Forwarding;
use crate::metrics::{KindLabel, Metrics, RequestFigures, ServiceLabel};
use crate::pool::{Pool, SWEEP_EVERY};
use crate::proxy::{Limits, forward, plain};
use crate::{Access, router};

pub(crate) struct FrontDoor {
    supervisor: Supervisor,
    metrics: Arc<Metrics>,
    /// The routes, and the configuration generation they were built from (a reload builds
    /// them anew: [`FrontDoor::routes`]).
    routes: std::sync::Mutex<(u64, Arc<Router>)>,
    domain: String,
    api: axum::Router,
    pub(crate) pool: Arc<Pool>,
    figures: RequestFigures,
    pub(crate) limits: Limits,
    /// The largest request head accepted (`max_header_kb`).
    pub(crate) max_head: usize,
    pub(crate) header_timeout: Duration,
}

/// One client connection.
pub(crate) struct Client {
    peer: SocketAddr,
    pub(crate) forwarding: Forwarding,
}

/// Binds the front door: one listening socket per worker thread, all on `addr`
/// (`SO_REUSEPORT`, so the kernel spreads connections over them). Port 0 picks one port for all.
pub fn bind(addr: SocketAddr, threads: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = bind_family(addr, threads, false)?;
    let port = out[0].local_addr()?.port();
    // An IPv4 front door leaves the port free on IPv6, where any local program (a tenant)
    // could listen (IPV6_V6ONLY) and take every client that comes over IPv6: hold it too.
    let v6 = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => Some(std::net::Ipv6Addr::UNSPECIFIED),
        std::net::IpAddr::V4(ip) if ip.is_loopback() => Some(std::net::Ipv6Addr::LOCALHOST),
        _ => None,
    };
    if let Some(ip) = v6 {
        match bind_family(SocketAddr::new(ip.into(), port), threads, true) {
            Ok(more) => out.extend(more),
            // A host without IPv6: nobody can listen there either.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `threads` listeners on `addr` in one SO_REUSEPORT group; `v6only` for an IPv6 address.
fn bind_family(
    addr: SocketAddr,
    threads: usize,
    v6only: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use nix::sys::socket::{
        self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, sockopt,
    };
    if addr.port() != 0 && !v6only {
        // Another front door's sockets (same user, SO_REUSEPORT) would let ours join them and
        // split its traffic: a plain bind finds any listener there, and fails.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut port = addr.port();
    let mut out = Vec::with_capacity(threads);
    for _ in 0..threads.max(1) {
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
        if v6only {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        }
        let at = SockaddrStorage::from(SocketAddr::new(addr.ip(), port));
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &at)?;
        socket::listen(&fd, Backlog::new(1024)?)?;
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(true)?;
        port = listener.local_addr()?.port();
        out.push(listener);
    }
    Ok(out)
}

/// Serves the front door on `listeners`, each on a thread with its own single-threaded
/// runtime and connection pool (no cross-thread wake-ups on the request path), until
/// `shutdown`; then stops accepting and lets open connections, websockets and streams finish
/// (at most [`DRAIN`]).
pub async fn front_door(
    listeners: Vec<std::net::TcpListener>,
    supervisor: Supervisor,
    domain: &str,
    shutdown: CancellationToken,
) {
    let config = supervisor.config();
    let s = &config.settings;
    let limits = Limits {
        max_body: (s.max_body_mb as usize).saturating_mul(1024 * 1024),
        upstream_timeout: Duration::from_secs(s.upstream_timeout),
    };
    let (header_timeout, max_buf) = (
        Duration::from_secs(s.header_timeout),
        (s.max_header_kb as usize * 1024).max(8192),
    );
    let mut threads = Vec::new();
    let metrics = Metrics::new(supervisor.clone());
    let limiter = crate::RateLimiter::default();
    let conn_limit =
        crate::conn_limit::ConnLimit::from_settings(s, metrics.connections_refused.clone());
    tracing::info!(
        max_connections = conn_limit.max(),
        "front door connection cap"
    );
    for (i, listener) in listeners.into_iter().enumerate() {
        let door = FrontDoor {
            metrics: metrics.clone(),
            routes: std::sync::Mutex::new((
                supervisor.config_generation(),
                Arc::new(Router::new(
                    domain,
                    config.routing.clone(),
                    config.services.keys().cloned(),
                )),
            )),
            domain: domain.to_owned(),
            api: router(supervisor.clone(), Access::Network, limiter.clone()),
            supervisor: supervisor.clone(),
            pool: Arc::default(),
            figures: RequestFigures::default(),
            limits,
            max_head: max_buf,
            header_timeout,
        };
        let shutdown = shutdown.clone();
        let conn_limit = conn_limit.clone();
        let thread = std::thread::Builder::new()
            .name(format!("front-door-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("a listening socket");
                    accept_loop(listener, Arc::new(door), conn_limit, shutdown).await
                })
            });
        threads.extend(thread.ok());
    }
    let _ =
        tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
}

async fn accept_loop(
    listener: TcpListener,
    door: Arc<FrontDoor>,
    limit: Arc<crate::conn_limit::ConnLimit>,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(door.header_timeout)
        .max_buf_size(door.max_head)
        .keep_alive(true);
    let connections = tokio_util::task::TaskTracker::new();
    let pool = door.pool.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            pool.sweep();
        }
    });
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
        let Some(admitted) = limit.admit(peer.ip()) else {
            continue; // closed at once: the caps keep descriptors for supervision
        };
        let _ = stream.set_nodelay(true);
        let client = Arc::new(Client {
            peer,
            forwarding: Forwarding::new(peer, "http"),
        });
        let (door, builder, shutdown) = (door.clone(), builder.clone(), shutdown.clone());
        connections.spawn(async move {
            crate::fast::serve(door, stream, client, builder, shutdown).await;
            drop(admitted);
        });
    }
    connections.close();
    let deadline = tokio::time::Instant::now() + DRAIN;
    let _ = tokio::time::timeout_at(deadline, connections.wait()).await;
    // Websockets and streaming answers run in tasks of their own, on this thread's runtime,
    // which ends with this function: wait for them too (they are the instances' activity).
    while door.supervisor.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long, once it stops accepting, the front door waits for what it has in flight
/// (`ten serve` bounds it further at shutdown: see the CLI's `serve`).
const DRAIN: Duration = Duration::from_secs(60);

/// Serves a client connection with hyper from here on (`io` may start with bytes the fast
/// path has read already), until it closes or `shutdown`, which lets the request in progress
/// finish.
pub(crate) async fn serve_hyper<I>(
    door: Arc<FrontDoor>,
    io: I,
    client: Arc<Client>,
    builder: http1::Builder,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (door, client) = (door.clone(), client.clone());
        async move { Ok::<_, Infallible>(door.handle(req, &client).await) }
    });
    let mut conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let result = tokio::select! {
        r = &mut conn => r,
        _ = shutdown.cancelled() => {
            std::pin::Pin::new(&mut conn).graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

impl FrontDoor {
    /// The routes of the configuration in force (rebuilt once after a reload).
    pub(crate) fn routes(&self) -> Arc<Router> {
        let generation = self.supervisor.config_generation();
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.0 != generation {
            let config = self.supervisor.config();
            let services = config.services.keys().cloned();
            let router = Router::new(&self.domain, config.routing.clone(), services);
            *routes = (generation, Arc::new(router));
        }
        routes.1.clone()
    }

    /// The instance `target` names, awake and ready (the wait is timed when it had to wake).
    pub(crate) async fn lease(&self, target: &Target, service: &str) -> Result<Lease, Error> {
        let started = Instant::now();
        let lease = match target {
            Target::Instance(key) => self.supervisor.lease(key).await,
            Target::Service(service) => self.supervisor.lease_service(service).await,
            Target::Building => unreachable!("tenement's own requests are not proxied"),
        };
        if let Ok(l) = &lease
            && l.waited
        {
            self.metrics
                .wake_duration
                .get_or_create(&ServiceLabel {
                    service: service.to_owned(),
                })
                .observe(started.elapsed().as_secs_f64());
        }
        lease
    }

    /// Counts a proxied request, answered with `status`, in the metrics.
    pub(crate) fn record(&self, service: &str, status: StatusCode, started: Instant) {
        let kind = match status {
            StatusCode::BAD_GATEWAY => Some("upstream"),
            StatusCode::GATEWAY_TIMEOUT => Some("timeout"),
            StatusCode::SERVICE_UNAVAILABLE => Some("unavailable"),
            StatusCode::PAYLOAD_TOO_LARGE => Some("too_large"),
            _ => None,
        };
        if let Some(kind) = kind {
            self.metrics
                .proxy_errors
                .get_or_create(&KindLabel { kind })
                .inc();
        }
        self.metrics
            .record_request(&self.figures, service, status.as_u16(), started.elapsed());
    }

    async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<Body> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let raw_host = hosts.next();
        if hosts.next().is_some() {
            // Routed by one, read by the app as another: refused (RFC 9112 §3.2).
            return plain(StatusCode::BAD_REQUEST, "more than one Host header");
        }
        let Ok(host) = raw_host.map(|h| h.to_str()).transpose() else {
            return plain(StatusCode::BAD_REQUEST, "malformed Host header: not ASCII");
        };
        if req.method() == Method::CONNECT {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported here",
            );
        }
        if req.uri().scheme().is_none() && req.uri().authority().is_some() {
            // `GET name HTTP/1.1`: a target that is neither a path nor an absolute URI.
            return plain(
                StatusCode::BAD_REQUEST,
                "the request target must be a path: /...",
            );
        }
        if let Some(coding) = crate::headers::unsupported_coding(req.headers()) {
            let msg = format!("transfer coding `{coding}` is not supported (only chunked)");
            return plain(StatusCode::NOT_IMPLEMENTED, &msg);
        }
        let routed = match host {
            // HTTP/1.0 may leave Host out: that is the bare domain (HTTP/1.1 must send it).
            None if req.version() == Version::HTTP_10 => Ok(self.routes().bare(req.uri().path())),
            _ => self.routes().route(host, req.uri().path()),
        };
        let target = match routed {
            Ok(t) => t,
            Err(e @ RouteError::BadHost(_)) => {
                return plain(StatusCode::BAD_REQUEST, &e.to_string());
            }
            Err(e) => return plain(StatusCode::NOT_FOUND, &e.to_string()),
        };
        let service = match &target {
            Target::Building if req.uri().path() == "/metrics" => return self.metrics(&req).await,
            Target::Building => {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(crate::PeerAddr(client.peer));
                return match self.api.clone().oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
            }
            Target::Instance(key) => key.service.as_str(),
            Target::Service(service) => service.as_str(),
        };
        let started = Instant::now();
        let res = match self.lease(&target, service).await {
            Ok(lease) => forward(&self.pool, lease, req, &client.forwarding, self.limits).await,
            Err(e) => unavailable(e),
        };
        self.record(service, res.status(), started);
        res
    }

    /// `/metrics`: public unless `[settings] metrics_auth = true`.
    async fn metrics(&self, req: &Request<Incoming>) -> Response<Body> {
        if self.supervisor.config().settings.metrics_auth {
            let principal = match crate::auth::bearer(req.headers()) {
                Some(t) => self.supervisor.tokens().verify(&t).await,
                None => None,
            };
            // Metrics span every tenant: admins only.
            match principal {
                Some(tenement::Principal::Admin) => {}
                Some(_) => {
                    let msg = "metrics need an admin token: they span every tenant";
                    return ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg).into_response();
                }
                None => {
                    return crate::auth::unauthorized(
                        "metrics need a bearer token (metrics_auth = true)",
                    );
                }
            }
        }
        let openmetrics = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/openmetrics-text"));
        let (body, kind) = if openmetrics {
            (
                self.metrics.render_openmetrics(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            (
                self.metrics.render_text(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        };
        let mut res = Response::new(Body::from(body));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        res
    }
}

fn unavailable(e: Error) -> Response<Body> {
    plain(unavailable_status(&e), &e.to_string())
}

/// The answer when no instance could be leased.
pub(crate) fn unavailable_status(e: &Error) -> StatusCode {
    match e {
        Error::NotFound(_) | Error::UnknownService(_) => StatusCode::NOT_FOUND,
        Error::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}
