//! HTTP/2 routes the guest agent serves.
//!
//! | route | request | response |
//! |---|---|---|
//! | `POST /v1/hello` | JSON [`crate::Hello`] | JSON [`crate::GuestInfo`] |
//! | `POST /v1/exec` | frames: `Request`, then `Stdin`*/`StdinEof` | frames: `Started`, `Stdout`/`Stderr`*, then `Exit` or `Error` |
//! | `POST /v1/exec/kill` | JSON [`crate::KillRequest`] | 204 |
//! | `PUT /v1/files?path=` | raw bytes | JSON [`crate::WriteResult`] |
//! | `GET /v1/files?path=` | – | raw bytes |
//! | `GET /v1/files/stat?path=` | – | JSON [`crate::FileStat`] |
//! | `GET /v1/files/list?path=` | – | JSON `Vec<FileStat>` |
//! | `DELETE /v1/files?path=&recursive=` | – | 204 |
//! | `POST /v1/files/mkdir?path=&parents=` | – | 204 |
//! | `GET /v1/usage` | – | JSON [`crate::Usage`] |
//! | `POST /v1/sync` | – | 204 once every filesystem's writes reached its disk |
//! | `POST /v1/shutdown` | – | 204, then the guest powers off |
//! | `POST /v1/tunnel` | frames: `TunnelOpen`, then `TunnelResponse`/`TunnelBody`* | frames: `TunnelReady`, then `TunnelRequest`/`TunnelBody`* (400 if `listen` is refused) |
//!
//! Query strings are `application/x-www-form-urlencoded` encodings of
//! [`crate::PathQuery`]. Errors are a non-2xx status with a JSON
//! [`crate::ErrorBody`].
//!
//! A download that fails after its 200 (past `max_bytes` or `timeout_ms`,
//! a read error) cannot change its status. When the request carries
//! `te: trailers` it ends with trailers [`ERROR_CODE_HEADER`] and
//! [`ERROR_MESSAGE_TRAILER`] instead of a clean end; without, the stream is
//! reset (what an older guest always does), so a failed download is never
//! mistaken for a complete one.

/// `POST`: handshake.
pub const HELLO: &str = "/v1/hello";
/// `POST`: run a command (framed bodies).
pub const EXEC: &str = "/v1/exec";
/// `POST`: kill a running command.
pub const EXEC_KILL: &str = "/v1/exec/kill";
/// `PUT` write, `GET` read, `DELETE` remove.
pub const FILES: &str = "/v1/files";
/// `GET`: metadata of one path.
pub const FILES_STAT: &str = "/v1/files/stat";
/// `GET`: directory listing.
pub const FILES_LIST: &str = "/v1/files/list";
/// `POST`: create a directory.
pub const FILES_MKDIR: &str = "/v1/files/mkdir";
/// `GET`: resource usage.
pub const USAGE: &str = "/v1/usage";
/// `POST`: flush every filesystem to its disk (before a checkpoint of the
/// writable layer).
pub const SYNC: &str = "/v1/sync";
/// `POST`: power the guest off.
pub const SHUTDOWN: &str = "/v1/shutdown";
/// `POST`: open a reverse tunnel: the guest listens for HTTP/1.1 on a
/// loopback address and pushes each request to the host (framed bodies, see
/// [`crate::tunnel`]).
pub const TUNNEL: &str = "/v1/tunnel";

/// `POST`: the egress control stream. The host opens it when a sandbox may
/// reach the network; the guest serves an HTTP proxy on a loopback address
/// and sends each connection a program asks for up the response body as an
/// `EgressOpen` frame; the host answers a refusal down the request body
/// (`EgressRefused`), or opens [`EGRESS_CONN`] for it. Closing the stream
/// closes the proxy. See `docs/egress-protocol.md`.
pub const EGRESS: &str = "/v1/egress";

/// `POST ?id=N`: one allowed egress connection. The request body carries
/// the bytes from the destination to the program, the response body the
/// bytes from the program to the destination, raw (no frames): HTTP/2
/// gives each connection its own flow control.
pub const EGRESS_CONN: &str = "/v1/egress/conn";

/// Header carrying the HTTP status's [`crate::ErrorCode`] redundantly, so a
/// client can classify an error without parsing the body.
pub const ERROR_CODE_HEADER: &str = "hearth-error-code";

/// Trailer carrying the message of an error that ended a download after
/// its head (with [`ERROR_CODE_HEADER`] as the code).
pub const ERROR_MESSAGE_TRAILER: &str = "hearth-error-message";
