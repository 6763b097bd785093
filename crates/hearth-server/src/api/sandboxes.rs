//! Sandbox routes: create, list, get, destroy, extend.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;

use hearth_sandbox::SandboxOptions;
use hearth_store::{SandboxFilter, SandboxState};

use super::model::{CreateSandboxRequest, ListQuery, SandboxList, SandboxView, TimeoutRequest};
use super::{ApiJson, AppState};
use crate::error::{ApiError, ErrorResponse};
use crate::manager::CreateSpec;

/// Most labels per sandbox.
const MAX_LABELS: usize = 32;

fn view(state: &AppState, record: hearth_store::SandboxRecord) -> SandboxView {
    let expires = state.manager.live(&record.id).and_then(|l| l.expires_ms());
    SandboxView::from_record(record, expires)
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels, got {}", labels.len()),
        ));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(ApiError::invalid(
                "labels",
                format!("label name {key:?} is not valid: 1-63 characters of letters, digits, '-', '_', '.', '/'"),
            ));
        }
        if value.len() > 256 || value.contains('\0') {
            return Err(ApiError::invalid(
                "labels",
                format!("label {key:?}: the value must be at most 256 bytes, without NUL"),
            ));
        }
    }
    Ok(())
}

fn validate_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::invalid(
                field,
                format!("environment variable name {key:?} is not valid (empty, or contains '=' or NUL)"),
            ));
        }
        if value.contains('\0') {
            return Err(ApiError::invalid(
                field,
                format!("environment variable {key} contains a NUL byte"),
            ));
        }
    }
    Ok(())
}

pub(super) fn env_checked(
    field: &str,
    env: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    validate_env(field, &env)?;
    Ok(env)
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
    let defaults = SandboxOptions::default();
    let mut options = SandboxOptions {
        image: request.image.unwrap_or(defaults.image.clone()),
        vcpus: request.vcpus.unwrap_or(defaults.vcpus),
        labels: request.labels,
        ..defaults
    };
    if let Some(memory) = &request.memory {
        options.memory = memory.parse("memory")?;
    }
    if let Some(disk) = &request.disk {
        options.disk = disk.parse("disk")?;
    }
    if let Some(timeout) = &request.timeout {
        options.timeout = Some(timeout.parse("timeout")?);
    }
    validate_labels(&options.labels)?;
    let env = env_checked("env", request.env)?;
    if let Err(e) = options.validate() {
        let message = e.to_string();
        let field = ["image", "vcpus", "memory", "disk", "timeout"]
            .into_iter()
            .find(|f| message.contains(f))
            .unwrap_or("body");
        return Err(ApiError::invalid(field, message));
    }
    let record = state.manager.create(CreateSpec { options, env }).await?;
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
