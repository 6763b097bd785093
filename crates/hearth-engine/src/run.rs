//! Where a run is in its life, and which moves are allowed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of a run. The last three are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a VM: just started, or to be relaunched (after a crash,
    /// a timer, a signal or a decision).
    Pending,
    /// Its program runs in a VM.
    Running,
    /// Holds no VM: sleeping until a time, or waiting for a signal.
    Waiting,
    /// Stopped on a step whose outcome is unknown and which may not be
    /// repeated; a person decides (`hearth run resolve`).
    NeedsAttention,
    /// Finished with an output.
    Completed,
    /// Finished with an error (including non-determinism, a deadline, or
    /// too many restarts).
    Failed,
    /// Cancelled on request.
    Cancelled,
}

impl RunState {
    /// Every state.
    pub const ALL: [RunState; 7] = [
        Self::Pending,
        Self::Running,
        Self::Waiting,
        Self::NeedsAttention,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Whether the run has ended for good.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether a run may go from `self` to `next`.
    ///
    /// - pending → running (a VM took it), needs_attention (its journal
    ///   holds a step whose outcome is unknown), or to any end;
    /// - running → pending (the VM or program crashed: relaunch), waiting
    ///   (released its VM to sleep or wait), needs_attention, or any end;
    /// - waiting → pending (the timer fired or the signal came), failed
    ///   (deadline), cancelled;
    /// - needs_attention → pending (retry or skip decided), failed
    ///   (decided, or deadline), cancelled.
    ///
    /// Only a running program completes; final states are never left.
    pub fn can_become(self, next: RunState) -> bool {
        use RunState::*;
        match (self, next) {
            (from, _) if from.is_final() => false,
            (Pending, Running | NeedsAttention | Failed | Cancelled) => true,
            (Running, Pending | Waiting | NeedsAttention | Completed | Failed | Cancelled) => true,
            (Waiting, Pending | Failed | Cancelled) => true,
            (NeedsAttention, Pending | Failed | Cancelled) => true,
            _ => false,
        }
    }

    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::NeedsAttention => "needs_attention",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown run state {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        assert!("bogus".parse::<RunState>().unwrap_err().contains("waiting"));
    }

    #[test]
    fn only_a_running_program_completes_and_ends_are_final() {
        for from in RunState::ALL {
            assert_eq!(
                from.can_become(RunState::Completed),
                from == RunState::Running,
                "{from}"
            );
            if from.is_final() {
                assert!(RunState::ALL.iter().all(|to| !from.can_become(*to)));
            } else {
                // Any live run can be cancelled and can fail.
                assert!(from.can_become(RunState::Cancelled), "{from}");
                assert!(from.can_become(RunState::Failed), "{from}");
            }
        }
        // A waiting run holds no VM: it goes back through pending.
        assert!(!RunState::Waiting.can_become(RunState::Running));
        assert!(!RunState::NeedsAttention.can_become(RunState::Running));
    }

    proptest! {
        /// Whatever moves are attempted, applying only the allowed ones
        /// never leaves a final state and every path into Running comes
        /// from Pending.
        #[test]
        fn allowed_paths_are_well_formed(moves in proptest::collection::vec(0usize..7, 0..40)) {
            let mut state = RunState::Pending;
            for m in moves {
                let next = RunState::ALL[m];
                if state.can_become(next) {
                    if next == RunState::Running {
                        prop_assert_eq!(state, RunState::Pending);
                    }
                    prop_assert!(!state.is_final());
                    state = next;
                }
            }
        }
    }
}
