//! The one error type of the image builder.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building, opening or verifying a guest image.
///
/// Each message says what happened and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Building needs root: debootstrap chroots and creates device nodes.
    #[error("building a guest image needs root (debootstrap chroots and creates device nodes); run the build as root, e.g. with sudo")]
    NotRoot,

    /// The image name would escape the images directory or is empty.
    #[error(
        "invalid image name {0:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    InvalidName(String),

    /// The guest agent binary does not exist.
    #[error("guest agent binary not found at {0}; build it with `scripts/build-guest.sh` or set HEARTH_GUEST_AGENT")]
    GuestAgentMissing(PathBuf),

    /// The guest agent is linked dynamically; it runs as `/init` where no loader exists.
    #[error("guest agent {0} is dynamically linked (it has an ELF interpreter), but it runs as /init with no libraries; build it statically with `scripts/build-guest.sh` (uses -C target-feature=+crt-static)")]
    GuestAgentDynamic(PathBuf),

    /// A file expected to be an ELF executable is not one.
    #[error("{path} is not an ELF executable: {reason}")]
    NotElf {
        /// The file inspected.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An external command could not be started (usually: not installed).
    #[error("could not run `{command}`: {source}{hint}")]
    CommandSpawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        #[source]
        source: io::Error,
        /// Which package provides it, if known.
        hint: String,
    },

    /// An external command ran and failed.
    #[error("`{command}` failed with {status}; last lines of its stderr:\n{stderr_tail}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },

    /// apt could not tell us what we need (package names, versions, mirror).
    #[error("apt: {0}")]
    Apt(String),

    /// The kernel package's module data is unusable (missing module, cycle, bad modules.dep).
    #[error("kernel modules: {0}")]
    Modules(String),

    /// No image of that name has been built.
    #[error("image '{name}' not found in {dir}; run `hearth image build`")]
    NotFound {
        /// Image name.
        name: String,
        /// The images directory searched.
        dir: PathBuf,
    },

    /// The image exists but is incomplete or damaged.
    #[error(
        "image '{name}' in {dir} is unusable: {reason}; run `hearth image build` to rebuild it"
    )]
    Damaged {
        /// Image name.
        name: String,
        /// The images directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl ImageError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of the image builder.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Turns an I/O error into [`ImageError::Io`] with `context()` as its description.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
