//! Reverse tunnels: HTTP/1.1 requests made by programs inside the sandbox,
//! delivered to the host.
//!
//! The guest agent listens on a loopback address inside the VM; every
//! request made there travels up one long-lived `POST /v1/tunnel` stream
//! and comes out of [`Tunnel::next`] as a [`TunnelCall`], which the host
//! answers with [`TunnelCall::respond`]. Calls may be answered in any order
//! and concurrently. This is how a durable run's program reaches the engine
//! at `HEARTH_RUN_URL` (see `docs/run-endpoint.md`) with no network device.
//!
//! The guest is untrusted: the host enforces the request body limit itself,
//! bounds the requests it holds (in assembly and unanswered together, to
//! [`MAX_TUNNEL_IN_FLIGHT`]), and ends the tunnel, logging why, on any
//! protocol violation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use hearth_proto::limits::{MAX_TUNNEL_BODY, MAX_TUNNEL_IN_FLIGHT};
use hearth_proto::tunnel::message_writes;
use hearth_proto::{
    routes, Frame, FrameDecoder, FrameKind, TunnelAssembler, TunnelOpen, TunnelReady,
    TunnelRequestHead, TunnelResponseHead,
};

use crate::client::{check_status, frame_body, uri, with_timeout, GuestClient, CALL_TIMEOUT};
use crate::error::{Result, SandboxError};
use crate::lifecycle::Sandbox;

/// Writes (a message, or about one chunk of a large one) buffered on the
/// way down before responders wait for the guest.
const DOWN_WRITES_IN_FLIGHT: usize = 16;

/// Ids of the requests delivered to the caller and not yet answered.
type Outstanding = Arc<Mutex<HashSet<u64>>>;

/// An open reverse tunnel. Dropping it closes the tunnel: the guest closes
/// its listener and answers every request still waiting `502
/// engine_unavailable`.
pub struct Tunnel {
    address: SocketAddr,
    calls: mpsc::Receiver<TunnelCall>,
    /// The only strong sender of the request body: calls hold weak ones, so
    /// that dropping the tunnel ends the stream even while calls are held.
    _down: mpsc::Sender<Bytes>,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// The address the guest listens on, inside the VM (what goes into
    /// `HEARTH_RUN_URL`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The next request made inside the guest; `None` once the tunnel has
    /// ended (the guest closed it, the sandbox ended, or the guest broke the
    /// protocol, which is logged).
    pub async fn next(&mut self) -> Option<TunnelCall> {
        self.calls.recv().await
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // Dropping the response body resets the stream; the guest notices.
        self.reader.abort();
    }
}

/// One HTTP request made inside the guest, waiting for the host's answer.
///
/// Dropping it unanswered answers `500` (so the program is not left waiting
/// forever and its in-flight slot is freed).
pub struct TunnelCall {
    head: TunnelRequestHead,
    body: Bytes,
    answer: Option<Answer>,
}

impl std::fmt::Debug for TunnelCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelCall")
            .field("method", &self.head.method)
            .field("path", &self.head.path)
            .field("content_type", &self.head.content_type)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl TunnelCall {
    /// The HTTP method.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The path and query, as the program sent them.
    pub fn path(&self) -> &str {
        &self.head.path
    }

    /// The request's `Content-Type`, if it had one.
    pub fn content_type(&self) -> Option<&str> {
        self.head.content_type.as_deref()
    }

    /// The whole request body (at most the tunnel's `max_request_body`).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Answer the request. Waits while the guest is not reading (flow
    /// control). After the tunnel has ended this does nothing: the program
    /// already got `502`. A body over [`MAX_TUNNEL_BODY`] is replaced by a
    /// `500` saying so, as the guest would refuse it.
    pub async fn respond(mut self, status: u16, content_type: Option<&str>, body: Bytes) {
        if let Some(answer) = self.answer.take() {
            answer
                .send(status, content_type.map(str::to_owned), body)
                .await;
        }
    }
}

impl Drop for TunnelCall {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        tracing::warn!(path = %self.head.path, "tunnel call dropped without an answer; answering 500");
        let body = error_body(
            "internal",
            "the engine dropped the request without answering it",
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(answer.send(500, Some("application/json".into()), body));
        }
    }
}

/// What answering a call needs.
struct Answer {
    id: u64,
    down: mpsc::WeakSender<Bytes>,
    outstanding: Outstanding,
}

impl Answer {
    async fn send(self, status: u16, content_type: Option<String>, body: Bytes) {
        // Free the slot first: the guest may send its next request as soon
        // as this answer is complete, and must not find the host full.
        self.outstanding.lock().remove(&self.id);
        let (status, content_type, body) = if body.len() as u64 > MAX_TUNNEL_BODY {
            tracing::warn!(
                bytes = body.len(),
                "tunnel answer exceeds {MAX_TUNNEL_BODY} bytes; answering 500"
            );
            let message = format!(
                "the engine's answer of {} bytes exceeds the tunnel's {MAX_TUNNEL_BODY}-byte limit",
                body.len()
            );
            (
                500,
                Some("application/json".to_owned()),
                error_body("too_large", &message),
            )
        } else {
            (status, content_type, body)
        };
        let Some(down) = self.down.upgrade() else {
            return;
        };
        let head = TunnelResponseHead {
            id: self.id,
            status,
            content_type,
            body_len: body.len() as u64,
        };
        for write in message_writes(&head, &body) {
            if down.send(write).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.outstanding.lock().remove(&self.id);
    }
}

/// A JSON error body in the run endpoint's format.
fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({"error": {"code": code, "message": message}}).to_string())
}

