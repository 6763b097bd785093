//! The event log's entries: one enum of every event kind with a typed
//! payload, so that producers cannot misspell a kind or forget a field, and
//! readers (the API, the SDK, the OpenAPI document) see one schema.
//!
//! Stored as the kind's name, the payload as JSON and a schema version
//! ([`EVENT_VERSION`]). A payload's fields may be added to within a version
//! (readers ignore unknown fields and default missing optional ones); a
//! change that old readers would misread bumps the version. Events of kinds
//! this build does not know (written by a newer node) are still served as
//! stored: [`Event`] keeps the raw kind and data, and [`Event::payload`]
//! decodes them when the kind is known.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use hearth_engine::{Effect, RunState, StepRecord, StepState};

use crate::error::StoreError;
use crate::model::SandboxState;

/// Version of the payload schemas this build writes.
pub const EVENT_VERSION: u32 = 1;

/// One entry of the event log, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event id: strictly increasing across the store, in the order events
    /// became visible, so "every event after N" is exact.
    pub seq: i64,
    /// The sandbox it concerns, if any.
    pub sandbox_id: Option<String>,
    /// The durable run it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The node that recorded it, if any.
    pub node_id: Option<String>,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened, dotted (`sandbox.running`, `exec.finished`, ...).
    pub kind: String,
    /// Schema version of `data`.
    pub version: u32,
    /// The payload, a JSON object.
    pub data: serde_json::Value,
}

impl Event {
    /// The typed payload; an error for a kind this build does not know.
    pub fn payload(&self) -> Result<EventPayload, StoreError> {
        EventPayload::from_parts(&self.kind, self.data.clone())
    }

    /// Whether this event is a sandbox's last: nothing follows it in that
    /// sandbox's history.
    pub fn ends_sandbox(&self) -> bool {
        SANDBOX_END_KINDS.contains(&self.kind.as_str())
    }

    /// Whether this event is a run's last: the run ended for good.
    pub fn ends_run(&self) -> bool {
        RUN_END_KINDS.contains(&self.kind.as_str())
    }
}

/// Kinds that end a run's history.
pub const RUN_END_KINDS: [&str; 3] = ["run.completed", "run.failed", "run.cancelled"];

/// Kinds that end a sandbox's history.
pub const SANDBOX_END_KINDS: [&str; 4] = [
    "sandbox.stopped",
    "sandbox.failed",
    "sandbox.timed_out",
    "sandbox.lost",
];

