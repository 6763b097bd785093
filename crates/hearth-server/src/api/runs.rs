//! Durable run routes: start, list, show (with the journal), events, logs,
//! signal, cancel, resolve, result.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use hearth_engine::journal::Resolution;
use hearth_engine::{Program, RunSpec, RunState, StepError, StepRecord, WorkspaceMode};
use hearth_store::{Event, NodeState, RunFilter, RunRecord, StoreError};

use super::model::LogStreamEvent;
use super::{events, ApiJson, ApiQuery, AppState};
use crate::error::{ApiError, ErrorResponse};
use crate::forward::FORWARDED_BY;
use crate::runs::{RunError, StartRun};

/// Longest `?wait=` of a result request.
const MAX_RESULT_WAIT: Duration = Duration::from_secs(3600);

/// A program sent to start a run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgramRequest {
    /// Files by relative path, each base64.
    pub files: BTreeMap<String, String>,
    /// The file to run.
    pub entry: String,
}

/// Start a run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRunRequest {
    /// The program, pinned when the run starts.
    pub program: ProgramRequest,
    /// Its input.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// Guest image (default `default`).
    #[serde(default)]
    pub image: Option<String>,
    /// Guest memory, MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Virtual CPUs.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Longest one launch may run, seconds.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// The run fails if it has not ended this many seconds from now.
    #[serde(default)]
    pub deadline_seconds: Option<f64>,
    /// Relaunches allowed after a crash (default 3).
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// The command to run instead of the entry's default.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Environment of the program.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `ephemeral` (default: the VM's files go with it; only persisted
    /// files come back) or `durable` (the files are checkpointed at every
    /// step's end, and a relaunch or a fork boots on them).
    #[serde(default)]
    pub workspace: Option<String>,
    /// What each launch's programs may reach on the network (default:
    /// nothing); limits apply to each launch's VM.
    #[serde(default)]
    pub network: Option<super::model::NetworkRequest>,
}

/// A run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// pending, running, waiting, needs_attention, completed, failed,
    /// cancelled.
    pub state: String,
    /// Digest of its pinned program.
    pub program: String,
    /// Its input.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Its output, once completed.
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// `{code, message}` once failed.
    #[schema(value_type = Object)]
    pub error: Option<Value>,
    /// The run that spawned it.
    pub parent_id: Option<String>,
    /// VMs it had.
    pub launches: u32,
    /// Relaunches after a crash.
    pub restarts: u32,
    /// What a waiting run waits for.
    #[schema(value_type = Object)]
    pub waiting_for: Option<Value>,
    /// When a waiting or pending run is next launched, ms since the epoch.
    pub wake_ms: Option<u64>,
    /// When it fails if not ended.
    pub deadline_ms: Option<u64>,
    /// The sandbox of its current or last launch.
    pub sandbox_id: Option<String>,
    /// The node that runs it.
    pub node_id: Option<String>,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// When it started, ms since the epoch.
    pub created_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// How its launches are shaped.
    #[schema(value_type = Object)]
    pub spec: Value,
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            state: r.state.to_string(),
            program: r.program,
            input: r.input,
            output: r.output,
            error: r.error,
            parent_id: r.parent_id,
            launches: r.launches,
            restarts: r.restarts,
            waiting_for: r.waiting_for,
            wake_ms: r.wake_ms,
            deadline_ms: r.deadline_ms,
            sandbox_id: r.sandbox_id,
            node_id: r.node_id,
            cancelled_by: r.cancelled_by,
            created_ms: r.created_ms,
            ended_ms: r.ended_ms,
            spec: r.spec,
        }
    }
}

/// A run with its journal.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: RunView,
    /// Its steps, in order, with every attempt and the idempotency key
    /// each attempt carried.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
}

/// Runs, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunList {
    /// The runs.
    pub runs: Vec<RunView>,
}

