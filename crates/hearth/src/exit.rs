//! Exit codes of the `hearth` command, following `docker run` and `timeout`.

/// Hearth itself failed (bad option, missing image, VM failure).
pub const HEARTH_ERROR: i32 = 125;
/// The sandbox ran past its timeout (as `timeout(1)`).
pub const TIMED_OUT: i32 = 124;
/// Interrupted by SIGINT.
pub const INTERRUPTED: i32 = 130;
/// Terminated by SIGTERM.
pub const TERMINATED: i32 = 143;
