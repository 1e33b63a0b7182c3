//! slum's HTTP API (`slum serve`): servers and tenants, behind a bearer token.
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | GET | /api/servers | `[Server]` |
//! | POST | /api/servers | `Server` (id, url) → 201 |
//! | DELETE | /api/servers/{id} | 204; 409 while it has tenants |
//! | GET | /api/tenants | `[Tenant]` |
//! | POST | /api/tenants | `Tenant` (domain, process, instance_id, server_id or none) → 201 once running |
//! | POST | /api/tenants/{domain}/move | `{"server_id": ...}` → `Tenant` once running there |
//! | DELETE | /api/tenants/{domain} | 204 |
//!
//! The fleet's servers: `POST /api/join` (join token) and `POST /api/heartbeat` (the server's
//! secret), whose answer is held until the table changes or `heartbeat_ms` passes (a long
//! poll: a placement reaches its server at once, and the server's next heartbeat follows).
//!
//! After 10 failed tokens in a minute, an address gets 429 for the rest of that minute.
//!
//! Errors are `{"error": "...", "code": "..."}` with 400 (invalid), 401 (no or wrong token),
//! 404 (unknown), 409 (exists, taken, in use, not up), 502 (the server refused), 503 (no room),
//! 504 (not started in time) or 500.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::{Error, Report, Server, SlumDb, Store, Tenant};

/// The API over a store `S` (SQLite by default; any [`Store`]).
#[derive(Clone)]
pub struct Api<S = SlumDb> {
    pub db: S,
    /// The admin token (compared in constant time).
    pub token: Arc<str>,
    /// What a tenement server joins the fleet with (`ten serve --slum-token`).
    pub join_token: Arc<str>,
    /// A server not heard from for this long is `down`.
    pub lease_ms: u64,
    /// How long a placement waits for its server to report the instance running.
    pub placement_timeout: Duration,
    /// Bumped at every change a waiter may care for (the table, a tenant's status).
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// The servers of slum.toml and their operators.
    pub members: Arc<crate::operators::Members>,
    /// Failed token attempts per client address.
    pub failures: Failures,
    /// The most servers that may join (`--max-servers`).
    pub max_servers: usize,
}

/// Failed token attempts per client address: after [`MAX_FAILURES`] in a minute, every call
/// from that address gets 429 until the minute is over (no more guesses, whichever token).
#[derive(Clone, Default)]
pub struct Failures(
    Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>>>,
);

const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl Failures {
    fn blocked(&self, ip: std::net::IpAddr) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(since, n)| since.elapsed() < FAILURE_WINDOW && *n >= MAX_FAILURES)
    }

    fn failed(&self, ip: std::net::IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bounded under a spray of addresses: forget the windows that are over.
            map.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = map.entry(ip).or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// Every call: refused (429) from an address that failed too often; a 401 counts as a failure.
async fn limit<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    // Heartbeats carry a server's secret (192 random bits, not guessable): never held back,
    // or a tenant on a server could lock its own server out of the fleet by guessing from
    // the server's address. A call without any token is not a guess.
    let exempt =
        req.uri().path() == "/api/heartbeat" || !req.headers().contains_key(header::AUTHORIZATION);
    if exempt {
        return next.run(req).await;
    }
    if api.failures.blocked(peer.ip()) {
        return failure(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed tokens from this address: wait a minute".into(),
        );
    }
    let res = next.run(req).await;
    if res.status() == StatusCode::UNAUTHORIZED {
        api.failures.failed(peer.ip());
    }
    res
}

