//! JSON messages of the host↔guest protocol.
//!
//! Every struct here is part of the wire format: renaming a field or changing
//! its meaning is a protocol change (see `VERSIONING.md`). New optional fields
//! use `#[serde(default)]` so older peers keep working.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Host → guest, first call on every (re)connection: who the host is, what the
/// time is, and the limits the guest must apply to workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The host's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Host wall-clock time in milliseconds since the Unix epoch; the guest
    /// sets its clock from it (a TCG guest has no reliable clock of its own).
    pub unix_time_ms: u64,
    /// Hostname to give the guest.
    pub hostname: String,
    /// Most processes the workload may have at once (fork-bomb guard).
    pub pids_max: u32,
    /// Memory, in MiB, kept back from the workload for the guest agent and
    /// kernel: the workload's cgroup limit is total memory minus this.
    pub agent_reserve_mib: u32,
    /// Give execs full root: no mount namespace of their own, every
    /// capability, `/sys` and the cgroup tree writable. Off by default (and
    /// for hosts older than this field), so execs cannot reach the agent or
    /// its cgroups.
    #[serde(default)]
    pub privileged: bool,
}

/// Guest → host, answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// The guest's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Version of the `hearth-guest` binary.
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Online vCPUs.
    pub vcpus: u32,
    /// `MemTotal` of the guest, bytes.
    pub mem_total_bytes: u64,
    /// Memory limit applied to the workload cgroup, bytes.
    pub workload_memory_limit_bytes: u64,
    /// Size of the writable layer's filesystem, bytes.
    pub disk_total_bytes: u64,
    /// Milliseconds from kernel start to the agent serving its first request.
    pub boot_ms: u64,
    /// Whether execs run confined (own mount namespace with `/sys` and the
    /// cgroup tree read-only, capabilities such as `CAP_SYS_ADMIN` and
    /// `CAP_SYS_PTRACE` dropped). False for a privileged sandbox, an agent
    /// in host mode, and guests older than this field.
    #[serde(default)]
    pub workload_isolation: bool,
}

/// Host → guest: run a command. Sent as the first frame of `POST /v1/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Host-chosen identifier, unique within the sandbox, used to kill it.
    pub id: String,
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Environment added to (and overriding) the guest's default environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the guest's default (`/root`) when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command (its whole process tree) after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether the host will send stdin frames. When false the process reads
    /// from `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
}

/// Guest → host: the command started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    /// Guest PID of the command's main process.
    pub pid: u32,
}

/// Why a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The process exited on its own; see `code`.
    Exited,
    /// The process was ended by a signal it did not get from Hearth.
    Signaled,
    /// The guest's out-of-memory killer ended a process of this command.
    OomKilled,
    /// The command ran past its timeout and was killed.
    TimedOut,
    /// The command was killed on request.
    Killed,
    /// The program could not be started (not found, not executable, bad cwd).
    SpawnFailed,
}

/// Guest → host: how a command ended. Last frame of an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// Why it ended.
    pub reason: ExitReason,
    /// Exit code, shell-style: the process's code, `128 + signal` when killed
    /// by a signal, 127 when not found, 126 when not executable.
    pub code: i32,
    /// The terminating signal, if a signal ended it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// A human-readable explanation when the end was not a plain exit.
    #[serde(default)]
    pub message: Option<String>,
    /// Wall time from spawn to exit, milliseconds.
    pub duration_ms: u64,
    /// Bytes of stdout sent.
    pub stdout_bytes: u64,
    /// Bytes of stderr sent.
    pub stderr_bytes: u64,
}

/// Host → guest: `POST /v1/exec/kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    /// The [`ExecRequest::id`] to kill.
    pub id: String,
}

/// Query of the file routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathQuery {
    /// Absolute path inside the guest.
    pub path: String,
    /// For writes: file mode (octal digits as a number, e.g. 420 = 0o644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// For writes and mkdir: create missing parent directories.
    #[serde(default)]
    pub parents: bool,
    /// For removes: remove directories and their contents.
    #[serde(default)]
    pub recursive: bool,
    /// For reads: stop the download with `too_large` past this many bytes.
    /// Default [`crate::limits::DEFAULT_DOWNLOAD_MAX_BYTES`], capped at
    /// [`crate::limits::MAX_DOWNLOAD_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// For reads: stop the download with `timed_out` after this many
    /// milliseconds. Default [`crate::limits::DEFAULT_DOWNLOAD_TIMEOUT`],
    /// capped at [`crate::limits::MAX_DOWNLOAD_TIMEOUT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Kind of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (device, socket, fifo).
    Other,
}

/// Metadata of one filesystem entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Entry name (last path component); the full path for `stat`.
    pub name: String,
    /// Kind of entry.
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// Guest → host: result of a file write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// Bytes written.
    pub bytes: u64,
}

/// Guest → host: resource usage, for `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time used by workloads (the workload cgroup), microseconds.
    pub workload_cpu_usec: u64,
    /// CPU time used by the whole guest (all CPUs, non-idle), microseconds.
    pub guest_cpu_usec: u64,
    /// Memory charged to workloads now, bytes.
    pub workload_memory_bytes: u64,
    /// Highest memory charged to workloads, bytes.
    pub workload_memory_peak_bytes: u64,
    /// Workload memory limit, bytes.
    pub workload_memory_limit_bytes: u64,
    /// Guest `MemTotal`, bytes.
    pub mem_total_bytes: u64,
    /// Guest `MemAvailable`, bytes.
    pub mem_available_bytes: u64,
    /// Bytes used on the writable layer.
    pub disk_used_bytes: u64,
    /// Size of the writable layer, bytes.
    pub disk_total_bytes: u64,
    /// Processes in the workload cgroup now.
    pub pids: u64,
    /// Out-of-memory kills in the workload so far.
    pub oom_kills: u64,
}

