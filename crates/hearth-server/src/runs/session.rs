//! One launch's run endpoint on this server: the engine's
//! [`hearth_engine::Session`] acting on this node's store, its launch's
//! sandbox and the tool box (the [`Host`] here), and the check of a new
//! program against a run's journal (`upgrade`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use hearth_engine::host::{Child, Durability, Host, HostError, LaunchEnd, NewChild, Stopped};
use hearth_engine::journal::Decision;
use hearth_engine::session::{replayed, LaunchInfo};
use hearth_engine::{
    parse_call, Call, Effect, EndpointError, Journal, Program, RetryPolicy, RunState, StepError,
    StepRecord, WorkspaceCheckpoint,
};
use hearth_sandbox::Sandbox;
use hearth_store::event::{RunCompleted, RunNeedsAttention, RunWaiting};
use hearth_store::{EventPayload, Lease, NewRun, RunChange, RunRecord, RunWriter, StepWrite};

pub(crate) use hearth_engine::session::persisted_files;

use super::group_commit::Written;
use super::workspace::LaunchWorkspace;
use super::{failed, Inner};

/// What a launch runs: the run, which launch, under which lease, the
/// program and its sandbox.
pub(crate) struct Launched {
    pub run: RunRecord,
    pub launch: u32,
    pub lease: Lease,
    pub program: Program,
    pub sandbox: Sandbox,
    /// Its durable workspace, if the run has one.
    pub workspace: Option<Arc<LaunchWorkspace>>,
}

/// What checking a new program against a run's journal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It replays every recorded step (this many) and goes on from there.
    Replays(u64),
    /// It does not: why, naming the first step where it differs.
    Diverges(String),
}

/// The world a launch acts on: this node's store (under its lease), the
/// launch's sandbox and the tool box.
pub(crate) struct ServerHost {
    engine: Arc<Inner>,
    run: RunRecord,
    launch: u32,
    lease: Lease,
    program: Program,
    sandbox: Sandbox,
    /// Cancelled when the launch must end.
    stop: CancellationToken,
    workspace: Option<Arc<LaunchWorkspace>>,
    /// The last write queued without waiting for it.
    behind: Mutex<Option<oneshot::Receiver<Written>>>,
}

/// A launch's endpoint state.
pub(crate) struct Session {
    core: hearth_engine::Session<ServerHost>,
    journal: tokio::sync::Mutex<Journal>,
    /// Set for a check of a new program: nothing is recorded, replays are
    /// answered until the program leaves its journal or diverges.
    verify: Option<Mutex<Option<Verdict>>>,
}

type Answer = Result<Value, EndpointError>;

fn host_error(error: impl std::fmt::Display) -> HostError {
    HostError(error.to_string())
}

/// The run's move and its event for a launch's end.
pub(crate) fn launch_end(end: &LaunchEnd) -> (RunChange, EventPayload) {
    match end {
        LaunchEnd::Completed { output, bytes } => (
            RunChange {
                state: Some(RunState::Completed),
                output: Some(output.clone()),
                release: true,
                ..RunChange::default()
            },
            EventPayload::RunCompleted(RunCompleted {
                output_bytes: *bytes,
            }),
        ),
        LaunchEnd::Waiting {
            seq,
            reason,
            on,
            until_ms,
            wake_ms,
        } => (
            RunChange {
                state: Some(RunState::Waiting),
                wake_ms: Some(*wake_ms),
                waiting_for: Some(Some(json!({"reason": reason, "on": on, "seq": seq}))),
                release: true,
                ..RunChange::default()
            },
            EventPayload::RunWaiting(RunWaiting {
                seq: *seq,
                reason: reason.clone(),
                on: on.clone(),
                until_ms: *until_ms,
            }),
        ),
        LaunchEnd::NeedsAttention { seq, step, message } => (
            RunChange {
                state: Some(RunState::NeedsAttention),
                release: true,
                ..RunChange::default()
            },
            EventPayload::RunNeedsAttention(RunNeedsAttention {
                seq: *seq,
                step: step.clone(),
                message: message.clone(),
            }),
        ),
        LaunchEnd::Failed { code, message } => failed(code, message),
    }
}

impl ServerHost {
    fn write(&self, steps: Vec<StepRecord>) -> StepWrite {
        StepWrite {
            run_id: self.run.id.clone(),
            lease: self.lease.clone(),
            launch: self.launch,
            steps,
        }
    }
}

impl Host for ServerHost {
    fn now_ms(&self) -> u64 {
        self.engine.store.clock().now_ms()
    }

    fn random(&self) -> f64 {
        rand_unit()
    }

    async fn record(
        &self,
        steps: Vec<StepRecord>,
        durability: Durability,
    ) -> Result<(), HostError> {
        let write = self.write(steps);
        if durability == Durability::Behind {
            *self.behind.lock() = Some(self.engine.journal.queue(write));
            return Ok(());
        }
        self.engine.journal.write(write).await.map_err(host_error)
    }

