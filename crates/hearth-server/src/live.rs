//! A sandbox the server runs (or boots): its VM once up, its recorded
//! state, its execs, the lease it is owned under, and the admission
//! reservation it holds until it ends.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use hearth_sandbox::Sandbox;
use hearth_store::{Lease, SandboxState};

use crate::admission::Reservation;
use crate::execs::ExecTable;

/// A sandbox this server is running (or booting).
pub struct LiveSandbox {
    pub(crate) id: String,
    /// The lease it was recorded under: every write about it carries it.
    pub(crate) lease: Lease,
    /// Environment every exec in it gets (exec env wins).
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) sandbox: Mutex<Option<Sandbox>>,
    pub(crate) state: Mutex<SandboxState>,
    pub(crate) cancel_boot: CancellationToken,
    /// Becomes true once its end is recorded.
    pub(crate) ended: watch::Sender<bool>,
    pub(crate) execs: ExecTable,
    pub(crate) reservation: Reservation,
}

impl LiveSandbox {
    /// Sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sandbox, once running.
    pub fn sandbox(&self) -> Option<Sandbox> {
        self.sandbox.lock().clone()
    }

    /// Its execs.
    pub fn execs(&self) -> &ExecTable {
        &self.execs
    }

    /// Its current state.
    pub fn state(&self) -> SandboxState {
        *self.state.lock()
    }

    /// The lease it is owned under.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Wait until its end is recorded.
    pub(crate) async fn wait_ended(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
    }
}