/// Every kind of event, with its payload. Serialized adjacently tagged:
/// `{"kind": "sandbox.running", "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "data")]
pub enum EventPayload {
    /// A sandbox was admitted and its VM is booting.
    #[serde(rename = "sandbox.creating")]
    SandboxCreating(SandboxCreating),
    /// A sandbox booted and accepts execs.
    #[serde(rename = "sandbox.running")]
    SandboxRunning(SandboxRunning),
    /// A sandbox is being destroyed.
    #[serde(rename = "sandbox.stopping")]
    SandboxStopping(SandboxStopping),
    /// A sandbox ended normally (destroyed, powered off, server shutdown).
    #[serde(rename = "sandbox.stopped")]
    SandboxStopped(SandboxEnded),
    /// A sandbox ended by a failure (boot failure, crash, out of memory).
    #[serde(rename = "sandbox.failed")]
    SandboxFailed(SandboxEnded),
    /// A sandbox ran past its timeout and was killed.
    #[serde(rename = "sandbox.timed_out")]
    SandboxTimedOut(SandboxEnded),
    /// The node running a sandbox died or lost its lease.
    #[serde(rename = "sandbox.lost")]
    SandboxLost(SandboxLost),
    /// A running sandbox's timeout was moved.
    #[serde(rename = "sandbox.timeout_set")]
    SandboxTimeoutSet(SandboxTimeoutSet),
    /// A command started in a sandbox.
    #[serde(rename = "exec.started")]
    ExecStarted(ExecStarted),
    /// A command ended.
    #[serde(rename = "exec.finished")]
    ExecFinished(ExecFinished),
    /// A file was written.
    #[serde(rename = "file.written")]
    FileWritten(FileTransfer),
    /// A file was read.
    #[serde(rename = "file.read")]
    FileRead(FileTransfer),
    /// A file or directory was removed.
    #[serde(rename = "file.removed")]
    FileRemoved(FileRemoved),
    /// A directory was created.
    #[serde(rename = "dir.created")]
    DirCreated(DirCreated),
    /// A program in a sandbox asked for a network connection: allowed and
    /// carried, or refused, with the bytes each way once it ended.
    #[serde(rename = "net.connection")]
    NetConnection(NetConnection),
    /// Connection records the server could not keep up with writing (a
    /// flood of attempts): counted, not recorded one by one.
    #[serde(rename = "net.suppressed")]
    NetSuppressed(NetSuppressed),
    /// A create was refused: the node was at capacity.
    #[serde(rename = "admission.refused")]
    AdmissionRefused(AdmissionRefused),
    /// A node took a lease (started, or came back after losing its lease).
    #[serde(rename = "node.joined")]
    NodeJoined(NodeJoined),
    /// A node shut down cleanly and gave up its lease.
    #[serde(rename = "node.left")]
    NodeLeft(NodeLeft),
    /// A node's lease expired; another node took over its sandboxes.
    #[serde(rename = "node.expired")]
    NodeExpired(NodeExpired),
    /// A node tried to write as the owner of something it no longer owns
    /// (its lease was taken over), and the store refused.
    #[serde(rename = "node.fenced")]
    NodeFenced(NodeFenced),
    /// A durable run was started: its program is pinned, it waits for a
    /// node to launch it.
    #[serde(rename = "run.created")]
    RunCreated(RunCreated),
    /// A node took a run to launch it (new, due after waiting, or taken
    /// over from a node that died).
    #[serde(rename = "run.claimed")]
    RunClaimed(RunClaimed),
    /// A run's program started in a fresh VM.
    #[serde(rename = "run.running")]
    RunRunning(RunRunning),
    /// A run is to be launched again (its VM or program died, a timer
    /// fired, a signal came, a decision was made).
    #[serde(rename = "run.pending")]
    RunPending(RunPending),
    /// A run released its VM to sleep or wait.
    #[serde(rename = "run.waiting")]
    RunWaiting(RunWaiting),
    /// A run stopped on a step whose outcome is unknown: a person decides.
    #[serde(rename = "run.needs_attention")]
    RunNeedsAttention(RunNeedsAttention),
    /// A run completed with an output.
    #[serde(rename = "run.completed")]
    RunCompleted(RunCompleted),
    /// A run failed.
    #[serde(rename = "run.failed")]
    RunFailed(RunFailed),
    /// A run was cancelled.
    #[serde(rename = "run.cancelled")]
    RunCancelled(RunCancelled),
    /// A signal was sent to a run.
    #[serde(rename = "run.signalled")]
    RunSignalled(RunSignalled),
    /// A run was moved to another program, checked to replay its journal.
    #[serde(rename = "run.upgraded")]
    RunUpgraded(RunUpgraded),
    /// A launch's program ended (exited, or its VM died), with its output.
    #[serde(rename = "run.exited")]
    RunExited(RunExited),
    /// A journaled step's attempt started.
    #[serde(rename = "step.started")]
    StepStarted(StepChanged),
    /// A step succeeded: every replay returns its result.
    #[serde(rename = "step.succeeded")]
    StepSucceeded(StepChanged),
    /// A step failed for good.
    #[serde(rename = "step.failed")]
    StepFailed(StepChanged),
    /// A step's attempt failed or was lost, and it will run again.
    #[serde(rename = "step.scheduled")]
    StepScheduled(StepChanged),
    /// A step's attempt was lost and it may not be repeated: it waits for
    /// a decision.
    #[serde(rename = "step.indeterminate")]
    StepIndeterminate(StepChanged),
}

