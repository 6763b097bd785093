//! The statements of the run tables, in the SQL both backends speak (`$n`
//! placeholders, which SQLite accepts too), and the conversions between
//! rows and run records. What differs (row locks, `SKIP LOCKED`, event
//! numbering) stays in each backend's module.

use std::str::FromStr;

use serde_json::Value;
use sqlx::{ColumnIndex, Database, Encode, QueryBuilder, Type};

use hearth_engine::{Attempt, Effect, RunState, StepError, StepRecord, StepState};

use crate::backend::NewEvent;
use crate::error::{Result, StoreError};
use crate::node::Lease;
use crate::rows::StoreRow;
use crate::runs::{RunChange, RunFilter, RunRecord, Signal};

/// Store a blob unless it is there already.
pub(crate) const PUT_BLOB: &str = "INSERT INTO blobs (digest, size, data, created_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING";

/// Store the row of a blob kept in chunks unless it is there.
pub(crate) const PUT_CHUNKED_BLOB: &str = "INSERT INTO blobs (digest, size, data, chunks, \
     created_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING";

/// A blob's bytes, or its chunks' digests.
pub(crate) const BLOB: &str = "SELECT data, chunks FROM blobs WHERE digest = $1";

/// Record a new run.
pub(crate) const INSERT_RUN: &str = "INSERT INTO runs (id, name, state, program, spec, input, \
     parent_id, parent_seq, deadline_ms, created_ms, updated_ms) \
     VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $9)";

/// One run.
pub(crate) const RUN: &str = "SELECT * FROM runs WHERE id = $1";

/// Write one step (insert or replace its row).
pub(crate) const PUT_STEP: &str = "INSERT INTO steps (run_id, seq, name, args_digest, effect, \
     state, result, result_blob, error, attempts, retry_at_ms, checkpoint, updated_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (run_id, seq) DO UPDATE SET name = excluded.name, \
     args_digest = excluded.args_digest, effect = excluded.effect, state = excluded.state, \
     result = excluded.result, result_blob = excluded.result_blob, error = excluded.error, \
     attempts = excluded.attempts, retry_at_ms = excluded.retry_at_ms, \
     checkpoint = excluded.checkpoint, updated_ms = excluded.updated_ms";

/// Bind one journal row's thirteen values to `$query`, in [`PUT_STEP`]'s
/// column order: the run, the [`StepRow`] `$step`, and the time `$now`.
macro_rules! bind_step_row {
    ($query:expr, $run_id:expr, $step:expr, $now:expr) => {
        $query
            .bind($run_id)
            .bind($step.seq)
            .bind(&$step.name)
            .bind(&$step.args_digest)
            .bind($step.effect)
            .bind($step.state)
            .bind(&$step.result)
            .bind($step.result_blob.as_ref().map(|(d, _)| d.clone()))
            .bind(&$step.error)
            .bind(&$step.attempts)
            .bind($step.retry_at_ms)
            .bind(&$step.checkpoint)
            .bind($now as i64)
    };
}
pub(crate) use bind_step_row;

/// Upsert `rows` journal rows in one statement (`$1`… in row order,
/// thirteen per row as in [`PUT_STEP`]); at most one row per run and seq.
pub(crate) fn put_step_rows(rows: usize) -> String {
    const COLUMNS: usize = 13;
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=COLUMNS)
                .map(|c| format!("${}", r * COLUMNS + c))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let conflict = &PUT_STEP[PUT_STEP.find(" ON CONFLICT").unwrap_or(PUT_STEP.len())..];
    format!(
        "INSERT INTO steps (run_id, seq, name, args_digest, effect, state, result, \
         result_blob, error, attempts, retry_at_ms, checkpoint, updated_ms) VALUES {}{conflict}",
        values.join(", ")
    )
}

/// The owner columns of the runs `ids` (`$1`…), for checking journal
/// writes; `lock` is appended (PostgreSQL locks them, in id order).
pub(crate) fn run_owners(ids: usize, lock: &str) -> String {
    let params: Vec<String> = (1..=ids).map(|i| format!("${i}")).collect();
    format!(
        "SELECT id, state, node_id, node_epoch, sandbox_id, launches FROM runs \
         WHERE id IN ({}) ORDER BY id{lock}",
        params.join(", ")
    )
}

/// An event to append, with what it concerns.
#[derive(Debug)]
pub(crate) struct EventRow<'a> {
    pub sandbox_id: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub node_id: Option<&'a str>,
    pub event: &'a NewEvent,
}

