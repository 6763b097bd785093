//! This server as a node: its lease in the store, the heartbeat that keeps
//! it, and the watch over the other nodes that records the sandboxes of a
//! dead one as lost.
//!
//! Every server is a node, alone or with others on one PostgreSQL. A node
//! id persists in the home (`node-id`), so a restarted server is the same
//! node with a new lease epoch; its old epoch's unfinished sandboxes are
//! then orphans, recorded lost by whichever node sweeps first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use hearth_sandbox::ReapedSandbox;
use hearth_store::{Lease, NodeLoad, NodeSpec, SandboxRecord, Store, StoreError};

use crate::lease_watch::LeaseWatch;
use crate::metrics::Metrics;

/// This node: its identity and current lease. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    store: Store,
    spec: NodeSpec,
    ttl: Duration,
    lease: watch::Sender<Lease>,
    watch: Mutex<LeaseWatch>,
    /// Sandboxes this node's previous run left, found at start: their
    /// console logs and whether their VM had to be killed, for the record.
    reaped: Mutex<HashMap<String, ReapedSandbox>>,
    /// Epochs this process held and lost (taken over while it ran).
    lost_epochs: Mutex<Vec<i64>>,
    origin: tokio::time::Instant,
}

/// What a heartbeat found.
#[derive(Debug)]
pub enum Heartbeat {
    /// The lease is renewed.
    Renewed,
    /// The lease had been taken over: the node took a new one (`lease`)
    /// and must drop everything it ran under the old one.
    Rejoined {
        /// The lease that was lost.
        lost: Lease,
        /// Why.
        reason: String,
    },
}

impl Node {
    /// Take a lease for `spec` in `store`, lasting `ttl` between
    /// heartbeats.
    pub async fn join(
        store: Store,
        spec: NodeSpec,
        ttl: Duration,
        reaped: Vec<ReapedSandbox>,
    ) -> Result<Node, StoreError> {
        let (record, _) = store.register_node(&spec, ttl).await?;
        let lease = record
            .lease()
            .ok_or_else(|| StoreError::Invalid("a node just registered is not alive".into()))?;
        tracing::info!(node = %spec.id, epoch = lease.epoch, "took a lease");
        Ok(Node {
            inner: Arc::new(NodeInner {
                store,
                ttl,
                lease: watch::channel(lease).0,
                watch: Mutex::new(LeaseWatch::new(ttl.as_millis() as u64)),
                reaped: Mutex::new(reaped.into_iter().map(|r| (r.id.clone(), r)).collect()),
                lost_epochs: Mutex::default(),
                origin: tokio::time::Instant::now(),
                spec,
            }),
        })
    }

    /// Node id.
    pub fn id(&self) -> &str {
        &self.inner.spec.id
    }

    /// How it introduced itself.
    pub fn spec(&self) -> &NodeSpec {
        &self.inner.spec
    }

    /// The current lease (the fencing token of new writes).
    pub fn lease(&self) -> Lease {
        self.inner.lease.borrow().clone()
    }

    /// How long a lease lasts without a heartbeat.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// How often to heartbeat: three times per TTL, so that one lost
    /// heartbeat never costs the lease.
    pub fn heartbeat_interval(&self) -> Duration {
        self.inner.ttl / 3
    }

    /// Renew the lease, reporting `load`. When the lease was taken over,
    /// take a new one.
    pub async fn heartbeat(&self, load: NodeLoad) -> Result<Heartbeat, StoreError> {
        let lease = self.lease();
        match self
            .inner
            .store
            .heartbeat(&lease, self.inner.ttl, &load)
            .await
        {
            Ok(renewed) => {
                self.inner.lease.send_replace(renewed);
                Ok(Heartbeat::Renewed)
            }
            Err(StoreError::Fenced { reason, .. }) => {
                tracing::error!(node = %self.id(), epoch = lease.epoch, %reason, "this node lost its lease; taking a new one");
                let (record, _) = self
                    .inner
                    .store
                    .register_node(&self.inner.spec, self.inner.ttl)
                    .await?;
                let new = record.lease().ok_or_else(|| {
                    StoreError::Invalid("a node just registered is not alive".into())
                })?;
                tracing::warn!(node = %self.id(), epoch = new.epoch, "took a new lease");
                self.inner.lost_epochs.lock().push(lease.epoch);
                self.inner.lease.send_replace(new);
                Ok(Heartbeat::Rejoined {
                    lost: lease,
                    reason,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// Look at the other nodes: expire those silent for a TTL, then record
    /// every orphaned sandbox (its owner holds no live lease) as lost.
    /// Returns how many sandboxes were recorded lost.
    pub async fn sweep(&self, metrics: &Metrics) -> Result<usize, StoreError> {
        let store = &self.inner.store;
        let nodes = store.nodes().await?;
        let now = self.inner.origin.elapsed().as_millis() as u64;
        let silent = self.inner.watch.lock().observe(now, self.id(), &nodes);
        for s in silent {
            let silent_for = Duration::from_millis(s.silent_ms);
            if store
                .expire_node(&s.node, self.id(), silent_for)
                .await?
                .is_some()
            {
                tracing::warn!(node = %s.node.id, epoch = s.node.epoch, silent_ms = s.silent_ms, "expired the lease of a silent node");
            }
        }
        let mut lost = 0;
        for record in store.orphaned_sandboxes().await? {
            let reaped = self.inner.reaped.lock().remove(&record.id);
            let message = self.lost_message(&record, reaped.as_ref());
            let console_log = reaped
                .as_ref()
                .and_then(|r| r.console_log.as_deref())
                .map(hearth_sandbox::registry::console_log_name);
            if store
                .mark_lost(&record, Some(self.id()), &message, console_log)
                .await?
                .is_some()
            {
                metrics.moved(None, hearth_store::SandboxState::Lost);
                tracing::warn!(sandbox = %record.id, owner = %record.node_id, "{message}");
                lost += 1;
            }
        }
        Ok(lost)
    }

    fn lost_message(&self, record: &SandboxRecord, reaped: Option<&ReapedSandbox>) -> String {
        if record.node_id.is_empty() {
            return "the server that ran it (an earlier Hearth version) stopped without shutting it down; its VM died with it".into();
        }
        if record.node_id == self.id() && self.inner.lost_epochs.lock().contains(&record.node_epoch)
        {
            return format!(
                "node {} lost its lease (epoch {}) while it ran the sandbox: it stopped heartbeating for a lease TTL (stalled, or cut off from the database) and another node took over; its VM was killed",
                record.node_id, record.node_epoch
            );
        }
        if record.node_id == self.id() {
            let vm = match reaped {
                Some(r) if r.killed_vmm => "its VM was still running and has been killed",
                Some(_) => "its VM was already gone; its files have been removed",
                None => "its VM died with it",
            };
            return format!(
                "the server of node {} (lease epoch {}) stopped without shutting it down; {vm}",
                record.node_id, record.node_epoch
            );
        }
        format!(
            "node {} (lease epoch {}) that ran it stopped renewing its lease; its VM died with that server, or is killed when the node finds it lost its lease",
            record.node_id, record.node_epoch
        )
    }

    /// Give the lease up on a clean shutdown.
    pub async fn leave(&self) {
        if let Err(error) = self.inner.store.leave(&self.lease()).await {
            tracing::warn!(%error, "could not give up the lease; other nodes will expire it");
        }
    }
}
