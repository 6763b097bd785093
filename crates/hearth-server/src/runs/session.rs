//! One launch's run endpoint: every call the program makes, answered from
//! the journal or carried out and recorded before the answer goes back.
//!
//! Calls are answered one at a time, in order (the protocol requires it,
//! and the journal is a sequence). Whatever a call records reaches the
//! store before its answer leaves, so a launch that dies after any answer
//! resumes with that answer in its journal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use hearth_engine::journal::{AfterFailure, Decision, Outcome};
use hearth_engine::{
    parse_call, Call, Effect, EndpointError, Journal, Program, RetryPolicy, RunState, StepCall,
    StepError, StepRecord, ValueKind,
};
use hearth_sandbox::Sandbox;
use hearth_store::event::{RunCompleted, RunNeedsAttention, RunWaiting};
use hearth_store::{
    EventPayload, Lease, NewRun, RunChange, RunRecord, RunWriter, StepWrite, StoreError,
};

use super::group_commit::Written;
use super::{failed, Inner};

/// Why the engine ended a launch (the program's VM is to be released).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The run completed.
    Completed,
    /// The run released its VM to wait.
    Waiting,
    /// A step needs a person's decision.
    NeedsAttention,
    /// The run failed (non-determinism, a value too large, ...).
    Failed,
    /// The journal could not be written: this node no longer owns the run
    /// or the store is out of reach.
    Fenced(String),
}

/// What a launch runs: the run, which launch, under which lease, the
/// program and its sandbox.
pub(crate) struct Launched {
    pub run: RunRecord,
    pub launch: u32,
    pub lease: Lease,
    pub program: Program,
    pub sandbox: Sandbox,
}

/// What checking a new program against a run's journal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It replays every recorded step (this many) and goes on from there.
    Replays(u64),
    /// It does not: why, naming the first step where it differs.
    Diverges(String),
}

/// A launch's endpoint state.
pub(crate) struct Session {
    pub engine: Arc<Inner>,
    pub run: RunRecord,
    pub launch: u32,
    pub lease: Lease,
    pub program: Program,
    pub sandbox: Sandbox,
    journal: tokio::sync::Mutex<Journal>,
    /// Retry policies the program gave for its steps, by seq.
    policies: Mutex<HashMap<u64, RetryPolicy>>,
    /// Set when the engine ends the launch.
    stopped: Mutex<Option<Stopped>>,
    /// Cancelled when the launch must end.
    pub stop: CancellationToken,
    /// Set for a check of a new program: nothing is recorded, replays are
    /// answered until the program leaves its journal or diverges.
    verify: Option<Mutex<Option<Verdict>>>,
    /// The last write queued without waiting for it (see [`Wait`]).
    behind: Mutex<Option<oneshot::Receiver<Written>>>,
}

/// Whether a call's answer waits for its journal write to be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The answer leaves only once the write is durable.
    Durable,
    /// The write is queued, and the answer leaves at once: for the start of
    /// a step that may be repeated (pure or idempotent). Losing that record
    /// in a crash only means the step runs again, which its effect allows;
    /// the launch's next durable write (always queued after it) or its end
    /// waits for it.
    Behind,
}

type Answer = Result<Value, EndpointError>;

fn fenced(error: &StoreError) -> EndpointError {
    EndpointError::stopped(
        "fenced",
        format!("the engine cannot record this call ({error}); the run resumes from its journal"),
    )
}

