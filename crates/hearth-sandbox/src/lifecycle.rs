//! A sandbox's life: boot, serve, end with a recorded reason, leave nothing.
//!
//! A [`Sandbox`] owns one VM. A monitor task watches the VM process and the
//! sandbox's deadline; whatever ends the VM (a destroy, the timeout, a guest
//! panic, a VMM crash, the host shutting down), the monitor records one
//! [`SandboxEnd`] with the reason, keeps the console log if the end was
//! abnormal, and removes the state directory. Dropping the last handle
//! destroys the sandbox.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use hearth_proto::{GuestInfo, Hello, PROTOCOL_VERSION};
use hearth_vm::procfs::ProcessId;
use hearth_vm::{AccelChoice, Driver, Vm, VmSpec};

use crate::channel::{keep_channel, ClientSlot};
use crate::client::GuestClient;
use crate::end::{classify, human_duration, EndReason, SandboxEnd};
use crate::error::{Result, SandboxError};
use crate::home::HearthHome;
use crate::ids::random_hex;
use crate::options::{deadline_after, SandboxOptions};
use crate::registry::{keep_console_log, now_ms, OwnerRecord};

/// Facts about a running sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub id: String,
    /// Accelerator and why.
    pub accel: AccelChoice,
    /// What the guest agent reported at boot.
    pub guest: GuestInfo,
    /// Milliseconds from the create call to the guest answering.
    pub boot_ms: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// State shared between the handles, the monitor and the channel keeper.
pub(crate) struct Shared {
    /// What the host asked for, recorded before it kills the VM, so the
    /// monitor reports the cause instead of "VM crashed".
    pub(crate) requested_end: Mutex<Option<(EndReason, String)>>,
    /// When the sandbox times out, and the timeout it was given.
    deadline: watch::Sender<Option<(Instant, Duration)>>,
    pub(crate) end: watch::Sender<Option<SandboxEnd>>,
    /// How often the channel keeper reconnected after a break.
    pub(crate) channel_reconnects: AtomicU64,
}

struct Inner {
    id: String,
    options: SandboxOptions,
    info: SandboxInfo,
    vm: Arc<dyn Vm>,
    /// The connection to the guest agent; the channel keeper replaces it
    /// after a break.
    client: Arc<ClientSlot>,
    shared: Arc<Shared>,
    exec_counter: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can use this VM any more.
        request_end(
            &self.shared,
            EndReason::Destroyed,
            "the last handle was dropped",
        );
        self.vm.kill();
    }
}

/// A running sandbox: one microVM with a guest agent. Cheap to clone; all
/// clones share the VM, which is destroyed when the last clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl Shared {
    /// Move the deadline to `timeout` from now; the monitor follows.
    fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = lifetime_deadline(timeout)?;
        self.deadline.send_replace(deadline);
        Ok(())
    }
}

/// Record why the host is ending the sandbox (the first reason wins); the
/// caller then kills the VM.
pub(crate) fn request_end(shared: &Shared, reason: EndReason, message: &str) {
    let mut requested = shared.requested_end.lock();
    if requested.is_none() {
        *requested = Some((reason, message.to_string()));
    }
}

/// A fresh sandbox id: `sb-` and 12 random hex digits.
///
/// # Panics
///
/// If the operating system's random number generator fails (see
/// [`random_hex`]).
pub fn new_sandbox_id() -> String {
    format!("sb-{}", random_hex(6))
}

impl Sandbox {
    /// Boot a sandbox and wait until its guest agent answers.
    pub async fn create(
        home: &HearthHome,
        driver: &dyn Driver,
        options: SandboxOptions,
    ) -> Result<Sandbox> {
        Self::create_with_id(home, driver, new_sandbox_id(), options).await
    }

