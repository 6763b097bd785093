//! A fake VM backend for tests and development: each "VM" is the guest
//! agent running on the host (`hearth-guest serve-unix`) in its own PID
//! namespace, so that killing the "VM" kills every process its commands
//! started, as a real VM's death would. It boots in milliseconds
//! and speaks the real guest protocol, so everything above the driver (the
//! sandbox lifecycle, the server's state machine, the run engine) runs for
//! real without QEMU.
//!
//! It isolates nothing: commands run on the host as the calling user. Never
//! use it to run untrusted code.
//!
//! Tests make a "VM" misbehave through [`FakeFaults`]: refuse to launch,
//! never answer (a guest stuck in boot), die at once (a guest that
//! crashes while booting), keep breaking its channel, or refuse a new
//! channel connection; kill a running one with [`FakeDriver::kill`], and
//! break its channel once with [`FakeDriver::break_channel`].
//!
//! Each channel connection runs through a relay in this process, between
//! the host's end and the agent's socket, so that a test can break it as a
//! guest writing garbage into its port would: garbage toward the host, then
//! the connection closed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{watch, Notify};

use crate::console;
use crate::driver::{BoxFuture, Driver, GuestStream, Vm, VmExit, VmSpec};
use crate::error::{Result, VmError};
use crate::qemu::find_on_path;
use crate::spawn::{spawn_owned, Confine};

/// Environment variable naming the guest agent binary the fake driver runs.
pub const FAKE_AGENT_ENV: &str = "HEARTH_FAKE_AGENT";

/// How long `connect` waits for the agent to listen.
const CONNECT_WAIT: Duration = Duration::from_secs(20);

/// Ways to make the next "VMs" misbehave.
#[derive(Debug, Default)]
pub struct FakeFaults {
    /// `launch` fails, as if the VMM could not start.
    pub fail_launch: AtomicBool,
    /// The VM runs but its agent never listens: a guest stuck in boot.
    pub hang_boot: AtomicBool,
    /// The VM dies at once, printing a kernel panic to its console.
    pub crash_boot: AtomicBool,
    /// Every channel connection opened while this is set breaks (garbage
    /// toward the host, then closed) [`BREAK_AFTER`] after it opened: a
    /// guest that keeps corrupting its channel.
    pub break_channels: AtomicBool,
    /// `connect` fails while this is set: a channel that cannot be reopened.
    pub refuse_connect: AtomicBool,
}

/// How long a channel connection lives under [`FakeFaults::break_channels`]
/// (long enough for the channel handshake on the host).
pub const BREAK_AFTER: Duration = Duration::from_millis(200);

/// What a broken channel sends the host before it closes: no HTTP/2 frame.
const GARBAGE: &[u8] = b"\xff\xff\xff\x07\x00garbage from a guest that took the agent's port\n";

/// The controls of one running "VM".
#[derive(Debug)]
struct Controls {
    kill: Arc<Notify>,
    /// Bumped to break the channel connections open now.
    breaks: watch::Sender<u64>,
}

/// The fake backend. Cheap to clone; clones share faults and VMs.
#[derive(Debug, Clone)]
pub struct FakeDriver {
    agent: PathBuf,
    unshare: PathBuf,
    faults: Arc<FakeFaults>,
    running: Arc<Mutex<HashMap<String, Controls>>>,
}

impl FakeDriver {
    /// A driver running the agent binary at `agent`.
    pub fn new(agent: impl Into<PathBuf>) -> Result<Self> {
        let agent = agent.into();
        if !agent.is_file() {
            return Err(VmError::InvalidSpec(format!(
                "guest agent binary {} not found; build it with `cargo build -p hearth-guest` or set {FAKE_AGENT_ENV}",
                agent.display()
            )));
        }
        let unshare = find_on_path("unshare").ok_or_else(|| VmError::VmmMissing {
            binary: "unshare (util-linux)".into(),
        })?;
        Ok(Self {
            agent,
            unshare,
            faults: Arc::default(),
            running: Arc::default(),
        })
    }

