//! The host side of the guest protocol: an HTTP/2 client over the VM's byte
//! stream.
//!
//! The guest is untrusted, so everything read from it is bounded: JSON bodies
//! by [`limits::MAX_JSON_BODY`], exec frames by [`limits::MAX_FRAME_PAYLOAD`],
//! headers and HTTP/2 frames by the connection settings; control calls time
//! out. A misbehaving guest can fail its own calls, never the host.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use hearth_proto::{
    limits, routes, ErrorBody, ErrorCode, ExecRequest, ExecStarted, ExitReport, FileStat, Frame,
    FrameDecoder, FrameKind, GuestInfo, Hello, KillRequest, PathQuery, Usage, WriteResult,
};
use hearth_vm::GuestStream;

use crate::error::{Result, SandboxError};
use crate::ids::random_hex;

/// How long a control call (anything but exec and file streaming) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a file transfer may go without progress.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type RequestBody = UnsyncBoxBody<Bytes, Infallible>;

/// A cloneable handle on one HTTP/2 connection to a guest agent.
#[derive(Clone)]
pub struct GuestClient {
    send: SendRequest<RequestBody>,
    closed: ConnectionClosed,
}

/// Resolves when one connection to a guest agent has closed, with why.
///
/// Separate from [`GuestClient`] so that whoever watches a connection (the
/// sandbox's channel keeper) does not keep it open: a connection stays open
/// while a [`GuestClient`] of it lives.
#[derive(Clone)]
pub struct ConnectionClosed {
    rx: watch::Receiver<Option<String>>,
}

impl ConnectionClosed {
    /// Wait until the connection has closed; returns what closed it (the
    /// HTTP/2 error, or that it closed cleanly).
    pub async fn wait(mut self) -> String {
        match self.rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The connection task is gone without saying why (it panicked
            // or the runtime is shutting down): closed all the same.
            Err(_) => "the connection task stopped".into(),
        }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.rx.borrow().is_some() || self.rx.has_changed().is_err()
    }
}

/// One event of a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// The process started with this guest PID.
    Started(u32),
    /// Bytes written to stdout.
    Stdout(Bytes),
    /// Bytes written to stderr.
    Stderr(Bytes),
    /// The command ended; always the last event.
    Exit(ExitReport),
}

