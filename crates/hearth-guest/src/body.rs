//! Response bodies and the small helpers that build responses.
//!
//! Streamed bodies (exec frames, file contents) are fed through a bounded
//! channel: the producer awaits room, so HTTP/2 flow control from the host
//! slows the producer down instead of growing a buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

use crate::error::{code_name, GuestError};

/// Body of every response the agent sends.
pub type ResponseBody = BoxBody<Bytes, io::Error>;

/// Sending half of a streamed body. An `Err` aborts the stream (the host
/// sees a reset, not a silently truncated body).
pub type BodySender = mpsc::Sender<Result<Bytes, io::Error>>;

/// A body whose chunks come from a bounded channel.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|result| result.map(Frame::data)))
    }
}

/// A streamed body holding at most `capacity` chunks in flight.
pub fn channel(capacity: usize) -> (BodySender, ResponseBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed())
}

/// A response with a complete body.
pub fn full(
    status: StatusCode,
    content_type: &'static str,
    bytes: Vec<u8>,
) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|e| match e {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A 200 response carrying `value` as JSON.
pub fn json<T: serde::Serialize>(value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => full(StatusCode::OK, "application/json", bytes),
        Err(e) => error(&GuestError::Internal(format!("serialize response: {e}"))),
    }
}

/// An empty response (204 for the routes that return nothing).
pub fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response
}

/// A 200 response whose body is streamed.
pub fn streamed(body: ResponseBody, content_type: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The error response for `error`: its status, a JSON [`hearth_proto::ErrorBody`]
/// and the `hearth-error-code` header.
pub fn error(error: &GuestError) -> Response<ResponseBody> {
    let body = error.to_body();
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = full(error.status(), "application/json", bytes);
    if let Ok(value) = HeaderValue::from_str(&code_name(body.code)) {
        response
            .headers_mut()
            .insert(hearth_proto::routes::ERROR_CODE_HEADER, value);
    }
    response
}
