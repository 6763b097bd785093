//! The reverse tunnel's framing: how HTTP messages made inside the guest
//! (requests) and on the host (responses) travel as [`Frame`]s of one
//! long-lived `POST /v1/tunnel` stream.
//!
//! A message is its head (`TunnelRequest` or `TunnelResponse`, JSON with an
//! `id` and a `body_len`) followed by `TunnelBody` frames whose payload is the
//! message id (8 bytes, big-endian) and at most [`STREAM_CHUNK`] bytes of
//! body, until `body_len` bytes have arrived (no body frames at all for an
//! empty body). Frames of different messages may interleave, so that one
//! large body does not hold up every other request.
//!
//! The [`TunnelAssembler`] turns such a frame sequence back into complete
//! messages, with bounded memory: a peer that announces too large a body,
//! sends body bytes nobody announced, repeats an id or opens too many
//! messages at once gets a [`TunnelError`], never a panic or an unbounded
//! buffer. After an error the tunnel must be closed.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{Frame, FrameError, FrameKind};
use crate::limits::STREAM_CHUNK;
use crate::messages::{TunnelRequestHead, TunnelResponseHead};

/// Bytes of message id at the start of every `TunnelBody` payload.
pub const BODY_ID_LEN: usize = 8;

/// Why a sequence of tunnel frames is invalid. The tunnel that produced it
/// must be closed: there is no resynchronising.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// A head's JSON did not parse.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame of a kind that has no place in this direction of a tunnel.
    #[error("unexpected {0:?} frame in a tunnel")]
    UnexpectedKind(FrameKind),
    /// A `TunnelBody` payload too short to hold its message id.
    #[error("TunnelBody frame of {0} bytes is shorter than its 8-byte message id")]
    ShortBody(usize),
    /// A `TunnelBody` chunk larger than [`STREAM_CHUNK`].
    #[error("TunnelBody chunk of {len} bytes for message {id} exceeds the {max}-byte chunk size")]
    ChunkTooLarge {
        /// Message id.
        id: u64,
        /// Bytes in the chunk.
        len: usize,
        /// Largest chunk accepted.
        max: usize,
    },
    /// A head announcing a body above the assembler's limit.
    #[error("message {id} announces a body of {len} bytes, above the {max}-byte limit")]
    BodyTooLarge {
        /// Message id.
        id: u64,
        /// Announced body length.
        len: u64,
        /// Largest body accepted.
        max: u64,
    },
    /// Body bytes for a message whose head did not come (or that is complete).
    #[error("body bytes for message {0}, which is not being assembled")]
    UnknownId(u64),
    /// More body bytes than the head announced.
    #[error("message {id} sent {received} body bytes but announced {announced}")]
    Overrun {
        /// Message id.
        id: u64,
        /// Announced body length.
        announced: u64,
        /// Bytes received, this chunk included.
        received: u64,
    },
    /// A head for an id whose body is still arriving.
    #[error("message {0} started again while its body was still arriving")]
    DuplicateId(u64),
    /// More messages in assembly at once than the assembler allows.
    #[error("more than {max} tunnel messages in assembly at once")]
    TooManyPending {
        /// Most messages in assembly at once.
        max: usize,
    },
}

/// The head of a tunnelled message: [`TunnelRequestHead`] (guest → host) or
/// [`TunnelResponseHead`] (host → guest).
pub trait TunnelHead: Serialize + DeserializeOwned {
    /// The frame kind that carries this head.
    const KIND: FrameKind;
    /// The message id.
    fn id(&self) -> u64;
    /// Length of the body that follows, in bytes.
    fn body_len(&self) -> u64;
}

impl TunnelHead for TunnelRequestHead {
    const KIND: FrameKind = FrameKind::TunnelRequest;
    fn id(&self) -> u64 {
        self.id
    }
    fn body_len(&self) -> u64 {
        self.body_len
    }
}

impl TunnelHead for TunnelResponseHead {
    const KIND: FrameKind = FrameKind::TunnelResponse;
    fn id(&self) -> u64 {
        self.id
    }
    fn body_len(&self) -> u64 {
        self.body_len
    }
}

