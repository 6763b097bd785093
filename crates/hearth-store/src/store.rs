//! [`Store`]: the one interface over both backends, holding the rules that
//! are the same for each: which state changes are allowed, retrying a
//! conditional update that lost a race, fencing, and recording refusals.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, NewEvent, Updated, Writer};
use crate::clock::SharedClock;
use crate::error::{Result, StoreError};
use crate::event::{
    Event, EventPayload, NodeExpired, NodeFenced, NodeLeft, SandboxCreating, SandboxLost,
};
use crate::model::{NewSandbox, SandboxFilter, SandboxRecord, SandboxState, Transition};
use crate::node::{Lease, NodeLoad, NodeRecord, NodeSpec, NodeState};
use crate::postgres::PgBackend;
use crate::sqlite::SqliteBackend;
use crate::url::DatabaseUrl;

/// Most rows one query returns.
pub const MAX_PAGE: u32 = 1000;

/// How many times a state change is retried after losing a race to another
/// writer before giving up (each loss means someone else changed the state;
/// the state machine is short, so a few tries always settle it).
pub(crate) const MAX_RACES: usize = 16;

#[derive(Debug, Clone)]
pub(crate) enum Engine {
    Sqlite(SqliteBackend),
    Postgres(PgBackend),
}

/// Call the same primitive on whichever backend this is.
macro_rules! on_engine {
    ($store:expr, $b:ident => $call:expr) => {
        match $store.engine() {
            $crate::store::Engine::Sqlite($b) => $call.await,
            $crate::store::Engine::Postgres($b) => $call.await,
        }
    };
}
pub(crate) use on_engine;

macro_rules! on_backend {
    ($store:expr, $b:ident => $call:expr) => {
        match &$store.engine {
            Engine::Sqlite($b) => $call.await,
            Engine::Postgres($b) => $call.await,
        }
    };
}

/// The store: sandboxes, nodes and the event log, in SQLite or PostgreSQL.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    engine: Engine,
    clock: SharedClock,
    url: Arc<str>,
}

impl Store {
    /// Open (creating and migrating if needed) the store at `url`, reading
    /// the time from `clock`.
    pub async fn open(url: &DatabaseUrl, clock: SharedClock) -> Result<Store> {
        let engine = match url {
            DatabaseUrl::Sqlite(path) => Engine::Sqlite(SqliteBackend::open(path).await?),
            DatabaseUrl::Postgres(text) => Engine::Postgres(PgBackend::open(text).await?),
        };
        Ok(Store {
            engine,
            clock,
            url: url.redacted().into(),
        })
    }

    /// Where it is, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.engine {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// The clock it stamps records with.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Close the connections, waiting for queries in flight.
    pub async fn close(&self) {
        on_backend!(self, b => b.close())
    }

    // ---- sandboxes ----------------------------------------------------

    /// Record an admitted sandbox, owned by `owner`, in state `creating`
    /// with its `sandbox.creating` event. Refused (and the refusal
    /// recorded) when `owner` is not the node's current lease.
    pub async fn insert_sandbox(
        &self,
        new: &NewSandbox,
        owner: &Lease,
        details: SandboxCreating,
    ) -> Result<Event> {
        let payload = EventPayload::SandboxCreating(details);
        let event = NewEvent::of(&payload);
        let now = self.now();
        match on_backend!(self, b => b.insert_sandbox(new, owner, &event, now))? {
            Ok(event) => Ok(event),
            Err(reason) => Err(self
                .refused(owner, Some(&new.id), payload.kind(), reason)
                .await),
        }
    }

    /// Apply `change` to sandbox `id`, owned by `owner`, and record
    /// `payload`, in one transaction. `None` (and nothing changed) when the
    /// state machine does not allow it, e.g. the sandbox already ended.
    /// Refused (and the refusal recorded) when `owner` no longer owns it.
    pub async fn transition(
        &self,
        id: &str,
        owner: &Lease,
        change: &Transition,
        payload: EventPayload,
    ) -> Result<Option<Event>> {
        match self
            .change_state(id, Writer::Owner(owner), change, &payload)
            .await?
        {
            Changed::Done(event) => Ok(event),
            Changed::Refused(reason) => {
                Err(self.refused(owner, Some(id), payload.kind(), reason).await)
            }
        }
    }

