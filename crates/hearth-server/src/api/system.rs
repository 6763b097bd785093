//! Health, metrics and the API description.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::model::Health;
use super::AppState;
use crate::error::ErrorResponse;

/// The OpenAPI document, rendered once at start.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

/// Liveness: answers without a token.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "OK", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Prometheus metrics (text format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "No valid token", body = ErrorResponse),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// This API, as OpenAPI 3.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI document", body = Object), (status = 401, description = "No valid token", body = ErrorResponse))
)]
pub async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_string(),
    )
        .into_response()
}
