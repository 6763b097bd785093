//! A sandbox's network, host side: the guest's proxy asks, the host
//! decides with the sandbox's [`Connector`] (policy, resolution on the
//! host, address checks), connects, and pipes the bytes; every attempt is
//! an [`EgressAudit`] record. See `hearth_guest::egress` for the guest
//! half and `hearth_proto::routes::EGRESS` for the protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use hearth_net::{ConnectError, Connector};
use hearth_proto::{
    routes, EgressOpen, EgressReady, EgressRefused, EgressStart, Frame, FrameDecoder, FrameKind,
};

use crate::client::{check_status, frame_body, uri, with_timeout, GuestClient, CALL_TIMEOUT};
use crate::error::{Result, SandboxError};
use crate::lifecycle::Sandbox;

/// One connection attempt, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EgressAudit {
    /// The destination as the program named it.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The address connected to, when it was.
    pub addr: Option<SocketAddr>,
    /// Whether the connection was opened.
    pub allowed: bool,
    /// The entry (or mode) that allowed it.
    pub rule: Option<String>,
    /// Why it was refused, or why it could not be opened.
    pub reason: Option<String>,
    /// Bytes from the program to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the program.
    pub bytes_down: u64,
    /// From the request to the end of the connection, milliseconds.
    pub duration_ms: u64,
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
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// The proxy's address inside the guest.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Sandbox {
    /// Give this sandbox the network `connector` allows: the guest serves
    /// its proxy on `listen` (a loopback address; `127.0.0.1:0` picks a
    /// port) and its execs get the proxy variables. Every connection
    /// attempt goes to `audit`.
    pub async fn start_egress(
        &self,
        listen: &str,
        connector: Connector,
        audit: AuditSink,
    ) -> Result<Egress> {
        let client = self.client().await;
        match client.open_egress(listen, connector, audit).await {
            Ok(egress) => Ok(egress),
            Err(error) => Err(self.explain(error).await),
        }
    }
}

impl GuestClient {
    /// See [`Sandbox::start_egress`].
    pub async fn open_egress(
        &self,
        listen: &str,
        connector: Connector,
        audit: AuditSink,
    ) -> Result<Egress> {
        let (down, rx) = mpsc::channel::<Bytes>(16);
        let start = EgressStart {
            listen: listen.to_owned(),
            transparent: true,
        };
        down.try_send(Frame::json(FrameKind::EgressStart, &start).encode())
            .expect("fresh channel has room");
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri(routes::EGRESS))
            .body(frame_body(rx, false))
            .expect("static request parts are valid");
        let (body, decoder, address) = with_timeout("egress start", CALL_TIMEOUT, async {
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
            Ok((body, decoder, address))
        })
        .await?;
        let client = self.clone();
        let reader = tokio::spawn(async move {
            let reason = read_opens(body, decoder, &client, &connector, &down, &audit).await;
            tracing::debug!(%address, %reason, "egress closed");
        });
        tracing::debug!(%address, "egress proxy open");
        Ok(Egress { address, reader })
    }
}

/// Serve the guest's connection requests until the control stream ends.
async fn read_opens(
    mut body: Incoming,
    mut decoder: FrameDecoder,
    client: &GuestClient,
    connector: &Connector,
    down: &mpsc::Sender<Bytes>,
    audit: &AuditSink,
) -> String {
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) if frame.kind == FrameKind::EgressOpen => {
                    let open: EgressOpen = match frame.parse_json() {
                        Ok(open) => open,
                        Err(e) => return format!("the guest broke the egress protocol: {e}"),
                    };
                    tokio::spawn(serve_open(
                        open,
                        client.clone(),
                        connector.clone(),
                        down.clone(),
                        audit.clone(),
                    ));
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
async fn serve_open(
    open: EgressOpen,
    client: GuestClient,
    connector: Connector,
    down: mpsc::Sender<Bytes>,
    audit: AuditSink,
) {
    let started = Instant::now();
    let mut record = EgressAudit {
        host: open.host.clone(),
        port: open.port,
        addr: None,
        allowed: false,
        rule: None,
        reason: None,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
    };
    let refuse = |reason: String| {
        Frame::json(
            FrameKind::EgressRefused,
            &EgressRefused {
                id: open.id,
                reason,
            },
        )
        .encode()
    };
    if open.transport == hearth_proto::EgressTransport::Udp {
        // The guest carries no UDP but DNS, which it answers itself: this
        // is only for the audit.
        let reason = "UDP is not carried (only DNS, answered in the guest)".to_owned();
        let _ = down.send(refuse(reason.clone())).await;
        record.reason = Some(reason);
        audit(record);
        return;
    }
    let opened = match connector.open(&open.host, open.port).await {
        Ok(opened) => opened,
        Err(error) => {
            let reason = match &error {
                ConnectError::Refused(refusal) => refusal.to_string(),
                ConnectError::Unreachable(why) => why.clone(),
            };
            let _ = down.send(refuse(reason.clone())).await;
            record.reason = Some(reason);
            record.duration_ms = started.elapsed().as_millis() as u64;
            audit(record);
            return;
        }
    };
    record.addr = Some(opened.addr);
    record.rule = Some(opened.rule.to_string());
    let (mut from_dest, mut to_dest) = opened.stream.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(DOWN_CHUNKS);
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri(&format!("{}?id={}", routes::EGRESS_CONN, open.id)))
        .body(frame_body(rx, false))
        .expect("static request parts are valid");
    let response = match client.send(request).await {
        Ok(response) => check_status(response).await,
        Err(error) => Err(error),
    };
    let mut up_body = match response {
        Ok(response) => response.into_body(),
        Err(error) => {
            let reason = format!("the guest did not take the connection: {error}");
            let _ = down.send(refuse(reason.clone())).await;
            record.reason = Some(reason);
            record.duration_ms = started.elapsed().as_millis() as u64;
            audit(record);
            return;
        }
    };
    record.allowed = true;
    let down_bytes = async move {
        let mut total = 0u64;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match from_dest.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n as u64;
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        total
    };
    let up_bytes = async move {
        let mut total = 0u64;
        while let Some(Ok(frame)) = up_body.frame().await {
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if to_dest.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
        let _ = to_dest.shutdown().await;
        total
    };
    let (down_total, up_total) = tokio::join!(down_bytes, up_bytes);
    record.bytes_down = down_total;
    record.bytes_up = up_total;
    record.duration_ms = started.elapsed().as_millis() as u64;
    audit(record);
}
