//! QEMU `microvm` backend.
//!
//! One QEMU process per VM: the kernel and initramfs boot directly (no
//! firmware), the base root filesystem is a read-only virtio-blk disk, the
//! writable layer a second virtio-blk disk, and the guest agent is reached
//! through a virtio-serial port whose host end is a Unix socket. The socket
//! is bound by us and handed to QEMU as an inherited listening fd, so a
//! connect never races QEMU's startup.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::net::UnixStream;
use tokio::sync::{watch, Notify};

use crate::accel::Accel;
use crate::cgroup::VmmCgroup;
use crate::console;
use crate::driver::{BoxFuture, Checkpoint, Driver, GuestStream, Vm, VmExit, VmSpec};
use crate::error::{Result, VmError};
use crate::jail::Jail;
use crate::qmp::Qmp;
use crate::scratch::{self, ScratchDisk};
use crate::spawn::{spawn_owned, Confine, Spawned};

/// Binary name of the x86-64 system emulator.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with NUL).
const MAX_SOCKET_PATH: usize = 107;

/// QEMU's machine-protocol socket, in the VM's state directory.
const QMP_SOCKET: &str = "qmp.sock";

/// Kernel command line every VM gets (extra arguments are appended).
pub const BASE_KERNEL_ARGS: &str = "console=ttyS0 quiet panic=-1 reboot=t";

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuDriver {
    binary: PathBuf,
    jail: Jail,
}

impl QemuDriver {
    /// Use `qemu-system-x86_64` from `PATH`.
    pub fn locate() -> Result<Self> {
        let binary = find_on_path(QEMU_BINARY).ok_or_else(|| VmError::VmmMissing {
            binary: QEMU_BINARY.into(),
        })?;
        let jail = Jail::detect(&binary);
        for line in jail.report() {
            tracing::debug!("VMM jail: {line}");
        }
        Ok(Self { binary, jail })
    }

    /// How each VMM is confined on this host.
    pub fn jail(&self) -> &Jail {
        &self.jail
    }

    /// Path of the QEMU binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// `qemu-system-x86_64 --version`, first line.
    pub fn version(&self) -> Result<String> {
        let output = std::process::Command::new(&self.binary)
            .arg("--version")
            .output()
            .map_err(|source| VmError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    }

    async fn boot(&self, spec: VmSpec) -> Result<QemuVm> {
        let started = std::time::Instant::now();
        // Files, mkfs, the sockets and the jail's plan are blocking work:
        // off the runtime.
        let Prepared {
            listener,
            qmp_listener,
            stderr,
            stderr_path,
            socket_path,
            args,
            mounts,
            cgroup,
        } = {
            let (spec, jail) = (spec.clone(), self.jail.clone());
            tokio::task::spawn_blocking(move || prepare(&spec, &jail))
                .await
                .map_err(|e| VmError::InvalidSpec(format!("VM preparation task failed: {e}")))??
        };
        let listener_fd = listener.as_raw_fd();
        let qmp_fd = qmp_listener.as_raw_fd();
        let prepared = started.elapsed();

        let mut command = tokio::process::Command::new(&self.binary);
        if self.jail.seccomp() {
            command.args(["-sandbox", crate::jail::SECCOMP_OPTION]);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let confine = Confine {
            new_netns: self.jail.network_namespace(),
            cgroup_procs: cgroup
                .as_ref()
                .map(|c| c.procs_files().to_vec())
                .unwrap_or_default(),
            mounts: mounts.map(Arc::new),
            cgroup_exit: cgroup.as_ref().map(|c| c.exit_plan()).unwrap_or_default(),
        };
        let spawned = match spawn_owned(command, &[listener_fd, qmp_fd], confine).await {
            Ok(spawned) => spawned,
            Err(source) => {
                if let Some(cgroup) = cgroup {
                    let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
                }
                return Err(VmError::Spawn {
                    binary: self.binary.display().to_string(),
                    source,
                });
            }
        };
        // QEMU holds its own copies of the listening sockets now.
        drop(listener);
        drop(qmp_listener);
        let Spawned {
            mut child,
            pid,
            pidfd,
            uid,
        } = spawned;
        tracing::debug!(
            vm = %spec.name,
            pid,
            ?uid,
            accel = %spec.accel,
            prepare_ms = prepared.as_secs_f64() * 1e3,
            spawn_ms = (started.elapsed() - prepared).as_secs_f64() * 1e3,
            "qemu started"
        );

        let (exit_tx, exit_rx) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        let kill_signal = kill.clone();
        let console_path = spec.console_log();
        let name = spec.name.clone();
        let guest_mib = spec.memory_mib;
        let memory_limit_mib =
            crate::jail::vmm_limits(&spec, self.jail.memory_overhead_mib).memory_bytes >> 20;
        // Dropped with this task (a runtime shutting down), it kills QEMU.
        let vmm = KillOnDrop(pidfd);
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                _ = kill_signal.notified() => {
                    match &vmm.0 {
                        // Kill QEMU itself: its watcher exits once it has
                        // reaped it and removed its cgroup, so the wait
                        // below sees QEMU gone.
                        Some(pidfd) => signal_pidfd(pidfd, libc::SIGKILL),
                        None => {
                            let _ = child.start_kill();
                        }
                    }
                    child.wait().await.ok()
                }
            };
            drop(vmm);
            let tails = tokio::task::spawn_blocking(move || {
                if let Some(cgroup) = cgroup {
                    if let Err(error) = cgroup.remove() {
                        tracing::warn!(%error, "removing a VMM's cgroup");
                    }
                }
                (
                    // Enough lines that a panic message followed by a long
                    // call trace and register dump is still in view.
                    console::tail(&console_path, 400),
                    console::tail(&stderr_path, 10),
                )
            })
            .await;
            let (console_tail, mut vmm_stderr_tail) = tails.unwrap_or_default();
            let status = match status {
                // The watcher's word for "QEMU was killed by its cgroup's
                // memory limit": say so, as the SIGKILL it was.
                Some(s) if s.code() == Some(crate::spawn::VMM_OOM_EXIT) => {
                    vmm_stderr_tail.push(format!(
                        "killed by the host: QEMU went over this VM's memory limit of {memory_limit_mib} MiB \
                         (the guest's {guest_mib} MiB plus {} MiB for QEMU itself; {} sets that allowance)",
                        memory_limit_mib.saturating_sub(guest_mib),
                        crate::jail::MEMORY_OVERHEAD_ENV,
                    ));
                    Some(std::os::unix::process::ExitStatusExt::from_raw(
                        libc::SIGKILL,
                    ))
                }
                other => other,
            };
            let exit = VmExit {
                status,
                console_tail,
                vmm_stderr_tail,
            };
            tracing::debug!(vm = %name, ?exit.status, "qemu exited");
            let _ = exit_tx.send(Some(exit));
        });

