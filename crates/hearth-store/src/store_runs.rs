//! [`Store`]'s durable-run half: pinned programs and large values in the
//! blob store, runs and their state machine, the journal's steps, signals,
//! and claiming runs under a node's lease. The same rules as for sandboxes:
//! a change and its event in one transaction, conditional updates retried
//! when they lose a race, owner writes fenced by the lease.

use serde_json::Value;

use hearth_engine::StepRecord;

use crate::backend::{Backend, NewEvent, RunBackend, RunUpdated};
use crate::error::{Result, StoreError};
use crate::event::{Event, EventPayload, ForkedFrom, RunCreated};
use crate::journal_batch::PreparedWrite;
use crate::node::Lease;
use crate::runs::INLINE_RESULT_MAX;
use crate::runs::{
    NewRun, RunChange, RunFilter, RunRecord, RunRefusal, RunWriter, Signal, StepWrite,
};
use crate::runs_sql::StepRow;
use crate::store::Engine;
use crate::store::{on_engine, Store, MAX_PAGE, MAX_RACES};

impl Store {
    // ---- runs ---------------------------------------------------------

    /// Record a new run, pending and owned by no node, with its
    /// `run.created` event. Its program must be in the blob store.
    pub async fn insert_run(&self, new: &NewRun) -> Result<Event> {
        let payload = EventPayload::RunCreated(RunCreated {
            name: new.name.clone(),
            program: new.program.clone(),
            parent_id: new.parent.as_ref().map(|(id, _)| id.clone()),
            forked_from: None,
        });
        let now = self.now();
        on_engine!(self, b => b.insert_run(new, &[], &NewEvent::of(&payload), now))
    }

    /// Record a new run, pending, whose journal starts with the first `at`
    /// steps of run `from`'s (copied, so both go on independently), with
    /// its `run.created` event naming where it was forked. Refused
    /// ([`StoreError::Invalid`], saying why) when `from` has fewer steps or
    /// one of them has not finished (its outcome would not replay).
    pub async fn fork_run(&self, new: &NewRun, from: &str, at: u64) -> Result<Event> {
        let steps = self.steps(from).await?;
        if at > steps.len() as u64 {
            return Err(StoreError::Invalid(format!(
                "run {from} has {} steps in its journal: fork at step {} or earlier",
                steps.len(),
                steps.len()
            )));
        }
        let kept = &steps[..at as usize];
        if let Some(step) = kept.iter().find(|s| !s.state.is_final()) {
            return Err(StoreError::Invalid(format!(
                "step {} ({}) of run {from} is {}, not finished, so it cannot be replayed: fork at step {} or earlier",
                step.seq, step.name, step.state, step.seq
            )));
        }
        let rows: Vec<StepRow> = kept
            .iter()
            .map(|s| StepRow::of(s, INLINE_RESULT_MAX))
            .collect();
        let payload = EventPayload::RunCreated(RunCreated {
            name: new.name.clone(),
            program: new.program.clone(),
            parent_id: None,
            forked_from: Some(ForkedFrom {
                run_id: from.to_string(),
                at_step: at,
            }),
        });
        let now = self.now();
        on_engine!(self, b => b.insert_run(new, &rows, &NewEvent::of(&payload), now))
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        on_engine!(self, b => b.run(id))
    }

