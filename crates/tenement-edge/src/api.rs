//! `/api/...`: list, spawn, stop, restart instances; their logs; health.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tenement::{InstanceStatus, LogLine, Principal, Supervisor};
use tenement_api::{
    DeployRequest, RouteAnswer, RouteRequest, ServerHealth, SpawnRequest, WeightRequest,
};
use tenement_core::{InstanceId, InstanceKey, ServiceName};

use crate::auth::{self, Access, Gate, RateLimiter};
use crate::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

/// The management API and `/health`; `tls`: the certificates, when HTTPS is on.
pub fn router(
    supervisor: Supervisor,
    access: Access,
    limiter: RateLimiter,
    tls: Option<std::sync::Arc<tenement_tls::Tls>>,
) -> Router {
    let gate = Gate {
        supervisor: supervisor.clone(),
        access,
        limiter,
    };
    let api = Router::new()
        .route("/instances", get(list).post(spawn))
        .route("/instances/{key}", get(get_one).delete(stop))
        .route("/instances/{key}/restart", post(restart))
        .route("/instances/{key}/logs", get(logs))
        .route("/instances/{key}/weight", post(weight))
        .route("/logs", get(crate::logs_api::logs))
        .route("/logs/stream", get(crate::logs_api::stream))
        .route("/route", post(route))
        .route("/deploy", post(deploy))
        .route("/health", get(list))
        .route("/config", get(config_summary))
        .route("/reload", post(reload))
        .route("/upgrade", post(upgrade))
        .route("/tls", get(tls_status))
        .route(
            "/domains",
            get(crate::domains_api::list).post(crate::domains_api::add),
        )
        .route("/domains/{name}", delete(crate::domains_api::remove))
        .route("/tokens", post(auth::token_gen).get(auth::token_list))
        .route("/tokens/{id}", delete(auth::token_revoke))
        .route("/openapi.json", get(crate::openapi::document))
        .layer(Extension(TlsState(tls)))
        .layer(middleware::from_fn_with_state(gate, auth::authenticate));
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/assets/{*path}", get(crate::dashboard::asset))
        .route("/health", get(health))
        .nest("/api", api)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(supervisor)
}

/// `key`, if `p` may see it; otherwise the same 404 as for an instance that does not exist,
/// so a tenant learns nothing about others.
fn visible(p: &Principal, raw: &str) -> Result<InstanceKey> {
    let key = key(raw)?;
    if p.allows(&key) {
        Ok(key)
    } else {
        Err(tenement::Error::NotFound(key).into())
    }
}

/// `GET /api/config`: the services and settings the server runs with (admin only). Values of
/// `env` are left out: `${VAR}` may have put secrets there.
async fn config_summary(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>> {
    auth::admin_only(&p)?;
    let mut v = serde_json::to_value(s.config())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if let Some(services) = v.get_mut("service").and_then(|x| x.as_object_mut()) {
        for svc in services.values_mut() {
            if let Some(env) = svc.get_mut("env").and_then(|e| e.as_object_mut()) {
                let keys: Vec<String> = env.keys().cloned().collect();
                svc["env"] = serde_json::json!(keys);
            }
        }
    }
    Ok(Json(v))
}

async fn health(State(s): State<Supervisor>) -> Json<ServerHealth> {
    Json(ServerHealth {
        status: "ok".into(),
        instances: s.count(),
    })
}

async fn list(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
) -> Json<Vec<InstanceStatus>> {
    // Right after `ten serve` starts: the instances it brings back, not an empty list.
    s.registered(Duration::from_secs(30)).await;
    Json(
        s.list()
            .into_iter()
            .filter(|i| p.allows(&i.instance))
            .collect(),
    )
}

async fn spawn(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Extension(tls): Extension<TlsState>,
    JsonBody(body): JsonBody<SpawnRequest>,
) -> Result<(StatusCode, Json<InstanceStatus>)> {
    let key = InstanceKey::new(
        body.service.parse::<ServiceName>()?,
        body.id.parse::<InstanceId>()?,
    );
    may_act(&p, &key)?;
    let status = s.spawn(&key).await?;
    tls.ensure(&s, &key);
    Ok((StatusCode::CREATED, Json(status)))
}

fn key(raw: &str) -> Result<InstanceKey> {
    Ok(raw.parse::<InstanceKey>()?)
}

async fn get_one(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
) -> Result<Json<InstanceStatus>> {
    Ok(Json(s.get(&visible(&p, &raw)?)?))
}

async fn stop(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
) -> Result<StatusCode> {
    s.stop(&visible(&p, &raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
) -> Result<Json<InstanceStatus>> {
    Ok(Json(s.restart(&visible(&p, &raw)?).await?))
}

/// A tenant may create and change only instances with its own id.
fn may_act(p: &Principal, key: &InstanceKey) -> Result<()> {
    if p.allows(key) {
        return Ok(());
    }
    let msg = format!(
        "this token may only act on instances with id {}",
        tenant_of(p)
    );
    Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg))
}

fn tenant_of(p: &Principal) -> String {
    match p {
        Principal::Admin => "any".into(),
        Principal::Tenant(id) => id.to_string(),
    }
}

async fn weight(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<WeightRequest>,
) -> Result<Json<InstanceStatus>> {
    let key = visible(&p, &raw)?;
    Ok(Json(s.set_weight(&key, body.weight).await?))
}

async fn route(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    JsonBody(b): JsonBody<RouteRequest>,
) -> Result<Json<RouteAnswer>> {
    let service: ServiceName = b.service.parse()?;
    let from = visible(&p, &format!("{service}:{}", b.from))?;
    let to = visible(&p, &format!("{service}:{}", b.to))?;
    let (from_weight, to_weight) = s.route(&from, &to).await?;
    Ok(Json(RouteAnswer {
        from,
        from_weight,
        to,
        to_weight,
    }))
}

async fn deploy(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Extension(tls): Extension<TlsState>,
    JsonBody(b): JsonBody<DeployRequest>,
) -> Result<(StatusCode, Json<InstanceStatus>)> {
    let service: ServiceName = b.service.parse()?;
    let key = InstanceKey::new(service.clone(), b.id.parse()?);
    may_act(&p, &key)?;
    // `v1` or `api:v1`, as the CLI takes it (the service is the deployed one's either way).
    let replace = match b.replace {
        Some(old) => {
            let id = old.strip_prefix(&format!("{service}:")).unwrap_or(&old);
            Some(visible(&p, &format!("{service}:{id}"))?)
        }
        None => None,
    };
    if b.timeout == Some(0) {
        let msg = "timeout is in seconds, at least 1";
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg));
    }
    let config = s.config();
    let svc = config
        .service(&service)
        .ok_or_else(|| ApiError::from(tenement::Error::UnknownService(service.clone())))?;
    let timeout = Duration::from_secs(b.timeout.unwrap_or(svc.startup_timeout));
    let drain = Duration::from_secs(s.config().settings.upstream_timeout);
    let status = s
        .deploy(
            &key,
            b.weight.unwrap_or(100),
            timeout,
            replace.as_ref(),
            drain,
        )
        .await?;
    tls.ensure(&s, &key);
    Ok((StatusCode::CREATED, Json(status)))
}

