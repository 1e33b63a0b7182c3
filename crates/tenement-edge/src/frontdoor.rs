//! `ten serve`'s public listener: every request is routed by its Host header and path
//! ([`tenement_core::route`]) to tenement itself (API, `/health`, dashboard) or proxied to an
//! instance, which is woken first if it sleeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use tenement::fleet::{Dest, Hop};
use tenement::{Error, Lease, Supervisor};
use tenement_core::route::{RouteError, Router, Target};
use tenement_proxy::{Body, Engine, Resolve, Route, Transport, Unavailable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use crate::error::ApiError;
use crate::https::{Https, serve_http_port, serve_tls};
use crate::metrics::{KindLabel, Metrics, RequestFigures, ServiceLabel};
use crate::{Access, router};

/// The front door's side of the proxy engine ([`tenement_proxy::Resolve`]): routes by the
/// configuration's rules, leases instances from the supervisor (waking them), answers
/// tenement's own paths with the API router, counts every request in the metrics. One per
/// front-door thread.
pub(crate) struct FrontDoor {
    supervisor: Supervisor,
    metrics: Arc<Metrics>,
    /// The routes, and the configuration generation they were built from (a reload builds
    /// them anew: [`FrontDoor::routes`]).
    routes: std::sync::Mutex<(u64, Arc<Router>)>,
    domain: String,
    api: axum::Router,
    figures: RequestFigures,
    /// The connection caps, which HTTP/2 streams count against too.
    conn_limit: Arc<crate::conn_limit::ConnLimit>,
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
    https: Option<(Vec<std::net::TcpListener>, Https)>,
    supervisor: Supervisor,
    domain: &str,
    shutdown: CancellationToken,
) {
    let config = supervisor.config();
    let s = &config.settings;
    let settings = tenement_proxy::Settings {
        max_body: (s.max_body_mb as usize).saturating_mul(1024 * 1024),
        upstream_timeout: Duration::from_secs(s.upstream_timeout),
        max_head: (s.max_header_kb as usize * 1024).max(8192),
        header_timeout: Duration::from_secs(s.header_timeout),
        fast_path: s.fast_path,
    };
    let mut threads = Vec::new();
    let metrics = Metrics::new(supervisor.clone(), https.as_ref().map(|h| h.1.tls.clone()));
    let limiter = crate::RateLimiter::default();
    let conn_limit =
        crate::conn_limit::ConnLimit::from_settings(s, metrics.connections_refused.clone());
    tracing::info!(
        max_connections = conn_limit.max(),
        "front door connection cap"
    );
    let (mut tls_listeners, https) = match https {
        Some((l, h)) => (l.into_iter(), Some(h)),
        None => (Vec::new().into_iter(), None),
    };
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
            api: router(
                supervisor.clone(),
                Access::Network,
                limiter.clone(),
                https.as_ref().map(|h| h.tls.clone()),
            ),
            supervisor: supervisor.clone(),
            figures: RequestFigures::default(),
            conn_limit: conn_limit.clone(),
        };
        let engine = Engine::new(door, settings);
        let shutdown = shutdown.clone();
        let conn_limit = conn_limit.clone();
        let tls = https.clone().zip(tls_listeners.next());
        let thread = std::thread::Builder::new()
            .name(format!("front-door-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("a listening socket");
                    let tls = tls
                        .map(|(h, l)| (h, TcpListener::from_std(l).expect("a listening socket")));
                    accept_loop(listener, tls, engine, conn_limit, shutdown).await
                })
            });
        threads.extend(thread.ok());
    }
    let _ =
        tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
}

