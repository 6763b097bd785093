//! Size and time limits on everything that crosses the host↔guest channel.
//!
//! The host enforces these on bytes coming from the guest (which may be
//! hostile); the guest enforces them on bytes from the host (which may be
//! buggy). Both sides use the same numbers so a well-behaved peer never trips
//! them.

/// Largest payload of one [`crate::Frame`]. Output is sent in chunks of at most
/// [`STREAM_CHUNK`], so a larger frame means a misbehaving peer.
pub const MAX_FRAME_PAYLOAD: usize = 1024 * 1024;

/// Size of the chunks in which the guest streams output and file contents.
pub const STREAM_CHUNK: usize = 64 * 1024;

/// Largest JSON body (request or response) either side accepts.
pub const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

/// Largest HTTP/2 header list either side accepts.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Largest HTTP/2 frame either side accepts (the HTTP/2 maximum is 16 MiB).
pub const MAX_H2_FRAME: u32 = 256 * 1024;

/// Largest body of one tunnelled message, either way: the most a host may
/// set as [`crate::TunnelOpen::max_request_body`], and the most the guest
/// accepts in one response from the host.
pub const MAX_TUNNEL_BODY: u64 = 256 * 1024 * 1024;

/// Most requests one tunnel carries at once (sent to the host and not yet
/// answered). The guest answers more with `503`; the host treats more as a
/// protocol violation.
pub const MAX_TUNNEL_IN_FLIGHT: usize = 256;

/// Most arguments in one exec's argv.
pub const MAX_ARGV: usize = 4096;

/// Longest single argument or environment entry (`NAME=value`) of an
/// exec, counting its terminating NUL, as Linux does: `MAX_ARG_STRLEN`
/// (32 pages); `execve` refuses a longer one with `E2BIG`.
pub const MAX_ARG_BYTES: usize = 128 * 1024;

/// Most bytes that an exec's argv and env take together, counted as they
/// are encoded in the exec request (JSON). The request travels in one frame
/// of at most [`MAX_FRAME_PAYLOAD`]; the rest of the frame is headroom for
/// the other fields. Big inputs go on stdin or in a file.
pub const MAX_EXEC_ARGS_BYTES: usize = 768 * 1024;

/// Most environment variables in one exec.
pub const MAX_ENV: usize = 4096;

/// Longest path accepted by the files API, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Most entries returned by one directory listing.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Longest timeout of any kind (a sandbox's lifetime, its boot, one exec):
/// 30 days. The HTTP API accepts no more, the host library refuses more,
/// and the guest refuses a longer exec `timeout_ms`, so no deadline
/// arithmetic can overflow.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Most file operations (including streaming uploads and downloads) the
/// guest agent serves at once; more are answered `busy` (503). Bounded
/// separately from execs, so stuck file requests never stop commands.
pub const MAX_CONCURRENT_FILE_OPS: usize = 32;

/// Most commands the guest agent runs at once; more are answered `busy`.
pub const MAX_CONCURRENT_EXECS: usize = 256;

/// Most reverse tunnels open at once in one guest; more are answered `busy`.
pub const MAX_CONCURRENT_TUNNELS: usize = 16;

/// Most hello, usage and sync calls the guest agent serves at once; more
/// are answered `busy`. Kill and shutdown are never refused.
pub const MAX_CONCURRENT_CONTROL_CALLS: usize = 16;

/// Size at which a download stops (`too_large`) unless the host asks for
/// another limit (`PathQuery::max_bytes`). Files in `/proc` report size 0
/// and some never end (`/proc/kmsg`), so the size a file reports is not
/// enough.
pub const DEFAULT_DOWNLOAD_MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Largest `PathQuery::max_bytes` the guest honours; more is capped.
pub const MAX_DOWNLOAD_BYTES: u64 = 1024 * 1024 * 1024 * 1024;

/// Time after which a download stops (`timed_out`) unless the host asks
/// for another limit (`PathQuery::timeout_ms`).
pub const DEFAULT_DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Longest `PathQuery::timeout_ms` the guest honours; more is capped.
pub const MAX_DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Longest the guest waits for a stat, list, remove or mkdir before it
/// answers `timed_out`: a little below the host's 30 s control-call
/// timeout, so the host gets the guest's answer rather than its own.
pub const FILE_OP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// Longest an upload may go without receiving a byte before the guest
/// abandons it (`timed_out`, the old file left as it was).
pub const UPLOAD_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Egress connections a guest may have waiting for the host's verdict at
/// once; the proxy answers `503` past it.
pub const MAX_EGRESS_PENDING: usize = 64;

/// Longest destination host name in an `EgressOpen` (DNS's limit).
pub const MAX_EGRESS_HOST: usize = 253;
