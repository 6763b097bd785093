//! One journaled step: its identity, what repeating it does, its state and
//! its attempts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What running a step again would do to the world. It decides what
/// happens to a step whose outcome is unknown (its VM or server died while
/// it ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Nothing: recording a value (`now`, `random`), or a computation.
    /// Run again freely.
    Pure,
    /// Safe to repeat with the same idempotency key (the tool deduplicates
    /// by it). Retried with that key.
    Idempotent,
    /// May act twice if repeated (a charge, an e-mail). Never repeated
    /// without a decision.
    Unsafe,
}

/// The state of a step. `Succeeded` and `Failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Recorded, waiting to run (first time, or a retry after a backoff).
    Scheduled,
    /// An attempt runs.
    Started,
    /// Done, with a result that every replay returns.
    Succeeded,
    /// Done, with an error that every replay returns.
    Failed,
    /// An attempt started and its outcome was never recorded, and the step
    /// may not be repeated: waiting for a decision.
    Indeterminate,
}

impl StepState {
    /// Every state.
    pub const ALL: [StepState; 5] = [
        Self::Scheduled,
        Self::Started,
        Self::Succeeded,
        Self::Failed,
        Self::Indeterminate,
    ];

    /// Whether the step is done for good.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// Whether a step may go from `self` to `next`:
    /// - scheduled → started, or failed (refused before any attempt);
    /// - started → succeeded, failed, scheduled (the attempt failed or was
    ///   lost, and the step may run again), indeterminate (lost, and it
    ///   may not);
    /// - indeterminate → scheduled (decided: retry), succeeded (decided:
    ///   skip with a value), failed (decided: fail).
    pub fn can_become(self, next: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, next),
            (Scheduled, Started | Failed)
                | (Started, Succeeded | Failed | Scheduled | Indeterminate)
                | (Indeterminate, Scheduled | Succeeded | Failed)
        )
    }

    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Indeterminate => "indeterminate",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown step state {s:?}"))
    }
}

/// Why a step attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// A class for retry policies (`timeout`, `http_503`, `invalid_input`,
    /// ...).
    pub class: String,
    /// What happened, for a human.
    pub message: String,
    /// Whether trying again could help; false fails the step at once.
    pub retryable: bool,
}

impl StepError {
    /// A retryable error of `class`.
    pub fn retryable(class: &str, message: impl Into<String>) -> Self {
        Self {
            class: class.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// An error that no retry can fix.
    pub fn permanent(class: &str, message: impl Into<String>) -> Self {
        Self {
            class: class.into(),
            message: message.into(),
            retryable: false,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// How one attempt of a step went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// It runs.
    InFlight,
    /// It returned a result.
    Succeeded,
    /// It returned an error.
    Failed {
        /// The error.
        error: StepError,
    },
    /// Its VM or server died before its outcome was recorded.
    Lost,
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first.
    pub number: u32,
    /// When it started, ms since the epoch.
    pub started_ms: u64,
    /// When its outcome was recorded.
    pub ended_ms: Option<u64>,
    /// How it went.
    pub outcome: AttemptOutcome,
}

/// What a program asks the journal for at one position: the step's
/// identity, as the program computes it on every run and replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCall {
    /// Position in the run's journal, from 0.
    pub seq: u64,
    /// Step name (`charge`, `tool:http`, `sleep`, ...).
    pub name: String,
    /// Digest of its arguments ([`crate::digest::args_digest`]).
    pub args_digest: String,
    /// What repeating it does.
    pub effect: Effect,
}

/// A step as the journal holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position in the run's journal.
    pub seq: u64,
    /// Step name.
    pub name: String,
    /// Digest of its arguments.
    pub args_digest: String,
    /// What repeating it does.
    pub effect: Effect,
    /// Where it is.
    pub state: StepState,
    /// Its result, once succeeded.
    pub result: Option<serde_json::Value>,
    /// Its error, once failed (or of the last failed attempt).
    pub error: Option<StepError>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// When a scheduled retry may run, ms since the epoch.
    pub retry_at_ms: Option<u64>,
    /// With a durable workspace: the run's files as they stood when the
    /// step ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<WorkspaceCheckpoint>,
}

/// A durable workspace's files as they stood at a step's end: a frozen
/// layer of the VM's writable disk, kept as a blob, over the layers below
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceCheckpoint {
    /// The layer's file name (what the layer above it names as backing).
    pub layer: String,
    /// The blob holding the layer's bytes.
    pub digest: String,
    /// The layer below it, `None` for the base.
    pub parent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_are_never_left_and_names_round_trip() {
        for from in StepState::ALL {
            assert_eq!(from.as_str().parse::<StepState>().unwrap(), from);
            if from.is_final() {
                assert!(StepState::ALL.iter().all(|to| !from.can_become(*to)));
            }
        }
        // A step with an unknown outcome is never simply started again.
        assert!(!StepState::Indeterminate.can_become(StepState::Started));
        assert!(StepState::Indeterminate.can_become(StepState::Scheduled));
    }
}