/// Accepts on `listener` (and on the TLS listener, if HTTPS is on) until `shutdown`, then
/// waits for what is in flight (at most [`DRAIN`]). With HTTPS on, `listener` is the HTTP
/// port: challenges and redirects only.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<(Https, TcpListener)>,
    engine: Arc<Engine<FrontDoor>>,
    limit: Arc<crate::conn_limit::ConnLimit>,
    shutdown: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    tokio::spawn(engine.clone().sweep_pool());
    let header_timeout = engine.settings().header_timeout;
    loop {
        let secure = async {
            match &tls {
                Some((_, l)) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        let (accepted, secure) = tokio::select! {
            accepted = listener.accept() => (accepted, false),
            accepted = secure => (accepted, true),
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(admitted) = limit.admit(peer.ip()) else {
            continue; // closed at once: the caps keep descriptors for supervision
        };
        let _ = stream.set_nodelay(true);
        let (engine, shutdown) = (engine.clone(), shutdown.clone());
        let https = tls.as_ref().map(|(h, _)| h.clone());
        connections.spawn(async move {
            match https {
                Some(h) if secure => {
                    serve_tls(engine, &h.tls, stream, peer, header_timeout, shutdown).await;
                }
                Some(h) => serve_http_port(h, stream, header_timeout, shutdown).await,
                None => engine.serve(stream, peer, Transport::Plain, shutdown).await,
            }
            drop(admitted);
        });
    }
    connections.close();
    let deadline = tokio::time::Instant::now() + DRAIN;
    let _ = tokio::time::timeout_at(deadline, connections.wait()).await;
    // Websockets and streaming answers run in tasks of their own, on this thread's runtime,
    // which ends with this function: wait for them too (they are the instances' activity).
    while engine.resolver().supervisor.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long, once it stops accepting, the front door waits for what it has in flight
/// (`ten serve` bounds it further at shutdown: see the CLI's `serve`).
const DRAIN: Duration = Duration::from_secs(60);

impl FrontDoor {
    /// The routes of the configuration in force (rebuilt once after a reload).
    fn routes(&self) -> Arc<Router> {
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

    /// `/metrics`: public unless `[settings] metrics_auth = true`.
    async fn metrics(&self, req: &Request<Incoming>) -> axum::response::Response {
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
        let mut res = axum::response::Response::new(axum::body::Body::from(body));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        res
    }
}

impl FrontDoor {
    /// `GET /api/fleet/lease`, for the fleet's other servers (with its join token): whether
    /// this server still hears from slum. A server that lost slum asks every peer before it
    /// goes on serving its tenants (see `tenement::fleet`).
    fn lease_answer(&self, req: &Request<Incoming>) -> axum::response::Response {
        let fleet = self.supervisor.fleet();
        match crate::auth::bearer(req.headers()) {
            Some(t) if fleet.is_peer_token(&t) => axum::Json(serde_json::json!({
                "lease_held": fleet.lease_held(),
                "version": fleet.table().version,
            }))
            .into_response(),
            _ => crate::auth::unauthorized("the fleet's join token is required"),
        }
    }
}

/// The service a target counts under in the metrics.
fn service_of(target: &Door) -> &str {
    match target {
        Door::Here(Target::Instance(key)) => key.service.as_str(),
        Door::Here(Target::Service(service)) => service.as_str(),
        Door::Here(Target::Building) => "",
        Door::Hop(hop) => hop.service.as_str(),
    }
}

/// What a proxied request is for: something of this server's, or a slum fleet's tenant that
/// lives on another server (one hop there, under the owner's own name for it).
pub(crate) enum Door {
    Here(Target),
    Hop(Arc<Hop>),
}

/// An upstream for a [`Door`]: an instance of this server's, or the owner's front door.
pub(crate) enum DoorLease {
    Here(Lease),
    Hop(tenement_proxy::Endpoint, Arc<Hop>),
}

impl tenement_proxy::Lease for DoorLease {
    fn endpoint(&self) -> &tenement_proxy::Endpoint {
        match self {
            DoorLease::Here(l) => l.endpoint(),
            DoorLease::Hop(e, _) => e,
        }
    }

    fn host(&self) -> Option<&str> {
        match self {
            DoorLease::Here(_) => None,
            DoorLease::Hop(_, hop) => Some(&hop.host),
        }
    }
}

impl std::fmt::Display for DoorLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DoorLease::Here(l) => l.fmt(f),
            DoorLease::Hop(_, hop) => write!(f, "{} on fleet server {}", hop.host, hop.server),
        }
    }
}

fn fenced(key: &tenement_core::InstanceKey) -> Route<Door> {
    Route::Refused(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{key} is not served here now: this server has lost its lease from the fleet's control plane"
        ),
    )
}

impl Resolve for FrontDoor {
    type Target = Door;
    type Lease = DoorLease;

