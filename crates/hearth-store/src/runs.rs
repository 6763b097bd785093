//! Durable runs as stored: the run records, the changes made to them, and
//! who may make them. The journal's steps are
//! [`hearth_engine::StepRecord`]s; their large results live in the blob
//! store.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use hearth_engine::{RunState, StepRecord};

use crate::node::Lease;

/// Step results up to this size (as JSON) are kept in the step's row;
/// larger ones are stored once as a blob that the row refers to.
pub const INLINE_RESULT_MAX: usize = 16 * 1024;

/// A run about to be recorded: pending, owned by no node.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Its id (`run-…`).
    pub id: String,
    /// A name for people, if given.
    pub name: Option<String>,
    /// Blob digest of its pinned program.
    pub program: String,
    /// How to launch it (JSON, the engine's `RunSpec`).
    pub spec: Value,
    /// Its input.
    pub input: Value,
    /// The run that spawned it, and at which step.
    pub parent: Option<(String, u64)>,
    /// When it fails if not ended, ms since the epoch.
    pub deadline_ms: Option<u64>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its id.
    pub id: String,
    /// Its name, if given.
    pub name: Option<String>,
    /// Where it is.
    pub state: RunState,
    /// Blob digest of its pinned program.
    pub program: String,
    /// How to launch it.
    pub spec: Value,
    /// Its input.
    pub input: Value,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// Why it failed (`{code, message}`), once failed.
    pub error: Option<Value>,
    /// The run that spawned it.
    pub parent_id: Option<String>,
    /// The parent's step that spawned it.
    pub parent_seq: Option<u64>,
    /// VMs it had.
    pub launches: u32,
    /// Relaunches after its program or VM crashed.
    pub restarts: u32,
    /// When it may next be launched (pending or waiting), ms since the
    /// epoch.
    pub wake_ms: Option<u64>,
    /// What a waiting run waits for.
    pub waiting_for: Option<Value>,
    /// When it fails if not ended.
    pub deadline_ms: Option<u64>,
    /// The sandbox of its current (or last) launch.
    pub sandbox_id: Option<String>,
    /// The node that owns it while claimed or running.
    pub node_id: Option<String>,
    /// That node's lease epoch.
    pub node_epoch: Option<i64>,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// When it was started, ms since the epoch.
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
}

/// A change to a run. `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunChange {
    /// The new state.
    pub state: Option<RunState>,
    /// Its output.
    pub output: Option<Value>,
    /// Its error.
    pub error: Option<Value>,
    /// When it may next be launched.
    pub wake_ms: Option<Option<u64>>,
    /// What it waits for.
    pub waiting_for: Option<Option<Value>>,
    /// The sandbox of the current launch.
    pub sandbox_id: Option<Option<String>>,
    /// Count a new launch.
    pub launched: bool,
    /// Count a relaunch after a crash.
    pub restarted: bool,
    /// Give up ownership: the run belongs to no node (waiting, needing a
    /// decision, ended).
    pub release: bool,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// Pin another program (an upgrade).
    pub program: Option<String>,
    /// Only if the run has had exactly this many launches (it did not move
    /// on since it was read).
    pub if_launches: Option<u32>,
}

/// Who writes a run.
#[derive(Debug, Clone, Copy)]
pub enum RunWriter<'a> {
    /// Its owner, under this lease: refused unless the lease is current
    /// and the run is the node's under that epoch.
    Owner(&'a Lease),
    /// Anyone, while the run is owned by no node (waiting, needing a
    /// decision, pending and unclaimed) or ended.
    Unowned,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only these states (all when empty).
    pub states: Vec<RunState>,
    /// Only children of this run.
    pub parent_id: Option<String>,
    /// Only runs this node owns.
    pub node_id: Option<String>,
    /// At most this many (0: the store's page size).
    pub limit: u32,
}

/// A signal sent to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Its number across the store, in the order signals were sent.
    pub id: i64,
    /// The run.
    pub run_id: String,
    /// Its name.
    pub name: String,
    /// Its payload.
    pub data: Value,
    /// When it was sent, ms since the epoch.
    pub sent_ms: u64,
}

/// One launch's write to its run's journal: whole step records, each
/// replacing the stored one, fenced by the launch's lease and number.
#[derive(Debug, Clone)]
pub struct StepWrite {
    /// The run.
    pub run_id: String,
    /// The lease of the node running the launch.
    pub lease: Lease,
    /// The launch number the run must still be on.
    pub launch: u32,
    /// The steps as they now are.
    pub steps: Vec<StepRecord>,
}

/// Why a run write by its owner was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunRefusal {
    /// No such run.
    NotFound,
    /// The state was no longer the one expected.
    StateMoved,
    /// The writer's lease is not current.
    Fenced(String),
    /// The run is someone else's (or no one's).
    NotOwner(String),
}

/// Whether `writer` may write a run owned by `owner` (node, epoch), and if
/// not, why. The lease itself is checked against the node row separately.
pub(crate) fn owner_refusal(
    writer: RunWriter<'_>,
    owner: (Option<&str>, Option<i64>),
) -> Option<String> {
    match (writer, owner) {
        (RunWriter::Owner(lease), (Some(node), Some(epoch)))
            if node == lease.node_id && epoch == lease.epoch =>
        {
            None
        }
        (RunWriter::Owner(_), (Some(node), Some(epoch))) => {
            Some(format!("node {node} (epoch {epoch}) owns it"))
        }
        (RunWriter::Owner(_), _) => Some("no node owns it now".into()),
        (RunWriter::Unowned, (None, _)) => None,
        (RunWriter::Unowned, (Some(node), epoch)) => Some(format!(
            "node {node} (epoch {}) owns it: ask that node",
            epoch.unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_under_its_epoch_writes_an_owned_run() {
        let lease = Lease {
            node_id: "nd-a".into(),
            epoch: 2,
            expires_ms: 0,
        };
        let owner = RunWriter::Owner(&lease);
        assert_eq!(owner_refusal(owner, (Some("nd-a"), Some(2))), None);
        assert!(owner_refusal(owner, (Some("nd-a"), Some(1)))
            .unwrap()
            .contains("epoch 1"));
        assert!(owner_refusal(owner, (None, None)).is_some());
        assert_eq!(owner_refusal(RunWriter::Unowned, (None, None)), None);
        assert!(owner_refusal(RunWriter::Unowned, (Some("nd-b"), Some(3)))
            .unwrap()
            .contains("nd-b"));
    }
}