impl Session {
    pub fn new(
        engine: Arc<Inner>,
        launched: Launched,
        journal: Journal,
        stop: CancellationToken,
    ) -> Self {
        Self {
            engine,
            run: launched.run,
            launch: launched.launch,
            lease: launched.lease,
            program: launched.program,
            sandbox: launched.sandbox,
            journal: tokio::sync::Mutex::new(journal),
            policies: Mutex::default(),
            stopped: Mutex::default(),
            stop,
            verify: None,
            behind: Mutex::default(),
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
        self.stop.cancel();
        EndpointError::stopped(
            "stopped",
            "this was a check of a new program against the run's journal; it is done",
        )
    }

    async fn verify_call(&self, journal: &Journal, call: Call) -> Answer {
        let recorded = journal.next_seq();
        let call_seq = call.seq();
        match &call {
            Call::Context => {
                return Ok(json!({
                    "run_id": self.run.id,
                    "name": self.run.name,
                    "input": self.run.input,
                    "launch": self.launch,
                    "program_digest": self.run.program,
                    "journal_length": recorded,
                }))
            }
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
            Call::Tool { name, args, .. } => match self.engine.tools.check(name, args) {
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
        match journal.decide(&step, self.now()) {
            Ok(Decision::Replay(outcome)) => self.replayed(&call, outcome),
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
        self.stopped.lock().clone()
    }

    fn now(&self) -> u64 {
        self.engine.store.clock().now_ms()
    }

    /// Answer one request of the program: status and JSON body.
    pub async fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Bytes) {
        let result = match self.stopped() {
            Some(stopped) => Err(EndpointError::stopped(
                "stopped",
                format!("this launch has ended ({stopped:?}); the program must exit"),
            )),
            None => match parse_call(&self.run.id, method, path, body) {
                Ok(call) => {
                    let mut journal = self.journal.lock().await;
                    if self.verify.is_some() {
                        if self.verdict().is_some() {
                            Err(EndpointError::stopped("stopped", "the check is done"))
                        } else {
                            self.verify_call(&journal, call).await
                        }
                    } else {
                        self.handle(&mut journal, call).await
                    }
                }
                Err(error) => Err(error),
            },
        };
        match result {
            Ok(body) => (200, Bytes::from(body.to_string())),
            Err(error) => (error.status, Bytes::from(error.body().to_string())),
        }
    }

    /// End the launch for `why`, recording the run's move first.
    async fn stop_with(
        &self,
        why: Stopped,
        change: RunChange,
        payload: EventPayload,
    ) -> EndpointError {
        let reason = match &why {
            Stopped::Completed => "completed",
            Stopped::Waiting => "waiting",
            Stopped::NeedsAttention => "needs_attention",
            Stopped::Failed => "failed",
            Stopped::Fenced(_) => "fenced",
        };
        self.flush().await;
        let message = match self
            .engine
            .store
            .change_run(
                &self.run.id,
                RunWriter::Owner(&self.lease),
                &change,
                payload,
            )
            .await
        {
            Ok(Some(_)) => format!("the run is {reason}; this launch is over"),
            Ok(None) => "the run moved on meanwhile (cancelled?); this launch is over".into(),
            Err(error) => {
                *self.stopped.lock() = Some(Stopped::Fenced(error.to_string()));
                self.stop.cancel();
                return fenced(&error);
            }
        };
        *self.stopped.lock() = Some(why);
        self.stop.cancel();
        EndpointError::stopped(reason, message)
    }

    /// Wait for the writes queued without waiting (see [`Wait::Behind`]):
    /// before the run's state changes, and when the launch ends.
    pub async fn flush(&self) {
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

    async fn persist(&self, journal: &Journal, seq: u64, wait: Wait) -> Result<(), EndpointError> {
        self.persist_from(journal, seq, None, wait).await
    }

    /// Write step `seq` as the journal now holds it, preceded in the same
    /// write (so with its own event) by `started`, the step as it was when
    /// its attempt began, when that was not written on its own.
    async fn persist_from(
        &self,
        journal: &Journal,
        seq: u64,
        started: Option<StepRecord>,
        wait: Wait,
    ) -> Result<(), EndpointError> {
        let Some(step) = journal.step(seq) else {
            return Ok(());
        };
        if let Some(result) = &step.result {
            let size = result.to_string().len();
            if size > self.engine.options.max_value {
                let message = format!(
                    "step {seq} ({}) would record a value of {size} bytes, more than the {} allowed (--run-max-value); return less from the step, or persist large data as a file",
                    step.name, self.engine.options.max_value
                );
                let (change, payload) = failed("too_large", &message);
                let mut error = self.stop_with(Stopped::Failed, change, payload).await;
                error.message = message;
                return Err(error);
            }
        }
        let write = StepWrite {
            run_id: self.run.id.clone(),
            lease: self.lease.clone(),
            launch: self.launch,
            steps: started.into_iter().chain([step.clone()]).collect(),
        };
        if wait == Wait::Behind {
            *self.behind.lock() = Some(self.engine.journal.queue(write));
            return Ok(());
        }
        match self.engine.journal.write(write).await {
            Ok(()) => Ok(()),
            Err(error) => {
                *self.stopped.lock() = Some(Stopped::Fenced(error.to_string()));
                self.stop.cancel();
                Err(fenced(&error))
            }
        }
    }

    async fn handle(&self, journal: &mut Journal, call: Call) -> Answer {
        match &call {
            Call::Context => {
                return Ok(json!({
                    "run_id": self.run.id,
                    "name": self.run.name,
                    "input": self.run.input,
                    "launch": self.launch,
                    "program_digest": self.run.program,
                    "journal_length": journal.next_seq(),
                }))
            }
            Call::Complete { output } => return self.complete(output.clone()).await,
            Call::StepResult {
                seq,
                attempt,
                outcome,
            } => {
                return self
                    .step_result(journal, *seq, *attempt, outcome.clone(), None)
                    .await
            }
            _ => {}
        }
        let tool_effect = match &call {
            Call::Tool { name, args, .. } => self.engine.tools.check(name, args)?,
            _ => Effect::Pure,
        };
        let Some(step) = call.step_call(tool_effect) else {
            return Err(EndpointError::invalid(None, "not a journaled call"));
        };
        if let Call::Step {
            seq,
            retry: Some(policy),
            ..
        } = &call
        {
            self.policies.lock().insert(*seq, policy.clone());
        }
        loop {
            let now = self.now();
            let decision = journal
                .decide(&step, now)
                .map_err(|e| EndpointError::other(400, "out_of_order", e.to_string()))?;
            match decision {
                Decision::Replay(outcome) => return self.replayed(&call, outcome),
                Decision::NonDeterminism(nd) => {
                    let (change, payload) = failed("non_determinism", &nd.to_string());
                    let mut error = self.stop_with(Stopped::Failed, change, payload).await;
                    if error.reason == Some("failed") {
                        error.reason = Some("non_determinism");
                        error.message = nd.to_string();
                    }
                    return Err(error);
                }
                Decision::NeedsDecision { seq, name } => {
                    return Err(self.needs_decision(seq, &name).await);
                }
                Decision::Wait { until_ms } => {
                    if let Call::Step { ran: Some(_), .. } = call {
                        return Err(EndpointError::other(
                            409,
                            "conflict",
                            format!("step {} has a retry scheduled: send POST /steps without a result and wait as told", step.seq),
                        ));
                    }
                    if let Call::Step { .. } = call {
                        return Ok(
                            json!({"action": "wait", "wait_ms": until_ms.saturating_sub(now)}),
                        );
                    }
                    self.hold_or_release(step.seq, "retry", None, until_ms)
                        .await?;
                }
                Decision::Execute {
                    attempt,
                    idempotency_key,
                } => {
                    return self
                        .execute(journal, &call, &step, attempt, &idempotency_key)
                        .await
                }
            }
        }
    }

    /// Sleep until `until_ms` if that is within the hold threshold; else
    /// release the VM (the run waits) and stop the launch.
    async fn hold_or_release(
        &self,
        seq: u64,
        reason: &str,
        on: Option<&str>,
        until_ms: u64,
    ) -> Result<(), EndpointError> {
        let now = self.now();
        let wait = until_ms.saturating_sub(now);
        if wait <= self.engine.options.hold.as_millis() as u64 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => return Ok(()),
                () = self.stop.cancelled() => {
                    return Err(EndpointError::stopped("stopped", "this launch was stopped"))
                }
            }
        }
        Err(self.release(seq, reason, on, Some(until_ms)).await)
    }

    /// Release the VM: the run waits (until `until_ms`, or until what it
    /// waits `on` arrives).
    async fn release(
        &self,
        seq: u64,
        reason: &str,
        on: Option<&str>,
        until_ms: Option<u64>,
    ) -> EndpointError {
        // Its deadline wakes it too, to fail it.
        let wake = match (until_ms, self.run.deadline_ms) {
            (Some(until), Some(deadline)) => Some(until.min(deadline)),
            (until, deadline) => until.or(deadline),
        };
        let change = RunChange {
            state: Some(RunState::Waiting),
            wake_ms: Some(wake),
            waiting_for: Some(Some(json!({"reason": reason, "on": on, "seq": seq}))),
            release: true,
            ..RunChange::default()
        };
        let payload = EventPayload::RunWaiting(RunWaiting {
            seq,
            reason: reason.to_string(),
            on: on.map(str::to_string),
            until_ms,
        });
        self.stop_with(Stopped::Waiting, change, payload).await
    }

    async fn needs_decision(&self, seq: u64, name: &str) -> EndpointError {
        let message = format!(
            "step {seq} ({name}) started and its outcome is unknown, and it may not be repeated safely: decide with `hearth run resolve {} --step {seq} --retry|--skip-with JSON|--fail`",
            self.run.id
        );
        let change = RunChange {
            state: Some(RunState::NeedsAttention),
            release: true,
            ..RunChange::default()
        };
        let payload = EventPayload::RunNeedsAttention(RunNeedsAttention {
            seq,
            step: name.to_string(),
            message,
        });
        self.stop_with(Stopped::NeedsAttention, change, payload)
            .await
    }

    /// The answer to a call whose outcome is recorded.
    fn replayed(&self, call: &Call, outcome: Outcome) -> Answer {
        let outcome_json = serde_json::to_value(&outcome).unwrap_or_default();
        Ok(match call {
            Call::Step { .. } => json!({"action": "replay", "outcome": outcome_json}),
            Call::Tool { .. } | Call::ChildResult { .. } => {
                // A child's result step records the child's outcome itself.
                if let (Call::ChildResult { .. }, Outcome::Succeeded { result }) = (call, &outcome)
                {
                    json!({ "outcome": result })
                } else {
                    json!({ "outcome": outcome_json })
                }
            }
            _ => match outcome {
                Outcome::Succeeded { result } => result,
                Outcome::Failed { error } => {
                    return Err(EndpointError::other(400, "step_failed", error.message))
                }
            },
        })
    }

    async fn begin(
        &self,
        journal: &mut Journal,
        step: &StepCall,
        wait: Wait,
    ) -> Result<u64, EndpointError> {
        let now = self.now();
        journal
            .begin(step, now)
            .map_err(|e| EndpointError::other(409, "conflict", e.to_string()))?;
        self.persist(journal, step.seq, wait).await?;
        Ok(now)
    }

    /// How the start of a step the program runs itself (or a value) is
    /// recorded: a step that may be repeated need not wait for it.
    fn start_wait(step: &StepCall) -> Wait {
        match step.effect {
            Effect::Pure | Effect::Idempotent => Wait::Behind,
            Effect::Unsafe => Wait::Durable,
        }
    }

    async fn succeed(
        &self,
        journal: &mut Journal,
        seq: u64,
        attempt: u32,
        result: Value,
    ) -> Result<(), EndpointError> {
        journal
            .succeed(seq, attempt, result, self.now())
            .map_err(|e| EndpointError::other(409, "conflict", e.to_string()))?;
        self.persist(journal, seq, Wait::Durable).await
    }

    /// Record attempt `attempt` of `seq` as failed for good with `error`,
    /// and answer it: replays give the same answer.
    async fn fail_step(
        &self,
        journal: &mut Journal,
        seq: u64,
        attempt: u32,
        error: StepError,
    ) -> EndpointError {
        let now = self.now();
        if let Err(e) = journal.fail(seq, attempt, error.clone(), &RetryPolicy::never(), 0.0, now) {
            return EndpointError::other(409, "conflict", e.to_string());
        }
        if let Err(e) = self.persist(journal, seq, Wait::Durable).await {
            return e;
        }
        EndpointError::other(400, "step_failed", error.message)
    }

    /// When the first attempt of `seq` started (waits count from it).
    fn first_start(journal: &Journal, seq: u64, fallback: u64) -> u64 {
        journal
            .step(seq)
            .and_then(|s| s.attempts.first())
            .map_or(fallback, |a| a.started_ms)
    }

    async fn execute(
        &self,
        journal: &mut Journal,
        call: &Call,
        step: &StepCall,
        attempt: u32,
        key: &str,
    ) -> Answer {
        let seq = step.seq;
        match call {
            Call::Step { ran: None, .. } => {
                self.begin(journal, step, Self::start_wait(step)).await?;
                Ok(json!({"action": "execute", "attempt": attempt, "idempotency_key": key}))
            }
            Call::Step { ran: Some(_), .. } if attempt != 1 => Err(EndpointError::other(
                409,
                "conflict",
                format!("step {seq} is on attempt {attempt}: send POST /steps without a result, and run the attempt on \"execute\""),
            )),
            Call::Step {
                ran: Some(outcome), ..
            } => {
                // Run before it was asked for, reported with the ask: its
                // start and outcome are written together.
                journal
                    .begin(step, self.now())
                    .map_err(|e| EndpointError::other(409, "conflict", e.to_string()))?;
                let started = journal.step(seq).cloned();
                self.step_result(journal, seq, attempt, outcome.clone(), started)
                    .await
            }
            Call::Value { kind, .. } => {
                let now = self.begin(journal, step, Self::start_wait(step)).await?;
                let value = match kind {
                    ValueKind::Now => json!(now as f64 / 1000.0),
                    ValueKind::Random => json!(rand_unit()),
                };
                let result = json!({ "value": value });
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Sleep { ms, .. } => {
                let now = self.begin(journal, step, Wait::Durable).await?;
                let until = Self::first_start(journal, seq, now).saturating_add(*ms);
                self.hold_or_release(seq, "sleep", None, until).await?;
                let result = json!({"slept": true});
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Signal {
                name, timeout_ms, ..
            } => {
                let now = self.begin(journal, step, Wait::Durable).await?;
                let index = journal.steps()[..seq as usize]
                    .iter()
                    .filter(|s| {
                        s.name == step.name
                            && s.result.as_ref().and_then(|r| r.get("received"))
                                == Some(&json!(true))
                    })
                    .count();
                let deadline =
                    timeout_ms.map(|t| Self::first_start(journal, seq, now).saturating_add(t));
                let signals = self
                    .engine
                    .store
                    .signals(&self.run.id, name)
                    .await
                    .map_err(|e| fenced(&e))?;
                let result = if let Some(signal) = signals.get(index) {
                    json!({"received": true, "data": signal.data})
                } else if deadline.is_some_and(|d| d <= now) {
                    json!({"received": false})
                } else {
                    let error = self.release(seq, "signal", Some(name), deadline).await;
                    // A signal that came while the run was on its way to
                    // waiting must still wake it.
                    if let Ok(signals) = self.engine.store.signals(&self.run.id, name).await {
                        if signals.len() > index {
                            let _ = self.engine.store.wake_run(&self.run.id, name).await;
                        }
                    }
                    return Err(error);
                };
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Spawn {
                program,
                input,
                name,
                ..
            } => {
                self.begin(journal, step, Wait::Durable).await?;
                let child_id = child_run_id(&self.run.id, seq);
                let child_program = match self.program.with_entry(program) {
                    Ok(p) => p,
                    Err(e) => {
                        let error = StepError::permanent("invalid_program", e.to_string());
                        return Err(self.fail_step(journal, seq, attempt, error).await);
                    }
                };
                let digest = self
                    .engine
                    .store
                    .put_blob(&child_program.to_bytes())
                    .await
                    .map_err(|e| fenced(&e))?;
                let mut spec = self.run.spec.clone();
                if let Some(map) = spec.as_object_mut() {
                    map.remove("command");
                }
                let new = NewRun {
                    id: child_id.clone(),
                    name: name.clone(),
                    program: digest,
                    spec,
                    input: input.clone(),
                    parent: Some((self.run.id.clone(), seq)),
                    deadline_ms: self.run.deadline_ms,
                };
                match self.engine.store.insert_run(&new).await {
                    Ok(_) | Err(StoreError::Duplicate(_)) => {}
                    Err(error) => return Err(fenced(&error)),
                }
                self.engine.wake.notify_one();
                let result = json!({ "child_id": child_id });
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::ChildResult { child_id, .. } => {
                let child = self
                    .engine
                    .store
                    .run(child_id)
                    .await
                    .map_err(|e| fenced(&e))?;
                let Some(child) = child.filter(|c| c.parent_id.as_deref() == Some(&self.run.id))
                else {
                    return Err(EndpointError::not_found(format!(
                        "run {} has no child {child_id:?}",
                        self.run.id
                    )));
                };
                self.begin(journal, step, Wait::Durable).await?;
                if !child.state.is_final() {
                    let error = self.release(seq, "child", Some(child_id), None).await;
                    if let Ok(Some(now)) = self.engine.store.run(child_id).await {
                        if now.state.is_final() {
                            let _ = self.engine.store.wake_run(&self.run.id, child_id).await;
                        }
                    }
                    return Err(error);
                }
                let outcome = child_outcome(&child);
                self.succeed(journal, seq, attempt, outcome.clone()).await?;
                Ok(json!({ "outcome": outcome }))
            }
            Call::Persist { path, .. } => {
                self.begin(journal, step, Wait::Durable).await?;
                let limit = self.engine.options.max_value;
                let data = match self.sandbox.read_file_to_vec(path, limit).await {
                    Ok(data) => data,
                    Err(e) => {
                        let error =
                            StepError::permanent("persist", format!("cannot persist {path}: {e}"));
                        return Err(self.fail_step(journal, seq, attempt, error).await);
                    }
                };
                let size = data.len();
                let digest = self
                    .engine
                    .store
                    .put_blob(&data)
                    .await
                    .map_err(|e| fenced(&e))?;
                let result = json!({"path": path, "digest": digest, "size": size});
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Restore { path, .. } => {
                self.begin(journal, step, Wait::Durable).await?;
                let result = match latest_persisted(journal, seq, path) {
                    Some(digest) => {
                        let data = self
                            .engine
                            .store
                            .blob(&digest)
                            .await
                            .map_err(|e| fenced(&e))?
                            .unwrap_or_default();
                        let size = data.len();
                        if let Err(e) = self.sandbox.write_file(path, Bytes::from(data)).await {
                            let error = StepError::permanent(
                                "restore",
                                format!("cannot restore {path}: {e}"),
                            );
                            return Err(self.fail_step(journal, seq, attempt, error).await);
                        }
                        json!({"restored": true, "size": size})
                    }
                    None => json!({"restored": false}),
                };
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Tool { name, args, .. } => {
                self.tool(journal, step, name, args, attempt, key).await
            }
            Call::Context | Call::Complete { .. } | Call::StepResult { .. } => {
                Err(EndpointError::invalid(None, "not a journaled call"))
            }
        }
    }

    async fn tool(
        &self,
        journal: &mut Journal,
        step: &StepCall,
        name: &str,
        args: &Value,
        first_attempt: u32,
        key: &str,
    ) -> Answer {
        let seq = step.seq;
        let policy = self.engine.tools.retry_policy(name, args);
        let mut attempt = first_attempt;
        loop {
            self.begin(journal, step, Wait::Durable).await?;
            let outcome = tokio::select! {
                outcome = self.engine.tools.call(name, args, key) => outcome,
                () = self.stop.cancelled() => {
                    return Err(EndpointError::stopped("stopped", "this launch was stopped"))
                }
            };
            let now = self.now();
            match outcome {
                Ok(result) => {
                    self.succeed(journal, seq, attempt, result.clone()).await?;
                    return Ok(json!({
                        "outcome": {"status": "succeeded", "result": result},
                        "attempts": attempt,
                        "idempotency_key": key,
                    }));
                }
                Err(error) => {
                    let after = journal
                        .fail(seq, attempt, error.clone(), &policy, rand_unit(), now)
                        .map_err(|e| EndpointError::other(409, "conflict", e.to_string()))?;
                    self.persist(journal, seq, Wait::Durable).await?;
                    match after {
                        AfterFailure::Failed => {
                            return Ok(json!({
                                "outcome": {"status": "failed", "error": error},
                                "attempts": attempt,
                                "idempotency_key": key,
                            }))
                        }
                        AfterFailure::RetryAt(at) => {
                            let mut until = at;
                            attempt = loop {
                                self.hold_or_release(seq, "retry", None, until).await?;
                                match journal.decide(step, self.now()) {
                                    Ok(Decision::Execute { attempt, .. }) => break attempt,
                                    Ok(Decision::Wait { until_ms }) => until = until_ms,
                                    other => {
                                        return Err(EndpointError::other(
                                            409,
                                            "conflict",
                                            format!("step {seq} cannot be retried: {other:?}"),
                                        ))
                                    }
                                }
                            };
                        }
                    }
                }
            }
        }
    }

    async fn step_result(
        &self,
        journal: &mut Journal,
        seq: u64,
        attempt: u32,
        outcome: Result<Value, StepError>,
        started: Option<StepRecord>,
    ) -> Answer {
        let now = self.now();
        match outcome {
            Ok(result) => {
                journal.succeed(seq, attempt, result, now).map_err(|e| {
                    EndpointError::other(409, "conflict", format!("{e}; ask POST /steps again"))
                })?;
                self.persist_from(journal, seq, started.clone(), Wait::Durable)
                    .await?;
                let recorded = journal.step(seq).and_then(|s| s.result.clone());
                Ok(
                    json!({"action": "done", "outcome": {"status": "succeeded", "result": recorded}}),
                )
            }
            Err(error) => {
                let policy = self.policies.lock().get(&seq).cloned().unwrap_or_default();
                let after = journal
                    .fail(seq, attempt, error.clone(), &policy, rand_unit(), now)
                    .map_err(|e| {
                        EndpointError::other(409, "conflict", format!("{e}; ask POST /steps again"))
                    })?;
                self.persist_from(journal, seq, started, Wait::Durable)
                    .await?;
                Ok(match after {
                    AfterFailure::Failed => {
                        json!({"action": "done", "outcome": {"status": "failed", "error": error}})
                    }
                    AfterFailure::RetryAt(at) => {
                        json!({"action": "retry", "wait_ms": at.saturating_sub(now)})
                    }
                })
            }
        }
    }

    async fn complete(&self, output: Value) -> Answer {
        let size = output.to_string().len();
        if size > self.engine.options.max_value {
            return Err(EndpointError::other(
                413,
                "too_large",
                format!(
                    "the output is {size} bytes, more than the {} allowed",
                    self.engine.options.max_value
                ),
            ));
        }
        let change = RunChange {
            state: Some(RunState::Completed),
            output: Some(output),
            release: true,
            ..RunChange::default()
        };
        let payload = EventPayload::RunCompleted(RunCompleted {
            output_bytes: size as u64,
        });
        let error = self.stop_with(Stopped::Completed, change, payload).await;
        if self.stopped() == Some(Stopped::Completed) {
            return Ok(json!({"completed": true}));
        }
        Err(error)
    }
}

/// The id of the child a run spawns at step `seq`: the same on every
/// replay, so a relaunch finds the child it started instead of starting
/// another.
pub(crate) fn child_run_id(parent: &str, seq: u64) -> String {
    let key = hearth_engine::digest::idempotency_key(parent, seq);
    format!("run-{}", &key[3..23])
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

/// The digest last persisted for `path` before step `seq`.
fn latest_persisted(journal: &Journal, seq: u64, path: &str) -> Option<String> {
    journal.steps()[..(seq as usize).min(journal.steps().len())]
        .iter()
        .rev()
        .filter(|s| s.name == "persist")
        .filter_map(|s| s.result.as_ref())
        .find(|r| r["path"] == path)
        .and_then(|r| r["digest"].as_str().map(str::to_string))
}

/// Every path persisted in `journal`, with its latest digest.
pub(crate) fn persisted_files(journal: &Journal) -> Vec<(String, String)> {
    let mut latest: HashMap<String, String> = HashMap::new();
    for step in journal.steps() {
        if let (true, Some(result)) = (step.name == "persist", &step.result) {
            if let (Some(path), Some(digest)) = (result["path"].as_str(), result["digest"].as_str())
            {
                latest.insert(path.to_string(), digest.to_string());
            }
        }
    }
    let mut files: Vec<_> = latest.into_iter().collect();
    files.sort();
    files
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
    fn child_ids_are_stable_per_step_and_distinct() {
        assert_eq!(child_run_id("run-a", 3), child_run_id("run-a", 3));
        assert_ne!(child_run_id("run-a", 3), child_run_id("run-a", 4));
        assert_ne!(child_run_id("run-a", 3), child_run_id("run-b", 3));
        assert!(child_run_id("run-a", 3).starts_with("run-"));
    }

    #[test]
    fn random_values_are_in_the_unit_interval() {
        for _ in 0..1000 {
            let x = rand_unit();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
