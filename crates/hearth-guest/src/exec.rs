//! `POST /v1/exec`: one command's life, from the `Request` frame to the
//! `Exit` frame, and `POST /v1/exec/kill`.
//!
//! Each exec runs as a handful of independent tasks so nothing one command
//! does can block another command or the agent:
//! - a stdin feeder (request body frames → the process's stdin pipe); a
//!   process that stops reading stalls only this task, and HTTP/2 flow
//!   control pushes back on the host;
//! - two output pumps (stdout/stderr pipes → frames on a bounded channel
//!   that is the response body), so output streams with bounded memory;
//! - the controller, which waits for the exit status, the timeout, a kill
//!   request, the host dropping the stream, or a protocol error, kills the
//!   whole process tree when needed, and writes the final frame.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_proto::limits::STREAM_CHUNK;
use hearth_proto::{
    ExecRequest, ExecStarted, ExitReason, ExitReport, Frame, FrameDecoder, FrameError, FrameKind,
};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, Notify};

use crate::agent::AgentState;
use crate::body::{self, BodySender, ResponseBody};
use crate::capacity::Slot;
use crate::cgroup::ExecCgroup;
use crate::error::{GuestError, Result};
use crate::owner::ExecRoot;
use crate::spawn::{self, Spawned};
use crate::sys;

/// Output frames buffered per exec before the pumps wait for the host.
const OUTPUT_FRAMES_IN_FLIGHT: usize = 8;
/// How long output is still forwarded after the main process exited, for a
/// background child that holds the pipes open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Running execs by id, so `POST /v1/exec/kill` can reach them.
#[derive(Debug, Default)]
pub struct ExecRegistry {
    running: Mutex<HashMap<String, Arc<Notify>>>,
}

impl ExecRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, id: &str) -> Result<Arc<Notify>> {
        let mut running = self.lock();
        if running.contains_key(id) {
            return Err(GuestError::AlreadyExists(format!(
                "an exec with id {id:?} is already running"
            )));
        }
        let notify = Arc::new(Notify::new());
        running.insert(id.to_owned(), notify.clone());
        Ok(notify)
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Ask the exec `id` to kill its process tree.
    pub fn kill(&self, id: &str) -> Result<()> {
        match self.lock().get(id) {
            Some(notify) => {
                notify.notify_one();
                Ok(())
            }
            None => Err(GuestError::NotFound(format!(
                "no running exec with id {id:?}"
            ))),
        }
    }

    /// Kill every running exec (shutdown).
    pub fn kill_all(&self) {
        for notify in self.lock().values() {
            notify.notify_one();
        }
    }

    /// Number of running execs.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no exec is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why the agent ended a command before it ended on its own.
#[derive(Debug)]
pub enum EndCause {
    /// `timeout_ms` passed.
    TimedOut(u64),
    /// `POST /v1/exec/kill`, or agent shutdown.
    KillRequested,
    /// The host reset the stream or the connection died.
    HostGone,
    /// The request body broke the frame protocol.
    Protocol(GuestError),
    /// The memory guard killed the command's cgroup because the workload
    /// was thrashing at its memory limit; the message says why.
    MemoryGuard(String),
}

/// Handle `POST /v1/exec`: answer at once with a streamed body of frames and
/// run the exec on its own task, which holds `slot` (its place among the
/// execs the agent runs at once) until the exec ends.
pub fn handle(
    state: Arc<AgentState>,
    request_body: Incoming,
    slot: Option<Slot>,
) -> Response<ResponseBody> {
    let (tx, body) = body::channel(OUTPUT_FRAMES_IN_FLIGHT);
    tokio::spawn(async move {
        run(state, request_body, tx).await;
        drop(slot);
    });
    body::streamed(body, "application/octet-stream")
}

async fn send_frame(tx: &BodySender, frame: Frame) -> bool {
    tx.send(Ok(frame.encode())).await.is_ok()
}

async fn send_error(tx: &BodySender, error: &GuestError) {
    send_frame(tx, Frame::json(FrameKind::Error, &error.to_body())).await;
}

fn frame_error(error: FrameError) -> GuestError {
    match error {
        FrameError::TooLarge { .. } => GuestError::TooLarge(format!("exec request body: {error}")),
        other => GuestError::InvalidArgument(format!("exec request body: {other}")),
    }
}

/// Read request body frames until the first one, which must be `Request`.
async fn read_request(body: &mut Incoming, decoder: &mut FrameDecoder) -> Result<ExecRequest> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(frame_error)? {
            if frame.kind != FrameKind::Request {
                return Err(GuestError::InvalidArgument(format!(
                    "the first frame of an exec must be Request, got {:?}",
                    frame.kind
                )));
            }
            return frame.parse_json().map_err(frame_error);
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => {
                return Err(GuestError::InvalidArgument(format!(
                    "exec request body failed before the Request frame: {e}"
                )))
            }
            None => {
                return Err(GuestError::InvalidArgument(
                    "exec request body ended before the Request frame".into(),
                ))
            }
        }
    }
}

