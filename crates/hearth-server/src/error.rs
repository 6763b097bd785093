//! Errors: [`ServerError`] for starting and running the server, [`ApiError`]
//! for what one request gets back.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use hearth_proto::ErrorCode;
use hearth_sandbox::SandboxError;
use hearth_store::StoreError;

use crate::manager::ManagerError;

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another server already uses this `HEARTH_HOME`.
    #[error("another hearth server already uses {home} (lock file {lock}); stop it first, or give this one its own --home")]
    HomeInUse {
        /// The home directory.
        home: String,
        /// The lock file.
        lock: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store is not the history this home had (missing, empty or
    /// another): starting would silently lose it.
    #[error("{0}")]
    StoreHistory(String),
    /// The VM layer is not usable (QEMU missing, ...).
    #[error(transparent)]
    Vm(#[from] hearth_vm::VmError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; is another server running there? pick another with --listen")]
    Bind {
        /// The address.
        addr: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server option is invalid.
    #[error("invalid server option: {0}")]
    InvalidOption(String),
}

impl ServerError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Result of server operations.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable class, e.g. `not_found`, `invalid_argument`.
    pub code: String,
    /// What happened and, where there is one, what to do.
    pub message: String,
    /// The request field at fault, for invalid arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The request's id (also in the `x-request-id` header): the server's
    /// log has the error's full detail under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An error answer to one request.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// See [`ErrorDetail::code`].
    pub code: &'static str,
    /// See [`ErrorDetail::message`].
    pub message: String,
    /// See [`ErrorDetail::field`].
    pub field: Option<String>,
    /// What only the server's log gets (host paths, raw database errors).
    pub detail: Option<String>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            detail: None,
        }
    }

    /// An error whose full `detail` the client must not see (host paths,
    /// raw database errors): the client gets `message`, which points at the
    /// server log, and the log gets the detail under the request's id.
    pub fn hidden(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            detail: Some(detail.into()),
            ..Self::new(status, code, message)
        }
    }

    /// 400: a request field is invalid.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
        }
    }

    /// 400 without a single field to blame.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// 404 for a sandbox id.
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no sandbox with id {id:?}; list them with GET /v1/sandboxes"),
        )
    }

    /// 409: the sandbox exists but has ended or is not running yet.
    pub fn not_running(id: &str, state: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "sandbox_not_running",
            format!("sandbox {id} is {state}, not running; create a new sandbox"),
        )
    }

    /// 500 for a failure of the server itself: the client is told that
    /// much, the log gets `detail`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::hidden(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to answer this request; its log has the detail under this request's id",
            detail,
        )
    }

    /// The response body.
    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                field: self.field.clone(),
                request_id: crate::api::request_id::current().map(|id| id.to_string()),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self.detail {
            Some(detail) if self.status.is_server_error() => {
                tracing::error!(code = self.code, message = %self.message, %detail, "request failed")
            }
            Some(detail) => {
                tracing::warn!(code = self.code, message = %self.message, %detail, "request refused")
            }
            None if self.status.is_server_error() => {
                tracing::error!(code = self.code, message = %self.message, "request failed")
            }
            None => {}
        }
        (self.status, Json(self.body())).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => Self::sandbox_not_found(&id),
            StoreError::Unavailable { what, .. } => Self::hidden(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("the database is unavailable ({what}); nothing was written, retry once it is back"),
                error.to_string(),
            ),
            StoreError::Fenced { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_fenced",
                format!("{error}; this node no longer owns that sandbox, which was recorded lost"),
            ),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(error: ManagerError) -> Self {
        let message = error.to_string();
        match error {
            ManagerError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            ManagerError::ImageUnavailable { detail, .. } => Self {
                detail: Some(detail),
                ..Self::invalid("image", message)
            },
            ManagerError::CapacityExceeded { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "capacity_exceeded", message)
            }
            ManagerError::NotFound { id } => Self::sandbox_not_found(&id),
            ManagerError::NotRunning { id, state } => Self::not_running(&id, &state),
            ManagerError::DestroyedWhileBooting { .. } => {
                Self::new(StatusCode::CONFLICT, "sandbox_ended", message)
            }
            ManagerError::Sandbox(e) => e.into(),
            ManagerError::Store(e) => e.into(),
            ManagerError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<SandboxError> for ApiError {
    fn from(error: SandboxError) -> Self {
        let message = error.to_string();
        match &error {
            SandboxError::InvalidOption(m) => Self::bad_request(m.clone()),
            SandboxError::Image(_) => Self::hidden(
                StatusCode::BAD_REQUEST,
                "image_unavailable",
                "the sandbox's image could not be used on this host; rebuild it with `hearth image build`; the server log has the detail under this request's id",
                message,
            ),
            // A disk that did not fit after all (admission's measure raced
            // with another writer): the same answer as admission's.
            SandboxError::Vm(hearth_vm::VmError::NoDiskSpace { .. }) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "capacity_exceeded", message)
            }
            // What the operator must fix is said; a path or an OS error
            // stays in the log.
            SandboxError::Vm(
                hearth_vm::VmError::VmmMissing { .. }
                | hearth_vm::VmError::KvmUnavailable { .. }
                | hearth_vm::VmError::InvalidSpec(_)
                | hearth_vm::VmError::Unsupported(_),
            ) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "vm_unavailable", message),
            SandboxError::Vm(_) => Self::hidden(
                StatusCode::SERVICE_UNAVAILABLE,
                "vm_unavailable",
                "the host could not start or reach the VM; its log has the detail under this request's id",
                message,
            ),
            SandboxError::BootFailed { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "boot_failed", message)
            }
            SandboxError::Ended(end) => Self::new(
                StatusCode::CONFLICT,
                "sandbox_ended",
                format!("the sandbox ended while the request ran: {end}"),
            ),
            SandboxError::Guest { code, message } => {
                let (status, name) = match code {
                    ErrorCode::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
                    ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                    ErrorCode::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
                    ErrorCode::IsADirectory => (StatusCode::CONFLICT, "is_a_directory"),
                    ErrorCode::NotADirectory => (StatusCode::CONFLICT, "not_a_directory"),
                    ErrorCode::NotEmpty => (StatusCode::CONFLICT, "not_empty"),
                    ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
                    ErrorCode::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
                    ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                    // The guest's message names the kind, its bound, and
                    // says to retry later.
                    ErrorCode::Busy => (StatusCode::SERVICE_UNAVAILABLE, "agent_busy"),
                    ErrorCode::TimedOut => (StatusCode::GATEWAY_TIMEOUT, "guest_timeout"),
                    ErrorCode::VersionMismatch | ErrorCode::Internal => {
                        (StatusCode::BAD_GATEWAY, "guest_error")
                    }
                };
                Self::new(status, name, message.clone())
            }
            SandboxError::Protocol(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "guest_protocol", message)
            }
            SandboxError::Timeout { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "guest_timeout", message)
            }
            SandboxError::Io { .. } => Self::internal(message),
        }
    }
}
