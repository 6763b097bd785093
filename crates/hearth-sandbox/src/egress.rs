//! A sandbox's network, host side: the guest's proxy asks, the host
//! decides with the sandbox's [`Connector`] (policy, resolution on the
//! host, address checks), connects, and pipes the bytes; every attempt is
//! an [`EgressAudit`] record. See `hearth_guest::egress` for the guest
//! half and `hearth_proto::routes::EGRESS` for the protocol.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hearth_net::sni::{self, ServerNameCheck};
use hearth_net::{ConnectError, Connector, NetworkLimits, RateBucket};
use hearth_proto::{
    routes, EgressOpen, EgressReady, EgressRefused, EgressStart, EgressTransport, EgressVia, Frame,
    FrameDecoder, FrameKind,
};

use crate::channel::ClientSlot;
use crate::client::{check_status, frame_body, uri, with_timeout, GuestClient, CALL_TIMEOUT};
use crate::end::SandboxEnd;
use crate::error::{Result, SandboxError};
use crate::lifecycle::Sandbox;

/// One connection attempt, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EgressAudit {
    /// The destination as the program named it.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// How the program reached the agent.
    pub via: EgressVia,
    /// TCP, or a UDP datagram (always refused).
    pub transport: EgressTransport,
    /// The exec whose process opened it, where the guest could tell.
    pub exec: Option<String>,
    /// The address connected to, when it was.
    pub addr: Option<SocketAddr>,
    /// Whether the connection was opened.
    pub allowed: bool,
    /// The entry (or mode) that allowed it.
    pub rule: Option<String>,
    /// Why it was refused, or why it could not be opened, or why a limit
    /// or check ended it.
    pub reason: Option<String>,
    /// What ended an opened connection early: `max_bytes` (the byte cap),
    /// `sni` (a TLS server name other than the destination's), `stopped`
    /// (the sandbox's network was dropped), or none when either side
    /// closed it.
    pub ended_by: Option<String>,
    /// Bytes from the program to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the program.
    pub bytes_down: u64,
    /// From the request to the end of the connection, milliseconds.
    pub duration_ms: u64,
}

/// How a sandbox's network is served.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Loopback address in the guest for the proxy (`127.0.0.1:3128`;
    /// `127.0.0.1:0` picks a port).
    pub listen: String,
    /// Also route programs that ignore the proxy variables (a network
    /// device and DNS stub in the guest), where the guest can.
    pub transparent: bool,
    /// Rate, byte cap and connection count.
    pub limits: NetworkLimits,
}

impl EgressConfig {
    /// The proxy on `listen` with the transparent path, under `limits`.
    pub fn new(listen: &str, limits: NetworkLimits) -> Self {
        Self {
            listen: listen.to_owned(),
            transparent: true,
            limits,
        }
    }
}

/// Where audit records go (the server writes them to the sandbox's event
/// log).
pub type AuditSink = Arc<dyn Fn(EgressAudit) + Send + Sync>;

/// Chunks buffered toward the guest per connection.
const DOWN_CHUNKS: usize = 8;

/// Bytes read from a destination at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A sandbox's running network. Dropping it closes the guest's proxy.
pub struct Egress {
    address: SocketAddr,
    transparent: bool,
    reader: JoinHandle<()>,
    /// Ends every connection when the network is dropped, so the guest
    /// sees its control stream close (connections hold its sender).
    stop: CancellationToken,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("address", &self.address)
            .field("transparent", &self.transparent)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// The proxy's address inside the guest.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether the guest also routes programs that ignore the proxy
    /// variables (an older agent serves the proxy only).
    pub fn transparent(&self) -> bool {
        self.transparent
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reader.abort();
    }
}

impl Sandbox {
    /// Give this sandbox the network `connector` allows, served as
    /// `config` says: execs get the proxy variables, and, with the
    /// transparent path, other programs are routed the same way. Every
    /// connection attempt goes to `audit`. When the host channel breaks
    /// and reconnects, the network is started again on the new channel,
    /// with the same limits and what was already used counted.
    pub async fn start_egress(
        &self,
        config: EgressConfig,
        connector: Connector,
        audit: AuditSink,
    ) -> Result<Egress> {
        let client = self.client().await;
        let stream = match client.open_egress_stream(&config).await {
            Ok(stream) => stream,
            Err(error) => return Err(self.explain(error).await),
        };
        let again = Reopen {
            slot: self.client_slot(),
            end: self.end_watch(),
        };
        Ok(serve(stream, config, connector, audit, Some(again)))
    }
}

/// How long the network is tried again after the channel reconnected.
const REOPEN_WITHIN: Duration = Duration::from_secs(60);

