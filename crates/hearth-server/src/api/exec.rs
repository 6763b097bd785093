//! Exec routes: run a command (streamed, collected or in the background),
//! list, follow, feed and kill execs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::buffers::BufferLease;
use base64::Engine;
use futures_util::stream::{self, Stream};
use serde_json::json;

use super::model::{
    Encoding, ExecList, ExecQuery, ExecRequestBody, ExecResult, ExecStreamEvent, ExecStreamQuery,
    ExecView, ExitView, StdinQuery,
};
use super::validate::exec_spec;
use super::{last_event_id, ApiJson, ApiQuery, AppState};
use crate::error::{ApiError, ErrorResponse};
use crate::execs::{ExecEntry, ExecItem, ExecStatus, Subscription};

/// Response header naming the exec of a streamed `POST .../exec`, for
/// resuming its stream or writing to its stdin.
pub const EXEC_ID_HEADER: &str = "x-hearth-exec-id";

/// `data` in `encoding`, and whether bytes that are not UTF-8 were
/// replaced by U+FFFD (only ever with `utf8`), so that an answer says when
/// its text is not the command's exact output.
fn encode(data: &[u8], encoding: Encoding) -> (String, bool) {
    match encoding {
        Encoding::Utf8 => match String::from_utf8_lossy(data) {
            std::borrow::Cow::Borrowed(text) => (text.to_string(), false),
            std::borrow::Cow::Owned(replaced) => (replaced, true),
        },
        Encoding::Base64 => (
            base64::engine::general_purpose::STANDARD.encode(data),
            false,
        ),
    }
}

/// The data of a `stdout`/`stderr` event: `{data, encoding}`, plus
/// `"lossy": true` when bytes were replaced.
fn output_event(bytes: &[u8], encoding: Encoding) -> serde_json::Value {
    let (data, lossy) = encode(bytes, encoding);
    let mut event = json!({"data": data, "encoding": encoding});
    if lossy {
        event["lossy"] = json!(true);
    }
    event
}

fn exec_view(entry: &ExecEntry) -> ExecView {
    let summary = entry.summary();
    let (state, exit, error) = match &summary.status {
        ExecStatus::Running => ("running", None, None),
        ExecStatus::Exited(report) => ("exited", Some(ExitView::from(report)), None),
        ExecStatus::Failed(message) => ("failed", None, Some(message.clone())),
    };
    ExecView {
        exec_id: summary.id,
        argv: summary.argv,
        cwd: summary.cwd,
        background: summary.background,
        started_ms: summary.started_ms,
        state: state.to_string(),
        exit,
        error,
        attached: summary.attached,
    }
}

/// One exec item as a server-sent event.
fn sse_event(exec_id: &str, seq: u64, item: ExecItem, encoding: Encoding) -> SseEvent {
    let (name, data) = match item {
        ExecItem::Started(pid) => ("started", json!({"pid": pid, "exec_id": exec_id})),
        ExecItem::Stdout(bytes) => ("stdout", output_event(&bytes, encoding)),
        ExecItem::Stderr(bytes) => ("stderr", output_event(&bytes, encoding)),
        ExecItem::Exit(report) => (
            "exit",
            serde_json::to_value(ExitView::from(&report)).unwrap_or_default(),
        ),
        ExecItem::Failed { code, message } => ("error", json!({"code": code, "message": message})),
        ExecItem::Gap { missed } => (
            "gap",
            json!({"missed": missed, "message": "output was dropped while no client was attached"}),
        ),
    };
    SseEvent::default()
        .id(seq.to_string())
        .event(name)
        .data(data.to_string())
}