impl GuestClient {
    /// Open a reverse tunnel: the guest listens on `listen` (a loopback
    /// address; port 0 picks a free port) and forwards each HTTP request
    /// made there, refusing bodies over `max_request_body` bytes itself.
    pub async fn open_tunnel(&self, listen: &str, max_request_body: u64) -> Result<Tunnel> {
        if max_request_body > MAX_TUNNEL_BODY {
            return Err(SandboxError::InvalidOption(format!(
                "tunnel max_request_body {max_request_body} exceeds the {MAX_TUNNEL_BODY}-byte limit"
            )));
        }
        let (down, rx) = mpsc::channel::<Bytes>(DOWN_WRITES_IN_FLIGHT);
        let open = TunnelOpen {
            listen: listen.to_owned(),
            max_request_body,
        };
        down.try_send(Frame::json(FrameKind::TunnelOpen, &open).encode())
            .expect("fresh channel has room");
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri(routes::TUNNEL))
            .body(frame_body(rx, false))
            .expect("static request parts are valid");
        let (body, decoder, address) = with_timeout("tunnel open", CALL_TIMEOUT, async {
            let response = check_status(self.send(request).await?).await?;
            let mut body = response.into_body();
            let mut decoder = FrameDecoder::default();
            let ready = read_ready(&mut body, &mut decoder).await?;
            let address: SocketAddr = ready.address.parse().map_err(|_| {
                SandboxError::Protocol(format!(
                    "tunnel: the guest reported {:?} as its address",
                    ready.address
                ))
            })?;
            Ok((body, decoder, address))
        })
        .await?;
        let (calls_tx, calls) = mpsc::channel(MAX_TUNNEL_IN_FLIGHT);
        let reader = tokio::spawn(read_calls(
            body,
            decoder,
            max_request_body,
            calls_tx,
            down.downgrade(),
            address,
        ));
        tracing::debug!(%address, "tunnel open");
        Ok(Tunnel {
            address,
            calls,
            _down: down,
            reader,
        })
    }
}

impl Sandbox {
    /// Open a reverse tunnel into this sandbox: programs inside reach the
    /// host over plain HTTP/1.1 at [`Tunnel::address`]. See
    /// [`GuestClient::open_tunnel`].
    pub async fn open_tunnel(&self, listen: &str, max_request_body: u64) -> Result<Tunnel> {
        match self
            .client()
            .await
            .open_tunnel(listen, max_request_body)
            .await
        {
            Ok(tunnel) => Ok(tunnel),
            Err(error) => Err(self.explain(error).await),
        }
    }
}

/// Read the response body until the first frame, which must be `TunnelReady`.
async fn read_ready(body: &mut Incoming, decoder: &mut FrameDecoder) -> Result<TunnelReady> {
    read_first_frame(body, decoder, FrameKind::TunnelReady, "tunnel").await
}

/// Read the response body of a long-lived `stream` (a tunnel, the egress
/// stream) until its first frame, which must be of `kind`, and parse it.
pub(crate) async fn read_first_frame<T: serde::de::DeserializeOwned>(
    body: &mut Incoming,
    decoder: &mut FrameDecoder,
    kind: FrameKind,
    stream: &str,
) -> Result<T> {
    let protocol = |message: String| SandboxError::Protocol(format!("{stream}: {message}"));
    loop {
        if let Some(frame) = decoder.next_frame().map_err(|e| protocol(e.to_string()))? {
            if frame.kind != kind {
                return Err(protocol(format!(
                    "the first frame must be {kind:?}, got {:?}",
                    frame.kind
                )));
            }
            return frame.parse_json().map_err(|e| protocol(e.to_string()));
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => return Err(protocol(format!("stream broke: {e}"))),
            None => return Err(protocol(format!("stream ended before {kind:?}"))),
        }
    }
}

/// Read requests from the guest and hand them to the caller until the
/// stream ends or the guest breaks the protocol.
async fn read_calls(
    mut body: Incoming,
    mut decoder: FrameDecoder,
    max_request_body: u64,
    calls: mpsc::Sender<TunnelCall>,
    down: mpsc::WeakSender<Bytes>,
    address: SocketAddr,
) {
    let outstanding: Outstanding = Arc::default();
    let mut assembler =
        TunnelAssembler::<TunnelRequestHead>::new(max_request_body, MAX_TUNNEL_IN_FLIGHT);
    let ended: std::result::Result<String, String> = 'stream: loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'stream Err(e.to_string()),
            };
            let message = match assembler.push(frame) {
                Ok(message) => message,
                Err(e) => break 'stream Err(e.to_string()),
            };
            if let Some(message) = &message {
                let id = message.head.id;
                if !outstanding.lock().insert(id) {
                    break 'stream Err(format!("request {id} was sent again before its answer"));
                }
            }
            // Checked before the call is queued: the queue holds exactly as
            // many calls as may be outstanding, so queueing never waits.
            let held = outstanding.lock().len() + assembler.pending();
            if held > MAX_TUNNEL_IN_FLIGHT {
                break 'stream Err(format!(
                    "more than {MAX_TUNNEL_IN_FLIGHT} requests in flight at once"
                ));
            }
            if let Some(message) = message {
                let id = message.head.id;
                let call = TunnelCall {
                    head: message.head,
                    body: message.body,
                    answer: Some(Answer {
                        id,
                        down: down.clone(),
                        outstanding: outstanding.clone(),
                    }),
                };
                // Fails only when the tunnel was dropped.
                if calls.send(call).await.is_err() {
                    break 'stream Ok("the tunnel was dropped".to_owned());
                }
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => break Ok(format!("the stream broke: {e}")),
            None => break Ok("the guest ended the tunnel".to_owned()),
        }
    };
    match ended {
        Ok(reason) => tracing::debug!(%address, %reason, "tunnel closed"),
        Err(violation) => {
            tracing::warn!(%address, %violation, "guest broke the tunnel protocol; closing the tunnel")
        }
    }
}
