//! `/api/domains`: custom domains (admin only: a domain routes the whole internet's requests
//! for a name, whoever owns it).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use tenement::{Principal, Supervisor};
use tenement_api::Domain;

use crate::api::{JsonBody, TlsState};
use crate::auth::admin_only;
use crate::error::ApiError;

/// `POST /api/domains {"name": "shop.customer.org", "instance": "api:alice"}`: routes the name
/// to the instance from now on; with HTTPS on, its certificate is ordered at once.
pub async fn add(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Extension(TlsState(tls)): Extension<TlsState>,
    JsonBody(body): JsonBody<Domain>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    admin_only(&p)?;
    let name = s.add_domain(&body.name, &body.instance)?;
    if let Some(tls) = tls {
        tls.ensure(&name);
    }
    let added = Domain {
        name,
        instance: body.instance,
    };
    Ok((StatusCode::CREATED, Json(added)))
}

/// `DELETE /api/domains/{name}`.
pub async fn remove(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin_only(&p)?;
    s.remove_domain(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/domains`.
pub async fn list(
    State(s): State<Supervisor>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<Domain>>, ApiError> {
    admin_only(&p)?;
    let list = s.domains().list();
    Ok(Json(
        list.into_iter()
            .map(|(name, instance)| Domain { name, instance })
            .collect(),
    ))
}