fn exec_stream(
    subscription: Subscription,
    encoding: Encoding,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events = stream::unfold(subscription, move |mut sub| async move {
        let (seq, item) = sub.next().await?;
        let event = sse_event(sub.entry().id(), seq, item, encoding);
        Some((Ok(event), sub))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn lookup(state: &AppState, id: &str, exec_id: &str) -> Result<Arc<ExecEntry>, ApiError> {
    let live = state.manager.live(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no running sandbox {id:?}; execs are kept only while their sandbox runs"),
        )
    })?;
    live.execs().get(exec_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "sandbox {id} has no exec {exec_id:?}; list them with GET /v1/sandboxes/{id}/execs"
            ),
        )
    })
}

/// The refusal of a collected exec the server has no room for (it is
/// killed).
async fn no_room_to_collect(sub: &Subscription, lease: &BufferLease) -> ApiError {
    sub.entry()
        .kill("the server had no room to collect its output")
        .await;
    crate::buffers::no_room(
        "the command's output could not be collected, so it was killed; stream its output instead (leave out wait=true)",
        lease.budget(),
    )
}

/// Append `data` to `out`, first getting room in the budget for what the
/// vector allocates (it grows by doubling, and every byte of its capacity
/// is memory the server holds).
async fn append(out: &mut Vec<u8>, data: &[u8], lease: &mut BufferLease) -> bool {
    let needed = out.len() + data.len();
    if needed > out.capacity() {
        let capacity = needed.max(out.capacity() * 2).max(64 << 10);
        if !lease
            .grow(
                (capacity - out.capacity()) as u64,
                crate::buffers::ROOM_WAIT,
            )
            .await
        {
            return false;
        }
        out.reserve_exact(capacity - out.len());
    }
    out.extend_from_slice(data);
    true
}

/// Bytes `text` takes written as a JSON string (quotes included): control
/// characters take six (`\u0000`) or two, quotes and backslashes two.
fn json_string_len(text: &str) -> u64 {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<u64>()
}

/// Bytes `data` takes once encoded, at most (before the JSON escapes).
fn encoded_len_bound(data: &[u8], encoding: Encoding) -> u64 {
    match encoding {
        Encoding::Utf8 if std::str::from_utf8(data).is_ok() => data.len() as u64,
        // Each invalid byte may become U+FFFD, three bytes.
        Encoding::Utf8 => 3 * data.len() as u64,
        Encoding::Base64 => (data.len() as u64).div_ceil(3) * 4,
    }
}

/// Collect an exec's output for `?wait=true`, within `limit` bytes and
/// the room `lease` can get in the server's budget, and write the answer
/// (an [`ExecResult`]) as JSON. Every buffer on the way is counted: the
/// collected output, its encoding, and the JSON (which for control bytes
/// is six times the output); once the JSON is written only it stays held.
async fn collect(
    mut sub: Subscription,
    limit: u64,
    encoding: Encoding,
    lease: &mut BufferLease,
) -> Result<Vec<u8>, ApiError> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    while let Some((_, item)) = sub.next().await {
        match item {
            ExecItem::Started(_) | ExecItem::Gap { .. } => {}
            ExecItem::Stdout(b) | ExecItem::Stderr(b)
                if (stdout.len() + stderr.len() + b.len()) as u64 > limit =>
            {
                sub.entry()
                    .kill("its output passed the ?wait=true limit")
                    .await;
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "output_too_large",
                    format!(
                        "the command wrote more than {} to stdout and stderr, the limit for ?wait=true (--max-wait-output); it was killed. Stream its output instead (leave out wait=true)",
                        hearth_proto::ByteSize(limit)
                    ),
                ));
            }
            ExecItem::Stdout(b) => {
                if !append(&mut stdout, &b, lease).await {
                    return Err(no_room_to_collect(&sub, lease).await);
                }
            }
            ExecItem::Stderr(b) => {
                if !append(&mut stderr, &b, lease).await {
                    return Err(no_room_to_collect(&sub, lease).await);
                }
            }
            ExecItem::Exit(report) => {
                let no_room_to_answer = |lease: &BufferLease| {
                    crate::buffers::no_room(
                        "the command ended but the server had no room to write its output into the answer; run it again with its output streamed (leave out wait=true)",
                        lease.budget(),
                    )
                };
                let strings =
                    encoded_len_bound(&stdout, encoding) + encoded_len_bound(&stderr, encoding);
                if !lease.grow(strings, crate::buffers::ROOM_WAIT).await {
                    return Err(no_room_to_answer(lease));
                }
                let (out_text, stdout_lossy) = encode(&stdout, encoding);
                let (err_text, stderr_lossy) = encode(&stderr, encoding);
                drop((stdout, stderr));
                // The rest of the answer (ids, the exit) is small.
                let json = json_string_len(&out_text) + json_string_len(&err_text) + 4096;
                if !lease.grow(json, crate::buffers::ROOM_WAIT).await {
                    return Err(no_room_to_answer(lease));
                }
                let result = ExecResult {
                    exec_id: sub.entry().id().to_string(),
                    stdout: out_text,
                    stderr: err_text,
                    encoding,
                    stdout_lossy,
                    stderr_lossy,
                    exit: ExitView::from(&report),
                };
                let mut body = Vec::with_capacity(json as usize);
                serde_json::to_writer(&mut body, &result)
                    .map_err(|e| ApiError::internal(format!("writing the answer: {e}")))?;
                drop(result);
                lease.shrink_to(body.capacity() as u64);
                return Ok(body);
            }
            ExecItem::Failed { code: _, message } => {
                return Err(ApiError::new(StatusCode::CONFLICT, "exec_failed", message));
            }
        }
    }
    Err(ApiError::internal("the exec ended without an exit report"))
}