impl EventPayload {
    /// The kind's name, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SandboxCreating(_) => "sandbox.creating",
            Self::SandboxRunning(_) => "sandbox.running",
            Self::SandboxStopping(_) => "sandbox.stopping",
            Self::SandboxStopped(_) => "sandbox.stopped",
            Self::SandboxFailed(_) => "sandbox.failed",
            Self::SandboxTimedOut(_) => "sandbox.timed_out",
            Self::SandboxLost(_) => "sandbox.lost",
            Self::SandboxTimeoutSet(_) => "sandbox.timeout_set",
            Self::ExecStarted(_) => "exec.started",
            Self::ExecFinished(_) => "exec.finished",
            Self::FileWritten(_) => "file.written",
            Self::FileRead(_) => "file.read",
            Self::FileRemoved(_) => "file.removed",
            Self::DirCreated(_) => "dir.created",
            Self::NetConnection(_) => "net.connection",
            Self::NetSuppressed(_) => "net.suppressed",
            Self::AdmissionRefused(_) => "admission.refused",
            Self::NodeJoined(_) => "node.joined",
            Self::NodeLeft(_) => "node.left",
            Self::NodeExpired(_) => "node.expired",
            Self::NodeFenced(_) => "node.fenced",
            Self::RunCreated(_) => "run.created",
            Self::RunClaimed(_) => "run.claimed",
            Self::RunRunning(_) => "run.running",
            Self::RunPending(_) => "run.pending",
            Self::RunWaiting(_) => "run.waiting",
            Self::RunNeedsAttention(_) => "run.needs_attention",
            Self::RunCompleted(_) => "run.completed",
            Self::RunFailed(_) => "run.failed",
            Self::RunCancelled(_) => "run.cancelled",
            Self::RunSignalled(_) => "run.signalled",
            Self::RunExited(_) => "run.exited",
            Self::RunUpgraded(_) => "run.upgraded",
            Self::StepStarted(_) => "step.started",
            Self::StepSucceeded(_) => "step.succeeded",
            Self::StepFailed(_) => "step.failed",
            Self::StepScheduled(_) => "step.scheduled",
            Self::StepIndeterminate(_) => "step.indeterminate",
        }
    }

    /// The sandbox state this event records a move to, if it is a state
    /// change.
    pub fn sandbox_state(&self) -> Option<SandboxState> {
        match self {
            Self::SandboxCreating(_) => Some(SandboxState::Creating),
            Self::SandboxRunning(_) => Some(SandboxState::Running),
            Self::SandboxStopping(_) => Some(SandboxState::Stopping),
            Self::SandboxStopped(_) => Some(SandboxState::Stopped),
            Self::SandboxFailed(_) => Some(SandboxState::Failed),
            Self::SandboxTimedOut(_) => Some(SandboxState::TimedOut),
            Self::SandboxLost(_) => Some(SandboxState::Lost),
            _ => None,
        }
    }

    /// The run state this event records a move to, if it is a run state
    /// change.
    pub fn run_state(&self) -> Option<RunState> {
        Some(match self {
            Self::RunCreated(_) | Self::RunClaimed(_) | Self::RunPending(_) => RunState::Pending,
            Self::RunRunning(_) => RunState::Running,
            Self::RunWaiting(_) => RunState::Waiting,
            Self::RunNeedsAttention(_) => RunState::NeedsAttention,
            Self::RunCompleted(_) => RunState::Completed,
            Self::RunFailed(_) => RunState::Failed,
            Self::RunCancelled(_) => RunState::Cancelled,
            _ => return None,
        })
    }

    /// The step state this event records a move to, if it is a step's.
    pub fn step_state(&self) -> Option<StepState> {
        Some(match self {
            Self::StepStarted(_) => StepState::Started,
            Self::StepSucceeded(_) => StepState::Succeeded,
            Self::StepFailed(_) => StepState::Failed,
            Self::StepScheduled(_) => StepState::Scheduled,
            Self::StepIndeterminate(_) => StepState::Indeterminate,
            _ => return None,
        })
    }

    /// The event recording that `step` reached its current state, with
    /// its last attempt.
    pub fn of_step(step: &StepRecord) -> Self {
        let attempt = step.attempts.last();
        let changed = StepChanged {
            seq: step.seq,
            name: step.name.clone(),
            attempt: attempt.map_or(0, |a| a.number),
            effect: effect_name(step.effect).to_string(),
            error: step.error.as_ref().map(ToString::to_string),
            retry_at_ms: step.retry_at_ms,
        };
        match step.state {
            StepState::Scheduled => Self::StepScheduled(changed),
            StepState::Started => Self::StepStarted(changed),
            StepState::Succeeded => Self::StepSucceeded(StepChanged {
                error: None,
                ..changed
            }),
            StepState::Failed => Self::StepFailed(changed),
            StepState::Indeterminate => Self::StepIndeterminate(changed),
        }
    }

    /// The payload's JSON object.
    pub fn data(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.remove("data").unwrap_or(serde_json::Value::Null)
            }
            // Every variant is a struct of plain fields: serializing it
            // cannot fail or give anything but an object.
            _ => serde_json::Value::Null,
        }
    }

    /// Decode a stored kind and payload.
    pub fn from_parts(kind: &str, data: serde_json::Value) -> Result<Self, StoreError> {
        serde_json::from_value(serde_json::json!({"kind": kind, "data": data})).map_err(|e| {
            StoreError::Corrupt {
                what: "event payload",
                detail: format!("{kind}: {e}"),
            }
        })
    }
}

