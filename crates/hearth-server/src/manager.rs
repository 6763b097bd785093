//! The sandboxes a server runs: admission, boot, the state machine as
//! recorded in the store, execs, and the end of each sandbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use hearth_sandbox::lifecycle::new_sandbox_id;
use hearth_sandbox::registry::now_ms;
use hearth_sandbox::{EndReason, HearthHome, Sandbox, SandboxEnd, SandboxOptions};
use hearth_store::{NewSandbox, SandboxRecord, SandboxState, Transition};
use hearth_vm::Driver;

use crate::admission::Admission;
use crate::error::ApiError;
use crate::events::EventLog;
use crate::execs::{ExecEntry, ExecMeta, ExecTable, PumpContext};
pub use crate::live::LiveSandbox;
use crate::metrics::{LimitLabel, Metrics, ReasonLabel};
use crate::options::ServerOptions;
pub use crate::specs::{CreateSpec, ExecSpec};

/// How long the record of a sandbox's end waits for its execs' ends to be
/// recorded first.
const EXEC_DRAIN: Duration = Duration::from_secs(5);

/// The sandboxes of one server. Cheap to clone.
#[derive(Clone)]
pub struct SandboxManager {
    inner: Arc<Inner>,
}

struct Inner {
    home: HearthHome,
    driver: Arc<dyn Driver>,
    options: ServerOptions,
    events: EventLog,
    metrics: Metrics,
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
        | EndReason::BootFailed => SandboxState::Failed,
    }
}

