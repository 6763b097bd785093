//! Errors of the VM layer.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Everything that can go wrong starting, talking to or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The host's filesystem cannot hold the sandbox's disk.
    #[error("not enough free disk on the host for a {needed_mib} MiB sandbox disk; destroy a sandbox, free disk space, or ask for a smaller disk")]
    NoDiskSpace {
        /// The disk asked for, MiB.
        needed_mib: u64,
    },
    /// The VMM binary is not installed.
    #[error("{binary} not found on PATH: install it with `apt-get install qemu-system-x86` (or run scripts/setup.sh)")]
    VmmMissing {
        /// Binary looked for.
        binary: String,
    },
    /// KVM was asked for but cannot be used here.
    #[error("KVM requested but not usable here: {reason}; use --accel tcg (or auto)")]
    KvmUnavailable {
        /// Why KVM is unusable.
        reason: String,
    },
    /// A VM setting is out of range.
    #[error("invalid VM setting: {0}")]
    InvalidSpec(String),
    /// Creating the writable layer failed.
    #[error("could not create the writable disk {path}: {message}")]
    ScratchDisk {
        /// Disk image path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The VMM process could not be started.
    #[error("could not start {binary}: {source}")]
    Spawn {
        /// Binary started.
        binary: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM's host cgroup could not be set up or removed.
    #[error("VMM cgroup {path}: {message}; set HEARTH_VMM_JAIL=off to run VMMs without the jail")]
    Cgroup {
        /// The cgroup directory or file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Connecting to the guest channel failed.
    #[error("could not connect to the guest channel {path}: {source}")]
    Channel {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU's machine protocol failed or refused a command.
    #[error("QMP {path}: {message}")]
    Qmp {
        /// The QMP socket.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The VM cannot do what was asked (e.g. a checkpoint of a VM whose
    /// writable layer is not layered, or on a driver without checkpoints).
    #[error("{0}")]
    Unsupported(String),
    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl VmError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
