//! The event log: every event is stored first, then published to live
//! subscribers, in sequence order.

use std::sync::Arc;

use tokio::sync::{broadcast, Mutex};

use hearth_store::{Event, NewSandbox, Result, Store, Transition};

/// How many live events a slow subscriber may fall behind before it has to
/// catch up from the store.
const LIVE_BUFFER: usize = 1024;

/// Event kinds that end a sandbox's history.
pub const FINAL_KINDS: [&str; 4] = [
    "sandbox.stopped",
    "sandbox.failed",
    "sandbox.timed_out",
    "sandbox.lost",
];

/// Whether `event` is the last one of its sandbox.
pub fn is_final(event: &Event) -> bool {
    FINAL_KINDS.contains(&event.kind.as_str())
}

/// The store plus a live feed of what is appended to it. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    store: Store,
    live: broadcast::Sender<Event>,
    /// Held across "append, then publish" so that events are published in
    /// sequence order: a subscriber that has seen event N has seen every
    /// event before N.
    order: Arc<Mutex<()>>,
}

impl EventLog {
    /// A log over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            live: broadcast::channel(LIVE_BUFFER).0,
            order: Arc::default(),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Live events appended from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    fn publish(&self, event: &Event) {
        // No subscribers is fine.
        let _ = self.live.send(event.clone());
    }

    /// Append an event.
    pub async fn record(
        &self,
        sandbox_id: Option<&str>,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Event> {
        let _order = self.order.lock().await;
        let event = self.store.append_event(sandbox_id, kind, data).await?;
        self.publish(&event);
        Ok(event)
    }

    /// Append, logging instead of failing: for events recorded by
    /// background tasks, which have nobody to return an error to.
    pub async fn record_or_log(
        &self,
        sandbox_id: Option<&str>,
        kind: &str,
        data: serde_json::Value,
    ) {
        if let Err(error) = self.record(sandbox_id, kind, data).await {
            tracing::error!(%error, kind, sandbox = ?sandbox_id, "cannot record an event");
        }
    }

    /// Record an admitted sandbox (`sandbox.creating`).
    pub async fn insert_sandbox(&self, new: &NewSandbox, data: serde_json::Value) -> Result<Event> {
        let _order = self.order.lock().await;
        let event = self.store.insert_sandbox(new, data).await?;
        self.publish(&event);
        Ok(event)
    }

    /// Change a sandbox and record it; `None` when the change is not
    /// allowed (it already ended).
    pub async fn transition(
        &self,
        id: &str,
        change: &Transition,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Option<Event>> {
        let _order = self.order.lock().await;
        let event = self.store.transition(id, change, kind, data).await?;
        if let Some(event) = &event {
            self.publish(event);
        }
        Ok(event)
    }
}