    /// [`Sandbox::create`] with an id chosen by the caller (a server that
    /// recorded the sandbox before booting it), so that the VM, its files
    /// and its hostname carry the id the caller knows it by. The id must be
    /// 1 to 64 lowercase letters, digits and `-`.
    pub async fn create_with_id(
        home: &HearthHome,
        driver: &dyn Driver,
        id: String,
        options: SandboxOptions,
    ) -> Result<Sandbox> {
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(SandboxError::InvalidOption(format!(
                "sandbox id {id:?} is not valid: use 1 to 64 lowercase letters, digits and '-'"
            )));
        }
        options.validate()?;
        let started = Instant::now();
        let (image, accel) = {
            let dir = home.images_dir().to_path_buf();
            let name = options.image.clone();
            let preference = options.accel;
            blocking("looking up the image and accelerator", move || {
                let image = hearth_image::open(&dir, &name)?;
                Ok((image, hearth_vm::accel::detect(preference)?))
            })
            .await?
        };
        let span = tracing::info_span!("sandbox", id = %id);
        Self::boot(home, driver, options, image, accel, id, started)
            .instrument(span)
            .await
    }

    async fn boot(
        home: &HearthHome,
        driver: &dyn Driver,
        options: SandboxOptions,
        image: hearth_image::Image,
        accel: AccelChoice,
        id: String,
        started: Instant,
    ) -> Result<Sandbox> {
        tracing::info!(accel = %accel.accel, vcpus = options.vcpus, memory = %options.memory, disk = %options.disk, "creating sandbox");

        let state_dir = home.sandboxes_dir().join(&id);
        // Until the monitor owns the directory, a create cut short (a
        // destroy during boot drops this future) removes it.
        let dir_guard = StateDirGuard::new(state_dir.clone());
        let record = {
            let (state_dir, id, home) = (state_dir.clone(), id.clone(), home.clone());
            let dropped = dir_guard.dropped.clone();
            blocking("creating the sandbox state directory", move || {
                home.create_private_dir(&state_dir)
                    .map_err(SandboxError::io(format!(
                        "creating {}",
                        state_dir.display()
                    )))?;
                let record = OwnerRecord::new(&id);
                if let Err(e) = record.save(&state_dir) {
                    let _ = std::fs::remove_dir_all(&state_dir);
                    return Err(e);
                }
                // The create was dropped while this ran: nobody else will
                // remove what was just made.
                if dropped.load(Ordering::SeqCst) {
                    let _ = std::fs::remove_dir_all(&state_dir);
                }
                Ok(record)
            })
            .await?
        };

        let spec = VmSpec {
            name: id.clone(),
            state_dir: state_dir.clone(),
            kernel: image.kernel(),
            initramfs: image.initramfs(),
            rootfs: image.rootfs(),
            disk_bytes: options.disk.bytes(),
            vcpus: options.vcpus,
            memory_mib: options.memory.as_mib(),
            accel: accel.accel,
            kernel_args: Vec::new(),
            scratch: options.scratch.clone(),
        };
        let vm: Arc<dyn Vm> = match driver.launch(spec).await {
            Ok(vm) => Arc::from(vm),
            Err(e) => {
                let state_dir = state_dir.clone();
                let _ =
                    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&state_dir)).await;
                return Err(e.into());
            }
        };
        {
            let mut record = record.clone();
            let (state_dir, vmm_pid) = (state_dir.clone(), vm.pid());
            let saved = blocking("recording the VMM process", move || {
                record.vmm = vmm_pid.and_then(ProcessId::of);
                record.save(&state_dir)
            })
            .await;
            if let Err(error) = saved {
                tracing::warn!(%error, "could not record the VMM process");
            }
        }

        let shared = Arc::new(Shared {
            requested_end: Mutex::new(None),
            // The lifetime counts from when the sandbox is ready, not from
            // the start of a (slow, under TCG) boot.
            deadline: watch::channel(None).0,
            end: watch::channel(None).0,
            channel_reconnects: AtomicU64::new(0),
        });
        tokio::spawn(
            monitor(
                vm.clone(),
                shared.clone(),
                home.clone(),
                id.clone(),
                state_dir,
                started,
            )
            .in_current_span(),
        );
        // The monitor removes the directory once the VM has exited.
        dir_guard.disarm();

        let guard = BootGuard {
            vm: vm.clone(),
            shared: shared.clone(),
            armed: true,
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            unix_time_ms: now_ms(),
            hostname: id.clone(),
            pids_max: options.pids_max,
            agent_reserve_mib: options.agent_reserve_mib(),
            privileged: options.privileged,
        };
        let boot = async {
            let stream = vm.connect().await?;
            let client = GuestClient::connect(stream).await?;
            let guest = client.hello(&hello).await?;
            Ok::<_, SandboxError>((client, guest))
        };
        let mut end_rx = shared.end.subscribe();
        let outcome = tokio::select! {
            result = tokio::time::timeout(options.boot_timeout, boot) => match result {
                Ok(Ok(ok)) => Ok(ok),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("the guest agent did not answer within {}s", options.boot_timeout.as_secs())),
            },
            end = wait_end(&mut end_rx) => Err(format!("the VM stopped during boot: {}", end.message)),
        };
        let (client, guest) = match outcome {
            Ok(ok) => ok,
            Err(message) => {
                request_end(&shared, EndReason::BootFailed, &message);
                vm.kill();
                let end = wait_end(&mut end_rx).await;
                return Err(SandboxError::BootFailed {
                    id,
                    message: match &end.console_log {
                        Some(log) => format!(
                            "{message} (console log: {} in the Hearth home)",
                            crate::registry::console_log_name(log)
                        ),
                        None => message,
                    },
                    console_tail: end.console_tail,
                });
            }
        };
        if !options.privileged && !guest.workload_isolation {
            // An agent from before workload isolation runs execs with full
            // root: say so rather than let the sandbox look confined.
            tracing::warn!(
                agent_version = %guest.agent_version,
                "this image's guest agent does not isolate workloads: execs run with full root \
                 and can reach the agent and its cgroups; rebuild the image with `hearth image build`"
            );
        }
        if guest.protocol_version != PROTOCOL_VERSION {
            let message = format!(
                "guest agent speaks protocol {} but this host speaks {PROTOCOL_VERSION}; rebuild the image with `hearth image build`",
                guest.protocol_version
            );
            request_end(&shared, EndReason::BootFailed, &message);
            vm.kill();
            let end = wait_end(&mut end_rx).await;
            return Err(SandboxError::BootFailed {
                id,
                message,
                console_tail: end.console_tail,
            });
        }
        let boot_ms = started.elapsed().as_millis() as u64;
        tracing::info!(boot_ms, kernel = %guest.kernel_release, "sandbox ready");
        let info = SandboxInfo {
            id: id.clone(),
            accel,
            guest,
            boot_ms,
            created_unix_ms: record.created_unix_ms,
        };
        // Validated already; an error here drops the armed guard, which
        // kills the VM.
        let deadline = lifetime_deadline(options.timeout)?;
        let mut guard = guard;
        guard.armed = false;
        shared.deadline.send_replace(deadline);
        let client = Arc::new(ClientSlot::new(client));
        // Like the monitor, the keeper holds no handle: dropping the last
        // one still destroys the sandbox, which ends the keeper.
        tokio::spawn(keep_channel(vm.clone(), shared.clone(), client.clone()).in_current_span());
        Ok(Sandbox {
            inner: Arc::new(Inner {
                id,
                options,
                info,
                vm,
                client,
                shared,
                exec_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Facts about the sandbox.
    pub fn info(&self) -> &SandboxInfo {
        &self.inner.info
    }

    /// The options it was created with.
    pub fn options(&self) -> &SandboxOptions {
        &self.inner.options
    }

    /// PID of the VMM process, while it runs.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.inner.vm.pid()
    }

    pub(crate) fn vm(&self) -> &dyn Vm {
        self.inner.vm.as_ref()
    }

    /// A connection to the guest agent (a cheap clone): the current one,
    /// or after a channel break the one the keeper swaps in.
    pub(crate) async fn client(&self) -> GuestClient {
        self.inner.client.live().await
    }

    /// The channel the keeper replaces after a break.
    pub(crate) fn client_slot(&self) -> Arc<ClientSlot> {
        self.inner.client.clone()
    }

    /// Follows the sandbox's end.
    pub(crate) fn end_watch(&self) -> watch::Receiver<Option<SandboxEnd>> {
        self.inner.shared.end.subscribe()
    }

    /// Whether the host channel to the guest agent is open now (it is not
    /// for a moment after a break, while the host reconnects).
    pub fn channel_open(&self) -> bool {
        self.inner.client.get().is_open()
    }

    /// How often the host reconnected to the guest agent after its channel
    /// broke (see [`crate::channel`]).
    pub fn channel_reconnects(&self) -> u64 {
        self.inner.shared.channel_reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn next_exec_id(&self) -> String {
        format!(
            "x{}",
            self.inner.exec_counter.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// How the sandbox ended, if it has.
    pub fn end(&self) -> Option<SandboxEnd> {
        self.inner.shared.end.borrow().clone()
    }

    /// Wait until the sandbox has ended (and its files are removed).
    pub async fn wait(&self) -> SandboxEnd {
        wait_end(&mut self.inner.shared.end.subscribe()).await
    }

    /// Move the deadline to `timeout` from now (or remove it with `None`).
    /// A zero timeout or one over [`MAX_TIMEOUT`](crate::options::MAX_TIMEOUT)
    /// is refused, leaving the deadline as it was.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.inner.shared.set_timeout(timeout)
    }

    /// Kill the VM, record `reason`, remove every file the sandbox created,
    /// and return how it ended. Idempotent: later calls return the first end.
    pub async fn terminate(&self, reason: EndReason, message: &str) -> SandboxEnd {
        request_end(&self.inner.shared, reason, message);
        self.inner.vm.kill();
        self.wait().await
    }

    /// Destroy the sandbox on request.
    pub async fn destroy(&self) -> SandboxEnd {
        self.terminate(EndReason::Destroyed, "destroyed on request")
            .await
    }

    /// Ask the guest to power off cleanly; kill it if it has not within
    /// `grace`.
    pub async fn shutdown(&self, grace: Duration) -> SandboxEnd {
        request_end(
            &self.inner.shared,
            EndReason::Exited,
            "shut down on request",
        );
        if self.client().await.shutdown().await.is_ok() {
            if let Ok(end) = tokio::time::timeout(grace, self.wait()).await {
                return end;
            }
        }
        self.inner.vm.kill();
        self.wait().await
    }

    /// Turn a broken-stream error into [`SandboxError::Ended`] when the cause
    /// is that the sandbox ended.
    pub(crate) async fn explain(&self, error: SandboxError) -> SandboxError {
        if !matches!(
            error,
            SandboxError::Protocol(_) | SandboxError::Timeout { .. }
        ) {
            return error;
        }
        if self.inner.vm.try_exit().is_none() && self.end().is_none() {
            // The VM still runs: give the monitor a moment in case it is
            // just being killed.
            let quick = tokio::time::timeout(Duration::from_millis(300), self.wait()).await;
            return match quick {
                Ok(end) => SandboxError::Ended(end),
                Err(_) => error,
            };
        }
        match tokio::time::timeout(Duration::from_secs(10), self.wait()).await {
            Ok(end) => SandboxError::Ended(end),
            Err(_) => error,
        }
    }
}

/// The deadline of a sandbox lifetime of `timeout` starting now, and the
/// timeout itself (for the end message); `None` for no limit.
fn lifetime_deadline(timeout: Option<Duration>) -> Result<Option<(Instant, Duration)>> {
    timeout
        .map(|t| deadline_after("timeout", t).map(|at| (at, t)))
        .transpose()
}

/// Run blocking filesystem or process work (`what`) off the async runtime.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SandboxError::Io {
            context: format!("{what} failed"),
            source: std::io::Error::other(e),
        })?
}

/// Kills the VM if `create` fails or is cancelled before it returns.
struct BootGuard {
    vm: Arc<dyn Vm>,
    shared: Arc<Shared>,
    armed: bool,
}

/// Removes a sandbox's state directory when a create is dropped before
/// its monitor took the directory over.
struct StateDirGuard {
    path: PathBuf,
    /// Set when the guard is dropped armed, for the blocking task that may
    /// still be creating the directory.
    dropped: Arc<AtomicBool>,
    armed: bool,
}

impl StateDirGuard {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            dropped: Arc::new(AtomicBool::new(false)),
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for StateDirGuard {
    fn drop(&mut self) {
        if self.armed {
            self.dropped.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Drop for BootGuard {
    fn drop(&mut self) {
        if self.armed {
            request_end(
                &self.shared,
                EndReason::BootFailed,
                "creation was cancelled",
            );
            self.vm.kill();
        }
    }
}

/// Wait until the monitor has recorded the sandbox's end.
pub(crate) async fn wait_end(rx: &mut watch::Receiver<Option<SandboxEnd>>) -> SandboxEnd {
    loop {
        if let Some(end) = rx.borrow_and_update().clone() {
            return end;
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone().unwrap_or_else(|| SandboxEnd {
                reason: EndReason::VmCrashed,
                message: "the sandbox monitor stopped unexpectedly".into(),
                console_tail: Vec::new(),
                console_log: None,
                lifetime_ms: 0,
            });
        }
    }
}

/// Watch the VM and the deadline; record the end; clean up.
async fn monitor(
    vm: Arc<dyn Vm>,
    shared: Arc<Shared>,
    home: HearthHome,
    id: String,
    state_dir: PathBuf,
    started: Instant,
) {
    let mut deadline_rx = shared.deadline.subscribe();
    let exit = loop {
        let deadline = *deadline_rx.borrow_and_update();
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            exit = vm.wait() => break exit,
            _ = sleep => {
                let limit = deadline.map(|(_, limit)| limit).unwrap_or_default();
                request_end(&shared, EndReason::TimedOut, &format!(
                    "the sandbox ran past its {} timeout and was killed",
                    human_duration(limit)
                ));
                vm.kill();
                break vm.wait().await;
            }
            changed = deadline_rx.changed() => {
                if changed.is_err() {
                    break vm.wait().await;
                }
            }
        }
    };
    let requested = shared.requested_end.lock().clone();
    let mut end = classify(&exit, requested);
    end.lifetime_ms = started.elapsed().as_millis() as u64;
    let failed = end.reason.is_failure();
    if failed {
        let tail = &exit.console_tail;
        end.console_tail = tail[tail.len().saturating_sub(40)..].to_vec();
    }
    let cleanup = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let console_log = failed
                .then(|| keep_console_log(&home, &id, &state_dir))
                .flatten();
            if let Err(error) = std::fs::remove_dir_all(&state_dir) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(sandbox = %id, %error, "could not remove sandbox state directory");
                }
            }
            console_log
        })
    };
    match cleanup.await {
        Ok(console_log) => end.console_log = console_log,
        Err(error) => tracing::warn!(sandbox = %id, %error, "the state directory cleanup failed"),
    }
    // Callers get the end too; logging failures louder than info would make
    // every CLI error print twice.
    tracing::info!(sandbox = %id, reason = %end.reason, message = %end.message, "sandbox ended");
    shared.end.send_replace(Some(end));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    use hearth_vm::driver::BoxFuture;
    use hearth_vm::{Accel, GuestStream, VmExit, VmSpec};

    /// A VM that runs until it is killed.
    struct FakeVm {
        spec: VmSpec,
        killed: AtomicBool,
        exit: watch::Sender<Option<VmExit>>,
    }

    impl FakeVm {
        fn new(state_dir: &Path) -> Self {
            Self {
                spec: VmSpec {
                    name: "sb-fake".into(),
                    state_dir: state_dir.to_path_buf(),
                    kernel: PathBuf::new(),
                    initramfs: PathBuf::new(),
                    rootfs: PathBuf::new(),
                    disk_bytes: 0,
                    vcpus: 1,
                    memory_mib: 128,
                    accel: Accel::Tcg,
                    kernel_args: Vec::new(),
                    scratch: hearth_vm::ScratchDisk::Ephemeral,
                },
                killed: AtomicBool::new(false),
                exit: watch::channel(None).0,
            }
        }

        fn killed(&self) -> bool {
            self.killed.load(Ordering::SeqCst)
        }
    }

    impl Vm for FakeVm {
        fn pid(&self) -> Option<u32> {
            None
        }
        fn spec(&self) -> &VmSpec {
            &self.spec
        }
        fn connect(&self) -> BoxFuture<'_, hearth_vm::Result<GuestStream>> {
            Box::pin(async { Err(hearth_vm::VmError::InvalidSpec("fake VM".into())) })
        }
        fn wait(&self) -> BoxFuture<'_, VmExit> {
            let mut exit = self.exit.subscribe();
            Box::pin(async move {
                let exit = exit.wait_for(Option::is_some).await.expect("fake VM");
                exit.clone().expect("exited")
            })
        }
        fn try_exit(&self) -> Option<VmExit> {
            self.exit.borrow().clone()
        }
        fn kill(&self) {
            self.killed.store(true, Ordering::SeqCst);
            self.exit.send_replace(Some(VmExit {
                status: None,
                console_tail: Vec::new(),
                vmm_stderr_tail: Vec::new(),
            }));
        }
        fn console_log(&self) -> &Path {
            Path::new("/nonexistent/console.log")
        }
    }

    /// The monitor on a fake VM, with the sandbox's lifetime started.
    fn watched(timeout: Duration) -> (tempfile::TempDir, Arc<FakeVm>, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let home = HearthHome::at(dir.path());
        let state_dir = home.sandboxes_dir().join("sb-fake");
        std::fs::create_dir_all(&state_dir).unwrap();
        let vm = Arc::new(FakeVm::new(&state_dir));
        let shared = Arc::new(Shared {
            requested_end: Mutex::new(None),
            deadline: watch::channel(None).0,
            end: watch::channel(None).0,
            channel_reconnects: AtomicU64::new(0),
        });
        shared.set_timeout(Some(timeout)).unwrap();
        tokio::spawn(monitor(
            vm.clone(),
            shared.clone(),
            home,
            "sb-fake".into(),
            state_dir,
            Instant::now(),
        ));
        (dir, vm, shared)
    }

    // Time is paused: sleeps advance a virtual clock, instantly and exactly.

    #[tokio::test(start_paused = true)]
    async fn the_monitor_kills_at_the_deadline_and_says_why() {
        let (_dir, vm, shared) = watched(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert!(!vm.killed(), "killed before the deadline");
        let end = wait_end(&mut shared.end.subscribe()).await;
        assert!(vm.killed());
        assert_eq!(end.reason, EndReason::TimedOut, "{end}");
        assert!(end.message.contains("10s timeout"), "{end}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_extended_timeout_moves_the_kill() {
        let (_dir, vm, shared) = watched(Duration::from_secs(2));
        // Let the monitor arm the original deadline first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        shared.set_timeout(Some(Duration::from_secs(120))).unwrap();
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert!(!vm.killed(), "killed at the original deadline");
        let end = wait_end(&mut shared.end.subscribe()).await;
        assert_eq!(end.reason, EndReason::TimedOut, "{end}");
        assert!(end.message.contains("2m timeout"), "{end}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_timeout_leaves_the_deadline_alone() {
        let (_dir, vm, shared) = watched(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(shared.set_timeout(Some(Duration::MAX)).is_err());
        assert!(shared.set_timeout(Some(Duration::ZERO)).is_err());
        tokio::time::sleep(Duration::from_millis(3_999)).await;
        assert!(!vm.killed());
        let end = wait_end(&mut shared.end.subscribe()).await;
        assert!(end.message.contains("5s timeout"), "{end}");
    }

    #[test]
    fn a_huge_lifetime_is_refused_not_overflowed() {
        let err = lifetime_deadline(Some(Duration::MAX))
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout must be at most 30 days"), "{err}");
        assert_eq!(lifetime_deadline(None).unwrap(), None);
        let (at, limit) = lifetime_deadline(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        assert_eq!(limit, Duration::from_secs(5));
        assert!(at > Instant::now());
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_sandbox_id(), new_sandbox_id());
        assert_eq!(new_sandbox_id().len(), 15);
    }
}