/// Run a command. By default the answer is a stream of server-sent events
/// (the exec id is in the `X-Hearth-Exec-Id` header): `started`
/// `{pid, exec_id}`, `stdout`/`stderr` `{data, encoding}`, then `exit`
/// (how it ended) or `error`; each has an id, and
/// `GET .../execs/{exec_id}/events` with `Last-Event-ID` resumes it. With
/// `?wait=true` the answer is the collected result; with `"background":
/// true` it is 202 with the exec, at once.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/exec",
    tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ExecQuery),
    request_body = ExecRequestBody,
    responses(
        (status = 200, description = "Server-sent events (default), or the collected result with ?wait=true", content((ExecResult = "application/json"), (ExecStreamEvent = "text/event-stream")), headers(("x-hearth-exec-id" = String, description = "The exec's id, on streamed answers"))),
        (status = 202, description = "Started in the background", body = ExecView),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "The sandbox is not running", body = ErrorResponse),
        (status = 413, description = "Too large", body = ErrorResponse),
        (status = 422, description = "Output past the ?wait=true limit", body = ErrorResponse),
    )
)]
pub async fn start_exec(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ExecQuery>,
    ApiJson(body): ApiJson<ExecRequestBody>,
) -> Result<Response, ApiError> {
    if body.background && query.wait {
        return Err(ApiError::bad_request(
            "wait=true and \"background\": true contradict each other; pick one",
        ));
    }
    if body.stdin_open && query.wait {
        return Err(ApiError::invalid(
            "stdin_open",
            "stdin_open needs a streamed or background exec: with wait=true nobody can write to its stdin; send the input as \"stdin\" instead",
        ));
    }
    let background = body.background;
    let spec = exec_spec(body)?;
    let entry = state.manager.exec(&id, spec).await?;
    if background {
        return Ok((StatusCode::ACCEPTED, Json(exec_view(&entry))).into_response());
    }
    let subscription = entry.subscribe(0);
    if query.wait {
        let limit = state.manager.options().max_wait_output.bytes();
        let mut lease = state.buffers.lease();
        let json = collect(subscription, limit, query.encoding, &mut lease).await?;
        // The room is held until the answer is sent.
        let body = Body::new(crate::buffers::HoldingBody::new(Body::from(json), lease));
        return Ok(([(CONTENT_TYPE, "application/json")], body).into_response());
    }
    let mut response = exec_stream(subscription, query.encoding).into_response();
    if let Ok(value) = HeaderValue::from_str(entry.id()) {
        response.headers_mut().insert(EXEC_ID_HEADER, value);
    }
    Ok(response)
}