    /// A driver running `$HEARTH_FAKE_AGENT`, or the `hearth-guest` that
    /// cargo built next to the running test binary.
    pub fn locate() -> Result<Self> {
        Self::new(locate_agent())
    }

    /// The faults to inject into the next launches.
    pub fn faults(&self) -> &FakeFaults {
        &self.faults
    }

    /// Kill the running VM named `name` (as a VMM crash would); false when
    /// there is none.
    pub fn kill(&self, name: &str) -> bool {
        match self.running.lock().get(name) {
            Some(controls) => {
                controls.kill.notify_one();
                true
            }
            None => false,
        }
    }

    /// Break the channel connection of the running VM named `name` once, as
    /// a guest writing garbage into its port would; false when there is no
    /// such VM. The agent serves a new connection afterwards.
    pub fn break_channel(&self, name: &str) -> bool {
        match self.running.lock().get(name) {
            Some(controls) => {
                controls.breaks.send_modify(|n| *n += 1);
                true
            }
            None => false,
        }
    }

    /// Names of the VMs that run now.
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<_> = self.running.lock().keys().cloned().collect();
        names.sort();
        names
    }

    async fn boot(&self, spec: VmSpec) -> Result<FakeVm> {
        if self.faults.fail_launch.load(Ordering::SeqCst) {
            return Err(VmError::Spawn {
                binary: "fake VMM".into(),
                source: std::io::Error::other("launch failure injected by the test"),
            });
        }
        std::fs::create_dir_all(&spec.state_dir).map_err(VmError::io(format!(
            "creating {}",
            spec.state_dir.display()
        )))?;
        let socket_path = spec.state_dir.join("guest.sock");
        let console_path = spec.console_log();
        let console = std::fs::File::create(&console_path)
            .map_err(VmError::io(format!("creating {}", console_path.display())))?;
        let mut command = tokio::process::Command::new(&self.unshare);
        // A shell is PID 1 of a new PID namespace and the agent its child
        // (an agent that is PID 1 would boot a VM); --kill-child kills the
        // shell, and with it the whole namespace, when unshare dies.
        command.args(["--pid", "--fork", "--kill-child", "--"]);
        if self.faults.crash_boot.load(Ordering::SeqCst) {
            command.args([
                "sh",
                "-c",
                "echo 'Kernel panic - not syncing: injected by the test'; exit 1",
            ]);
        } else if self.faults.hang_boot.load(Ordering::SeqCst) {
            command.args(["sleep", "infinity"]);
        } else {
            command
                .args(["sh", "-c", "\"$0\" serve-unix \"$1\" & wait $!"])
                .arg(&self.agent)
                .arg(&socket_path);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(console.try_clone().map_err(VmError::io(
                format!("opening {}", console_path.display()),
            ))?))
            .stderr(Stdio::from(console));
        let mut child = spawn_owned(command, &[], Confine::default())
            .await
            .map_err(|source| VmError::Spawn {
                binary: self.unshare.display().to_string(),
                source,
            })?
            .child;
        let pid = child.id();
        let (exit_tx, exit_rx) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        let breaks = watch::channel(0).0;
        self.running.lock().insert(
            spec.name.clone(),
            Controls {
                kill: kill.clone(),
                breaks: breaks.clone(),
            },
        );
        let running = self.running.clone();
        let name = spec.name.clone();
        let kill_signal = kill.clone();
        let console_for_exit = console_path.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                _ = kill_signal.notified() => {
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            running.lock().remove(&name);
            let exit = VmExit {
                status,
                console_tail: console::tail(&console_for_exit, 400),
                vmm_stderr_tail: Vec::new(),
            };
            let _ = exit_tx.send(Some(exit));
        });
        Ok(FakeVm {
            console_log: console_path,
            spec,
            pid,
            socket_path,
            exit: exit_rx,
            kill,
            breaks,
            faults: self.faults.clone(),
        })
    }
}

impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn launch(&self, spec: VmSpec) -> BoxFuture<'_, Result<Box<dyn Vm>>> {
        Box::pin(async move { Ok(Box::new(self.boot(spec).await?) as Box<dyn Vm>) })
    }
}

