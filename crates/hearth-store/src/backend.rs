//! What each database backend provides: the primitive reads and writes, each
//! one transaction, in the backend's own SQL. The rules (which state changes
//! are allowed, retrying a conditional update that lost a race, fencing
//! decisions, recording refused writes) live in [`crate::Store`] and in the
//! pure functions here, and are the same for every backend.

use crate::error::Result;
use crate::event::{Event, EventPayload, EVENT_VERSION};
use crate::model::{NewSandbox, SandboxFilter, SandboxRecord, SandboxState, Transition};
use crate::node::{Lease, NodeLoad, NodeRecord, NodeSpec, NodeState};
use crate::runs::{NewRun, RunChange, RunFilter, RunRecord, RunRefusal, RunWriter, Signal};
use crate::runs_sql::StepRow;
use hearth_engine::{RunState, StepRecord};

/// An event about to be appended.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub kind: &'static str,
    pub version: u32,
    pub data: String,
}

impl NewEvent {
    pub fn of(payload: &EventPayload) -> Self {
        Self {
            kind: payload.kind(),
            version: EVENT_VERSION,
            data: payload.data().to_string(),
        }
    }
}

/// Who a sandbox write is made for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Writer<'a> {
    /// Its owner, under this lease: refused unless the lease is the node's
    /// current, live one and the sandbox is the node's under that epoch.
    Owner(&'a Lease),
    /// Another node (`by`) taking over from a dead owner: only while the
    /// sandbox is still that owner's.
    Takeover {
        node_id: &'a str,
        epoch: i64,
        by: Option<&'a str>,
    },
}

/// What a conditional sandbox update did.
#[derive(Debug)]
pub(crate) enum Updated {
    /// Written, with its event.
    Done(Event),
    /// Not written: the sandbox is not in the store.
    NotFound,
    /// Not written: the state was no longer the one expected.
    StateMoved,
    /// Not written: the writer's lease is not current and alive.
    Fenced(String),
    /// Not written: the sandbox belongs to someone else.
    NotOwner { node_id: String, epoch: i64 },
}

/// The primitives every backend implements, each in one transaction.
pub(crate) trait Backend {
    async fn close(&self);

    async fn insert_sandbox(
        &self,
        new: &NewSandbox,
        owner: &Lease,
        event: &NewEvent,
        now: u64,
    ) -> Result<std::result::Result<Event, String>>;

    /// Apply `change` if the sandbox is in `expected` and `writer` may
    /// write it, with `event`.
    async fn update_sandbox(
        &self,
        id: &str,
        expected: SandboxState,
        writer: Writer<'_>,
        change: &Transition,
        event: &NewEvent,
        now: u64,
    ) -> Result<Updated>;

    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>>;

    async fn list_sandboxes(
        &self,
        filter: &SandboxFilter,
        limit: u32,
    ) -> Result<Vec<SandboxRecord>>;

    /// Unfinished sandboxes whose owner (node and epoch) holds no live
    /// lease.
    async fn orphaned_sandboxes(&self) -> Result<Vec<SandboxRecord>>;

    /// Append an event; with `fence`, only if that lease is current.
    async fn append_event(
        &self,
        sandbox_id: Option<&str>,
        run_id: Option<&str>,
        fence: Option<&Lease>,
        event: &NewEvent,
        now: u64,
    ) -> Result<std::result::Result<Event, String>>;

    async fn events(&self, sandbox_id: Option<&str>, after: i64, limit: u32) -> Result<Vec<Event>>;

    /// Take a lease for `spec` (see [`registration`]).
    async fn register_node(
        &self,
        spec: &NodeSpec,
        ttl_ms: u64,
        now: u64,
    ) -> Result<(NodeRecord, Event)>;

    /// Renew a live lease; `None` when it is no longer current.
    async fn heartbeat(
        &self,
        lease: &Lease,
        ttl_ms: u64,
        load: &NodeLoad,
        now: u64,
    ) -> Result<Option<Lease>>;

