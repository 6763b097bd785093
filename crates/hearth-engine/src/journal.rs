//! A run's journal and the decisions it makes: when a program (on its first
//! run or on a replay after a crash) reaches step `seq`, the journal says
//! whether to return a recorded outcome, run the step (and which attempt),
//! wait for a retry's backoff, stop for a person's decision, or fail the
//! run because the program no longer asks for what it asked before.
//!
//! Pure bookkeeping over [`StepRecord`]s, fed the time: the engine persists
//! the records and the store checks the same transitions, but every rule
//! lives here, where property tests drive it through any interleaving of
//! progress, failures, crashes and decisions.

use std::fmt;

use serde_json::Value;

use crate::digest::idempotency_key;
use crate::retry::RetryPolicy;
use crate::step::{Attempt, AttemptOutcome, Effect, StepCall, StepError, StepRecord, StepState};

/// How a finished step ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// With this result.
    Succeeded {
        /// The result.
        result: Value,
    },
    /// With this error.
    Failed {
        /// The error.
        error: StepError,
    },
}

/// A step as the program identifies it: name and argument digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepIdent {
    /// Step name.
    pub name: String,
    /// Argument digest.
    pub args_digest: String,
}

/// The program asked, at a recorded position, for a different step than the
/// journal holds there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NonDeterminism {
    /// The position.
    pub seq: u64,
    /// What the journal recorded there.
    pub recorded: StepIdent,
    /// What the program asks for now.
    pub requested: StepIdent,
}

impl fmt::Display for NonDeterminism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.recorded.name == self.requested.name {
            format!(
                "step {} {:?} was recorded with arguments {} and the program now calls it with {}",
                self.seq,
                self.recorded.name,
                short(&self.recorded.args_digest),
                short(&self.requested.args_digest)
            )
        } else {
            format!(
                "the journal recorded step {} as {:?} and the program now asks for {:?} there",
                self.seq, self.recorded.name, self.requested.name
            )
        };
        write!(
            f,
            "non-determinism: {what}; the program took another path than when it was recorded (its code, its input, or a value it did not record such as the clock or random numbers changed): use ctx.now() and ctx.random(), and upgrade runs explicitly"
        )
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// What to do at one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// It is recorded: give the program this outcome, run nothing.
    Replay(Outcome),
    /// Run it: this attempt, with this idempotency key (the same for every
    /// attempt of the step).
    Execute {
        /// Attempt number, from 1.
        attempt: u32,
        /// The key the side effect must carry.
        idempotency_key: String,
    },
    /// A retry is scheduled: not before this time.
    Wait {
        /// When, ms since the epoch.
        until_ms: u64,
    },
    /// Its outcome is unknown and it may not be repeated: a person
    /// decides, the run waits in `needs_attention`.
    NeedsDecision {
        /// The step.
        seq: u64,
        /// Its name.
        name: String,
    },
    /// The program diverged from its journal: the run fails.
    NonDeterminism(NonDeterminism),
}

/// A person's decision about a step whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Resolution {
    /// Run it again (with the same idempotency key).
    Retry,
    /// Take this value as its result, without running it.
    SkipWith {
        /// The result.
        result: Value,
    },
    /// Fail it with this error.
    Fail {
        /// The error.
        error: StepError,
    },
}

/// After a failed attempt: when the next one may run, or that the step
/// failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Retry at this time, ms since the epoch.
    RetryAt(u64),
    /// No more attempts: the step failed.
    Failed,
}

