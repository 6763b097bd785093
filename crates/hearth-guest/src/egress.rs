//! `POST /v1/egress` and `POST /v1/egress/conn`: the guest's HTTP proxy,
//! through which programs reach the network the host allows.
//!
//! The VM has no network device that reaches a network. When the host lets a sandbox reach the
//! network, it opens the egress control stream; the agent then serves an
//! HTTP proxy on a loopback address (execs get `HTTP_PROXY`,
//! `HTTPS_PROXY` and their lowercase forms, and `NO_PROXY`). For each
//! connection a program asks for (`CONNECT host:port`, or an absolute-form
//! request such as `GET http://host/path`), the agent sends an `EgressOpen`
//! frame up the control stream and waits for the host, which decides with
//! the sandbox's policy, resolves the name itself and connects:
//!
//! - refused: an `EgressRefused` frame comes down the control stream, and
//!   the program gets `403` with the reason;
//! - allowed: the host opens `POST /v1/egress/conn?id=N`, whose request
//!   body carries the destination's bytes and whose response body carries
//!   the program's, and the agent pipes them to the program's connection.
//!
//! So nothing leaves the VM but through the host, which decides.
//!
//! With `EgressStart.transparent`, the agent also serves a network device
//! for programs that ignore the proxy variables ([`crate::netstack`]): its
//! connections are asked of the host with the same [`Egress::ask`] (marked
//! `via: transparent`) and piped with the same [`pipe`].
//!
//! Bounds: [`MAX_EGRESS_PENDING`] connections waiting for the host (`403`
//! "try again" past it), [`VERDICT_TIMEOUT`] for the host's answer, host names up to
//! [`MAX_EGRESS_HOST`] bytes, hyper's default header limits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hearth_proto::limits::{MAX_EGRESS_HOST, MAX_EGRESS_PENDING};
use hearth_proto::{
    EgressOpen, EgressReady, EgressRefused, EgressStart, EgressTransport, EgressVia, Frame,
    FrameDecoder, FrameKind,
};
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OnceCell, Semaphore};

use crate::agent::AgentState;
use crate::body::{self, BodySender, ResponseBody};
use crate::capacity::Slot;
use crate::error::{GuestError, Result};
use crate::owner::ExecOwners;

/// How long a program's connection waits for the host's verdict.
pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunks buffered toward the host per connection.
const UP_CHUNKS: usize = 8;

/// Bytes read from a program's connection at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The host's answer for one connection.
pub(crate) enum Verdict {
    /// Allowed and connected: the destination's bytes, and where the
    /// program's go.
    Open {
        from_host: Incoming,
        to_host: BodySender,
    },
    /// Refused or unreachable, and why.
    Refused(String),
}

