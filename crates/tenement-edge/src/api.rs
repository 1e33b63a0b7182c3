//! `/api/...`: list, spawn, stop, restart instances; their logs; health.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use tenement::{InstanceStatus, LogLine, Supervisor};
use tenement_core::{InstanceId, InstanceKey, ServiceName};
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;

/// Who is on the other end of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The local control socket: its file mode (0600) already decided.
    ControlSocket,
    /// A TCP client: `/api/` needs a bearer token.
    Network,
}

type Result<T> = std::result::Result<T, ApiError>;

/// The management API and `/health`.
pub fn router(supervisor: Supervisor, access: Access) -> Router {
    let api = Router::new()
        .route("/instances", get(list).post(spawn))
        .route("/instances/{key}", get(get_one).delete(stop))
        .route("/instances/{key}/restart", post(restart))
        .route("/instances/{key}/logs", get(logs))
        .route("/instances/{key}/weight", post(weight))
        .route("/logs", get(crate::logs_api::logs))
        .route("/route", post(route))
        .route("/deploy", post(deploy))
        .route("/health", get(list))
        .route("/tokens", post(token_gen));
    let api = match access {
        Access::ControlSocket => api,
        Access::Network => api.layer(middleware::from_fn_with_state(
            supervisor.clone(),
            require_token,
        )),
    };
    Router::new()
        .route("/", get(lobby))
        .route("/health", get(health))
        .nest("/api", api)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(supervisor)
}

/// Over TCP, `/api/` needs `Authorization: Bearer <token>` (a token from `ten token-gen`).
async fn require_token(State(s): State<Supervisor>, req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let msg = match bearer {
        Some(token) if s.tokens().verify(token).await => return next.run(req).await,
        Some(_) => "invalid token",
        None => "missing bearer token (Authorization: Bearer ...)",
    };
    let mut res = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
    res.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("static header"),
    );
    res
}

/// Creates an admin token; the only time it is ever shown.
async fn token_gen(State(s): State<Supervisor>) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let token = s.tokens().generate().await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token })),
    ))
}

/// The bare domain's front page until the dashboard exists.
async fn lobby(State(s): State<Supervisor>) -> String {
    let all = s.list();
    let running = all.iter().filter(|i| i.state == "running").count();
    format!(
        "tenement: {} instances ({running} running). The dashboard is not built yet; the API is under /api/ (bearer token), health at /health.\n",
        all.len()
    )
}

async fn health(State(s): State<Supervisor>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "instances": s.list().len() }))
}

async fn list(State(s): State<Supervisor>) -> Json<Vec<InstanceStatus>> {
    Json(s.list())
}

#[derive(Deserialize)]
struct SpawnBody {
    service: String,
    id: String,
}

async fn spawn(
    State(s): State<Supervisor>,
    body: JsonBody<SpawnBody>,
) -> Result<(StatusCode, Json<InstanceStatus>)> {
    let body = json(body)?;
    let key = InstanceKey::new(
        body.service.parse::<ServiceName>()?,
        body.id.parse::<InstanceId>()?,
    );
    let status = s.spawn(&key).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

fn key(raw: &str) -> Result<InstanceKey> {
    Ok(raw.parse::<InstanceKey>()?)
}

async fn get_one(
    State(s): State<Supervisor>,
    Path(raw): Path<String>,
) -> Result<Json<InstanceStatus>> {
    Ok(Json(s.get(&key(&raw)?)?))
}

async fn stop(State(s): State<Supervisor>, Path(raw): Path<String>) -> Result<StatusCode> {
    s.stop(&key(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart(
    State(s): State<Supervisor>,
    Path(raw): Path<String>,
) -> Result<Json<InstanceStatus>> {
    Ok(Json(s.restart(&key(&raw)?).await?))
}

#[derive(Deserialize)]
struct WeightBody {
    weight: u32,
}

async fn weight(
    State(s): State<Supervisor>,
    Path(raw): Path<String>,
    body: JsonBody<WeightBody>,
) -> Result<Json<InstanceStatus>> {
    let body = json(body)?;
    Ok(Json(s.set_weight(&key(&raw)?, body.weight).await?))
}

#[derive(Deserialize)]
struct RouteBody {
    service: String,
    from: String,
    to: String,
}

async fn route(
    State(s): State<Supervisor>,
    body: JsonBody<RouteBody>,
) -> Result<Json<serde_json::Value>> {
    let b = json(body)?;
    let service: ServiceName = b.service.parse()?;
    let from = InstanceKey::new(service.clone(), b.from.parse()?);
    let to = InstanceKey::new(service, b.to.parse()?);
    let (wf, wt) = s.route(&from, &to).await?;
    Ok(Json(
        serde_json::json!({ "from": from, "from_weight": wf, "to": to, "to_weight": wt }),
    ))
}

#[derive(Deserialize)]
struct DeployBody {
    service: String,
    id: String,
    weight: Option<u32>,
    /// Seconds to wait for the new instance to become healthy.
    timeout: Option<u64>,
    /// Id of the instance to replace once the new one is healthy.
    replace: Option<String>,
}

async fn deploy(
    State(s): State<Supervisor>,
    body: JsonBody<DeployBody>,
) -> Result<(StatusCode, Json<InstanceStatus>)> {
    let b = json(body)?;
    let service: ServiceName = b.service.parse()?;
    let key = InstanceKey::new(service.clone(), b.id.parse()?);
    let replace = match b.replace {
        Some(old) => Some(InstanceKey::new(service.clone(), old.parse()?)),
        None => None,
    };
    let svc = s
        .config()
        .service(&service)
        .ok_or_else(|| ApiError::from(tenement::Error::UnknownService(service.clone())))?;
    let timeout = Duration::from_secs(b.timeout.unwrap_or(svc.startup_timeout).max(1));
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
    Ok((StatusCode::CREATED, Json(status)))
}

type JsonBody<T> = std::result::Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn json<T>(body: JsonBody<T>) -> Result<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

#[derive(Deserialize)]
struct LogQuery {
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(s): State<Supervisor>,
    Path(raw): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response> {
    let key = key(&raw)?;
    let limit = q.limit.unwrap_or(100);
    if !q.follow {
        let lines: Vec<LogLine> = s.logs(&key, limit)?.iter().map(|l| (**l).clone()).collect();
        return Ok(Json(lines).into_response());
    }
    // Subscribe before reading the tail so no line falls between the two.
    let live = s.follow_logs();
    let backlog = s.logs(&key, limit)?;
    let backlog = stream::iter(backlog.into_iter().map(|l| Ok(event(&l))));
    let live = stream::unfold(live, move |mut live| {
        let key = key.clone();
        async move {
            loop {
                let ev = match live.recv().await {
                    Ok(line) if *line.instance == key => event(&line),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok::<_, Infallible>(ev), live));
            }
        }
    });
    Ok(Sse::new(backlog.chain(live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn event(line: &LogLine) -> Event {
    Event::default()
        .event("log")
        .data(serde_json::to_string(line).expect("log lines serialize"))
}
