//! The VMM-independent view of a VM: what to boot, how to reach the guest,
//! how it ended. A backend (QEMU today; Firecracker or Cloud Hypervisor
//! later) implements [`Driver`] and [`Vm`] in one module.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;

use tokio::net::UnixStream;

use crate::accel::Accel;
use crate::error::Result;

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The byte stream to the guest agent (one per VM, multiplexed above).
pub type GuestStream = UnixStream;

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Short name, used in logs and the VMM's process name.
    pub name: String,
    /// Directory owned by this VM: sockets, console log and the writable
    /// layer live here, and nothing of the VM lives anywhere else.
    pub state_dir: PathBuf,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs (carries the guest agent as `/init`).
    pub initramfs: PathBuf,
    /// Read-only base root filesystem.
    pub rootfs: PathBuf,
    /// Size of the writable layer in bytes (the disk quota).
    pub disk_bytes: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Accelerator to run on.
    pub accel: Accel,
    /// Extra kernel command-line arguments.
    pub kernel_args: Vec<String>,
    /// Where the writable layer lives (fresh and ephemeral by default).
    pub scratch: crate::scratch::ScratchDisk,
}

impl VmSpec {
    /// Path of the serial console log inside the state directory.
    pub fn console_log(&self) -> PathBuf {
        self.state_dir.join("console.log")
    }
}

/// How a VM's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// Exit status of the VMM process.
    pub status: Option<ExitStatus>,
    /// Last lines of the guest console at exit (up to 400, read from at most
    /// the last 64 KiB).
    pub console_tail: Vec<String>,
    /// Last lines the VMM itself printed to stderr.
    pub vmm_stderr_tail: Vec<String>,
}

/// What a checkpoint of a VM's writable layer froze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// The layer `layer` was frozen as it stands; writes go on in a new
    /// layer over it.
    Frozen {
        /// The frozen layer's file name (in the chain's directory).
        layer: String,
    },
    /// Nothing was written since the last checkpoint, which froze `layer`:
    /// it is this checkpoint too.
    Unchanged {
        /// The layer frozen by the last checkpoint.
        layer: String,
    },
}

impl Checkpoint {
    /// The frozen layer that holds the checkpoint.
    pub fn layer(&self) -> &str {
        match self {
            Self::Frozen { layer } | Self::Unchanged { layer } => layer,
        }
    }
}

/// A VMM backend.
pub trait Driver: Send + Sync {
    /// Backend name, e.g. `qemu`.
    fn name(&self) -> &'static str;

    /// Boot a VM. Resolves once the VMM process runs and the guest channel
    /// can be connected to (the guest itself may still be booting).
    fn launch(&self, spec: VmSpec) -> BoxFuture<'_, Result<Box<dyn Vm>>>;
}

/// A running VM. Dropping it kills the VMM process.
pub trait Vm: Send + Sync {
    /// PID of the VMM process, while it runs.
    fn pid(&self) -> Option<u32>;

    /// The spec it was booted from.
    fn spec(&self) -> &VmSpec;

    /// Open a new byte stream to the guest agent. Only one may be open at a
    /// time; the guest serves a new one after the previous one closes.
    fn connect(&self) -> BoxFuture<'_, Result<GuestStream>>;

    /// Wait until the VMM process has exited.
    fn wait(&self) -> BoxFuture<'_, VmExit>;

    /// The exit, if the VMM process has already exited.
    fn try_exit(&self) -> Option<VmExit>;

    /// Kill the VMM process at once (SIGKILL). Idempotent.
    fn kill(&self);

    /// Path of the guest's serial console log.
    fn console_log(&self) -> &Path;

    /// Freeze the writable layer (a [`crate::ScratchDisk::Layered`] one) as
    /// it stands on the virtual disk, and go on writing to a new layer
    /// named `next` over it. The guest must have flushed its filesystem
    /// first. Drivers without checkpoints refuse.
    fn checkpoint<'a>(&'a self, next: &'a str) -> BoxFuture<'a, Result<Checkpoint>> {
        let _ = next;
        Box::pin(async {
            Err(crate::VmError::Unsupported(
                "this VM driver cannot checkpoint a writable layer (durable workspaces need the qemu driver)".into(),
            ))
        })
    }
}