/// Pause between two attempts to start the network again.
const REOPEN_PAUSE: Duration = Duration::from_millis(200);

/// What starting the network again after a channel break needs: the
/// channel the keeper reconnects, and the sandbox's end.
struct Reopen {
    slot: Arc<ClientSlot>,
    end: watch::Receiver<Option<SandboxEnd>>,
}

impl Reopen {
    /// The network started again on the reconnected channel; `None` once
    /// the sandbox ended, or when it cannot be started within
    /// [`REOPEN_WITHIN`].
    async fn stream(&mut self, config: &EgressConfig) -> Option<EgressStream> {
        let deadline = Instant::now() + REOPEN_WITHIN;
        let mut last = String::new();
        while Instant::now() < deadline {
            if self.end.borrow().is_some() {
                return None;
            }
            let client = tokio::select! {
                client = self.slot.live() => client,
                _ = self.end.changed() => return None,
            };
            match client.open_egress_stream(config).await {
                Ok(stream) => return Some(stream),
                // The guest may not have seen the old stream end yet.
                Err(error) => last = error.to_string(),
            }
            tokio::select! {
                _ = tokio::time::sleep(REOPEN_PAUSE) => {}
                _ = self.end.changed() => return None,
            }
        }
        tracing::warn!(error = %last, "the sandbox's network could not be started again after its channel reconnected; it has none now");
        None
    }
}

/// Serve `stream`, and when `again` is given, the streams that replace it
/// after channel breaks.
fn serve(
    stream: EgressStream,
    config: EgressConfig,
    connector: Connector,
    audit: AuditSink,
    again: Option<Reopen>,
) -> Egress {
    let address = stream.address;
    let transparent = config.transparent && stream.transparent;
    let budget = Arc::new(Budget::new(config.limits));
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        let mut again = again;
        loop {
            let shared = Shared {
                client: stream.client,
                connector: connector.clone(),
                down: stream.down,
                audit: audit.clone(),
                budget: budget.clone(),
                stop: stopped.clone(),
            };
            let reason = read_opens(stream.body, stream.decoder, &shared).await;
            drop(shared);
            tracing::debug!(%address, %reason, "egress stream ended");
            let Some(reopen) = again.as_mut() else {
                return;
            };
            match reopen.stream(&config).await {
                Some(next) => {
                    tracing::info!(address = %next.address, "the sandbox's network started again after its channel reconnected");
                    stream = next;
                }
                None => return,
            }
        }
    });
    tracing::debug!(%address, "egress proxy open");
    Egress {
        address,
        transparent,
        reader,
        stop,
    }
}

/// An open egress control stream.
struct EgressStream {
    client: GuestClient,
    body: Incoming,
    decoder: FrameDecoder,
    down: mpsc::Sender<Bytes>,
    address: SocketAddr,
    transparent: bool,
}

/// What one sandbox's connections share: their limits and what they used.
struct Budget {
    limits: NetworkLimits,
    connections: Arc<Semaphore>,
    rate: Option<Mutex<RateBucket>>,
    used: AtomicU64,
}

impl Budget {
    fn new(limits: NetworkLimits) -> Self {
        Self {
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            rate: limits
                .rate
                .map(|rate| Mutex::new(RateBucket::new(rate, Instant::now()))),
            used: AtomicU64::new(0),
        }
    }

    /// Whether the byte cap is spent.
    fn spent(&self) -> bool {
        self.limits
            .max_bytes
            .is_some_and(|cap| self.used.load(Ordering::Relaxed) >= cap)
    }

