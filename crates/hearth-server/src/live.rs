//! A sandbox the server runs (or boots): its VM once up, its recorded
//! state, its execs, the lease it is owned under, and the admission
//! reservation it holds until it ends.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use hearth_sandbox::{EndReason, Sandbox};
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
    /// Why the boot was stopped, set with `cancel_boot`: a destroy and a
    /// server shutdown end a booting sandbox with different reasons.
    pub(crate) boot_stopped_for: Mutex<Option<(EndReason, String)>>,
    /// Becomes true once its end is recorded.
    pub(crate) ended: watch::Sender<bool>,
    pub(crate) execs: ExecTable,
    pub(crate) reservation: Reservation,
    /// Its network, when it has one: dropped with the sandbox, which
    /// closes the guest's proxy and ends the audit writer.
    pub(crate) egress: Mutex<Option<hearth_sandbox::Egress>>,
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

    /// Stop the boot for `reason`, or, when the VM is already up, return
    /// it for the caller to stop. Decided under the lock that
    /// [`LiveSandbox::publish`] takes, so a boot that finishes at that
    /// moment is either stopped here or handed back, never missed.
    pub(crate) fn stop_boot(&self, reason: EndReason, message: &str) -> Option<Sandbox> {
        let sandbox = self.sandbox.lock();
        if let Some(sandbox) = &*sandbox {
            return Some(sandbox.clone());
        }
        self.boot_stopped_for
            .lock()
            .get_or_insert_with(|| (reason, message.to_string()));
        self.cancel_boot.cancel();
        None
    }

    /// Make the booted VM the sandbox's, unless its boot was stopped
    /// meanwhile: then `false`, and the booting side must stop the VM.
    pub(crate) fn publish(&self, booted: Sandbox) -> bool {
        let mut sandbox = self.sandbox.lock();
        if self.cancel_boot.is_cancelled() {
            return false;
        }
        *sandbox = Some(booted);
        true
    }

    /// Why the boot was stopped: as given to [`LiveSandbox::stop_boot`], or
    /// a destroy when nothing said.
    pub(crate) fn boot_stop_reason(&self) -> (EndReason, String) {
        self.boot_stopped_for
            .lock()
            .clone()
            .unwrap_or_else(|| (EndReason::Destroyed, "destroyed while booting".into()))
    }

    /// Wait until its end is recorded.
    pub(crate) async fn wait_ended(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
    }
}
