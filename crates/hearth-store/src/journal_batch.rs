//! What one batch of journal writes does, whichever backend commits it:
//! which writes are refused (their run moved on, or their lease is not
//! current), which rows are upserted (the last one per run and step) and
//! which events are appended, and how the appended events go back to the
//! writes that made them. The backends only read the owner rows and the
//! leases, and write what the plan says, in one transaction.

use std::collections::{HashMap, HashSet};

use hearth_engine::RunState;

use crate::backend::NewEvent;
use crate::event::Event;
use crate::node::Lease;
use crate::runs::{owner_refusal, RunRefusal, RunWriter};
use crate::runs_sql::{EventRow, StepRow, StepWriteRows};

/// A run's owner columns: id, state, node, epoch, sandbox, launches.
pub(crate) type RunOwnerRow = (
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
);

/// One launch's journal write, owned, so that it can be handed to the
/// thread that commits it.
#[derive(Debug)]
pub(crate) struct PreparedWrite {
    pub run_id: String,
    pub lease: Lease,
    pub launch: u32,
    pub steps: Vec<StepRow>,
    pub events: Vec<NewEvent>,
}

impl PreparedWrite {
    /// The write as the backends' statements take it.
    pub fn rows(&self) -> StepWriteRows<'_> {
        StepWriteRows {
            run_id: &self.run_id,
            lease: &self.lease,
            launch: self.launch,
            steps: &self.steps,
            events: &self.events,
        }
    }
}

/// The runs a batch writes, sorted and each once (the order PostgreSQL
/// locks them in).
pub(crate) fn run_ids<'a>(writes: &[StepWriteRows<'a>]) -> Vec<&'a str> {
    let mut ids: Vec<&str> = writes.iter().map(|w| w.run_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The leases a batch writes under, each once (a batch is one node's:
/// almost always one lease).
pub(crate) fn leases<'a>(writes: &[StepWriteRows<'a>]) -> Vec<&'a Lease> {
    let mut leases: Vec<&Lease> = Vec::new();
    for write in writes {
        if !leases.iter().any(|l| l.same_epoch(write.lease)) {
            leases.push(write.lease);
        }
    }
    leases
}

/// What a batch writes.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// Per write, in order: why it is refused, or how many events it
    /// appends.
    pub outcomes: Vec<Result<usize, RunRefusal>>,
    /// The rows to upsert: one per run and step, the last one written.
    pub rows: Vec<(&'a str, &'a StepRow)>,
    /// The events to append, in the order of the writes.
    pub events: Vec<EventRow<'a>>,
}

/// Decide a batch given its runs' owner rows and, for each of its leases,
/// why it may not write (`None`: it may).
pub(crate) fn plan<'a>(
    writes: &'a [StepWriteRows<'a>],
    owners: &'a HashMap<String, RunOwnerRow>,
    fences: &[(&Lease, Option<String>)],
) -> Plan<'a> {
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut rows: Vec<(&str, &StepRow)> = Vec::new();
    let mut events = Vec::new();
    for write in writes {
        let fenced = fences
            .iter()
            .find(|(lease, _)| lease.same_epoch(write.lease))
            .and_then(|(_, refusal)| refusal.clone());
        let owner = owners.get(write.run_id);
        let refusal = match fenced {
            Some(reason) => Some(RunRefusal::Fenced(reason)),
            None => write_refusal(write, owner),
        };
        if let Some(refusal) = refusal {
            outcomes.push(Err(refusal));
            continue;
        }
        let sandbox = owner.and_then(|o| o.4.as_deref());
        rows.extend(write.steps.iter().map(|step| (write.run_id, step)));
        events.extend(write.events.iter().map(|event| EventRow {
            sandbox_id: sandbox,
            run_id: Some(write.run_id),
            node_id: Some(&write.lease.node_id),
            event,
        }));
        outcomes.push(Ok(write.events.len()));
    }
    let mut seen = HashSet::new();
    let mut last: Vec<(&str, &StepRow)> = rows
        .into_iter()
        .rev()
        .filter(|(run, step)| seen.insert((*run, step.seq)))
        .collect();
    last.reverse();
    Plan {
        outcomes,
        rows: last,
        events,
    }
}

/// Hand the appended events (numbered in the order they were given) back
/// to the writes that made them.
pub(crate) fn share_events(
    outcomes: Vec<Result<usize, RunRefusal>>,
    appended: Vec<Event>,
) -> Vec<Result<Vec<Event>, RunRefusal>> {
    let mut appended = appended.into_iter();
    outcomes
        .into_iter()
        .map(|outcome| outcome.map(|count| appended.by_ref().take(count).collect()))
        .collect()
}

