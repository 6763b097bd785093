//! The event log as the server uses it: typed events written to the store
//! under a lease, and a wake-up for live readers.
//!
//! Readers always read from the store after the last event number they
//! delivered, which is exact with any number of writers (see
//! `hearth_store::Store::events`). The wake-up only says "something was
//! appended here, look now"; events written by other nodes are found by
//! readers polling the store at [`EventLog::poll_interval`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use hearth_store::event::SandboxCreating;
use hearth_store::{Event, EventPayload, Lease, NewSandbox, Result, Store, Transition};

/// The store plus a wake-up for live readers. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    store: Store,
    /// The highest event number this process appended.
    appended: Arc<watch::Sender<i64>>,
    poll_interval: Duration,
}

impl EventLog {
    /// A log over `store`; live readers also look every `poll_interval`
    /// for events other processes appended.
    pub fn new(store: Store, poll_interval: Duration) -> Self {
        Self {
            store,
            appended: Arc::new(watch::channel(0).0),
            poll_interval,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How often live readers look for events of other processes.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Changes whenever this process appends an event.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.appended.subscribe()
    }

    fn appended(&self, event: &Event) {
        self.appended.send_if_modified(|last| {
            let newer = event.seq > *last;
            if newer {
                *last = event.seq;
            }
            newer
        });
    }

    /// Append an event under `lease` (refused once the lease was taken
    /// over).
    pub async fn record(
        &self,
        sandbox_id: Option<&str>,
        lease: &Lease,
        payload: EventPayload,
    ) -> Result<Event> {
        let event = self
            .store
            .append_event(sandbox_id, Some(lease), payload)
            .await?;
        self.appended(&event);
        Ok(event)
    }

    /// Append, logging instead of failing: for events recorded by
    /// background tasks, which have nobody to return an error to.
    pub async fn record_or_log(
        &self,
        sandbox_id: Option<&str>,
        lease: &Lease,
        payload: EventPayload,
    ) {
        let kind = payload.kind();
        if let Err(error) = self.record(sandbox_id, lease, payload).await {
            tracing::error!(%error, kind, sandbox = ?sandbox_id, "cannot record an event");
        }
    }

    /// Record an admitted sandbox (`sandbox.creating`) owned under `lease`.
    pub async fn insert_sandbox(
        &self,
        new: &NewSandbox,
        lease: &Lease,
        details: SandboxCreating,
    ) -> Result<Event> {
        let event = self.store.insert_sandbox(new, lease, details).await?;
        self.appended(&event);
        Ok(event)
    }

    /// Change a sandbox owned under `lease` and record it; `None` when the
    /// change is not allowed (it already ended).
    pub async fn transition(
        &self,
        id: &str,
        lease: &Lease,
        change: &Transition,
        payload: EventPayload,
    ) -> Result<Option<Event>> {
        let event = self.store.transition(id, lease, change, payload).await?;
        if let Some(event) = &event {
            self.appended(event);
        }
        Ok(event)
    }
}