/// Which runs to list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunListQuery {
    /// Only this state (comma-separated for several).
    #[serde(default)]
    pub state: Option<String>,
    /// Only children of this run.
    #[serde(default)]
    pub parent: Option<String>,
    /// At most this many.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A signal's payload.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Delivered to the program's `wait_signal`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
}

/// A signal, recorded.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SignalView {
    /// Its number.
    pub id: i64,
    /// Its name.
    pub name: String,
}

/// Who cancels.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Recorded as who cancelled (default `api`).
    #[serde(default)]
    pub by: Option<String>,
}

/// A decision about a step whose outcome is unknown.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The step.
    pub step: u64,
    /// `retry`, `skip` (with `result`) or `fail` (with `message`).
    pub decision: String,
    /// The result a skipped step returns.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub result: Value,
    /// Why the step fails.
    #[serde(default)]
    pub message: Option<String>,
}

/// `?wait=SECONDS`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// Wait up to this many seconds for the run to end.
    #[serde(default)]
    pub wait: Option<f64>,
}

/// A run's outcome.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunResult {
    /// Its state (the outcome is final only in completed, failed,
    /// cancelled).
    pub state: String,
    /// Its output, once completed.
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// Its error, once failed.
    #[schema(value_type = Object)]
    pub error: Option<Value>,
}

/// `?after=N`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AfterQuery {
    /// Events numbered above this.
    #[serde(default)]
    pub after: Option<i64>,
}

/// A run's events.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunEvents {
    /// Oldest first.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Event>,
}

impl From<RunError> for ApiError {
    fn from(error: RunError) -> Self {
        let message = error.to_string();
        match error {
            RunError::Store(StoreError::RunNotFound(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            RunError::Store(StoreError::RunEnded { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "run_ended", message)
            }
            RunError::Store(StoreError::RunOwned { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "run_busy", message)
            }
            RunError::Store(e) => e.into(),
            RunError::Program(_) => ApiError::invalid("program", message),
            RunError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            RunError::Ended(_) => ApiError::new(StatusCode::CONFLICT, "run_ended", message),
            RunError::Invalid(_) => ApiError::bad_request(message),
        }
    }
}

fn check_run_name(name: Option<&str>) -> Result<(), ApiError> {
    match name {
        Some(name) if name.is_empty() || name.len() > 256 => Err(ApiError::invalid(
            "name",
            "a run name must be 1 to 256 bytes",
        )),
        _ => Ok(()),
    }
}

fn seconds(field: &str, value: Option<f64>, max: Duration) -> Result<Option<u64>, ApiError> {
    match value {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= max.as_secs_f64() => {
            Ok(Some((s * 1000.0) as u64))
        }
        Some(s) => Err(ApiError::invalid(
            field,
            format!(
                "{field} must be above 0 and at most {} seconds, got {s}",
                max.as_secs()
            ),
        )),
    }
}

fn program_of(request: ProgramRequest) -> Result<Program, ApiError> {
    let mut files = BTreeMap::new();
    for (path, data) in request.files {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| {
                ApiError::invalid(
                    "program.files",
                    format!("file {path:?} is not valid base64: {e}"),
                )
            })?;
        files.insert(path, bytes);
    }
    let program = Program {
        files,
        entry: request.entry,
    };
    program
        .check()
        .map_err(|e| ApiError::invalid("program", e.to_string()))?;
    Ok(program)
}

fn start_request(request: StartRunRequest, now_ms: u64) -> Result<StartRun, ApiError> {
    let program = program_of(request.program)?;
    let defaults = RunSpec::default();
    let spec = RunSpec {
        command: request.command.unwrap_or_default(),
        image: request.image.unwrap_or(defaults.image.clone()),
        memory_mib: request.memory_mib.unwrap_or(defaults.memory_mib),
        vcpus: request.vcpus.unwrap_or(defaults.vcpus),
        timeout_ms: seconds(
            "timeout_seconds",
            request.timeout_seconds,
            hearth_proto::limits::MAX_TIMEOUT,
        )?,
        max_restarts: request.max_restarts.unwrap_or(defaults.max_restarts),
        env: request.env,
        workspace: match request.workspace.as_deref() {
            None => WorkspaceMode::Ephemeral,
            Some(text) => text
                .parse()
                .map_err(|e: String| ApiError::invalid("workspace", e))?,
        },
        ..defaults
    };
    let spec = match &request.network {
        None => spec,
        Some(network) => {
            // Only the limits it sets are kept: each launch's node fills
            // in its own defaults.
            let checked =
                super::validate::network_spec(network, hearth_net::NetworkLimits::default())?;
            let asked = crate::network::NetworkLimitsAsked {
                rate: network.rate.is_some(),
                max_bytes: network.max_bytes.is_some(),
                max_connections: network.max_connections.is_some(),
            };
            RunSpec {
                network: checked.for_run(&asked),
                ..spec
            }
        }
    };
    if spec.max_restarts > 1000 {
        return Err(ApiError::invalid(
            "max_restarts",
            "max_restarts must be at most 1000",
        ));
    }
    check_run_name(request.name.as_deref())?;
    let deadline = seconds(
        "deadline_seconds",
        request.deadline_seconds,
        hearth_proto::limits::MAX_TIMEOUT,
    )?;
    Ok(StartRun {
        program,
        input: request.input,
        name: request.name,
        spec,
        deadline_ms: deadline.map(|d| now_ms + d),
    })
}

/// Start a durable run: its program is pinned (stored by content) and a
/// node launches it in a fresh VM.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    request_body = StartRunRequest,
    responses(
        (status = 201, description = "Started (pending)", body = RunView),
        (status = 400, description = "A field is invalid (program, input, limits)", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
    )
)]
pub async fn start_run(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<StartRunRequest>,
) -> Result<Response, ApiError> {
    let now = state.events.store().clock().now_ms();
    let start = start_request(request, now)?;
    let run = state.runs.start(start).await?;
    Ok((StatusCode::CREATED, Json(RunView::from(run))).into_response())
}