/// The running proxy, shared by its tasks and the agent.
pub struct Egress {
    address: SocketAddr,
    next_id: AtomicU64,
    /// Connections waiting for the host; `None` once egress has ended.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Verdict>>>>,
    /// Bounds [`Self::pending`].
    waiting: Arc<Semaphore>,
    /// The control stream toward the host; `None` once egress has ended.
    up: Mutex<Option<BodySender>>,
    ended: watch::Sender<bool>,
    /// The running execs, to name the one that opened a connection.
    owners: Arc<ExecOwners>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// The proxy's address, for the execs' proxy variables.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn pending(&self) -> MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Verdict>>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Verdict>> {
        self.pending().as_mut().and_then(|p| p.remove(&id))
    }

    fn end(&self) {
        self.pending().take();
        self.up.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.ended.send_replace(true);
    }

    /// Tell the host about an attempt the agent does not carry (a UDP
    /// datagram), for its audit, without waiting for an answer: the host
    /// refuses it, and the refusal of an id nobody waits for is ignored.
    /// Dropped when the control stream is full.
    pub(crate) fn notify(&self, host: &str, port: u16, transport: EgressTransport) {
        if host.is_empty() || host.len() > MAX_EGRESS_HOST {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::json(
            FrameKind::EgressOpen,
            &EgressOpen {
                id,
                host: host.to_string(),
                port,
                via: EgressVia::Transparent,
                transport,
                exec: None,
            },
        )
        .encode();
        if let Some(up) = self.up.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = up.try_send(Ok(frame));
        }
    }

    /// The exec whose program holds the TCP socket from `local` to
    /// `remote` (the program's side of a connection), if it can be told
    /// within [`crate::owner::LOOKUP_BUDGET`].
    pub(crate) async fn owner(&self, local: SocketAddr, remote: SocketAddr) -> Option<String> {
        self.owners.lookup(local, remote).await
    }

    /// Ask the host for a TCP connection to `host:port` (a name or an
    /// address) opened by `exec` (when known) and wait for its verdict.
    /// Both ways in use it: the proxy and the transparent path (`via`).
    pub(crate) async fn ask(
        &self,
        host: &str,
        port: u16,
        via: EgressVia,
        exec: Option<String>,
    ) -> Verdict {
        if host.is_empty() || host.len() > MAX_EGRESS_HOST {
            return Verdict::Refused(format!(
                "a destination host name must have 1 to {MAX_EGRESS_HOST} bytes"
            ));
        }
        let Ok(_permit) = self.waiting.try_acquire() else {
            return Verdict::Refused(format!(
                "{MAX_EGRESS_PENDING} connections are already waiting for the host; try again"
            ));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending().as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Verdict::Refused("the network was closed".into()),
        };
        let up = self.up.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let frame = Frame::json(
            FrameKind::EgressOpen,
            &EgressOpen {
                id,
                host: host.to_string(),
                port,
                via,
                transport: EgressTransport::Tcp,
                exec,
            },
        )
        .encode();
        let sent = match up {
            Some(up) => up.send(Ok(frame)).await.is_ok(),
            None => false,
        };
        if !sent {
            self.take(id);
            return Verdict::Refused("the network was closed".into());
        }
        match tokio::time::timeout(VERDICT_TIMEOUT, rx).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(_)) => Verdict::Refused("the network was closed".into()),
            Err(_) => {
                self.take(id);
                Verdict::Refused(format!(
                    "the host did not answer within {}s",
                    VERDICT_TIMEOUT.as_secs()
                ))
            }
        }
    }
}

