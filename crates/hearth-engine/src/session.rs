//! One launch's run endpoint: every call the program makes, answered from
//! the journal or carried out and recorded before the answer goes back.
//!
//! Calls are answered one at a time, in order (the protocol requires it,
//! and the journal is a sequence). Whatever a call records reaches the
//! store before its answer leaves (or, for the start of a step that may be
//! repeated, before the next durable write), so a launch that dies after
//! any answer resumes with that answer in its journal.
//!
//! The session decides; its [`Host`] acts. The server and the
//! deterministic simulation run this same code over different hosts.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::host::{Child, Durability, Host, HostError, LaunchEnd, NewChild, Stopped};
use crate::journal::{AfterFailure, Decision, Outcome};
use crate::protocol::{Call, EndpointError, ValueKind};
use crate::{Effect, Journal, RetryPolicy, StepCall, StepError, StepRecord, WorkspaceCheckpoint};

/// What a launch knows of its run.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchInfo {
    /// The run.
    pub run_id: String,
    /// Its name.
    pub name: Option<String>,
    /// Its input.
    pub input: Value,
    /// Which launch this is (1 for the first).
    pub launch: u32,
    /// The pinned program's digest.
    pub program: String,
    /// The run's deadline, ms since the epoch.
    pub deadline_ms: Option<u64>,
    /// Waits up to this long keep the VM; longer ones release it, ms.
    pub hold_ms: u64,
    /// The largest value a step may record or a run may output, bytes.
    pub max_value: usize,
}

type Answer = Result<Value, EndpointError>;

fn fenced(error: &HostError) -> EndpointError {
    EndpointError::stopped(
        "fenced",
        format!("the engine cannot record this call ({error}); the run resumes from its journal"),
    )
}

fn conflict(error: impl std::fmt::Display) -> EndpointError {
    EndpointError::other(409, "conflict", error.to_string())
}

/// The run's move when its journal holds step `seq` (`name`), started
/// with an unknown outcome and not safe to repeat.
pub fn needs_attention(run_id: &str, seq: u64, name: &str) -> LaunchEnd {
    LaunchEnd::NeedsAttention {
        seq,
        step: name.to_string(),
        message: format!(
            "step {seq} ({name}) started and its outcome is unknown, and it may not be repeated safely: decide with `hearth run resolve {run_id} --step {seq} --retry|--skip-with JSON|--fail`"
        ),
    }
}

/// What a run's next launch does, decided before any VM boots.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Boot a VM and run the program.
    Launch,
    /// Do not: the run ends its turn this way.
    Stop(LaunchEnd),
}

/// Prepare `journal` for a new launch at `now_ms`: attempts the last launch
/// left in flight are lost (a step safe to repeat is scheduled again, an
/// unsafe one becomes indeterminate). Returns the steps that changed (to
/// record before anything else), and whether to launch: not when a step
/// needs a person's decision, nor past the run's deadline.
pub fn resume(
    journal: &mut Journal,
    deadline_ms: Option<u64>,
    now_ms: u64,
) -> (Vec<StepRecord>, Resume) {
    let lost: Vec<StepRecord> = journal
        .interrupt(now_ms)
        .unwrap_or_default()
        .iter()
        .filter_map(|seq| journal.step(*seq).cloned())
        .collect();
    let next = if let Some(step) = journal.needs_decision() {
        Resume::Stop(needs_attention(journal.run_id(), step.seq, &step.name))
    } else if deadline_ms.is_some_and(|d| d <= now_ms) {
        Resume::Stop(LaunchEnd::Failed {
            code: "deadline",
            message: "the run passed its deadline before it ended".into(),
        })
    } else {
        Resume::Launch
    };
    (lost, next)
}

/// After the program or its VM crashed: relaunch later, or fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCrash {
    /// Relaunch number `restart`, not before `wake_ms`.
    Relaunch {
        /// Which relaunch (1 for the first).
        restart: u32,
        /// When, ms since the epoch.
        wake_ms: u64,
        /// What happened, and which relaunch of how many.
        message: String,
    },
    /// The relaunches are used up: the run fails.
    Exhausted {
        /// What happened.
        message: String,
    },
}

