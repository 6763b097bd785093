//! Response bodies and the small helpers that build responses.
//!
//! Streamed bodies (exec frames, file contents) are fed through a bounded
//! channel: the producer awaits room, so HTTP/2 flow control from the host
//! slows the producer down instead of growing a buffer.

use std::future::Future;
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

/// Sending half of a [`transfer`] body: data, or the error that ends it.
pub type TransferSender = mpsc::Sender<Result<Bytes, GuestError>>;

/// A streamed body with a deadline, for downloads. It ends at its sender's
/// end, at an error from the sender, or at `deadline` (with `on_deadline`),
/// whichever comes first, even while the host reads nothing: the deadline
/// is checked before every chunk. An error ends it with error trailers
/// when `trailers` (the host asked for them with `te: trailers`), else by
/// resetting the stream. Dropping the body (the host reset the stream)
/// closes the channel, which stops the sender.
pub fn transfer(
    capacity: usize,
    deadline: tokio::time::Instant,
    on_deadline: GuestError,
    trailers: bool,
) -> (TransferSender, ResponseBody) {
    let (tx, rx) = mpsc::channel(capacity);
    let body = TransferBody {
        rx,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        on_deadline: Some(on_deadline),
        trailers,
        done: false,
    };
    (tx, body.boxed())
}

#[derive(Debug)]
struct TransferBody {
    rx: mpsc::Receiver<Result<Bytes, GuestError>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    on_deadline: Option<GuestError>,
    trailers: bool,
    done: bool,
}

impl TransferBody {
    fn fail(&mut self, error: &GuestError) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.done = true;
        crate::debug!("transfer ended: {error}");
        if self.trailers {
            Poll::Ready(Some(Ok(Frame::trailers(error_trailers(error)))))
        } else {
            Poll::Ready(Some(Err(io::Error::other(error.to_string()))))
        }
    }
}

impl Body for TransferBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let error = self
                .on_deadline
                .take()
                .unwrap_or_else(|| GuestError::Internal("transfer deadline passed".into()));
            return self.fail(&error);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Err(error))) => self.fail(&error),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The trailers that end a download with `error`: its code and message
/// (control characters replaced, so any message is a valid header value).
pub fn error_trailers(error: &GuestError) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    let body = error.to_body();
    if let Ok(code) = HeaderValue::from_str(&code_name(body.code)) {
        trailers.insert(hearth_proto::routes::ERROR_CODE_HEADER, code);
    }
    let message: Vec<u8> = body
        .message
        .bytes()
        .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b })
        .collect();
    if let Ok(message) = HeaderValue::from_bytes(&message) {
        trailers.insert(hearth_proto::routes::ERROR_MESSAGE_TRAILER, message);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transfer_ends_at_its_deadline_even_with_data_waiting() {
        let deadline = tokio::time::Instant::now() - std::time::Duration::from_secs(1);
        let (tx, mut body) = transfer(4, deadline, GuestError::TimedOut("too slow".into()), true);
        tx.send(Ok(Bytes::from_static(b"data"))).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        let trailers = frame.into_trailers().expect("error trailers");
        assert_eq!(
            trailers[hearth_proto::routes::ERROR_CODE_HEADER],
            "timed_out"
        );
        assert_eq!(
            trailers[hearth_proto::routes::ERROR_MESSAGE_TRAILER],
            "too slow"
        );
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn without_trailers_an_error_resets_the_stream() {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let (tx, mut body) = transfer(4, deadline, GuestError::TimedOut("late".into()), false);
        tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        tx.send(Err(GuestError::TooLarge("past the limit\n".into())))
            .await
            .unwrap();
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"a");
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("past the limit"), "{error}");
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn trailer_messages_are_valid_header_values() {
        let trailers = error_trailers(&GuestError::TooLarge("a\nb \u{e9}".into()));
        assert_eq!(
            trailers[hearth_proto::routes::ERROR_MESSAGE_TRAILER].as_bytes(),
            "a?b \u{e9}".as_bytes()
        );
    }
}
