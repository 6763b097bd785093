//! One launch of a run: a fresh sandbox with the pinned program and the
//! files the run persisted, its run endpoint served from the journal, its
//! output kept, and what comes next decided when it ends (completed,
//! waiting, relaunched after a crash, failed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use hearth_engine::{Journal, Program, RunSpec, RunState};
use hearth_proto::ByteSize;
use hearth_sandbox::{ExecEvent, ExecOptions, Sandbox, SandboxOptions};
use hearth_store::event::{RunExited, RunPending, RunRunning};
use hearth_store::{EventPayload, Lease, RunChange, RunRecord, RunWriter};

use super::session::{launch_end, persisted_files, Launched, Session, Verdict};
use super::{failed, Inner, RunEngine};
use crate::manager::{CreateSpec, ManagerError};
use hearth_engine::host::Stopped;
use hearth_engine::session::{after_crash, workspace_chain, AfterCrash, Resume};
use hearth_engine::WorkspaceMode;

use super::workspace::LaunchWorkspace;

/// Where a program's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramDir {
    /// This directory in every VM (`/work`).
    Fixed(String),
    /// A directory per run under this one: for the fake VM driver, whose
    /// "VMs" share the host's filesystem. Emptied after each launch, as a
    /// VM's files go with it.
    PerRun(String),
}

impl ProgramDir {
    pub(crate) fn for_run(&self, run_id: &str) -> String {
        match self {
            ProgramDir::Fixed(dir) => dir.clone(),
            ProgramDir::PerRun(root) => format!("{root}/{run_id}"),
        }
    }
}

/// How a launch ended, as seen from outside the program.
#[derive(Debug)]
enum End {
    /// The program exited.
    Exited(i32, String),
    /// The VM or the host channel died.
    VmDied(String),
    /// The engine stopped it (see the session) or the run was cancelled.
    Stopped,
    /// The run passed its deadline.
    Deadline,
}

/// Output of one launch, each line tagged by its stream, kept up to a cap.
/// Output arrives in chunks that need not end at line ends: a line is
/// tagged once, where it starts, and a line one stream leaves unfinished
/// is ended before the other stream's output.
struct LaunchLog {
    kept: Vec<u8>,
    cap: usize,
    total: u64,
    /// The stream whose line is unfinished, if any.
    open: Option<&'static str>,
    /// Output was dropped past the cap.
    truncated: bool,
}

impl LaunchLog {
    fn new(cap: usize) -> Self {
        Self {
            kept: Vec::new(),
            cap,
            total: 0,
            open: None,
            truncated: false,
        }
    }

    fn push(&mut self, stream: &'static str, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            if self.truncated {
                return;
            }
            let mut add = Vec::with_capacity(piece.len() + stream.len() + 3);
            match self.open {
                Some(open) if open == stream => {}
                Some(_) => {
                    add.push(b'\n');
                    add.extend_from_slice(stream.as_bytes());
                    add.extend_from_slice(b": ");
                }
                None => {
                    add.extend_from_slice(stream.as_bytes());
                    add.extend_from_slice(b": ");
                }
            }
            add.extend_from_slice(piece);
            if self.kept.len() + add.len() > self.cap {
                self.kept
                    .extend_from_slice(b"\n[output past the log cap was counted, not kept]\n");
                self.truncated = true;
                return;
            }
            self.kept.extend_from_slice(&add);
            self.open = (!piece.ends_with(b"\n")).then_some(stream);
        }
    }
}

/// Launch `run` (claimed by this node, pending) and see it to the end of
/// this launch.
pub(crate) async fn launch(engine: &RunEngine, run: RunRecord, stop: CancellationToken) {
    let inner = engine.inner().clone();
    let lease = inner.manager.node().lease();
    if let Err(error) = try_launch(&inner, &run, &lease, stop).await {
        tracing::warn!(run = %run.id, %error, "a launch could not be recorded; the run is taken up again");
    }
}

/// Move the run (owned by `lease`) with `change`, logging a refusal.
async fn record(
    inner: &Inner,
    run: &RunRecord,
    lease: &Lease,
    change: RunChange,
    payload: EventPayload,
) -> Result<bool, hearth_store::StoreError> {
    Ok(inner
        .store
        .change_run(&run.id, RunWriter::Owner(lease), &change, payload)
        .await?
        .is_some())
}