/// The agent binary: `$HEARTH_FAKE_AGENT`, else `hearth-guest` in the cargo
/// target directory of the running executable (a test binary lives in
/// `target/<profile>/deps`).
pub fn locate_agent() -> PathBuf {
    if let Some(path) = std::env::var_os(FAKE_AGENT_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("hearth-guest"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("hearth-guest"))
}

/// A "VM": the agent in its PID namespace.
pub struct FakeVm {
    spec: VmSpec,
    pid: Option<u32>,
    socket_path: PathBuf,
    console_log: PathBuf,
    exit: watch::Receiver<Option<VmExit>>,
    kill: Arc<Notify>,
    breaks: watch::Sender<u64>,
    faults: Arc<FakeFaults>,
}

impl Vm for FakeVm {
    fn pid(&self) -> Option<u32> {
        if self.exit.borrow().is_some() {
            return None;
        }
        self.pid
    }

    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    fn connect(&self) -> BoxFuture<'_, Result<GuestStream>> {
        Box::pin(async move {
            // The agent binds its socket once it runs: wait for it, unless
            // the "VM" died.
            if self.faults.refuse_connect.load(Ordering::SeqCst) {
                return Err(VmError::Channel {
                    path: self.socket_path.clone(),
                    source: std::io::Error::other("connection refused by the test"),
                });
            }
            let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
            let mut exit = self.exit.clone();
            loop {
                match UnixStream::connect(&self.socket_path).await {
                    Ok(agent) => {
                        let (host, relayed) =
                            UnixStream::pair().map_err(|source| VmError::Channel {
                                path: self.socket_path.clone(),
                                source,
                            })?;
                        let keep_breaking = self.faults.break_channels.load(Ordering::SeqCst);
                        tokio::spawn(relay(
                            relayed,
                            agent,
                            self.breaks.subscribe(),
                            keep_breaking,
                        ));
                        return Ok(host);
                    }
                    Err(source) if tokio::time::Instant::now() >= deadline => {
                        return Err(VmError::Channel {
                            path: self.socket_path.clone(),
                            source,
                        })
                    }
                    Err(_) => {}
                }
                if exit.borrow_and_update().is_some() {
                    return Err(VmError::Channel {
                        path: self.socket_path.clone(),
                        source: std::io::Error::other("the VM exited"),
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = exit.changed() => {}
                }
            }
        })
    }

    fn wait(&self) -> BoxFuture<'_, VmExit> {
        let mut exit = self.exit.clone();
        Box::pin(async move {
            loop {
                if let Some(done) = exit.borrow_and_update().clone() {
                    return done;
                }
                if exit.changed().await.is_err() {
                    return exit.borrow().clone().unwrap_or(VmExit {
                        status: None,
                        console_tail: Vec::new(),
                        vmm_stderr_tail: Vec::new(),
                    });
                }
            }
        })
    }

    fn try_exit(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    fn kill(&self) {
        self.kill.notify_one();
    }

    fn console_log(&self) -> &Path {
        &self.console_log
    }
}

/// Copy bytes between the host's end of a channel connection and the
/// agent's, until either closes or the connection is broken on purpose
/// (a bump of `breaks`, or [`BREAK_AFTER`] when `keep_breaking`): then send
/// the host garbage and close both.
async fn relay(
    host: UnixStream,
    agent: UnixStream,
    mut breaks: watch::Receiver<u64>,
    keep_breaking: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut host_read, mut host_write) = host.into_split();
    let (mut agent_read, mut agent_write) = agent.into_split();
    let broken = async {
        if keep_breaking {
            tokio::time::sleep(BREAK_AFTER).await;
        } else if breaks.changed().await.is_err() {
            // The VM is gone; its agent's end closes on its own.
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(broken);
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = host_read.read(&mut up) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => if agent_write.write_all(&up[..n]).await.is_err() { break },
            },
            read = agent_read.read(&mut down) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => if host_write.write_all(&down[..n]).await.is_err() { break },
            },
            () = &mut broken => {
                let _ = host_write.write_all(GARBAGE).await;
                break;
            }
        }
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.kill.notify_one();
    }
}