/// Query parameters, with a bad one answered as the API's JSON error (400 `bad_request`).
pub(crate) struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        Query::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
    }
}

/// A JSON request body, whatever its `Content-Type` (`curl -d` sends form encoding). The API
/// takes bearer tokens only, never cookies, so a cross-site form post has nothing to ride on.
/// An empty body reads as `null` (so `JsonBody<Option<T>>` makes the body optional).
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| bad(e.body_text()))?;
        let text: &[u8] = if bytes.trim_ascii().is_empty() {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| bad(format!("invalid JSON body: {e}")))
    }
}

#[derive(Deserialize)]
struct LogQuery {
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response> {
    let key = visible(&p, &raw)?;
    let limit = q.limit.unwrap_or(100);
    if !q.follow {
        let lines: Vec<LogLine> = s.logs(&key, limit)?.iter().map(|l| (**l).clone()).collect();
        return Ok(Json(lines).into_response());
    }
    // Subscribe before reading the tail so no line falls between the two.
    let live = s.follow_logs();
    let backlog = s
        .logs(&key, limit)?
        .iter()
        .map(|l| crate::logs_api::log_event(&**l))
        .collect();
    let stop = s.stopping();
    Ok(crate::logs_api::sse(
        backlog,
        live,
        move |line| *line.instance == key,
        stop,
    ))
}

/// `POST /api/reload`: the configuration file read anew and applied (admin only); an invalid
/// file is a 400 listing every error, and changes nothing.
async fn reload(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
) -> Result<Json<tenement::ReloadReport>> {
    crate::auth::admin_only(&p)?;
    match s.reload_from_file().await {
        Ok(report) => Ok(Json(report)),
        Err(errors) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            format!("nothing changed: {errors}"),
        )),
    }
}

/// The certificates, for `GET /api/tls` (none when HTTPS is off).
#[derive(Clone)]
pub(crate) struct TlsState(pub Option<std::sync::Arc<tenement_tls::Tls>>);

impl TlsState {
    /// With HTTPS on: a new instance's certificate ordered now, before its first visitor.
    fn ensure(&self, s: &Supervisor, key: &InstanceKey) {
        if let Some(tls) = &self.0 {
            tls.ensure(&format!(
                "{}.{}.{}",
                key.id,
                key.service,
                s.routing_domain()
            ));
        }
    }
}

/// `GET /api/tls` (admin: the names span every tenant): each certificate's names, validity and
/// renewal time (seconds since the epoch), and the week's issuance budget.
async fn tls_status(
    Extension(p): Extension<Principal>,
    Extension(TlsState(tls)): Extension<TlsState>,
) -> Result<Json<serde_json::Value>> {
    crate::auth::admin_only(&p)?;
    let Some(tls) = tls else {
        return Ok(Json(
            serde_json::json!({ "enabled": false, "certificates": [] }),
        ));
    };
    let (used, max) = tls.budget();
    Ok(Json(serde_json::json!({
        "enabled": true,
        "certificates": tls.certificates(),
        "issued_last_7_days": used,
        "max_certificates_per_week": max,
    })))
}

/// `POST /api/upgrade`: the server hands over to a new process of its executable, which
/// adopts every instance (admin only).
async fn upgrade(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
) -> Result<Json<tenement::Upgraded>> {
    crate::auth::admin_only(&p)?;
    s.upgrade()
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "upgrade_failed", e))
}