/// The values of `rows` events as `(…), (…)` from parameter `first` on,
/// seven per event: sandbox_id, run_id, node_id, at_ms, kind, version,
/// data.
pub(crate) fn event_values(rows: usize, first: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (0..7).map(|c| format!("${}", first + r * 7 + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    values.join(", ")
}

/// A run's journal, with large results joined from the blob store.
pub(crate) const STEPS: &str = "SELECT s.*, b.data AS result_data FROM steps s \
     LEFT JOIN blobs b ON b.digest = s.result_blob WHERE s.run_id = $1 ORDER BY s.seq";

/// Record a signal.
pub(crate) const INSERT_SIGNAL: &str =
    "INSERT INTO signals (run_id, name, data, sent_ms) VALUES ($1, $2, $3, $4) RETURNING *";

/// The signals of one name sent to a run, in order.
pub(crate) const SIGNALS: &str =
    "SELECT * FROM signals WHERE run_id = $1 AND name = $2 ORDER BY id";

/// Wake a waiting run now.
pub(crate) const WAKE: &str =
    "UPDATE runs SET wake_ms = $2, updated_ms = $2 WHERE id = $1 AND state = 'waiting'";

/// Runs a node may claim at `$1` (now): new or relaunched runs no live node
/// owns, waiting runs whose time came, and running runs whose owner died.
/// Oldest first, at most `$2`; `$3` narrows to one run when not NULL.
pub(crate) const CLAIMABLE: &str = "SELECT * FROM runs r WHERE \
     ($3 IS NULL OR r.id = $3) AND ( \
       (r.state = 'pending' AND (r.wake_ms IS NULL OR r.wake_ms <= $1)) \
       OR (r.state = 'waiting' AND r.wake_ms IS NOT NULL AND r.wake_ms <= $1) \
       OR r.state = 'running' ) \
     AND (r.node_id IS NULL OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = r.node_id \
       AND n.epoch = r.node_epoch AND n.state = 'alive')) \
     ORDER BY r.created_ms, r.id LIMIT $2";

/// Take a claimable run (still in the state it was read in).
pub(crate) const CLAIM: &str = "UPDATE runs SET state = 'pending', node_id = $2, \
     node_epoch = $3, wake_ms = NULL, waiting_for = NULL, updated_ms = $4 \
     WHERE id = $1 AND state = $5 RETURNING *";

/// The conditional update of a run: applies `change` only while the run
/// is in `expected` and owned by `owner` (`None`: by no node); returns the
/// row when it did.
pub(crate) fn update_run<DB>(
    id: &str,
    expected: RunState,
    owner: Option<(&str, i64)>,
    change: &RunChange,
    now: u64,
) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
{
    let mut update: QueryBuilder<DB> = QueryBuilder::new("UPDATE runs SET updated_ms = ");
    update.push_bind(now as i64);
    if let Some(state) = change.state {
        update
            .push(", state = ")
            .push_bind(state.as_str().to_string());
        if state.is_final() {
            update
                .push(", ended_ms = ")
                .push_bind(now as i64)
                .push(", wake_ms = NULL");
        }
    }
    if let Some(output) = &change.output {
        update.push(", output = ").push_bind(output.to_string());
    }
    if let Some(error) = &change.error {
        update.push(", error = ").push_bind(error.to_string());
    }
    if let Some(wake) = change.wake_ms {
        update
            .push(", wake_ms = ")
            .push_bind(wake.map(|t| t as i64));
    }
    if let Some(waiting) = &change.waiting_for {
        update
            .push(", waiting_for = ")
            .push_bind(waiting.as_ref().map(Value::to_string));
    }
    if let Some(sandbox) = &change.sandbox_id {
        update.push(", sandbox_id = ").push_bind(sandbox.clone());
    }
    if change.launched {
        update.push(", launches = launches + 1");
    }
    if change.restarted {
        update.push(", restarts = restarts + 1");
    }
    if change.release {
        update.push(", node_id = NULL, node_epoch = NULL");
    }
    if let Some(by) = &change.cancelled_by {
        update.push(", cancelled_by = ").push_bind(by.clone());
    }
    if let Some(program) = &change.program {
        update.push(", program = ").push_bind(program.clone());
    }
    update.push(" WHERE id = ").push_bind(id.to_string());
    if let Some(launches) = change.if_launches {
        update
            .push(" AND launches = ")
            .push_bind(i64::from(launches));
    }
    update
        .push(" AND state = ")
        .push_bind(expected.as_str().to_string());
    match owner {
        Some((node, epoch)) => {
            update.push(" AND node_id = ").push_bind(node.to_string());
            update.push(" AND node_epoch = ").push_bind(epoch);
        }
        None => {
            update.push(" AND node_id IS NULL");
        }
    }
    update.push(" RETURNING *");
    update
}

/// `SELECT * FROM runs` matching `filter`, newest first, at most `limit`.
pub(crate) fn list_runs<DB>(filter: &RunFilter, limit: u32) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut select: QueryBuilder<DB> = QueryBuilder::new("SELECT * FROM runs WHERE 1 = 1");
    if !filter.states.is_empty() {
        select.push(" AND state IN (");
        let mut states = select.separated(", ");
        for state in &filter.states {
            states.push_bind(state.as_str().to_string());
        }
        select.push(")");
    }
    if let Some(parent) = &filter.parent_id {
        select.push(" AND parent_id = ").push_bind(parent.clone());
    }
    if let Some(node) = &filter.node_id {
        select.push(" AND node_id = ").push_bind(node.clone());
    }
    select
        .push(" ORDER BY created_ms DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit));
    select
}

/// Events of one run after `after`, oldest first.
pub(crate) fn run_events<DB>(run_id: &str, after: i64, limit: u32) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut select: QueryBuilder<DB> = QueryBuilder::new("SELECT * FROM events WHERE run_id = ");
    select.push_bind(run_id.to_string());
    select.push(" AND seq > ").push_bind(after);
    select
        .push(" ORDER BY seq LIMIT ")
        .push_bind(i64::from(limit));
    select
}

/// One launch's journal write, as rows: checked and written on its own
/// within a batch that commits together.
#[derive(Debug)]
pub(crate) struct StepWriteRows<'a> {
    pub run_id: &'a str,
    pub lease: &'a Lease,
    pub launch: u32,
    pub steps: &'a [StepRow],
    pub events: &'a [NewEvent],
}