    async fn flush(&self) {
        let behind = self.behind.lock().take();
        if let Some(written) = behind {
            match written.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(run = %self.run.id, %error, "a step's start was not recorded");
                }
                Err(_) => tracing::warn!(run = %self.run.id, "the journal committer stopped"),
            }
        }
    }

    async fn end(&self, end: &LaunchEnd) -> Result<bool, HostError> {
        let (change, payload) = launch_end(end);
        self.engine
            .store
            .change_run(
                &self.run.id,
                RunWriter::Owner(&self.lease),
                &change,
                payload,
            )
            .await
            .map(|moved| moved.is_some())
            .map_err(host_error)
    }

    fn cancel(&self) {
        self.stop.cancel();
    }

    async fn checkpoint(&self) -> Result<Option<WorkspaceCheckpoint>, HostError> {
        match &self.workspace {
            Some(workspace) => workspace
                .checkpoint(&self.sandbox, &self.engine.store)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    async fn hold_until(&self, until_ms: u64) -> bool {
        let wait = until_ms.saturating_sub(self.now_ms());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait)) => true,
            () = self.stop.cancelled() => false,
        }
    }

    fn tool_effect(&self, name: &str, args: &Value) -> Result<Effect, EndpointError> {
        self.engine.tools.check(name, args)
    }

    fn tool_policy(&self, name: &str, args: &Value) -> RetryPolicy {
        self.engine.tools.retry_policy(name, args)
    }

    async fn call_tool(
        &self,
        name: &str,
        args: &Value,
        key: &str,
    ) -> Option<Result<Value, StepError>> {
        tokio::select! {
            outcome = self.engine.tools.call(name, args, key) => Some(outcome),
            () = self.stop.cancelled() => None,
        }
    }

    async fn signals(&self, name: &str) -> Result<Vec<Value>, HostError> {
        let signals = self
            .engine
            .store
            .signals(&self.run.id, name)
            .await
            .map_err(host_error)?;
        Ok(signals.into_iter().map(|s| s.data).collect())
    }

    async fn wake(&self, on: &str) {
        let _ = self.engine.store.wake_run(&self.run.id, on).await;
    }

    async fn spawn_child(&self, child: NewChild<'_>) -> Result<Result<(), StepError>, HostError> {
        let program = match self.program.with_entry(child.program) {
            Ok(program) => program,
            Err(e) => return Ok(Err(StepError::permanent("invalid_program", e.to_string()))),
        };
        let digest = self
            .engine
            .store
            .put_blob(&program.to_bytes())
            .await
            .map_err(host_error)?;
        let mut spec = self.run.spec.clone();
        if let Some(map) = spec.as_object_mut() {
            map.remove("command");
        }
        let new = NewRun {
            id: child.id.to_string(),
            name: child.name.map(str::to_string),
            program: digest,
            spec,
            input: child.input.clone(),
            parent: Some((self.run.id.clone(), child.seq)),
            deadline_ms: self.run.deadline_ms,
        };
        match self.engine.store.insert_run(&new).await {
            Ok(_) | Err(hearth_store::StoreError::Duplicate(_)) => {}
            Err(error) => return Err(host_error(error)),
        }
        self.engine.wake.notify_one();
        Ok(Ok(()))
    }

    async fn child(&self, id: &str) -> Result<Child, HostError> {
        let child = self.engine.store.run(id).await.map_err(host_error)?;
        Ok(match child {
            Some(child) if child.parent_id.as_deref() == Some(&self.run.id) => {
                if child.state.is_final() {
                    Child::Ended(child_outcome(&child))
                } else {
                    Child::Running
                }
            }
            _ => Child::Unknown,
        })
    }

    async fn persist(&self, path: &str) -> Result<Result<(String, u64), StepError>, HostError> {
        let limit = self.engine.options.max_value;
        let data = match self.sandbox.read_file_to_vec(path, limit).await {
            Ok(data) => data,
            Err(e) => {
                return Ok(Err(StepError::permanent(
                    "persist",
                    format!("cannot persist {path}: {e}"),
                )))
            }
        };
        let digest = self
            .engine
            .store
            .put_blob(&data)
            .await
            .map_err(host_error)?;
        Ok(Ok((digest, data.len() as u64)))
    }

    async fn restore(&self, path: &str, digest: &str) -> Result<Result<u64, StepError>, HostError> {
        let data = self
            .engine
            .store
            .blob(digest)
            .await
            .map_err(host_error)?
            .unwrap_or_default();
        let size = data.len() as u64;
        if let Err(e) = self.sandbox.write_file(path, Bytes::from(data)).await {
            return Ok(Err(StepError::permanent(
                "restore",
                format!("cannot restore {path}: {e}"),
            )));
        }
        Ok(Ok(size))
    }
}

