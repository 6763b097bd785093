//! Errors of the sandbox layer.

use hearth_proto::ErrorCode;

use crate::end::SandboxEnd;

/// Result alias of this crate.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What can go wrong creating or using a sandbox. Messages are one line and
/// say what happened and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A sandbox option is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The guest image is missing or broken.
    #[error(transparent)]
    Image(#[from] hearth_image::ImageError),
    /// The VM layer failed.
    #[error(transparent)]
    Vm(#[from] hearth_vm::VmError),
    /// The VM did not come up.
    #[error(
        "sandbox {id} failed to boot: {message}{}",
        console_suffix(console_tail)
    )]
    BootFailed {
        /// Sandbox id.
        id: String,
        /// What went wrong.
        message: String,
        /// Last console lines.
        console_tail: Vec<String>,
    },
    /// The sandbox is gone (destroyed, timed out, crashed) while the call ran.
    #[error("sandbox has ended: {0}")]
    Ended(SandboxEnd),
    /// The guest answered with an error.
    #[error("{message}")]
    Guest {
        /// Class of error.
        code: ErrorCode,
        /// The guest's message.
        message: String,
    },
    /// The guest broke the protocol (malformed or oversized data). The host
    /// closes that stream; the sandbox stays usable if the guest recovers.
    #[error("guest protocol violation: {0}")]
    Protocol(String),
    /// The guest did not answer in time.
    #[error("guest did not answer {what} within {seconds}s")]
    Timeout {
        /// The call that timed out.
        what: String,
        /// How long we waited.
        seconds: u64,
    },
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl SandboxError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// The guest's error code, when the guest refused the call.
    pub fn guest_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Guest { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn console_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last console lines: {}", lines.join(" | "))
    }
}