/// List runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(RunListQuery),
    responses(
        (status = 200, description = "Runs", body = RunList),
        (status = 400, description = "A filter is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RunListQuery>,
) -> Result<Json<RunList>, ApiError> {
    let mut filter = RunFilter {
        parent_id: query.parent,
        limit: query.limit.unwrap_or(0),
        ..RunFilter::default()
    };
    if let Some(states) = &query.state {
        for name in states.split(',') {
            let state: RunState = name
                .parse()
                .map_err(|e: String| ApiError::invalid("state", e))?;
            filter.states.push(state);
        }
    }
    let runs = state.runs.list(&filter).await?;
    Ok(Json(RunList {
        runs: runs.into_iter().map(RunView::from).collect(),
    }))
}

/// A step as shown: the record with each attempt's idempotency key.
fn step_view(run_id: &str, step: &StepRecord) -> Value {
    let mut value = serde_json::to_value(step).unwrap_or_default();
    value["idempotency_key"] =
        Value::String(hearth_engine::digest::idempotency_key(run_id, step.seq));
    value
}

/// A run with its journal: every step, its attempts and their outcome.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunDetail),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let run = state.runs.get(&id).await?;
    let steps = state.runs.steps(&id).await?;
    Ok(Json(RunDetail {
        steps: steps.iter().map(|s| step_view(&id, s)).collect(),
        run: RunView::from(run),
    }))
}

