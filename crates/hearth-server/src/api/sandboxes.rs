//! Sandbox routes: create, list, get, destroy, extend.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use hearth_store::{NodeState, SandboxFilter, SandboxState};

use super::model::{CreateSandboxRequest, ListQuery, SandboxList, SandboxView, TimeoutRequest};
use super::validate::create_spec;
use super::{ApiJson, AppState};
use crate::error::{ApiError, ErrorResponse};
use crate::forward::{no_node_has_room, placement, FORWARDED_BY};
use crate::manager::ManagerError;

fn view(record: hearth_store::SandboxRecord) -> SandboxView {
    SandboxView::from_record(record)
}

/// Create a sandbox and wait until it runs. It is placed on the live node
/// with the most free memory (or on `node`); a node at capacity passes it
/// to the next.
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "Running", body = SandboxView),
        (status = 400, description = "A field is invalid, the image is not built, or the node named is not alive", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 429, description = "No node has room; the message names the limit", body = ErrorResponse),
        (status = 502, description = "The VM did not boot, or the node chosen did not answer", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn create_sandbox(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateSandboxRequest>,
) -> Result<Response, ApiError> {
    // Checked here, so that a bad request is refused by the node it reached.
    let spec = create_spec(request.clone(), state.manager.options().network.limits)?;
    let me = state.manager.node().id().to_string();
    if headers.contains_key(FORWARDED_BY) {
        let record = state.manager.create(spec).await?;
        return Ok((StatusCode::CREATED, Json(view(record))).into_response());
    }
    let store = state.events.store();
    let memory = spec.options.memory.bytes();
    let vcpus = spec.options.vcpus;
    let (candidates, mut full) = match &request.node {
        Some(node) if *node == me => (vec![me.clone()], Vec::new()),
        Some(node) => match store.node(node).await? {
            Some(record) if record.state == NodeState::Alive => (vec![node.clone()], Vec::new()),
            _ => {
                return Err(ApiError::invalid(
                    "node",
                    format!("no live node {node:?}; list them with GET /v1/nodes"),
                ))
            }
        },
        None => {
            let mut nodes = store.nodes().await?;
            nodes.retain(|n| n.state == NodeState::Alive);
            for node in &mut nodes {
                if node.id == me {
                    node.load = state.manager.load();
                }
            }
            // Alone: this node's own admission decides, and says why.
            if nodes.iter().all(|n| n.id == me) {
                let record = state.manager.create(spec).await?;
                return Ok((StatusCode::CREATED, Json(view(record))).into_response());
            }
            match placement(&nodes, &me, memory, vcpus) {
                Ok(placed) => (placed.candidates, placed.full),
                // By the loads last reported nobody has room; this node
                // asks its own admission anyway (its load is live, and a
                // refusal is recorded and counted here).
                Err(why) => match state.manager.create(spec.clone()).await {
                    Ok(record) => {
                        return Ok((StatusCode::CREATED, Json(view(record))).into_response())
                    }
                    Err(ManagerError::CapacityExceeded { .. }) => {
                        return Err(ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "capacity_exceeded",
                            why,
                        ))
                    }
                    Err(error) => return Err(error.into()),
                },
            }
        }
    };
    let mut forward_headers = HeaderMap::new();
    for name in [AUTHORIZATION, CONTENT_TYPE, ACCEPT] {
        if let Some(value) = headers.get(&name) {
            forward_headers.insert(name, value.clone());
        }
    }
    let body = serde_json::to_vec(&CreateSandboxRequest {
        node: None,
        ..request
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    // Loads are as of each node's last heartbeat: a node chosen may turn
    // out full, and the next one is tried.
    for node_id in &candidates {
        if *node_id == me {
            match state.manager.create(spec.clone()).await {
                Err(ManagerError::CapacityExceeded { message, .. }) => {
                    full.push(format!("{me}: {message}"));
                    continue;
                }
                Err(error) => return Err(error.into()),
                Ok(record) => return Ok((StatusCode::CREATED, Json(view(record))).into_response()),
            }
        }
        let Some(node) = store.node(node_id).await? else {
            continue;
        };
        let answer = state
            .forwarder
            .forward(
                &node,
                Method::POST,
                "/v1/sandboxes",
                &forward_headers,
                Body::from(body.clone()),
                "the node chosen for the sandbox",
            )
            .await;
        if answer.status() != StatusCode::TOO_MANY_REQUESTS {
            return Ok(answer);
        }
        let refusal = axum::body::to_bytes(answer.into_body(), 64 * 1024)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<ErrorResponse>(&b).ok())
            .map(|e| e.error.message)
            .unwrap_or_else(|| "at capacity".into());
        full.push(format!("{node_id}: {refusal}"));
    }
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "capacity_exceeded",
        no_node_has_room(memory, vcpus, &full),
    ))
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
            "node" => filter.node_id = Some(value),
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
                    "unknown query parameter {other:?}; use state, label, node or limit"
                )))
            }
        }
    }
    let records = state.events.store().list_sandboxes(&filter).await?;
    let sandboxes = records.into_iter().map(view).collect();
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
    Ok(Json(view(record)))
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
    Ok(Json(view(record)))
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
    Ok(Json(view(record)))
}
