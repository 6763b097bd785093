//! The sandboxes a node runs: admission, boot, the state machine as
//! recorded in the store, execs, and the end of each sandbox.

mod error;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use hearth_sandbox::{EndReason, HearthHome, Sandbox, SandboxEnd, SandboxOptions};
use hearth_store::event::{
    AdmissionRefused, ExecStarted, SandboxCreating, SandboxEnded, SandboxRunning, SandboxStopping,
    SandboxTimeoutSet, StopRequester,
};
use hearth_store::{
    EventPayload, Lease, NewSandbox, NodeLoad, SandboxRecord, SandboxState, SharedClock, Transition,
};
use hearth_vm::Driver;

use crate::admission::Admission;
use crate::cluster::Node;
use crate::events::EventLog;
use crate::execs::{ExecEntry, ExecMeta, ExecTable, PumpContext};
use crate::ids::IdSource;
pub use crate::live::LiveSandbox;
use crate::metrics::{LimitLabel, Metrics, ReasonLabel};
use crate::network::NetworkSpec;
use crate::options::ServerOptions;
pub use crate::specs::{CreateSpec, ExecSpec};
pub use error::ManagerError;

/// Result of manager operations.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

/// How long the record of a sandbox's end waits for its execs' ends to be
/// recorded first.
const EXEC_DRAIN: Duration = Duration::from_secs(5);

/// What a manager is built from.
#[derive(Clone)]
pub struct ManagerParts {
    /// The VMM backend.
    pub driver: Arc<dyn Driver>,
    /// The event log (and store).
    pub events: EventLog,
    /// This node and its lease.
    pub node: Node,
    /// Wall-clock time.
    pub clock: SharedClock,
    /// Where sandbox ids come from.
    pub ids: Arc<dyn IdSource>,
    /// Metrics.
    pub metrics: Metrics,
}

/// The sandboxes of one node. Cheap to clone.
#[derive(Clone)]
pub struct SandboxManager {
    inner: Arc<Inner>,
}

struct Inner {
    home: HearthHome,
    parts: ManagerParts,
    options: ServerOptions,
    admission: Admission,
    live: Mutex<HashMap<String, Arc<LiveSandbox>>>,
    shutting_down: AtomicBool,
}

fn final_state(reason: EndReason) -> SandboxState {
    match reason {
        EndReason::Exited | EndReason::Destroyed | EndReason::HostShutdown => SandboxState::Stopped,
        EndReason::TimedOut => SandboxState::TimedOut,
        EndReason::OutOfMemory
        | EndReason::GuestKernelPanic
        | EndReason::GuestAgentCrashed
        | EndReason::VmCrashed
        | EndReason::BootFailed
        | EndReason::GuestChannelLost => SandboxState::Failed,
    }
}

/// The event of a sandbox ending in `state`.
fn end_event(state: SandboxState, ended: SandboxEnded) -> EventPayload {
    match state {
        SandboxState::TimedOut => EventPayload::SandboxTimedOut(ended),
        SandboxState::Failed => EventPayload::SandboxFailed(ended),
        _ => EventPayload::SandboxStopped(ended),
    }
}

impl SandboxManager {
    /// A manager with nothing running.
    pub fn new(options: ServerOptions, parts: ManagerParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                home: options.home.clone(),
                admission: Admission::new(options.capacity),
                options,
                parts,
                live: Mutex::default(),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// The admission budget and use.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// What this node runs now, for its heartbeat.
    pub fn load(&self) -> NodeLoad {
        let usage = self.inner.admission.usage();
        NodeLoad {
            sandboxes: usage.sandboxes,
            memory_bytes: usage.memory_bytes,
            vcpus: usage.vcpus,
        }
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.inner.parts.events
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.inner.parts.node
    }

    /// This server's home directory.
    pub fn home(&self) -> &HearthHome {
        &self.inner.home
    }

    /// The VM driver's name (`qemu`, `fake`).
    pub fn driver_name(&self) -> &'static str {
        self.inner.parts.driver.name()
    }

    /// Server options.
    pub fn options(&self) -> &ServerOptions {
        &self.inner.options
    }