async fn run(state: Arc<AgentState>, mut request_body: Incoming, tx: BodySender) {
    let mut decoder = FrameDecoder::default();
    let request = match read_request(&mut request_body, &mut decoder).await {
        Ok(request) => request,
        Err(e) => return send_error(&tx, &e).await,
    };
    if let Err(e) = spawn::validate(&request) {
        return send_error(&tx, &e).await;
    }
    let kill = match state.execs.insert(&request.id) {
        Ok(kill) => kill,
        Err(e) => return send_error(&tx, &e).await,
    };
    let leaf = match state.cgroups.as_ref().map(|c| c.create_exec()).transpose() {
        Ok(leaf) => leaf,
        Err(e) => {
            state.execs.remove(&request.id);
            return send_error(&tx, &e).await;
        }
    };
    let id = request.id.clone();
    supervise(
        &state,
        request,
        request_body,
        decoder,
        leaf.as_ref(),
        kill,
        &tx,
    )
    .await;
    state.execs.remove(&id);
    state.owners.remove(&id);
    if let (Some(cgroups), Some(leaf)) = (state.cgroups.as_ref(), leaf) {
        cgroups.release(leaf);
    }
}

/// Start the process, stream it, and send the final frame.
async fn supervise(
    state: &Arc<AgentState>,
    request: ExecRequest,
    request_body: Incoming,
    decoder: FrameDecoder,
    leaf: Option<&ExecCgroup>,
    kill: Arc<Notify>,
    tx: &BodySender,
) {
    let started = Instant::now();
    let spawned = start(state, &request, leaf).await;
    let Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        exit,
    } = match spawned {
        Ok(spawned) => spawned,
        Err(error) => {
            let (code, message) = spawn_error_report(&request, &error);
            let report = ExitReport {
                reason: ExitReason::SpawnFailed,
                code,
                signal: None,
                message: Some(message),
                duration_ms: 0,
                stdout_bytes: 0,
                stderr_bytes: 0,
            };
            send_frame(tx, Frame::json(FrameKind::Exit, &report)).await;
            return;
        }
    };
    state.owners.add(ExecRoot {
        id: request.id.clone(),
        pid,
        cgroup: leaf.and_then(|leaf| exec_cgroup(state, leaf)),
    });
    crate::debug!(
        "exec {} started as pid {pid}: {:?}",
        request.id,
        request.argv
    );
    send_frame(
        tx,
        Frame::json(FrameKind::Started, &ExecStarted { pid: pid as u32 }),
    )
    .await;

    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut stdout_pump = tokio::spawn(pump(stdout, FrameKind::Stdout, tx.clone(), counts.clone()));
    let mut stderr_pump = tokio::spawn(pump(stderr, FrameKind::Stderr, tx.clone(), counts.clone()));
    let (protocol_tx, mut protocol_rx) = oneshot::channel();
    let feeder = tokio::spawn(feed_stdin(request_body, decoder, stdin, protocol_tx));

    // `validate` bounds timeout_ms, so this cannot overflow; checked anyway,
    // as a deadline past the end of the clock is no deadline.
    let deadline = request.timeout_ms.and_then(|ms| {
        tokio::time::Instant::from_std(started).checked_add(Duration::from_millis(ms))
    });
    let timer = tokio::time::sleep_until(
        deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(timer);
    tokio::pin!(exit);
    let mut cause: Option<EndCause> = None;
    let mut protocol_done = false;
    let status = loop {
        tokio::select! {
            status = &mut exit => break status.unwrap_or(libc::SIGKILL),
            () = &mut timer, if deadline.is_some() && cause.is_none() => {
                cause = Some(EndCause::TimedOut(request.timeout_ms.unwrap_or(0)));
                kill_tree(pid, leaf);
            }
            () = kill.notified(), if cause.is_none() => {
                cause = Some(EndCause::KillRequested);
                kill_tree(pid, leaf);
            }
            () = tx.closed(), if cause.is_none() => {
                cause = Some(EndCause::HostGone);
                kill_tree(pid, leaf);
            }
            result = &mut protocol_rx, if !protocol_done => {
                protocol_done = true;
                if let (Ok(error), None) = (result, &cause) {
                    cause = Some(EndCause::Protocol(error));
                    kill_tree(pid, leaf);
                }
            }
        }
    };
    feeder.abort();
    // Forward what is left in the pipes; a background child holding them
    // open gets a bounded grace period, not the power to delay the report.
    let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        let _ = (&mut stdout_pump).await;
        let _ = (&mut stderr_pump).await;
    })
    .await;
    if drained.is_err() {
        stdout_pump.abort();
        stderr_pump.abort();
    }
    // A SIGKILL the agent did not send on the exec's behalf may be the
    // memory guard's.
    if cause.is_none() && libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        cause = leaf
            .and_then(ExecCgroup::guard_kill)
            .map(EndCause::MemoryGuard);
    }
    let oom_kills = leaf.map_or(0, ExecCgroup::oom_kills);
    let limit = state.workload_memory_limit.load(Ordering::Relaxed);
    let mut report = exit_report(status, cause.as_ref(), oom_kills, limit);
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.stdout_bytes = counts[0].load(Ordering::Relaxed);
    report.stderr_bytes = counts[1].load(Ordering::Relaxed);
    crate::debug!(
        "exec {} ended: {:?} code {}",
        request.id,
        report.reason,
        report.code
    );
    match cause {
        Some(EndCause::HostGone) => {}
        Some(EndCause::Protocol(error)) => send_error(tx, &error).await,
        _ => {
            send_frame(tx, Frame::json(FrameKind::Exit, &report)).await;
        }
    }
}