/// The variables that point programs at the proxy on `address`: what curl,
/// pip, git, npm and Python's urllib and requests read.
pub fn proxy_env(address: SocketAddr) -> Vec<(String, String)> {
    let url = format!("http://{address}");
    let none = "localhost,127.0.0.1,::1".to_string();
    [
        ("HTTP_PROXY", url.clone()),
        ("HTTPS_PROXY", url.clone()),
        ("http_proxy", url.clone()),
        ("https_proxy", url),
        ("NO_PROXY", none.clone()),
        ("no_proxy", none),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Handle `POST /v1/egress`: read `EgressStart`, bind the proxy, and answer
/// with a streamed body starting with `EgressReady`. One proxy per agent:
/// a second control stream while one is open is refused.
pub async fn open(
    state: Arc<AgentState>,
    mut request_body: Incoming,
    slot: Option<Slot>,
) -> Result<Response<ResponseBody>> {
    let mut decoder = FrameDecoder::default();
    let start: EgressStart = crate::tunnel::read_first_frame(
        &mut request_body,
        &mut decoder,
        FrameKind::EgressStart,
        "egress stream",
    )
    .await?;
    let listen: SocketAddr = start.listen.parse().map_err(|_| {
        GuestError::InvalidArgument(format!(
            "egress listen address {:?} is not a socket address",
            start.listen
        ))
    })?;
    if !listen.ip().is_loopback() {
        return Err(GuestError::InvalidArgument(format!(
            "egress listen address {listen} is not a loopback address: the proxy must be reachable from inside the VM only"
        )));
    }
    if state.egress().is_some() {
        return Err(GuestError::InvalidArgument(
            "the egress proxy is already running: close its control stream first".into(),
        ));
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| GuestError::io("listen on", listen.to_string(), e))?;
    let address = listener
        .local_addr()
        .map_err(|e| GuestError::io("read the address of", listen.to_string(), e))?;
    let (tx, response_body) = body::channel(16);
    let egress = Arc::new(Egress {
        address,
        next_id: AtomicU64::new(1),
        pending: Mutex::new(Some(HashMap::new())),
        waiting: Arc::new(Semaphore::new(MAX_EGRESS_PENDING)),
        up: Mutex::new(Some(tx.clone())),
        ended: watch::channel(false).0,
        owners: state.owners.clone(),
    });
    // The transparent path changes the machine's routes: only as the VM's
    // PID 1, never in host mode (tests), where the machine is the host.
    let transparent = match (start.transparent, state.options.pid1) {
        (true, true) => match crate::netstack::start(egress.clone()) {
            Ok(transparent) => Some(transparent),
            Err(e) => {
                // Fails closed: without the device there is no route.
                crate::info!("transparent egress is not available: {e}");
                None
            }
        },
        (true, false) => {
            crate::debug!("transparent egress: not in host mode");
            None
        }
        (false, _) => None,
    };
    let ready = EgressReady {
        address: address.to_string(),
        transparent: transparent.is_some(),
    };
    let _ = tx.try_send(Ok(Frame::json(FrameKind::EgressReady, &ready).encode()));
    state.set_egress(Some(egress.clone()));
    crate::debug!("egress proxy listening on {address}");
    tokio::spawn(async move {
        let acceptor = tokio::spawn(accept(listener, egress.clone()));
        let reason = tokio::select! {
            reason = read_refusals(request_body, decoder, &egress) => reason,
            () = tx.closed() => "the host closed the egress stream".to_owned(),
            () = state.shutdown_requested() => "the agent is shutting down".to_owned(),
        };
        acceptor.abort();
        let _ = acceptor.await;
        // Closes the device: its routes go with it.
        drop(transparent);
        state.set_egress(None);
        egress.end();
        drop(slot);
        crate::debug!("egress proxy on {address} closed: {reason}");
    });
    Ok(body::streamed(response_body, "application/octet-stream"))
}

/// Handle `POST /v1/egress/conn?id=N`: hand the host's connection to the
/// program waiting for it; the response body carries the program's bytes.
pub async fn conn(
    state: Arc<AgentState>,
    query: Option<&str>,
    request_body: Incoming,
) -> Result<Response<ResponseBody>> {
    let id = query
        .and_then(|q| q.strip_prefix("id="))
        .and_then(|id| id.parse::<u64>().ok())
        .ok_or_else(|| GuestError::InvalidArgument("egress conn needs ?id=N".into()))?;
    let waiter = state
        .egress()
        .and_then(|egress| egress.take(id))
        .ok_or_else(|| GuestError::NotFound(format!("no egress connection {id} is waiting")))?;
    let (to_host, response) = body::channel(UP_CHUNKS);
    // A program that gave up meanwhile: its stream just ends.
    let _ = waiter.send(Verdict::Open {
        from_host: request_body,
        to_host,
    });
    Ok(body::streamed(response, "application/octet-stream"))
}

/// Deliver the host's refusals until the control stream ends; returns why.
async fn read_refusals(mut body: Incoming, mut decoder: FrameDecoder, egress: &Egress) -> String {
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) if frame.kind == FrameKind::EgressRefused => {
                    match frame.parse_json::<EgressRefused>() {
                        Ok(refused) => {
                            if let Some(waiter) = egress.take(refused.id) {
                                let _ = waiter.send(Verdict::Refused(refused.reason));
                            }
                        }
                        Err(e) => return format!("the host broke the egress protocol: {e}"),
                    }
                }
                Ok(Some(frame)) => {
                    return format!("unexpected {:?} frame on the egress stream", frame.kind)
                }
                Ok(None) => break,
                Err(e) => return format!("the host broke the egress protocol: {e}"),
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => return format!("the egress stream broke: {e}"),
            None => return "the host ended the egress stream".to_owned(),
        }
    }
}