/// `sandbox.creating`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxCreating {
    /// Guest image.
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Writable layer, bytes.
    pub disk_bytes: u64,
    /// Lifetime from readiness, ms; null for none.
    pub timeout_ms: Option<u64>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Names of the sandbox-wide environment variables (never values).
    #[serde(default)]
    pub env_keys: Vec<String>,
    /// Whether its execs get full root in the guest, unconfined (they can
    /// reach the guest agent and its cgroups). Missing, so false, in events
    /// written before execs were confined at all: read those as
    /// unconfined.
    #[serde(default)]
    pub privileged: bool,
    /// What it may reach on the network; missing for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSettings>,
}

/// A sandbox's network, as it was created with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkSettings {
    /// `none`, `allowlist` or `open`.
    pub mode: String,
    /// The allowlist's entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Most bytes per second, both ways together; null for no limit.
    pub rate_bytes: Option<u64>,
    /// Most bytes over the sandbox's life; null for no cap.
    pub max_bytes: Option<u64>,
    /// Most connections open at once.
    pub max_connections: u64,
}

/// `net.connection`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetConnection {
    /// The destination as the program named it (a name or an address).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// `proxy` (through the HTTP proxy) or `transparent` (a program that
    /// ignored the proxy variables).
    pub via: String,
    /// `tcp`, or `udp` (always refused).
    pub transport: String,
    /// The exec whose process opened it, where the guest could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// The address connected to, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Whether the connection was opened.
    pub allowed: bool,
    /// The allowlist entry (or mode) that allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused or could not be opened, or why a limit or check
    /// ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What ended an opened connection early: `max_bytes` (the sandbox's
    /// byte cap) or `sni` (a TLS server name other than the destination's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// Bytes from the program to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the program.
    pub bytes_down: u64,
    /// From the request to the end of the connection, ms.
    pub duration_ms: u64,
}

/// `net.suppressed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetSuppressed {
    /// Allowed connections not recorded one by one since the last of these.
    pub allowed: u64,
    /// Refused attempts not recorded one by one since the last of these.
    pub refused: u64,
    /// Their bytes from programs to destinations.
    pub bytes_up: u64,
    /// Their bytes from destinations to programs.
    pub bytes_down: u64,
}

/// `sandbox.running`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxRunning {
    /// `kvm` or `tcg`.
    pub accelerator: String,
    /// Why that accelerator.
    pub accelerator_reason: String,
    /// From the create request to the guest answering, ms.
    pub boot_ms: u64,
    /// What the guest agent reported.
    #[schema(value_type = Object)]
    pub guest: hearth_proto::GuestInfo,
}