    /// Runs matching `filter`, newest first (at most [`MAX_PAGE`]).
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let limit = if filter.limit == 0 {
            MAX_PAGE
        } else {
            filter.limit.min(MAX_PAGE)
        };
        on_engine!(self, b => b.list_runs(filter, limit))
    }

    /// Apply `change` to run `id` and record `payload`, in one
    /// transaction, if the run state machine allows it from the run's
    /// current state; `None` (nothing changed) when it does not. Written by
    /// `writer`: an owner write by a node that lost its lease or the run is
    /// refused and the refusal recorded; an unowned write to a run a node
    /// owns is [`StoreError::RunOwned`].
    pub async fn change_run(
        &self,
        id: &str,
        writer: RunWriter<'_>,
        change: &RunChange,
        payload: EventPayload,
    ) -> Result<Option<(RunRecord, Vec<Event>)>> {
        if change.state.is_some() && payload.run_state() != change.state {
            return Err(StoreError::Invalid(format!(
                "event {} does not record a move to {:?}",
                payload.kind(),
                change.state
            )));
        }
        let event = NewEvent::of(&payload);
        for _ in 0..MAX_RACES {
            let Some(current) = self.run(id).await? else {
                return Err(StoreError::RunNotFound(id.to_string()));
            };
            let allowed = match change.state {
                Some(next) => current.state.can_become(next),
                None => !current.state.is_final(),
            } && change.if_launches.is_none_or(|l| l == current.launches);
            if !allowed {
                return Ok(None);
            }
            let now = self.now();
            let updated = on_engine!(self, b => b.update_run(id, current.state, writer, change, &event, now))?;
            let refusal = match updated {
                RunUpdated::Done(run, events) => return Ok(Some((*run, events))),
                RunUpdated::Refused(refusal) => refusal,
            };
            match (refusal, writer) {
                (RunRefusal::NotFound, _) => return Err(StoreError::RunNotFound(id.to_string())),
                // Another writer moved it first: decide again.
                (RunRefusal::StateMoved, _) => continue,
                (RunRefusal::Fenced(reason), RunWriter::Owner(lease))
                | (RunRefusal::NotOwner(reason), RunWriter::Owner(lease)) => {
                    let reason = format!("does not own run {id}: {reason}");
                    return Err(self.refused(lease, None, payload.kind(), reason).await);
                }
                (RunRefusal::Fenced(reason), RunWriter::Unowned)
                | (RunRefusal::NotOwner(reason), RunWriter::Unowned) => {
                    return Err(StoreError::RunOwned {
                        id: id.to_string(),
                        reason,
                    })
                }
            }
        }
        Err(StoreError::Invalid(format!(
            "run {id} kept changing under {MAX_RACES} attempts to move it"
        )))
    }

    /// Take up to `limit` runs for the node holding `lease` (or only run
    /// `only`): new and relaunched runs no live node owns, waiting runs
    /// whose time came, and running runs whose owner died. Each becomes
    /// pending and the node's, with a `run.claimed` event. On PostgreSQL
    /// the candidates are locked `FOR UPDATE SKIP LOCKED`, so nodes
    /// claiming at once take different runs without waiting on each other.
    pub async fn claim_runs(
        &self,
        lease: &Lease,
        limit: u32,
        only: Option<&str>,
    ) -> Result<Vec<(RunRecord, Event)>> {
        let now = self.now();
        let limit = limit.clamp(1, MAX_PAGE);
        match on_engine!(self, b => b.claim_runs(lease, limit, only, now))? {
            Ok(claimed) => Ok(claimed),
            Err(reason) => Err(self.refused(lease, None, "run.claimed", reason).await),
        }
    }

    // ---- the journal --------------------------------------------------

    /// Write `steps` of run `run_id` (each the whole record, replacing the
    /// stored one) with one `step.*` event each, in one transaction.
    /// Refused, and the refusal recorded, unless the run is running (or
    /// pending, about to launch), on launch `launch` and owned by `lease`,
    /// and the lease is current: a node that lost a run can never write to
    /// its journal.
    pub async fn put_steps(
        &self,
        run_id: &str,
        lease: &Lease,
        launch: u32,
        steps: &[StepRecord],
    ) -> Result<Vec<Event>> {
        let write = StepWrite {
            run_id: run_id.to_string(),
            lease: lease.clone(),
            launch,
            steps: steps.to_vec(),
        };
        let mut outcomes = self.put_step_batch(std::slice::from_ref(&write)).await?;
        outcomes.pop().unwrap_or(Ok(Vec::new()))
    }

    /// Write several launches' steps (each write as [`Store::put_steps`]
    /// does it) in one transaction, so that one durable commit serves them
    /// all: how concurrent runs share the cost of a commit. `Err` when the
    /// transaction failed (nothing was written); otherwise each write's own
    /// outcome, in order: a refused write wrote nothing, the others did.
    pub async fn put_step_batch(&self, writes: &[StepWrite]) -> Result<Vec<Result<Vec<Event>>>> {
        let prepared: Vec<PreparedWrite> = writes
            .iter()
            .map(|w| PreparedWrite {
                run_id: w.run_id.clone(),
                lease: w.lease.clone(),
                launch: w.launch,
                steps: w
                    .steps
                    .iter()
                    .map(|s| StepRow::of(s, INLINE_RESULT_MAX))
                    .collect(),
                events: w
                    .steps
                    .iter()
                    .map(|s| NewEvent::of(&EventPayload::of_step(s)))
                    .collect(),
            })
            .collect();
        let now = self.now();
        let outcomes = match self.engine() {
            Engine::Sqlite(b) => b.put_steps(prepared, now).await?,
            Engine::Postgres(b) => {
                let rows: Vec<_> = prepared.iter().map(PreparedWrite::rows).collect();
                b.put_steps(&rows, now).await?
            }
        };
        let mut answers = Vec::with_capacity(outcomes.len());
        for (write, outcome) in writes.iter().zip(outcomes) {
            answers.push(self.step_write_outcome(write, outcome).await);
        }
        Ok(answers)
    }

    async fn step_write_outcome(
        &self,
        write: &StepWrite,
        outcome: std::result::Result<Vec<Event>, RunRefusal>,
    ) -> Result<Vec<Event>> {
        let run_id = &write.run_id;
        match outcome {
            Ok(events) => Ok(events),
            Err(RunRefusal::NotFound) => Err(StoreError::RunNotFound(run_id.clone())),
            Err(RunRefusal::StateMoved) => {
                let state = match self.run(run_id).await {
                    Ok(Some(run)) => run.state.to_string(),
                    _ => "unknown".into(),
                };
                let reason = format!("run {run_id} is no longer running (it is {state})");
                Err(self.refused(&write.lease, None, "step", reason).await)
            }
            Err(RunRefusal::Fenced(reason)) | Err(RunRefusal::NotOwner(reason)) => {
                let reason = format!("does not own run {run_id}: {reason}");
                Err(self.refused(&write.lease, None, "step", reason).await)
            }
        }
    }

    /// Record a person's decision about step `step` (already changed by
    /// the journal's rules) of a run that needs attention, and make the run
    /// pending so that a node relaunches it, in one transaction. Refused
    /// (`RunEnded`/`RunOwned`-like errors) unless the run still waits for a
    /// decision.
    pub async fn resolve_step(&self, run_id: &str, step: &StepRecord) -> Result<Vec<Event>> {
        let row = StepRow::of(step, INLINE_RESULT_MAX);
        let step_event = NewEvent::of(&EventPayload::of_step(step));
        let run_event = NewEvent::of(&EventPayload::RunPending(crate::event::RunPending {
            cause: "decision".into(),
            message: format!(
                "step {} ({}) was resolved: {}",
                step.seq, step.name, step.state
            ),
            wake_ms: None,
        }));
        let now = self.now();
        match on_engine!(self, b => b.resolve_step(run_id, &row, &step_event, &run_event, now))? {
            Ok(events) => Ok(events),
            Err(RunRefusal::NotFound) => Err(StoreError::RunNotFound(run_id.to_string())),
            Err(_) => {
                let state = match self.run(run_id).await? {
                    Some(run) => run.state.to_string(),
                    None => return Err(StoreError::RunNotFound(run_id.to_string())),
                };
                Err(StoreError::RunOwned {
                    id: run_id.to_string(),
                    reason: format!("it is {state}, not waiting for a decision"),
                })
            }
        }
    }

    /// Append an event about run `run_id`; with `by`, only while that
    /// lease is current (the refusal recorded otherwise).
    pub async fn append_run_event(
        &self,
        run_id: &str,
        sandbox_id: Option<&str>,
        by: Option<&Lease>,
        payload: EventPayload,
    ) -> Result<Event> {
        let event = NewEvent::of(&payload);
        let now = self.now();
        match on_engine!(self, b => b.append_event(sandbox_id, Some(run_id), by, &event, now))? {
            Ok(event) => Ok(event),
            Err(reason) => match by {
                Some(lease) => Err(self.refused(lease, None, payload.kind(), reason).await),
                None => Err(StoreError::Invalid(format!(
                    "an unfenced append was refused: {reason}"
                ))),
            },
        }
    }

    /// A run's journal, in order, with large results read back from the
    /// blob store.
    pub async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>> {
        on_engine!(self, b => b.steps(run_id))
    }

    // ---- signals ------------------------------------------------------

    /// Send signal `name` with `data` to run `run_id`, and wake the run if
    /// it waits for that name. Refused for a run that has ended.
    pub async fn send_signal(
        &self,
        run_id: &str,
        name: &str,
        data: &Value,
    ) -> Result<(Signal, Event)> {
        let now = self.now();
        match on_engine!(self, b => b.insert_signal(run_id, name, data, now))? {
            None => Err(StoreError::RunNotFound(run_id.to_string())),
            Some(Err(state)) => Err(StoreError::RunEnded {
                id: run_id.to_string(),
                state: state.as_str().to_string(),
            }),
            Some(Ok(sent)) => Ok(sent),
        }
    }

    /// Make run `run_id` due now if it is waiting on `on` (a signal's name
    /// or a child's id): for what arrived while the run was on its way to
    /// waiting. Whether it did.
    pub async fn wake_run(&self, run_id: &str, on: &str) -> Result<bool> {
        let now = self.now();
        on_engine!(self, b => b.wake(run_id, on, now))
    }

    /// The signals named `name` sent to a run, oldest first.
    pub async fn signals(&self, run_id: &str, name: &str) -> Result<Vec<Signal>> {
        on_engine!(self, b => b.signals(run_id, name))
    }

    /// Bytes the database takes now: for storage figures (how the store
    /// grows with the work).
    pub async fn size_bytes(&self) -> Result<u64> {
        on_engine!(self, b => b.size_bytes())
    }

    /// A run's events after `after`, oldest first, at most `limit`.
    pub async fn run_events(&self, run_id: &str, after: i64, limit: u32) -> Result<Vec<Event>> {
        let limit = limit.clamp(1, MAX_PAGE);
        on_engine!(self, b => b.run_events(run_id, after, limit))
    }
}