/// One complete tunnelled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelMessage<H> {
    /// Its head.
    pub head: H,
    /// Its whole body (`head.body_len()` bytes).
    pub body: Bytes,
}

/// A `TunnelBody` frame carrying `chunk` of message `id`'s body. The chunk
/// must be at most [`STREAM_CHUNK`] bytes for the peer to accept it.
pub fn body_frame(id: u64, chunk: &[u8]) -> Frame {
    let mut payload = BytesMut::with_capacity(BODY_ID_LEN + chunk.len());
    payload.put_u64(id);
    payload.extend_from_slice(chunk);
    Frame::new(FrameKind::TunnelBody, payload.freeze())
}

/// Split a `TunnelBody` payload into its message id and body chunk.
pub fn decode_body(payload: &Bytes) -> Result<(u64, Bytes), TunnelError> {
    let Some(id_bytes) = payload.get(..BODY_ID_LEN) else {
        return Err(TunnelError::ShortBody(payload.len()));
    };
    let mut id = [0u8; BODY_ID_LEN];
    id.copy_from_slice(id_bytes);
    Ok((u64::from_be_bytes(id), payload.slice(BODY_ID_LEN..)))
}

/// The frames of one message: its head, then its body in chunks of at most
/// `chunk` bytes (clamped to 1..=[`STREAM_CHUNK`]). The head's `body_len`
/// must be `body.len()`. Lazy, so a large body is not copied all at once.
pub fn message_frames<'a, H: TunnelHead>(
    head: &H,
    body: &'a [u8],
    chunk: usize,
) -> impl Iterator<Item = Frame> + 'a {
    let id = head.id();
    let chunk = chunk.clamp(1, STREAM_CHUNK);
    std::iter::once(Frame::json(H::KIND, head))
        .chain(body.chunks(chunk).map(move |piece| body_frame(id, piece)))
}

/// The wire bytes of one message, in writes of at most about one
/// [`STREAM_CHUNK`] each: consecutive frames are packed together, so a
/// small message (a run endpoint call) is a single write. Each write is one
/// stream chunk and one wake-up of the peer's reader, where sending the
/// frames one by one cost two or more. Lazy, like [`message_frames`].
pub fn message_writes<'a, H: TunnelHead>(
    head: &H,
    body: &'a [u8],
) -> impl Iterator<Item = Bytes> + 'a {
    let limit = STREAM_CHUNK + BODY_ID_LEN + crate::frame::FRAME_HEADER_LEN;
    let mut frames = message_frames(head, body, STREAM_CHUNK).peekable();
    std::iter::from_fn(move || {
        let first = frames.next()?;
        let mut write = BytesMut::from(&first.encode()[..]);
        while let Some(frame) = frames
            .next_if(|f| write.len() + crate::frame::FRAME_HEADER_LEN + f.payload.len() <= limit)
        {
            write.extend_from_slice(&frame.encode());
        }
        Some(write.freeze())
    })
}

/// A message whose body is still arriving.
#[derive(Debug)]
struct Partial<H> {
    head: H,
    body: BytesMut,
}

/// Reassembles interleaved tunnel frames into complete messages of head
/// type `H`, bounded by a largest body and a most-messages-at-once.
///
/// Memory is at most about `max_pending * max_body`: a body is only buffered
/// as its bytes arrive, never reserved from an announced length alone.
#[derive(Debug)]
pub struct TunnelAssembler<H> {
    max_body: u64,
    max_pending: usize,
    pending: HashMap<u64, Partial<H>>,
}

impl<H: TunnelHead> TunnelAssembler<H> {
    /// An assembler refusing bodies over `max_body` bytes and more than
    /// `max_pending` messages in assembly at once.
    pub fn new(max_body: u64, max_pending: usize) -> Self {
        Self {
            max_body,
            max_pending,
            pending: HashMap::new(),
        }
    }

