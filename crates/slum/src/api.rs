//! slum's HTTP API (`slum serve`): servers and tenants, behind a bearer token.
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | GET | /api/servers | `[Server]` |
//! | POST | /api/servers | `Server` (id, url) → 201 |
//! | DELETE | /api/servers/{id} | 204; 409 while it has tenants |
//! | GET | /api/tenants | `[Tenant]` |
//! | POST | /api/tenants | `Tenant` (domain, server_id, process, instance_id) → 201 |
//! | POST | /api/tenants/{domain}/move | `{"server_id": ...}` → `Tenant` |
//! | DELETE | /api/tenants/{domain} | 204 |
//!
//! Errors are `{"error": "...", "code": "..."}` with 400 (invalid), 401 (no or wrong token),
//! 404 (unknown), 409 (exists, taken, in use) or 500.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::{Error, Server, SlumDb, Tenant};

#[derive(Clone)]
pub struct Api {
    pub db: SlumDb,
    /// The admin token (compared in constant time).
    pub token: Arc<str>,
    /// What a tenement server joins the fleet with (`ten serve --slum-token`).
    pub join_token: Arc<str>,
    /// A server not heard from for this long is `down`.
    pub lease_ms: u64,
}

pub fn router(api: Api) -> Router {
    let admin = Router::new()
        .route("/api/servers", get(servers).post(add_server))
        .route("/api/servers/{id}", delete(remove_server))
        .route("/api/tenants", get(tenants).post(add_tenant))
        .route("/api/tenants/{domain}", delete(remove_tenant))
        .route("/api/tenants/{domain}/move", post(move_tenant))
        .layer(axum::middleware::from_fn_with_state(api.clone(), auth));
    // The fleet's own calls: the join token, then each server's secret.
    let fleet = Router::new()
        .route("/api/join", post(join))
        .route("/api/heartbeat", post(heartbeat));
    admin.merge(fleet).with_state(api)
}

fn bearer(req: &axum::http::HeaderMap) -> Option<&str> {
    req.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn unauthorized(why: &str) -> Response {
    failure(StatusCode::UNAUTHORIZED, "unauthorized", why.into())
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
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
    #[serde(default)]
    capacity: crate::Capacity,
}

async fn join(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    Json(j): Json<Join>,
) -> Response {
    if !bearer(&headers).is_some_and(|t| crate::same(t.as_bytes(), api.join_token.as_bytes())) {
        return unauthorized(
            "joining needs the fleet's join token (slum serve printed where it keeps it)",
        );
    }
    match api.db.join(&j.id, &j.url, j.capacity).await {
        Ok(secret) => Json(serde_json::json!({
            "secret": secret,
            "lease_ms": api.lease_ms,
            "heartbeat_ms": (api.lease_ms / 3).max(100),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/heartbeat` (the server's secret): `{id, capacity}` → 204.
#[derive(Deserialize)]
struct Heartbeat {
    id: String,
    #[serde(default)]
    capacity: crate::Capacity,
}

async fn heartbeat(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    Json(h): Json<Heartbeat>,
) -> Result<StatusCode, Error> {
    let secret = bearer(&headers).unwrap_or_default();
    api.db.heartbeat(&h.id, secret, h.capacity).await?;
    Ok(StatusCode::NO_CONTENT)
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
            Error::DomainTaken(..) => (StatusCode::CONFLICT, "taken"),
            Error::ServerInUse(..) => (StatusCode::CONFLICT, "in_use"),
            Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Store { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
        };
        failure(status, code, self.to_string())
    }
}

async fn servers(State(api): State<Api>) -> Result<Json<Vec<Server>>, Error> {
    Ok(Json(api.db.servers().await?))
}

async fn add_server(
    State(api): State<Api>,
    Json(server): Json<Server>,
) -> Result<(StatusCode, Json<Server>), Error> {
    api.db.add_server(&server).await?;
    Ok((StatusCode::CREATED, Json(api.db.server(&server.id).await?)))
}

async fn remove_server(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    api.db.remove_server(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tenants(State(api): State<Api>) -> Result<Json<Vec<Tenant>>, Error> {
    Ok(Json(api.db.tenants().await?))
}

async fn add_tenant(
    State(api): State<Api>,
    Json(tenant): Json<Tenant>,
) -> Result<(StatusCode, Json<Tenant>), Error> {
    api.db.add_tenant(&tenant).await?;
    Ok((
        StatusCode::CREATED,
        Json(api.db.tenant(&tenant.domain).await?),
    ))
}

#[derive(Deserialize)]
struct MoveTo {
    server_id: String,
}

async fn move_tenant(
    State(api): State<Api>,
    Path(domain): Path<String>,
    Json(to): Json<MoveTo>,
) -> Result<Json<Tenant>, Error> {
    Ok(Json(api.db.move_tenant(&domain, &to.server_id).await?))
}

async fn remove_tenant(
    State(api): State<Api>,
    Path(domain): Path<String>,
) -> Result<StatusCode, Error> {
    api.db.remove_tenant(&domain).await?;
    Ok(StatusCode::NO_CONTENT)
}
