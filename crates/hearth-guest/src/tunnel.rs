//! `POST /v1/tunnel`: a reverse tunnel carrying HTTP/1.1 requests made
//! inside the guest to the host.
//!
//! Durable programs reach the engine over plain HTTP at a loopback address
//! (`docs/run-endpoint.md`), but only the host can open HTTP/2 streams. So
//! the host opens one long-lived stream; the guest listens on the loopback
//! address the host asked for and pushes every local request up the
//! response body as framed messages (see `hearth_proto::tunnel`), and the
//! host pushes the answers down the request body.
//!
//! Tasks of one tunnel:
//! - the controller ([`run`]) reads the host's answers and hands each to the
//!   local request waiting for it; when the stream ends (host closed it, the
//!   connection died, the host broke the protocol, the agent shuts down) it
//!   closes the listener and answers every waiting request `502`;
//! - the acceptor serves HTTP/1.1 on each accepted connection, one task per
//!   connection, each closed gracefully once the tunnel has ended;
//! - one short task per request writes its frames up, so a local client that
//!   hangs up halfway cannot leave a half-sent message behind.
//!
//! Bounds: local bodies up to the host's `max_request_body` (413 above),
//! [`MAX_TUNNEL_IN_FLIGHT`] requests waiting on the host (503 above),
//! hyper's default header limits, and answers from the host up to
//! [`MAX_TUNNEL_BODY`]. There is deliberately no timeout on the host's
//! answer: a program may wait minutes for a tool.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hearth_proto::limits::{MAX_TUNNEL_BODY, MAX_TUNNEL_IN_FLIGHT};
use hearth_proto::tunnel::message_writes;
use hearth_proto::{
    Frame, FrameDecoder, FrameError, FrameKind, TunnelAssembler, TunnelMessage, TunnelOpen,
    TunnelReady, TunnelRequestHead, TunnelResponseHead,
};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::agent::AgentState;
use crate::body::{self, BodySender, ResponseBody};
use crate::capacity::Slot;
use crate::error::{GuestError, Result};

/// Writes (a message, or about one chunk of a large one) buffered on the
/// way up before request tasks wait for the host.
const UP_WRITES_IN_FLIGHT: usize = 16;

/// How long a local connection may take to finish once the tunnel ended
/// (its waiting requests are answered at once; this bounds a client that
/// is halfway through sending one).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The message of the `502` every waiting local request gets when the
/// tunnel ends (the contract in `docs/run-endpoint.md`).
pub const ENGINE_UNAVAILABLE: &str = "the Hearth engine is not reachable (the host channel closed); the run will be relaunched from its journal";

/// The host's answer to one local request.
type Reply = TunnelMessage<TunnelResponseHead>;

/// A request sent up and not yet answered. The in-flight slot is held until
/// the host answers (even when the local client has gone), so the guest
/// never has more requests outstanding than the host allows.
struct Waiter {
    reply: oneshot::Sender<Reply>,
    _slot: OwnedSemaphorePermit,
}

/// State of one tunnel, shared by its tasks.
struct Tunnel {
    address: SocketAddr,
    max_request_body: u64,
    next_id: AtomicU64,
    /// Requests waiting for the host; `None` once the tunnel has ended.
    waiting: Mutex<Option<HashMap<u64, Waiter>>>,
    in_flight: Arc<Semaphore>,
    /// The response body toward the host; `None` once the tunnel has ended,
    /// so that the stream ends as soon as the last send in progress does.
    up: Mutex<Option<BodySender>>,
    /// Becomes true when the tunnel ends.
    ended: watch::Sender<bool>,
}

impl Tunnel {
    fn waiting(&self) -> MutexGuard<'_, Option<HashMap<u64, Waiter>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn up(&self) -> Option<BodySender> {
        self.up.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Register a waiter for `id`; false once the tunnel has ended.
    fn register(&self, id: u64, waiter: Waiter) -> bool {
        match self.waiting().as_mut() {
            Some(waiting) => {
                waiting.insert(id, waiter);
                true
            }
            None => false,
        }
    }