impl GuestClient {
    /// Start a connection over `stream`: the channel handshake (which skips
    /// stale bytes of any previous connection), then HTTP/2. The connection
    /// is driven by a background task that ends when the stream closes.
    pub async fn connect(stream: GuestStream) -> Result<Self> {
        let stream = hearth_proto::handshake::host(stream, &random_hex(8))
            .await
            .map_err(|e| SandboxError::Protocol(format!("channel handshake failed: {e}")))?;
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(limits::MAX_H2_FRAME)
            .max_header_list_size(limits::MAX_HEADER_LIST)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SandboxError::Protocol(format!("HTTP/2 handshake failed: {e}")))?;
        let (closed_tx, closed_rx) = watch::channel(None);
        tokio::spawn(async move {
            let why = match connection.await {
                Ok(()) => "the connection closed".to_string(),
                Err(error) => {
                    tracing::debug!(%error, "guest connection closed");
                    error_chain(&error)
                }
            };
            closed_tx.send_replace(Some(why));
        });
        Ok(Self {
            send,
            closed: ConnectionClosed { rx: closed_rx },
        })
    }

    /// A handle that resolves when this connection closes (a broken channel,
    /// garbage from the guest, the VM gone, or every client dropped).
    pub fn closed(&self) -> ConnectionClosed {
        self.closed.clone()
    }

    /// Whether the connection is still usable.
    pub fn is_open(&self) -> bool {
        !self.send.is_closed()
    }

    pub(crate) async fn send(&self, request: Request<RequestBody>) -> Result<Response<Incoming>> {
        let mut send = self.send.clone();
        send.ready()
            .await
            .map_err(|e| SandboxError::Protocol(format!("guest connection lost: {e}")))?;
        send.send_request(request)
            .await
            .map_err(|e| SandboxError::Protocol(format!("guest connection lost: {e}")))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        request: Request<RequestBody>,
    ) -> Result<T> {
        with_timeout(what, CALL_TIMEOUT, async {
            let response = self.send(request).await?;
            let response = check_status(response).await?;
            let body = read_limited(response.into_body(), limits::MAX_JSON_BODY).await?;
            serde_json::from_slice(&body)
                .map_err(|e| SandboxError::Protocol(format!("malformed {what} response: {e}")))
        })
        .await
    }

    async fn call_no_content(&self, what: &str, request: Request<RequestBody>) -> Result<()> {
        with_timeout(what, CALL_TIMEOUT, async {
            let response = self.send(request).await?;
            check_status(response).await?;
            Ok(())
        })
        .await
    }

    /// The handshake: tell the guest the time and limits, learn about it.
    pub async fn hello(&self, hello: &Hello) -> Result<GuestInfo> {
        self.call(
            "hello",
            json_request(Method::POST, routes::HELLO.into(), hello),
        )
        .await
    }

    /// Start a command. Returns a stdin writer when `request.stdin` is set,
    /// and the stream of its events. Dropping the stream cancels the command
    /// in the guest (the HTTP/2 stream is reset and the guest kills it).
    pub async fn exec(&self, request: &ExecRequest) -> Result<(Option<StdinWriter>, ExecStream)> {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let first = Frame::json(FrameKind::Request, request).encode();
        tx.try_send(first).expect("fresh channel has room");
        let send_eof = request.stdin;
        let body = frame_body(rx, send_eof);
        // Without stdin the request body ends after the first frame; the
        // guest may wait for that before it answers.
        let stdin = if request.stdin {
            Some(StdinWriter { tx })
        } else {
            drop(tx);
            None
        };
        let http_request = Request::builder()
            .method(Method::POST)
            .uri(uri(routes::EXEC))
            .body(body)
            .expect("static request parts are valid");
        let response = with_timeout("exec", CALL_TIMEOUT, async {
            check_status(self.send(http_request).await?).await
        })
        .await?;
        Ok((
            stdin,
            ExecStream {
                body: response.into_body(),
                decoder: FrameDecoder::default(),
                finished: false,
            },
        ))
    }

    /// Kill a running command by its [`ExecRequest::id`].
    pub async fn kill(&self, id: &str) -> Result<()> {
        let request = KillRequest { id: id.to_string() };
        self.call_no_content(
            "kill",
            json_request(Method::POST, routes::EXEC_KILL.into(), &request),
        )
        .await
    }

    /// Write a file from a stream of chunks sent through the returned sender;
    /// the write completes when the sender is dropped and the returned future
    /// resolves.
    pub async fn write_file_stream(
        &self,
        query: &PathQuery,
        chunks: mpsc::Receiver<Bytes>,
    ) -> Result<WriteResult> {
        let request = Request::builder()
            .method(Method::PUT)
            .uri(uri(&with_query(routes::FILES, query)))
            .body(frame_body(chunks, false))
            .expect("static request parts are valid");
        let response = self.send(request).await?;
        let response = check_status(response).await?;
        let body = read_limited(response.into_body(), limits::MAX_JSON_BODY).await?;
        serde_json::from_slice(&body)
            .map_err(|e| SandboxError::Protocol(format!("malformed write response: {e}")))
    }

    /// Open a file for streaming reads, within the guest's default
    /// download limits.
    pub async fn read_file(&self, path: &str) -> Result<FileReader> {
        self.read_file_within(&path_query(path)).await
    }

    /// Open `query.path` for streaming reads, within `query.max_bytes` and
    /// `query.timeout_ms` (the guest caps both; see
    /// [`limits::MAX_DOWNLOAD_BYTES`]). A download that fails after it
    /// started ends with the guest's error (`te: trailers`), which
    /// [`FileReader::next_chunk`] returns.
    pub async fn read_file_within(&self, query: &PathQuery) -> Result<FileReader> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri(&with_query(routes::FILES, query)))
            .header(http::header::TE, "trailers")
            .body(Empty::new().boxed_unsync())
            .expect("static request parts are valid");
        let response = with_timeout("read", CALL_TIMEOUT, async {
            check_status(self.send(request).await?).await
        })
        .await?;
        Ok(FileReader {
            body: response.into_body(),
        })
    }

    /// Metadata of one path (symlinks not followed).
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        let query = path_query(path);
        self.call(
            "stat",
            empty_request(Method::GET, with_query(routes::FILES_STAT, &query)),
        )
        .await
    }

    /// Entries of a directory, sorted by name.
    pub async fn list(&self, path: &str) -> Result<Vec<FileStat>> {
        let query = path_query(path);
        self.call(
            "list",
            empty_request(Method::GET, with_query(routes::FILES_LIST, &query)),
        )
        .await
    }

    /// Remove a file, symlink or empty directory; with `recursive`, a tree.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let query = PathQuery {
            recursive,
            ..path_query(path)
        };
        self.call_no_content(
            "remove",
            empty_request(Method::DELETE, with_query(routes::FILES, &query)),
        )
        .await
    }

    /// Create a directory; with `parents`, like `mkdir -p`.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        let query = PathQuery {
            parents,
            ..path_query(path)
        };
        self.call_no_content(
            "mkdir",
            empty_request(Method::POST, with_query(routes::FILES_MKDIR, &query)),
        )
        .await
    }

    /// Resource usage of the guest and its workloads.
    pub async fn usage(&self) -> Result<Usage> {
        self.call("usage", empty_request(Method::GET, routes::USAGE.into()))
            .await
    }

    /// Ask the guest to flush every filesystem to its disk.
    pub async fn sync(&self) -> Result<()> {
        self.call_no_content("sync", empty_request(Method::POST, routes::SYNC.into()))
            .await
    }

    /// Ask the guest to power off.
    pub async fn shutdown(&self) -> Result<()> {
        self.call_no_content(
            "shutdown",
            empty_request(Method::POST, routes::SHUTDOWN.into()),
        )
        .await
    }
}

