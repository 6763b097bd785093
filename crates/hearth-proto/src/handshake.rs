//! The byte-level handshake that starts every connection on the channel.
//!
//! A virtio-serial port is one byte stream for the VM's whole life. When the
//! host end closes and a new host connects quickly, a (slow, emulated) guest
//! may not have noticed the close: it can read the new host's first bytes as
//! part of the old HTTP/2 connection, and both sides lose their place. So
//! before HTTP/2, the two sides agree on where the new connection starts:
//!
//! ```text
//! host  → \nHEARTH-SYNC <nonce>\n   (repeated every 100 ms until answered)
//! guest → \nHEARTH-READY <nonce>\n  (once per nonce)
//! host  → \nHEARTH-GO <nonce>\n     (HTTP/2 starts with the next byte)
//! ```
//!
//! Each side discards everything before the line it waits for (stale bytes of
//! the previous connection). The nonce is random per connection, so stale
//! bytes cannot complete a handshake. Lines are bounded: memory stays small
//! whatever the peer sends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest handshake line kept while scanning; longer lines are skipped.
pub const MAX_LINE: usize = 80;

/// How often the host repeats its SYNC line until it is answered.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// A handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Host: a new connection wants to start.
    Sync(String),
    /// Guest: ready for the connection with this nonce.
    Ready(String),
    /// Host: HTTP/2 starts right after this line.
    Go(String),
}

impl Line {
    /// The wire form. It starts with a newline too, so that stale bytes
    /// before it (which need not end in one) cannot run into it.
    pub fn encode(&self) -> Vec<u8> {
        let (word, nonce) = match self {
            Line::Sync(n) => ("SYNC", n),
            Line::Ready(n) => ("READY", n),
            Line::Go(n) => ("GO", n),
        };
        format!("\nHEARTH-{word} {nonce}\n").into_bytes()
    }

    /// Parse one line (without its newline); `None` for anything else.
    pub fn parse(line: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(line).ok()?;
        let rest = text.strip_prefix("HEARTH-")?;
        let (word, nonce) = rest.split_once(' ')?;
        if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        let nonce = nonce.to_string();
        match word {
            "SYNC" => Some(Line::Sync(nonce)),
            "READY" => Some(Line::Ready(nonce)),
            "GO" => Some(Line::Go(nonce)),
            _ => None,
        }
    }
}

/// Splits a byte stream into handshake lines, skipping overlong ones.
#[derive(Debug, Default)]
pub struct LineScanner {
    line: Vec<u8>,
    overlong: bool,
}

impl LineScanner {
    /// Feed one byte; returns a complete handshake line when one ends here.
    pub fn push(&mut self, byte: u8) -> Option<Line> {
        if byte == b'\n' {
            let line = (!self.overlong).then(|| Line::parse(&self.line)).flatten();
            self.line.clear();
            self.overlong = false;
            return line;
        }
        if self.line.len() >= MAX_LINE {
            self.overlong = true;
            self.line.clear();
        } else if !self.overlong {
            self.line.push(byte);
        }
        None
    }
}

/// A stream that first yields bytes already read past the handshake.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, preceded by `prefix`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "channel closed during the handshake",
    )
}

/// Host side: announce a new connection with `nonce` and wait for the guest
/// to answer. Returns the stream positioned where HTTP/2 starts.
pub async fn host<S>(mut stream: S, nonce: &str) -> io::Result<Rewind<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut scanner = LineScanner::default();
    let mut buf = [0u8; 4096];
    let mut ticker = tokio::time::interval(SYNC_INTERVAL);
    let sync = Line::Sync(nonce.to_string()).encode();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                stream.write_all(&sync).await?;
                stream.flush().await?;
            }
            read = stream.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Err(eof());
                }
                for (i, &byte) in buf[..n].iter().enumerate() {
                    if scanner.push(byte) == Some(Line::Ready(nonce.to_string())) {
                        stream.write_all(&Line::Go(nonce.to_string()).encode()).await?;
                        stream.flush().await?;
                        return Ok(Rewind::new(buf[i + 1..n].to_vec(), stream));
                    }
                }
            }
        }
    }
}