/// Requests the journal cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JournalError {
    /// A step was asked for past the next free position.
    #[error("step {got} is out of order: the next step of this run is {expected}")]
    OutOfOrder {
        /// The next free position.
        expected: u64,
        /// The position asked for.
        got: u64,
    },
    /// No step at that position.
    #[error("this run has no step {0}")]
    NoSuchStep(u64),
    /// The attempt is not the one in flight.
    #[error("step {seq} has no attempt {attempt} in flight (it is {state})")]
    NotInFlight {
        /// The step.
        seq: u64,
        /// The attempt named.
        attempt: u32,
        /// The step's state.
        state: StepState,
    },
    /// The step may not run now: see the decision.
    #[error("step {seq} may not run now: {reason}")]
    MayNotRun {
        /// The step.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Only a step whose outcome is unknown takes a decision.
    #[error("step {seq} is {state}, not indeterminate: only a step whose outcome is unknown can be resolved")]
    NotIndeterminate {
        /// The step.
        seq: u64,
        /// Its state.
        state: StepState,
    },
    /// A move the step state machine forbids (a bug in the caller).
    #[error("step {seq} cannot go from {from} to {to}")]
    Transition {
        /// The step.
        seq: u64,
        /// From.
        from: StepState,
        /// To.
        to: StepState,
    },
    /// Records that do not form a journal.
    #[error("corrupt journal: {0}")]
    Corrupt(String),
}

/// The journal of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Journal {
    run_id: String,
    steps: Vec<StepRecord>,
}

/// The stricter of two effects (what a step declared when it was recorded
/// and what the program declares now).
fn stricter(a: Effect, b: Effect) -> Effect {
    use Effect::*;
    match (a, b) {
        (Unsafe, _) | (_, Unsafe) => Unsafe,
        (Idempotent, _) | (_, Idempotent) => Idempotent,
        _ => Pure,
    }
}

fn move_step(step: &mut StepRecord, to: StepState) -> Result<(), JournalError> {
    if !step.state.can_become(to) {
        return Err(JournalError::Transition {
            seq: step.seq,
            from: step.state,
            to,
        });
    }
    step.state = to;
    Ok(())
}