    /// Hand the host's answer to its waiter. An answer nobody waits for (a
    /// host bug) is dropped: it cannot be delivered, and it harms no one.
    fn answer(&self, reply: Reply) {
        let waiter = self
            .waiting()
            .as_mut()
            .and_then(|waiting| waiting.remove(&reply.head.id));
        match waiter {
            // The local client may have hung up meanwhile: nothing to do.
            Some(waiter) => drop(waiter.reply.send(reply)),
            None => crate::debug!(
                "tunnel {}: the host answered request {}, which is not waiting",
                self.address,
                reply.head.id
            ),
        }
    }

    /// End the tunnel: every waiting request gets its `502` (its reply
    /// sender is dropped), the stream toward the host ends, and the local
    /// connections close.
    fn end(&self) {
        let waiting = self.waiting().take();
        drop(waiting);
        self.up.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.ended.send_replace(true);
    }

    fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }
}

/// Handle `POST /v1/tunnel`: read the `TunnelOpen` frame, bind the listener,
/// and answer with a streamed body starting with `TunnelReady`. A refused
/// address or a failed bind is an error response (400 for an address that
/// is not loopback). `slot`, the tunnel's place among those the agent keeps
/// open at once, is held until the tunnel closes.
pub async fn open(
    state: Arc<AgentState>,
    mut request_body: Incoming,
    slot: Option<Slot>,
) -> Result<Response<ResponseBody>> {
    let mut decoder = FrameDecoder::default();
    let open = read_open(&mut request_body, &mut decoder).await?;
    let listen = parse_listen(&open)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| GuestError::io("listen on", listen.to_string(), e))?;
    let address = listener
        .local_addr()
        .map_err(|e| GuestError::io("read the address of", listen.to_string(), e))?;
    let (tx, response_body) = body::channel(UP_WRITES_IN_FLIGHT);
    let ready = TunnelReady {
        address: address.to_string(),
    };
    // A fresh channel has room for its first frame.
    let _ = tx.try_send(Ok(Frame::json(FrameKind::TunnelReady, &ready).encode()));
    let tunnel = Arc::new(Tunnel {
        address,
        max_request_body: open.max_request_body,
        next_id: AtomicU64::new(1),
        waiting: Mutex::new(Some(HashMap::new())),
        in_flight: Arc::new(Semaphore::new(MAX_TUNNEL_IN_FLIGHT)),
        up: Mutex::new(Some(tx.clone())),
        ended: watch::channel(false).0,
    });
    crate::debug!("tunnel listening on {address}");
    tokio::spawn(async move {
        run(state, tunnel, listener, request_body, decoder, tx).await;
        // The tunnel counts against the agent's bound until it closes.
        drop(slot);
    });
    Ok(body::streamed(response_body, "application/octet-stream"))
}

/// The address to listen on: it must be loopback, so that the tunnel is
/// reachable from inside the VM only.
pub fn parse_listen(open: &TunnelOpen) -> Result<SocketAddr> {
    let refuse = |why: &str| {
        GuestError::InvalidArgument(format!(
            "tunnel listen address {:?} {why}: use a loopback address such as 127.0.0.1:0 or [::1]:0 (port 0 picks a free port)",
            open.listen
        ))
    };
    let address: SocketAddr = open
        .listen
        .parse()
        .map_err(|_| refuse("is not a socket address"))?;
    if !address.ip().is_loopback() {
        return Err(refuse("is not a loopback address"));
    }
    if open.max_request_body > MAX_TUNNEL_BODY {
        return Err(GuestError::InvalidArgument(format!(
            "tunnel max_request_body {} exceeds the {MAX_TUNNEL_BODY}-byte limit",
            open.max_request_body
        )));
    }
    Ok(address)
}

fn body_frame_error(stream: &str, error: FrameError) -> GuestError {
    match error {
        FrameError::TooLarge { .. } => {
            GuestError::TooLarge(format!("{stream} request body: {error}"))
        }
        other => GuestError::InvalidArgument(format!("{stream} request body: {other}")),
    }
}