    /// Let `chunk` pass, or as much of it as the byte cap leaves (an empty
    /// answer when the cap is spent), after waiting for the rate.
    async fn pass(&self, chunk: Bytes) -> Bytes {
        let mut chunk = chunk;
        if let Some(cap) = self.limits.max_bytes {
            let len = chunk.len() as u64;
            let before = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    Some(used.saturating_add(len).min(cap))
                })
                .expect("the update always gives a value");
            chunk.truncate(cap.saturating_sub(before).min(len) as usize);
        } else {
            self.used.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if let Some(rate) = &self.rate {
            let wait = rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .charge(chunk.len() as u64, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        chunk
    }

    fn cap_reason(&self) -> String {
        format!(
            "the sandbox used its egress byte cap ({} bytes)",
            self.limits.max_bytes.unwrap_or_default()
        )
    }
}

impl GuestClient {
    /// See [`Sandbox::start_egress`]; on this connection only, so the
    /// network ends if it breaks.
    pub async fn open_egress(
        &self,
        config: EgressConfig,
        connector: Connector,
        audit: AuditSink,
    ) -> Result<Egress> {
        let stream = self.open_egress_stream(&config).await?;
        Ok(serve(stream, config, connector, audit, None))
    }

    /// Ask the guest to serve its network; the control stream once it
    /// does.
    async fn open_egress_stream(&self, config: &EgressConfig) -> Result<EgressStream> {
        let (down, rx) = mpsc::channel::<Bytes>(16);
        let start = EgressStart {
            listen: config.listen.clone(),
            transparent: config.transparent,
        };
        down.try_send(Frame::json(FrameKind::EgressStart, &start).encode())
            .expect("fresh channel has room");
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri(routes::EGRESS))
            .body(frame_body(rx, false))
            .expect("static request parts are valid");
        with_timeout("egress start", CALL_TIMEOUT, async {
            let response = check_status(self.send(request).await?).await.map_err(|e| {
                match e {
                    SandboxError::Guest { code: hearth_proto::ErrorCode::NotFound, .. } => SandboxError::Protocol(
                        "this image's guest agent has no egress proxy: rebuild the image with `hearth image build`".into(),
                    ),
                    other => other,
                }
            })?;
            let mut body = response.into_body();
            let mut decoder = FrameDecoder::default();
            let ready: EgressReady = crate::tunnel::read_first_frame(
                &mut body,
                &mut decoder,
                FrameKind::EgressReady,
                "egress",
            )
            .await?;
            let address: SocketAddr = ready.address.parse().map_err(|_| {
                SandboxError::Protocol(format!(
                    "egress: the guest reported {:?} as its address",
                    ready.address
                ))
            })?;
            Ok(EgressStream {
                client: self.clone(),
                body,
                decoder,
                down,
                address,
                transparent: ready.transparent,
            })
        })
        .await
    }
}

/// What every connection of one sandbox's network uses.
#[derive(Clone)]
struct Shared {
    client: GuestClient,
    connector: Connector,
    down: mpsc::Sender<Bytes>,
    audit: AuditSink,
    budget: Arc<Budget>,
    /// Cancelled when the network is dropped.
    stop: CancellationToken,
}

/// Serve the guest's connection requests until the control stream ends.
async fn read_opens(mut body: Incoming, mut decoder: FrameDecoder, shared: &Shared) -> String {
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) if frame.kind == FrameKind::EgressOpen => {
                    let open: EgressOpen = match frame.parse_json() {
                        Ok(open) => open,
                        Err(e) => return format!("the guest broke the egress protocol: {e}"),
                    };
                    tokio::spawn(serve_open(open, shared.clone()));
                }
                Ok(Some(frame)) => {
                    return format!("unexpected {:?} frame on the egress stream", frame.kind)
                }
                Ok(None) => break,
                Err(e) => return format!("the guest broke the egress protocol: {e}"),
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => return format!("the egress stream broke: {e}"),
            None => return "the guest ended the egress stream".into(),
        }
    }
}

/// Decide, connect and pipe one connection; audit it.
async fn serve_open(open: EgressOpen, shared: Shared) {
    let started = Instant::now();
    let mut record = EgressAudit {
        host: open.host.clone(),
        port: open.port,
        via: open.via,
        transport: open.transport,
        exec: open.exec.clone(),
        addr: None,
        allowed: false,
        rule: None,
        reason: None,
        ended_by: None,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
    };
    if open.transport == EgressTransport::Udp {
        return refuse(
            &shared,
            open.id,
            record,
            started,
            "UDP other than DNS is not carried; use TCP".into(),
        )
        .await;
    }
    let Ok(_slot) = shared.budget.connections.clone().try_acquire_owned() else {
        let limit = shared.budget.limits.max_connections;
        return refuse(
            &shared,
            open.id,
            record,
            started,
            format!("the sandbox has {limit} connections open, its limit; close one first"),
        )
        .await;
    };
    if shared.budget.spent() {
        let reason = shared.budget.cap_reason();
        record.ended_by = Some("max_bytes".into());
        return refuse(&shared, open.id, record, started, reason).await;
    }
    let opened = tokio::select! {
        opened = shared.connector.open(&open.host, open.port) => opened,
        _ = shared.stop.cancelled() => return,
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let reason = match &error {
                ConnectError::Refused(refusal) => refusal.to_string(),
                ConnectError::Unreachable(why) => why.clone(),
            };
            return refuse(&shared, open.id, record, started, reason).await;
        }
    };
    record.addr = Some(opened.addr);
    record.rule = Some(opened.rule.to_string());
    let (from_dest, to_dest) = opened.stream.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(DOWN_CHUNKS);
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri(&format!("{}?id={}", routes::EGRESS_CONN, open.id)))
        .body(frame_body(rx, false))
        .expect("static request parts are valid");
    let sent = tokio::select! {
        sent = shared.client.send(request) => sent,
        _ = shared.stop.cancelled() => return,
    };
    let response = match sent {
        Ok(response) => check_status(response).await,
        Err(error) => Err(error),
    };
    let up_body = match response {
        Ok(response) => response.into_body(),
        Err(error) => {
            let reason = format!("the guest did not take the connection: {error}");
            return refuse(&shared, open.id, record, started, reason).await;
        }
    };
    record.allowed = true;
    let budget = &shared.budget;
    // Whichever direction ends first for a limit or a check says why, and
    // ends the other too.
    let ended: Mutex<Option<(&'static str, String)>> = Mutex::new(None);
    let stop = shared.stop.child_token();
    let end = |by: &'static str, why: String| {
        ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert((by, why));
        stop.cancel();
    };
    let down_bytes = pipe_down(from_dest, tx, budget, &end, &stop);
    let up_bytes = pipe_up(up_body, to_dest, budget, &open.host, &end, &stop);
    let (down_total, up_total) = tokio::join!(down_bytes, up_bytes);
    if let Some((by, why)) = ended.into_inner().unwrap_or_else(|e| e.into_inner()) {
        if by == "sni" {
            // Nothing reached the destination: this is a refusal.
            record.allowed = false;
        }
        record.ended_by = Some(by.into());
        record.reason = Some(why);
    } else if shared.stop.is_cancelled() {
        record.ended_by = Some("stopped".into());
        record.reason = Some("the sandbox's network was stopped".into());
    }
    record.bytes_down = down_total;
    record.bytes_up = up_total;
    record.duration_ms = started.elapsed().as_millis() as u64;
    (shared.audit)(record);
}

