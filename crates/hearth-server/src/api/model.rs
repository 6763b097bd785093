//! Request and response bodies of the REST API, with their OpenAPI
//! schemas.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use hearth_proto::{ByteSize, ExitReport, FileStat, FileType};
use hearth_sandbox::options::parse_duration;
use hearth_store::{Event, NodeCapacity, NodeLoad, NodeRecord, NodeState, SandboxRecord};

use crate::error::ApiError;

/// A size: bytes as a number, or text like `"512M"` or `"2G"`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SizeInput {
    /// Bytes.
    Bytes(u64),
    /// Number and binary unit: `512M`, `1G`, `256MiB`.
    Text(String),
}

impl SizeInput {
    /// The size, or a 400 naming `field`.
    pub fn parse(&self, field: &str) -> Result<ByteSize, ApiError> {
        match self {
            Self::Bytes(n) => Ok(ByteSize(*n)),
            Self::Text(text) => text
                .parse::<ByteSize>()
                .map_err(|e| ApiError::invalid(field, format!("{field}: {e}"))),
        }
    }
}

/// A duration: seconds as a number, or text like `"90s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DurationInput {
    /// Seconds (fractions allowed).
    Seconds(f64),
    /// Number and unit: `500ms`, `30s`, `5m`, `1h`.
    Text(String),
}

/// Longest timeout accepted anywhere: 30 days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

impl DurationInput {
    /// The duration (positive, at most 30 days), or a 400 naming `field`.
    pub fn parse(&self, field: &str) -> Result<Duration, ApiError> {
        let duration = match self {
            Self::Seconds(s) if !s.is_finite() || *s <= 0.0 => {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} must be a positive number of seconds, got {s}"),
                ))
            }
            Self::Seconds(s) if *s > MAX_TIMEOUT.as_secs_f64() => {
                MAX_TIMEOUT + Duration::from_secs(1)
            }
            Self::Seconds(s) => Duration::from_secs_f64(*s),
            Self::Text(text) => parse_duration(text)
                .map_err(|e| ApiError::invalid(field, format!("{field}: {e}")))?,
        };
        if duration.is_zero() {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be positive"),
            ));
        }
        if duration > MAX_TIMEOUT {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be at most 30 days"),
            ));
        }
        Ok(duration)
    }
}

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Guest image name (default `default`).
    #[serde(default)]
    pub image: Option<String>,
    /// Virtual CPUs (default 1).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Guest memory (default 512M).
    #[serde(default)]
    pub memory: Option<SizeInput>,
    /// Writable disk layer (default 1G).
    #[serde(default)]
    pub disk: Option<SizeInput>,
    /// Lifetime from when it is running (default 10 minutes); extend it
    /// with `POST /v1/sandboxes/{id}/timeout`.
    #[serde(default)]
    pub timeout: Option<DurationInput>,
    /// Environment for every exec in the sandbox (an exec's own wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Labels to find the sandbox by (`GET /v1/sandboxes?label=k=v`).
    #[serde(default, alias = "metadata")]
    pub labels: BTreeMap<String, String>,
    /// Run it on this node (see `GET /v1/nodes`); by default on the live
    /// node with the most free memory.
    #[serde(default)]
    pub node: Option<String>,
    /// Give execs full root in the guest (default false): no mount
    /// namespace of their own, no capabilities dropped, `/sys` and the
    /// cgroup tree writable, so they can also reach the guest agent.
    /// Recorded in the `sandbox.creating` event. Without it execs run as
    /// root but cannot touch the agent or its cgroups.
    // Not sent when false, so forwarding a create to a node that predates
    // the field works unless it was asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// What its programs may reach on the network (default: nothing).
    /// Recorded in the `sandbox.creating` event; every connection attempt
    /// is a `net.connection` event.
    // Not sent when absent, so forwarding a create without a network to a
    // node that predates the field works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRequest>,
}

/// A sandbox's network: `none` (the default), `allowlist` with entries, or
/// `open`. Loopback, private, link-local and metadata addresses stay
/// refused in every mode unless the operator opened the range.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// `none`, `allowlist` or `open`.
    pub mode: String,
    /// For `allowlist`: host names (`pypi.org`), wildcards
    /// (`*.pythonhosted.org`) and CIDRs (`203.0.113.0/24`), each with an
    /// optional `:PORT`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Most bytes per second, both ways and all connections together
    /// (`"1M"` or a number); default: the server's (none unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<SizeInput>,
    /// Most bytes over the sandbox's life; past it the connection that
    /// crossed it ends and new ones are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<SizeInput>,
    /// Most connections open at once (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// The limits a sandbox was given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimitsView {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Writable disk layer, bytes.
    pub disk_bytes: u64,
    /// Lifetime last set, milliseconds; null for none.
    pub timeout_ms: Option<u64>,
}

