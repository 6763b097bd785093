//! The transparent egress path: programs that ignore the proxy variables
//! still reach only what the host allows.
//!
//! When the host starts egress with `transparent: true`, the agent creates
//! a TUN device ([`crate::tun`]) holding the IPv4 default route and points
//! `/etc/resolv.conf` at a DNS stub ([`crate::dns`]). Every packet a program
//! sends off the VM's loopback comes to the agent, which sorts it here:
//!
//! - **UDP to port 53** (any address): answered by the DNS stub at once, in
//!   the read loop, with no queue. A names get fake addresses from
//!   198.18.0.0/15.
//! - **Other UDP**: dropped; an `EgressOpen` with `transport: udp` tells the
//!   host, which audits and refuses it. At most one per destination per
//!   [`UDP_AUDIT_INTERVAL`] and [`UDP_AUDITS_PER_SECOND`] in all, so a flood
//!   is not a flood of frames.
//! - **A TCP SYN**: held while the host decides, exactly like a connection
//!   through the proxy (`EgressOpen` with `via: transparent`, through
//!   [`Egress::ask`]). A fake destination is asked **by name** (the host
//!   resolves and checks the real name); any other address as itself (the
//!   host refuses private and metadata ranges unless the operator allowed
//!   them). Refused: the agent answers the SYN with a reset, so the
//!   program's `connect` fails at once with "connection refused". Allowed:
//!   the SYN goes on into the TCP stack, and the accepted stream is piped to
//!   the host's connection with the proxy's [`crate::egress::pipe`].
//!   Retransmitted SYNs while the host decides are dropped.
//! - **Other TCP segments**: to the TCP stack; one for no connection gets a
//!   reset from it.
//! - IPv6 and anything else: dropped (and IPv6 has no route, so programs
//!   fail at once with "network unreachable").
//!
//! ## Why `ipstack`
//!
//! `ipstack` turns a packet device into accepted `AsyncRead + AsyncWrite`
//! TCP streams for any destination, on tokio, in a few lines: exactly the
//! shape of the proxy's program side, so both paths share one pipe.
//! `smoltcp` is the more general stack, but it has no "accept a connection
//! to any address": the agent would have to create a listening socket per
//! SYN, drive the poll loop and its timers, and write the buffering between
//! its socket buffers and tokio itself, several hundred lines of glue. The
//! TCP in `ipstack` is bounded per connection (its send window, and the
//! program's kernel respects the window it advertises), and everything
//! unbounded in it sits behind this module's gate: only SYNs the host
//! allowed reach it ([`MAX_TRANSPARENT_CONNECTIONS`] at most, each holding
//! a permit until its pipe ends), and it never sees UDP.
//!
//! Bounds: [`MAX_EGRESS_PENDING`] SYNs waiting for the host (a reset past
//! it), the proxy's verdict timeout, [`MAX_TRANSPARENT_CONNECTIONS`] open
//! connections (a reset past it), [`IDLE_TIMEOUT`] of silence per
//! connection, a DNS pool of [`dns::DEFAULT_POOL_SIZE`] names.
//!
//! `exec` in `EgressOpen` names the exec whose program sent the SYN
//! ([`crate::owner`]), when it can be told within its time budget.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use hearth_proto::limits::MAX_EGRESS_PENDING;
use hearth_proto::{EgressTransport, EgressVia};
use hyper::body::Incoming;
use ipstack::{IpStack, IpStackConfig, IpStackStream, TcpConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::body::BodySender;
use crate::dns::{self, FakePool};
use crate::egress::{Egress, Verdict};
use crate::tun::{self, TunDevice};

/// Transparent TCP connections open at once (including those waiting for
/// the host).
pub const MAX_TRANSPARENT_CONNECTIONS: usize = 256;

/// A transparent connection silent this long in both directions is reset.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// At most one UDP audit per destination per this interval.
pub const UDP_AUDIT_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many UDP audits per second in all.
pub const UDP_AUDITS_PER_SECOND: u32 = 20;

/// Destinations remembered for [`UDP_AUDIT_INTERVAL`] (forgotten all at
/// once past it: the global cap still holds).
const UDP_AUDIT_MEMORY: usize = 1024;

/// How long an allowed connection's SYN may take to come out of the TCP
/// stack as a stream before the host's connection is dropped.
const ACCEPT_GRACE: Duration = Duration::from_secs(10);

/// Packets the gate sorts out in one read of the stack's before yielding.
const HANDLED_PER_READ: usize = 64;

/// The resolver configuration written when the path starts.
const RESOLV_CONF: &str = "/etc/resolv.conf";

type FourTuple = (SocketAddr, SocketAddr);

/// An allowed connection whose SYN is on its way through the TCP stack.
struct Accepted {
    serial: u64,
    from_host: Incoming,
    to_host: BodySender,
    permit: OwnedSemaphorePermit,
    /// Told when the program acknowledged the stack's SYN-ACK.
    established: oneshot::Receiver<()>,
}

/// State shared by the packet gate, the deciding tasks and the accept loop.
struct Shared {
    device: TunDevice,
    egress: Arc<Egress>,
    pool: Mutex<FakePool>,
    /// SYNs waiting for the host, by connection.
    deciding: Mutex<HashSet<FourTuple>>,
    /// Allowed connections not yet accepted from the stack.
    accepted: Mutex<HashMap<FourTuple, Accepted>>,
    /// Allowed connections whose handshake the program has not finished
    /// yet (no segment with an ACK seen from it): told when it does.
    handshaking: Mutex<HashMap<FourTuple, (u64, oneshot::Sender<()>)>>,
    /// Piped connections: told when the program sends a FIN or a reset.
    piped: Mutex<HashMap<FourTuple, Arc<Notify>>>,
    serial: AtomicU64,
    /// Allowed SYNs to hand to the stack.
    inject: mpsc::Sender<Vec<u8>>,
    connections: Arc<Semaphore>,
    udp_audits: Mutex<UdpAudits>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The transparent path, running until dropped (or until egress ends):
/// dropping it stops the stack and closes the device, which removes it and
/// its routes.
pub struct Transparent {
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Transparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transparent").finish_non_exhaustive()
    }
}

impl Drop for Transparent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Create the device, route and resolver configuration, and serve them for
/// `egress`.
pub fn start(egress: Arc<Egress>) -> io::Result<Transparent> {
    let fd = tun::create(tun::DEVICE)?;
    tun::configure(tun::DEVICE, tun::DEVICE_ADDRESS, tun::NETMASK, tun::MTU)?;
    tun::add_default_route(tun::DEVICE)?;
    if let Err(e) = std::fs::write(
        RESOLV_CONF,
        format!(
            "# Written by hearth-guest: the sandbox's DNS stub (names are resolved by the host).\nnameserver {}\noptions attempts:2 timeout:2\n",
            tun::DNS_ADDRESS
        ),
    ) {
        crate::info!("transparent egress: cannot write {RESOLV_CONF}: {e}");
    }
    let (inject, injected) = mpsc::channel(MAX_EGRESS_PENDING);
    let shared = Arc::new(Shared {
        device: TunDevice::new(fd)?,
        egress,
        pool: Mutex::new(FakePool::default()),
        deciding: Mutex::new(HashSet::new()),
        accepted: Mutex::new(HashMap::new()),
        handshaking: Mutex::new(HashMap::new()),
        piped: Mutex::new(HashMap::new()),
        serial: AtomicU64::new(1),
        inject,
        connections: Arc::new(Semaphore::new(MAX_TRANSPARENT_CONNECTIONS)),
        udp_audits: Mutex::new(UdpAudits::default()),
    });
    let mut config = IpStackConfig::default();
    config.mtu_unchecked(tun::MTU);
    let mut tcp = TcpConfig::default();
    tcp.timeout = IDLE_TIMEOUT;
    config.with_tcp_config(tcp);
    let stack = IpStack::new(
        config,
        Gate {
            shared: shared.clone(),
            injected,
        },
    );
    let task = tokio::spawn(accept(stack, shared));
    crate::debug!(
        "transparent egress on {} ({}), DNS stub at {}",
        tun::DEVICE,
        tun::DEVICE_ADDRESS,
        tun::DNS_ADDRESS
    );
    Ok(Transparent { task })
}

/// Pipe each stream the stack accepts to the host connection allowed for
/// it.
async fn accept(mut stack: IpStack, shared: Arc<Shared>) {
    while let Ok(stream) = stack.accept().await {
        let IpStackStream::Tcp(tcp) = stream else {
            continue;
        };
        let key = (tcp.local_addr(), tcp.peer_addr());
        let Some(accepted) = lock(&shared.accepted).remove(&key) else {
            // Not a SYN the gate let through: dropping the stream makes
            // the stack reset the program's next segment.
            tokio::spawn(async move { drop(tcp) });
            continue;
        };
        // Weak: a connection must not keep the device open after the path
        // ended (a new one could not create it again while it is).
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            // `ipstack` hands the stream out before its task has sent the
            // SYN-ACK (and moved its sequence number past the SYN): bytes
            // written before then go out with the wrong sequence numbers
            // and the program never sees them. Its ACK of the SYN-ACK
            // (which the gate sees) proves the SYN-ACK was sent.
            if tokio::time::timeout(ACCEPT_GRACE, accepted.established)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                let fin = Arc::new(Notify::new());
                if let Some(shared) = weak.upgrade() {
                    lock(&shared.piped).insert(key, fin.clone());
                }
                let program = crate::egress::ProgramSocket {
                    local: key.0,
                    remote: key.1,
                    fin,
                };
                crate::egress::pipe(tcp, accepted.from_host, accepted.to_host, Some(program)).await;
                if let Some(shared) = weak.upgrade() {
                    lock(&shared.piped).remove(&key);
                }
            }
            drop(accepted.permit);
        });
    }
}