/// Refuse connection `id` with `reason`, and audit it.
async fn refuse(
    shared: &Shared,
    id: u64,
    mut record: EgressAudit,
    started: Instant,
    reason: String,
) {
    let frame = Frame::json(
        FrameKind::EgressRefused,
        &EgressRefused {
            id,
            reason: reason.clone(),
        },
    )
    .encode();
    tokio::select! {
        _ = shared.down.send(frame) => {}
        _ = shared.stop.cancelled() => {}
    }
    record.reason = Some(reason);
    record.duration_ms = started.elapsed().as_millis() as u64;
    (shared.audit)(record);
}

/// The destination's bytes to the program, under the budget, until either
/// side ends or `stop`; the bytes passed.
async fn pipe_down(
    mut from_dest: OwnedReadHalf,
    tx: mpsc::Sender<Bytes>,
    budget: &Budget,
    end: &impl Fn(&'static str, String),
    stop: &CancellationToken,
) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = tokio::select! {
            read = from_dest.read(&mut buf) => read,
            _ = stop.cancelled() => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = tokio::select! {
            chunk = budget.pass(Bytes::copy_from_slice(&buf[..n])) => chunk,
            _ = stop.cancelled() => break,
        };
        let cut = chunk.len() < n;
        total += chunk.len() as u64;
        if !chunk.is_empty() && tx.send(chunk).await.is_err() {
            break;
        }
        if cut {
            end("max_bytes", budget.cap_reason());
            break;
        }
    }
    total
}

/// The program's bytes to the destination, under the budget, once its TLS
/// server name (if it speaks TLS) matches `host`, until either side ends
/// or `stop`; the bytes passed.
async fn pipe_up(
    mut up_body: Incoming,
    mut to_dest: OwnedWriteHalf,
    budget: &Budget,
    host: &str,
    end: &impl Fn(&'static str, String),
    stop: &CancellationToken,
) -> u64 {
    let mut total = 0u64;
    // The first bytes are held until they show whether this is TLS and
    // for which name.
    let mut head = Some(Vec::new());
    loop {
        let frame = tokio::select! {
            frame = up_body.frame() => frame,
            _ = stop.cancelled() => break,
        };
        let Some(Ok(frame)) = frame else {
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let data = match head.as_mut() {
            None => data,
            Some(held) => {
                held.extend_from_slice(&data);
                match sni::check_server_name(held, host) {
                    ServerNameCheck::NeedMore => continue,
                    ServerNameCheck::Pass => Bytes::from(head.take().unwrap_or_default()),
                    ServerNameCheck::Refuse(why) => {
                        end("sni", why);
                        break;
                    }
                }
            }
        };
        let n = data.len();
        let chunk = tokio::select! {
            chunk = budget.pass(data) => chunk,
            _ = stop.cancelled() => break,
        };
        total += chunk.len() as u64;
        if to_dest.write_all(&chunk).await.is_err() {
            break;
        }
        if chunk.len() < n {
            end("max_bytes", budget.cap_reason());
            break;
        }
    }
    let _ = to_dest.shutdown().await;
    total
}
