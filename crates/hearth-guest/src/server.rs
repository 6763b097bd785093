//! HTTP/2 serving: connection settings, routing, and the host-mode Unix
//! socket listener.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use hearth_proto::limits::{MAX_H2_FRAME, MAX_HEADER_LIST, MAX_JSON_BODY};
use hearth_proto::routes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;

use crate::agent::{Agent, AgentState};
use crate::body::{self, ResponseBody};
use crate::capacity::RequestKind;
use crate::error::{GuestError, Result};
use crate::{egress, exec, files, tunnel, usage};

/// HTTP/2 stream receive window: enough for fast transfers, small enough to
/// bound what one stream can buffer.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 connection receive window.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Most concurrent streams (execs and transfers) on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

impl Agent {
    /// Serve one HTTP/2 connection on `io` until it ends. Running execs
    /// whose streams belonged to it are killed when it ends; everything else
    /// (background processes, files) survives for the next connection.
    ///
    /// Once shutdown is requested the connection closes gracefully: it takes
    /// no new requests, finishes those in flight, and returns after its last
    /// bytes (the shutdown's 204 among them) are written and flushed.
    pub async fn serve_connection<IO>(&self, io: IO) -> std::result::Result<(), hyper::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _open = self.open_connection();
        let state = self.state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(state, request).await) }
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_frame_size(MAX_H2_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => return result,
            () = self.shutdown_requested() => connection.as_mut().graceful_shutdown(),
        }
        connection.await
    }

    /// Host mode: serve every connection accepted on a Unix socket at
    /// `path` until `POST /v1/shutdown`, then kill workloads and return.
    pub async fn serve_unix(&self, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| GuestError::io("listen on", path.display().to_string(), e))?;
        crate::info!("serving on {}", path.display());
        let shutdown = self.shutdown_requested();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, _) = accepted
                        .map_err(|e| GuestError::io("accept on", path.display().to_string(), e))?;
                    let agent = self.clone();
                    tokio::spawn(async move {
                        let stream = match hearth_proto::handshake::guest(stream).await {
                            Ok(stream) => stream,
                            Err(e) => return crate::debug!("handshake ended: {e}"),
                        };
                        if let Err(e) = agent.serve_connection(stream).await {
                            crate::debug!("connection ended: {e}");
                        }
                    });
                }
            }
        }
        // The 204 must reach the host before the process exits.
        self.finish_shutdown().await;
        let _ = std::fs::remove_file(path);
        Ok(())
    }
}

/// Read a JSON request body of at most `MAX_JSON_BODY` bytes.
async fn json_body<T: DeserializeOwned>(body: Incoming, what: &str) -> Result<T> {
    let bytes = match Limited::new(body, MAX_JSON_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(GuestError::TooLarge(format!(
                "{what} body exceeds the {MAX_JSON_BODY}-byte limit"
            )))
        }
        Err(e) => {
            return Err(GuestError::InvalidArgument(format!(
                "{what} body could not be read: {e}"
            )))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| GuestError::InvalidArgument(format!("malformed {what} body: {e}")))
}

