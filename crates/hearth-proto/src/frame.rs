//! Length-prefixed frames carried inside the HTTP/2 request and response
//! bodies of an exec and of a tunnel.
//!
//! Layout: one byte of [`FrameKind`], a big-endian `u32` payload length, then
//! the payload. HTTP/2 DATA frames may split or merge these arbitrarily, so the
//! [`FrameDecoder`] reassembles them from any chunking of the byte stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::limits::MAX_FRAME_PAYLOAD;

/// Bytes before the payload: kind (1) + length (4).
pub const FRAME_HEADER_LEN: usize = 5;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Host → guest, first frame of an exec: a JSON [`crate::ExecRequest`].
    Request = 1,
    /// Host → guest: bytes for the process's stdin.
    Stdin = 2,
    /// Host → guest: the process's stdin is closed (empty payload).
    StdinEof = 3,
    /// Guest → host: the process started; JSON [`crate::ExecStarted`].
    Started = 4,
    /// Guest → host: bytes the process wrote to stdout.
    Stdout = 5,
    /// Guest → host: bytes the process wrote to stderr.
    Stderr = 6,
    /// Guest → host, last frame of an exec: JSON [`crate::ExitReport`].
    Exit = 7,
    /// Guest → host, last frame of an exec that failed before or while
    /// running: JSON [`crate::ErrorBody`].
    Error = 8,
    /// Host → guest, first frame of a tunnel: JSON [`crate::TunnelOpen`].
    TunnelOpen = 9,
    /// Guest → host, first frame of a tunnel: JSON [`crate::TunnelReady`].
    TunnelReady = 10,
    /// Guest → host: a local HTTP request's head, JSON
    /// [`crate::TunnelRequestHead`]; its body follows as `TunnelBody` frames.
    TunnelRequest = 11,
    /// Host → guest: the answer to a tunnelled request, JSON
    /// [`crate::TunnelResponseHead`]; its body follows as `TunnelBody` frames.
    TunnelResponse = 12,
    /// Either direction: a piece of a tunnelled message's body, see
    /// [`crate::tunnel::body_frame`].
    TunnelBody = 13,
    /// Host → guest, first frame of `POST /v1/egress`: JSON
    /// [`crate::EgressStart`].
    EgressStart = 14,
    /// Guest → host, first frame of an egress control stream: JSON
    /// [`crate::EgressReady`].
    EgressReady = 15,
    /// Guest → host: a program asked the proxy for a connection; JSON
    /// [`crate::EgressOpen`].
    EgressOpen = 16,
    /// Host → guest: that connection is refused (or failed); JSON
    /// [`crate::EgressRefused`].
    EgressRefused = 17,
}

impl FrameKind {
    /// The kind for a wire byte, if it names one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Request,
            2 => Self::Stdin,
            3 => Self::StdinEof,
            4 => Self::Started,
            5 => Self::Stdout,
            6 => Self::Stderr,
            7 => Self::Exit,
            8 => Self::Error,
            9 => Self::TunnelOpen,
            10 => Self::TunnelReady,
            11 => Self::TunnelRequest,
            12 => Self::TunnelResponse,
            13 => Self::TunnelBody,
            14 => Self::EgressStart,
            15 => Self::EgressReady,
            16 => Self::EgressOpen,
            17 => Self::EgressRefused,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload bytes (raw output or JSON, depending on `kind`).
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `kind` carrying `payload`.
    pub fn new(kind: FrameKind, payload: impl Into<Bytes>) -> Self {
        Self {
            kind,
            payload: payload.into(),
        }
    }

    /// A frame whose payload is `value` serialized as JSON.
    pub fn json<T: serde::Serialize>(kind: FrameKind, value: &T) -> Self {
        // Serializing our own plain structs cannot fail.
        let payload = serde_json::to_vec(value).expect("wire types serialize");
        Self::new(kind, payload)
    }

    /// Parse the payload as JSON.
    pub fn parse_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload).map_err(|source| FrameError::BadJson {
            kind: self.kind,
            message: source.to_string(),
        })
    }

    /// The frame's wire bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + self.payload.len());
        out.put_u8(self.kind as u8);
        out.put_u32(self.payload.len() as u32);
        out.extend_from_slice(&self.payload);
        out.freeze()
    }
}

/// Why a byte stream is not a valid sequence of frames. The stream that
/// produced it must be closed: there is no resynchronising after a bad frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The length prefix exceeds the payload limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Length the peer announced.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes pending)")]
    Truncated {
        /// Bytes of the incomplete frame received before the end.
        buffered: usize,
    },
    /// A JSON payload did not parse as the expected message.
    #[error("malformed {kind:?} frame: {message}")]
    BadJson {
        /// Kind of the offending frame.
        kind: FrameKind,
        /// What the JSON parser said.
        message: String,
    },
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
///
/// Memory is bounded by `max_payload` plus one pushed chunk: a length prefix
/// above the limit is rejected before any of its payload is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_PAYLOAD)
    }
}

impl FrameDecoder {
    /// A decoder that rejects payloads longer than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max_payload,
        }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind_byte = self.buffer[0];
        let kind = FrameKind::from_byte(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if self.buffer.len() < FRAME_HEADER_LEN + len {
            self.buffer
                .reserve(FRAME_HEADER_LEN + len - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(FRAME_HEADER_LEN);
        let payload = self.buffer.split_to(len).freeze();
        Ok(Some(Frame { kind, payload }))
    }

    /// Check that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buffer.len(),
            })
        }
    }
}

/// Decode every frame in `bytes`, for fuzzing and tests: the whole input must
/// be a valid frame sequence.
pub fn decode_all(bytes: &[u8], max_payload: usize) -> Result<Vec<Frame>, FrameError> {
    let mut decoder = FrameDecoder::new(max_payload);
    decoder.push(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    decoder.finish()?;
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = FrameKind> {
        (1u8..=13).prop_map(|b| FrameKind::from_byte(b).unwrap())
    }

    proptest! {
        #[test]
        fn frames_round_trip_under_any_chunking(
            frames in proptest::collection::vec(
                (kind_strategy(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            chunk in 1usize..64,
        ) {
            let frames: Vec<Frame> = frames.into_iter().map(|(k, p)| Frame::new(k, p)).collect();
            let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
            let mut decoder = FrameDecoder::new(1024);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(f) = decoder.next_frame().unwrap() {
                    out.push(f);
                }
            }
            decoder.finish().unwrap();
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_all(&bytes, 512);
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[5, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 16
            })
        );
    }

    #[test]
    fn unknown_kind_is_rejected() {
        assert_eq!(
            decode_all(&[0x42, 0, 0, 0, 0], 16),
            Err(FrameError::UnknownKind(0x42))
        );
    }

    #[test]
    fn truncated_stream_is_reported() {
        assert_eq!(
            decode_all(&[5, 0, 0, 0, 4, b'a'], 16),
            Err(FrameError::Truncated { buffered: 6 })
        );
    }
}
