//! `hearth sandbox run`: one command in a fresh microVM.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};

use hearth_proto::{limits, ExitReason, ExitReport};
use hearth_sandbox::{
    EndReason, ExecEvent, ExecOptions, HearthHome, Sandbox, SandboxError, SandboxOptions,
};
use hearth_vm::qemu::QemuDriver;

use crate::cli::RunArgs;
use crate::exit;

/// SIGINT and SIGTERM, as one stream of exit codes.
struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    fn new() -> Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves with the exit code for the first signal received.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => exit::INTERRUPTED,
            _ = self.term.recv() => exit::TERMINATED,
        }
    }
}

/// Where the guest's proxy listens.
const GUEST_PROXY: &str = hearth_server::network::GUEST_PROXY;

/// The audit record of one connection, in the log: refusals as warnings.
fn log_egress(record: hearth_sandbox::EgressAudit) {
    let destination = format!("{}:{}", record.host, record.port);
    let via = match record.via {
        hearth_proto::EgressVia::Proxy => "proxy",
        hearth_proto::EgressVia::Transparent => "transparent",
    };
    let exec = record.exec.as_deref().unwrap_or_default();
    if record.allowed {
        tracing::info!(
            %destination,
            via,
            exec,
            ended_by = record.ended_by.as_deref().unwrap_or_default(),
            addr = ?record.addr,
            rule = record.rule.as_deref().unwrap_or_default(),
            bytes_up = record.bytes_up,
            bytes_down = record.bytes_down,
            duration_ms = record.duration_ms,
            "egress"
        );
    } else {
        tracing::warn!(
            %destination,
            via,
            exec,
            reason = record.reason.as_deref().unwrap_or_default(),
            "egress refused"
        );
    }
}

/// Create the sandbox, run the command, destroy the sandbox; the command's
/// exit code is the result.
pub async fn run(home: &HearthHome, args: RunArgs) -> Result<i32> {
    let mut interrupts = Interrupts::new()?;
    let options = SandboxOptions {
        image: args.image,
        vcpus: args.vcpus,
        memory: args.memory,
        disk: args.disk,
        timeout: Some(args.timeout),
        accel: args.accel,
        privileged: args.privileged,
        ..SandboxOptions::default()
    };
    options.validate()?;
    let limits = args
        .net_limits
        .limits(hearth_net::NetworkLimits::default())
        .map_err(|e| anyhow::anyhow!(e))?;
    let network = match args.net.mode() {
        hearth_net::NetworkMode::None => None,
        _ => Some(hearth_net::Connector::new(
            args.net.clone(),
            std::sync::Arc::new(crate::net::egress_policy(&args.egress_allow_cidr)?),
            crate::net::resolver(args.egress_hosts.as_deref())?,
        )),
    };
    let driver = QemuDriver::locate()?;

    let create = Sandbox::create(home, &driver, options);
    let sandbox = tokio::select! {
        sandbox = create => sandbox?,
        code = interrupts.recv() => {
            // The cancelled create kills its VM; wait for its files to go.
            wait_for_own_sandboxes_gone(home, Duration::from_secs(10)).await;
            eprintln!("hearth: interrupted while the sandbox was booting");
            return Ok(code);
        }
    };

    // Held while the command runs: dropping it closes the guest's proxy.
    let _egress = match network {
        Some(connector) => match sandbox
            .start_egress(
                hearth_sandbox::EgressConfig::new(GUEST_PROXY, limits),
                connector,
                std::sync::Arc::new(log_egress),
            )
            .await
        {
            Ok(egress) => Some(egress),
            Err(error) => {
                sandbox.destroy().await;
                return Err(error.into());
            }
        },
        None => None,
    };
    let forward_stdin = !args.no_stdin && !std::io::stdin().is_terminal();
    let exec = ExecOptions {
        argv: args.command,
        env: args.env.into_iter().collect(),
        cwd: args.workdir,
        timeout: None,
        stdin: forward_stdin,
    };
    let outcome = tokio::select! {
        outcome = run_command(&sandbox, exec) => outcome,
        code = interrupts.recv() => {
            let reason = if code == exit::INTERRUPTED { "interrupted (SIGINT)" } else { "terminated (SIGTERM)" };
            sandbox.terminate(EndReason::HostShutdown, reason).await;
            eprintln!("hearth: {reason}; the sandbox was destroyed");
            return Ok(code);
        }
    };
    let end = sandbox.destroy().await;
    tracing::debug!(reason = %end.reason, "sandbox destroyed");
    match outcome {
        Ok(report) => Ok(report_exit(&report)),
        Err(SandboxError::Ended(end)) => {
            eprintln!("hearth: {end}");
            Ok(match end.reason {
                EndReason::TimedOut => exit::TIMED_OUT,
                _ => exit::HEARTH_ERROR,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Stream the command's output to ours; forward our stdin to it.
async fn run_command(sandbox: &Sandbox, options: ExecOptions) -> Result<ExitReport, SandboxError> {
    let mut execution = sandbox.exec(options).await?;
    if let Some(writer) = execution.take_stdin() {
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; limits::STREAM_CHUNK];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if writer
                            .write(Bytes::copy_from_slice(&buf[..n]))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            writer.close();
        });
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(event) = execution.next_event().await? {
        match event {
            ExecEvent::Started(_) => {}
            ExecEvent::Stdout(data) => {
                // A closed stdout (e.g. piped into `head`) must not kill the run.
                let _ = stdout.write_all(&data).await;
                let _ = stdout.flush().await;
            }
            ExecEvent::Stderr(data) => {
                let _ = stderr.write_all(&data).await;
                let _ = stderr.flush().await;
            }
            ExecEvent::Exit(report) => return Ok(report),
        }
    }
    Err(SandboxError::Protocol(
        "exec ended without an exit report".into(),
    ))
}

/// Print why the command ended when it is not a plain exit; return its code.
fn report_exit(report: &ExitReport) -> i32 {
    match report.reason {
        ExitReason::Exited | ExitReason::Signaled => {}
        ExitReason::OomKilled
        | ExitReason::TimedOut
        | ExitReason::Killed
        | ExitReason::SpawnFailed => {
            let message = report
                .message
                .clone()
                .unwrap_or_else(|| format!("{:?}", report.reason));
            eprintln!("hearth: {message}");
        }
    }
    report.code
}

/// Wait until no state directory owned by this process remains.
async fn wait_for_own_sandboxes_gone(home: &HearthHome, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while hearth_sandbox::registry::owns_any(home) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
