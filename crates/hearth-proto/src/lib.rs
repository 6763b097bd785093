//! Wire types shared by the Hearth host, the in-VM guest agent and clients.
//!
//! The host and the guest agent talk HTTP/2 over one byte stream per VM (a
//! virtio-serial port today). HTTP/2 gives multiplexing and flow control; this
//! crate defines what travels inside it: the routes, the JSON messages, and the
//! length-prefixed [`frame`]s that carry an exec's stdin, stdout and stderr
//! and the guest-local HTTP requests of a reverse [`tunnel`].
//!
//! The guest is untrusted. Every size the host accepts from it is bounded by a
//! constant in [`limits`], and every decoder here returns an error instead of
//! panicking or allocating without bound. See `VERSIONING.md` for how the
//! protocol may change.

pub mod exec_check;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod messages;
pub mod routes;
pub mod size;
pub mod tunnel;

pub use exec_check::{check_exec, InvalidExec};
pub use frame::{Frame, FrameDecoder, FrameError, FrameKind};
pub use messages::*;
pub use size::{ByteSize, ByteSizeError};
pub use tunnel::{TunnelAssembler, TunnelError, TunnelHead, TunnelMessage};

/// Version of the host↔guest protocol. Bumped on any incompatible change; the
/// host refuses a guest whose version differs (see `VERSIONING.md`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port the guest agent serves on.
pub const GUEST_PORT_NAME: &str = "hearth.0";
