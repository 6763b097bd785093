//! SQLite's journal writer: a thread with a connection of its own that
//! commits each batch of journal writes in one synchronous transaction.
//!
//! Journal writes are the hot path of durable runs: every step waits for
//! one. Through the async driver each statement of the transaction is a
//! round trip to its worker thread and back (seven of them per batch), and
//! on these machines every such wake-up of an idle CPU costs tens of
//! microseconds, more than the statements themselves. Here the whole batch
//! (owner rows, leases, rows, events, commit with its fsync) runs without
//! leaving the thread: one hand-off there and one back.
//!
//! The backend's single-writer rule still holds: the caller holds the
//! async driver's one write connection while this thread writes, so the
//! two never wait on SQLite's lock for each other.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::backend::fence_refusal;
use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::journal_batch::{self, PreparedWrite, RunOwnerRow};
use crate::runs::RunRefusal;
use crate::runs_sql;

/// Statements kept prepared: the batch statements differ by row count.
const STATEMENT_CACHE: usize = 128;

/// A batch's outcome: each write's events, or why it was refused.
pub(crate) type BatchOutcome = Vec<std::result::Result<Vec<Event>, RunRefusal>>;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The handle to the writer thread; the thread ends (closing its
/// connection) when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct JournalWriter {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalWriter")
    }
}

fn sqlite(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { what, source }
}

impl JournalWriter {
    /// Open a write connection to the (already migrated, WAL) database at
    /// `path` and start its thread.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sqlite("opening"))?;
        conn.busy_timeout(busy_timeout)
            .map_err(sqlite("setting the busy timeout"))?;
        // Durable commits: the WAL is fsynced before a commit returns.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite("setting synchronous"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sqlite("enabling foreign keys"))?;
        // A batch's upserts keep a statement journal; in memory it never
        // spills to a temporary file created and deleted per commit.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sqlite("keeping temporary data in memory"))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hearth-journal".into())
            .spawn(move || {
                let mut conn = conn;
                for job in queue {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the journal writer: {e}")))?;
        Ok(Self { jobs })
    }

    /// Write `writes` in one transaction (see `Store::put_step_batch`).
    pub async fn put_steps(&self, writes: Vec<PreparedWrite>, now: u64) -> Result<BatchOutcome> {
        let (done, outcome) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(put_steps(conn, &writes, now));
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Invalid("the SQLite journal writer has stopped".into())
}

fn put_steps(conn: &mut Connection, writes: &[PreparedWrite], now: u64) -> Result<BatchOutcome> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let writes: Vec<_> = writes.iter().map(PreparedWrite::rows).collect();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite("beginning a journal write"))?;
    let ids = journal_batch::run_ids(&writes);
    let owners: HashMap<String, RunOwnerRow> = {
        let mut select = tx
            .prepare_cached(&runs_sql::run_owners(ids.len(), ""))
            .map_err(sqlite("reading runs"))?;
        let found = select
            .query_map(rusqlite::params_from_iter(&ids), |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })
            .map_err(sqlite("reading runs"))?;
        found
            .map(|row| row.map(|row: RunOwnerRow| (row.0.clone(), row)))
            .collect::<rusqlite::Result<_>>()
            .map_err(sqlite("reading runs"))?
    };
    let mut fences = Vec::new();
    for lease in journal_batch::leases(&writes) {
        let stored: Option<(i64, String)> = tx
            .prepare_cached("SELECT epoch, state FROM nodes WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([&lease.node_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(sqlite("checking a lease"))?;
        let refusal = fence_refusal(lease, stored.as_ref().map(|(e, s)| (*e, s.as_str())));
        fences.push((lease, refusal));
    }
    let plan = journal_batch::plan(&writes, &owners, &fences);
    let at = now as i64;
    for (_, step) in &plan.rows {
        if let Some((digest, data)) = &step.result_blob {
            tx.prepare_cached(runs_sql::PUT_BLOB)
                .and_then(|mut s| s.execute(rusqlite::params![digest, data.len() as i64, data, at]))
                .map_err(sqlite("storing a step result"))?;
        }
    }
    if !plan.rows.is_empty() {
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(plan.rows.len() * 13);
        let blobs: Vec<Option<&str>> = plan
            .rows
            .iter()
            .map(|(_, s)| s.result_blob.as_ref().map(|(d, _)| d.as_str()))
            .collect();
        for ((run_id, step), blob) in plan.rows.iter().zip(&blobs) {
            params.extend([
                run_id as &dyn ToSql,
                &step.seq,
                &step.name,
                &step.args_digest,
                &step.effect,
                &step.state,
                &step.result,
                blob,
                &step.error,
                &step.attempts,
                &step.retry_at_ms,
                &step.checkpoint,
                &at,
            ]);
        }
        tx.prepare_cached(&runs_sql::put_step_rows(plan.rows.len()))
            .and_then(|mut s| s.execute(params.as_slice()))
            .map_err(sqlite("writing steps"))?;
    }
    let mut appended = Vec::with_capacity(plan.events.len());
    if !plan.events.is_empty() {
        let versions: Vec<i64> = plan
            .events
            .iter()
            .map(|e| i64::from(e.event.version))
            .collect();
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(plan.events.len() * 7);
        for (row, version) in plan.events.iter().zip(&versions) {
            params.extend([
                &row.sandbox_id as &dyn ToSql,
                &row.run_id,
                &row.node_id,
                &at,
                &row.event.kind,
                version,
                &row.event.data,
            ]);
        }
        let statement = format!(
            "INSERT INTO events (sandbox_id, run_id, node_id, at_ms, kind, version, data) \
             VALUES {} RETURNING seq",
            runs_sql::event_values(plan.events.len(), 1)
        );
        let mut seqs: Vec<i64> = {
            let mut insert = tx
                .prepare_cached(&statement)
                .map_err(sqlite("appending events"))?;
            let seqs = insert
                .query_map(params.as_slice(), |r| r.get(0))
                .map_err(sqlite("appending events"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(sqlite("appending events"))?;
            seqs
        };
        // Numbered in the order given; RETURNING's order is unspecified.
        seqs.sort_unstable();
        for (row, seq) in plan.events.iter().zip(seqs) {
            let data = serde_json::from_str(&row.event.data).map_err(|e| StoreError::Corrupt {
                what: "event data",
                detail: e.to_string(),
            })?;
            appended.push(Event {
                seq,
                sandbox_id: row.sandbox_id.map(str::to_string),
                run_id: row.run_id.map(str::to_string),
                node_id: row.node_id.map(str::to_string),
                at_ms: now,
                kind: row.event.kind.to_string(),
                version: row.event.version,
                data,
            });
        }
    }
    tx.commit().map_err(sqlite("committing a journal write"))?;
    Ok(journal_batch::share_events(plan.outcomes, appended))
}