impl Journal {
    /// An empty journal for run `run_id`.
    pub fn new(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            steps: Vec::new(),
        }
    }

    /// A journal from stored records, which must be numbered 0, 1, 2, ...
    pub fn from_steps(
        run_id: impl Into<String>,
        steps: Vec<StepRecord>,
    ) -> Result<Self, JournalError> {
        for (i, step) in steps.iter().enumerate() {
            if step.seq != i as u64 {
                return Err(JournalError::Corrupt(format!(
                    "step {i} is recorded as step {}",
                    step.seq
                )));
            }
        }
        Ok(Self {
            run_id: run_id.into(),
            steps,
        })
    }

    /// The run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Every step, in order.
    pub fn steps(&self) -> &[StepRecord] {
        &self.steps
    }

    /// One step.
    pub fn step(&self, seq: u64) -> Option<&StepRecord> {
        self.steps.get(usize::try_from(seq).ok()?)
    }

    fn step_mut(&mut self, seq: u64) -> Result<&mut StepRecord, JournalError> {
        usize::try_from(seq)
            .ok()
            .and_then(|i| self.steps.get_mut(i))
            .ok_or(JournalError::NoSuchStep(seq))
    }

    /// The position of the next new step.
    pub fn next_seq(&self) -> u64 {
        self.steps.len() as u64
    }

    /// The first step waiting for a decision, if any.
    pub fn needs_decision(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|s| s.state == StepState::Indeterminate)
    }

    /// What to do when the program reaches `call` at `now_ms`. Reads only.
    pub fn decide(&self, call: &StepCall, now_ms: u64) -> Result<Decision, JournalError> {
        let Some(step) = self.step(call.seq) else {
            if call.seq == self.next_seq() {
                return Ok(Decision::Execute {
                    attempt: 1,
                    idempotency_key: idempotency_key(&self.run_id, call.seq),
                });
            }
            return Err(JournalError::OutOfOrder {
                expected: self.next_seq(),
                got: call.seq,
            });
        };
        if step.name != call.name || step.args_digest != call.args_digest {
            return Ok(Decision::NonDeterminism(NonDeterminism {
                seq: call.seq,
                recorded: StepIdent {
                    name: step.name.clone(),
                    args_digest: step.args_digest.clone(),
                },
                requested: StepIdent {
                    name: call.name.clone(),
                    args_digest: call.args_digest.clone(),
                },
            }));
        }
        let next_attempt = step.attempts.len() as u32 + 1;
        let execute = Decision::Execute {
            attempt: next_attempt,
            idempotency_key: idempotency_key(&self.run_id, call.seq),
        };
        let needs_decision = Decision::NeedsDecision {
            seq: step.seq,
            name: step.name.clone(),
        };
        Ok(match step.state {
            StepState::Succeeded => Decision::Replay(Outcome::Succeeded {
                result: step.result.clone().unwrap_or(Value::Null),
            }),
            StepState::Failed => Decision::Replay(Outcome::Failed {
                error: step
                    .error
                    .clone()
                    .unwrap_or_else(|| StepError::permanent("unknown", "the step failed")),
            }),
            StepState::Scheduled => match step.retry_at_ms {
                Some(until_ms) if until_ms > now_ms => Decision::Wait { until_ms },
                _ => execute,
            },
            // An attempt is recorded as running but the program is asking
            // again: that attempt was lost with its VM.
            StepState::Started => match stricter(step.effect, call.effect) {
                Effect::Unsafe => needs_decision,
                Effect::Pure | Effect::Idempotent => execute,
            },
            StepState::Indeterminate => needs_decision,
        })
    }

    /// Start the attempt [`Journal::decide`] allowed for `call`; errors when
    /// it says anything but [`Decision::Execute`].
    pub fn begin(&mut self, call: &StepCall, now_ms: u64) -> Result<Attempt, JournalError> {
        let attempt = match self.decide(call, now_ms)? {
            Decision::Execute { attempt, .. } => attempt,
            other => {
                return Err(JournalError::MayNotRun {
                    seq: call.seq,
                    reason: format!("{other:?}"),
                })
            }
        };
        let started = Attempt {
            number: attempt,
            started_ms: now_ms,
            ended_ms: None,
            outcome: AttemptOutcome::InFlight,
        };
        if call.seq == self.next_seq() {
            self.steps.push(StepRecord {
                seq: call.seq,
                name: call.name.clone(),
                args_digest: call.args_digest.clone(),
                effect: call.effect,
                state: StepState::Started,
                result: None,
                error: None,
                attempts: vec![started.clone()],
                retry_at_ms: None,
                checkpoint: None,
            });
            return Ok(started);
        }
        let effect = call.effect;
        let step = self.step_mut(call.seq)?;
        step.effect = stricter(step.effect, effect);
        if step.state == StepState::Started {
            // The attempt recorded as running was lost (decide allowed a
            // new one only for a step safe to repeat).
            lose_attempt(step, now_ms)?;
        }
        move_step(step, StepState::Started)?;
        step.retry_at_ms = None;
        step.attempts.push(started.clone());
        Ok(started)
    }

    fn in_flight(&mut self, seq: u64, attempt: u32) -> Result<&mut StepRecord, JournalError> {
        let step = self.step_mut(seq)?;
        let running = step.state == StepState::Started
            && step
                .attempts
                .last()
                .is_some_and(|a| a.number == attempt && a.outcome == AttemptOutcome::InFlight);
        if !running {
            return Err(JournalError::NotInFlight {
                seq,
                attempt,
                state: step.state,
            });
        }
        Ok(step)
    }

    /// Record that attempt `attempt` of step `seq` returned `result`.
    /// Recording the same success twice (a retransmission) is accepted.
    pub fn succeed(
        &mut self,
        seq: u64,
        attempt: u32,
        result: Value,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        if let Some(step) = self.step(seq) {
            let same = step.state == StepState::Succeeded
                && step.result.as_ref() == Some(&result)
                && step
                    .attempts
                    .last()
                    .is_some_and(|a| a.number == attempt && a.outcome == AttemptOutcome::Succeeded);
            if same {
                return Ok(());
            }
        }
        let step = self.in_flight(seq, attempt)?;
        move_step(step, StepState::Succeeded)?;
        step.result = Some(result);
        if let Some(last) = step.attempts.last_mut() {
            last.outcome = AttemptOutcome::Succeeded;
            last.ended_ms = Some(now_ms);
        }
        Ok(())
    }

    /// Record that attempt `attempt` of step `seq` failed with `error`;
    /// `policy` (with `random` in `[0, 1)` for its jitter) decides whether
    /// it is retried.
    pub fn fail(
        &mut self,
        seq: u64,
        attempt: u32,
        error: StepError,
        policy: &RetryPolicy,
        random: f64,
        now_ms: u64,
    ) -> Result<AfterFailure, JournalError> {
        let step = self.in_flight(seq, attempt)?;
        if let Some(last) = step.attempts.last_mut() {
            last.outcome = AttemptOutcome::Failed {
                error: error.clone(),
            };
            last.ended_ms = Some(now_ms);
        }
        let after = match policy.backoff_ms(attempt, &error, random) {
            Some(wait) => {
                move_step(step, StepState::Scheduled)?;
                let at = now_ms.saturating_add(wait);
                step.retry_at_ms = Some(at);
                AfterFailure::RetryAt(at)
            }
            None => {
                move_step(step, StepState::Failed)?;
                AfterFailure::Failed
            }
        };
        step.error = Some(error);
        Ok(after)
    }

    /// Attach the durable workspace's checkpoint taken when step `seq`
    /// ended.
    pub fn set_checkpoint(&mut self, seq: u64, checkpoint: crate::WorkspaceCheckpoint) {
        if let Some(step) = self.steps.get_mut(seq as usize) {
            step.checkpoint = Some(checkpoint);
        }
    }

    /// The VM or the server died: every attempt in flight is lost. A step
    /// safe to repeat is scheduled again; one that is not becomes
    /// indeterminate and waits for a decision. Returns the steps changed.
    pub fn interrupt(&mut self, now_ms: u64) -> Result<Vec<u64>, JournalError> {
        let mut changed = Vec::new();
        for step in &mut self.steps {
            if step.state == StepState::Started {
                lose_attempt(step, now_ms)?;
                changed.push(step.seq);
            }
        }
        Ok(changed)
    }

    /// Apply a person's decision to step `seq`, which must be
    /// indeterminate.
    pub fn resolve(
        &mut self,
        seq: u64,
        resolution: Resolution,
        _now_ms: u64,
    ) -> Result<(), JournalError> {
        let step = self.step_mut(seq)?;
        if step.state != StepState::Indeterminate {
            return Err(JournalError::NotIndeterminate {
                seq,
                state: step.state,
            });
        }
        match resolution {
            Resolution::Retry => {
                move_step(step, StepState::Scheduled)?;
                step.retry_at_ms = None;
            }
            Resolution::SkipWith { result } => {
                move_step(step, StepState::Succeeded)?;
                step.result = Some(result);
            }
            Resolution::Fail { error } => {
                move_step(step, StepState::Failed)?;
                step.error = Some(error);
            }
        }
        Ok(())
    }
}

/// Mark the attempt in flight of a started step lost, and move the step to
/// scheduled (safe to repeat) or indeterminate (not).
fn lose_attempt(step: &mut StepRecord, now_ms: u64) -> Result<(), JournalError> {
    if let Some(last) = step.attempts.last_mut() {
        if last.outcome == AttemptOutcome::InFlight {
            last.outcome = AttemptOutcome::Lost;
            last.ended_ms = Some(now_ms);
        }
    }
    let to = match step.effect {
        Effect::Unsafe => StepState::Indeterminate,
        Effect::Pure | Effect::Idempotent => StepState::Scheduled,
    };
    move_step(step, to)?;
    step.retry_at_ms = None;
    Ok(())
}

#[cfg(test)]
mod tests;