/// Feeds a command's stdin. Dropping it (or calling [`StdinWriter::close`])
/// closes the command's stdin.
pub struct StdinWriter {
    tx: mpsc::Sender<Bytes>,
}

impl StdinWriter {
    /// Send bytes to the command's stdin; waits while the guest is not
    /// consuming (flow control). Fails if the command has ended.
    pub async fn write(&self, data: Bytes) -> Result<()> {
        for chunk in chunks(data, limits::STREAM_CHUNK) {
            let frame = Frame::new(FrameKind::Stdin, chunk).encode();
            self.tx
                .send(frame)
                .await
                .map_err(|_| SandboxError::Protocol("command's stdin is closed".into()))?;
        }
        Ok(())
    }

    /// Close stdin (the command sees end of file).
    pub fn close(self) {}
}

/// The events of a running command, read from the guest.
pub struct ExecStream {
    body: Incoming,
    decoder: FrameDecoder,
    finished: bool,
}

impl ExecStream {
    /// The next event; `Ok(None)` after the [`ExecEvent::Exit`].
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(|e| SandboxError::Protocol(format!("exec stream: {e}")))?
            {
                return self.event(frame).map(Some);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(SandboxError::Protocol(format!("exec stream broke: {e}")))
                }
                None => {
                    self.finished = true;
                    return Err(SandboxError::Protocol(
                        "exec stream ended without an exit report".into(),
                    ));
                }
            }
        }
    }

    fn event(&mut self, frame: Frame) -> Result<ExecEvent> {
        let protocol = |e: hearth_proto::FrameError| SandboxError::Protocol(e.to_string());
        Ok(match frame.kind {
            FrameKind::Started => {
                ExecEvent::Started(frame.parse_json::<ExecStarted>().map_err(protocol)?.pid)
            }
            FrameKind::Stdout => ExecEvent::Stdout(frame.payload),
            FrameKind::Stderr => ExecEvent::Stderr(frame.payload),
            FrameKind::Exit => {
                self.finished = true;
                ExecEvent::Exit(frame.parse_json::<ExitReport>().map_err(protocol)?)
            }
            FrameKind::Error => {
                self.finished = true;
                let error: ErrorBody = frame.parse_json().map_err(protocol)?;
                return Err(SandboxError::Guest {
                    code: error.code,
                    message: error.message,
                });
            }
            other => {
                return Err(SandboxError::Protocol(format!(
                    "guest sent a {other:?} frame, which only the host may send"
                )))
            }
        })
    }
}

/// A file being downloaded from the guest.
pub struct FileReader {
    body: Incoming,
}