async fn start(
    state: &Arc<AgentState>,
    request: &ExecRequest,
    leaf: Option<&ExecCgroup>,
) -> io::Result<Spawned> {
    let procs = leaf
        .map(ExecCgroup::open_procs)
        .transpose()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut request = request.clone();
    if let Some(egress) = state.egress() {
        // The network goes through the proxy; the request's own settings win.
        for (key, value) in crate::egress::proxy_env(egress.address()) {
            request.env.entry(key).or_insert(value);
        }
    }
    let reaper = state.reaper.clone();
    let isolation = state.exec_isolation().cloned();
    tokio::task::spawn_blocking(move || {
        let cwd = request.cwd.as_deref().unwrap_or(spawn::DEFAULT_CWD);
        if !std::path::Path::new(cwd).is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                CwdMissing(cwd.to_owned()),
            ));
        }
        spawn::spawn(&request, procs.as_ref(), isolation, &reaper)
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// The exec's leaf as `/proc/<pid>/cgroup` names it: its path under the
/// cgroup root (the agent's cgroup namespace is the root's).
fn exec_cgroup(state: &AgentState, leaf: &ExecCgroup) -> Option<String> {
    let root = state.cgroups.as_ref()?.root();
    let relative = leaf.path().strip_prefix(root).ok()?;
    Some(format!("/{}", relative.to_str()?))
}

/// Marker for "the working directory does not exist", so it is not
/// reported as "command not found".
#[derive(Debug)]
struct CwdMissing(String);

impl std::fmt::Display for CwdMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "working directory {} does not exist or is not a directory",
            self.0
        )
    }
}

impl std::error::Error for CwdMissing {}

fn spawn_error_report(request: &ExecRequest, error: &io::Error) -> (i32, String) {
    if let Some(cwd) = error.get_ref().and_then(|e| e.downcast_ref::<CwdMissing>()) {
        return (126, format!("cannot start {}: {cwd}", request.argv[0]));
    }
    spawn::spawn_failure(&request.argv[0], error)
}

/// Kill the exec's whole process tree: its cgroup when there is one (which
/// also catches processes that left the process group), and its process
/// group in any case.
fn kill_tree(pid: i32, leaf: Option<&ExecCgroup>) {
    if let Some(leaf) = leaf {
        let _ = leaf.kill();
    }
    sys::killpg(pid, libc::SIGKILL);
}