/// The packet device the TCP stack reads and writes: the TUN device, with
/// everything but allowed TCP sorted out on the way in (see the module
/// doc).
struct Gate {
    shared: Arc<Shared>,
    injected: mpsc::Receiver<Vec<u8>>,
}

impl AsyncRead for Gate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Packets answered or dropped here in one call at most, so a flood
        // of them never keeps the stack from its other work.
        let mut handled = 0;
        loop {
            if handled >= HANDLED_PER_READ {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            handled += 1;
            if let Poll::Ready(Some(packet)) = self.injected.poll_recv(cx) {
                if packet.len() <= buf.remaining() {
                    buf.put_slice(&packet);
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let unfilled = buf.initialize_unfilled();
            let n = match self.shared.device.poll_recv(cx, unfilled) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if sort(&self.shared, &unfilled[..n]) == Sorted::ToStack {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.device.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Sorted {
    ToStack,
    Handled,
}

/// Sort one packet from the device (see the module doc).
fn sort(shared: &Arc<Shared>, packet: &[u8]) -> Sorted {
    let Ok(sliced) = SlicedPacket::from_ip(packet) else {
        return Sorted::Handled;
    };
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        return Sorted::Handled;
    };
    let source = ip.header().source_addr();
    let destination = ip.header().destination_addr();
    match &sliced.transport {
        Some(TransportSlice::Udp(udp)) => {
            let from = SocketAddrV4::new(source, udp.source_port());
            let to = SocketAddrV4::new(destination, udp.destination_port());
            if to.port() == 53 {
                let answer = dns::respond(udp.payload(), &mut lock(&shared.pool));
                if let Some(answer) = answer {
                    send_udp(shared, to, from, &answer);
                }
            } else if lock(&shared.udp_audits).admit(to, Instant::now()) {
                let host = host_for(shared, *to.ip()).unwrap_or_else(|| to.ip().to_string());
                shared.egress.notify(&host, to.port(), EgressTransport::Udp);
            }
            Sorted::Handled
        }
        Some(TransportSlice::Tcp(tcp)) if tcp.syn() && !tcp.ack() => {
            let from = SocketAddrV4::new(source, tcp.source_port());
            let to = SocketAddrV4::new(destination, tcp.destination_port());
            let key = (SocketAddr::V4(from), SocketAddr::V4(to));
            // `deciding` first: `decide` moves a key from it to `accepted`
            // and `handshaking` while holding it, so a retransmitted SYN
            // never falls between the two and starts a second decision.
            let mut deciding = lock(&shared.deciding);
            if lock(&shared.accepted).contains_key(&key)
                || lock(&shared.handshaking).contains_key(&key)
            {
                // A retransmission of an allowed SYN: the stack has (or
                // will have) its connection.
                return Sorted::ToStack;
            }
            if deciding.contains(&key) {
                // A retransmission while the host decides.
                return Sorted::Handled;
            }
            if deciding.len() >= MAX_EGRESS_PENDING {
                drop(deciding);
                reset(shared, from, to, tcp.sequence_number());
                return Sorted::Handled;
            }
            deciding.insert(key);
            drop(deciding);
            tokio::spawn(decide(
                shared.clone(),
                from,
                to,
                tcp.sequence_number(),
                packet.to_vec(),
            ));
            Sorted::Handled
        }
        Some(TransportSlice::Tcp(tcp)) => {
            if tcp.fin() || tcp.rst() {
                let key = (
                    SocketAddr::V4(SocketAddrV4::new(source, tcp.source_port())),
                    SocketAddr::V4(SocketAddrV4::new(destination, tcp.destination_port())),
                );
                if let Some(fin) = lock(&shared.piped).get(&key) {
                    fin.notify_one();
                }
            }
            if tcp.ack() {
                let mut handshaking = lock(&shared.handshaking);
                if !handshaking.is_empty() {
                    let key = (
                        SocketAddr::V4(SocketAddrV4::new(source, tcp.source_port())),
                        SocketAddr::V4(SocketAddrV4::new(destination, tcp.destination_port())),
                    );
                    if let Some((_, established)) = handshaking.remove(&key) {
                        let _ = established.send(());
                    }
                }
            }
            Sorted::ToStack
        }
        _ => Sorted::Handled,
    }
}

/// The name a fake address stands for, or `None` for any other address.
fn host_for(shared: &Shared, address: Ipv4Addr) -> Option<String> {
    dns::is_fake(address)
        .then(|| lock(&shared.pool).name_of(address).map(str::to_owned))
        .flatten()
}

/// Ask the host about one SYN; hand it to the stack when allowed, reset
/// the program's connection when not.
async fn decide(shared: Arc<Shared>, from: SocketAddrV4, to: SocketAddrV4, seq: u32, syn: Vec<u8>) {
    let key = (SocketAddr::V4(from), SocketAddr::V4(to));
    let verdict = match shared.connections.clone().try_acquire_owned() {
        Err(_) => Err(format!(
            "{MAX_TRANSPARENT_CONNECTIONS} transparent connections are already open"
        )),
        Ok(permit) => {
            let host = if dns::is_fake(*to.ip()) {
                host_for(&shared, *to.ip())
            } else {
                Some(to.ip().to_string())
            };
            match host {
                None => Err(format!(
                    "{} is no longer a name's address (its DNS answer expired)",
                    to.ip()
                )),
                Some(host) => match shared
                    .egress
                    .ask(
                        &host,
                        to.port(),
                        EgressVia::Transparent,
                        // The program's socket, in the guest kernel, goes
                        // from the SYN's source to its destination.
                        shared.egress.owner(key.0, key.1).await,
                    )
                    .await
                {
                    Verdict::Open { from_host, to_host } => Ok((host, from_host, to_host, permit)),
                    Verdict::Refused(reason) => Err(format!("{host}:{}: {reason}", to.port())),
                },
            }
        }
    };
    match verdict {
        Ok((host, from_host, to_host, permit)) => {
            let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
            let (established, established_rx) = oneshot::channel();
            {
                let mut deciding = lock(&shared.deciding);
                lock(&shared.accepted).insert(
                    key,
                    Accepted {
                        serial,
                        from_host,
                        to_host,
                        permit,
                        established: established_rx,
                    },
                );
                lock(&shared.handshaking).insert(key, (serial, established));
                deciding.remove(&key);
            }
            if shared.inject.try_send(syn).is_err() {
                lock(&shared.accepted).remove(&key);
                lock(&shared.handshaking).remove(&key);
                reset(&shared, from, to, seq);
                return;
            }
            crate::debug!("transparent egress: {from} -> {host}:{} allowed", to.port());
            // A SYN the stack never turned into a stream must not keep the
            // host's connection open. Weak while waiting, so that the wait
            // does not keep the device open after the path ended.
            let weak = Arc::downgrade(&shared);
            drop(shared);
            tokio::time::sleep(ACCEPT_GRACE).await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut accepted = lock(&shared.accepted);
            if accepted.get(&key).is_some_and(|a| a.serial == serial) {
                accepted.remove(&key);
            }
            drop(accepted);
            let mut handshaking = lock(&shared.handshaking);
            if handshaking.get(&key).is_some_and(|(s, _)| *s == serial) {
                handshaking.remove(&key);
            }
        }
        Err(reason) => {
            lock(&shared.deciding).remove(&key);
            crate::debug!("transparent egress: {from} -> {to} refused: {reason}");
            reset(&shared, from, to, seq);
        }
    }
}

/// Answer a SYN from `from` to `to` with a reset: "connection refused".
fn reset(shared: &Shared, from: SocketAddrV4, to: SocketAddrV4, seq: u32) {
    let builder = PacketBuilder::ipv4(to.ip().octets(), from.ip().octets(), 64)
        .tcp(to.port(), from.port(), 0, 0)
        .rst()
        .ack(seq.wrapping_add(1));
    let mut packet = Vec::with_capacity(builder.size(0));
    if builder.write(&mut packet, &[]).is_ok() {
        let _ = shared.device.send_now(&packet);
    }
}

/// Send a UDP datagram to the program at `to`, from `from`.
fn send_udp(shared: &Shared, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
    let builder =
        PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), 64).udp(from.port(), to.port());
    let mut packet = Vec::with_capacity(builder.size(payload.len()));
    if builder.write(&mut packet, payload).is_ok() {
        let _ = shared.device.send_now(&packet);
    }
}

/// Which UDP datagrams get an audit frame: at most one per destination per
/// [`UDP_AUDIT_INTERVAL`], [`UDP_AUDITS_PER_SECOND`] in all.
#[derive(Debug, Default)]
pub struct UdpAudits {
    last: HashMap<SocketAddrV4, Instant>,
    second: Option<Instant>,
    in_second: u32,
}

impl UdpAudits {
    /// Whether a datagram to `to` at `now` is audited.
    pub fn admit(&mut self, to: SocketAddrV4, now: Instant) -> bool {
        if self
            .second
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.in_second = 0;
        }
        if self.in_second >= UDP_AUDITS_PER_SECOND {
            return false;
        }
        if let Some(last) = self.last.get(&to) {
            if now.duration_since(*last) < UDP_AUDIT_INTERVAL {
                return false;
            }
        }
        if self.last.len() >= UDP_AUDIT_MEMORY {
            self.last
                .retain(|_, last| now.duration_since(*last) < UDP_AUDIT_INTERVAL);
        }
        if self.last.len() >= UDP_AUDIT_MEMORY {
            return false;
        }
        self.last.insert(to, now);
        self.in_second += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_audits_are_one_per_destination_per_interval_and_capped_in_all() {
        let mut audits = UdpAudits::default();
        let start = Instant::now();
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 9);
        assert!(audits.admit(a, start));
        assert!(!audits.admit(a, start + Duration::from_millis(500)));
        assert!(audits.admit(a, start + Duration::from_millis(1000)));
        // A flood to many destinations within one second: the global cap.
        let later = start + Duration::from_secs(5);
        let admitted = (0..1000u16)
            .filter(|port| {
                audits.admit(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), *port), later)
            })
            .count();
        assert_eq!(admitted, UDP_AUDITS_PER_SECOND as usize);
        assert!(audits.last.len() <= UDP_AUDIT_MEMORY);
        // The next second admits again.
        assert!(audits.admit(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 1),
            later + Duration::from_secs(1)
        ));
    }
}