impl FileReader {
    /// The next chunk, `Ok(None)` at the end of the file.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            let frame = tokio::time::timeout(STREAM_IDLE_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| SandboxError::Timeout {
                    what: "file read".into(),
                    seconds: STREAM_IDLE_TIMEOUT.as_secs(),
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(SandboxError::Protocol(format!("file read broke: {e}")))
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => return Ok(Some(data)),
                    Err(frame) => {
                        if let Some(error) = frame.trailers_ref().and_then(trailer_error) {
                            return Err(error);
                        }
                    }
                },
            }
        }
    }

    /// Read the whole file, failing if it is larger than `limit` bytes.
    pub async fn read_to_end(mut self, limit: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            if out.len() + chunk.len() > limit {
                return Err(SandboxError::InvalidOption(format!(
                    "file is larger than the {limit}-byte limit of this read; stream it instead"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// The guest's error in the trailers that ended a download, if any.
fn trailer_error(trailers: &http::HeaderMap) -> Option<SandboxError> {
    let code = trailers.get(routes::ERROR_CODE_HEADER)?;
    let code = code.to_str().unwrap_or("internal");
    let code = serde_json::from_value(serde_json::Value::String(code.to_owned()))
        .unwrap_or(ErrorCode::Internal);
    let message = trailers
        .get(routes::ERROR_MESSAGE_TRAILER)
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_else(|| "the guest ended the download with an error".into());
    Some(SandboxError::Guest { code, message })
}

/// An error and its sources, `outer: inner: …` (hyper's own message alone
/// is as terse as "http2 error").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

pub(crate) fn uri(path_and_query: &str) -> String {
    format!("http://hearth-guest{path_and_query}")
}

fn path_query(path: &str) -> PathQuery {
    PathQuery {
        path: path.to_string(),
        mode: None,
        parents: false,
        recursive: false,
        max_bytes: None,
        timeout_ms: None,
    }
}

/// `route?query`, the query form-encoded.
pub fn with_query(route: &str, query: &PathQuery) -> String {
    let encoded = serde_urlencoded::to_string(query).expect("PathQuery encodes");
    format!("{route}?{encoded}")
}

fn empty_request(method: Method, path: String) -> Request<RequestBody> {
    Request::builder()
        .method(method)
        .uri(uri(&path))
        .body(Empty::new().boxed_unsync())
        .expect("static request parts are valid")
}

fn json_request<T: Serialize>(method: Method, path: String, value: &T) -> Request<RequestBody> {
    let body = serde_json::to_vec(value).expect("wire types serialize");
    Request::builder()
        .method(method)
        .uri(uri(&path))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("static request parts are valid")
}

/// A request body of the chunks from `rx` (encoded frames for exec, raw
/// bytes for file writes), then (when `send_eof`) a `StdinEof` frame once
/// every sender is gone.
pub(crate) fn frame_body(rx: mpsc::Receiver<Bytes>, send_eof: bool) -> RequestBody {
    let stream = futures_util::stream::unfold((rx, send_eof), |(mut rx, eof_pending)| async move {
        match rx.recv().await {
            Some(bytes) => Some((Ok(BodyFrame::data(bytes)), (rx, eof_pending))),
            None if eof_pending => Some((
                Ok(BodyFrame::data(
                    Frame::new(FrameKind::StdinEof, Bytes::new()).encode(),
                )),
                (rx, false),
            )),
            None => None,
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// Turn a non-2xx response into the guest's error.
pub(crate) async fn check_status(response: Response<Incoming>) -> Result<Response<Incoming>> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = read_limited(response.into_body(), limits::MAX_JSON_BODY).await?;
    Err(match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(error) => SandboxError::Guest {
            code: error.code,
            message: error.message,
        },
        Err(_) => SandboxError::Guest {
            code: code_for_status(status),
            message: format!(
                "guest answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    })
}

fn code_for_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::BAD_REQUEST => ErrorCode::InvalidArgument,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Busy,
        StatusCode::GATEWAY_TIMEOUT => ErrorCode::TimedOut,
        _ => ErrorCode::Internal,
    }
}

async fn read_limited(body: Incoming, limit: usize) -> Result<Bytes> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| SandboxError::Protocol(format!("reading guest response: {e}")))
}

pub(crate) async fn with_timeout<T>(
    what: &str,
    limit: Duration,
    future: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| SandboxError::Timeout {
            what: what.to_string(),
            seconds: limit.as_secs(),
        })?
}

/// Split `data` into pieces of at most `size` bytes (without copying).
pub fn chunks(mut data: Bytes, size: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(data.len() / size + 1);
    while data.len() > size {
        out.push(data.split_to(size));
    }
    if !data.is_empty() {
        out.push(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_input() {
        let data = Bytes::from(vec![7u8; 10]);
        let pieces = chunks(data, 4);
        assert_eq!(
            pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert!(chunks(Bytes::new(), 4).is_empty());
    }

    #[test]
    fn download_error_trailers_become_the_guests_error() {
        let mut trailers = http::HeaderMap::new();
        assert!(trailer_error(&trailers).is_none());
        trailers.insert(routes::ERROR_CODE_HEADER, "too_large".parse().unwrap());
        trailers.insert(
            routes::ERROR_MESSAGE_TRAILER,
            "download of /proc/kmsg stopped at its size limit of 10 bytes"
                .parse()
                .unwrap(),
        );
        let error = trailer_error(&trailers).unwrap();
        assert_eq!(error.guest_code(), Some(ErrorCode::TooLarge));
        assert!(
            error.to_string().contains("size limit of 10 bytes"),
            "{error}"
        );
        trailers.insert(
            routes::ERROR_CODE_HEADER,
            "from_the_future".parse().unwrap(),
        );
        assert_eq!(
            trailer_error(&trailers).unwrap().guest_code(),
            Some(ErrorCode::Internal)
        );
    }

    #[test]
    fn query_encodes_paths() {
        let q = path_query("/tmp/a b&c");
        assert_eq!(
            with_query(routes::FILES, &q),
            "/v1/files?path=%2Ftmp%2Fa+b%26c&parents=false&recursive=false"
        );
    }
}
