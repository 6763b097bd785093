//! Group commit of journal writes: every launch on this node queues its
//! step writes here, and whatever queued while one commit was in flight is
//! written by the next transaction, so concurrent runs share one durable
//! commit instead of paying one each.
//!
//! The queue is FIFO, so a launch's writes reach the store in the order it
//! made them, whether it waited for them or not. Its length is bounded by
//! the launches running here (each has at most one call in flight, and a
//! call queues at most one write it does not wait for before one it does).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use hearth_store::{StepWrite, Store, StoreError};

/// Most writes committed together.
const MAX_BATCH: usize = 256;

/// What a queued write's waiter hears: written (durably), or why not.
pub(crate) type Written = Result<(), Arc<StoreError>>;

struct Queued {
    write: StepWrite,
    done: oneshot::Sender<Written>,
}

/// The queue in front of the store's journal writes.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Queued>,
}

impl GroupCommit {
    /// Start committing for `store`; the committer ends when the last
    /// handle is dropped, after writing what was queued.
    pub fn start(store: Store) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(commit_loop(store, pending));
        Self { queue }
    }

    /// Queue `write`; the receiver hears once it is durable (or refused).
    pub fn queue(&self, write: StepWrite) -> oneshot::Receiver<Written> {
        let (done, heard) = oneshot::channel();
        if let Err(mpsc::error::SendError(queued)) = self.queue.send(Queued { write, done }) {
            let _ = queued.done.send(Err(Arc::new(StoreError::Invalid(
                "the journal committer has stopped (the server is shutting down)".into(),
            ))));
        }
        heard
    }

    /// Write `write` and wait until it is durable.
    pub async fn write(&self, write: StepWrite) -> Written {
        match self.queue(write).await {
            Ok(written) => written,
            Err(_) => Err(Arc::new(StoreError::Invalid(
                "the journal committer stopped before answering".into(),
            ))),
        }
    }
}

async fn commit_loop(store: Store, mut pending: mpsc::UnboundedReceiver<Queued>) {
    let mut batch: Vec<Queued> = Vec::new();
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (writes, waiters): (Vec<StepWrite>, Vec<_>) =
            batch.drain(..).map(|q| (q.write, q.done)).unzip();
        match store.put_step_batch(&writes).await {
            Ok(outcomes) => {
                for (done, outcome) in waiters.into_iter().zip(outcomes) {
                    let _ = done.send(outcome.map(drop).map_err(Arc::new));
                }
            }
            Err(error) => {
                tracing::warn!(%error, writes = writes.len(), "a journal commit failed");
                let error = Arc::new(error);
                for done in waiters {
                    let _ = done.send(Err(error.clone()));
                }
            }
        }
    }
}
