//! Nodes and their leases: which server processes are alive, what each may
//! run, and the fencing token that every owner's write carries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a node's lease is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Holding a lease and heartbeating.
    Alive,
    /// Shut down cleanly; its sandboxes ended with it.
    Left,
    /// Stopped heartbeating; another node took over its sandboxes.
    Expired,
}

impl NodeState {
    /// Every state.
    pub const ALL: [NodeState; 3] = [Self::Alive, Self::Left, Self::Expired];

    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Left => "left",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown node state {s:?}"))
    }
}

/// What a node may run at once (its admission budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NodeCapacity {
    /// Sandboxes at once.
    pub sandboxes: u32,
    /// Memory for sandboxes, bytes.
    pub memory_bytes: u64,
    /// vCPUs for sandboxes.
    pub vcpus: u32,
}

/// What a node runs now, as of its last heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NodeLoad {
    /// Sandboxes booting or running.
    pub sandboxes: u32,
    /// Memory reserved for them, bytes.
    pub memory_bytes: u64,
    /// vCPUs reserved for them.
    pub vcpus: u32,
}

/// A node as it introduces itself when it takes a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id: stable across restarts of the server on one home.
    pub id: String,
    /// Where other nodes reach its API.
    pub url: String,
    /// Host name.
    pub hostname: String,
    /// Its `HEARTH_HOME`, so that a restart on the same home may take over
    /// a lease that has not expired yet (the home lock proves its
    /// predecessor is gone) while another home with the same id may not.
    pub home: String,
    /// What it may run.
    pub capacity: NodeCapacity,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// Where other nodes reach its API.
    pub url: String,
    /// Host name.
    pub hostname: String,
    /// Its home directory.
    pub home: String,
    /// Lease epoch: the fencing token of its current (or last) lease.
    pub epoch: i64,
    /// Where its lease is.
    pub state: NodeState,
    /// When it took this lease, ms since the epoch.
    pub started_ms: u64,
    /// Its last heartbeat, ms since the epoch.
    pub heartbeat_ms: u64,
    /// Heartbeats under this lease; other nodes watch it change.
    pub heartbeat_seq: i64,
    /// When the lease runs out unless renewed, by the node's own clock.
    pub lease_expires_ms: u64,
    /// What it may run.
    pub capacity: NodeCapacity,
    /// What it ran at its last heartbeat.
    pub load: NodeLoad,
}

impl NodeRecord {
    /// Whether it has room for a sandbox of `memory_bytes` and `vcpus`, by
    /// its last reported load.
    pub fn has_room(&self, memory_bytes: u64, vcpus: u32) -> bool {
        self.load.sandboxes < self.capacity.sandboxes
            && self.load.memory_bytes.saturating_add(memory_bytes) <= self.capacity.memory_bytes
            && self.load.vcpus.saturating_add(vcpus) <= self.capacity.vcpus
    }

    /// The lease it holds, if it is alive.
    pub fn lease(&self) -> Option<Lease> {
        (self.state == NodeState::Alive).then(|| Lease {
            node_id: self.id.clone(),
            epoch: self.epoch,
            expires_ms: self.lease_expires_ms,
        })
    }
}

/// A node's lease: its proof of ownership. Every write that depends on
/// owning a sandbox carries it, and the store refuses the write when the
/// lease is no longer the node's current, live one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The node.
    pub node_id: String,
    /// The fencing token.
    pub epoch: i64,
    /// When it runs out unless renewed, ms since the epoch.
    pub expires_ms: u64,
}

impl Lease {
    /// Whether `other` is this lease, perhaps renewed since: the same node
    /// and epoch (renewals only move `expires_ms`).
    pub fn same_epoch(&self, other: &Lease) -> bool {
        self.node_id == other.node_id && self.epoch == other.epoch
    }
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (epoch {})", self.node_id, self.epoch)
    }
}