async fn try_launch(
    inner: &Arc<Inner>,
    run: &RunRecord,
    lease: &Lease,
    stop: CancellationToken,
) -> Result<(), hearth_store::StoreError> {
    let store = &inner.store;
    let now = store.clock().now_ms();
    // Attempts that were in flight when the last launch died are lost: a
    // step safe to repeat runs again, one that is not waits for a person.
    let mut journal = match Journal::from_steps(&run.id, store.steps(&run.id).await?) {
        Ok(journal) => journal,
        Err(error) => {
            let (change, payload) = failed("corrupt_journal", &error.to_string());
            record(inner, run, lease, change, payload).await?;
            return Ok(());
        }
    };
    let (lost, next) = hearth_engine::session::resume(&mut journal, run.deadline_ms, now);
    if !lost.is_empty() {
        store.put_steps(&run.id, lease, run.launches, &lost).await?;
    }
    if let Resume::Stop(end) = next {
        let (change, payload) = launch_end(&end);
        record(inner, run, lease, change, payload).await?;
        return Ok(());
    }
    let spec: RunSpec = serde_json::from_value(run.spec.clone()).unwrap_or_default();
    let program = match store.blob(&run.program).await? {
        Some(bytes) => Program::from_bytes(&bytes),
        None => Err(hearth_engine::ProgramError::Corrupt(format!(
            "program {} is not in the blob store",
            run.program
        ))),
    };
    let program = match program {
        Ok(program) => program,
        Err(error) => {
            let (change, payload) = failed("program", &error.to_string());
            record(inner, run, lease, change, payload).await?;
            return Ok(());
        }
    };

    let mut options = SandboxOptions {
        image: spec.image.clone(),
        vcpus: spec.vcpus,
        memory: ByteSize::mib(spec.memory_mib),
        timeout: spec.timeout_ms.map(Duration::from_millis),
        ..SandboxOptions::default()
    };
    options.labels.insert("hearth.run".into(), run.id.clone());
    // Held until the launch is over: dropping it removes its directory.
    let mut workspace = None;
    if spec.workspace == WorkspaceMode::Durable {
        match prepare_workspace(inner, run, &journal, options.disk.bytes()).await {
            Ok((prepared, scratch)) => {
                options.scratch = scratch;
                workspace = Some(Arc::new(prepared));
            }
            Err(message) => {
                let (change, payload) = failed("workspace", &message);
                record(inner, run, lease, change, payload).await?;
                return Ok(());
            }
        }
    }
    let network = match crate::network::NetworkSpec::of_run(
        spec.network.as_ref(),
        inner.manager.options().network.limits,
    ) {
        Ok(network) => network,
        Err(message) => {
            let (change, payload) = failed("network", &message);
            record(inner, run, lease, change, payload).await?;
            return Ok(());
        }
    };
    let created = inner
        .manager
        .create(CreateSpec {
            network,
            options,
            env: BTreeMap::new(),
        })
        .await;
    let sandbox_id = match created {
        Ok(record) => record.id,
        Err(ManagerError::CapacityExceeded { .. }) | Err(ManagerError::ShuttingDown) => {
            // No room here now: give the run back for any node to take.
            let change = RunChange {
                release: true,
                wake_ms: Some(Some(now + 1_000)),
                ..RunChange::default()
            };
            let payload = EventPayload::RunPending(RunPending {
                cause: "no_room".into(),
                message: "this node had no room for its VM; it waits for one".into(),
                wake_ms: Some(now + 1_000),
            });
            record(inner, run, lease, change, payload).await?;
            return Ok(());
        }
        Err(error) => {
            return crashed(
                inner,
                run,
                lease,
                &spec,
                &format!("its VM could not start: {error}"),
            )
            .await;
        }
    };
    let launch = run.launches + 1;
    let running = RunChange {
        state: Some(RunState::Running),
        sandbox_id: Some(Some(sandbox_id.clone())),
        launched: true,
        ..RunChange::default()
    };
    let payload = EventPayload::RunRunning(RunRunning {
        launch,
        sandbox_id: sandbox_id.clone(),
    });
    let dir = inner.options.program_dir.for_run(&run.id);
    let went = record(inner, run, lease, running, payload).await;
    let sandbox = match (went, inner.manager.running(&sandbox_id).await) {
        (Ok(true), Ok((_, sandbox))) => sandbox,
        (went, found) => {
            let _ = inner.manager.destroy(&sandbox_id).await;
            cleanup_dir(&inner.options.program_dir, &dir);
            went?;
            if let Err(error) = found {
                return crashed(
                    inner,
                    run,
                    lease,
                    &spec,
                    &format!("its VM ended at once: {error}"),
                )
                .await;
            }
            // The run moved on (cancelled) before it could run.
            return Ok(());
        }
    };

    let end = run_program(
        inner,
        run,
        lease,
        &spec,
        &program,
        &sandbox,
        &dir,
        journal,
        launch,
        stop,
        workspace.clone(),
    )
    .await;
    let _ = inner.manager.destroy(&sandbox_id).await;
    cleanup_dir(&inner.options.program_dir, &dir);
    if let Some(workspace) = workspace {
        // Its VM is gone: the blobs hold what counts.
        tokio::task::spawn_blocking(move || workspace.remove())
            .await
            .ok();
    }
    let (end, stopped, log) = end;

    let (reason, code, message) = match &end {
        End::Exited(code, message) => ("exited", Some(*code), message.clone()),
        End::VmDied(message) => ("vm_died", None, message.clone()),
        End::Stopped => ("stopped", None, "the engine ended this launch".into()),
        End::Deadline => ("stopped", None, "the run passed its deadline".into()),
    };
    let log_digest = if log.kept.is_empty() {
        None
    } else {
        store.put_blob(&log.kept).await.ok()
    };
    let exited = EventPayload::RunExited(RunExited {
        launch,
        exit_code: code,
        reason: reason.into(),
        message: message.clone(),
        log: log_digest,
        output_bytes: log.total,
    });
    if let Err(error) = store
        .append_run_event(&run.id, Some(&sandbox_id), Some(lease), exited)
        .await
    {
        tracing::warn!(run = %run.id, %error, "recording a launch's end failed");
    }

    match stopped {
        // The session could not record what it had to (the store failed,
        // the lease was lost, a checkpoint failed): a crash, recorded if
        // this node still owns the run, so that a failure that persists
        // uses up the relaunches instead of looping.
        Some(Stopped::Fenced(why)) => {
            return crashed(
                inner,
                run,
                lease,
                &spec,
                &format!("the launch stopped: {why}"),
            )
            .await
        }
        // The session recorded what comes next.
        Some(_) => return Ok(()),
        None => {}
    }
    match end {
        End::Stopped => Ok(()),
        End::Deadline => {
            let (change, payload) = failed("deadline", "the run passed its deadline");
            record(inner, run, lease, change, payload).await.map(|_| ())
        }
        End::Exited(0, _) => {
            let change = RunChange {
                state: Some(RunState::Completed),
                output: Some(Value::Null),
                release: true,
                ..RunChange::default()
            };
            let payload =
                EventPayload::RunCompleted(hearth_store::event::RunCompleted { output_bytes: 4 });
            record(inner, run, lease, change, payload).await.map(|_| ())
        }
        End::Exited(_, message) | End::VmDied(message) => {
            crashed(inner, run, lease, &spec, &message).await
        }
    }
}