    /// Messages whose body is still arriving.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether message `id`'s body is still arriving.
    pub fn is_pending(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    /// Take one frame; returns the message it completed, if any.
    pub fn push(&mut self, frame: Frame) -> Result<Option<TunnelMessage<H>>, TunnelError> {
        if frame.kind == H::KIND {
            let head: H = frame.parse_json()?;
            return self.start(head);
        }
        if frame.kind != FrameKind::TunnelBody {
            return Err(TunnelError::UnexpectedKind(frame.kind));
        }
        let (id, chunk) = decode_body(&frame.payload)?;
        if chunk.len() > STREAM_CHUNK {
            return Err(TunnelError::ChunkTooLarge {
                id,
                len: chunk.len(),
                max: STREAM_CHUNK,
            });
        }
        let partial = self
            .pending
            .get_mut(&id)
            .ok_or(TunnelError::UnknownId(id))?;
        let announced = partial.head.body_len();
        let received = partial.body.len() as u64 + chunk.len() as u64;
        if received > announced {
            return Err(TunnelError::Overrun {
                id,
                announced,
                received,
            });
        }
        partial.body.extend_from_slice(&chunk);
        if received < announced {
            return Ok(None);
        }
        let Partial { head, body } = self.pending.remove(&id).ok_or(TunnelError::UnknownId(id))?;
        Ok(Some(TunnelMessage {
            head,
            body: body.freeze(),
        }))
    }

    fn start(&mut self, head: H) -> Result<Option<TunnelMessage<H>>, TunnelError> {
        let id = head.id();
        let len = head.body_len();
        if len > self.max_body {
            return Err(TunnelError::BodyTooLarge {
                id,
                len,
                max: self.max_body,
            });
        }
        if self.pending.contains_key(&id) {
            return Err(TunnelError::DuplicateId(id));
        }
        if len == 0 {
            return Ok(Some(TunnelMessage {
                head,
                body: Bytes::new(),
            }));
        }
        if self.pending.len() >= self.max_pending {
            return Err(TunnelError::TooManyPending {
                max: self.max_pending,
            });
        }
        // Reserve no more than one chunk up front: the length is only a claim.
        let body = BytesMut::with_capacity(len.min(STREAM_CHUNK as u64) as usize);
        self.pending.insert(id, Partial { head, body });
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_all, FrameDecoder};
    use proptest::prelude::*;

    fn request(id: u64, body_len: u64) -> TunnelRequestHead {
        TunnelRequestHead {
            id,
            method: "POST".into(),
            path: format!("/r/{id}?q=1"),
            content_type: Some("application/json".into()),
            body_len,
        }
    }

    fn assembler() -> TunnelAssembler<TunnelRequestHead> {
        TunnelAssembler::new(1000, 4)
    }

    #[test]
    fn body_payload_round_trips_and_short_payloads_are_refused() {
        let frame = body_frame(0x0102_0304_0506_0708, b"abc");
        assert_eq!(frame.kind, FrameKind::TunnelBody);
        assert_eq!(&frame.payload[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let (id, chunk) = decode_body(&frame.payload).unwrap();
        assert_eq!((id, &chunk[..]), (0x0102_0304_0506_0708, &b"abc"[..]));
        assert_eq!(
            decode_body(&Bytes::from_static(&[1, 2, 3])),
            Err(TunnelError::ShortBody(3))
        );
        let (id, chunk) = decode_body(&body_frame(9, b"").payload).unwrap();
        assert_eq!((id, chunk.len()), (9, 0));
    }

    #[test]
    fn an_empty_body_completes_with_its_head() {
        let mut a = assembler();
        let message = a.push(Frame::json(FrameKind::TunnelRequest, &request(1, 0)));
        assert_eq!(
            message.unwrap().unwrap(),
            TunnelMessage {
                head: request(1, 0),
                body: Bytes::new()
            }
        );
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn bodies_above_the_limit_are_refused_at_the_head() {
        let mut a = assembler();
        assert_eq!(
            a.push(Frame::json(FrameKind::TunnelRequest, &request(1, 1001))),
            Err(TunnelError::BodyTooLarge {
                id: 1,
                len: 1001,
                max: 1000
            })
        );
        let mut a = assembler();
        let huge = request(2, u64::MAX);
        assert!(matches!(
            a.push(Frame::json(FrameKind::TunnelRequest, &huge)),
            Err(TunnelError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn unknown_ids_overruns_duplicates_and_crowds_are_refused() {
        let mut a = assembler();
        assert_eq!(a.push(body_frame(5, b"x")), Err(TunnelError::UnknownId(5)));

        let mut a = assembler();
        a.push(Frame::json(FrameKind::TunnelRequest, &request(1, 3)))
            .unwrap();
        assert_eq!(
            a.push(body_frame(1, b"abcd")),
            Err(TunnelError::Overrun {
                id: 1,
                announced: 3,
                received: 4
            })
        );

        let mut a = assembler();
        a.push(Frame::json(FrameKind::TunnelRequest, &request(1, 3)))
            .unwrap();
        assert_eq!(
            a.push(Frame::json(FrameKind::TunnelRequest, &request(1, 3))),
            Err(TunnelError::DuplicateId(1))
        );

        let mut a = assembler();
        for id in 0..4 {
            a.push(Frame::json(FrameKind::TunnelRequest, &request(id, 3)))
                .unwrap();
        }
        assert_eq!(
            a.push(Frame::json(FrameKind::TunnelRequest, &request(9, 3))),
            Err(TunnelError::TooManyPending { max: 4 })
        );
    }

    #[test]
    fn a_completed_id_is_gone_and_may_not_send_more() {
        let mut a = assembler();
        a.push(Frame::json(FrameKind::TunnelRequest, &request(1, 2)))
            .unwrap();
        assert!(a.is_pending(1));
        let done = a.push(body_frame(1, b"hi")).unwrap().unwrap();
        assert_eq!(&done.body[..], b"hi");
        assert!(!a.is_pending(1));
        assert_eq!(a.push(body_frame(1, b"!")), Err(TunnelError::UnknownId(1)));
    }

    #[test]
    fn wrong_kinds_bad_json_and_large_chunks_are_refused() {
        let mut a = assembler();
        assert_eq!(
            a.push(Frame::new(FrameKind::Stdout, &b"x"[..])),
            Err(TunnelError::UnexpectedKind(FrameKind::Stdout))
        );
        // A response head where requests are expected.
        let response = TunnelResponseHead {
            id: 1,
            status: 200,
            content_type: None,
            body_len: 0,
        };
        assert_eq!(
            a.push(Frame::json(FrameKind::TunnelResponse, &response)),
            Err(TunnelError::UnexpectedKind(FrameKind::TunnelResponse))
        );
        assert!(matches!(
            a.push(Frame::new(FrameKind::TunnelRequest, &b"{nope"[..])),
            Err(TunnelError::Frame(FrameError::BadJson { .. }))
        ));
        let mut a = TunnelAssembler::<TunnelRequestHead>::new(u64::MAX, 4);
        a.push(Frame::json(FrameKind::TunnelRequest, &request(1, 1 << 20)))
            .unwrap();
        assert_eq!(
            a.push(body_frame(1, &vec![0; STREAM_CHUNK + 1])),
            Err(TunnelError::ChunkTooLarge {
                id: 1,
                len: STREAM_CHUNK + 1,
                max: STREAM_CHUNK
            })
        );
    }

    #[test]
    fn message_frames_split_the_body_in_chunks() {
        let head = request(7, 10);
        let frames: Vec<Frame> = message_frames(&head, b"0123456789", 4).collect();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].kind, FrameKind::TunnelRequest);
        let mut a = assembler();
        let mut done = None;
        for frame in frames {
            done = a.push(frame).unwrap();
        }
        assert_eq!(&done.unwrap().body[..], b"0123456789");
        // An empty body is the head alone.
        assert_eq!(message_frames(&request(8, 0), b"", 4).count(), 1);
    }

    #[test]
    fn a_small_message_is_one_write_and_a_large_one_a_few() {
        let head = request(3, 5);
        let writes: Vec<Bytes> = message_writes(&head, b"hello").collect();
        assert_eq!(writes.len(), 1);
        let mut decoder = crate::FrameDecoder::new(STREAM_CHUNK + BODY_ID_LEN);
        decoder.push(&writes[0]);
        let mut a = assembler();
        let mut done = None;
        while let Some(frame) = decoder.next_frame().unwrap() {
            done = a.push(frame).unwrap();
        }
        assert_eq!(&done.unwrap().body[..], b"hello");

        // Three chunks and a bit: no write is larger than one full body
        // frame, and there are no more writes than frames.
        let body = vec![7u8; 3 * STREAM_CHUNK + 10];
        let head = request(4, body.len() as u64);
        let writes: Vec<Bytes> = message_writes(&head, &body).collect();
        assert!(writes.len() <= 5, "{} writes", writes.len());
        let full_frame = crate::frame::FRAME_HEADER_LEN + BODY_ID_LEN + STREAM_CHUNK;
        assert!(writes.iter().all(|w| w.len() <= full_frame));
        let mut decoder = crate::FrameDecoder::new(STREAM_CHUNK + BODY_ID_LEN);
        let mut a = TunnelAssembler::<TunnelRequestHead>::new(1 << 20, 4);
        let mut done = None;
        for write in &writes {
            decoder.push(write);
            while let Some(frame) = decoder.next_frame().unwrap() {
                done = a.push(frame).unwrap();
            }
        }
        assert_eq!(done.unwrap().body, Bytes::from(body));
    }

    proptest! {
        /// Any chunking of the bodies, any interleaving of the messages and
        /// any split of the byte stream reassemble every message exactly.
        #[test]
        fn any_chunking_and_interleaving_reassembles_exactly(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
            chunk in 1usize..64,
            order in proptest::collection::vec(any::<u16>(), 0..400),
            split in 1usize..97,
        ) {
            let messages: Vec<TunnelMessage<TunnelRequestHead>> = bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| TunnelMessage {
                    head: request(i as u64 * 7919, body.len() as u64),
                    body: Bytes::from(body),
                })
                .collect();
            let mut queues: Vec<std::collections::VecDeque<Frame>> = messages
                .iter()
                .map(|m| message_frames(&m.head, &m.body, chunk).collect())
                .collect();
            // Interleave: `order` picks which message sends its next frame.
            let mut wire = Vec::new();
            let mut picks = order.into_iter();
            loop {
                let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
                if live.is_empty() {
                    break;
                }
                let pick = live[picks.next().unwrap_or(0) as usize % live.len()];
                wire.extend_from_slice(&queues[pick].pop_front().unwrap().encode());
            }
            let mut decoder = FrameDecoder::default();
            let mut assembler = TunnelAssembler::<TunnelRequestHead>::new(300, messages.len().max(1));
            let mut out = Vec::new();
            for piece in wire.chunks(split) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    if let Some(message) = assembler.push(frame).unwrap() {
                        out.push(message);
                    }
                }
            }
            decoder.finish().unwrap();
            prop_assert_eq!(assembler.pending(), 0);
            out.sort_by_key(|m| m.head.id);
            prop_assert_eq!(out, messages);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let frames = match decode_all(&bytes, 4096) {
                Ok(frames) => frames,
                Err(_) => return Ok(()),
            };
            let mut requests = TunnelAssembler::<TunnelRequestHead>::new(1 << 20, 8);
            let mut responses = TunnelAssembler::<TunnelResponseHead>::new(1 << 20, 8);
            for frame in frames {
                let _ = decode_body(&frame.payload);
                let _ = requests.push(frame.clone());
                let _ = responses.push(frame);
            }
        }

        #[test]
        fn arbitrary_frames_never_panic(
            frames in proptest::collection::vec((9u8..=13, proptest::collection::vec(any::<u8>(), 0..40)), 0..64),
        ) {
            let mut requests = TunnelAssembler::<TunnelRequestHead>::new(64, 4);
            for (kind, payload) in frames {
                let kind = FrameKind::from_byte(kind).unwrap();
                if requests.push(Frame::new(kind, payload)).is_err() {
                    break;
                }
                prop_assert!(requests.pending() <= 4);
            }
        }
    }
}