        let top = match &spec.scratch {
            ScratchDisk::Layered { top, .. } => Some(top.clone()),
            ScratchDisk::Ephemeral => None,
        };
        Ok(QemuVm {
            console_log: spec.console_log(),
            qmp_path: spec.state_dir.join(QMP_SOCKET),
            spec,
            pid: Mutex::new(Some(pid)),
            owner: uid,
            socket_path,
            exit: exit_rx,
            kill,
            layers: tokio::sync::Mutex::new(Layers {
                qmp: None,
                top,
                frozen: None,
            }),
        })
    }
}

impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn launch(&self, spec: VmSpec) -> BoxFuture<'_, Result<Box<dyn Vm>>> {
        Box::pin(async move { Ok(Box::new(self.boot(spec).await?) as Box<dyn Vm>) })
    }
}

/// What [`prepare`] made for one VM before QEMU starts.
struct Prepared {
    /// The guest channel's listening socket, for QEMU to inherit.
    listener: std::os::unix::net::UnixListener,
    /// The machine protocol's listening socket, for QEMU to inherit.
    qmp_listener: std::os::unix::net::UnixListener,
    /// QEMU's stderr.
    stderr: std::fs::File,
    stderr_path: PathBuf,
    socket_path: PathBuf,
    /// QEMU's command line, naming the listeners' fds.
    args: Vec<String>,
    /// The jail's mounts and user, when QEMU is confined.
    mounts: Option<crate::jail::MountPlan>,
    /// QEMU's own cgroup, when it gets one.
    cgroup: Option<VmmCgroup>,
}