/// Who asked a sandbox to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopRequester {
    /// A client, through the API.
    Api,
    /// The server, shutting down.
    ServerShutdown,
}

/// `sandbox.stopping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxStopping {
    /// Who asked.
    pub requested_by: StopRequester,
}

/// `sandbox.stopped`, `sandbox.failed`, `sandbox.timed_out`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxEnded {
    /// End reason: `destroyed`, `exited`, `timed_out`, `out_of_memory`,
    /// `guest_kernel_panic`, `guest_agent_crashed`, `guest_channel_lost`,
    /// `vm_crashed`, `boot_failed`, `host_shutdown`.
    pub reason: String,
    /// How it ended, for a human.
    pub message: String,
    /// From the create to the end, ms (absent when it never booted).
    #[serde(default)]
    pub lifetime_ms: Option<u64>,
    /// Last console lines, for failures.
    #[serde(default)]
    pub console_tail: Vec<String>,
    /// Where the console log was kept, for failures: its place in the
    /// server's home (`logs/<id>.console.log`), not a host path.
    #[serde(default)]
    pub console_log: Option<String>,
}

/// `sandbox.lost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxLost {
    /// Always `lost`.
    pub reason: String,
    /// What happened, for a human.
    pub message: String,
    /// The state it was in.
    pub previous_state: SandboxState,
    /// The node that ran it (empty for sandboxes of servers older than
    /// nodes).
    pub node_id: String,
    /// That node's lease epoch when it ran it.
    pub node_epoch: i64,
    /// Where its console log was kept, when the node that ran it found it
    /// at restart: its place in that node's home.
    #[serde(default)]
    pub console_log: Option<String>,
}

/// `sandbox.timeout_set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxTimeoutSet {
    /// The new lifetime, counted from `at_ms`.
    pub timeout_ms: u64,
    /// When it will time out, ms since the epoch.
    pub expires_ms: u64,
}

/// `exec.started`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecStarted {
    /// Exec id.
    pub exec_id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory asked for.
    pub cwd: Option<String>,
    /// Names of its environment variables (never values).
    #[serde(default)]
    pub env_keys: Vec<String>,
    /// Its timeout, ms.
    pub timeout_ms: Option<u64>,
    /// Started with no client attached.
    #[serde(default)]
    pub background: bool,
}

/// `exec.finished`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecFinished {
    /// Exec id.
    pub exec_id: String,
    /// `exited`, `signaled`, `oom_killed`, `timed_out`, `killed`,
    /// `spawn_failed`, or `failed` (the host lost it).
    pub reason: String,
    /// Shell-style exit code.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that ended it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// What happened, for a human.
    #[serde(default)]
    pub message: Option<String>,
    /// Run time, ms.
    pub duration_ms: u64,
    /// Bytes it wrote to stdout.
    #[serde(default)]
    pub stdout_bytes: Option<u64>,
    /// Bytes it wrote to stderr.
    #[serde(default)]
    pub stderr_bytes: Option<u64>,
    /// Why the host killed it, if it did.
    #[serde(default)]
    pub killed_because: Option<String>,
}

/// `file.written`, `file.read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileTransfer {
    /// Path in the guest.
    pub path: String,
    /// Bytes moved.
    pub bytes: u64,
}

/// `file.removed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileRemoved {
    /// Path in the guest.
    pub path: String,
    /// Removed a directory with its contents.
    pub recursive: bool,
}

/// `dir.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DirCreated {
    /// Path in the guest.
    pub path: String,
}

/// `admission.refused`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdmissionRefused {
    /// The limit that was reached: `sandboxes`, `memory`, `vcpus` or
    /// `disk`.
    pub limit: String,
    /// What was refused and why, for a human.
    pub message: String,
    /// Memory asked for, bytes.
    pub memory_bytes: u64,
    /// vCPUs asked for.
    pub vcpus: u32,
}