/// Copy one output pipe into frames until EOF or until the host is gone.
async fn pump(
    fd: std::os::fd::OwnedFd,
    kind: FrameKind,
    tx: BodySender,
    counts: Arc<[AtomicU64; 2]>,
) {
    let Ok(mut pipe) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let index = usize::from(kind == FrameKind::Stderr);
    let mut buffer = vec![0u8; STREAM_CHUNK];
    loop {
        let n = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let frame = Frame::new(kind, Bytes::copy_from_slice(&buffer[..n]));
        if !send_frame(&tx, frame).await {
            return;
        }
        counts[index].fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Feed `Stdin` frames of the request body to the process until `StdinEof`
/// or the end of the body; report a broken frame stream on `protocol`.
async fn feed_stdin(
    mut body: Incoming,
    mut decoder: FrameDecoder,
    stdin: Option<std::os::fd::OwnedFd>,
    protocol: oneshot::Sender<GuestError>,
) {
    let mut stdin = stdin.and_then(|fd| pipe::Sender::from_owned_fd(fd).ok());
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => match frame.kind {
                    FrameKind::Stdin => {
                        if let Some(pipe) = stdin.as_mut() {
                            // EPIPE: the process closed its stdin; drop the rest.
                            if pipe.write_all(&frame.payload).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    FrameKind::StdinEof => stdin = None,
                    other => {
                        let _ = protocol.send(GuestError::InvalidArgument(format!(
                            "unexpected {other:?} frame in an exec request body"
                        )));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = protocol.send(frame_error(e));
                    return;
                }
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            // A reset stream: the controller sees the response side close.
            Some(Err(_)) => return,
            None => {
                if let Err(e) = decoder.finish() {
                    let _ = protocol.send(frame_error(e));
                }
                return;
            }
        }
    }
}

/// How a command ended, from its raw wait status and what the agent knows:
/// shell-style code (128 + signal), the reason, and a message for anything
/// but a plain exit. Timing and byte counts are filled in by the caller.
pub fn exit_report(
    status: i32,
    cause: Option<&EndCause>,
    oom_kills: u64,
    memory_limit_bytes: u64,
) -> ExitReport {
    let (code, signal) = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else {
        (128 + libc::SIGKILL, Some(libc::SIGKILL))
    };
    let (reason, message) = match cause {
        Some(EndCause::TimedOut(ms)) => (
            ExitReason::TimedOut,
            Some(format!(
                "timed out after {ms} ms; the command and its child processes were killed"
            )),
        ),
        Some(EndCause::KillRequested) => (
            ExitReason::Killed,
            Some("killed on request; the command and its child processes were killed".into()),
        ),
        Some(EndCause::HostGone) | Some(EndCause::Protocol(_)) => (
            ExitReason::Killed,
            Some("killed because the host closed the exec stream".into()),
        ),
        Some(EndCause::MemoryGuard(message)) => (ExitReason::OomKilled, Some(message.clone())),
        None if oom_kills > 0 => {
            let limit = if memory_limit_bytes > 0 {
                format!(
                    "the workload memory limit of {} MiB",
                    memory_limit_bytes / (1024 * 1024)
                )
            } else {
                "the guest's memory".into()
            };
            (
                ExitReason::OomKilled,
                Some(format!(
                    "out of memory: the command exceeded {limit} and was killed by the OOM killer"
                )),
            )
        }
        None => match signal {
            Some(sig) => (
                ExitReason::Signaled,
                Some(format!("terminated by signal {sig} ({})", signal_name(sig))),
            ),
            None => (ExitReason::Exited, None),
        },
    };
    ExitReport {
        reason,
        code,
        signal,
        message,
        duration_ms: 0,
        stdout_bytes: 0,
        stderr_bytes: 0,
    }
}

/// Conventional name of a signal number.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn exited(code: i32) -> i32 {
        code << 8
    }

    #[test]
    fn plain_exit_keeps_its_code() {
        let report = exit_report(exited(7), None, 0, 0);
        assert_eq!(report.reason, ExitReason::Exited);
        assert_eq!(report.code, 7);
        assert_eq!(report.signal, None);
        assert_eq!(report.message, None);
    }

    #[test]
    fn signals_are_shell_style() {
        let report = exit_report(libc::SIGSEGV, None, 0, 0);
        assert_eq!(report.reason, ExitReason::Signaled);
        assert_eq!(report.code, 128 + libc::SIGSEGV);
        assert_eq!(report.signal, Some(libc::SIGSEGV));
        assert!(report.message.unwrap().contains("SIGSEGV"));
    }

    #[test]
    fn oom_kill_names_the_limit() {
        let report = exit_report(libc::SIGKILL, None, 1, 256 * 1024 * 1024);
        assert_eq!(report.reason, ExitReason::OomKilled);
        assert_eq!(report.code, 137);
        assert!(report.message.unwrap().contains("256 MiB"));
    }

    #[test]
    fn agent_kills_take_precedence() {
        let report = exit_report(libc::SIGKILL, Some(&EndCause::TimedOut(500)), 1, 0);
        assert_eq!(report.reason, ExitReason::TimedOut);
        assert!(report.message.unwrap().contains("500 ms"));
        let report = exit_report(libc::SIGKILL, Some(&EndCause::KillRequested), 0, 0);
        assert_eq!(report.reason, ExitReason::Killed);
    }

    #[test]
    fn memory_guard_kills_are_oom_kills_with_the_guards_message() {
        let message = "killed by the guest's memory guard: thrashing";
        let cause = EndCause::MemoryGuard(message.into());
        let report = exit_report(libc::SIGKILL, Some(&cause), 0, 180 << 20);
        assert_eq!(report.reason, ExitReason::OomKilled);
        assert_eq!(report.code, 137);
        assert_eq!(report.signal, Some(libc::SIGKILL));
        assert_eq!(report.message.as_deref(), Some(message));
    }
}