/// What follows a crash (`message`) of a run that has been relaunched
/// `restarts` times under `spec`, at `now_ms`.
pub fn after_crash(spec: &crate::RunSpec, restarts: u32, now_ms: u64, message: &str) -> AfterCrash {
    let restart = restarts + 1;
    if restart > spec.max_restarts {
        return AfterCrash::Exhausted {
            message: format!(
                "the program crashed and its {} relaunches are used up; the last crash: {message}",
                spec.max_restarts
            ),
        };
    }
    AfterCrash::Relaunch {
        restart,
        wake_ms: now_ms + spec.restart_backoff(restart),
        message: format!("{message}; relaunch {restart} of {}", spec.max_restarts),
    }
}

/// A launch's endpoint: answers the program's calls against its journal.
pub struct Session<H> {
    host: H,
    info: LaunchInfo,
    /// Retry policies the program gave for its steps, by seq.
    policies: Mutex<HashMap<u64, RetryPolicy>>,
    /// Set when the engine ends the launch.
    stopped: Mutex<Option<Stopped>>,
}

impl<H: Host> Session<H> {
    /// A session for `info`'s launch over `host`.
    pub fn new(host: H, info: LaunchInfo) -> Self {
        Self {
            host,
            info,
            policies: Mutex::default(),
            stopped: Mutex::default(),
        }
    }

    /// Its host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// Its launch.
    pub fn info(&self) -> &LaunchInfo {
        &self.info
    }

    /// Why the engine ended the launch, if it did.
    pub fn stopped(&self) -> Option<Stopped> {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_stopped(&self, why: Stopped) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.host.cancel();
    }

    /// The answer to `context`.
    pub fn context(&self, journal: &Journal) -> Value {
        json!({
            "run_id": self.info.run_id,
            "name": self.info.name,
            "input": self.info.input,
            "launch": self.info.launch,
            "program_digest": self.info.program,
            "journal_length": journal.next_seq(),
        })
    }

    /// Answer one call of the program.
    pub async fn answer(&self, journal: &mut Journal, call: Call) -> Answer {
        if let Some(stopped) = self.stopped() {
            return Err(EndpointError::stopped(
                "stopped",
                format!("this launch has ended ({stopped}); the program must exit"),
            ));
        }
        self.handle(journal, call).await
    }

    /// End the launch with `end`, recording the run's move first.
    async fn stop_with(&self, end: LaunchEnd) -> EndpointError {
        let why = end.stopped();
        let reason = why.as_str();
        self.host.flush().await;
        let message = match self.host.end(&end).await {
            Ok(true) => format!("the run is {reason}; this launch is over"),
            Ok(false) => "the run moved on meanwhile (cancelled?); this launch is over".into(),
            Err(error) => {
                self.set_stopped(Stopped::Fenced(error.to_string()));
                return fenced(&error);
            }
        };
        self.set_stopped(why);
        EndpointError::stopped(reason, message)
    }

    /// Fail the run with `code`, answering with `message`.
    async fn fail_run(&self, code: &'static str, message: String) -> EndpointError {
        let mut error = self
            .stop_with(LaunchEnd::Failed {
                code,
                message: message.clone(),
            })
            .await;
        if error.reason == Some("failed") {
            error.message = message;
        }
        error
    }

    async fn persist(
        &self,
        journal: &mut Journal,
        seq: u64,
        durability: Durability,
    ) -> Result<(), EndpointError> {
        self.persist_from(journal, seq, None, durability).await
    }