    fn route(&self, host: Option<&str>, path: &str) -> Route<Door> {
        if let Some(host) = host {
            // A customer's own domain names its instance, whatever the path.
            if let Some(key) = self.supervisor.domains().get(host) {
                return Route::Upstream(Door::Here(Target::Instance(key)));
            }
            match self.supervisor.fleet().route(host) {
                Some(Dest::Here(key)) => return Route::Upstream(Door::Here(Target::Instance(key))),
                Some(Dest::Fenced(key)) => return fenced(&key),
                Some(Dest::There(hop)) => return Route::Upstream(Door::Hop(hop)),
                None => {}
            }
        }
        let routes = self.routes();
        let routed = match host {
            // HTTP/1.0 may leave Host out: that is the bare domain.
            None => Ok(routes.bare(path)),
            Some(host) => routes.route(Some(host), path),
        };
        match routed {
            Ok(Target::Building) => Route::Local,
            Ok(Target::Instance(key)) if self.supervisor.fleet().fenced(&key) => fenced(&key),
            // A fleet tenant that lives on another server, asked for here by its own name (a
            // peer forwarding by a stale table): never started here as a second copy.
            Ok(Target::Instance(key))
                if self.supervisor.fleet().placed_elsewhere(&key)
                    && self.supervisor.get(&key).is_err() =>
            {
                Route::Refused(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("{key} is a fleet tenant of another server, not of this one"),
                )
            }
            Ok(target) => Route::Upstream(Door::Here(target)),
            Err(e @ RouteError::BadHost(_)) => {
                Route::Refused(StatusCode::BAD_REQUEST, e.to_string())
            }
            Err(e) => Route::Refused(StatusCode::NOT_FOUND, e.to_string()),
        }
    }

    /// The instance `target` names, awake and ready (the wait is timed when it had to wake).
    async fn lease(&self, target: &Door) -> Result<DoorLease, Unavailable> {
        let started = Instant::now();
        let lease = match target {
            Door::Here(Target::Instance(key)) => self.supervisor.lease(key).await,
            Door::Here(Target::Service(service)) => self.supervisor.lease_service(service).await,
            Door::Here(Target::Building) => {
                unreachable!("tenement's own requests are not proxied")
            }
            Door::Hop(hop) => {
                let to = tenement_proxy::Endpoint::Tcp(hop.addr);
                return Ok(DoorLease::Hop(to, hop.clone()));
            }
        };
        match lease {
            Ok(l) => {
                if l.waited {
                    let service = service_of(target).to_owned();
                    self.metrics
                        .wake_duration
                        .get_or_create(&ServiceLabel { service })
                        .observe(started.elapsed().as_secs_f64());
                }
                Ok(DoorLease::Here(l))
            }
            Err(e) => Err(Unavailable {
                status: unavailable_status(&e),
                message: e.to_string(),
            }),
        }
    }

    async fn local(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let res = if req.uri().path() == "/metrics" {
            self.metrics(&req).await
        } else if req.uri().path() == "/api/fleet/lease" {
            self.lease_answer(&req)
        } else if req.uri().path() == "/api/tls/ask" {
            crate::https::ask(&self.supervisor, &self.domain, &req, peer)
        } else {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(crate::PeerAddr(peer));
            match self.api.clone().oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        };
        res.map(|b| b.map_err(Into::into).boxed_unsync())
    }

    /// Each HTTP/2 stream takes a place of its client address's `max_connections_per_ip` (and
    /// of `max_connections`), as a connection does: it holds an upstream connection too.
    fn admit_stream(&self, peer: std::net::IpAddr) -> Option<Box<dyn Send + Unpin>> {
        let admitted = self.conn_limit.admit(peer)?;
        Some(Box::new(admitted))
    }

    /// Counts a proxied request, answered with `status`, in the metrics.
    fn record(&self, target: &Door, status: StatusCode, started: Instant) {
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
        let service = service_of(target);
        self.metrics
            .record_request(&self.figures, service, status.as_u16(), started.elapsed());
    }
}

/// The answer when no instance could be leased.
fn unavailable_status(e: &Error) -> StatusCode {
    match e {
        Error::NotFound(_) | Error::UnknownService(_) => StatusCode::NOT_FOUND,
        Error::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}