impl Session {
    pub fn new(
        engine: Arc<Inner>,
        launched: Launched,
        journal: Journal,
        stop: CancellationToken,
    ) -> Self {
        let run = &launched.run;
        let info = LaunchInfo {
            run_id: run.id.clone(),
            name: run.name.clone(),
            input: run.input.clone(),
            launch: launched.launch,
            program: run.program.clone(),
            deadline_ms: run.deadline_ms,
            hold_ms: engine.options.hold.as_millis() as u64,
            max_value: engine.options.max_value,
        };
        let host = ServerHost {
            engine,
            run: launched.run,
            launch: launched.launch,
            lease: launched.lease,
            program: launched.program,
            sandbox: launched.sandbox,
            stop,
            workspace: launched.workspace,
            behind: Mutex::default(),
        };
        Self {
            core: hearth_engine::Session::new(host, info),
            journal: tokio::sync::Mutex::new(journal),
            verify: None,
        }
    }

    /// A session that checks whether its program replays the journal,
    /// recording nothing.
    pub fn verifying(mut self) -> Self {
        self.verify = Some(Mutex::new(None));
        self
    }

    /// What a verifying session found, if it is done.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verify.as_ref().and_then(|v| v.lock().clone())
    }

    fn conclude(&self, verdict: Verdict) -> EndpointError {
        if let Some(slot) = &self.verify {
            slot.lock().get_or_insert(verdict);
        }
        self.core.host().cancel();
        EndpointError::stopped(
            "stopped",
            "this was a check of a new program against the run's journal; it is done",
        )
    }

    async fn verify_call(&self, journal: &Journal, call: Call) -> Answer {
        let recorded = journal.next_seq();
        let call_seq = call.seq();
        match &call {
            Call::Context => return Ok(self.core.context(journal)),
            Call::Complete { .. } => {
                let replayed = journal
                    .steps()
                    .iter()
                    .take_while(|s| s.state.is_final())
                    .count() as u64;
                let verdict = if replayed >= recorded {
                    Verdict::Replays(recorded)
                } else {
                    Verdict::Diverges(format!(
                        "the new program completes after replaying {replayed} steps; the journal holds {recorded}"
                    ))
                };
                return Err(self.conclude(verdict));
            }
            Call::StepResult { seq, .. } => {
                return Err(self.conclude(Verdict::Diverges(format!(
                "the new program reported a result for step {seq}, which it was not asked to run"
            ))))
            }
            _ => {}
        }
        let effect = match &call {
            Call::Tool { name, args, .. } => match self.core.host().tool_effect(name, args) {
                Ok(effect) => effect,
                Err(error) => {
                    return Err(self.conclude(Verdict::Diverges(format!(
                        "step {}: {}",
                        call_seq.unwrap_or_default(),
                        error.message
                    ))))
                }
            },
            _ => Effect::Pure,
        };
        let Some(step) = call.step_call(effect) else {
            return Err(EndpointError::invalid(None, "not a journaled call"));
        };
        match journal.decide(&step, self.core.host().now_ms()) {
            Ok(Decision::Replay(outcome)) => replayed(&call, outcome),
            Ok(Decision::NonDeterminism(nd)) => {
                Err(self.conclude(Verdict::Diverges(nd.to_string())))
            }
            // The first call the journal does not answer: everything before
            // it replayed.
            Ok(_) => Err(self.conclude(Verdict::Replays(step.seq))),
            Err(error) => Err(self.conclude(Verdict::Diverges(error.to_string()))),
        }
    }

    /// Why the engine ended the launch, if it did.
    pub fn stopped(&self) -> Option<Stopped> {
        self.core.stopped()
    }

    /// Answer one request of the program: status and JSON body.
    pub async fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Bytes) {
        let result = match parse_call(&self.core.info().run_id, method, path, body) {
            Ok(call) => {
                let mut journal = self.journal.lock().await;
                match &self.verify {
                    Some(_) if self.verdict().is_some() => {
                        Err(EndpointError::stopped("stopped", "the check is done"))
                    }
                    Some(_) => self.verify_call(&journal, call).await,
                    None => self.core.answer(&mut journal, call).await,
                }
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(body) => (200, Bytes::from(body.to_string())),
            Err(error) => (error.status, Bytes::from(error.body().to_string())),
        }
    }

    /// Wait for the writes queued without waiting: when the launch ends.
    pub async fn flush(&self) {
        self.core.host().flush().await;
    }
}

/// A child's end as a step outcome.
fn child_outcome(child: &RunRecord) -> Value {
    match child.state {
        RunState::Completed => json!({"status": "succeeded", "result": child.output}),
        state => {
            let (class, message) = match &child.error {
                Some(error) => (
                    error["code"].as_str().unwrap_or("failed").to_string(),
                    error["message"].as_str().unwrap_or_default().to_string(),
                ),
                None => (state.to_string(), format!("the child run was {state}")),
            };
            json!({"status": "failed", "error": {"class": class, "message": message, "retryable": false}})
        }
    }
}

/// Uniform in [0, 1) from the OS's randomness.
fn rand_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_in_the_unit_interval() {
        for _ in 0..1000 {
            let x = rand_unit();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