    /// Write step `seq` as the journal now holds it, preceded in the same
    /// write (so with its own event) by `started`, the step as it was when
    /// its attempt began, when that was not written on its own.
    async fn persist_from(
        &self,
        journal: &mut Journal,
        seq: u64,
        started: Option<StepRecord>,
        durability: Durability,
    ) -> Result<(), EndpointError> {
        let ended = journal
            .step(seq)
            .is_some_and(|s| s.state.is_final() && s.checkpoint.is_none());
        if ended {
            // The files as the step left them go with its record.
            match self.host.checkpoint().await {
                Ok(Some(checkpoint)) => journal.set_checkpoint(seq, checkpoint),
                Ok(None) => {}
                Err(error) => {
                    self.set_stopped(Stopped::Fenced(error.to_string()));
                    return Err(fenced(&error));
                }
            }
        }
        let Some(step) = journal.step(seq) else {
            return Ok(());
        };
        if let Some(result) = &step.result {
            let size = result.to_string().len();
            if size > self.info.max_value {
                let message = format!(
                    "step {seq} ({}) would record a value of {size} bytes, more than the {} allowed (--run-max-value); return less from the step, or persist large data as a file",
                    step.name, self.info.max_value
                );
                return Err(self.fail_run("too_large", message).await);
            }
        }
        let steps = started.into_iter().chain([step.clone()]).collect();
        match self.host.record(steps, durability).await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.set_stopped(Stopped::Fenced(error.to_string()));
                Err(fenced(&error))
            }
        }
    }

    async fn handle(&self, journal: &mut Journal, call: Call) -> Answer {
        match &call {
            Call::Context => return Ok(self.context(journal)),
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
            Call::Tool { name, args, .. } => self.host.tool_effect(name, args)?,
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
            self.policies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(*seq, policy.clone());
        }
        loop {
            let now = self.host.now_ms();
            let decision = journal
                .decide(&step, now)
                .map_err(|e| EndpointError::other(400, "out_of_order", e.to_string()))?;
            match decision {
                Decision::Replay(outcome) => return replayed(&call, outcome),
                Decision::NonDeterminism(nd) => {
                    let mut error = self.fail_run("non_determinism", nd.to_string()).await;
                    if error.reason == Some("failed") {
                        error.reason = Some("non_determinism");
                    }
                    return Err(error);
                }
                Decision::NeedsDecision { seq, name } => {
                    let end = needs_attention(&self.info.run_id, seq, &name);
                    return Err(self.stop_with(end).await);
                }
                Decision::Wait { until_ms } => {
                    if let Call::Step { ran: Some(_), .. } = call {
                        return Err(conflict(format!("step {} has a retry scheduled: send POST /steps without a result and wait as told", step.seq)));
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
        let wait = until_ms.saturating_sub(self.host.now_ms());
        if wait <= self.info.hold_ms {
            if self.host.hold_until(until_ms).await {
                return Ok(());
            }
            return Err(EndpointError::stopped("stopped", "this launch was stopped"));
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
        let wake_ms = match (until_ms, self.info.deadline_ms) {
            (Some(until), Some(deadline)) => Some(until.min(deadline)),
            (until, deadline) => until.or(deadline),
        };
        self.stop_with(LaunchEnd::Waiting {
            seq,
            reason: reason.to_string(),
            on: on.map(str::to_string),
            until_ms,
            wake_ms,
        })
        .await
    }

    async fn begin(
        &self,
        journal: &mut Journal,
        step: &StepCall,
        durability: Durability,
    ) -> Result<u64, EndpointError> {
        let now = self.host.now_ms();
        journal.begin(step, now).map_err(conflict)?;
        self.persist(journal, step.seq, durability).await?;
        Ok(now)
    }

    async fn succeed(
        &self,
        journal: &mut Journal,
        seq: u64,
        attempt: u32,
        result: Value,
    ) -> Result<(), EndpointError> {
        journal
            .succeed(seq, attempt, result, self.host.now_ms())
            .map_err(conflict)?;
        self.persist(journal, seq, Durability::Durable).await
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
        let now = self.host.now_ms();
        if let Err(e) = journal.fail(seq, attempt, error.clone(), &RetryPolicy::never(), 0.0, now) {
            return conflict(e);
        }
        if let Err(e) = self.persist(journal, seq, Durability::Durable).await {
            return e;
        }
        EndpointError::other(400, "step_failed", error.message)
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
                self.begin(journal, step, start_durability(step)).await?;
                Ok(json!({"action": "execute", "attempt": attempt, "idempotency_key": key}))
            }
            Call::Step { ran: Some(_), .. } if attempt != 1 => Err(conflict(format!(
                "step {seq} is on attempt {attempt}: send POST /steps without a result, and run the attempt on \"execute\""
            ))),
            Call::Step {
                ran: Some(outcome), ..
            } => {
                // Run before it was asked for, reported with the ask: its
                // start and outcome are written together.
                journal.begin(step, self.host.now_ms()).map_err(conflict)?;
                let started = journal.step(seq).cloned();
                self.step_result(journal, seq, attempt, outcome.clone(), started)
                    .await
            }
            Call::Value { kind, .. } => {
                let now = self.begin(journal, step, start_durability(step)).await?;
                let value = match kind {
                    ValueKind::Now => json!(now as f64 / 1000.0),
                    ValueKind::Random => json!(self.host.random()),
                };
                let result = json!({ "value": value });
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Sleep { ms, .. } => {
                let now = self.begin(journal, step, Durability::Durable).await?;
                let until = first_start(journal, seq, now).saturating_add(*ms);
                self.hold_or_release(seq, "sleep", None, until).await?;
                let result = json!({"slept": true});
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Signal {
                name, timeout_ms, ..
            } => {
                let now = self.begin(journal, step, Durability::Durable).await?;
                // The n-th wait for a signal receives its n-th sending.
                let index = journal.steps()[..seq as usize]
                    .iter()
                    .filter(|s| {
                        s.name == step.name
                            && s.result.as_ref().and_then(|r| r.get("received"))
                                == Some(&json!(true))
                    })
                    .count();
                let deadline = timeout_ms.map(|t| first_start(journal, seq, now).saturating_add(t));
                let signals = self.host.signals(name).await.map_err(|e| fenced(&e))?;
                let result = if let Some(data) = signals.get(index) {
                    json!({"received": true, "data": data})
                } else if deadline.is_some_and(|d| d <= now) {
                    json!({"received": false})
                } else {
                    let error = self.release(seq, "signal", Some(name), deadline).await;
                    // A signal that came while the run was on its way to
                    // waiting must still wake it.
                    if let Ok(signals) = self.host.signals(name).await {
                        if signals.len() > index {
                            self.host.wake(name).await;
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
                self.begin(journal, step, Durability::Durable).await?;
                let child_id = child_run_id(&self.info.run_id, seq);
                let child = NewChild {
                    id: &child_id,
                    seq,
                    program,
                    input,
                    name: name.as_deref(),
                };
                if let Err(error) = self.host.spawn_child(child).await.map_err(|e| fenced(&e))? {
                    return Err(self.fail_step(journal, seq, attempt, error).await);
                }
                let result = json!({ "child_id": child_id });
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::ChildResult { child_id, .. } => {
                let child = self.host.child(child_id).await.map_err(|e| fenced(&e))?;
                if child == Child::Unknown {
                    return Err(EndpointError::not_found(format!(
                        "run {} has no child {child_id:?}",
                        self.info.run_id
                    )));
                }
                self.begin(journal, step, Durability::Durable).await?;
                let Child::Ended(outcome) = child else {
                    let error = self.release(seq, "child", Some(child_id), None).await;
                    // A child that ended while the run was on its way to
                    // waiting must still wake it.
                    if let Ok(Child::Ended(_)) = self.host.child(child_id).await {
                        self.host.wake(child_id).await;
                    }
                    return Err(error);
                };
                self.succeed(journal, seq, attempt, outcome.clone()).await?;
                Ok(json!({ "outcome": outcome }))
            }
            Call::Persist { path, .. } => {
                self.begin(journal, step, Durability::Durable).await?;
                let (digest, size) = match self.host.persist(path).await.map_err(|e| fenced(&e))? {
                    Ok(kept) => kept,
                    Err(error) => return Err(self.fail_step(journal, seq, attempt, error).await),
                };
                let result = json!({"path": path, "digest": digest, "size": size});
                self.succeed(journal, seq, attempt, result.clone()).await?;
                Ok(result)
            }
            Call::Restore { path, .. } => {
                self.begin(journal, step, Durability::Durable).await?;
                let result = match latest_persisted(journal, seq, path) {
                    Some(digest) => match self
                        .host
                        .restore(path, &digest)
                        .await
                        .map_err(|e| fenced(&e))?
                    {
                        Ok(size) => json!({"restored": true, "size": size}),
                        Err(error) => {
                            return Err(self.fail_step(journal, seq, attempt, error).await)
                        }
                    },
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
        let policy = self.host.tool_policy(name, args);
        let mut attempt = first_attempt;
        loop {
            // An unsafe call's start is durable before the call leaves, so
            // a crash during it is known as an unknown outcome.
            self.begin(journal, step, Durability::Durable).await?;
            let Some(outcome) = self.host.call_tool(name, args, key).await else {
                return Err(EndpointError::stopped("stopped", "this launch was stopped"));
            };
            let now = self.host.now_ms();
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
                        .fail(
                            seq,
                            attempt,
                            error.clone(),
                            &policy,
                            self.host.random(),
                            now,
                        )
                        .map_err(conflict)?;
                    self.persist(journal, seq, Durability::Durable).await?;
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
                                match journal.decide(step, self.host.now_ms()) {
                                    Ok(Decision::Execute { attempt, .. }) => break attempt,
                                    Ok(Decision::Wait { until_ms }) => until = until_ms,
                                    other => {
                                        return Err(conflict(format!(
                                            "step {seq} cannot be retried: {other:?}"
                                        )))
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
        let now = self.host.now_ms();
        let again = |e: crate::JournalError| conflict(format!("{e}; ask POST /steps again"));
        match outcome {
            Ok(result) => {
                journal.succeed(seq, attempt, result, now).map_err(again)?;
                self.persist_from(journal, seq, started, Durability::Durable)
                    .await?;
                let recorded = journal.step(seq).and_then(|s| s.result.clone());
                Ok(
                    json!({"action": "done", "outcome": {"status": "succeeded", "result": recorded}}),
                )
            }
            Err(error) => {
                let policy = self
                    .policies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&seq)
                    .cloned()
                    .unwrap_or_default();
                let after = journal
                    .fail(
                        seq,
                        attempt,
                        error.clone(),
                        &policy,
                        self.host.random(),
                        now,
                    )
                    .map_err(again)?;
                self.persist_from(journal, seq, started, Durability::Durable)
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
        if size > self.info.max_value {
            return Err(EndpointError::other(
                413,
                "too_large",
                format!(
                    "the output is {size} bytes, more than the {} allowed",
                    self.info.max_value
                ),
            ));
        }
        let end = LaunchEnd::Completed {
            output,
            bytes: size as u64,
        };
        let error = self.stop_with(end).await;
        if self.stopped() == Some(Stopped::Completed) {
            return Ok(json!({"completed": true}));
        }
        Err(error)
    }
}

/// How the start of a step the program runs itself (or a value) is
/// recorded: a step that may be repeated need not wait for it.
fn start_durability(step: &StepCall) -> Durability {
    match step.effect {
        Effect::Pure | Effect::Idempotent => Durability::Behind,
        Effect::Unsafe => Durability::Durable,
    }
}

/// When the first attempt of `seq` started (waits count from it).
fn first_start(journal: &Journal, seq: u64, fallback: u64) -> u64 {
    journal
        .step(seq)
        .and_then(|s| s.attempts.first())
        .map_or(fallback, |a| a.started_ms)
}

/// The answer to a call whose outcome is recorded.
pub fn replayed(call: &Call, outcome: Outcome) -> Answer {
    let outcome_json = serde_json::to_value(&outcome).unwrap_or_default();
    Ok(match call {
        Call::Step { .. } => json!({"action": "replay", "outcome": outcome_json}),
        Call::Tool { .. } | Call::ChildResult { .. } => {
            // A child's result step records the child's outcome itself.
            if let (Call::ChildResult { .. }, Outcome::Succeeded { result }) = (call, &outcome) {
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

/// The id of the child a run spawns at step `seq`: the same on every
/// replay, so a relaunch finds the child it started instead of starting
/// another.
pub fn child_run_id(parent: &str, seq: u64) -> String {
    let key = crate::digest::idempotency_key(parent, seq);
    format!("run-{}", &key[3..23])
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

/// The layers of the durable workspace as it stood at the end of the last
/// step before `upto` that recorded a checkpoint, base first; empty when
/// none did. An error names a layer the journal does not hold.
pub fn workspace_chain(journal: &Journal, upto: u64) -> Result<Vec<WorkspaceCheckpoint>, String> {
    let steps = &journal.steps()[..(upto as usize).min(journal.steps().len())];
    let Some(top) = steps.iter().rev().find_map(|s| s.checkpoint.as_ref()) else {
        return Ok(Vec::new());
    };
    let layers: HashMap<&str, &WorkspaceCheckpoint> = steps
        .iter()
        .filter_map(|s| s.checkpoint.as_ref())
        .map(|c| (c.layer.as_str(), c))
        .collect();
    let mut chain = vec![top.clone()];
    while let Some(parent) = &chain.last().and_then(|c| c.parent.clone()) {
        if chain.len() > steps.len() {
            return Err(format!(
                "the workspace layers of run {} loop",
                journal.run_id()
            ));
        }
        let layer = layers.get(parent.as_str()).ok_or_else(|| {
            format!(
                "the workspace layer {parent} of run {} is not in its journal",
                journal.run_id()
            )
        })?;
        chain.push((*layer).clone());
    }
    chain.reverse();
    Ok(chain)
}

/// Every path persisted in `journal`, with its latest digest.
pub fn persisted_files(journal: &Journal) -> Vec<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_relaunch_with_backoff_until_the_restarts_are_used_up() {
        let spec = crate::RunSpec {
            max_restarts: 2,
            ..crate::RunSpec::default()
        };
        assert_eq!(
            after_crash(&spec, 0, 10_000, "boom"),
            AfterCrash::Relaunch {
                restart: 1,
                wake_ms: 11_000,
                message: "boom; relaunch 1 of 2".into()
            }
        );
        assert!(matches!(
            after_crash(&spec, 1, 10_000, "boom"),
            AfterCrash::Relaunch {
                restart: 2,
                wake_ms: 12_000,
                ..
            }
        ));
        let AfterCrash::Exhausted { message } = after_crash(&spec, 2, 10_000, "boom") else {
            panic!("a third relaunch of two allowed");
        };
        assert!(message.contains("2 relaunches are used up") && message.ends_with("boom"));
    }

    #[test]
    fn a_launch_stops_before_booting_for_a_decision_or_a_deadline() {
        use crate::{digest::args_digest, Effect, StepCall};
        let call = |seq, effect| StepCall {
            seq,
            name: format!("s{seq}"),
            args_digest: args_digest(&json!(null)),
            effect,
        };
        let mut journal = Journal::new("run-a");
        journal.begin(&call(0, Effect::Pure), 1).unwrap();
        journal.succeed(0, 1, json!(1), 2).unwrap();
        journal.begin(&call(1, Effect::Idempotent), 3).unwrap();
        let (lost, next) = resume(&mut journal.clone(), None, 10);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].state, crate::StepState::Scheduled);
        assert_eq!(next, Resume::Launch);
        let (_, next) = resume(&mut journal.clone(), Some(10), 10);
        assert!(matches!(
            next,
            Resume::Stop(LaunchEnd::Failed {
                code: "deadline",
                ..
            })
        ));

        journal.succeed(1, 1, json!(2), 4).unwrap();
        journal.begin(&call(2, Effect::Unsafe), 5).unwrap();
        let (lost, next) = resume(&mut journal, None, 10);
        assert_eq!(lost[0].state, crate::StepState::Indeterminate);
        let Resume::Stop(LaunchEnd::NeedsAttention {
            seq: 2, message, ..
        }) = next
        else {
            panic!("an unsafe step in flight needs a decision: {next:?}");
        };
        assert!(message.contains("hearth run resolve run-a --step 2"));
    }

    #[test]
    fn child_ids_are_stable_per_step_and_distinct() {
        assert_eq!(child_run_id("run-a", 3), child_run_id("run-a", 3));
        assert_ne!(child_run_id("run-a", 3), child_run_id("run-a", 4));
        assert_ne!(child_run_id("run-a", 3), child_run_id("run-b", 3));
        assert!(child_run_id("run-a", 3).starts_with("run-"));
    }
}