/// A run's events (state changes, steps, launches), oldest first. With
/// `Accept: text/event-stream`, a live stream: the history after
/// `Last-Event-ID` (or `?after=`), then each new event as it is recorded,
/// ending after the run's final event (`run.completed`, `run.failed` or
/// `run.cancelled`). Event ids are the events' `seq`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    tag = "runs",
    params(("id" = String, Path, description = "Run id"), AfterQuery),
    responses(
        (status = 200, description = "Events, or the live stream with Accept: text/event-stream", content((RunEvents = "application/json"), (LogStreamEvent = "text/event-stream"))),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 400, description = "A field or parameter is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn run_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<AfterQuery>,
) -> Result<Response, ApiError> {
    state.runs.get(&id).await?;
    let after = events::resume_after(&headers, query.after)?;
    if events::wants_stream(&headers) {
        return Ok(events::stream(
            state.events.clone(),
            events::Feed::Run(id),
            after,
        ));
    }
    let events = state
        .runs
        .events(&id, after, hearth_store::MAX_PAGE)
        .await?;
    Ok(Json(RunEvents { events }).into_response())
}

/// The program's output of every launch, interleaved with the run's
/// events, as text; each line labelled by its launch.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/logs",
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "Logs", body = String, content_type = "text/plain"),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn run_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.runs.get(&id).await?;
    let mut text = String::new();
    let mut after = 0;
    loop {
        let events = state
            .runs
            .events(&id, after, hearth_store::MAX_PAGE)
            .await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        for event in &events {
            if event.kind == "run.exited" {
                let launch = event.data["launch"].as_u64().unwrap_or(0);
                if let Some(digest) = event.data["log"].as_str() {
                    if let Some(bytes) = state.events.store().blob(digest).await? {
                        for line in String::from_utf8_lossy(&bytes).lines() {
                            text.push_str(&format!("[launch {launch}] {line}\n"));
                        }
                    }
                }
            }
            text.push_str(&format!("--- {} {}\n", event.kind, event.data));
        }
    }
    Ok(([("content-type", "text/plain; charset=utf-8")], text).into_response())
}

/// Send a signal to a run; a run waiting for it is relaunched and its
/// `wait_signal` returns `data`.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/signals/{name}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id"), ("name" = String, Path, description = "Signal name")),
    request_body = SignalRequest,
    responses(
        (status = 202, description = "Recorded", body = SignalView),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run has ended", body = ErrorResponse),
        (status = 400, description = "A field or parameter is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn signal_run(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    ApiJson(request): ApiJson<SignalRequest>,
) -> Result<Response, ApiError> {
    let signal = state.runs.signal(&id, &name, &request.data).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SignalView {
            id: signal.id,
            name: signal.name,
        }),
    )
        .into_response())
}