/// The blocking part of a launch: check the spec, create the state
/// directory and the writable layer, bind the sockets, open the VMM's
/// log, plan its jail and cgroup, and build the command line.
fn prepare(spec: &VmSpec, jail: &Jail) -> Result<Prepared> {
    validate(spec)?;
    std::fs::create_dir_all(&spec.state_dir).map_err(VmError::io(format!(
        "creating {}",
        spec.state_dir.display()
    )))?;
    let scratch_path = match &spec.scratch {
        ScratchDisk::Ephemeral => {
            let path = spec.state_dir.join("scratch.ext4");
            scratch::create_ext4(&path, spec.disk_bytes)?;
            path
        }
        ScratchDisk::Layered { dir, top } => {
            scratch::check_layer_name(top)?;
            let path = dir.join(top);
            if !path.is_file() {
                return Err(VmError::InvalidSpec(format!(
                    "the writable layer {} does not exist",
                    path.display()
                )));
            }
            path
        }
    };
    let qmp_path = spec.state_dir.join(QMP_SOCKET);
    if qmp_path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(VmError::InvalidSpec(format!(
            "state directory path is too long for a Unix socket ({} > {MAX_SOCKET_PATH} bytes): {}; use a shorter HEARTH_HOME",
            qmp_path.as_os_str().len(),
            qmp_path.display()
        )));
    }
    let socket_path = spec.state_dir.join("guest.sock");
    if socket_path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(VmError::InvalidSpec(format!(
            "state directory path is too long for a Unix socket ({} > {MAX_SOCKET_PATH} bytes): {}; use a shorter HEARTH_HOME",
            socket_path.as_os_str().len(),
            socket_path.display()
        )));
    }
    let bind = |path: &Path| {
        let _ = std::fs::remove_file(path);
        std::os::unix::net::UnixListener::bind(path)
            .map_err(VmError::io(format!("binding {}", path.display())))
    };
    let listener = bind(&socket_path)?;
    let qmp_listener = bind(&qmp_path)?;

    let stderr_path = spec.state_dir.join("qemu.log");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(VmError::io(format!("creating {}", stderr_path.display())))?;
    let args = qemu_args(
        spec,
        &scratch_path,
        listener.as_raw_fd(),
        qmp_listener.as_raw_fd(),
    );
    let mounts = match &jail.confinement {
        Ok(confinement) => Some(confinement.plan(spec, &scratch_path)?),
        Err(_) => None,
    };
    let cgroup = match &jail.cgroup {
        Ok(layout) => Some(VmmCgroup::create(
            layout,
            &spec.name,
            &crate::jail::vmm_limits(spec, jail.memory_overhead_mib),
        )?),
        Err(_) => None,
    };
    Ok(Prepared {
        listener,
        qmp_listener,
        stderr,
        stderr_path,
        socket_path,
        args,
        mounts,
        cgroup,
    })
}

fn validate(spec: &VmSpec) -> Result<()> {
    if spec.vcpus == 0 {
        return Err(VmError::InvalidSpec("vcpus must be at least 1".into()));
    }
    if spec.vcpus > 64 {
        return Err(VmError::InvalidSpec(format!(
            "vcpus {} exceeds the maximum of 64",
            spec.vcpus
        )));
    }
    if spec.memory_mib < 128 {
        return Err(VmError::InvalidSpec(format!(
            "memory {} MiB is below the 128 MiB minimum the guest needs",
            spec.memory_mib
        )));
    }
    for (what, path) in [
        ("kernel", &spec.kernel),
        ("initramfs", &spec.initramfs),
        ("root filesystem", &spec.rootfs),
    ] {
        if !path.is_file() {
            return Err(VmError::InvalidSpec(format!(
                "{what} {} does not exist; run `hearth image build`",
                path.display()
            )));
        }
    }
    Ok(())
}

/// QEMU's command line for `spec`, with the guest channel served on the
/// inherited listening socket `listener_fd` and the machine protocol on
/// `qmp_fd` (inherited too, so a jailed QEMU needs no writable directory).
pub fn qemu_args(spec: &VmSpec, scratch: &Path, listener_fd: i32, qmp_fd: i32) -> Vec<String> {
    let mut append = BASE_KERNEL_ARGS.to_string();
    if spec.accel == Accel::Tcg {
        // Under TCG the guest finds no PIT/HPET to calibrate its TSC against
        // and hangs in early boot; tell it the (host-derived) TSC rate.
        append.push_str(&format!(" tsc_early_khz={}", host_tsc_khz()));
    }
    for arg in &spec.kernel_args {
        append.push(' ');
        append.push_str(arg);
    }
    let accel = match spec.accel {
        Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
        Accel::Tcg => vec!["-accel".into(), "tcg,thread=multi".into()],
    };
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("hearth-{},process=hearth-{}", spec.name, spec.name),
        "-M".into(),
        "microvm,acpi=on".into(),
    ];
    args.extend(accel);
    args.extend([
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-chardev".into(),
        format!("file,id=console,path={}", spec.console_log().display()),
        "-serial".into(),
        "chardev:console".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initramfs.display().to_string(),
        "-append".into(),
        append,
        // Base image first: the guest sees it as /dev/vda.
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=root,readonly=on",
            spec.rootfs.display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=root,serial=hearth-root".into(),
        "-drive".into(),
        format!(
            "file={},format={},if=none,id=scratch,cache=unsafe,discard={}",
            scratch.display(),
            match spec.scratch {
                ScratchDisk::Ephemeral => "raw",
                ScratchDisk::Layered { .. } => "qcow2",
            },
            // A fresh layer is allocated in full so that a guest fills only
            // its own disk: the guest's TRIM must not give blocks back. A
            // durable layer is qcow2 and shrinks by them.
            match spec.scratch {
                ScratchDisk::Ephemeral => "ignore",
                ScratchDisk::Layered { .. } => "unmap",
            }
        ),
        "-device".into(),
        "virtio-blk-device,drive=scratch,serial=hearth-scratch".into(),
        "-device".into(),
        "virtio-serial-device,max_ports=2".into(),
        "-chardev".into(),
        format!("socket,id=guest,fd={listener_fd},server=on,wait=off"),
        "-device".into(),
        format!(
            "virtserialport,chardev=guest,name={}",
            hearth_proto::GUEST_PORT_NAME
        ),
        // The machine protocol, for checkpoints of the writable layer.
        "-chardev".into(),
        format!("socket,id=qmp,fd={qmp_fd},server=on,wait=off"),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-object".into(),
        "rng-random,id=rng,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-device,rng=rng".into(),
    ]);
    args
}