    fn now_ms(&self) -> u64 {
        self.inner.parts.clock.now_ms()
    }

    /// A live sandbox.
    pub fn live(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.inner.live.lock().get(id).cloned()
    }

    /// A running sandbox, or why not: unknown, or not running.
    pub async fn running(&self, id: &str) -> Result<(Arc<LiveSandbox>, Sandbox)> {
        if let Some(live) = self.live(id) {
            if let (Some(sandbox), SandboxState::Running) = (live.sandbox(), live.state()) {
                return Ok((live, sandbox));
            }
            return Err(ManagerError::NotRunning {
                id: id.to_string(),
                state: live.state().to_string(),
            });
        }
        match self.events().store().sandbox(id).await? {
            Some(record) => Err(ManagerError::NotRunning {
                id: id.to_string(),
                state: record.state.to_string(),
            }),
            None => Err(ManagerError::NotFound { id: id.to_string() }),
        }
    }

    async fn move_to(
        &self,
        live: &LiveSandbox,
        change: Transition,
        payload: EventPayload,
    ) -> Result<bool> {
        let recorded = self
            .events()
            .transition(&live.id, &live.lease, &change, payload)
            .await?;
        if let (Some(_), Some(to)) = (&recorded, change.state) {
            let from = std::mem::replace(&mut *live.state.lock(), to);
            self.inner.parts.metrics.moved(Some(from), to);
        }
        Ok(recorded.is_some())
    }