async fn route(state: Arc<AgentState>, request: Request<Incoming>) -> Response<ResponseBody> {
    state.boot_ms.get_or_init(usage::uptime_ms);
    let (parts, request_body) = request.into_parts();
    let wants_trailers = parts
        .headers
        .get(http::header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query();
    let method = parts.method;
    let kind = match (&method, path.as_str()) {
        (&Method::POST, routes::EXEC) => Some(RequestKind::Exec),
        (&Method::POST, routes::TUNNEL | routes::EGRESS) => Some(RequestKind::Tunnel),
        (&Method::POST, routes::HELLO | routes::SYNC) | (&Method::GET, routes::USAGE) => {
            Some(RequestKind::Control)
        }
        (_, routes::FILES | routes::FILES_STAT | routes::FILES_LIST | routes::FILES_MKDIR) => {
            Some(RequestKind::File)
        }
        // Kill and shutdown must always get through.
        _ => None,
    };
    // The slot goes with the work: a streaming exec, tunnel or transfer
    // keeps it until it ends, a blocking call until its thread returns.
    let slot = match kind
        .map(|kind| state.capacity.try_acquire(kind))
        .transpose()
    {
        Ok(slot) => slot,
        Err(e) => {
            crate::debug!("{method} {path}: {e}");
            return body::error(&e);
        }
    };
    let result: Result<Response<ResponseBody>> = match (&method, path.as_str()) {
        (&Method::POST, routes::EXEC) => return exec::handle(state, request_body, slot),
        (&Method::POST, routes::TUNNEL) => tunnel::open(state, request_body, slot).await,
        (&Method::POST, routes::EGRESS) => egress::open(state, request_body, slot).await,
        // Bounded by the proxy: only a connection waiting for the host
        // gets one.
        (&Method::POST, routes::EGRESS_CONN) => egress::conn(state, query, request_body).await,
        (&Method::POST, routes::HELLO) => hello(state, request_body).await,
        (&Method::POST, routes::EXEC_KILL) => {
            match json_body::<hearth_proto::KillRequest>(request_body, "kill request").await {
                Ok(kill) => state
                    .execs
                    .kill(&kill.id)
                    .map(|()| body::empty(StatusCode::NO_CONTENT)),
                Err(e) => Err(e),
            }
        }
        (_, routes::FILES | routes::FILES_STAT | routes::FILES_LIST | routes::FILES_MKDIR) => {
            match files::parse_query(query) {
                Ok(query) => match (&method, path.as_str()) {
                    (&Method::PUT, routes::FILES) => files::write(query, request_body, slot).await,
                    (&Method::GET, routes::FILES) => files::read(query, wants_trailers, slot).await,
                    (&Method::DELETE, routes::FILES) => files::remove(query, slot).await,
                    (&Method::GET, routes::FILES_STAT) => files::stat(query, slot).await,
                    (&Method::GET, routes::FILES_LIST) => files::list(query, slot).await,
                    (&Method::POST, routes::FILES_MKDIR) => files::mkdir(query, slot).await,
                    _ => Err(no_route(&method, &path)),
                },
                Err(e) => Err(e),
            }
        }
        (&Method::GET, routes::USAGE) => {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let limit = state
                    .workload_memory_limit
                    .load(std::sync::atomic::Ordering::Relaxed);
                usage::collect(state.cgroups.as_ref(), limit)
            })
            .await
            .map(|usage| body::json(&usage))
            .map_err(|e| GuestError::Internal(format!("usage task failed: {e}")))
        }
        (&Method::POST, routes::SYNC) => tokio::task::spawn_blocking(move || {
            let _slot = slot;
            crate::sys::sync()
        })
        .await
        .map(|()| body::empty(StatusCode::NO_CONTENT))
        .map_err(|e| GuestError::Internal(format!("sync task failed: {e}"))),
        (&Method::POST, routes::SHUTDOWN) => {
            state.request_shutdown();
            Ok(body::empty(StatusCode::NO_CONTENT))
        }
        _ => Err(no_route(&method, &path)),
    };
    result.unwrap_or_else(|e| {
        crate::debug!("{method} {path}: {e}");
        body::error(&e)
    })
}

fn no_route(method: &Method, path: &str) -> GuestError {
    GuestError::NotFound(format!("no route for {method} {path}"))
}

async fn hello(state: Arc<AgentState>, request_body: Incoming) -> Result<Response<ResponseBody>> {
    let hello: hearth_proto::Hello = json_body(request_body, "hello").await?;
    let info = tokio::task::spawn_blocking(move || state.hello(&hello))
        .await
        .map_err(|e| GuestError::Internal(format!("hello task failed: {e}")))??;
    Ok(body::json(&info))
}