/// The host's TSC rate in kHz (TCG's guest TSC runs at the host's rate), from
/// `/proc/cpuinfo`; 2 GHz when unknown.
pub fn host_tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| parse_cpu_mhz(&text))
        .map(|mhz| (mhz * 1000.0) as u64)
        .filter(|&khz| khz > 100_000)
        .unwrap_or(2_000_000)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<f64> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// The first `binary` in the directories of `PATH`.
pub fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// A VM run by a QEMU process.
pub struct QemuVm {
    spec: VmSpec,
    pid: Mutex<Option<u32>>,
    /// The jailed QEMU's uid and gid: new layers are handed to it.
    owner: Option<u32>,
    socket_path: PathBuf,
    qmp_path: PathBuf,
    console_log: PathBuf,
    exit: watch::Receiver<Option<VmExit>>,
    kill: Arc<Notify>,
    layers: tokio::sync::Mutex<Layers>,
}

/// The state of a layered writable disk, behind one lock so checkpoints
/// run one at a time.
#[derive(Debug)]
struct Layers {
    /// The machine-protocol connection, once opened.
    qmp: Option<Qmp>,
    /// The writable top layer's name, for a layered disk.
    top: Option<String>,
    /// The layer the last checkpoint froze, and the guest's bytes written
    /// to the disk by then.
    frozen: Option<(String, u64)>,
}

impl QemuVm {
    async fn checkpoint_layers(&self, next: &str) -> Result<Checkpoint> {
        let ScratchDisk::Layered { dir, .. } = &self.spec.scratch else {
            return Err(VmError::Unsupported(
                "this VM's writable layer is ephemeral: only a durable workspace (a layered disk) can be checkpointed".into(),
            ));
        };
        scratch::check_layer_name(next)?;
        let mut layers = self.layers.lock().await;
        if layers.qmp.is_none() {
            layers.qmp = Some(Qmp::connect(&self.qmp_path).await?);
        }
        let written = {
            let qmp = layers.qmp.as_mut().expect("connected above");
            let stats = qmp.execute("query-blockstats", None).await?;
            stats
                .as_array()
                .and_then(|all| all.iter().find(|d| d["device"] == "scratch"))
                .and_then(|d| d["stats"]["wr_bytes"].as_u64())
                .ok_or_else(|| VmError::Qmp {
                    path: self.qmp_path.clone(),
                    message: format!("no write statistics for the writable disk in {stats}"),
                })?
        };
        if let Some((layer, at)) = &layers.frozen {
            if *at == written {
                return Ok(Checkpoint::Unchanged {
                    layer: layer.clone(),
                });
            }
        }
        let top = layers.top.clone().expect("a layered disk has a top");
        {
            let (dir, next, top) = (dir.clone(), next.to_string(), top.clone());
            let owner = self.owner;
            tokio::task::spawn_blocking(move || {
                scratch::create_overlay(&dir, &next, &top)?;
                if let Some(uid) = owner {
                    let path = dir.join(&next);
                    std::os::unix::fs::chown(&path, Some(uid), Some(uid)).map_err(VmError::io(
                        format!("handing {} to the VMM", path.display()),
                    ))?;
                }
                Ok::<_, VmError>(())
            })
            .await
            .map_err(|e| VmError::Unsupported(format!("the layer task failed: {e}")))??;
        }
        let snapshot = serde_json::json!({
            "device": "scratch",
            "snapshot-file": dir.join(next).display().to_string(),
            "format": "qcow2",
            "mode": "existing",
        });
        let qmp = layers.qmp.as_mut().expect("connected above");
        if let Err(error) = qmp.execute("blockdev-snapshot-sync", Some(snapshot)).await {
            let _ = std::fs::remove_file(dir.join(next));
            return Err(error);
        }
        // QEMU writes to `next` from now on, whatever happens below.
        layers.top = Some(next.to_string());
        // The frozen layer is what a relaunch boots on: on disk before the
        // checkpoint counts (the writable drive skips flushes).
        let frozen = dir.join(&top);
        tokio::task::spawn_blocking(move || std::fs::File::open(&frozen)?.sync_all())
            .await
            .map_err(|e| VmError::Unsupported(format!("the sync task failed: {e}")))?
            .map_err(VmError::io(format!("syncing the layer {top}")))?;
        layers.frozen = Some((top.clone(), written));
        Ok(Checkpoint::Frozen { layer: top })
    }
}

