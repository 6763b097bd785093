//! The host channel: the virtio-serial port named
//! [`hearth_proto::GUEST_PORT_NAME`], as an async byte stream, served one
//! HTTP/2 connection after another.
//!
//! The host end may close and reopen (server restart, snapshot restore).
//! While it is closed `poll` reports POLLHUP on the port; the agent waits for
//! that to clear and serves a fresh connection, keeping its processes.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::agent::Agent;
use crate::error::{GuestError, Result};
use crate::sys;

const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How often to check whether the host end is connected again.
const RECONNECT_POLL: Duration = Duration::from_millis(100);

/// Find the device of the port named `name`, waiting up to `timeout` for it
/// to appear (its driver may still be probing).
pub fn find_port(name: &str, timeout: Duration) -> Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = fs::read_dir(PORTS_DIR) {
            for entry in entries.flatten() {
                let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    let device = PathBuf::from("/dev").join(entry.file_name());
                    if device.exists() {
                        return Ok(device);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(GuestError::NotFound(format!(
                "no virtio-serial port named {name} under {PORTS_DIR} after {} s \
                 (is the virtserialport device configured?)",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Open a port device for non-blocking reads and writes.
pub fn open_port(path: &std::path::Path) -> Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| GuestError::io("open", path.display().to_string(), e))
}

/// A non-blocking character device (the port) as a Tokio byte stream.
#[derive(Debug)]
pub struct PortStream {
    fd: AsyncFd<OwnedFd>,
}

impl PortStream {
    /// Wrap a non-blocking fd. Registers it with the current runtime.
    #[allow(unsafe_code)]
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: an `OwnedFd` is a valid open descriptor that stays open and
        // returns the same number from `as_raw_fd` until the `AsyncFd`
        // (which owns it) is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }
}

impl AsyncRead for PortStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| sys::read(inner.get_ref().as_fd(), unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|inner| sys::write(inner.get_ref().as_fd(), buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serve the port forever: wait for the host, serve one HTTP/2 connection,
/// and start over when it ends.
pub async fn serve_port(agent: Agent, port: OwnedFd) {
    let mut first = true;
    loop {
        if sys::poll_hangup(port.as_fd()).unwrap_or(false) {
            crate::debug!("host end closed; waiting for it to reopen");
        }
        while sys::poll_hangup(port.as_fd()).unwrap_or(false) {
            tokio::time::sleep(RECONNECT_POLL).await;
        }
        let stream = match port.try_clone().and_then(PortStream::new) {
            Ok(stream) => stream,
            Err(e) => {
                crate::info!("cannot use port fd {}: {e}", port.as_raw_fd());
                tokio::time::sleep(RECONNECT_POLL).await;
                continue;
            }
        };
        // Agree with the host on where its connection starts, skipping any
        // stale bytes of the previous one (see hearth_proto::handshake).
        crate::debug!("waiting for the host's handshake");
        let stream = match hearth_proto::handshake::guest(stream).await {
            Ok(stream) => stream,
            Err(e) => {
                crate::debug!("handshake ended: {e}");
                tokio::time::sleep(RECONNECT_POLL).await;
                continue;
            }
        };
        if first {
            crate::debug!("host connected");
            first = false;
        } else {
            crate::debug!("host reconnected");
        }
        if let Err(e) = agent.serve_connection(stream).await {
            crate::debug!("connection ended: {e:?}");
        }
        // Give a flapping or confused peer no chance to make us spin.
        tokio::time::sleep(RECONNECT_POLL).await;
    }
}