    /// Move a live lease to `state` (left or expired), with `event`
    /// recorded by node `by`; for expiry only if its heartbeat count is
    /// still `seen_heartbeat`.
    #[allow(clippy::too_many_arguments)]
    async fn end_lease(
        &self,
        node_id: &str,
        epoch: i64,
        seen_heartbeat: Option<i64>,
        state: NodeState,
        event: &NewEvent,
        by: &str,
        now: u64,
    ) -> Result<Option<Event>>;

    async fn nodes(&self) -> Result<Vec<NodeRecord>>;

    async fn node(&self, id: &str) -> Result<Option<NodeRecord>>;
}

/// What a conditional run write did.
#[derive(Debug)]
pub(crate) enum RunUpdated {
    /// Written, with its events; the run as it is now.
    Done(Box<RunRecord>, Vec<Event>),
    /// Not written.
    Refused(RunRefusal),
}

/// The run primitives every backend implements, each in one transaction.
pub(crate) trait RunBackend {
    /// Store a blob unless it is there.
    async fn put_blob(&self, digest: &str, data: &[u8], now: u64) -> Result<()>;

    /// Store the row of a blob kept as `chunks` (a JSON array of the
    /// chunks' digests, each already stored), unless it is there.
    async fn put_chunked_blob(&self, digest: &str, size: u64, chunks: &str, now: u64)
        -> Result<()>;

    /// A blob's row: its data, and its chunks' digests (JSON) when it is
    /// kept in chunks (its data then empty).
    async fn blob(&self, digest: &str) -> Result<Option<(Vec<u8>, Option<String>)>>;

    /// Record a new pending run, unowned.
    /// Insert a pending run with its event and the first steps of its
    /// journal (a fork's), in one transaction.
    async fn insert_run(
        &self,
        new: &NewRun,
        steps: &[StepRow],
        event: &NewEvent,
        now: u64,
    ) -> Result<Event>;

    async fn run(&self, id: &str) -> Result<Option<RunRecord>>;

    async fn list_runs(&self, filter: &RunFilter, limit: u32) -> Result<Vec<RunRecord>>;

    /// Apply `change` if the run is in `expected` and `writer` may write
    /// it, with `event`; when the run ends and its parent waits on it, wake
    /// the parent.
    async fn update_run(
        &self,
        id: &str,
        expected: RunState,
        writer: RunWriter<'_>,
        change: &RunChange,
        event: &NewEvent,
        now: u64,
    ) -> Result<RunUpdated>;

    /// Take up to `limit` claimable runs (or only `only`) for `lease`;
    /// `Err` with the reason when the lease is not current.
    async fn claim_runs(
        &self,
        lease: &Lease,
        limit: u32,
        only: Option<&str>,
        now: u64,
    ) -> Result<std::result::Result<Vec<(RunRecord, Event)>, String>>;

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>>;

    /// Record a signal to a live run and wake it if it waits on that
    /// name; `None` when the run is not in the store, `Err` with its state
    /// when it has ended.
    async fn insert_signal(
        &self,
        run_id: &str,
        name: &str,
        data: &serde_json::Value,
        now: u64,
    ) -> Result<Option<std::result::Result<(Signal, Event), RunState>>>;

    async fn signals(&self, run_id: &str, name: &str) -> Result<Vec<Signal>>;

    /// Write a decision about an indeterminate step of a run that waits
    /// for one (needs attention, owned by no node) and make the run
    /// pending, in one transaction.
    async fn resolve_step(
        &self,
        run_id: &str,
        step: &StepRow,
        step_event: &NewEvent,
        run_event: &NewEvent,
        now: u64,
    ) -> Result<std::result::Result<Vec<Event>, RunRefusal>>;

    /// Make run `run_id` due now if it waits on `on`; whether it did.
    async fn wake(&self, run_id: &str, on: &str, now: u64) -> Result<bool>;

    async fn run_events(&self, run_id: &str, after: i64, limit: u32) -> Result<Vec<Event>>;

    /// Bytes the database takes (SQLite: its pages, WAL included;
    /// PostgreSQL: `pg_database_size`).
    async fn size_bytes(&self) -> Result<u64>;
}

/// The event announcing that a run moved to `state`, for a claim.
pub(crate) fn claim_event(record: &RunRecord, lease: &Lease) -> NewEvent {
    NewEvent::of(&EventPayload::RunClaimed(crate::event::RunClaimed {
        epoch: lease.epoch,
        previous_state: record.state.as_str().to_string(),
        previous_node: record.node_id.clone(),
    }))
}