impl Vm for QemuVm {
    fn pid(&self) -> Option<u32> {
        if self.exit.borrow().is_some() {
            return None;
        }
        *self.pid.lock()
    }

    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    fn connect(&self) -> BoxFuture<'_, Result<GuestStream>> {
        Box::pin(async move {
            UnixStream::connect(&self.socket_path)
                .await
                .map_err(|source| VmError::Channel {
                    path: self.socket_path.clone(),
                    source,
                })
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
                    // The monitor task is gone without reporting: treat as dead.
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

    fn checkpoint<'a>(&'a self, next: &'a str) -> BoxFuture<'a, Result<Checkpoint>> {
        Box::pin(self.checkpoint_layers(next))
    }
}

/// A jailed QEMU's pidfd: dropping it kills QEMU, whose watcher then
/// cleans up after it.
struct KillOnDrop(Option<std::os::fd::OwnedFd>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pidfd) = &self.0 {
            signal_pidfd(pidfd, libc::SIGKILL);
        }
    }
}

/// Send `signal` to the process behind `pidfd`.
#[allow(unsafe_code)]
fn signal_pidfd(pidfd: &std::os::fd::OwnedFd, signal: libc::c_int) {
    // SAFETY: pidfd_send_signal takes an open pidfd (borrowed for the call),
    // a signal number and null info; it touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.kill.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            name: "sb-1".into(),
            state_dir: "/state".into(),
            kernel: "/img/vmlinuz".into(),
            initramfs: "/img/initramfs.cpio.gz".into(),
            rootfs: "/img/rootfs.ext4".into(),
            disk_bytes: 1 << 30,
            vcpus: 2,
            memory_mib: 256,
            accel,
            kernel_args: vec!["hearth.debug=1".into()],
            scratch: ScratchDisk::Ephemeral,
        }
    }

    #[test]
    fn command_line_has_read_only_base_and_inherited_channel() {
        let args = qemu_args(&spec(Accel::Tcg), Path::new("/state/scratch.ext4"), 7, 8).join(" ");
        assert!(
            args.contains("file=/img/rootfs.ext4,format=raw,if=none,id=root,readonly=on"),
            "{args}"
        );
        assert!(
            args.contains("socket,id=guest,fd=7,server=on,wait=off"),
            "{args}"
        );
        assert!(args.contains("-smp 2 -m 256M"), "{args}");
        assert!(args.contains("tcg,thread=multi"), "{args}");
        assert!(args.contains("tsc_early_khz="), "{args}");
        assert!(args.contains("hearth.debug=1"), "{args}");
        assert!(
            args.contains("socket,id=qmp,fd=8,server=on,wait=off"),
            "{args}"
        );
        let kvm = qemu_args(&spec(Accel::Kvm), Path::new("/s"), 7, 8).join(" ");
        assert!(
            kvm.contains("-accel kvm -cpu host") && !kvm.contains("tsc_early_khz"),
            "{kvm}"
        );
    }

    #[test]
    fn parses_cpu_mhz() {
        assert_eq!(
            parse_cpu_mhz("processor : 0\ncpu MHz\t\t: 2445.426\n"),
            Some(2445.426)
        );
        assert_eq!(parse_cpu_mhz("nothing"), None);
    }

    #[test]
    fn invalid_specs_are_refused() {
        let mut s = spec(Accel::Tcg);
        s.vcpus = 0;
        assert!(validate(&s).unwrap_err().to_string().contains("vcpus"));
        let mut s = spec(Accel::Tcg);
        s.memory_mib = 64;
        assert!(validate(&s).unwrap_err().to_string().contains("128 MiB"));
    }
}