/// The execs of a running sandbox.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/execs",
    tag = "execs",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "OK", body = ExecList), (status = 401, description = "No valid token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse))
)]
pub async fn list_execs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ExecList>, ApiError> {
    let Some(live) = state.manager.live(&id) else {
        // Known but ended: no execs are kept.
        state.manager.record(&id).await?;
        return Ok(Json(ExecList { execs: Vec::new() }));
    };
    let execs = live.execs().list().iter().map(|e| exec_view(e)).collect();
    Ok(Json(ExecList { execs }))
}

/// One exec.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/execs/{exec_id}",
    tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id")),
    responses((status = 200, description = "OK", body = ExecView), (status = 401, description = "No valid token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse))
)]
pub async fn get_exec(
    State(state): State<AppState>,
    Path((id, exec_id)): Path<(String, String)>,
) -> Result<Json<ExecView>, ApiError> {
    let entry = lookup(&state, &id, &exec_id)?;
    Ok(Json(exec_view(&entry)))
}

/// Follow an exec's output as server-sent events, from the start or after
/// `Last-Event-ID` / `?after=`: a client that reconnects misses nothing
/// and sees nothing twice (unless output was dropped while nobody was
/// attached, which a `gap` event reports).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/execs/{exec_id}/events",
    tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id"), ExecStreamQuery),
    responses(
        (status = 200, description = "Server-sent events, as for POST .../exec", body = ExecStreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    )
)]
pub async fn exec_events(
    State(state): State<AppState>,
    Path((id, exec_id)): Path<(String, String)>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ExecStreamQuery>,
) -> Result<Response, ApiError> {
    let entry = lookup(&state, &id, &exec_id)?;
    let after = match last_event_id(&headers)? {
        Some(id) => id as u64,
        None => query.after.unwrap_or(0),
    };
    Ok(exec_stream(entry.subscribe(after), query.encoding).into_response())
}

/// Write the body to an exec's stdin (started with `"stdin_open": true`).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/execs/{exec_id}/stdin",
    tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id"), StdinQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "Stdin is not open", body = ErrorResponse),
    )
)]
pub async fn write_stdin(
    State(state): State<AppState>,
    Path((id, exec_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<StdinQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let entry = lookup(&state, &id, &exec_id)?;
    entry
        .write_stdin(body, query.close)
        .await
        .map_err(|message| ApiError::new(StatusCode::CONFLICT, "stdin_closed", message))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Kill an exec's whole process tree. Its end (`killed`) is reported on
/// its stream and in the event log.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/execs/{exec_id}/kill",
    tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id")),
    responses((status = 202, description = "Kill sent", body = ExecView), (status = 401, description = "No valid token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse))
)]
pub async fn kill_exec(
    State(state): State<AppState>,
    Path((id, exec_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<ExecView>), ApiError> {
    let entry = lookup(&state, &id, &exec_id)?;
    if !entry.is_finished() {
        entry.kill("a client asked for it (POST .../kill)").await;
    }
    Ok((StatusCode::ACCEPTED, Json(exec_view(&entry))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The room counted for an answer's JSON is exactly what serde
        /// writes for it.
        #[test]
        fn json_string_len_is_what_serde_writes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            prop_assert_eq!(
                json_string_len(&text),
                serde_json::to_string(&text).unwrap().len() as u64
            );
            for encoding in [Encoding::Utf8, Encoding::Base64] {
                let (encoded, _) = encode(&bytes, encoding);
                prop_assert!(encoded.len() as u64 <= encoded_len_bound(&bytes, encoding));
            }
        }
    }
}