/// Why one launch's journal write may not be made, given its run's owner
/// columns (`None`: no such run); its lease is checked separately.
fn write_refusal(write: &StepWriteRows<'_>, owner: Option<&RunOwnerRow>) -> Option<RunRefusal> {
    let Some((_, state, node, epoch, _, launches)) = owner else {
        return Some(RunRefusal::NotFound);
    };
    // Running, or claimed and about to launch (steps whose attempt was
    // lost are recorded before the new VM starts).
    if state != RunState::Running.as_str() && state != RunState::Pending.as_str() {
        return Some(RunRefusal::StateMoved);
    }
    if let Some(reason) = owner_refusal(RunWriter::Owner(write.lease), (node.as_deref(), *epoch)) {
        return Some(RunRefusal::NotOwner(reason));
    }
    // A launch that is over (its VM died, the run moved on to another
    // launch) writes nothing, even on the same node.
    if *launches != i64::from(write.launch) {
        return Some(RunRefusal::NotOwner(format!(
            "launch {} is over: the run is on launch {launches}",
            write.launch
        )));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, epoch: i64) -> Lease {
        Lease {
            node_id: node.into(),
            epoch,
            expires_ms: 0,
        }
    }

    fn row(seq: i64, state: &'static str) -> StepRow {
        StepRow {
            seq,
            name: "s".into(),
            args_digest: "d".into(),
            effect: "pure",
            state,
            result: None,
            result_blob: None,
            error: None,
            attempts: "[]".into(),
            retry_at_ms: None,
            checkpoint: None,
        }
    }

    fn event() -> NewEvent {
        NewEvent {
            kind: "step.succeeded",
            version: 1,
            data: "{}".into(),
        }
    }

    fn owner(id: &str, state: &str, node: &str, epoch: i64, launches: i64) -> RunOwnerRow {
        (
            id.into(),
            state.into(),
            Some(node.into()),
            Some(epoch),
            Some(format!("sb-{id}")),
            launches,
        )
    }

    #[test]
    fn the_last_row_of_a_step_wins_and_refused_writes_write_nothing() {
        let mine = lease("n1", 3);
        let a = [row(0, "started"), row(0, "succeeded")];
        let b = [row(0, "succeeded")];
        let c = [row(1, "failed")];
        let events = [event(), event()];
        let writes = [
            StepWriteRows {
                run_id: "ra",
                lease: &mine,
                launch: 1,
                steps: &a,
                events: &events,
            },
            // Run rb is on its second launch: this one is over.
            StepWriteRows {
                run_id: "rb",
                lease: &mine,
                launch: 1,
                steps: &b,
                events: &events[..1],
            },
            StepWriteRows {
                run_id: "ra",
                lease: &mine,
                launch: 1,
                steps: &c,
                events: &events[..1],
            },
        ];
        let owners = HashMap::from([
            ("ra".to_string(), owner("ra", "running", "n1", 3, 1)),
            ("rb".to_string(), owner("rb", "running", "n1", 3, 2)),
        ]);
        let fences = [(&mine, None)];
        let plan = plan(&writes, &owners, &fences);
        assert!(matches!(plan.outcomes[0], Ok(2)));
        assert!(
            matches!(plan.outcomes[1], Err(RunRefusal::NotOwner(ref m)) if m.contains("launch 1 is over"))
        );
        assert!(matches!(plan.outcomes[2], Ok(1)));
        let rows: Vec<(&str, i64, &str)> = plan
            .rows
            .iter()
            .map(|(run, step)| (*run, step.seq, step.state))
            .collect();
        assert_eq!(rows, [("ra", 0, "succeeded"), ("ra", 1, "failed")]);
        assert_eq!(plan.events.len(), 3);
        assert_eq!(plan.events[0].sandbox_id, Some("sb-ra"));
        assert_eq!(run_ids(&writes), ["ra", "rb"]);
        assert_eq!(leases(&writes).len(), 1);
    }

    #[test]
    fn a_fenced_lease_refuses_every_write_under_it() {
        let old = lease("n1", 2);
        let steps = [row(0, "succeeded")];
        let writes = [StepWriteRows {
            run_id: "ra",
            lease: &old,
            launch: 1,
            steps: &steps,
            events: &[],
        }];
        let owners = HashMap::from([("ra".to_string(), owner("ra", "running", "n1", 2, 1))]);
        let fences = [(&old, Some("no longer holds that lease".to_string()))];
        let plan = plan(&writes, &owners, &fences);
        assert!(matches!(plan.outcomes[0], Err(RunRefusal::Fenced(_))));
        assert!(plan.rows.is_empty() && plan.events.is_empty());
        // A missing run and an ended one are refused too.
        let none = HashMap::new();
        let plan = super::plan(&writes, &none, &[(&old, None)]);
        assert!(matches!(plan.outcomes[0], Err(RunRefusal::NotFound)));
        let ended = HashMap::from([("ra".to_string(), owner("ra", "completed", "n1", 2, 1))]);
        let plan = super::plan(&writes, &ended, &[(&old, None)]);
        assert!(matches!(plan.outcomes[0], Err(RunRefusal::StateMoved)));
    }

    #[test]
    fn appended_events_go_back_to_their_writes_in_order() {
        let event = |seq| Event {
            seq,
            sandbox_id: None,
            run_id: None,
            node_id: None,
            at_ms: 0,
            kind: "k".into(),
            version: 1,
            data: serde_json::Value::Null,
        };
        let shared = share_events(
            vec![Ok(2), Err(RunRefusal::NotFound), Ok(1)],
            vec![event(7), event(8), event(9)],
        );
        let seqs: Vec<Option<Vec<i64>>> = shared
            .into_iter()
            .map(|o| o.ok().map(|e| e.iter().map(|e| e.seq).collect()))
            .collect();
        assert_eq!(seqs, [Some(vec![7, 8]), None, Some(vec![9])]);
    }
}