/// A sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxView {
    /// Sandbox id.
    pub id: String,
    /// `creating`, `running`, `stopping`, `stopped`, `failed`,
    /// `timed_out` or `lost`.
    pub state: String,
    /// Guest image.
    pub image: String,
    /// `kvm` or `tcg`, once booted.
    pub accelerator: Option<String>,
    /// Limits.
    pub limits: LimitsView,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Boot time, ms.
    pub boot_ms: Option<u64>,
    /// When a running sandbox will time out, ms since the epoch.
    pub expires_ms: Option<u64>,
    /// The node that runs (or ran) it.
    pub node_id: String,
    /// When it ended, ms since the epoch.
    pub ended_ms: Option<u64>,
    /// Why it ended: `destroyed`, `exited`, `timed_out`, `out_of_memory`,
    /// `guest_kernel_panic`, `guest_agent_crashed`, `guest_channel_lost`,
    /// `vm_crashed`, `boot_failed`, `host_shutdown`, `lost`.
    pub end_reason: Option<String>,
    /// How it ended, for a human. Text the guest printed on its console is
    /// quoted after `guest reported:` (bounded): it is the guest's claim,
    /// not the host's finding.
    pub end_message: Option<String>,
}

impl SandboxView {
    /// The view of a stored record.
    pub fn from_record(record: SandboxRecord) -> Self {
        Self {
            expires_ms: if record.state.is_final() {
                None
            } else {
                record.expires_ms
            },
            node_id: record.node_id,
            id: record.id,
            state: record.state.as_str().to_string(),
            image: record.image,
            accelerator: record.accelerator,
            limits: LimitsView {
                vcpus: record.vcpus,
                memory_bytes: record.memory_bytes,
                disk_bytes: record.disk_bytes,
                timeout_ms: record.timeout_ms,
            },
            labels: record.labels,
            created_ms: record.created_ms,
            boot_ms: record.boot_ms,
            ended_ms: record.ended_ms,
            end_reason: record.end_reason,
            end_message: record.end_message,
        }
    }
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// Newest first.
    pub sandboxes: Vec<SandboxView>,
}

/// Query of `GET /v1/sandboxes` (documented; parsed from the raw query so
/// that `label` can repeat).
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQuery {
    /// Comma-separated states, e.g. `running,creating`.
    pub state: Option<String>,
    /// `key=value`; repeat for several (all must match).
    pub label: Option<String>,
    /// Only those of this node.
    pub node: Option<String>,
    /// Most to return (default and maximum 1000).
    pub limit: Option<u32>,
}

/// `POST /v1/sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutRequest {
    /// New lifetime, counted from now.
    pub timeout: DurationInput,
}

/// How output bytes are put in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// As text; bytes that are not UTF-8 become U+FFFD, and the answer
    /// says so (`stdout_lossy`/`stderr_lossy`, or `lossy` on a streamed
    /// chunk).
    #[default]
    Utf8,
    /// Base64 (standard alphabet, padded): exact bytes.
    Base64,
}

/// `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequestBody {
    /// Program and arguments; the program is looked up on PATH.
    pub argv: Vec<String>,
    /// Environment added to the sandbox's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, absolute (default `/root`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command after this long.
    #[serde(default)]
    pub timeout: Option<DurationInput>,
    /// Text for stdin.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Bytes for stdin, base64.
    #[serde(default)]
    pub stdin_base64: Option<String>,
    /// Keep stdin open for `POST .../execs/{exec_id}/stdin`.
    #[serde(default)]
    pub stdin_open: bool,
    /// Start and return at once (202); the command runs until it ends or
    /// is killed, and its output is kept for `GET .../execs/{exec_id}/events`.
    #[serde(default)]
    pub background: bool,
}

/// Query of `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecQuery {
    /// Wait for the end and answer with the collected output as JSON,
    /// instead of a stream of server-sent events.
    #[serde(default)]
    pub wait: bool,
    /// How output bytes are encoded.
    #[serde(default)]
    pub encoding: Encoding,
}

/// Query of the exec event stream.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecStreamQuery {
    /// Resume after this event id (the `Last-Event-ID` header wins).
    #[serde(default)]
    pub after: Option<u64>,
    /// How output bytes are encoded.
    #[serde(default)]
    pub encoding: Encoding,
}

