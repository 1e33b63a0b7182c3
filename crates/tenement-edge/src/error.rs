//! The one place where errors become HTTP statuses: `{"error": "...", "code": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = tenement_api::ErrorBody {
            error: self.message,
            code: self.code.into(),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<tenement::Error> for ApiError {
    fn from(e: tenement::Error) -> Self {
        use tenement::Error as E;
        let (status, code) = match &e {
            E::UnknownService(_) => (StatusCode::NOT_FOUND, "unknown_service"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            E::Unavailable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "isolation_unavailable"),
            E::NotReady { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            E::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            E::NoFreePort | E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            E::NoInstances(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_instances"),
            E::TooManyInstances { .. } => (StatusCode::SERVICE_UNAVAILABLE, "too_many_instances"),
            E::BadWeight(_) => (StatusCode::BAD_REQUEST, "bad_weight"),
            E::BadDomain(_) => (StatusCode::BAD_REQUEST, "invalid_domain"),
            E::DomainTaken(..) => (StatusCode::CONFLICT, "domain_taken"),
            E::UnknownDomain(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Store { .. } | E::LogStore { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<tenement_core::IdError> for ApiError {
    fn from(e: tenement_core::IdError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_id", e.to_string())
    }
}