impl SandboxManager {
    /// A manager with nothing running.
    pub fn new(
        options: ServerOptions,
        driver: Arc<dyn Driver>,
        events: EventLog,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                home: options.home.clone(),
                driver,
                admission: Admission::new(options.capacity),
                options,
                events,
                metrics,
                live: Mutex::default(),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// The admission budget and use.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// Server options.
    pub fn options(&self) -> &ServerOptions {
        &self.inner.options
    }

    /// A live sandbox.
    pub fn live(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.inner.live.lock().expect("live lock").get(id).cloned()
    }

    /// A running sandbox, or the right error: 404 unknown, 409 not running.
    pub async fn running(&self, id: &str) -> Result<(Arc<LiveSandbox>, Sandbox), ApiError> {
        if let Some(live) = self.live(id) {
            if let (Some(sandbox), SandboxState::Running) = (live.sandbox(), live.state()) {
                return Ok((live, sandbox));
            }
            return Err(ApiError::not_running(id, live.state().as_str()));
        }
        match self.inner.events.store().sandbox(id).await? {
            Some(record) => Err(ApiError::not_running(id, record.state.as_str())),
            None => Err(ApiError::sandbox_not_found(id)),
        }
    }

    async fn move_to(
        &self,
        live: &LiveSandbox,
        change: Transition,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<bool, ApiError> {
        let Some(to) = change.state else {
            return Ok(self
                .inner
                .events
                .transition(&live.id, &change, kind, data)
                .await?
                .is_some());
        };
        let recorded = self
            .inner
            .events
            .transition(&live.id, &change, kind, data)
            .await?;
        if recorded.is_some() {
            let from = std::mem::replace(&mut *live.state.lock().expect("state lock"), to);
            self.inner.metrics.moved(Some(from), to);
        }
        Ok(recorded.is_some())
    }

    /// Admit, record and boot a sandbox; returns once it runs (or failed).
    /// The boot goes on if the caller goes away; the sandbox is then found
    /// by listing.
    pub async fn create(&self, spec: CreateSpec) -> Result<SandboxRecord, ApiError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry against its successor",
            ));
        }
        let options = spec.options;
        // A missing image is the caller's mistake, not a failed sandbox.
        let images = self.inner.home.images_dir().to_path_buf();
        let image = options.image.clone();
        tokio::task::spawn_blocking(move || hearth_vm::image::open(&images, &image))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::invalid("image", e.to_string()))?;
        let reservation = match self.inner.admission.reserve(options.memory, options.vcpus) {
            Ok(r) => r,
            Err(refusal) => {
                self.inner
                    .metrics
                    .admission_refusals
                    .get_or_create(&LimitLabel {
                        limit: refusal.limit.into(),
                    })
                    .inc();
                self.inner
                    .events
                    .record_or_log(
                        None,
                        "admission.refused",
                        json!({
                            "limit": refusal.limit,
                            "message": refusal.message,
                            "memory_bytes": options.memory.bytes(),
                            "vcpus": options.vcpus,
                        }),
                    )
                    .await;
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "capacity_exceeded",
                    refusal.message,
                ));
            }
        };
        let id = new_sandbox_id();
        let new = NewSandbox {
            id: id.clone(),
            image: options.image.clone(),
            vcpus: options.vcpus,
            memory_bytes: options.memory.bytes(),
            disk_bytes: options.disk.bytes(),
            timeout_ms: options.timeout.map(|t| t.as_millis() as u64),
            labels: options.labels.clone(),
            created_ms: now_ms(),
            server_pid: std::process::id(),
        };
        self.inner
            .events
            .insert_sandbox(
                &new,
                json!({
                    "image": new.image,
                    "vcpus": new.vcpus,
                    "memory_bytes": new.memory_bytes,
                    "disk_bytes": new.disk_bytes,
                    "timeout_ms": new.timeout_ms,
                    "labels": new.labels,
                    "env_keys": spec.env.keys().collect::<Vec<_>>(),
                }),
            )
            .await?;
        self.inner.metrics.creates.inc();
        self.inner.metrics.moved(None, SandboxState::Creating);
        let live = Arc::new(LiveSandbox {
            id: id.clone(),
            env: spec.env,
            sandbox: Mutex::new(None),
            state: Mutex::new(SandboxState::Creating),
            expires_ms: Mutex::new(None),
            cancel_boot: CancellationToken::new(),
            ended: watch::channel(false).0,
            execs: ExecTable::default(),
            _reservation: reservation,
        });
        self.inner
            .live
            .lock()
            .expect("live lock")
            .insert(id.clone(), live.clone());

        let (done_tx, done_rx) = oneshot::channel();
        let manager = self.clone();
        // A child of the create request, though it outlives it: the trace
        // of a create shows the boot.
        let span = tracing::info_span!("sandbox", id = %id);
        tokio::spawn(
            async move {
                let result = manager.boot(live, options).await;
                let _ = done_tx.send(result);
            }
            .instrument(span),
        );
        match done_rx.await {
            Ok(Ok(())) => self.record(&id).await,
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ApiError::internal("the boot task ended without an answer")),
        }
    }

    async fn boot(&self, live: Arc<LiveSandbox>, options: SandboxOptions) -> Result<(), ApiError> {
        let accel = self.inner.options.accel;
        let options = SandboxOptions { accel, ..options };
        let timeout = options.timeout;
        let created = tokio::select! {
            created = Sandbox::create(&self.inner.home, self.inner.driver.as_ref(), options) => Some(created),
            _ = live.cancel_boot.cancelled() => None,
        };
        let sandbox = match created {
            Some(Ok(sandbox)) => sandbox,
            Some(Err(error)) => {
                let api_error = ApiError::from(error);
                self.record_end(
                    &live,
                    SandboxState::Failed,
                    EndReason::BootFailed,
                    &api_error.message,
                    json!({}),
                )
                .await;
                return Err(api_error);
            }
            None => {
                let message = "destroyed while booting";
                self.record_end(
                    &live,
                    SandboxState::Stopped,
                    EndReason::Destroyed,
                    message,
                    json!({}),
                )
                .await;
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "sandbox_ended",
                    format!("sandbox {} was destroyed while it booted", live.id),
                ));
            }
        };
        let info = sandbox.info().clone();
        self.inner
            .metrics
            .boot_seconds
            .observe(info.boot_ms as f64 / 1000.0);
        *live.expires_ms.lock().expect("expiry lock") =
            timeout.map(|t| now_ms() + t.as_millis() as u64);
        *live.sandbox.lock().expect("sandbox lock") = Some(sandbox.clone());
        let accel = serde_json::to_value(info.accel.accel).unwrap_or_default();
        let change = Transition {
            state: Some(SandboxState::Running),
            accelerator: accel.as_str().map(str::to_string),
            boot_ms: Some(info.boot_ms),
            ..Transition::default()
        };
        let data = json!({
            "accelerator": accel,
            "accelerator_reason": info.accel.reason,
            "boot_ms": info.boot_ms,
            "guest": info.guest,
        });
        let recorded = self.move_to(&live, change, "sandbox.running", data).await;
        let manager = self.clone();
        let monitor_live = live.clone();
        tokio::spawn(
            async move { manager.monitor(monitor_live, sandbox).await }
                .instrument(tracing::Span::current()),
        );
        recorded.map(|_| ())
    }

    /// Wait for the sandbox to end and record how.
    async fn monitor(&self, live: Arc<LiveSandbox>, sandbox: Sandbox) {
        let end: SandboxEnd = sandbox.wait().await;
        live.execs.drain(EXEC_DRAIN).await;
        if end.reason.is_failure() {
            self.inner.metrics.vm_crashes.inc();
        }
        let data = json!({
            "lifetime_ms": end.lifetime_ms,
            "console_tail": end.console_tail,
            "console_log": end.console_log,
        });
        drop(sandbox);
        self.record_end(
            &live,
            final_state(end.reason),
            end.reason,
            &end.message,
            data,
        )
        .await;
        tracing::info!(reason = %end.reason, "sandbox ended");
    }

    /// Record that `live` ended in `state` for `reason` (with `data` plus
    /// the reason and message), count it, and forget it.
    async fn record_end(
        &self,
        live: &LiveSandbox,
        state: SandboxState,
        reason: EndReason,
        message: &str,
        mut data: serde_json::Value,
    ) {
        self.inner
            .metrics
            .ends
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().into(),
            })
            .inc();
        data["reason"] = json!(reason.as_str());
        data["message"] = json!(message);
        let change = Transition {
            state: Some(state),
            end_reason: Some(reason.as_str().into()),
            end_message: Some(message.to_string()),
            ..Transition::default()
        };
        let kind = format!("sandbox.{}", state.as_str());
        if let Err(error) = self.move_to(live, change, &kind, data).await {
            tracing::error!(error = %error.message, %kind, "cannot record the end of a sandbox");
        }
        self.forget(live);
    }

    fn forget(&self, live: &LiveSandbox) {
        live.sandbox.lock().expect("sandbox lock").take();
        self.inner.live.lock().expect("live lock").remove(&live.id);
        live.ended.send_replace(true);
    }

    /// The stored record of a sandbox.
    pub async fn record(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        self.inner
            .events
            .store()
            .sandbox(id)
            .await?
            .ok_or_else(|| ApiError::sandbox_not_found(id))
    }

    /// Destroy a sandbox and return its final record. Destroying an ended
    /// sandbox returns its record unchanged.
    pub async fn destroy(&self, id: &str) -> Result<SandboxRecord, ApiError> {
        let Some(live) = self.live(id) else {
            return self.record(id).await;
        };
        match live.sandbox() {
            Some(sandbox) => {
                let change = Transition {
                    state: Some(SandboxState::Stopping),
                    ..Transition::default()
                };
                self.move_to(
                    &live,
                    change,
                    "sandbox.stopping",
                    json!({"requested_by": "api"}),
                )
                .await?;
                sandbox.destroy().await;
            }
            None => live.cancel_boot.cancel(),
        }
        live.wait_ended().await;
        self.record(id).await
    }

    /// Move a running sandbox's timeout to `timeout` from now.
    pub async fn set_timeout(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<SandboxRecord, ApiError> {
        let (live, sandbox) = self.running(id).await?;
        sandbox.set_timeout(Some(timeout))?;
        let expires = now_ms() + timeout.as_millis() as u64;
        *live.expires_ms.lock().expect("expiry lock") = Some(expires);
        let change = Transition {
            timeout_ms: Some(Some(timeout.as_millis() as u64)),
            ..Transition::default()
        };
        let data = json!({"timeout_ms": timeout.as_millis() as u64, "expires_ms": expires});
        self.move_to(&live, change, "sandbox.timeout_set", data)
            .await?;
        self.record(id).await
    }

    /// Start a command in a running sandbox.
    pub async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Arc<ExecEntry>, ApiError> {
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
            argv: options.argv.clone(),
            cwd: options.cwd.clone(),
            background: spec.background,
            started_ms: now_ms(),
            capacity: self.inner.options.exec_replay_buffer.bytes() as usize,
        };
        let env_keys: Vec<String> = options.env.keys().cloned().collect();
        let timeout_ms = options.timeout.map(|t| t.as_millis() as u64);
        let execution = sandbox.exec(options).await?;
        let context = PumpContext {
            events: self.inner.events.clone(),
            metrics: self.inner.metrics.clone(),
            detach_grace: self.inner.options.detach_grace,
        };
        let (entry, pump) = ExecEntry::start(execution, meta.clone(), context);
        live.execs.insert(entry.clone(), pump);
        self.inner
            .events
            .record_or_log(
                Some(id),
                "exec.started",
                json!({
                    "exec_id": entry.id(),
                    "argv": meta.argv,
                    "cwd": meta.cwd,
                    "env_keys": env_keys,
                    "timeout_ms": timeout_ms,
                    "background": meta.background,
                }),
            )
            .await;
        if let Some(data) = spec.stdin {
            if let Err(message) = entry.write_stdin(data, !spec.stdin_open).await {
                tracing::warn!(%message, "writing the initial stdin failed");
            }
        }
        Ok(entry)
    }

    /// Record a file operation.
    pub async fn file_event(&self, id: &str, kind: &str, data: serde_json::Value) {
        self.inner.events.record_or_log(Some(id), kind, data).await;
    }

    /// Destroy every sandbox (on server shutdown), waiting at most `grace`
    /// for each end to be recorded. New creates are refused from now on.
    pub async fn shutdown_all(&self, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let live: Vec<_> = self
            .inner
            .live
            .lock()
            .expect("live lock")
            .values()
            .cloned()
            .collect();
        let mut waits = Vec::new();
        for live in live {
            let manager = self.clone();
            waits.push(tokio::spawn(async move {
                match live.sandbox() {
                    Some(sandbox) => {
                        let change = Transition {
                            state: Some(SandboxState::Stopping),
                            ..Transition::default()
                        };
                        let _ = manager
                            .move_to(
                                &live,
                                change,
                                "sandbox.stopping",
                                json!({"requested_by": "server_shutdown"}),
                            )
                            .await;
                        // The writable layer is discarded anyway: no need
                        // for a clean power-off.
                        sandbox
                            .terminate(EndReason::HostShutdown, "the server shut down")
                            .await;
                    }
                    None => live.cancel_boot.cancel(),
                }
                let _ = tokio::time::timeout(grace, live.wait_ended()).await;
            }));
        }
        for wait in waits {
            let _ = wait.await;
        }
    }
}