/// A step as written: its record's columns, and the blob holding its
/// result when that is too large for the row.
#[derive(Debug, Clone)]
pub(crate) struct StepRow {
    pub seq: i64,
    pub name: String,
    pub args_digest: String,
    pub effect: &'static str,
    pub state: &'static str,
    pub result: Option<String>,
    pub result_blob: Option<(String, Vec<u8>)>,
    pub error: Option<String>,
    pub attempts: String,
    pub retry_at_ms: Option<i64>,
    pub checkpoint: Option<String>,
}

impl StepRow {
    /// The row for `step`, its result inline up to `inline_max` bytes.
    pub fn of(step: &StepRecord, inline_max: usize) -> Self {
        let result = step.result.as_ref().map(Value::to_string);
        let (result, result_blob) = match result {
            Some(json) if json.len() > inline_max => {
                let digest = hearth_engine::digest::bytes_digest(json.as_bytes());
                (None, Some((digest, json.into_bytes())))
            }
            other => (other, None),
        };
        Self {
            seq: step.seq as i64,
            name: step.name.clone(),
            args_digest: step.args_digest.clone(),
            effect: effect_str(step.effect),
            state: step.state.as_str(),
            result,
            result_blob,
            error: step.error.as_ref().map(to_json),
            attempts: to_json(&step.attempts),
            retry_at_ms: step.retry_at_ms.map(|t| t as i64),
            checkpoint: step.checkpoint.as_ref().map(to_json),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Plain records of strings and numbers: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn effect_str(effect: Effect) -> &'static str {
    match effect {
        Effect::Pure => "pure",
        Effect::Idempotent => "idempotent",
        Effect::Unsafe => "unsafe",
    }
}

fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

fn json(what: &'static str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

fn opt_json(what: &'static str, text: Option<String>) -> Result<Option<Value>> {
    text.map(|t| json(what, &t)).transpose()
}

/// A `runs` row.
pub(crate) fn run<R>(row: &R) -> Result<RunRecord>
where
    R: StoreRow,
    for<'a> &'a str: ColumnIndex<R>,
{
    let opt_u64 = |v: Option<i64>| v.map(|v| v as u64);
    Ok(RunRecord {
        id: row.text("id")?,
        name: row.opt_text("name")?,
        state: RunState::from_str(&row.text("state")?).map_err(|e| corrupt("run state", e))?,
        program: row.text("program")?,
        spec: json("run spec", &row.text("spec")?)?,
        input: json("run input", &row.text("input")?)?,
        output: opt_json("run output", row.opt_text("output")?)?,
        error: opt_json("run error", row.opt_text("error")?)?,
        parent_id: row.opt_text("parent_id")?,
        parent_seq: opt_u64(row.opt_int("parent_seq")?),
        launches: row.int("launches")? as u32,
        restarts: row.int("restarts")? as u32,
        wake_ms: opt_u64(row.opt_int("wake_ms")?),
        waiting_for: opt_json("run waiting_for", row.opt_text("waiting_for")?)?,
        deadline_ms: opt_u64(row.opt_int("deadline_ms")?),
        sandbox_id: row.opt_text("sandbox_id")?,
        node_id: row.opt_text("node_id")?,
        node_epoch: row.opt_int("node_epoch")?,
        cancelled_by: row.opt_text("cancelled_by")?,
        created_ms: row.int("created_ms")? as u64,
        updated_ms: row.int("updated_ms")? as u64,
        ended_ms: opt_u64(row.opt_int("ended_ms")?),
    })
}

/// A `steps` row joined with its result blob (`result_data`).
pub(crate) fn step<R>(row: &R, result_data: Option<Vec<u8>>) -> Result<StepRecord>
where
    R: StoreRow,
    for<'a> &'a str: ColumnIndex<R>,
{
    let result = match (row.opt_text("result")?, row.opt_text("result_blob")?) {
        (Some(text), _) => Some(json("step result", &text)?),
        (None, Some(digest)) => {
            let bytes = result_data
                .ok_or_else(|| corrupt("step result", format!("blob {digest} is missing")))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| corrupt("step result", e))?)
        }
        (None, None) => None,
    };
    let effect = match row.text("effect")?.as_str() {
        "pure" => Effect::Pure,
        "idempotent" => Effect::Idempotent,
        "unsafe" => Effect::Unsafe,
        other => return Err(corrupt("step effect", other)),
    };
    let error: Option<StepError> = row
        .opt_text("error")?
        .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("step error", e)))
        .transpose()?;
    let attempts: Vec<Attempt> =
        serde_json::from_str(&row.text("attempts")?).map_err(|e| corrupt("step attempts", e))?;
    Ok(StepRecord {
        seq: row.int("seq")? as u64,
        name: row.text("name")?,
        args_digest: row.text("args_digest")?,
        effect,
        state: StepState::from_str(&row.text("state")?).map_err(|e| corrupt("step state", e))?,
        result,
        error,
        attempts,
        retry_at_ms: row.opt_int("retry_at_ms")?.map(|t| t as u64),
        checkpoint: row
            .opt_text("checkpoint")?
            .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("step checkpoint", e)))
            .transpose()?,
    })
}

