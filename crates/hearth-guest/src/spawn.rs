//! Starting one exec's process: request validation, the environment, and the
//! fork/exec with the child-side setup (new session, exec cgroup, OOM score,
//! and unless the sandbox is privileged the confinement of
//! [`crate::isolation`]).
//!
//! We use `std::process::Command` rather than `tokio::process`: as PID 1 the
//! agent reaps every process itself (see [`crate::reaper`]), so the exit
//! status must come from our reaper, not from a per-child waiter.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use hearth_proto::ExecRequest;
use tokio::sync::oneshot;

use crate::error::{GuestError, Result};
use crate::isolation::Isolation;
use crate::reaper::Reaper;

/// Working directory when the request names none.
pub const DEFAULT_CWD: &str = "/root";

/// Environment every exec starts from (the agent's own environment is never
/// passed on); the request's `env` overrides and extends it.
pub const DEFAULT_ENV: [(&str, &str); 4] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
];

/// Check an exec request before anything is started (the check every
/// layer shares, `hearth_proto::exec_check`).
pub fn validate(request: &ExecRequest) -> Result<()> {
    request.check().map_err(|e| {
        if e.too_large {
            GuestError::TooLarge(e.message)
        } else {
            GuestError::InvalidArgument(e.message)
        }
    })
}

/// The environment of an exec: defaults overridden by the request.
pub fn environment(request: &ExecRequest) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = DEFAULT_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.extend(request.env.clone());
    env
}

/// A started process: its pid, pipe ends, and the channel its raw wait
/// status will arrive on.
#[derive(Debug)]
pub struct Spawned {
    /// Pid of the main process (also its process group and session id).
    pub pid: i32,
    /// Write end of its stdin, when the request asked for stdin.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
    /// Receives the raw wait status from the reaper.
    pub exit: oneshot::Receiver<i32>,
}

/// Fork and exec `request` (blocking: run on a blocking thread). `procs` is
/// the exec cgroup's `cgroup.procs`, opened before the fork so the child
/// only has to `write` to it. With `isolation`, the child confines itself
/// last, after entering its cgroup (which needs the writable cgroup tree).
pub fn spawn(
    request: &ExecRequest,
    procs: Option<&File>,
    isolation: Option<Isolation>,
    reaper: &Reaper,
) -> io::Result<Spawned> {
    let mut command = Command::new(&request.argv[0]);
    command
        .args(&request.argv[1..])
        .env_clear()
        .envs(environment(request))
        .current_dir(request.cwd.as_deref().unwrap_or(DEFAULT_CWD))
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let procs_fd = procs.map(AsRawFd::as_raw_fd);
    let oom_path = c"/proc/self/oom_score_adj";
    let child_setup = move || -> io::Result<()> {
        // Only async-signal-safe calls here: we are between fork and exec
        // in a copy of a multi-threaded process.
        // SAFETY: setsid takes no arguments; it makes the child the leader
        // of a new session and process group, so killpg reaches its tree.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(fd) = procs_fd {
            // SAFETY: `fd` was opened by the parent before fork and is still
            // open in the child; the buffer is a 1-byte static string.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: open/write/close on a static NUL-terminated path and a
        // static buffer; the agent runs at -1000 and children must not.
        unsafe {
            let fd = libc::open(oom_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        if let Some(isolation) = &isolation {
            isolation.apply_in_child()?;
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls (setsid, write,
    // open, close, and the system calls of `Isolation::apply_in_child`) and
    // touches no locks or allocations.
    unsafe {
        command.pre_exec(child_setup);
    }
    let (pid, (stdin, stdout, stderr), exit) = reaper.spawn_registered(|| {
        let mut child = command.spawn()?;
        let pid = child.id() as i32;
        let stdin = child.stdin.take().map(OwnedFd::from);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        // Dropping `child` neither waits nor kills: the reaper owns its exit.
        match (stdout, stderr) {
            (Some(out), Some(err)) => Ok((pid, (stdin, out, err))),
            _ => Err(io::Error::other("child pipes missing")),
        }
    })?;
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        exit,
    })
}

/// Shell-style code and message for a program that could not be started:
/// 127 when it does not exist, 126 when it cannot be executed (including a
/// missing working directory, which is checked before the fork).
pub fn spawn_failure(argv0: &str, error: &io::Error) -> (i32, String) {
    match error.raw_os_error() {
        Some(libc::ENOENT) => (127, format!("command not found: {argv0}")),
        Some(libc::EACCES) | Some(libc::EPERM) => (126, format!("permission denied: {argv0}")),
        Some(libc::ENOEXEC) => (126, format!("cannot execute {argv0}: exec format error")),
        _ => (126, format!("cannot start {argv0}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::limits::{MAX_ARGV, MAX_TIMEOUT};

    fn request(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            id: "x".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            stdin: false,
        }
    }

    #[test]
    fn validation_rejects_bad_requests() {
        assert!(validate(&request(&["true"])).is_ok());
        assert!(validate(&request(&[])).is_err());
        assert!(validate(&request(&["a\0b"])).is_err());
        let mut r = request(&["true"]);
        r.cwd = Some("relative".into());
        assert!(validate(&r).is_err());
        let mut r = request(&["true"]);
        r.env.insert("A=B".into(), "x".into());
        assert!(validate(&r).is_err());
        let mut r = request(&["true"]);
        r.id = String::new();
        assert!(validate(&r).is_err());
        let r = request(&vec!["x"; MAX_ARGV + 1]);
        assert!(matches!(validate(&r), Err(GuestError::TooLarge(_))));
    }

    #[test]
    fn huge_timeouts_are_refused() {
        let mut r = request(&["true"]);
        r.timeout_ms = Some(u64::MAX);
        let err = validate(&r).unwrap_err().to_string();
        assert!(
            err.contains("timeout must be at most 30 days (2592000000 ms)"),
            "{err}"
        );
        r.timeout_ms = Some(MAX_TIMEOUT.as_millis() as u64);
        assert!(validate(&r).is_ok());
    }

    #[test]
    fn request_env_overrides_defaults() {
        let mut r = request(&["true"]);
        r.env.insert("HOME".into(), "/tmp".into());
        r.env.insert("FOO".into(), "bar".into());
        let env = environment(&r);
        assert_eq!(env["HOME"], "/tmp");
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["LANG"], "C.UTF-8");
    }

    #[test]
    fn spawn_failures_use_shell_codes() {
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(spawn_failure("nope", &enoent).0, 127);
        assert!(spawn_failure("nope", &enoent)
            .1
            .contains("command not found: nope"));
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(spawn_failure("x", &eacces).0, 126);
    }
}