impl<S: Store + Clone + 'static> Api<S> {
    pub fn new(db: S, token: &str, join_token: &str, lease_ms: u64) -> Self {
        Api {
            db,
            token: Arc::from(token),
            join_token: Arc::from(join_token),
            lease_ms,
            placement_timeout: Duration::from_secs(60),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            members: Arc::default(),
            failures: Failures::default(),
            max_servers: 1000,
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Watches the leases for ever: a server silent for `lease_ms` is `down`, and the tenants
    /// of down servers are placed on others (each tick, until some server can take them).
    pub async fn watch_leases(self) {
        let _ = self.db.grace().await;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(down) = self.db.expire(self.lease_ms).await {
                for id in &down {
                    tracing::warn!(server = %id, lease_ms = self.lease_ms, "missed its lease: down");
                }
                if !down.is_empty() {
                    self.changed();
                }
            }
            match self.db.fail_over(self.lease_ms).await {
                Ok(moves) if !moves.is_empty() => {
                    for (domain, from, to) in &moves {
                        tracing::warn!(%domain, %from, %to, "failed over");
                    }
                    self.changed();
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "failover"),
            }
        }
    }

    /// Waits until `domain`'s placement `epoch` is reported running (its record) or failed
    /// (removed, or moved back to `back_to`, and the error).
    async fn settle(&self, placed: Tenant, back_to: Option<Tenant>) -> Result<Tenant, Error> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + self.placement_timeout;
        loop {
            let now = self.db.tenant(&placed.domain).await?;
            if now.epoch != placed.epoch {
                return Ok(now); // moved or failed over meanwhile: that one is current
            }
            let failure = match now.status.as_str() {
                "running" => return Ok(now),
                "failed" => Error::Refused {
                    server: now.server_id.clone(),
                    domain: now.domain.clone(),
                    why: now.error.clone(),
                },
                _ if tokio::time::Instant::now() >= deadline => Error::NotStarted {
                    server: now.server_id.clone(),
                    domain: now.domain.clone(),
                    secs: self.placement_timeout.as_secs(),
                },
                _ => {
                    let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
                    continue;
                }
            };
            // Nothing half-done: the record goes (its server then stops whatever it began),
            // or a move goes back where it came from.
            match back_to {
                Some(old) => {
                    let _ = self.db.move_tenant(&old.domain, &old.server_id).await;
                }
                None => {
                    let _ = self.db.unplace(&now.domain, now.epoch).await;
                }
            }
            self.changed();
            return Err(failure);
        }
    }
}

pub fn router<S: Store + Clone + 'static>(api: Api<S>) -> Router {
    let admin = Router::new()
        .route("/api/servers", get(servers::<S>).post(add_server::<S>))
        .route("/api/servers/{id}", delete(remove_server::<S>))
        .route("/api/servers/{id}/upgrade", post(upgrade_server::<S>))
        .route("/api/tenants", get(tenants::<S>).post(add_tenant::<S>))
        .route("/api/tenants/{domain}", delete(remove_tenant::<S>))
        .route("/api/tenants/{domain}/move", post(move_tenant::<S>))
        .layer(axum::middleware::from_fn_with_state(api.clone(), auth::<S>));
    // The fleet's own calls: the join token, then each server's secret.
    let fleet = Router::new()
        .route("/api/join", post(join::<S>))
        .route("/api/heartbeat", post(heartbeat::<S>));
    admin
        .merge(fleet)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            limit::<S>,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(api)
}

/// Every error is `{"error", "code"}`, axum's own too (a body that is not JSON, too large,
/// a wrong method...).
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "invalid",
    };
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let text = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_owned(),
        false => text,
    };
    failure(status, code, text)
}

/// The bearer token (the scheme in any case, RFC 9110 §11.1).
fn bearer(req: &axum::http::HeaderMap) -> Option<&str> {
    let v = req.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn unauthorized(why: &str) -> Response {
    failure(StatusCode::UNAUTHORIZED, "unauthorized", why.into())
}

async fn auth<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    req: Request,
    next: Next,
) -> Response {
    match bearer(req.headers()) {
        Some(t) if crate::same(t.as_bytes(), api.token.as_bytes()) => next.run(req).await,
        _ => unauthorized("a bearer token is required (slum serve printed where it keeps it)"),
    }
}

/// `POST /api/join` (join token): `{id, url, capacity}` → `{secret, heartbeat_ms, lease_ms}`.
#[derive(Deserialize)]
struct Join {
    id: String,
    url: String,
    /// Its routing domain (`[settings] domain`).
    #[serde(default)]
    domain: String,
    #[serde(default)]
    capacity: crate::Capacity,
    /// The secret of its last join, if it has one: a server that joined before can only join
    /// again with it (no one holding the join token can take a server's place).
    #[serde(default)]
    secret: String,
}