/// A `signals` row.
pub(crate) fn signal<R>(row: &R) -> Result<Signal>
where
    R: StoreRow,
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(Signal {
        id: row.int("id")?,
        run_id: row.text("run_id")?,
        name: row.text("name")?,
        data: json("signal data", &row.text("data")?)?,
        sent_ms: row.int("sent_ms")? as u64,
    })
}

/// Whether a run waiting for `waiting_for` waits on `on` (a signal's name
/// or a child's id).
pub(crate) fn waits_on(waiting_for: Option<&Value>, on: &str) -> bool {
    waiting_for
        .and_then(|w| w.get("on"))
        .and_then(Value::as_str)
        .is_some_and(|name| name == on)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(result: Value) -> StepRecord {
        StepRecord {
            seq: 2,
            name: "charge".into(),
            args_digest: "sha256:ab".into(),
            effect: Effect::Unsafe,
            state: StepState::Succeeded,
            result: Some(result),
            error: None,
            attempts: vec![],
            retry_at_ms: None,
            checkpoint: None,
        }
    }

    #[test]
    fn small_results_stay_in_the_row_and_large_ones_become_blobs() {
        let small = StepRow::of(&record(json!({"ok": true})), 64);
        assert_eq!(small.result.as_deref(), Some(r#"{"ok":true}"#));
        assert!(small.result_blob.is_none());
        let large = StepRow::of(&record(json!("x".repeat(100))), 64);
        assert!(large.result.is_none());
        let (digest, bytes) = large.result_blob.unwrap();
        assert!(digest.starts_with("sha256:"));
        assert_eq!(bytes.len(), 102);
    }

    #[test]
    fn a_waiting_run_is_woken_only_by_what_it_waits_on() {
        let waiting = json!({"reason": "signal", "on": "approve", "seq": 3});
        assert!(waits_on(Some(&waiting), "approve"));
        assert!(!waits_on(Some(&waiting), "reject"));
        assert!(!waits_on(None, "approve"));
    }
}
