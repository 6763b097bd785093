//! What a launch's [`crate::Session`] needs from the world around it: the
//! journal's store, the clock and randomness, host-side tools, the VM's
//! files, signals and child runs.
//!
//! The server implements it over its store, sandbox and tool box; the
//! deterministic simulation ([`crate::sim`]) implements it over memory,
//! with injected faults. Every decision about a call stays in the session,
//! so the simulation exercises the same code the server runs.

use std::fmt;
use std::future::Future;

use serde_json::Value;

use crate::protocol::EndpointError;
use crate::{Effect, RetryPolicy, StepError, StepRecord, WorkspaceCheckpoint};

/// The host could not do what the session asked (the store is out of
/// reach, or this node no longer owns the run). The launch ends; the run
/// resumes from its journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

/// Whether an answer waits for its journal write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The answer leaves only once the write is durable.
    Durable,
    /// The write is queued, and the answer leaves at once: for the start of
    /// a step that may be repeated (pure or idempotent). Losing that record
    /// in a crash only means the step runs again, which its effect allows;
    /// the launch's next durable write (always after it, in order) or its
    /// end waits for it.
    Behind,
}

/// How a launch ends the run's turn, as the session decided it: the host
/// records the run's move and its event.
#[derive(Debug, Clone, PartialEq)]
pub enum LaunchEnd {
    /// The program completed with `output`.
    Completed {
        /// The run's output.
        output: Value,
        /// Its size as JSON, bytes (already measured against the limit).
        bytes: u64,
    },
    /// The run releases its VM and waits.
    Waiting {
        /// The step it waits in.
        seq: u64,
        /// `sleep`, `retry`, `signal` or `child`.
        reason: String,
        /// The signal's name or the child's id.
        on: Option<String>,
        /// When the wait ends by itself.
        until_ms: Option<u64>,
        /// When the run is to be woken: `until_ms` or the run's deadline,
        /// whichever comes first.
        wake_ms: Option<u64>,
    },
    /// A step that may not be repeated has an unknown outcome: a person
    /// decides.
    NeedsAttention {
        /// The step.
        seq: u64,
        /// Its name.
        step: String,
        /// What happened and how to decide.
        message: String,
    },
    /// The run fails.
    Failed {
        /// Error code (`non_determinism`, `too_large`, ...).
        code: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// Where a child run is, as its parent sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    /// No such child of this run.
    Unknown,
    /// Not ended yet.
    Running,
    /// Ended: its outcome as a step outcome (`{"status": ...}`).
    Ended(Value),
}

/// A child run to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChild<'a> {
    /// Its id (stable across replays).
    pub id: &'a str,
    /// The spawning step.
    pub seq: u64,
    /// Its entry, a path inside the parent's program.
    pub program: &'a str,
    /// Its input.
    pub input: &'a Value,
    /// Its name.
    pub name: Option<&'a str>,
}

/// The world a launch's session acts on. Methods returning a `HostError`
/// end the launch (the run resumes from its journal); a `StepError` is the
/// step's own failure, recorded as such.
pub trait Host: Send + Sync {
    /// Now, ms since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Uniform in [0, 1): `ctx.random()` values and retry jitter.
    fn random(&self) -> f64;

    /// Write `steps` (in order, each as it now stands) to the run's journal.
    fn record(
        &self,
        steps: Vec<StepRecord>,
        durability: Durability,
    ) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Wait for every write queued with [`Durability::Behind`].
    fn flush(&self) -> impl Future<Output = ()> + Send;

    /// Record the run's move for `end`: `Ok(false)` when the run had moved
    /// on meanwhile (cancelled).
    fn end(&self, end: &LaunchEnd) -> impl Future<Output = Result<bool, HostError>> + Send;

    /// Stop the launch: the program must exit, calls in flight are cut off.
    fn cancel(&self);

    /// With a durable workspace, checkpoint the VM's files as they stand
    /// (a step has just ended); `None` without one.
    fn checkpoint(
        &self,
    ) -> impl Future<Output = Result<Option<WorkspaceCheckpoint>, HostError>> + Send;

    /// Sleep until `until_ms`; `false` when the launch was stopped first.
    fn hold_until(&self, until_ms: u64) -> impl Future<Output = bool> + Send;

    /// Check a tool call's arguments; its effect if they are good.
    fn tool_effect(&self, name: &str, args: &Value) -> Result<Effect, EndpointError>;

    /// The tool's retry policy.
    fn tool_policy(&self, name: &str, args: &Value) -> RetryPolicy;

    /// Call the tool once with the step's idempotency key; `None` when the
    /// launch was stopped before the call came back.
    fn call_tool(
        &self,
        name: &str,
        args: &Value,
        key: &str,
    ) -> impl Future<Output = Option<Result<Value, StepError>>> + Send;

    /// The payloads of signal `name` sent to the run, oldest first.
    fn signals(&self, name: &str) -> impl Future<Output = Result<Vec<Value>, HostError>> + Send;

    /// Wake the run (waiting `on` a signal or a child) if it waits: for
    /// what arrived while it was on its way to waiting.
    fn wake(&self, on: &str) -> impl Future<Output = ()> + Send;

    /// Start a child run (already started: nothing to do).
    fn spawn_child(
        &self,
        child: NewChild<'_>,
    ) -> impl Future<Output = Result<Result<(), StepError>, HostError>> + Send;

    /// Where child `id` is.
    fn child(&self, id: &str) -> impl Future<Output = Result<Child, HostError>> + Send;

    /// Keep the VM's file `path`: its digest and size.
    fn persist(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<Result<(String, u64), StepError>, HostError>> + Send;

    /// Put the kept file `digest` back at `path` in the VM: its size.
    fn restore(
        &self,
        path: &str,
        digest: &str,
    ) -> impl Future<Output = Result<Result<u64, StepError>, HostError>> + Send;
}

/// Why the engine ended a launch (the program's VM is to be released).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The run completed.
    Completed,
    /// The run released its VM to wait.
    Waiting,
    /// A step needs a person's decision.
    NeedsAttention,
    /// The run failed (non-determinism, a value too large, ...).
    Failed,
    /// The journal could not be written: this node no longer owns the run
    /// or the store is out of reach.
    Fenced(String),
}

impl Stopped {
    /// Its name, as given to the program.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Waiting => "waiting",
            Self::NeedsAttention => "needs_attention",
            Self::Failed => "failed",
            Self::Fenced(_) => "fenced",
        }
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fenced(why) => write!(f, "fenced: {why}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl LaunchEnd {
    /// What the launch's end is called.
    pub fn stopped(&self) -> Stopped {
        match self {
            Self::Completed { .. } => Stopped::Completed,
            Self::Waiting { .. } => Stopped::Waiting,
            Self::NeedsAttention { .. } => Stopped::NeedsAttention,
            Self::Failed { .. } => Stopped::Failed,
        }
    }
}
