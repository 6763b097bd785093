//! The event log as the server uses it: typed events written to the store
//! under a lease, and a wake-up for live readers.
//!
//! Readers always read from the store after the last event number they
//! delivered, which is exact with any number of writers (see
//! `hearth_store::Store::events`). The wake-up only says "something was
//! appended here, look now"; events written by other nodes are found by
//! readers polling the store at [`EventLog::poll_interval`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use hearth_store::event::SandboxCreating;
use hearth_store::{Event, EventPayload, Lease, NewSandbox, Result, Store, Transition};

/// Most events kept for writing later while the store is unavailable;
/// past it, new ones are dropped (and logged).
const MAX_LATE: usize = 100_000;

/// An event waiting for the store to come back.
struct Late {
    sandbox_id: Option<String>,
    lease: Lease,
    payload: EventPayload,
}

/// The store plus a wake-up for live readers. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    store: Store,
    /// The highest event number this process appended.
    appended: Arc<watch::Sender<i64>>,
    poll_interval: Duration,
    /// Events of background tasks that the store could not take when they
    /// happened, written in order once it is back.
    late: mpsc::UnboundedSender<Late>,
    late_count: Arc<AtomicUsize>,
}

impl EventLog {
    /// A log over `store`; live readers also look every `poll_interval`
    /// for events other processes appended.
    pub fn new(store: Store, poll_interval: Duration) -> Self {
        let (late, queue) = mpsc::unbounded_channel();
        let log = Self {
            store,
            appended: Arc::new(watch::channel(0).0),
            poll_interval,
            late,
            late_count: Arc::default(),
        };
        // The writer holds no sender: it ends when every handle is gone.
        let writer = Self {
            late: mpsc::unbounded_channel().0,
            ..log.clone()
        };
        tokio::spawn(writer.write_late(queue));
        log
    }

    /// Write queued events in order, waiting (backing off to 30 s) while
    /// the store is unavailable. Ends when every log handle is gone.
    async fn write_late(self, mut queue: mpsc::UnboundedReceiver<Late>) {
        while let Some(event) = queue.recv().await {
            let mut wait = Duration::from_secs(1);
            loop {
                let written = self
                    .record(
                        event.sandbox_id.as_deref(),
                        &event.lease,
                        event.payload.clone(),
                    )
                    .await;
                match written {
                    Err(error) if error.is_unavailable() => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                    Err(error) => {
                        tracing::error!(%error, kind = event.payload.kind(), "cannot record an event");
                        break;
                    }
                    Ok(_) => break,
                }
            }
            self.late_count.fetch_sub(1, Ordering::SeqCst);
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

    /// Append, never failing: for events recorded by background tasks,
    /// which have nobody to return an error to. While the store is
    /// unavailable (and until what queued meanwhile is written) the event
    /// waits in order and is written when the store is back; other errors
    /// are logged.
    pub async fn record_or_log(
        &self,
        sandbox_id: Option<&str>,
        lease: &Lease,
        payload: EventPayload,
    ) {
        let kind = payload.kind();
        if self.late_count.load(Ordering::SeqCst) == 0 {
            match self.record(sandbox_id, lease, payload.clone()).await {
                Ok(_) => return,
                Err(error) if error.is_unavailable() => {
                    tracing::warn!(%error, kind, "the store is unavailable; the event is written when it is back");
                }
                Err(error) => {
                    tracing::error!(%error, kind, sandbox = ?sandbox_id, "cannot record an event");
                    return;
                }
            }
        }
        if self.late_count.load(Ordering::SeqCst) >= MAX_LATE {
            tracing::error!(kind, sandbox = ?sandbox_id, "too many events wait for the store; dropping one");
            return;
        }
        self.late_count.fetch_add(1, Ordering::SeqCst);
        let late = Late {
            sandbox_id: sandbox_id.map(str::to_string),
            lease: lease.clone(),
            payload,
        };
        if self.late.send(late).is_err() {
            self.late_count.fetch_sub(1, Ordering::SeqCst);
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