/// Why a lease no longer fences writes, given the node's stored epoch and
/// state; `None` when it is the current, live lease.
pub(crate) fn fence_refusal(lease: &Lease, stored: Option<(i64, &str)>) -> Option<String> {
    match stored {
        None => Some("is not registered in the store".into()),
        Some((epoch, _)) if epoch != lease.epoch => Some(format!(
            "no longer holds that lease: the node took epoch {epoch} since"
        )),
        Some((_, state)) if state != NodeState::Alive.as_str() => Some(format!(
            "lost its lease (now {state}): another node took over its sandboxes"
        )),
        Some(_) => None,
    }
}

/// What taking a lease does given the node's stored row: the new epoch, or
/// a refusal when another live node on another host or home holds the id.
/// The same home may take over a lease that has not expired: its lock
/// proves the previous server on it is gone.
pub(crate) fn registration(
    existing: Option<&NodeRecord>,
    spec: &NodeSpec,
    now: u64,
) -> Result<i64> {
    match existing {
        None => Ok(1),
        Some(node) => {
            let elsewhere = node.hostname != spec.hostname || node.home != spec.home;
            if node.state == NodeState::Alive && node.lease_expires_ms > now && elsewhere {
                return Err(crate::StoreError::NodeIdInUse {
                    node_id: node.id.clone(),
                    hostname: node.hostname.clone(),
                    home: node.home.clone(),
                    expires_ms: node.lease_expires_ms,
                });
            }
            Ok(node.epoch + 1)
        }
    }
}

/// Names of the unfinished states, for queries.
pub(crate) fn unfinished_states() -> Vec<&'static str> {
    SandboxState::ALL
        .into_iter()
        .filter(|s| !s.is_final())
        .map(SandboxState::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeCapacity;

    fn node(state: NodeState, expires: u64, host: &str) -> NodeRecord {
        NodeRecord {
            id: "nd-a".into(),
            url: "http://a".into(),
            hostname: host.into(),
            home: "/h".into(),
            epoch: 4,
            state,
            started_ms: 0,
            heartbeat_ms: 0,
            heartbeat_seq: 0,
            lease_expires_ms: expires,
            capacity: NodeCapacity::default(),
            load: NodeLoad::default(),
        }
    }

    fn spec(host: &str) -> NodeSpec {
        NodeSpec {
            id: "nd-a".into(),
            url: "http://a".into(),
            hostname: host.into(),
            home: "/h".into(),
            capacity: NodeCapacity::default(),
        }
    }

    #[test]
    fn a_restart_on_the_same_home_takes_the_next_epoch_even_before_expiry() {
        assert_eq!(registration(None, &spec("x"), 10).unwrap(), 1);
        let live = node(NodeState::Alive, 100, "x");
        assert_eq!(registration(Some(&live), &spec("x"), 10).unwrap(), 5);
        let gone = node(NodeState::Expired, 100, "y");
        assert_eq!(registration(Some(&gone), &spec("x"), 10).unwrap(), 5);
        let stale = node(NodeState::Alive, 5, "y");
        assert_eq!(registration(Some(&stale), &spec("x"), 10).unwrap(), 5);
    }

    #[test]
    fn another_host_cannot_take_a_live_lease() {
        let live = node(NodeState::Alive, 100, "y");
        let error = registration(Some(&live), &spec("x"), 10).unwrap_err();
        assert!(error.to_string().contains("--node-id"), "{error}");
    }

    #[test]
    fn fencing_refuses_old_epochs_and_dead_leases() {
        let lease = Lease {
            node_id: "nd-a".into(),
            epoch: 3,
            expires_ms: 0,
        };
        assert_eq!(fence_refusal(&lease, Some((3, "alive"))), None);
        assert!(fence_refusal(&lease, Some((4, "alive")))
            .unwrap()
            .contains("epoch 4"));
        assert!(fence_refusal(&lease, Some((3, "expired")))
            .unwrap()
            .contains("took over"));
        assert!(fence_refusal(&lease, None).is_some());
    }
}