/// Host → guest, first frame of `POST /v1/tunnel`: open a reverse tunnel
/// that carries HTTP/1.1 requests made inside the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelOpen {
    /// Loopback socket address the guest listens on (`127.0.0.1:0` picks a
    /// free port). Anything but a loopback address is refused: the tunnel
    /// must be reachable from inside the VM only.
    pub listen: String,
    /// Largest local request body the guest forwards; a larger one is
    /// answered `413` inside the guest and never reaches the host.
    pub max_request_body: u64,
}

/// Guest → host, first frame of a tunnel's response body: it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelReady {
    /// The address actually bound (with the port the kernel chose for 0).
    pub address: String,
}

/// Host → guest, first frame of `POST /v1/egress`: serve the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressStart {
    /// Loopback address the proxy listens on (`127.0.0.1:3128` in a VM;
    /// `127.0.0.1:0` picks a free port). Anything but loopback is refused.
    pub listen: String,
    /// Also route programs that ignore the proxy variables: the agent
    /// serves a network device and a DNS stub, and asks the host for each
    /// connection the same way (`EgressOpen` with `via: transparent`).
    #[serde(default)]
    pub transparent: bool,
}

/// Guest → host, first frame of the egress control stream: the proxy
/// listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressReady {
    /// The address bound.
    pub address: String,
    /// Whether the transparent path is up (asked for with
    /// [`EgressStart::transparent`], and the guest could create its network
    /// device). Without it, programs that ignore the proxy variables reach
    /// nothing.
    #[serde(default)]
    pub transparent: bool,
}

/// Guest → host: a program asked for a connection to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressOpen {
    /// Guest-chosen id, unique within the control stream.
    pub id: u64,
    /// The destination as the program named it (a name or an address).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// How the program reached the agent.
    #[serde(default, skip_serializing_if = "EgressVia::is_proxy")]
    pub via: EgressVia,
    /// `udp` for a datagram the transparent path does not carry: the host
    /// only audits and refuses it.
    #[serde(default, skip_serializing_if = "EgressTransport::is_tcp")]
    pub transport: EgressTransport,
    /// The exec whose process opened the connection, where the agent could
    /// tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
}

/// How a program's connection reached the guest agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressVia {
    /// Through the HTTP proxy (`CONNECT` or an absolute-form request).
    #[default]
    Proxy,
    /// Through the guest's network device, without the proxy.
    Transparent,
}

impl EgressVia {
    /// Whether this is the default, [`EgressVia::Proxy`].
    pub fn is_proxy(&self) -> bool {
        *self == Self::Proxy
    }
}

/// The transport a program asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressTransport {
    /// A TCP stream.
    #[default]
    Tcp,
    /// A UDP datagram (other than DNS, which the agent answers itself).
    Udp,
}

impl EgressTransport {
    /// Whether this is the default, [`EgressTransport::Tcp`].
    pub fn is_tcp(&self) -> bool {
        *self == Self::Tcp
    }
}

/// Host → guest: the connection `id` is not opened, and why (shown to the
/// program in the proxy's `403` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRefused {
    /// The [`EgressOpen::id`] refused.
    pub id: u64,
    /// Why: the policy's refusal, or why the destination was unreachable.
    pub reason: String,
}

/// Guest → host: the head of one local HTTP request. Its body follows as
/// `TunnelBody` frames carrying `id`, `body_len` bytes in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRequestHead {
    /// Guest-chosen id, unique within the tunnel; the response carries it.
    pub id: u64,
    /// HTTP method (`GET`, `POST`, ...).
    pub method: String,
    /// Path and query as the local client sent them.
    pub path: String,
    /// The request's `Content-Type`, if any.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Length of the body in bytes.
    pub body_len: u64,
}

/// Host → guest: the answer to the request with the same `id`. Its body
/// follows as `TunnelBody` frames, `body_len` bytes in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelResponseHead {
    /// The [`TunnelRequestHead::id`] answered.
    pub id: u64,
    /// HTTP status for the local client.
    pub status: u16,
    /// The response's `Content-Type`, if any.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Length of the body in bytes.
    pub body_len: u64,
}

/// Machine-readable class of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid.
    InvalidArgument,
    /// The path or exec id does not exist.
    NotFound,
    /// The path exists and the operation needs it not to.
    AlreadyExists,
    /// A file operation on a directory (or vice versa).
    IsADirectory,
    /// A directory operation on a non-directory.
    NotADirectory,
    /// A directory that must be empty is not.
    NotEmpty,
    /// Permission denied.
    PermissionDenied,
    /// The writable layer is full.
    NoSpace,
    /// A limit in [`crate::limits`] was exceeded.
    TooLarge,
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// Any other failure.
    Internal,
    /// The agent already serves as many requests of this kind as it allows
    /// at once (see [`crate::limits::MAX_CONCURRENT_FILE_OPS`] and its
    /// siblings); retry later. Answered with HTTP 503. A host that predates
    /// this code reads the 503 as `internal`.
    Busy,
    /// The operation ran past its time limit (a download's `timeout_ms`,
    /// [`crate::limits::FILE_OP_TIMEOUT`], an upload that stalled) and was
    /// stopped. Answered with HTTP 504.
    TimedOut,
}

/// Body of every error response (and of an exec's [`crate::FrameKind::Error`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Class of error.
    pub code: ErrorCode,
    /// What went wrong, for a human.
    pub message: String,
}

impl ErrorBody {
    /// An error of `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