async fn accept(listener: TcpListener, egress: Arc<Egress>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_local(stream, peer, egress.clone()));
            }
            Err(e) => {
                crate::debug!("egress proxy {}: accept failed: {e}", egress.address);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve proxy requests on one program connection from `peer`.
async fn serve_local(stream: TcpStream, peer: SocketAddr, egress: Arc<Egress>) {
    let mut ended = egress.ended.subscribe();
    // The program's socket goes from `peer` to the proxy; its exec is
    // looked up once, at the first request, for all on this connection.
    let local = stream.local_addr().unwrap_or(egress.address);
    let owner = Arc::new(OnceCell::new());
    let service = service_fn(move |request| {
        let egress = egress.clone();
        let owner = owner.clone();
        async move {
            let exec = owner
                .get_or_init(|| egress.owner(peer, local))
                .await
                .clone();
            Ok::<_, Infallible>(proxy(egress, request, exec).await)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = ended.wait_for(|ended| *ended) => {}
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// One proxy request: a `CONNECT` tunnel, or an absolute-form request sent
/// on over a connection of its own.
async fn proxy(
    egress: Arc<Egress>,
    request: Request<Incoming>,
    exec: Option<String>,
) -> Response<ProxyBody> {
    if request.method() == Method::CONNECT {
        let Some((host, port)) = authority(request.uri(), None) else {
            return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port".into());
        };
        return match egress.ask(&host, port, EgressVia::Proxy, exec).await {
            Verdict::Refused(reason) => text(
                StatusCode::FORBIDDEN,
                format!("hearth: connection to {host}:{port} refused: {reason}"),
            ),
            Verdict::Open { from_host, to_host } => {
                tokio::spawn(async move {
                    match hyper::upgrade::on(request).await {
                        Ok(upgraded) => {
                            pipe(TokioIo::new(upgraded), from_host, to_host, None).await
                        }
                        Err(e) => crate::debug!("egress: CONNECT upgrade failed: {e}"),
                    }
                });
                Response::new(
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed(),
                )
            }
        };
    }
    if request.uri().scheme_str() != Some("http") {
        return text(
            StatusCode::BAD_REQUEST,
            "this is the sandbox's HTTP proxy: send absolute http:// URLs, or CONNECT for anything else (https)".into(),
        );
    }
    let Some((host, port)) = authority(request.uri(), Some(80)) else {
        return text(StatusCode::BAD_REQUEST, "the URL has no host".into());
    };
    match egress.ask(&host, port, EgressVia::Proxy, exec).await {
        Verdict::Refused(reason) => text(
            StatusCode::FORBIDDEN,
            format!("hearth: connection to {host}:{port} refused: {reason}"),
        ),
        Verdict::Open { from_host, to_host } => forward(request, from_host, to_host).await,
    }
}

/// Send an absolute-form request on over the host's connection, as an
/// origin-form request of its own (one request per connection).
async fn forward(
    request: Request<Incoming>,
    from_host: Incoming,
    to_host: BodySender,
) -> Response<ProxyBody> {
    let (ours, theirs) = tokio::io::duplex(READ_CHUNK);
    tokio::spawn(pipe(theirs, from_host, to_host, None));
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(ours)).await {
            Ok(pair) => pair,
            Err(e) => return text(StatusCode::BAD_GATEWAY, format!("hearth: {e}")),
        };
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    if let Some(authority) = parts.uri.authority().cloned() {
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(value) = header::HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, value);
            }
        }
    }
    parts.uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::BAD_REQUEST, "a bad path".into()),
    };
    parts.headers.remove("proxy-connection");
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    parts.headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(|b| b.boxed()),
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("hearth: the destination: {e}"),
        ),
    }
}

/// `host` and `port` of a request target (`[v6]` unbracketed).
fn authority(uri: &Uri, default_port: Option<u16>) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let port = authority.port_u16().or(default_port)?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host.to_string(), port))
}