/// `node.joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeJoined {
    /// The new lease's epoch (the fencing token).
    pub epoch: i64,
    /// Where other nodes reach it.
    pub url: String,
    /// Host name.
    pub hostname: String,
    /// The epoch it had before, if it was known.
    #[serde(default)]
    pub previous_epoch: Option<i64>,
    /// The state its previous lease was in (`alive` when it restarted
    /// before its lease expired).
    #[serde(default)]
    pub previous_state: Option<String>,
}

/// `node.left`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeLeft {
    /// The lease given up.
    pub epoch: i64,
}

/// `node.expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeExpired {
    /// The node whose lease expired.
    pub expired_node: String,
    /// Its epoch.
    pub epoch: i64,
    /// Its last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// How long it had not been seen to heartbeat, ms.
    pub silent_ms: u64,
}

/// `node.fenced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeFenced {
    /// The node that tried to write.
    pub fenced_node: String,
    /// The epoch it wrote under.
    pub epoch: i64,
    /// What it tried to do.
    pub attempted: String,
    /// Why the store refused.
    pub reason: String,
}

fn effect_name(effect: Effect) -> &'static str {
    match effect {
        Effect::Pure => "pure",
        Effect::Idempotent => "idempotent",
        Effect::Unsafe => "unsafe",
    }
}

/// `run.created`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunCreated {
    /// Its name, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Digest of its pinned program.
    pub program: String,
    /// The run that spawned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// The run it was forked from, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<ForkedFrom>,
}

/// Where a forked run came from: its journal starts with the first
/// `at_step` steps of that run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForkedFrom {
    /// The run forked.
    pub run_id: String,
    /// How many of its steps the fork kept (the fork's first new step is
    /// this one).
    pub at_step: u64,
}

/// `run.claimed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunClaimed {
    /// The claiming node's lease epoch.
    pub epoch: i64,
    /// The state it was claimed from.
    pub previous_state: String,
    /// The node that owned it before, if any (one that died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_node: Option<String>,
}

/// `run.running`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunRunning {
    /// Which launch (1 for the first VM).
    pub launch: u32,
    /// The sandbox it runs in.
    pub sandbox_id: String,
}

/// `run.pending`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunPending {
    /// Why it is to be launched again: `crashed`, `timer`, `signal`,
    /// `child`, `decision`, `takeover`.
    pub cause: String,
    /// What happened, for a human.
    pub message: String,
    /// Not before this time (a relaunch backoff), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_ms: Option<u64>,
}

/// `run.waiting`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunWaiting {
    /// The step it waits at.
    pub seq: u64,
    /// `sleep`, `signal` or `child`.
    pub reason: String,
    /// The signal's name or the child's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// When it wakes at the latest, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// `run.needs_attention`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunNeedsAttention {
    /// The step whose outcome is unknown.
    pub seq: u64,
    /// Its name.
    pub step: String,
    /// What to do.
    pub message: String,
}

/// `run.completed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunCompleted {
    /// Size of its output as JSON, bytes.
    pub output_bytes: u64,
}

/// `run.failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunFailed {
    /// Class: `non_determinism`, `deadline`, `restarts_exhausted`,
    /// `step_failed`, `decided`, `program`, ...
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

/// `run.cancelled`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunCancelled {
    /// Who cancelled it (`api`, `cli`, `parent run-…`).
    pub by: String,
}

/// `run.signalled`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunSignalled {
    /// The signal's name.
    pub name: String,
    /// Its number.
    pub signal_id: i64,
}

/// `run.upgraded`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunUpgraded {
    /// The program it ran.
    pub from: String,
    /// The program it runs now.
    pub to: String,
    /// Journal steps the new program replayed in the check.
    pub replayed: u64,
}

