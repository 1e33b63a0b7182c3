//! Who may call the API. Over the control socket everyone is admin (its file mode decided);
//! over TCP a bearer token says who: an admin, or a tenant limited to the instances whose id
//! is the tenant's name. Failed attempts are rate-limited per client address, so an anonymous
//! client hammering bad tokens never locks anyone else out (and never the owner of a good
//! token: checking one costs a microsecond, see `tenement::Tokens`). Tokens are never logged.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::JsonBody;

use tenement::{Check, Principal, Supervisor, TokenInfo};
use tenement_core::InstanceId;

use crate::error::ApiError;

/// Who is on the other end of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The local control socket: its file mode (0600) already decided.
    ControlSocket,
    /// A TCP client: `/api/` needs a bearer token.
    Network,
}

/// The client's address, put into request extensions by the front door.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Failed attempts allowed per client address per window.
const MAX_FAILURES: usize = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// Failed token attempts per client address.
#[derive(Clone, Default)]
pub struct RateLimiter {
    failures: Arc<Mutex<HashMap<IpAddr, Vec<Instant>>>>,
}

impl RateLimiter {
    /// Whether `ip` has used up its failed attempts.
    fn blocked(&self, ip: IpAddr) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        f.get_mut(&ip).is_some_and(|recent| {
            recent.retain(|t| now.duration_since(*t) < WINDOW);
            recent.len() >= MAX_FAILURES
        })
    }

    /// Counts a failed attempt from `ip`; whether it was over the limit (then it is answered
    /// 429, not 401: under a burst of parallel guesses, at most the limit get an answer).
    fn failed(&self, ip: IpAddr) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if f.len() > 100_000 {
            // Bounded memory under a spray of addresses: forget the quiet ones.
            f.retain(|_, v| v.iter().any(|t| now.duration_since(*t) < WINDOW));
        }
        let recent = f.entry(ip).or_default();
        recent.retain(|t| now.duration_since(*t) < WINDOW);
        if recent.len() >= MAX_FAILURES {
            return true;
        }
        recent.push(now);
        false
    }
}

/// State of the auth middleware.
#[derive(Clone)]
pub struct Gate {
    pub supervisor: Supervisor,
    pub access: Access,
    pub limiter: RateLimiter,
}

pub(crate) fn unauthorized(msg: &str) -> Response {
    let mut res = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("static header"),
    );
    res
}

/// The token of an `Authorization: Bearer …` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
pub fn bearer(headers: &header::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
}

/// Decides the request's [`Principal`] (or refuses it) and puts it in its extensions.
pub async fn authenticate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    if gate.access == Access::ControlSocket {
        req.extensions_mut().insert(Principal::Admin);
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<PeerAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
    let Some(token) = bearer(req.headers()) else {
        return unauthorized("missing bearer token (Authorization: Bearer ...)");
    };
    let tokens = gate.supervisor.tokens();
    // A good token always gets in, even from a blocked address: the block stops guessing,
    // not the owner of a good token (checking one costs a microsecond).
    let principal = match tokens.check(&token) {
        Check::Valid(p) => Some(p),
        Check::Invalid => None,
        // An earlier version's Argon2 hash: slow, so only for addresses not blocked.
        Check::Legacy if gate.limiter.blocked(ip) => return too_many(),
        Check::Legacy => tokens.verify_legacy(&token).await,
    };
    match principal {
        Some(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        None if gate.limiter.failed(ip) => too_many(),
        None => {
            tracing::info!(client = %ip, "rejected an invalid API token");
            unauthorized("invalid token")
        }
    }
}

fn too_many() -> Response {
    let mut res = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many failed attempts from this address; wait a minute",
    )
    .into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, "60".parse().expect("static header"));
    res
}

pub fn admin_only(p: &Principal) -> Result<(), ApiError> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin token may do this",
        ))
    }
}

/// `POST /api/tokens`: the only time a token is ever shown.
pub async fn token_gen(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    JsonBody(body): JsonBody<Option<tenement_api::TokenRequest>>,
) -> Result<(StatusCode, Json<tenement_api::TokenCreated>), ApiError> {
    admin_only(&p)?;
    let tenant = body
        .and_then(|b| b.tenant)
        .map(|t| t.parse::<InstanceId>())
        .transpose()?;
    let token = s.tokens().generate(tenant.clone()).await?;
    let created = tenement_api::TokenCreated {
        token,
        tenant: tenant.map(|t| t.to_string()),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/tokens`: ids and tenants, never secrets.
pub async fn token_list(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    admin_only(&p)?;
    Ok(Json(s.tokens().list().await?))
}

/// `DELETE /api/tokens/{id}`: takes effect at once.
pub async fn token_revoke(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin_only(&p)?;
    let Ok(id) = id.parse::<i64>() else {
        let msg = format!("token ids are numbers (`ten token list`), not `{id}`");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg));
    };
    if s.tokens().revoke(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token {id}"),
        ))
    }
}