    /// Record sandbox `record` as lost because its owner died, if it is
    /// still unfinished and still that owner's. `by` is the node doing it.
    pub async fn mark_lost(
        &self,
        record: &SandboxRecord,
        by: Option<&str>,
        message: &str,
        console_log: Option<String>,
    ) -> Result<Option<Event>> {
        let change = Transition {
            state: Some(SandboxState::Lost),
            end_reason: Some("lost".into()),
            end_message: Some(message.to_string()),
            ..Transition::default()
        };
        let payload = EventPayload::SandboxLost(SandboxLost {
            reason: "lost".into(),
            message: message.to_string(),
            previous_state: record.state,
            node_id: record.node_id.clone(),
            node_epoch: record.node_epoch,
            console_log,
        });
        let writer = Writer::Takeover {
            node_id: &record.node_id,
            epoch: record.node_epoch,
            by,
        };
        match self
            .change_state(&record.id, writer, &change, &payload)
            .await?
        {
            Changed::Done(event) => Ok(event),
            // Someone else owns it now: it is not the dead owner's to lose.
            Changed::Refused(_) => Ok(None),
        }
    }

    async fn change_state(
        &self,
        id: &str,
        writer: Writer<'_>,
        change: &Transition,
        payload: &EventPayload,
    ) -> Result<Changed> {
        if payload.sandbox_state() != change.state {
            return Err(StoreError::Invalid(format!(
                "event {} does not record a move to {:?}",
                payload.kind(),
                change.state
            )));
        }
        let event = NewEvent::of(payload);
        for _ in 0..MAX_RACES {
            let Some(current) = on_backend!(self, b => b.sandbox(id))? else {
                return Err(StoreError::NotFound(id.to_string()));
            };
            let allowed = match change.state {
                Some(next) => current.state.can_become(next),
                None => !current.state.is_final(),
            };
            if !allowed {
                return Ok(Changed::Done(None));
            }
            let now = self.now();
            let updated = on_backend!(self, b => b.update_sandbox(id, current.state, writer, change, &event, now))?;
            match updated {
                Updated::Done(event) => return Ok(Changed::Done(Some(event))),
                Updated::NotFound => return Err(StoreError::NotFound(id.to_string())),
                // Another writer moved it first: decide again from the new
                // state.
                Updated::StateMoved => continue,
                Updated::Fenced(reason) => return Ok(Changed::Refused(reason)),
                Updated::NotOwner { node_id, epoch } => {
                    return Ok(Changed::Refused(format!(
                        "does not own sandbox {id}: node {node_id} (epoch {epoch}) does"
                    )))
                }
            }
        }
        Err(StoreError::Invalid(format!(
            "sandbox {id} kept changing under {MAX_RACES} attempts to move it"
        )))
    }

    /// Record that a write by `lease` was refused, and return the error.
    pub(crate) async fn refused(
        &self,
        lease: &Lease,
        sandbox_id: Option<&str>,
        attempted: &str,
        reason: String,
    ) -> StoreError {
        let payload = EventPayload::NodeFenced(NodeFenced {
            fenced_node: lease.node_id.clone(),
            epoch: lease.epoch,
            attempted: attempted.to_string(),
            reason: reason.clone(),
        });
        let event = NewEvent::of(&payload);
        let now = self.now();
        if let Err(error) =
            on_backend!(self, b => b.append_event(sandbox_id, None, None, &event, now))
        {
            tracing::error!(%error, "cannot record a write refused by the fencing check");
        }
        StoreError::Fenced {
            node_id: lease.node_id.clone(),
            epoch: lease.epoch,
            reason,
        }
    }