/// The program or its VM died: relaunch after a backoff, or fail once
/// the restarts are used up.
async fn crashed(
    inner: &Inner,
    run: &RunRecord,
    lease: &Lease,
    spec: &RunSpec,
    message: &str,
) -> Result<(), hearth_store::StoreError> {
    let now = inner.store.clock().now_ms();
    match after_crash(spec, run.restarts, now, message) {
        AfterCrash::Exhausted { message } => {
            let (change, payload) = failed("restarts_exhausted", &message);
            record(inner, run, lease, change, payload).await.map(|_| ())
        }
        AfterCrash::Relaunch {
            wake_ms, message, ..
        } => {
            let change = RunChange {
                state: Some(RunState::Pending),
                release: true,
                restarted: true,
                wake_ms: Some(Some(wake_ms)),
                ..RunChange::default()
            };
            let payload = EventPayload::RunPending(RunPending {
                cause: "crashed".into(),
                message,
                wake_ms: Some(wake_ms),
            });
            record(inner, run, lease, change, payload).await.map(|_| ())
        }
    }
}

fn cleanup_dir(kind: &super::launch::ProgramDir, dir: &str) {
    if let ProgramDir::PerRun(_) = kind {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Put the program and the persisted files in place, run the program with
/// its endpoint, and return how it ended.
#[allow(clippy::too_many_arguments)]
async fn run_program(
    inner: &Arc<Inner>,
    run: &RunRecord,
    lease: &Lease,
    spec: &RunSpec,
    program: &Program,
    sandbox: &Sandbox,
    dir: &str,
    journal: Journal,
    launch: u32,
    stop: CancellationToken,
    workspace: Option<Arc<LaunchWorkspace>>,
) -> (End, Option<Stopped>, LaunchLog) {
    let mut log = LaunchLog::new(inner.options.max_log);
    let (mut tunnel, mut exec) =
        match start(inner, run, spec, program, sandbox, dir, &journal).await {
            Ok(started) => started,
            Err(message) => return (End::VmDied(message), None, log),
        };
    let launched = Launched {
        run: run.clone(),
        launch,
        lease: lease.clone(),
        program: program.clone(),
        sandbox: sandbox.clone(),
        workspace,
    };
    let session = Arc::new(Session::new(inner.clone(), launched, journal, stop.clone()));
    let deadline = run.deadline_ms.map(|d| {
        let now = inner.store.clock().now_ms();
        Duration::from_millis(d.saturating_sub(now))
    });
    let deadline = async move {
        match deadline {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let answer = |call: hearth_sandbox::TunnelCall| {
        let session = session.clone();
        tokio::spawn(async move {
            let (status, body) = session
                .answer(call.method(), call.path(), call.body())
                .await;
            call.respond(status, Some("application/json"), body).await;
        });
    };
    let mut end = loop {
        tokio::select! {
            call = tunnel.next() => match call {
                Some(call) => answer(call),
                None => break End::VmDied("the host channel to the VM closed".into()),
            },
            event = exec.next_event() => match event {
                Ok(Some(ExecEvent::Stdout(bytes))) => log.push("stdout", &bytes),
                Ok(Some(ExecEvent::Stderr(bytes))) => log.push("stderr", &bytes),
                Ok(Some(ExecEvent::Started(_))) => {}
                Ok(Some(ExecEvent::Exit(report))) => {
                    let message = report.message.clone().unwrap_or_else(|| {
                        format!("the program exited with status {}", report.code)
                    });
                    break End::Exited(report.code, message);
                }
                Ok(None) => break End::VmDied("the program's output ended without an exit".into()),
                Err(error) => break End::VmDied(format!("the VM stopped answering: {error}")),
            },
            () = stop.cancelled() => break End::Stopped,
            () = &mut deadline => break End::Deadline,
        }
    };
    if matches!(end, End::Stopped) {
        // Let the program hear its last answer and exit by itself, briefly.
        let grace = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                call = tunnel.next() => match call {
                    Some(call) => answer(call),
                    None => break,
                },
                event = exec.next_event() => match event {
                    Ok(Some(ExecEvent::Stdout(bytes))) => log.push("stdout", &bytes),
                    Ok(Some(ExecEvent::Stderr(bytes))) => log.push("stderr", &bytes),
                    Ok(Some(ExecEvent::Exit(report))) => {
                        if session.stopped().is_none() {
                            end = End::Exited(report.code, format!("the program exited with status {}", report.code));
                        }
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                () = &mut grace => break,
            }
        }
    }
    // The launch is over: calls still in flight (a tool call the VM's
    // death cut off) are abandoned and can record nothing; what it queued
    // is written before the run moves on.
    stop.cancel();
    session.flush().await;
    let stopped = session.stopped();
    (end, stopped, log)
}

/// Lay out the durable workspace a launch of `run` boots on: the chain of
/// the journal's last checkpoint (a fresh base before the first), in a
/// directory of this launch's; with the VM's writable disk over it.
async fn prepare_workspace(
    inner: &Arc<Inner>,
    run: &RunRecord,
    journal: &Journal,
    disk_bytes: u64,
) -> Result<(LaunchWorkspace, hearth_vm::ScratchDisk), String> {
    match (
        inner.manager.driver_name(),
        workspace_chain(journal, journal.next_seq()),
    ) {
        ("qemu", Ok(chain)) => {
            LaunchWorkspace::prepare(
                &inner.store,
                inner.manager.home().root(),
                &run.id,
                run.launches + 1,
                &chain,
                disk_bytes,
            )
            .await
        }
        (_, Err(error)) => Err(error),
        (other, _) => Err(format!(
            "a durable workspace needs the qemu VM driver; this server runs {other}"
        )),
    }
}

/// Run `program` in a fresh sandbox against `run`'s journal, recording
/// nothing, until it leaves the journal (it replays), asks for another
/// step than the journal holds (it diverges), or ends.
pub(crate) async fn verify(
    inner: &Arc<Inner>,
    run: &RunRecord,
    program: &Program,
    timeout: Duration,
) -> Result<Verdict, String> {
    let store = &inner.store;
    let steps = store.steps(&run.id).await.map_err(|e| e.to_string())?;
    let journal = Journal::from_steps(&run.id, steps).map_err(|e| e.to_string())?;
    let spec: RunSpec = serde_json::from_value(run.spec.clone()).unwrap_or_default();
    let mut options = SandboxOptions {
        image: spec.image.clone(),
        vcpus: spec.vcpus,
        memory: ByteSize::mib(spec.memory_mib),
        timeout: Some(timeout),
        ..SandboxOptions::default()
    };
    options.labels.insert("hearth.run".into(), run.id.clone());
    options
        .labels
        .insert("hearth.check".into(), "upgrade".into());
    // The check boots on the files a relaunch would: the journal's last
    // checkpoint. Its own top layer is thrown away with the directory.
    let mut _workspace = None;
    if spec.workspace == WorkspaceMode::Durable {
        let (prepared, scratch) =
            prepare_workspace(inner, run, &journal, options.disk.bytes()).await?;
        options.scratch = scratch;
        _workspace = Some(prepared);
    }
    // The check's programs reach what the run's would.
    let network = crate::network::NetworkSpec::of_run(
        spec.network.as_ref(),
        inner.manager.options().network.limits,
    )?;
    let record = inner
        .manager
        .create(CreateSpec {
            network,
            options,
            env: BTreeMap::new(),
        })
        .await
        .map_err(|e| format!("the check's VM could not start: {e}"))?;
    let dir = format!("{}-check", inner.options.program_dir.for_run(&run.id));
    let dir = match &inner.options.program_dir {
        ProgramDir::Fixed(fixed) => fixed.clone(),
        ProgramDir::PerRun(_) => dir,
    };
    let verdict = async {
        let (_, sandbox) = inner
            .manager
            .running(&record.id)
            .await
            .map_err(|e| e.to_string())?;
        let (mut tunnel, mut exec) =
            start(inner, run, &spec, program, &sandbox, &dir, &journal).await?;
        let stop = CancellationToken::new();
        let launched = Launched {
            run: run.clone(),
            launch: run.launches + 1,
            lease: inner.manager.node().lease(),
            program: program.clone(),
            sandbox: sandbox.clone(),
            workspace: None,
        };
        let session =
            Arc::new(Session::new(inner.clone(), launched, journal, stop.clone()).verifying());
        let mut log = LaunchLog::new(64 << 10);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                call = tunnel.next() => match call {
                    Some(call) => {
                        let session = session.clone();
                        tokio::spawn(async move {
                            let (status, body) =
                                session.answer(call.method(), call.path(), call.body()).await;
                            call.respond(status, Some("application/json"), body).await;
                        });
                    }
                    None => return Err("the check's VM closed its channel".to_string()),
                },
                event = exec.next_event() => match event {
                    Ok(Some(ExecEvent::Stdout(b))) => log.push("stdout", &b),
                    Ok(Some(ExecEvent::Stderr(b))) => log.push("stderr", &b),
                    Ok(Some(ExecEvent::Exit(report))) => {
                        return Ok(session.verdict().unwrap_or_else(|| {
                            let tail = String::from_utf8_lossy(&log.kept);
                            let tail: String = tail.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
                            Verdict::Diverges(format!(
                                "the new program exited with status {} before it left the journal; its output ended with: {tail}",
                                report.code
                            ))
                        }))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return Err("the check's VM stopped answering".to_string()),
                },
                () = stop.cancelled() => {
                    return session
                        .verdict()
                        .ok_or_else(|| "the check ended without a verdict".to_string())
                }
                () = &mut deadline => {
                    return Err(format!(
                        "the new program did not reach the end of the journal within {} s",
                        timeout.as_secs()
                    ))
                }
            }
        }
    }
    .await;
    let _ = inner.manager.destroy(&record.id).await;
    cleanup_dir(&inner.options.program_dir, &dir);
    verdict
}

/// Put the program and the persisted files in place, open the run
/// endpoint, and start the program with its URL; why not, if it failed.
async fn start(
    inner: &Inner,
    run: &RunRecord,
    spec: &RunSpec,
    program: &Program,
    sandbox: &Sandbox,
    dir: &str,
    journal: &Journal,
) -> Result<(hearth_sandbox::Tunnel, hearth_sandbox::Execution), String> {
    install(inner, program, sandbox, dir, journal).await?;
    let tunnel = sandbox
        .open_tunnel("127.0.0.1:0", inner.options.max_request_body)
        .await
        .map_err(|e| format!("the run endpoint could not open: {e}"))?;
    let mut env = spec.env.clone();
    env.insert(
        "HEARTH_RUN_URL".into(),
        format!("http://{}/v1/runs/{}", tunnel.address(), run.id),
    );
    env.insert("HEARTH_RUN_ID".into(), run.id.clone());
    env.insert("PYTHONUNBUFFERED".into(), "1".into());
    let argv = if spec.command.is_empty() {
        program.default_command(dir)
    } else {
        spec.command.clone()
    };
    let mut options = ExecOptions::new(argv);
    options.env = env;
    options.cwd = Some(dir.to_string());
    let exec = sandbox
        .exec(options)
        .await
        .map_err(|e| format!("the program could not start: {e}"))?;
    Ok((tunnel, exec))
}

/// Write the program's files and the run's persisted files into the VM.
async fn install(
    inner: &Inner,
    program: &Program,
    sandbox: &Sandbox,
    dir: &str,
    journal: &Journal,
) -> Result<(), String> {
    let mut files: Vec<(String, Bytes)> = program
        .files
        .iter()
        .map(|(path, data)| (format!("{dir}/{path}"), Bytes::from(data.clone())))
        .collect();
    for (path, digest) in persisted_files(journal) {
        let data = inner
            .store
            .blob(&digest)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        files.push((path, Bytes::from(data)));
    }
    for (path, data) in files {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !parent.is_empty() {
                sandbox
                    .mkdir(parent, true)
                    .await
                    .map_err(|e| format!("cannot create {parent} in the VM: {e}"))?;
            }
        }
        sandbox
            .write_file(&path, data)
            .await
            .map_err(|e| format!("cannot write {path} in the VM: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tagged_once_whatever_the_chunking() {
        let mut log = LaunchLog::new(1 << 20);
        for chunk in ["total is", " ", "6", "\n", "next\nline ", "two\n"] {
            log.push("stdout", chunk.as_bytes());
        }
        log.push("stderr", b"warn");
        log.push("stdout", b"more\n");
        let text = String::from_utf8(log.kept).unwrap();
        assert_eq!(
            text,
            "stdout: total is 6\nstdout: next\nstdout: line two\nstderr: warn\nstdout: more\n"
        );
        assert_eq!(log.total, 34);
    }

    #[test]
    fn output_past_the_cap_is_counted_and_says_so() {
        let mut log = LaunchLog::new(64);
        for _ in 0..10 {
            log.push("stdout", b"0123456789\n");
        }
        let text = String::from_utf8(log.kept).unwrap();
        assert!(
            text.ends_with("[output past the log cap was counted, not kept]\n"),
            "{text}"
        );
        assert_eq!(log.total, 110);
    }
}
