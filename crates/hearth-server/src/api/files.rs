//! File routes: streamed upload and download, list, stat, remove, mkdir.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use hearth_proto::{ByteSize, FileType};
use hearth_store::event::{DirCreated, FileRemoved, FileTransfer};
use hearth_store::EventPayload;

use super::model::{FileEntry, FileList, MkdirRequest, PathParam, RemoveQuery, WriteResponse};
use super::validate::validate_guest_path;
use super::{ApiJson, ApiQuery, AppState};
use crate::error::{ApiError, ErrorResponse};

/// Most bytes one piece of an upload queued for the guest holds.
const UPLOAD_PIECE: usize = 64 * 1024;
/// Pieces queued per upload.
const UPLOAD_QUEUE: usize = 8;
/// The room an upload takes in the server's buffer budget: its queue, one
/// chunk as read from the client (hyper reads at most about 400 KiB), and
/// the guest connection's 1 MiB stream window.
const UPLOAD_BUFFER: u64 = (UPLOAD_PIECE * UPLOAD_QUEUE) as u64 + (512 << 10) + (1 << 20);

fn too_large(limit: ByteSize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the upload is larger than {limit}, the server's limit (--max-upload)"),
    )
}

/// Write the request body to a file, creating parent directories and
/// replacing the file if it exists. The body is streamed to the guest.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathParam),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "OK", body = WriteResponse),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "Conflict with the sandbox's state", body = ErrorResponse),
        (status = 413, description = "Too large", body = ErrorResponse),
        (status = 507, description = "The sandbox disk is full", body = ErrorResponse),
    )
)]
pub async fn write_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathParam>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WriteResponse>, ApiError> {
    validate_guest_path("path", &query.path)?;
    let limit = state.manager.options().max_upload;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.bytes()) {
        return Err(too_large(limit));
    }
    let (live, sandbox) = state.manager.running(&id).await?;
    // What an upload holds in memory, whatever its size: the chunk being
    // read, the pieces queued for the guest, and the guest connection's
    // window.
    let mut lease = state.buffers.lease();
    if !lease.grow(UPLOAD_BUFFER, crate::buffers::ROOM_WAIT).await {
        return Err(crate::buffers::no_room(
            "the upload was not started",
            lease.budget(),
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(UPLOAD_QUEUE);
    let feeder = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let mut chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("reading the upload failed: {e}")))?;
            total += chunk.len() as u64;
            if total > limit.bytes() {
                return Err(too_large(limit));
            }
            // Queued in pieces, so the queue holds a bounded number of
            // bytes however large the chunks the client's writes make.
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(UPLOAD_PIECE));
                if tx.send(piece).await.is_err() {
                    return Ok(total);
                }
            }
        }
        Ok(total)
    });
    let written = sandbox.write_file_stream(&query.path, None, rx).await;
    drop(lease);
    let fed = feeder
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e.to_string())));
    // A refused upload is reported as such, even though the guest also
    // saw its stream end early.
    fed?;
    let written = written?;
    state
        .manager
        .file_event(
            &live,
            EventPayload::FileWritten(FileTransfer {
                path: query.path.clone(),
                bytes: written.bytes,
            }),
        )
        .await;
    Ok(Json(WriteResponse {
        path: query.path,
        bytes: written.bytes,
    }))
}

/// Download a file, streamed.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathParam),
    responses(
        (status = 200, description = "The file's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "A directory", body = ErrorResponse),
    )
)]
pub async fn read_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathParam>,
) -> Result<Response, ApiError> {
    validate_guest_path("path", &query.path)?;
    let (live, sandbox) = state.manager.running(&id).await?;
    let stat = sandbox.stat(&query.path).await?;
    if stat.file_type == FileType::Dir {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "is_a_directory",
            format!(
                "{} is a directory; list it with GET /v1/sandboxes/{id}/files/list",
                query.path
            ),
        ));
    }
    let reader = sandbox.read_file(&query.path).await?;
    state
        .manager
        .file_event(
            &live,
            EventPayload::FileRead(FileTransfer {
                path: query.path.clone(),
                bytes: stat.size,
            }),
        )
        .await;
    let chunks = futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(chunk), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    let mut response = Body::from_stream(chunks).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// Remove a file, or a directory with `recursive=true`.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), RemoveQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "A non-empty directory without recursive=true", body = ErrorResponse),
    )
)]
pub async fn remove_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    validate_guest_path("path", &query.path)?;
    let (live, sandbox) = state.manager.running(&id).await?;
    sandbox.remove(&query.path, query.recursive).await?;
    state
        .manager
        .file_event(
            &live,
            EventPayload::FileRemoved(FileRemoved {
                path: query.path.clone(),
                recursive: query.recursive,
            }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// List a directory.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/list",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathParam),
    responses(
        (status = 200, description = "OK", body = FileList),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "Not a directory", body = ErrorResponse),
    )
)]
pub async fn list_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathParam>,
) -> Result<Json<FileList>, ApiError> {
    validate_guest_path("path", &query.path)?;
    let (_, sandbox) = state.manager.running(&id).await?;
    let entries = sandbox.list(&query.path).await?;
    Ok(Json(FileList {
        path: query.path,
        entries: entries.into_iter().map(FileEntry::from).collect(),
    }))
}

/// Metadata of one path.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/stat",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathParam),
    responses(
        (status = 200, description = "OK", body = FileEntry),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    )
)]
pub async fn stat_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathParam>,
) -> Result<Json<FileEntry>, ApiError> {
    validate_guest_path("path", &query.path)?;
    let (_, sandbox) = state.manager.running(&id).await?;
    Ok(Json(FileEntry::from(sandbox.stat(&query.path).await?)))
}

/// Create a directory.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/files/mkdir",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MkdirRequest,
    responses(
        (status = 201, description = "Created", body = FileEntry),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "Exists (without parents=true) or a parent is a file", body = ErrorResponse),
    )
)]
pub async fn make_dir(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<MkdirRequest>,
) -> Result<(StatusCode, Json<FileEntry>), ApiError> {
    validate_guest_path("path", &request.path)?;
    let (live, sandbox) = state.manager.running(&id).await?;
    sandbox.mkdir(&request.path, request.parents).await?;
    state
        .manager
        .file_event(
            &live,
            EventPayload::DirCreated(DirCreated {
                path: request.path.clone(),
            }),
        )
        .await;
    let stat = sandbox.stat(&request.path).await?;
    Ok((StatusCode::CREATED, Json(FileEntry::from(stat))))
}
