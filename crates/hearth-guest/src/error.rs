//! The agent's error type and how each error is classified on the wire.
//!
//! Every failure the host can see becomes an [`ErrorBody`] with an
//! [`ErrorCode`] and an HTTP status; [`GuestError::to_body`] and
//! [`GuestError::status`] are that mapping. Messages always say which
//! operation and which path failed, because the host shows them to users.

use std::io;

use hearth_proto::{ErrorBody, ErrorCode};
use http::StatusCode;

/// Result alias for the agent.
pub type Result<T, E = GuestError> = std::result::Result<T, E>;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A system call on `path` failed; classified by its errno.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "mkdir", ...).
        op: &'static str,
        /// The path (or object) it was done to.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The request is malformed or a field is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A size limit was exceeded.
    #[error("{0}")]
    TooLarge(String),
    /// The named object (exec id, path) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The named object already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The host speaks another protocol version.
    #[error("protocol version mismatch: host speaks {host}, guest speaks {guest}")]
    VersionMismatch {
        /// The host's version.
        host: u32,
        /// Ours.
        guest: u32,
    },
    /// Any other failure.
    #[error("{0}")]
    Internal(String),
    /// The operation ran past its time limit and was stopped.
    #[error("{0}")]
    TimedOut(String),
    /// The agent already serves `limit` requests of `kind`, its bound for
    /// that kind (see [`crate::capacity`]).
    #[error("the sandbox's agent is busy with {limit} concurrent {kind} operations, as many as it serves at once; retry later")]
    Busy {
        /// The kind that is full.
        kind: crate::capacity::RequestKind,
        /// Its bound.
        limit: usize,
    },
}

impl GuestError {
    /// An I/O error of `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The wire class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Io { source, .. } => io_error_code(source),
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Busy { .. } => ErrorCode::Busy,
            Self::TimedOut(_) => ErrorCode::TimedOut,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        status_for(self.code())
    }

    /// The JSON body this error is answered with.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
}

/// Classify an I/O error by its errno (see [`errno_code`]).
pub fn io_error_code(error: &io::Error) -> ErrorCode {
    match error.raw_os_error() {
        Some(errno) => errno_code(errno),
        None => match error.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        },
    }
}

/// Classify an errno: the mapping the host relies on to tell "not found"
/// from "disk full" without parsing messages.
pub fn errno_code(errno: i32) -> ErrorCode {
    match errno {
        libc::ENOENT => ErrorCode::NotFound,
        libc::EEXIST => ErrorCode::AlreadyExists,
        libc::EISDIR => ErrorCode::IsADirectory,
        libc::ENOTDIR => ErrorCode::NotADirectory,
        libc::ENOTEMPTY => ErrorCode::NotEmpty,
        libc::EACCES | libc::EPERM | libc::EROFS => ErrorCode::PermissionDenied,
        libc::ENOSPC | libc::EDQUOT => ErrorCode::NoSpace,
        libc::EINVAL | libc::ENAMETOOLONG | libc::ELOOP => ErrorCode::InvalidArgument,
        libc::EFBIG => ErrorCode::TooLarge,
        _ => ErrorCode::Internal,
    }
}

/// The HTTP status of each error class.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument
        | ErrorCode::IsADirectory
        | ErrorCode::NotADirectory
        | ErrorCode::VersionMismatch => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists | ErrorCode::NotEmpty => StatusCode::CONFLICT,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TimedOut => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// The wire name of an error class (the value of the `hearth-error-code`
/// header), identical to its JSON spelling.
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "internal".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_matches_the_contract() {
        assert_eq!(errno_code(libc::ENOENT), ErrorCode::NotFound);
        assert_eq!(errno_code(libc::EEXIST), ErrorCode::AlreadyExists);
        assert_eq!(errno_code(libc::EISDIR), ErrorCode::IsADirectory);
        assert_eq!(errno_code(libc::ENOTDIR), ErrorCode::NotADirectory);
        assert_eq!(errno_code(libc::ENOTEMPTY), ErrorCode::NotEmpty);
        assert_eq!(errno_code(libc::EACCES), ErrorCode::PermissionDenied);
        assert_eq!(errno_code(libc::EPERM), ErrorCode::PermissionDenied);
        assert_eq!(errno_code(libc::ENOSPC), ErrorCode::NoSpace);
        assert_eq!(errno_code(libc::EDQUOT), ErrorCode::NoSpace);
        assert_eq!(errno_code(libc::EIO), ErrorCode::Internal);
    }

    #[test]
    fn statuses_match_the_contract() {
        assert_eq!(status_for(ErrorCode::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(status_for(ErrorCode::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(status_for(ErrorCode::NotEmpty), StatusCode::CONFLICT);
        assert_eq!(status_for(ErrorCode::IsADirectory), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_for(ErrorCode::PermissionDenied),
            StatusCode::FORBIDDEN
        );
        assert_eq!(status_for(ErrorCode::NoSpace).as_u16(), 507);
        assert_eq!(status_for(ErrorCode::TooLarge).as_u16(), 413);
        assert_eq!(status_for(ErrorCode::Internal).as_u16(), 500);
    }

    #[test]
    fn io_errors_name_operation_and_path() {
        let err = GuestError::io("open", "/nope", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert!(err.to_string().contains("open /nope"), "{err}");
        assert_eq!(code_name(ErrorCode::NoSpace), "no_space");
    }
}