    /// One sandbox.
    pub async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        on_backend!(self, b => b.sandbox(id))
    }

    /// Sandboxes matching `filter`, newest first (at most [`MAX_PAGE`]).
    pub async fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<Vec<SandboxRecord>> {
        let limit = if filter.limit == 0 {
            MAX_PAGE
        } else {
            filter.limit.min(MAX_PAGE)
        };
        on_backend!(self, b => b.list_sandboxes(filter, limit))
    }

    /// Unfinished sandboxes whose owner holds no live lease at the epoch
    /// they were taken under: the ones to record as lost.
    pub async fn orphaned_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        on_backend!(self, b => b.orphaned_sandboxes())
    }

    // ---- events -------------------------------------------------------

    /// Append an event (about sandbox `sandbox_id`, or about the server).
    /// With `by`, the event is the node's, and refused (and the refusal
    /// recorded) when that lease is not current: events about a sandbox
    /// come from the node that owns it.
    pub async fn append_event(
        &self,
        sandbox_id: Option<&str>,
        by: Option<&Lease>,
        payload: EventPayload,
    ) -> Result<Event> {
        if payload.sandbox_state().is_some() {
            return Err(StoreError::Invalid(format!(
                "{} changes a sandbox's state: record it with a transition",
                payload.kind()
            )));
        }
        let event = NewEvent::of(&payload);
        let now = self.now();
        match on_backend!(self, b => b.append_event(sandbox_id, None, by, &event, now))? {
            Ok(event) => Ok(event),
            Err(reason) => match by {
                Some(lease) => Err(self
                    .refused(lease, sandbox_id, payload.kind(), reason)
                    .await),
                None => Err(StoreError::Invalid(format!(
                    "an unfenced append was refused: {reason}"
                ))),
            },
        }
    }

    /// Events of one sandbox (or, with `None`, of the whole store) with a
    /// number above `after`, oldest first, at most `limit` (1 to
    /// [`MAX_PAGE`]). Exact with any number of writers: an event numbered
    /// below one returned here is never returned later.
    pub async fn events(
        &self,
        sandbox_id: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let limit = limit.clamp(1, MAX_PAGE);
        on_backend!(self, b => b.events(sandbox_id, after, limit))
    }

    // ---- nodes --------------------------------------------------------

    /// Take a lease for node `spec` that runs out after `ttl` unless
    /// renewed; returns the node as stored (its `lease()` is the fencing
    /// token) and its `node.joined` event.
    pub async fn register_node(
        &self,
        spec: &NodeSpec,
        ttl: Duration,
    ) -> Result<(NodeRecord, Event)> {
        let now = self.now();
        on_backend!(self, b => b.register_node(spec, ttl.as_millis() as u64, now))
    }

    /// Renew `lease` for `ttl` and report the node's `load`. Fails with
    /// [`StoreError::Fenced`] (recorded) when the lease is no longer the
    /// node's: it must stop acting as the owner of anything.
    pub async fn heartbeat(&self, lease: &Lease, ttl: Duration, load: &NodeLoad) -> Result<Lease> {
        let now = self.now();
        match on_backend!(self, b => b.heartbeat(lease, ttl.as_millis() as u64, load, now))? {
            Some(renewed) => Ok(renewed),
            None => {
                let stored = self.node(&lease.node_id).await?;
                let reason = crate::backend::fence_refusal(
                    lease,
                    stored.as_ref().map(|n| (n.epoch, n.state.as_str())),
                )
                .unwrap_or_else(|| "lost its lease".into());
                Err(self.refused(lease, None, "heartbeat", reason).await)
            }
        }
    }

    /// Give up `lease` on a clean shutdown (`node.left`).
    pub async fn leave(&self, lease: &Lease) -> Result<Option<Event>> {
        let payload = EventPayload::NodeLeft(NodeLeft { epoch: lease.epoch });
        let event = NewEvent::of(&payload);
        let now = self.now();
        on_backend!(self, b => b.end_lease(&lease.node_id, lease.epoch, None, NodeState::Left, &event, &lease.node_id, now))
    }

    /// Expire `node`'s lease, as seen by node `by` after it stayed silent
    /// for `silent`, unless it heartbeated since `node` was read (its
    /// `heartbeat_seq` moved) or someone else expired it first. Returns the
    /// `node.expired` event when this call did it.
    pub async fn expire_node(
        &self,
        node: &NodeRecord,
        by: &str,
        silent: Duration,
    ) -> Result<Option<Event>> {
        let payload = EventPayload::NodeExpired(NodeExpired {
            expired_node: node.id.clone(),
            epoch: node.epoch,
            last_heartbeat_ms: node.heartbeat_ms,
            silent_ms: silent.as_millis() as u64,
        });
        let event = NewEvent::of(&payload);
        let now = self.now();
        on_backend!(self, b => b.end_lease(&node.id, node.epoch, Some(node.heartbeat_seq), NodeState::Expired, &event, by, now))
    }

    /// Every node that ever took a lease.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        on_backend!(self, b => b.nodes())
    }

    /// One node.
    pub async fn node(&self, id: &str) -> Result<Option<NodeRecord>> {
        on_backend!(self, b => b.node(id))
    }
}

/// What a state change came to.
enum Changed {
    /// Written (`Some`), or not allowed by the state machine (`None`).
    Done(Option<Event>),
    /// Refused by the fencing check, with why.
    Refused(String),
}
