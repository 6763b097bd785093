//! What the store holds: sandbox records, their states, and events.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a sandbox is in its life. The last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Admitted; its VM is booting.
    Creating,
    /// Booted; accepts execs and file operations.
    Running,
    /// Being destroyed.
    Stopping,
    /// Ended normally: destroyed on request or powered off.
    Stopped,
    /// Ended by a failure: boot failure, guest crash, VM crash, guest OOM.
    Failed,
    /// Ran past its timeout and was killed.
    TimedOut,
    /// The node that ran it died or lost its lease; its VM is gone.
    Lost,
}

impl SandboxState {
    /// Every state, in lifecycle order.
    pub const ALL: [SandboxState; 7] = [
        Self::Creating,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
        Self::TimedOut,
        Self::Lost,
    ];

    /// Whether the sandbox has ended for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Stopped | Self::Failed | Self::TimedOut | Self::Lost
        )
    }

    /// Whether a sandbox may go from `self` to `next`. Final states are
    /// never left; every live state may end in any final state (a VM can
    /// crash at any point).
    pub fn can_become(self, next: SandboxState) -> bool {
        use SandboxState::*;
        match (self, next) {
            (from, _) if from.is_final() => false,
            (_, to) if to.is_final() => true,
            (Creating, Running) | (Creating, Stopping) | (Running, Stopping) => true,
            _ => false,
        }
    }

    /// Name as stored and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown sandbox state {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A sandbox as first recorded, when it is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSandbox {
    /// Sandbox id.
    pub id: String,
    /// Image name.
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Writable layer size, bytes.
    pub disk_bytes: u64,
    /// Lifetime from readiness, milliseconds; `None` for no limit.
    pub timeout_ms: Option<u64>,
    /// Caller labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Sandbox id.
    pub id: String,
    /// Current state.
    pub state: SandboxState,
    /// Image name.
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Writable layer size, bytes.
    pub disk_bytes: u64,
    /// Lifetime from readiness, milliseconds; `None` for no limit.
    pub timeout_ms: Option<u64>,
    /// When a running sandbox times out, ms since the epoch.
    pub expires_ms: Option<u64>,
    /// Caller labels.
    pub labels: BTreeMap<String, String>,
    /// Accelerator, once the VM started.
    pub accelerator: Option<String>,
    /// Boot time, milliseconds, once running.
    pub boot_ms: Option<u64>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// End time, once final.
    pub ended_ms: Option<u64>,
    /// Why it ended (a sandbox end reason such as `destroyed`), once final.
    pub end_reason: Option<String>,
    /// How it ended, for a human.
    pub end_message: Option<String>,
    /// The node that runs (or ran) its VM.
    pub node_id: String,
    /// That node's lease epoch when it took the sandbox: the fencing token
    /// its writes about the sandbox carry.
    pub node_epoch: i64,
}

/// A state change, with the fields that change with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    /// New state; `None` to change only fields (e.g. the timeout).
    pub state: Option<SandboxState>,
    /// Accelerator chosen at boot.
    pub accelerator: Option<String>,
    /// Boot time.
    pub boot_ms: Option<u64>,
    /// New timeout (`Some(None)` clears it).
    pub timeout_ms: Option<Option<u64>>,
    /// New expiry time (`Some(None)` clears it).
    pub expires_ms: Option<Option<u64>>,
    /// End reason, for final states.
    pub end_reason: Option<String>,
    /// End message, for final states.
    pub end_message: Option<String>,
}

/// Which sandboxes to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    /// Only sandboxes owned by this node.
    pub node_id: Option<String>,
    /// Only these states (any, when empty).
    pub states: Vec<SandboxState>,
    /// Only sandboxes carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Most records to return, newest first.
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in SandboxState::ALL {
            assert_eq!(state.as_str().parse::<SandboxState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        let err = "bogus".parse::<SandboxState>().unwrap_err();
        assert!(err.contains("running"), "{err}");
    }

    #[test]
    fn final_states_are_never_left() {
        for from in SandboxState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in SandboxState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(SandboxState::Creating.can_become(SandboxState::Running));
        assert!(SandboxState::Running.can_become(SandboxState::Lost));
        assert!(!SandboxState::Running.can_become(SandboxState::Creating));
        assert!(!SandboxState::Stopping.can_become(SandboxState::Running));
    }
}