/// How a command ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExitView {
    /// `exited`, `signaled`, `oom_killed`, `timed_out`, `killed` or
    /// `spawn_failed`.
    pub reason: String,
    /// Exit code, shell-style (128+signal when killed, 127 not found).
    pub code: i32,
    /// Terminating signal.
    pub signal: Option<i32>,
    /// Explanation when it did not simply exit.
    pub message: Option<String>,
    /// Run time, ms.
    pub duration_ms: u64,
    /// Bytes written to stdout.
    pub stdout_bytes: u64,
    /// Bytes written to stderr.
    pub stderr_bytes: u64,
}

impl From<&ExitReport> for ExitView {
    fn from(report: &ExitReport) -> Self {
        Self {
            reason: serde_json::to_value(report.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            code: report.code,
            signal: report.signal,
            message: report.message.clone(),
            duration_ms: report.duration_ms,
            stdout_bytes: report.stdout_bytes,
            stderr_bytes: report.stderr_bytes,
        }
    }
}

/// `POST .../exec?wait=true`: the collected result.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exec id.
    pub exec_id: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How `stdout` and `stderr` are encoded.
    pub encoding: Encoding,
    /// `true` when `stdout` is not the exact output: it held bytes that are
    /// not UTF-8, which `utf8` replaced with U+FFFD (ask for `base64` to get
    /// them). Absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_lossy: bool,
    /// The same as `stdout_lossy`, for `stderr`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_lossy: bool,
    /// How it ended.
    pub exit: ExitView,
}

/// An exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecView {
    /// Exec id, unique in its sandbox.
    pub exec_id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory asked for.
    pub cwd: Option<String>,
    /// Started in the background.
    pub background: bool,
    /// Start time, ms since the epoch.
    pub started_ms: u64,
    /// `running`, `exited` or `failed`.
    pub state: String,
    /// How it ended, once it has.
    pub exit: Option<ExitView>,
    /// Why it failed, when it ended without an exit report.
    pub error: Option<String>,
    /// Clients reading its output now.
    pub attached: usize,
}

/// `GET /v1/sandboxes/{id}/execs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecList {
    /// Oldest first. Finished ones are kept up to 32, and up to 16 MiB of
    /// their output, newest first.
    pub execs: Vec<ExecView>,
}

/// Query of `POST .../execs/{exec_id}/stdin`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StdinQuery {
    /// Close stdin after writing the body.
    #[serde(default)]
    pub close: bool,
}

/// Query naming a path in the guest.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathParam {
    /// Absolute path inside the sandbox.
    pub path: String,
}

/// Query of `DELETE .../files`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Remove a directory and everything in it.
    #[serde(default)]
    pub recursive: bool,
}

/// `POST .../files/mkdir`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Create missing parents, and succeed if it exists (default true).
    #[serde(default = "yes")]
    pub parents: bool,
}

fn yes() -> bool {
    true
}

/// One filesystem entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Name (the full path for stat).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub file_type: String,
    /// Size, bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ms since the epoch.
    pub modified_ms: i64,
}

impl From<FileStat> for FileEntry {
    fn from(stat: FileStat) -> Self {
        Self {
            name: stat.name,
            file_type: match stat.file_type {
                FileType::File => "file",
                FileType::Dir => "dir",
                FileType::Symlink => "symlink",
                FileType::Other => "other",
            }
            .to_string(),
            size: stat.size,
            mode: stat.mode,
            modified_ms: stat.modified_ms,
        }
    }
}

/// `GET .../files/list`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// The directory listed.
    pub path: String,
    /// Its entries.
    pub entries: Vec<FileEntry>,
}

/// `PUT .../files`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WriteResponse {
    /// The file written.
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
}

/// One event of the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Event id, increasing; resume after it with `Last-Event-ID` or
    /// `?after=`.
    pub seq: i64,
    /// The sandbox.
    pub sandbox_id: Option<String>,
    /// The durable run, for a run's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The node that recorded it.
    pub node_id: Option<String>,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// What happened: one of the kinds of the `EventPayload` schema
    /// (`sandbox.creating`, `sandbox.running`, `exec.started`, ...).
    pub kind: String,
    /// Schema version of `data`.
    pub version: u32,
    /// The payload of `kind`, as described by the `EventPayload` schema.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            seq: e.seq,
            sandbox_id: e.sandbox_id,
            run_id: e.run_id,
            node_id: e.node_id,
            at_ms: e.at_ms,
            kind: e.kind,
            version: e.version,
            data: e.data,
        }
    }
}