/// Cancel a run and its unfinished children; a VM running it is killed at
/// once.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    request_body = CancelRequest,
    responses(
        (status = 200, description = "Cancelled", body = RunView),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run has ended, or another node runs it", body = ErrorResponse),
        (status = 400, description = "A field or parameter is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 502, description = "The node running it did not answer", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CancelRequest>,
) -> Result<Response, ApiError> {
    // A run launched by another live node is cancelled there, where its VM
    // runs and can be killed at once.
    let run = state.runs.get(&id).await?;
    let me = state.manager.node().id().to_string();
    if let (false, Some(owner), false) = (
        headers.contains_key(FORWARDED_BY),
        run.node_id.as_deref().filter(|n| *n != me),
        run.state.is_final(),
    ) {
        let store = state.events.store();
        let node = store
            .node(owner)
            .await?
            .filter(|n| n.state == NodeState::Alive && Some(n.epoch) == run.node_epoch);
        if let Some(node) = node {
            let mut forward = HeaderMap::new();
            for name in [AUTHORIZATION, CONTENT_TYPE] {
                if let Some(value) = headers.get(&name) {
                    forward.insert(name, value.clone());
                }
            }
            forward.insert(
                CONTENT_TYPE,
                "application/json".parse().expect("a header value"),
            );
            let body = serde_json::json!({ "by": request.by }).to_string();
            return Ok(state
                .forwarder
                .forward(
                    &node,
                    Method::POST,
                    &format!("/v1/runs/{id}/cancel"),
                    &forward,
                    Body::from(body),
                    &format!("run {id}"),
                )
                .await);
        }
    }
    let by = request.by.unwrap_or_else(|| "api".into());
    let run = state.runs.cancel(&id, &by).await?;
    Ok(Json(RunView::from(run)).into_response())
}

/// Decide about a step whose outcome is unknown (the run needs
/// attention): run it again, take a result without running it, or fail
/// it. The run is relaunched.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/resolve",
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    request_body = ResolveRequest,
    responses(
        (status = 200, description = "Decided; the run is pending", body = RunView),
        (status = 400, description = "The decision is malformed", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run or step does not wait for a decision", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn resolve_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ResolveRequest>,
) -> Result<Json<RunView>, ApiError> {
    let resolution = match request.decision.as_str() {
        "retry" => Resolution::Retry,
        "skip" => Resolution::SkipWith {
            result: request.result,
        },
        "fail" => Resolution::Fail {
            error: StepError::permanent(
                "decided",
                request
                    .message
                    .unwrap_or_else(|| "failed by a person's decision".into()),
            ),
        },
        other => {
            return Err(ApiError::invalid(
                "decision",
                format!("decision must be retry, skip or fail, got {other:?}"),
            ))
        }
    };
    let run = state.runs.resolve(&id, request.step, resolution).await?;
    Ok(Json(run.into()))
}

/// A run's output (or error), waiting up to `?wait=` seconds for it to
/// end.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/result",
    tag = "runs",
    params(("id" = String, Path, description = "Run id"), ResultQuery),
    responses(
        (status = 200, description = "The run's state and outcome", body = RunResult),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 400, description = "A field or parameter is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn run_result(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ResultQuery>,
) -> Result<Json<RunResult>, ApiError> {
    let wait = seconds("wait", query.wait, MAX_RESULT_WAIT)?.unwrap_or(0);
    let run = state.runs.wait(&id, Duration::from_millis(wait)).await?;
    Ok(Json(RunResult {
        state: run.state.to_string(),
        output: run.output,
        error: run.error,
    }))
}

/// A new program for a run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The program the run runs from now on.
    pub program: ProgramRequest,
}

/// Move a waiting run (or one that needs attention) to a new program. The
/// new program is first run in a fresh VM against the run's journal,
/// recording nothing; the upgrade is refused, naming the first diverging
/// step, unless it replays every recorded step.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/upgrade",
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    request_body = UpgradeRequest,
    responses(
        (status = 200, description = "Upgraded", body = RunView),
        (status = 400, description = "The program is invalid", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The new program diverges from the journal, or the run is running or ended", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn upgrade_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpgradeRequest>,
) -> Result<Json<RunView>, ApiError> {
    let program = program_of(request.program)?;
    let run = state.runs.upgrade(&id, program).await?;
    Ok(Json(run.into()))
}

/// Where to fork a run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many of the run's steps the fork keeps: it replays steps
    /// `0..at_step` and runs step `at_step` and what follows afresh.
    pub at_step: u64,
    /// A name for the fork (default: the run's).
    #[serde(default)]
    pub name: Option<String>,
}

/// Fork a run: a new run of the same program, input and spec whose journal
/// is the run's first `at_step` steps, so it replays them without running
/// them and goes on from there (to try another branch, or to debug a
/// failed run from just before it failed). Both runs go on independently;
/// the fork has no deadline. Persisted files recorded in those steps are
/// restored as in any relaunch.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/fork",
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    request_body = ForkRequest,
    responses(
        (status = 201, description = "The fork, pending", body = RunView),
        (status = 400, description = "The journal is shorter, one of the kept steps has not finished, or they spawn a child whose result they do not hold", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn fork_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ForkRequest>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    check_run_name(request.name.as_deref())?;
    let run = state.runs.fork(&id, request.at_step, request.name).await?;
    Ok((StatusCode::CREATED, Json(run.into())))
}
