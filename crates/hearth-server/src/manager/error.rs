//! What can go wrong managing sandboxes, in the manager's own terms; the
//! API edge (`crate::error`) turns each into an HTTP status.

use hearth_sandbox::SandboxError;
use hearth_store::StoreError;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The server is shutting down and takes no new sandboxes.
    #[error("the server is shutting down; retry against its successor")]
    ShuttingDown,
    /// The image does not exist or is damaged.
    #[error("{message}")]
    ImageUnavailable {
        /// The image name.
        image: String,
        /// What is wrong with it and what to do, for the client.
        message: String,
        /// The full error, for the log (it names host paths).
        detail: String,
    },
    /// Admission control refused the create: the node is at capacity.
    #[error("{message}")]
    CapacityExceeded {
        /// `sandboxes`, `memory` or `vcpus`.
        limit: &'static str,
        /// What was asked, what is in use, what the budget is.
        message: String,
    },
    /// No sandbox has this id.
    #[error("no sandbox with id {id:?}; list them with GET /v1/sandboxes")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The sandbox exists but is not running (booting or ended).
    #[error("sandbox {id} is {state}, not running; create a new sandbox")]
    NotRunning {
        /// Sandbox id.
        id: String,
        /// Its state.
        state: String,
    },
    /// A destroy came while the sandbox booted.
    #[error("sandbox {id} was destroyed while it booted")]
    DestroyedWhileBooting {
        /// Sandbox id.
        id: String,
    },
    /// The sandbox layer failed (boot, guest, VM).
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The store failed, or refused a write by the fencing check.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or an impossible state of the server itself.
    #[error("{0}")]
    Internal(String),
}