/// Read request body frames until the first one, which must be `TunnelOpen`.
async fn read_open(body: &mut Incoming, decoder: &mut FrameDecoder) -> Result<TunnelOpen> {
    read_first_frame(body, decoder, FrameKind::TunnelOpen, "tunnel").await
}

/// Read the request body of a long-lived `stream` (a tunnel, the egress
/// stream) until its first frame, which must be of `kind`, and parse it.
pub(crate) async fn read_first_frame<T: serde::de::DeserializeOwned>(
    body: &mut Incoming,
    decoder: &mut FrameDecoder,
    kind: FrameKind,
    stream: &str,
) -> Result<T> {
    let error = |e| body_frame_error(stream, e);
    loop {
        if let Some(frame) = decoder.next_frame().map_err(error)? {
            if frame.kind != kind {
                return Err(GuestError::InvalidArgument(format!(
                    "the first frame of a {stream} must be {kind:?}, got {:?}",
                    frame.kind
                )));
            }
            return frame.parse_json().map_err(error);
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => {
                return Err(GuestError::InvalidArgument(format!(
                    "{stream} request body failed before the {kind:?} frame: {e}"
                )))
            }
            None => {
                return Err(GuestError::InvalidArgument(format!(
                    "{stream} request body ended before the {kind:?} frame"
                )))
            }
        }
    }
}

/// The controller: deliver the host's answers until the tunnel ends, then
/// tear everything down.
async fn run(
    state: Arc<AgentState>,
    tunnel: Arc<Tunnel>,
    listener: TcpListener,
    request_body: Incoming,
    decoder: FrameDecoder,
    up: BodySender,
) {
    let acceptor = tokio::spawn(accept(listener, tunnel.clone()));
    let reason = tokio::select! {
        reason = read_answers(request_body, decoder, &tunnel) => reason,
        () = up.closed() => "the host closed the tunnel stream".to_owned(),
        () = state.shutdown_requested() => "the agent is shutting down".to_owned(),
    };
    // The listener closes with its task: no new local connections.
    acceptor.abort();
    let _ = acceptor.await;
    tunnel.end();
    drop(up);
    crate::debug!("tunnel on {} closed: {reason}", tunnel.address);
}

/// Read the host's answers and deliver them; returns why the stream ended.
async fn read_answers(mut body: Incoming, mut decoder: FrameDecoder, tunnel: &Tunnel) -> String {
    let mut assembler =
        TunnelAssembler::<TunnelResponseHead>::new(MAX_TUNNEL_BODY, MAX_TUNNEL_IN_FLIGHT);
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => match assembler.push(frame) {
                    Ok(Some(reply)) => tunnel.answer(reply),
                    Ok(None) => {}
                    Err(e) => return format!("the host broke the tunnel protocol: {e}"),
                },
                Ok(None) => break,
                Err(e) => return format!("the host broke the tunnel protocol: {e}"),
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => return format!("the tunnel stream broke: {e}"),
            None => return "the host ended the tunnel".to_owned(),
        }
    }
}