/// Guest side: wait for a host's SYNC, answer it, and wait for its GO.
/// Returns the stream positioned where HTTP/2 starts.
pub async fn guest<S>(mut stream: S) -> io::Result<Rewind<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut scanner = LineScanner::default();
    let mut answered: Option<String> = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(eof());
        }
        for (i, &byte) in buf[..n].iter().enumerate() {
            match scanner.push(byte) {
                // A new nonce is a new host (the previous one may have gone
                // mid-handshake): answer it, once.
                Some(Line::Sync(nonce)) if answered.as_deref() != Some(nonce.as_str()) => {
                    stream
                        .write_all(&Line::Ready(nonce.clone()).encode())
                        .await?;
                    stream.flush().await?;
                    answered = Some(nonce);
                }
                Some(Line::Go(nonce)) if answered.as_deref() == Some(nonce.as_str()) => {
                    return Ok(Rewind::new(buf[i + 1..n].to_vec(), stream));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lines_round_trip() {
        for line in [
            Line::Sync("ab12".into()),
            Line::Ready("x".into()),
            Line::Go("Z9".into()),
        ] {
            let wire = line.encode();
            assert_eq!(Line::parse(&wire[1..wire.len() - 1]), Some(line));
        }
        assert_eq!(Line::parse(b"HEARTH-SYNC "), None);
        assert_eq!(Line::parse(b"HEARTH-SYNC a b"), None);
        assert_eq!(Line::parse(b"HEARTH-NOPE a"), None);
    }

    proptest! {
        #[test]
        fn scanner_never_grows_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut scanner = LineScanner::default();
            for b in bytes {
                let _ = scanner.push(b);
                prop_assert!(scanner.line.len() <= MAX_LINE);
            }
        }
    }

    #[tokio::test]
    async fn handshake_skips_stale_bytes_on_both_sides() {
        let (host_end, guest_end) = tokio::io::duplex(1 << 16);
        let guest = tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(guest_end);
            // Stale output of a previous connection, then the handshake.
            // (no newline at the end: the real line must still be found)
            write
                .write_all(b"\x00\x00\x12stale h2 frames\nHEARTH-READY old\n\x00\x07")
                .await
                .unwrap();
            let joined = read_write(&mut read, &mut write).await;
            joined
        });
        let mut stream = host(host_end, "n1").await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let seen = guest.await.unwrap();
        assert_eq!(seen, b"PRI * HTTP/2.0");
    }

    /// The guest side of the test above, on split halves.
    async fn read_write(
        read: &mut tokio::io::ReadHalf<tokio::io::DuplexStream>,
        write: &mut tokio::io::WriteHalf<tokio::io::DuplexStream>,
    ) -> Vec<u8> {
        let joined = tokio::io::join(read, write);
        let mut stream = guest(joined).await.unwrap();
        let mut out = vec![0u8; 14];
        stream.read_exact(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn guest_answers_a_new_host_after_an_abandoned_handshake() {
        let (mut host_end, guest_end) = tokio::io::duplex(1 << 16);
        let guest_task = tokio::spawn(async move {
            let mut stream = guest(guest_end).await.unwrap();
            let mut out = [0u8; 2];
            stream.read_exact(&mut out).await.unwrap();
            out
        });
        // An old host synced and vanished; garbage; then a new host.
        host_end
            .write_all(b"HEARTH-SYNC old\n\xff\xfe garbage\n")
            .await
            .unwrap();
        let mut stream = host(host_end, "new").await.unwrap();
        stream.write_all(b"ok").await.unwrap();
        assert_eq!(&guest_task.await.unwrap(), b"ok");
    }
}