/// Addresses a server may not send the fleet's traffic to, unless slum itself is asked from
/// this machine (servers on one host, for development): this host's own services, cloud
/// metadata, nothing.
fn internal(ip: std::net::IpAddr) -> bool {
    let mapped = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match mapped {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

async fn join<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(j): Json<Join>,
) -> Response {
    if !bearer(&headers).is_some_and(|t| crate::same(t.as_bytes(), api.join_token.as_bytes())) {
        return unauthorized(
            "joining needs the fleet's join token (slum serve printed where it keeps it)",
        );
    }
    if let Some(ip) = crate::sqlite::url_ip(&j.url)
        && internal(ip)
        && !peer.ip().is_loopback()
    {
        let why = format!(
            "{:?}: a loopback, link-local or unspecified address (only a server on slum's own machine may advertise one)",
            j.url
        );
        return Error::Invalid { field: "url", why }.into_response();
    }
    match api.db.servers().await {
        Ok(all) if all.len() >= api.max_servers && !all.iter().any(|s| s.id == j.id) => {
            return Error::Full(all.len()).into_response();
        }
        Ok(_) => {}
        Err(e) => return e.into_response(),
    }
    match api
        .db
        .join(&j.id, &j.url, &j.domain, j.capacity.clamped(), &j.secret)
        .await
    {
        Ok(secret) => {
            api.changed(); // its URL or domain may be new to the others
            Json(serde_json::json!({
                "secret": secret,
                "lease_ms": api.lease_ms,
                "heartbeat_ms": heartbeat_ms(api.lease_ms),
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn heartbeat_ms(lease_ms: u64) -> u64 {
    (lease_ms / 3).max(100)
}

/// `POST /api/heartbeat` (the server's secret): `{id, capacity, version, reports}` →
/// `{version, lease_ms, heartbeat_ms, table}`; `table` only when `version` is not the
/// current one. Held until the table changes or `heartbeat_ms` passes.
#[derive(Deserialize)]
struct Heartbeat {
    id: String,
    #[serde(default)]
    capacity: crate::Capacity,
    /// The version of the table the server has.
    #[serde(default)]
    version: u64,
    #[serde(default)]
    reports: Vec<Report>,
    /// Where it is now (after a restart on another address); empty: unchanged.
    #[serde(default)]
    url: String,
    #[serde(default)]
    domain: String,
}

async fn heartbeat<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(h): Json<Heartbeat>,
) -> Result<Json<serde_json::Value>, Error> {
    let secret = bearer(&headers).unwrap_or_default();
    let mut changes = api.changes.subscribe();
    if let Some(ip) = crate::sqlite::url_ip(&h.url)
        && internal(ip)
        && !peer.ip().is_loopback()
    {
        let why = format!("{:?}: a loopback, link-local or unspecified address", h.url);
        return Err(Error::Invalid { field: "url", why });
    }
    let at = (h.url.as_str(), h.domain.as_str());
    if api
        .db
        .heartbeat(&h.id, secret, at, h.capacity.clamped(), h.reports)
        .await?
    {
        api.changed();
    }
    let every = heartbeat_ms(api.lease_ms);
    let until = tokio::time::Instant::now() + Duration::from_millis(every);
    let mut version = api.db.version().await?;
    while version == h.version
        && matches!(
            tokio::time::timeout_at(until, changes.changed()).await,
            Ok(Ok(()))
        )
    {
        version = api.db.version().await?;
    }
    let mut answer = serde_json::json!({
        "version": version, "lease_ms": api.lease_ms, "heartbeat_ms": every,
    });
    if version != h.version {
        let mut table = api.db.table(&h.id).await?;
        table["lease_ms"] = api.lease_ms.into();
        answer["table"] = table;
    }
    Ok(Json(answer))
}

fn failure(status: StatusCode, code: &str, error: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": error, "code": code })),
    )
        .into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Error::UnknownServer(_) | Error::UnknownTenant(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Error::ServerExists(_) => (StatusCode::CONFLICT, "exists"),
            Error::ServerLive(_) => (StatusCode::CONFLICT, "live"),
            Error::InstanceTaken(..) => (StatusCode::CONFLICT, "instance_taken"),
            Error::Full(_) => (StatusCode::CONFLICT, "full"),
            Error::DomainTaken(..) => (StatusCode::CONFLICT, "taken"),
            Error::ServerInUse(..) => (StatusCode::CONFLICT, "in_use"),
            Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::NotUp(..) => (StatusCode::CONFLICT, "not_up"),
            Error::NoRoom(..) => (StatusCode::SERVICE_UNAVAILABLE, "no_room"),
            Error::Refused { .. } => (StatusCode::BAD_GATEWAY, "refused"),
            Error::NotStarted { .. } => (StatusCode::GATEWAY_TIMEOUT, "not_started"),
            Error::Store { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
        };
        failure(status, code, self.to_string())
    }
}

async fn servers<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
) -> Result<Json<Vec<Server>>, Error> {
    Ok(Json(api.db.servers().await?))
}

async fn add_server<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    Json(server): Json<Server>,
) -> Result<(StatusCode, Json<Server>), Error> {
    api.db.add_server(&server).await?;
    Ok((StatusCode::CREATED, Json(api.db.server(&server.id).await?)))
}

/// `POST /api/servers/{id}/upgrade`: the server's operator installs this `ten` there and
/// replaces its `ten serve` (`ten upgrade`).
async fn upgrade_server<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    if api.members.get(&id).is_none() {
        return Err(Error::Invalid {
            field: "server",
            why: format!(
                "{id:?} is not a server of slum.toml (slum serve --config): no operator upgrades it"
            ),
        });
    }
    let members = api.members.clone();
    let done = tokio::task::spawn_blocking(move || {
        let (server, operator) = members.get(&id).expect("checked above");
        operator
            .upgrade(server, &members.fleet)
            .map_err(|why| Error::Refused {
                server: id.clone(),
                domain: "its upgrade".into(),
                why,
            })
    })
    .await
    .expect("an operator task")?;
    Ok(Json(serde_json::json!({ "result": done })))
}

async fn remove_server<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    api.db.remove_server(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tenants<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
) -> Result<Json<Vec<Tenant>>, Error> {
    Ok(Json(api.db.tenants().await?))
}

/// Places the tenant (on its `server_id`, or by free capacity) and answers once its server
/// runs it; a refused or late start leaves no record.
async fn add_tenant<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    Json(tenant): Json<Tenant>,
) -> Result<(StatusCode, Json<Tenant>), Error> {
    let placed = api.db.place(&tenant).await?;
    api.changed();
    Ok((StatusCode::CREATED, Json(api.settle(placed, None).await?)))
}

#[derive(Deserialize)]
struct MoveTo {
    server_id: String,
}

async fn move_tenant<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    Path(domain): Path<String>,
    Json(to): Json<MoveTo>,
) -> Result<Json<Tenant>, Error> {
    let before = api.db.tenant(&domain).await?;
    if before.server_id == to.server_id {
        return Ok(Json(before));
    }
    match api.db.server(&to.server_id).await?.state {
        crate::ServerState::Up => {}
        crate::ServerState::New => return Err(Error::NotUp(to.server_id, "new (never joined)")),
        crate::ServerState::Down => return Err(Error::NotUp(to.server_id, "down")),
    }
    let moved = api.db.move_tenant(&domain, &to.server_id).await?;
    api.changed();
    Ok(Json(api.settle(moved, Some(before)).await?))
}

async fn remove_tenant<S: Store + Clone + 'static>(
    State(api): State<Api<S>>,
    Path(domain): Path<String>,
) -> Result<StatusCode, Error> {
    api.db.remove_tenant(&domain).await?;
    api.changed();
    Ok(StatusCode::NO_CONTENT)
}