/// `run.exited`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunExited {
    /// Which launch.
    pub launch: u32,
    /// Its exit status, if the program exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How it ended: `exited`, `vm_died`, `stopped` (the engine ended the
    /// launch: waiting, completed, cancelled, ...).
    pub reason: String,
    /// What happened, for a human.
    pub message: String,
    /// Blob digest of its stdout and stderr (each line prefixed by its
    /// stream), kept up to a cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Bytes of output it wrote, all kept or not.
    pub output_bytes: u64,
}

/// `step.*`: a journaled step reached a state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepChanged {
    /// Its position in the journal.
    pub seq: u64,
    /// Its name.
    pub name: String,
    /// The attempt concerned (0 before any).
    pub attempt: u32,
    /// `pure`, `idempotent` or `unsafe`.
    pub effect: String,
    /// The last error, if the attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a scheduled retry may run, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<EventPayload> {
        vec![
            EventPayload::SandboxCreating(SandboxCreating {
                image: "default".into(),
                vcpus: 1,
                ..SandboxCreating::default()
            }),
            EventPayload::SandboxStopping(SandboxStopping {
                requested_by: StopRequester::Api,
            }),
            EventPayload::SandboxFailed(SandboxEnded {
                reason: "boot_failed".into(),
                message: "no".into(),
                ..SandboxEnded::default()
            }),
            EventPayload::SandboxLost(SandboxLost {
                reason: "lost".into(),
                message: "gone".into(),
                previous_state: SandboxState::Running,
                node_id: "nd-a".into(),
                node_epoch: 3,
                console_log: None,
            }),
            EventPayload::ExecFinished(ExecFinished {
                exec_id: "x1".into(),
                reason: "exited".into(),
                code: Some(0),
                duration_ms: 5,
                ..ExecFinished::default()
            }),
            EventPayload::NodeFenced(NodeFenced {
                fenced_node: "nd-a".into(),
                epoch: 1,
                attempted: "sandbox.running".into(),
                reason: "lease taken over".into(),
            }),
        ]
    }

    #[test]
    fn a_creating_event_written_before_privileged_existed_reads_as_unprivileged() {
        let old = serde_json::json!({
            "image": "default", "vcpus": 1, "memory_bytes": 1, "disk_bytes": 1,
            "timeout_ms": null, "labels": {}, "env_keys": []
        });
        let EventPayload::SandboxCreating(creating) =
            EventPayload::from_parts("sandbox.creating", old).unwrap()
        else {
            panic!("not a creating event");
        };
        assert!(!creating.privileged);
        let new = EventPayload::SandboxCreating(SandboxCreating {
            privileged: true,
            ..SandboxCreating::default()
        });
        assert_eq!(new.data()["privileged"], true);
    }

    #[test]
    fn payloads_round_trip_through_kind_and_data() {
        for payload in samples() {
            let kind = payload.kind();
            let data = payload.data();
            assert!(data.is_object(), "{kind}: {data}");
            let back = EventPayload::from_parts(kind, data).unwrap();
            assert_eq!(back, payload);
        }
    }

    #[test]
    fn state_changes_name_their_state_and_ends_are_known() {
        for payload in samples() {
            if let Some(state) = payload.sandbox_state() {
                assert_eq!(payload.kind(), format!("sandbox.{state}"));
                let event = Event {
                    seq: 1,
                    sandbox_id: None,
                    run_id: None,
                    node_id: None,
                    at_ms: 0,
                    kind: payload.kind().into(),
                    version: EVENT_VERSION,
                    data: payload.data(),
                };
                assert_eq!(event.ends_sandbox(), state.is_final());
            }
        }
    }

    #[test]
    fn unknown_kinds_and_bad_payloads_are_errors_not_panics() {
        let error = EventPayload::from_parts("sandbox.teleported", serde_json::json!({}));
        assert!(error.is_err());
        let error = EventPayload::from_parts("file.read", serde_json::json!({"path": 1}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("file.read"), "{error}");
        // Fields added by a newer writer are ignored.
        let newer = serde_json::json!({"path": "/a", "bytes": 3, "sha256": "ab"});
        assert!(EventPayload::from_parts("file.read", newer).is_ok());
    }
}