/// How long a half-close toward the program may wait for the program to
/// acknowledge what was sent before it.
const HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Half-close toward the program. The transparent path's TCP stack
/// (`ipstack` 1.0) sends its FIN only when asked again after the data in
/// flight was acknowledged, and does not wake the task that asked: so ask
/// again every 50 ms (a proxy tunnel completes at the first ask).
async fn half_close<W: AsyncWrite + Unpin>(write: &mut W) {
    let deadline = tokio::time::Instant::now() + HALF_CLOSE_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if tokio::time::timeout(Duration::from_millis(50), write.shutdown())
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// How long the destination's bytes are still carried to the program after
/// the program's side ended (its FIN). Half-close clients (`nc -N`, a
/// `shutdown(SHUT_WR)` before reading the answer) expect the answer after
/// their FIN, so the destination is given this long to send it and close;
/// but a destination that never closes must not hold the connection (and,
/// on the transparent path, one of its slots) until the idle timeout: past
/// this, both directions end. A program that closed its socket outright
/// (`close()`, not `shutdown(SHUT_WR)`) reads nothing more, so when the
/// program's socket is known its connection ends as soon as no process
/// holds that socket any more (checked every [`LINGER_CHECK`]).
pub(crate) const LINGER_AFTER_CLOSE: Duration = Duration::from_secs(30);

/// How often a lingering connection checks whether its program still holds
/// its socket, and a transparent stream whose program sent its FIN is read
/// again (see [`ProgramSocket::fin`]).
const LINGER_CHECK: Duration = Duration::from_millis(250);

/// The program's socket behind a transparent stream.
pub(crate) struct ProgramSocket {
    /// Its local and remote address, as the program sees them.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Told when the program sent a FIN or a reset. The transparent path's
    /// TCP stack (`ipstack` 1.0) closes the stream then without waking its
    /// reader, so after this the stream is read again every
    /// [`LINGER_CHECK`] until it ends. (Re-reading all along would defeat
    /// the stack's idle timeout, which each read restarts.)
    pub fin: Arc<tokio::sync::Notify>,
}

/// Copy between a program's connection (a proxy tunnel or a transparent
/// TCP stream) and the host's stream until both directions end, or for at
/// most [`LINGER_AFTER_CLOSE`] after the program's side ended, or until the
/// program no longer holds its socket (`program`: its local and remote
/// address, when known). A write to the program that fails (it reset the
/// connection) ends the downward direction at once.
pub(crate) async fn pipe<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    mut from_host: Incoming,
    to_host: BodySender,
    program: Option<ProgramSocket>,
) {
    let fin = program.as_ref().map(|p| p.fin.clone());
    let socket = program.map(|p| (p.local, p.remote));
    let (mut read, mut write) = tokio::io::split(stream);
    let (up_ended, up_ended_rx) = oneshot::channel::<()>();
    let down = async move {
        let carry = async {
            while let Some(Ok(frame)) = from_host.frame().await {
                if let Ok(data) = frame.into_data() {
                    if write.write_all(&data).await.is_err() {
                        return;
                    }
                }
            }
            half_close(&mut write).await;
        };
        let linger = async {
            if up_ended_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            let deadline = tokio::time::Instant::now() + LINGER_AFTER_CLOSE;
            loop {
                if let Some((local, remote)) = socket {
                    let held = tokio::task::spawn_blocking(move || {
                        crate::owner::is_held(std::path::Path::new("/proc"), local, remote)
                    })
                    .await
                    .unwrap_or(true);
                    if !held {
                        return;
                    }
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return;
                }
                tokio::time::sleep(LINGER_CHECK.min(deadline - now)).await;
            }
        };
        tokio::select! {
            () = carry => {}
            () = linger => {}
        }
    };
    let up = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        // Since when the program's FIN was seen (transparent streams).
        let mut closing: Option<tokio::time::Instant> = None;
        loop {
            let next = read.read(&mut buf);
            let result = match (&fin, closing) {
                (Some(_), Some(since)) => {
                    match tokio::time::timeout(LINGER_CHECK, next).await {
                        Ok(result) => result,
                        // A FIN the stack did not act on (it ignores one
                        // that carries data): the program's side is over
                        // all the same, within a bound.
                        Err(_) if since.elapsed() >= LINGER_AFTER_CLOSE => break,
                        Err(_) => continue,
                    }
                }
                (Some(fin), None) => tokio::select! {
                    result = next => result,
                    () = fin.notified() => {
                        closing = Some(tokio::time::Instant::now());
                        continue;
                    }
                },
                (None, _) => next.await,
            };
            match result {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_host
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping the sender ends the response body: the host half-closes
        // toward the destination.
        drop(to_host);
        let _ = up_ended.send(());
    };
    tokio::join!(down, up);
}
