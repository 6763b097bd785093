//! Running commands in a sandbox: streamed, or collected.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use tracing::Instrument;

use hearth_proto::{ExecRequest, ExitReport};

use crate::client::{ExecEvent, ExecStream, StdinWriter};
use crate::error::{Result, SandboxError};
use crate::lifecycle::Sandbox;
use crate::options::check_timeout;

/// A command to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment added to the guest's defaults.
    pub env: BTreeMap<String, String>,
    /// Working directory (guest default `/root`).
    pub cwd: Option<String>,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
    /// Whether stdin will be written (otherwise it is `/dev/null`).
    pub stdin: bool,
}

impl ExecOptions {
    /// A command from its argv.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let timeout_ms = self
            .timeout
            .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64);
        hearth_proto::check_exec(&self.argv, &self.env, self.cwd.as_deref(), timeout_ms)
            .map_err(|e| SandboxError::InvalidOption(e.message))?;
        if let Some(timeout) = self.timeout {
            check_timeout("exec timeout", timeout)?;
        }
        Ok(())
    }
}

/// A command's collected result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub report: ExitReport,
}

impl ExecOutput {
    /// Stdout as (lossy) UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as (lossy) UTF-8.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// How long past its timeout the host waits for the guest to report that
/// it killed a command before it stops waiting itself.
pub const HOST_TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// A running command.
pub struct Execution {
    id: String,
    sandbox: Sandbox,
    stdin: Option<StdinWriter>,
    stream: ExecStream,
    span: tracing::Span,
    /// When the host stops waiting for the guest to end a command that
    /// has a timeout: a guest that stops answering cannot hold it forever.
    deadline: Option<(Instant, Duration)>,
    started: Instant,
    ended: bool,
}

impl Execution {
    /// The exec id (unique within the sandbox).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Take the stdin writer (present when [`ExecOptions::stdin`] was set).
    pub fn take_stdin(&mut self) -> Option<StdinWriter> {
        self.stdin.take()
    }

    /// The next event; `Ok(None)` after the exit. If the sandbox ends while
    /// the command runs, the error is [`SandboxError::Ended`] with the reason.
    ///
    /// A command with a timeout ends by then, whatever the guest does: past
    /// the timeout and [`HOST_TIMEOUT_GRACE`] without the guest's report,
    /// the host asks it once more to kill the command and reports it
    /// `timed_out` itself (the message says so).
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.ended {
            return Ok(None);
        }
        let next = self.stream.next_event().instrument(self.span.clone());
        let result = match self.deadline {
            None => next.await,
            Some((deadline, timeout)) => match tokio::time::timeout_at(deadline, next).await {
                Ok(result) => result,
                Err(_) => return Ok(Some(ExecEvent::Exit(self.give_up(timeout).await))),
            },
        };
        match result {
            Ok(Some(ExecEvent::Exit(report))) => {
                self.ended = true;
                self.span.in_scope(|| {
                    tracing::info!(reason = ?report.reason, code = report.code, duration_ms = report.duration_ms, "exec ended")
                });
                Ok(Some(ExecEvent::Exit(report)))
            }
            Ok(other) => Ok(other),
            Err(error) => Err(self.sandbox.explain(error).await),
        }
    }

    /// The host's own end of a command the guest did not end in time.
    /// Cancel-safe like the rest of `next_event`: dropped before it
    /// returns, it runs again on the next call.
    async fn give_up(&mut self, timeout: Duration) -> ExitReport {
        // Best effort: a guest that answers late still kills it.
        let kill = tokio::time::timeout(Duration::from_secs(2), self.kill());
        let _ = kill.await;
        self.ended = true;
        let message = format!(
            "the command ran past its {}s timeout and the guest did not report ending it within {}s more; the host stopped waiting (host-enforced timeout)",
            timeout.as_secs_f64(),
            HOST_TIMEOUT_GRACE.as_secs()
        );
        self.span
            .in_scope(|| tracing::warn!(%message, "exec timed out on the host"));
        ExitReport {
            reason: hearth_proto::ExitReason::TimedOut,
            code: 128 + 9,
            signal: Some(9),
            message: Some(message),
            duration_ms: self.started.elapsed().as_millis() as u64,
            stdout_bytes: 0,
            stderr_bytes: 0,
        }
    }