/// `GET /v1/sandboxes/{id}/events` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// Oldest first.
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page.
    pub next_after: i64,
}

/// Query of the event history.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this id (the `Last-Event-ID` header wins).
    #[serde(default)]
    pub after: Option<i64>,
    /// Most events in one JSON page (default and maximum 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One server-sent event of an exec stream (`text/event-stream`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecStreamEvent {
    /// Event id: increasing within the exec; resume after it with
    /// `Last-Event-ID`.
    pub id: Option<String>,
    /// `started` (`{pid, exec_id}`), `stdout` / `stderr` (`{data,
    /// encoding}`, plus `"lossy": true` when `utf8` replaced bytes that are
    /// not UTF-8 with U+FFFD), `exit` (an [`ExitView`]), `error` (`{code,
    /// message}`), `gap` (`{missed, message}`).
    pub event: Option<String>,
    /// The event's JSON, as text.
    pub data: String,
}

/// One server-sent event of an event-log stream (`text/event-stream`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogStreamEvent {
    /// The event's `seq`; resume after it with `Last-Event-ID`.
    pub id: Option<String>,
    /// The event's kind, e.g. `sandbox.running`.
    pub event: Option<String>,
    /// The event (an [`EventView`]) as JSON text.
    pub data: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Server version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_say_what_is_wrong() {
        assert_eq!(
            SizeInput::Text("512M".into()).parse("memory").unwrap(),
            ByteSize::mib(512)
        );
        assert_eq!(
            SizeInput::Bytes(1024).parse("memory").unwrap(),
            ByteSize(1024)
        );
        let e = SizeInput::Text("12XB".into()).parse("memory").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("memory"));
        assert!(e.message.contains("12XB"), "{}", e.message);

        assert_eq!(
            DurationInput::Seconds(1.5).parse("timeout").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            DurationInput::Text("5m".into()).parse("timeout").unwrap(),
            Duration::from_secs(300)
        );
        for bad in [
            DurationInput::Seconds(-1.0),
            DurationInput::Seconds(0.0),
            DurationInput::Seconds(f64::NAN),
        ] {
            let e = bad.parse("timeout").unwrap_err();
            assert!(e.message.contains("positive"), "{}", e.message);
        }
        assert!(DurationInput::Seconds(1e12)
            .parse("timeout")
            .unwrap_err()
            .message
            .contains("30 days"));
        assert!(DurationInput::Text("soon".into()).parse("timeout").is_err());
    }

    #[test]
    fn create_requests_refuse_unknown_fields_and_accept_metadata() {
        let r: CreateSandboxRequest =
            serde_json::from_str(r#"{"memory":"256M","metadata":{"a":"b"}}"#).unwrap();
        assert_eq!(r.labels.get("a").map(String::as_str), Some("b"));
        assert!(serde_json::from_str::<CreateSandboxRequest>(r#"{"memroy":"256M"}"#).is_err());
    }
}

/// A node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Where other nodes reach it.
    pub url: String,
    /// Host name.
    pub hostname: String,
    /// `alive`, `left` (shut down cleanly) or `expired` (stopped
    /// heartbeating; its sandboxes were recorded lost).
    pub state: NodeState,
    /// Lease epoch: grows each time the node takes a lease.
    pub epoch: i64,
    /// When it took this lease, ms since the epoch.
    pub started_ms: u64,
    /// Its last heartbeat, ms since the epoch.
    pub heartbeat_ms: u64,
    /// When its lease runs out unless renewed (by its own clock).
    pub lease_expires_ms: u64,
    /// What it may run at once.
    pub capacity: NodeCapacity,
    /// What it runs (at its last heartbeat; live for the node answering).
    pub load: NodeLoad,
    /// Whether it is the node that answered this request.
    pub this_node: bool,
}

impl NodeView {
    /// The view of a stored node, `me` being the answering node.
    pub fn from_record(node: NodeRecord, me: &str) -> Self {
        Self {
            this_node: node.id == me,
            id: node.id,
            url: node.url,
            hostname: node.hostname,
            state: node.state,
            epoch: node.epoch,
            started_ms: node.started_ms,
            heartbeat_ms: node.heartbeat_ms,
            lease_expires_ms: node.lease_expires_ms,
            capacity: node.capacity,
            load: node.load,
        }
    }
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// By id.
    pub nodes: Vec<NodeView>,
}
