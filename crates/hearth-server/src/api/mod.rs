//! The REST API: routes, authentication, extractors that turn bad input
//! into [`ApiError`]s, and the OpenAPI document generated from the
//! handlers.

mod events;
mod exec;
mod files;
pub mod model;
mod nodes;
pub mod request_id;
pub mod runs;
mod sandboxes;
mod system;
pub mod validate;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorResponse};
use crate::events::EventLog;
use crate::forward::{answered_anywhere, sandbox_of, Forwarder, FORWARDED_BY};
use crate::manager::SandboxManager;
use crate::metrics::Metrics;
use crate::runs::RunEngine;
use crate::token::TokenCheck;

/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 8 << 20;
/// How much of a too-large body is read before answering 413.
const DRAIN_LIMIT: usize = 64 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The sandboxes.
    pub manager: SandboxManager,
    /// Durable runs.
    pub runs: RunEngine,
    /// The event log.
    pub events: EventLog,
    /// Metrics.
    pub metrics: Metrics,
    /// The API token.
    pub token: Arc<TokenCheck>,
    /// Passes requests to the node that owns their sandbox.
    pub forwarder: Forwarder,
    /// Room for what requests buffer (collected output, uploads).
    pub buffers: crate::buffers::BufferBudget,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hearth",
        description = "Sandboxes for agents: each one a microVM that boots, runs and dies. Every request but /healthz needs `Authorization: Bearer <token>` (the token is in $HEARTH_HOME/token). Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ErrorResponse, hearth_store::EventPayload))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and the OpenAPI document describing them.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (protected, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            sandboxes::create_sandbox,
            sandboxes::list_sandboxes
        ))
        .routes(routes!(sandboxes::get_sandbox, sandboxes::delete_sandbox))
        .routes(routes!(sandboxes::set_timeout))
        .routes(routes!(exec::start_exec))
        .routes(routes!(exec::list_execs))
        .routes(routes!(exec::get_exec))
        .routes(routes!(exec::exec_events))
        .routes(routes!(exec::write_stdin))
        .routes(routes!(exec::kill_exec))
        .routes(routes!(
            files::write_file,
            files::read_file,
            files::remove_file
        ))
        .routes(routes!(files::list_files))
        .routes(routes!(files::stat_file))
        .routes(routes!(files::make_dir))
        .routes(routes!(events::sandbox_events))
        .routes(routes!(events::server_events))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(runs::start_run, runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::run_events))
        .routes(routes!(runs::run_logs))
        .routes(routes!(runs::signal_run))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::resolve_run))
        .routes(routes!(runs::run_result))
        .routes(routes!(runs::upgrade_run))
        .routes(routes!(runs::fork_run))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi_json))
        .split_for_parts();
    let (public, public_api) = OpenApiRouter::new()
        .routes(routes!(system::healthz))
        .split_for_parts();
    openapi.merge(public_api);
    // /healthz needs no token.
    if let Some(item) = openapi.paths.paths.get_mut("/healthz") {
        if let Some(get) = item.get.as_mut() {
            get.security = Some(vec![
                utoipa::openapi::security::SecurityRequirement::default(),
            ]);
        }
    }
    (protected.merge(public), openapi)
}

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let (routes, openapi) = routes();
    let openapi = Arc::new(openapi.to_json().expect("the OpenAPI document serializes"));
    let routes = routes
        .layer(middleware::from_fn_with_state(
            state.clone(),
            route_to_owner,
        ))
        .layer(axum::Extension(system::OpenApiJson(openapi)))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // The token is checked before routing, so that a caller without it
    // learns nothing about the routes: a method a route does not take
    // (OPTIONS, PATCH) or an unknown path is a 401 too, not a 405 listing
    // the route's methods.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn_with_state(state, require_token))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(middleware::from_fn(request_id::assign))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see GET /v1/openapi.json for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see GET /v1/openapi.json for the API",
    )
}

/// Every route but `/healthz` needs the bearer token. Also: an error
/// answer to a request that carried a body says `Connection: close`, since
/// the handler may have answered without reading the body, and the
/// connection cannot be reused for the client's next request.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let has_body = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
        || request.headers().contains_key(TRANSFER_ENCODING);
    let mut response = if request.uri().path() == "/healthz" {
        next.run(request).await
    } else {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let refusal = match presented {
            None => Some("missing Authorization header: send `Authorization: Bearer <token>`; the token is in $HEARTH_HOME/token"),
            Some(value) => match bearer_token(value) {
                Some(token) if state.token.accepts(token).await => None,
                Some(_) => Some("invalid API token: it may have been rotated; read the current one from $HEARTH_HOME/token"),
                None => Some("the Authorization header must be `Bearer <token>`"),
            },
        };
        match refusal {
            None => next.run(request).await,
            Some(refusal) => {
                let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", refusal)
                    .into_response();
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
        }
    };
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name
/// is matched in any case (RFC 7235 §2.1: `bearer`, `BEARER` are the same
/// scheme); any run of spaces or tabs may follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches([' ', '\t']))
}