    /// Kill the command (its whole process tree).
    pub async fn kill(&self) -> Result<()> {
        self.sandbox.client().await.kill(&self.id).await
    }

    /// Read events to the end, collecting output (at most `limit` bytes of
    /// stdout and of stderr; more is an error, so memory stays bounded).
    pub async fn collect(mut self, limit: usize) -> Result<ExecOutput> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        while let Some(event) = self.next_event().await? {
            match event {
                ExecEvent::Started(_) => {}
                ExecEvent::Stdout(data) => append_bounded(&mut stdout, &data, limit, "stdout")?,
                ExecEvent::Stderr(data) => append_bounded(&mut stderr, &data, limit, "stderr")?,
                ExecEvent::Exit(report) => {
                    return Ok(ExecOutput {
                        stdout,
                        stderr,
                        report,
                    })
                }
            }
        }
        Err(SandboxError::Protocol(
            "exec ended without an exit report".into(),
        ))
    }
}

fn append_bounded(out: &mut Vec<u8>, data: &[u8], limit: usize, what: &str) -> Result<()> {
    if out.len() + data.len() > limit {
        return Err(SandboxError::InvalidOption(format!(
            "the command wrote more than {limit} bytes to {what}; stream its output instead of collecting it"
        )));
    }
    out.extend_from_slice(data);
    Ok(())
}

/// Default cap on collected output per stream.
pub const DEFAULT_COLLECT_LIMIT: usize = 64 * 1024 * 1024;

impl Sandbox {
    /// Start a command.
    pub async fn exec(&self, options: ExecOptions) -> Result<Execution> {
        options.validate()?;
        let id = self.next_exec_id();
        let span = tracing::info_span!(parent: None, "exec", sandbox = %self.id(), exec = %id);
        span.in_scope(|| tracing::info!(argv = ?options.argv, cwd = ?options.cwd, "exec started"));
        let started = Instant::now();
        let deadline = options
            .timeout
            .and_then(|t| Some((started.checked_add(t)?.checked_add(HOST_TIMEOUT_GRACE)?, t)));
        let request = ExecRequest {
            id: id.clone(),
            argv: options.argv,
            env: options.env,
            cwd: options.cwd,
            timeout_ms: options.timeout.map(|t| t.as_millis() as u64),
            stdin: options.stdin,
        };
        let (stdin, stream) = match self.client().await.exec(&request).await {
            Ok(ok) => ok,
            Err(error) => return Err(self.explain(error).await),
        };
        Ok(Execution {
            id,
            sandbox: self.clone(),
            stdin,
            stream,
            span,
            deadline,
            started,
            ended: false,
        })
    }

    /// Run a command to completion, feeding it `stdin` if given, and
    /// collect its output (capped at [`DEFAULT_COLLECT_LIMIT`] per stream).
    pub async fn run(&self, mut options: ExecOptions, stdin: Option<Bytes>) -> Result<ExecOutput> {
        options.stdin = stdin.is_some();
        let mut execution = self.exec(options).await?;
        if let (Some(writer), Some(data)) = (execution.take_stdin(), stdin) {
            // Feed stdin concurrently so a command that writes before it has
            // read everything cannot deadlock against us.
            tokio::spawn(async move {
                let _ = writer.write(data).await;
            });
        }
        execution.collect(DEFAULT_COLLECT_LIMIT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_argv_is_rejected() {
        let err = ExecOptions::default().validate().unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn relative_cwd_is_rejected() {
        let opts = ExecOptions {
            cwd: Some("tmp".into()),
            ..ExecOptions::new(["true"])
        };
        assert!(opts.validate().is_err());
    }

    #[test]
    fn huge_exec_timeouts_are_refused() {
        let opts = ExecOptions {
            timeout: Some(Duration::MAX),
            ..ExecOptions::new(["true"])
        };
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("timeout must be at most 30 days"), "{err}");
        let opts = ExecOptions {
            timeout: Some(crate::options::MAX_TIMEOUT),
            ..ExecOptions::new(["true"])
        };
        opts.validate().unwrap();
    }

    #[test]
    fn bad_env_names_are_rejected() {
        let mut opts = ExecOptions::new(["true"]);
        opts.env.insert("A=B".into(), "x".into());
        assert!(opts.validate().is_err());
    }
}