/// Accept local connections until aborted (which closes the listener).
async fn accept(listener: TcpListener, tunnel: Arc<Tunnel>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_local(stream, tunnel.clone()));
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                crate::debug!("tunnel {}: accept failed: {e}", tunnel.address);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve HTTP/1.1 (keep-alive) on one local connection until the client
/// closes it or the tunnel ends.
async fn serve_local(stream: TcpStream, tunnel: Arc<Tunnel>) {
    let mut ended = tunnel.ended.subscribe();
    let service = service_fn(move |request| {
        let tunnel = tunnel.clone();
        async move { Ok::<_, Infallible>(forward(tunnel, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = ended.wait_for(|ended| *ended) => connection.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
}

/// One local request: check it, send it up, wait for the host's answer.
async fn forward(tunnel: Arc<Tunnel>, request: Request<Incoming>) -> Response<ResponseBody> {
    if tunnel.has_ended() {
        return engine_unavailable();
    }
    let Ok(slot) = tunnel.in_flight.clone().try_acquire_owned() else {
        return local_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            &format!(
                "more than {MAX_TUNNEL_IN_FLIGHT} requests are already waiting for the engine; retry after one is answered"
            ),
        );
    };
    let (parts, request_body) = request.into_parts();
    let max = tunnel.max_request_body;
    let too_large = || {
        local_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("the request body exceeds the {max}-byte limit of the run endpoint"),
        )
    };
    if content_length(&parts.headers).is_some_and(|len| len > max) {
        return too_large();
    }
    // `max` is at most MAX_TUNNEL_BODY (checked at open), so it fits.
    let body = match Limited::new(request_body, max as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return local_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                &format!("the request body could not be read: {e}"),
            )
        }
    };
    let id = tunnel.next_id.fetch_add(1, Ordering::Relaxed);
    let head = TunnelRequestHead {
        id,
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body_len: body.len() as u64,
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let waiter = Waiter {
        reply: reply_tx,
        _slot: slot,
    };
    if !tunnel.register(id, waiter) {
        return engine_unavailable();
    }
    let Some(up) = tunnel.up() else {
        return engine_unavailable();
    };
    // Its own task: a client hanging up must not cut a message in half.
    tokio::spawn(async move {
        for write in message_writes(&head, &body) {
            if up.send(Ok(write)).await.is_err() {
                return;
            }
        }
    });
    match reply_rx.await {
        Ok(reply) => local_response(reply),
        Err(_) => engine_unavailable(),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The local response for the host's answer.
fn local_response(reply: Reply) -> Response<ResponseBody> {
    let status = match StatusCode::from_u16(reply.head.status) {
        Ok(status) if status.as_u16() >= 200 => status,
        _ => {
            return local_error(
                StatusCode::BAD_GATEWAY,
                "internal",
                &format!(
                    "the engine answered with an invalid status {}",
                    reply.head.status
                ),
            )
        }
    };
    let mut response = Response::new(Full::new(reply.body).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    if let Some(value) = reply
        .head
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// An error answered inside the guest, in the run endpoint's error format.
fn local_error(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn engine_unavailable() -> Response<ResponseBody> {
    local_error(
        StatusCode::BAD_GATEWAY,
        "engine_unavailable",
        ENGINE_UNAVAILABLE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(listen: &str) -> TunnelOpen {
        TunnelOpen {
            listen: listen.into(),
            max_request_body: 1024,
        }
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in ["127.0.0.1:0", "127.3.2.1:8080", "[::1]:0"] {
            assert!(parse_listen(&open(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "0.0.0.0:0",
            "10.0.2.15:80",
            "[::]:0",
            "[::ffff:127.0.0.1]:0",
        ] {
            let err = parse_listen(&open(bad)).unwrap_err().to_string();
            assert!(err.contains("not a loopback address"), "{bad}: {err}");
        }
        let err = parse_listen(&open("localhost:80")).unwrap_err().to_string();
        assert!(err.contains("not a socket address"), "{err}");
        assert!(
            err.contains("127.0.0.1:0"),
            "the message says what to do: {err}"
        );
    }

    #[test]
    fn the_request_body_limit_is_bounded() {
        let mut too_big = open("127.0.0.1:0");
        too_big.max_request_body = MAX_TUNNEL_BODY + 1;
        assert!(parse_listen(&too_big).is_err());
        too_big.max_request_body = MAX_TUNNEL_BODY;
        assert!(parse_listen(&too_big).is_ok());
    }

    #[test]
    fn answers_with_invalid_statuses_become_502() {
        let reply = |status| Reply {
            head: TunnelResponseHead {
                id: 1,
                status,
                content_type: Some("text/plain".into()),
                body_len: 2,
            },
            body: Bytes::from_static(b"ok"),
        };
        let response = local_response(reply(201));
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
        for bad in [0, 99, 101, 1000] {
            assert_eq!(local_response(reply(bad)).status(), StatusCode::BAD_GATEWAY);
        }
    }
}