/// A request about a sandbox whose VM runs on another live node goes to
/// that node (after this node checked the token); everything else, and
/// anything a node already forwarded, is answered here.
async fn route_to_owner(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let Some(id) = sandbox_of(path) else {
        return next.run(request).await;
    };
    if request.headers().contains_key(FORWARDED_BY)
        || answered_anywhere(request.method(), path)
        || state.manager.live(id).is_some()
    {
        return next.run(request).await;
    }
    let owner = match owner_elsewhere(&state, id).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return next.run(request).await,
        Err(error) => return error.into_response(),
    };
    let id = id.to_string();
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    tracing::debug!(sandbox = %id, node = %owner.id, "forwarding to the owner node");
    state
        .forwarder
        .forward(
            &owner,
            parts.method,
            &path_and_query,
            &parts.headers,
            body,
            &format!("sandbox {id}"),
        )
        .await
}

/// The live node that runs sandbox `id`, if that is not this node.
async fn owner_elsewhere(
    state: &AppState,
    id: &str,
) -> Result<Option<hearth_store::NodeRecord>, ApiError> {
    let store = state.events.store();
    let Some(record) = store.sandbox(id).await? else {
        return Ok(None);
    };
    if record.state.is_final() || record.node_id == state.manager.node().id() {
        return Ok(None);
    }
    Ok(store
        .node(&record.node_id)
        .await?
        .filter(|n| n.state == hearth_store::NodeState::Alive && n.epoch == record.node_epoch))
}

/// `Json` whose rejections are [`ApiError`]s naming the field at fault.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let body = read_bounded(req.into_body()).await?;
        parse_json(&body).map(ApiJson)
    }
}

/// Read a body of at most [`MAX_JSON_BODY`] bytes. A larger one is read on
/// (and dropped) up to [`DRAIN_LIMIT`] before the 413, so that a client
/// still sending gets the answer instead of a reset connection.
async fn read_bounded(body: axum::body::Body) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut data = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
        total += chunk.len();
        if total > DRAIN_LIMIT {
            break;
        }
        if total <= MAX_JSON_BODY {
            data.extend_from_slice(&chunk);
        }
    }
    if total > MAX_JSON_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the JSON body is larger than {} MiB; send big data as a file (PUT .../files)",
                MAX_JSON_BODY >> 20
            ),
        ));
    }
    Ok(data)
}

/// Parse a JSON body; a 400 names the field at fault by its path in the
/// document (`memory`, `labels.team`, `argv[1]`), as serde found it.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => match deserializer.end() {
            Ok(()) => Ok(value),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid JSON body: {e}; send one JSON object"
            ))),
        },
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let field = (path != "." && !path.is_empty()).then_some(path);
            let message = match &field {
                Some(field) => format!("invalid JSON body: {field}: {inner}"),
                None => format!("invalid JSON body: {inner}"),
            };
            Err(ApiError {
                field,
                ..ApiError::bad_request(message)
            })
        }
    }
}

/// `Query` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let detail = text
        .split_once("string: ")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(text);
    ApiError::bad_request(format!("invalid query: {detail}"))
}

/// The `Last-Event-ID` header, as sent by a reconnecting SSE client.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request("Last-Event-ID must be an event id (a non-negative integer)")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::model::{CreateSandboxRequest, ExecRequestBody};
    use super::*;

    #[test]
    fn json_errors_name_the_field_by_its_path() {
        let field = |body: &str| parse_json::<CreateSandboxRequest>(body.as_bytes()).unwrap_err();
        let e = field(r#"{"memory": true}"#);
        assert_eq!(e.field.as_deref(), Some("memory"), "{}", e.message);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = field(r#"{"labels": {"team": 1}}"#);
        assert_eq!(e.field.as_deref(), Some("labels.team"), "{}", e.message);
        let e = parse_json::<ExecRequestBody>(br#"{"argv": ["x", 1]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("argv[1]"), "{}", e.message);
        let e = field(r#"{"bogus": 1}"#);
        assert_eq!(e.field.as_deref(), Some("bogus"));
        assert!(e.message.contains("unknown field `bogus`"), "{}", e.message);
        // Not about one field: no field, a clear message.
        let e = field(r#"{} {}"#);
        assert!(e.message.contains("one JSON object"), "{}", e.message);
        let e = field("[");
        assert_eq!(e.field, None);
        assert!(parse_json::<CreateSandboxRequest>(b"{}").is_ok());
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer t1", "bearer t1", "BEARER t1", "bEaReR \t t1 "] {
            assert_eq!(bearer_token(value), Some("t1"), "{value:?}");
        }
        assert_eq!(bearer_token("Basic t1"), None);
        assert_eq!(bearer_token("Bearert1"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
