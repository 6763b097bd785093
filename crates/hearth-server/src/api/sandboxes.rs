//! Sandbox routes: create, list, get, destroy, extend.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;

use hearth_store::{SandboxFilter, SandboxState};

use super::model::{CreateSandboxRequest, ListQuery, SandboxList, SandboxView, TimeoutRequest};
use super::validate::create_spec;
use super::{ApiJson, AppState};
use crate::error::{ApiError, ErrorResponse};

fn view(state: &AppState, record: hearth_store::SandboxRecord) -> SandboxView {
    let expires = state.manager.live(&record.id).and_then(|l| l.expires_ms());
    SandboxView::from_record(record, expires)
}

/// Create a sandbox and wait until it runs.
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "Running", body = SandboxView),
        (status = 400, description = "A field is invalid, or the image is not built", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 429, description = "The host is at capacity; the message names the limit", body = ErrorResponse),
        (status = 502, description = "The VM did not boot", body = ErrorResponse),
    )
)]
pub async fn create_sandbox(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    let spec = create_spec(request)?;
    let record = state.manager.create(spec).await?;
    Ok((StatusCode::CREATED, Json(view(&state, record))))
}

/// List sandboxes, newest first.
#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    params(ListQuery),
    responses(
        (status = 200, description = "OK", body = SandboxList),
        (status = 400, description = "Unknown state or malformed label", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
    )
)]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<SandboxList>, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let mut filter = SandboxFilter::default();
    for (key, value) in pairs {
        match key.as_str() {
            "state" => {
                for name in value.split(',').filter(|s| !s.is_empty()) {
                    let parsed = name
                        .parse::<SandboxState>()
                        .map_err(|e| ApiError::invalid("state", e))?;
                    filter.states.push(parsed);
                }
            }
            "label" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::invalid("label", format!("label filter {value:?} must be key=value"))
                })?;
                filter.labels.insert(k.to_string(), v.to_string());
            }
            "limit" => {
                filter.limit = value.parse().map_err(|_| {
                    ApiError::invalid(
                        "limit",
                        format!("limit must be a positive integer, got {value:?}"),
                    )
                })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; use state, label or limit"
                )))
            }
        }
    }
    let records = state.events.store().list_sandboxes(&filter).await?;
    let sandboxes = records.into_iter().map(|r| view(&state, r)).collect();
    Ok(Json(SandboxList { sandboxes }))
}

/// One sandbox.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "OK", body = SandboxView),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    )
)]
pub async fn get_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    let record = state.manager.record(&id).await?;
    Ok(Json(view(&state, record)))
}

/// Destroy a sandbox (its VM and every file it wrote) and return its final
/// record. Destroying an ended sandbox returns it unchanged.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "OK", body = SandboxView),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    )
)]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    let record = state.manager.destroy(&id).await?;
    Ok(Json(view(&state, record)))
}

/// Set a running sandbox's timeout, counted from now.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/timeout",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = TimeoutRequest,
    responses(
        (status = 200, description = "OK", body = SandboxView),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "Not running", body = ErrorResponse),
    )
)]
pub async fn set_timeout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<TimeoutRequest>,
) -> Result<Json<SandboxView>, ApiError> {
    let timeout = request.timeout.parse("timeout")?;
    let record = state.manager.set_timeout(&id, timeout).await?;
    Ok(Json(view(&state, record)))
}