    /// Admit, record and boot a sandbox; returns once it runs (or failed).
    /// The boot goes on if the caller goes away; the sandbox is then found
    /// by listing.
    pub async fn create(&self, spec: CreateSpec) -> Result<SandboxRecord> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ManagerError::ShuttingDown);
        }
        let options = spec.options;
        // A missing image is the caller's mistake, not a failed sandbox.
        let images = self.inner.home.images_dir().to_path_buf();
        let image = options.image.clone();
        tokio::task::spawn_blocking(move || hearth_image::open(&images, &image))
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(|e| ManagerError::ImageUnavailable {
                image: options.image.clone(),
                message: image_problem(&options.image, &e),
                detail: e.to_string(),
            })?;
        let lease = self.node().lease();
        let free_disk = match hearth_vm::scratch::free_bytes(self.inner.home.root()) {
            Ok(free) => Some(free),
            Err(error) => {
                tracing::warn!(%error, "cannot measure the free disk space; not checking it");
                None
            }
        };
        let reservation = match self.inner.admission.reserve(
            options.memory,
            options.vcpus,
            options.disk,
            free_disk,
        ) {
            Ok(r) => r,
            Err(refusal) => {
                self.inner
                    .parts
                    .metrics
                    .admission_refusals
                    .get_or_create(&LimitLabel {
                        limit: refusal.limit.into(),
                    })
                    .inc();
                let payload = EventPayload::AdmissionRefused(AdmissionRefused {
                    limit: refusal.limit.into(),
                    message: refusal.message.clone(),
                    memory_bytes: options.memory.bytes(),
                    vcpus: options.vcpus,
                });
                self.events().record_or_log(None, &lease, payload).await;
                return Err(ManagerError::CapacityExceeded {
                    limit: refusal.limit,
                    message: refusal.message,
                });
            }
        };
        let id = self.inner.parts.ids.sandbox_id();
        let new = NewSandbox {
            id: id.clone(),
            image: options.image.clone(),
            vcpus: options.vcpus,
            memory_bytes: options.memory.bytes(),
            disk_bytes: options.disk.bytes(),
            timeout_ms: options.timeout.map(|t| t.as_millis() as u64),
            labels: options.labels.clone(),
            created_ms: self.now_ms(),
        };
        let details = SandboxCreating {
            image: new.image.clone(),
            vcpus: new.vcpus,
            memory_bytes: new.memory_bytes,
            disk_bytes: new.disk_bytes,
            timeout_ms: new.timeout_ms,
            labels: new.labels.clone(),
            env_keys: spec.env.keys().cloned().collect(),
            privileged: options.privileged,
            network: spec.network.settings(),
        };
        // Known here before it is recorded: a destroy that finds the record
        // must find the boot to cancel.
        let live = Arc::new(LiveSandbox {
            id: id.clone(),
            lease: lease.clone(),
            env: spec.env,
            sandbox: Mutex::new(None),
            state: Mutex::new(SandboxState::Creating),
            cancel_boot: CancellationToken::new(),
            boot_stopped_for: Mutex::new(None),
            ended: watch::channel(false).0,
            execs: ExecTable::default(),
            reservation,
            egress: Mutex::new(None),
        });
        self.inner.live.lock().insert(id.clone(), live.clone());
        if let Err(error) = self.events().insert_sandbox(&new, &lease, details).await {
            self.forget(&live);
            return Err(error.into());
        }
        self.inner.parts.metrics.creates.inc();
        self.inner.parts.metrics.moved(None, SandboxState::Creating);

        let (done_tx, done_rx) = oneshot::channel();
        let manager = self.clone();
        let network = spec.network;
        // A child of the create request, though it outlives it: the trace
        // of a create shows the boot.
        let span = tracing::info_span!("sandbox", id = %id);
        tokio::spawn(
            async move {
                let result = manager.boot(live, options, network).await;
                let _ = done_tx.send(result);
            }
            .instrument(span),
        );
        match done_rx.await {
            Ok(Ok(())) => self.record(&id).await,
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ManagerError::Internal(
                "the boot task ended without an answer".into(),
            )),
        }
    }

    async fn boot(
        &self,
        live: Arc<LiveSandbox>,
        options: SandboxOptions,
        network: NetworkSpec,
    ) -> Result<()> {
        let accel = self.inner.options.accel;
        let options = SandboxOptions { accel, ..options };
        let timeout = options.timeout;
        // A fresh layer is allocated in full as the VM starts; a durable
        // workspace's grows, so its disk stays counted as pending.
        let allocated = options.scratch == hearth_vm::ScratchDisk::Ephemeral;
        let driver = self.inner.parts.driver.clone();
        let created = tokio::select! {
            created = Sandbox::create_with_id(&self.inner.home, driver.as_ref(), live.id.clone(), options) => Some(created),
            _ = live.cancel_boot.cancelled() => None,
        };
        let sandbox = match created {
            Some(Ok(sandbox)) if live.publish(sandbox.clone()) => sandbox,
            // Booted just as the boot was stopped: stop the VM, and record
            // the end as if the boot had been cut short.
            Some(Ok(sandbox)) => {
                let (reason, message) = live.boot_stop_reason();
                sandbox.terminate(reason, &message).await;
                let _ = sandbox.wait().await;
                return Err(self.record_stopped_boot(&live).await);
            }
            Some(Err(error)) => {
                let ended = SandboxEnded {
                    reason: EndReason::BootFailed.as_str().into(),
                    message: error.to_string(),
                    ..SandboxEnded::default()
                };
                self.record_end(&live, SandboxState::Failed, EndReason::BootFailed, ended)
                    .await;
                return Err(error.into());
            }
            None => return Err(self.record_stopped_boot(&live).await),
        };
        if allocated {
            live.reservation.disk_allocated();
        }
        let info = sandbox.info().clone();
        self.inner
            .parts
            .metrics
            .boot_seconds
            .observe(info.boot_ms as f64 / 1000.0);
        let accel = info.accel.accel.to_string();
        let change = Transition {
            state: Some(SandboxState::Running),
            accelerator: Some(accel.clone()),
            boot_ms: Some(info.boot_ms),
            expires_ms: Some(timeout.map(|t| self.now_ms() + t.as_millis() as u64)),
            ..Transition::default()
        };
        let payload = EventPayload::SandboxRunning(SandboxRunning {
            accelerator: accel,
            accelerator_reason: info.accel.reason.clone(),
            boot_ms: info.boot_ms,
            guest: info.guest.clone(),
        });
        let recorded = self.move_to(&live, change, payload).await;
        let manager = self.clone();
        let monitor_live = live.clone();
        tokio::spawn(
            async move { manager.monitor(monitor_live, sandbox.clone()).await }
                .instrument(tracing::Span::current()),
        );
        let recorded = match recorded {
            Ok(_) if network.enabled() => self.start_network(&live, network).await,
            other => other.map(|_| ()),
        };
        match recorded {
            Ok(()) => Ok(()),
            Err(error) => {
                // Not recorded as running (the store is down, or this node
                // lost the sandbox): nobody may use it.
                if let Some(sandbox) = live.sandbox() {
                    sandbox
                        .terminate(
                            EndReason::BootFailed,
                            &format!("it could not be started: {error}"),
                        )
                        .await;
                }
                Err(error)
            }
        }
    }

    /// Give a booted sandbox its network: the guest's proxy (and
    /// transparent path), deciding with `network` under the operator's
    /// settings, every attempt audited into its event log.
    async fn start_network(&self, live: &LiveSandbox, network: NetworkSpec) -> Result<()> {
        let Some(sandbox) = live.sandbox() else {
            return Ok(());
        };
        let settings = &self.inner.options.network;
        let connector = hearth_net::Connector::new(
            network.policy,
            settings.egress.clone(),
            settings.resolver.clone(),
        );
        let audit = crate::network::audit_sink(
            &live.id,
            live.lease.clone(),
            self.events().clone(),
            self.inner.parts.metrics.clone(),
        );
        // The fake driver's agent runs on this host: a transparent path
        // would route the host itself.
        let transparent = settings.transparent && self.driver_name() != "fake";
        let config = hearth_sandbox::EgressConfig {
            transparent,
            ..hearth_sandbox::EgressConfig::new(crate::network::GUEST_PROXY, network.limits)
        };
        let egress = sandbox.start_egress(config, connector, audit).await?;
        if transparent && !egress.transparent() {
            tracing::warn!(
                "this image's guest agent routes only programs that use the proxy variables; rebuild the image for the transparent path"
            );
        }
        *live.egress.lock() = Some(egress);
        Ok(())
    }

    /// Record the end of a sandbox whose boot was stopped (by a destroy, or
    /// by the server shutting down), with the reason it was stopped for;
    /// the error for its create request.
    async fn record_stopped_boot(&self, live: &LiveSandbox) -> ManagerError {
        let (reason, message) = live.boot_stop_reason();
        let ended = SandboxEnded {
            reason: reason.as_str().into(),
            message,
            ..SandboxEnded::default()
        };
        self.record_end(live, final_state(reason), reason, ended)
            .await;
        match reason {
            EndReason::HostShutdown => ManagerError::ShuttingDown,
            _ => ManagerError::DestroyedWhileBooting {
                id: live.id.clone(),
            },
        }
    }

    /// Wait for the sandbox to end and record how.
    async fn monitor(&self, live: Arc<LiveSandbox>, sandbox: Sandbox) {
        let end: SandboxEnd = sandbox.wait().await;
        live.execs.drain(EXEC_DRAIN).await;
        if end.reason.is_failure() {
            self.inner.parts.metrics.vm_crashes.inc();
        }
        drop(sandbox);
        let ended = SandboxEnded {
            reason: end.reason.as_str().into(),
            message: end.message.clone(),
            lifetime_ms: Some(end.lifetime_ms),
            console_tail: end.console_tail.clone(),
            console_log: end
                .console_log
                .as_deref()
                .map(hearth_sandbox::registry::console_log_name),
        };
        self.record_end(&live, final_state(end.reason), end.reason, ended)
            .await;
        tracing::info!(reason = %end.reason, "sandbox ended");
    }

    /// Record that `live` ended in `state` for `reason`, count it, and
    /// forget it.
    async fn record_end(
        &self,
        live: &LiveSandbox,
        state: SandboxState,
        reason: EndReason,
        ended: SandboxEnded,
    ) {
        self.inner
            .parts
            .metrics
            .ends
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().into(),
            })
            .inc();
        let change = Transition {
            state: Some(state),
            end_reason: Some(reason.as_str().into()),
            end_message: Some(ended.message.clone()),
            ..Transition::default()
        };
        let payload = end_event(state, ended);
        let before = live.state();
        match self.move_to(live, change.clone(), payload.clone()).await {
            Ok(_) => {}
            Err(ManagerError::Store(error)) if error.is_unavailable() => {
                // The VM is gone whatever the store says; the end is
                // recorded as soon as the store is back.
                tracing::warn!(%error, %state, "the store is unavailable; the end of the sandbox is recorded when it is back");
                let manager = self.clone();
                let (id, lease) = (live.id.clone(), live.lease.clone());
                tokio::spawn(
                    async move {
                        manager
                            .record_later(&id, &lease, before, change, payload)
                            .await
                    }
                    .in_current_span(),
                );
            }
            Err(error) => tracing::error!(%error, %state, "cannot record the end of a sandbox"),
        }
        self.forget(live);
    }

    /// Retry recording a change while the store is unavailable (backing off
    /// to 30 s between tries), until it is recorded or refused for another
    /// reason.
    async fn record_later(
        &self,
        id: &str,
        lease: &Lease,
        before: SandboxState,
        change: Transition,
        payload: EventPayload,
    ) {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            match self
                .events()
                .transition(id, lease, &change, payload.clone())
                .await
            {
                Ok(recorded) => {
                    if let (Some(_), Some(to)) = (recorded, change.state) {
                        self.inner.parts.metrics.moved(Some(before), to);
                    }
                    tracing::info!(sandbox = %id, "recorded the end of a sandbox after the store came back");
                    return;
                }
                Err(error) if error.is_unavailable() => {
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(error) => {
                    tracing::error!(%error, sandbox = %id, "cannot record the end of a sandbox");
                    return;
                }
            }
        }
    }

    fn forget(&self, live: &LiveSandbox) {
        live.sandbox.lock().take();
        live.egress.lock().take();
        self.inner.live.lock().remove(&live.id);
        live.ended.send_replace(true);
    }

    /// The stored record of a sandbox.
    pub async fn record(&self, id: &str) -> Result<SandboxRecord> {
        self.events()
            .store()
            .sandbox(id)
            .await?
            .ok_or_else(|| ManagerError::NotFound { id: id.to_string() })
    }

    /// Destroy a sandbox and return its final record. Destroying an ended
    /// sandbox returns its record unchanged.
    pub async fn destroy(&self, id: &str) -> Result<SandboxRecord> {
        let Some(live) = self.live(id) else {
            return self.record(id).await;
        };
        if let Some(sandbox) = live.stop_boot(EndReason::Destroyed, "destroyed while booting") {
            let change = Transition {
                state: Some(SandboxState::Stopping),
                ..Transition::default()
            };
            let payload = EventPayload::SandboxStopping(SandboxStopping {
                requested_by: StopRequester::Api,
            });
            // The VM goes even when the store cannot record the request.
            if let Err(error) = self.move_to(&live, change, payload).await {
                tracing::warn!(%error, "cannot record the stop request; destroying anyway");
            }
            sandbox.destroy().await;
        }
        live.wait_ended().await;
        self.record(id).await
    }

    /// Move a running sandbox's timeout to `timeout` from now.
    pub async fn set_timeout(&self, id: &str, timeout: Duration) -> Result<SandboxRecord> {
        let (live, sandbox) = self.running(id).await?;
        sandbox.set_timeout(Some(timeout))?;
        let expires = self.now_ms() + timeout.as_millis() as u64;
        let change = Transition {
            timeout_ms: Some(Some(timeout.as_millis() as u64)),
            expires_ms: Some(Some(expires)),
            ..Transition::default()
        };
        let payload = EventPayload::SandboxTimeoutSet(SandboxTimeoutSet {
            timeout_ms: timeout.as_millis() as u64,
            expires_ms: expires,
        });
        self.move_to(&live, change, payload).await?;
        self.record(id).await
    }

    /// Start a command in a running sandbox.
    pub async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Arc<ExecEntry>> {
        let (live, sandbox) = self.running(id).await?;
        let mut options = spec.options;
        for (key, value) in &live.env {
            options
                .env
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        options.stdin = spec.stdin.is_some() || spec.stdin_open;
        let meta = ExecMeta {
            sandbox_id: id.to_string(),
            lease: live.lease.clone(),
            argv: options.argv.clone(),
            cwd: options.cwd.clone(),
            background: spec.background,
            started_ms: self.now_ms(),
            capacity: self.inner.options.exec_replay_buffer.bytes() as usize,
        };
        let env_keys: Vec<String> = options.env.keys().cloned().collect();
        let timeout_ms = options.timeout.map(|t| t.as_millis() as u64);
        let execution = sandbox.exec(options).await?;
        let context = PumpContext {
            events: self.events().clone(),
            metrics: self.inner.parts.metrics.clone(),
            detach_grace: self.inner.options.detach_grace,
        };
        let (entry, pump) = ExecEntry::start(execution, meta.clone(), context);
        live.execs.insert(entry.clone(), pump);
        let payload = EventPayload::ExecStarted(ExecStarted {
            exec_id: entry.id().to_string(),
            argv: meta.argv,
            cwd: meta.cwd,
            env_keys,
            timeout_ms,
            background: meta.background,
        });
        self.events()
            .record_or_log(Some(id), &live.lease, payload)
            .await;
        if let Some(data) = spec.stdin {
            if let Err(message) = entry.write_stdin(data, !spec.stdin_open).await {
                tracing::warn!(%message, "writing the initial stdin failed");
            }
        }
        Ok(entry)
    }

    /// Record a file operation on a running sandbox.
    pub async fn file_event(&self, live: &LiveSandbox, payload: EventPayload) {
        self.events()
            .record_or_log(Some(&live.id), &live.lease, payload)
            .await;
    }

    /// Drop every sandbox run under `lost`, a lease this node no longer
    /// holds: their records belong to whoever took over (they are lost),
    /// so their VMs are killed without writing anything.
    pub async fn abandon(&self, lost: &Lease, why: &str) {
        let doomed: Vec<_> = self
            .inner
            .live
            .lock()
            .values()
            // Its sandboxes hold the lease as it was when they were
            // created; it has been renewed since.
            .filter(|l| l.lease.same_epoch(lost))
            .cloned()
            .collect();
        for live in doomed {
            tracing::error!(sandbox = %live.id, "killing a sandbox this node no longer owns: {why}");
            if let Some(sandbox) = live.stop_boot(EndReason::HostShutdown, why) {
                sandbox.terminate(EndReason::HostShutdown, why).await;
            }
            let _ = tokio::time::timeout(EXEC_DRAIN, live.wait_ended()).await;
            self.forget(&live);
        }
    }

    /// Destroy every sandbox (on server shutdown), waiting at most `grace`
    /// for each end to be recorded. New creates are refused from now on.
    pub async fn shutdown_all(&self, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let live: Vec<_> = self.inner.live.lock().values().cloned().collect();
        let mut waits = Vec::new();
        for live in live {
            let manager = self.clone();
            waits.push(tokio::spawn(async move {
                // A sandbox still booting ends like a running one: the
                // host shut down, not a destroy.
                let stopped = live.stop_boot(
                    EndReason::HostShutdown,
                    "the server shut down while the sandbox booted",
                );
                if let Some(sandbox) = stopped {
                    let change = Transition {
                        state: Some(SandboxState::Stopping),
                        ..Transition::default()
                    };
                    let payload = EventPayload::SandboxStopping(SandboxStopping {
                        requested_by: StopRequester::ServerShutdown,
                    });
                    let _ = manager.move_to(&live, change, payload).await;
                    // The writable layer is discarded anyway: no need
                    // for a clean power-off.
                    sandbox
                        .terminate(EndReason::HostShutdown, "the server shut down")
                        .await;
                }
                let _ = tokio::time::timeout(grace, live.wait_ended()).await;
            }));
        }
        for wait in waits {
            let _ = wait.await;
        }
    }
}

/// What is wrong with an image, in words that name no host path.
fn image_problem(name: &str, error: &hearth_image::ImageError) -> String {
    match error {
        hearth_image::ImageError::NotFound { .. } => {
            format!("image '{name}' is not built on this host; build it with `hearth image build`")
        }
        hearth_image::ImageError::Damaged { .. } => format!(
            "image '{name}' on this host is incomplete or damaged; rebuild it with `hearth image build`"
        ),
        _ => format!("image '{name}' cannot be opened on this host; see the server log"),
    }
}
