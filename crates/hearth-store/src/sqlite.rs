//! The SQLite backend: one file, embedded, for a single node.
//!
//! Writes go through one connection (`BEGIN IMMEDIATE`), so this process
//! never contends with itself for SQLite's single write lock and every
//! write transaction sees the state it changes; reads use a small pool and
//! see committed data thanks to WAL. Event numbers come from
//! `AUTOINCREMENT` under that one write lock, so they become visible in
//! order.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection};

use crate::backend::claim_event;
use crate::backend::RunUpdated;
use crate::backend::{fence_refusal, registration, Backend, NewEvent, Updated, Writer};
use crate::error::{query, Result, StoreError};
use crate::event::Event;
use crate::event::EventPayload;
use crate::journal_batch::PreparedWrite;
use crate::model::{NewSandbox, SandboxFilter, SandboxRecord, SandboxState, Transition};
use crate::node::{Lease, NodeLoad, NodeRecord, NodeSpec, NodeState};
use crate::runs::{
    owner_refusal, NewRun, RunChange, RunFilter, RunRecord, RunRefusal, RunWriter, Signal,
};
use crate::runs_sql::{self, StepRow};
use crate::sqlite_journal::{BatchOutcome, JournalWriter};
use crate::{rows, sql};
use hearth_engine::{RunState, StepRecord};
use sqlx::Row as _;

/// How long a statement waits for another process's lock before failing
/// with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite's primary result codes that mean the file is damaged.
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_NOTADB: i64 = 26;

/// What an error says about the file being damaged, if it is that.
fn damage(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let code: i64 = db.code()?.parse().ok()?;
    // Extended result codes keep the primary one in the low byte.
    matches!(code & 0xff, SQLITE_CORRUPT | SQLITE_NOTADB).then(|| db.message().to_string())
}

/// `PRAGMA quick_check`: every page and b-tree of the file well formed (it
/// reads the whole file once; no index-to-table cross check, which costs
/// far more). Runs before the migrations so that they never write into a
/// damaged file.
async fn check_integrity(pool: &SqlitePool, url: &str) -> Result<()> {
    let started = std::time::Instant::now();
    let damaged = |detail: String| StoreError::Damaged {
        url: url.to_string(),
        detail,
    };
    let found: Vec<String> = match sqlx::query_scalar("PRAGMA quick_check(20)")
        .fetch_all(pool)
        .await
    {
        Ok(found) => found,
        Err(e) => match damage(&e) {
            Some(detail) => return Err(damaged(detail)),
            None => return Err(query("checking the file's integrity")(e)),
        },
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store integrity checked"
    );
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    let mut detail = found.join("; ");
    if detail.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|&i| detail.is_char_boundary(i))
            .unwrap_or(0);
        detail.truncate(cut);
        detail.push('…');
    }
    Err(damaged(format!("integrity check: {detail}")))
}

/// A SQLite database file.
#[derive(Debug, Clone)]
pub(crate) struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
    journal: JournalWriter,
}

impl SqliteBackend {
    /// Open (creating if needed) the file at `path` and migrate it.
    pub async fn open(path: &Path) -> Result<Self> {
        let display = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let open_err = |source: sqlx::Error| match damage(&source) {
            Some(detail) => StoreError::Damaged {
                url: display.clone(),
                detail,
            },
            None => StoreError::Open {
                url: display.clone(),
                source,
            },
        };
        // An embedded file: a connection cannot go stale, so no ping
        // before each use (a round trip to the driver's thread).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        if let Err(e) = check_integrity(&writer, &display).await {
            // Closed before the caller may move the file aside: SQLite's
            // last connection removes the write-ahead log by its name.
            writer.close().await;
            return Err(e);
        }
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|source| StoreError::Migrate {
                url: display.clone(),
                source,
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .map_err(open_err)?;
        let journal = JournalWriter::open(path, BUSY_TIMEOUT)?;
        Ok(Self {
            writer,
            reader,
            journal,
        })
    }

    /// Write each launch's steps, with their events, in one transaction
    /// (one durable commit for the batch), on the journal writer's thread.
    /// Each write is checked on its own (the run running or pending,
    /// owned by its lease, on its launch; the lease current) and a refused
    /// one writes nothing.
    pub(crate) async fn put_steps(
        &self,
        writes: Vec<PreparedWrite>,
        now: u64,
    ) -> Result<BatchOutcome> {
        // This process's one writer: held so that the two connections
        // never wait on SQLite's lock for each other.
        let _writing = self
            .writer
            .acquire()
            .await
            .map_err(query("waiting to write"))?;
        self.journal.put_steps(writes, now).await
    }

    pub(crate) fn reads(&self) -> &SqlitePool {
        &self.reader
    }

    pub(crate) fn writes(&self) -> &SqlitePool {
        &self.writer
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query("beginning a write"))
    }
}

/// Why `lease` cannot write, read inside the writing transaction.
pub(crate) async fn fence(conn: &mut SqliteConnection, lease: &Lease) -> Result<Option<String>> {
    let stored: Option<(i64, String)> =
        sqlx::query_as("SELECT epoch, state FROM nodes WHERE id = ?")
            .bind(&lease.node_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(query("checking a lease"))?;
    Ok(fence_refusal(
        lease,
        stored.as_ref().map(|(e, s)| (*e, s.as_str())),
    ))
}

pub(crate) async fn insert_event(
    conn: &mut SqliteConnection,
    sandbox_id: Option<&str>,
    run_id: Option<&str>,
    node_id: Option<&str>,
    event: &NewEvent,
    now: u64,
) -> Result<Event> {
    let row = sqlx::query(
        "INSERT INTO events (sandbox_id, run_id, node_id, at_ms, kind, version, data) \
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
    )
    .bind(sandbox_id)
    .bind(run_id)
    .bind(node_id)
    .bind(now as i64)
    .bind(event.kind)
    .bind(i64::from(event.version))
    .bind(&event.data)
    .fetch_one(&mut *conn)
    .await
    .map_err(query("appending an event"))?;
    rows::event(&row)
}

async fn node_row(conn: &mut SqliteConnection, id: &str) -> Result<Option<NodeRecord>> {
    let row = sqlx::query("SELECT * FROM nodes WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query("reading a node"))?;
    row.as_ref().map(rows::node).transpose()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Plain structs of numbers: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

crate::runs_backend::impl_run_backend!(
    SqliteBackend,
    Sqlite,
    lock_row = "",
    claim_lock = "",
    size = "SELECT p.page_count * s.page_size FROM pragma_page_count() p, pragma_page_size() s"
);

impl Backend for SqliteBackend {
    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn insert_sandbox(
        &self,
        new: &NewSandbox,
        owner: &Lease,
        event: &NewEvent,
        now: u64,
    ) -> Result<std::result::Result<Event, String>> {
        let mut tx = self.begin().await?;
        if let Some(refusal) = fence(&mut tx, owner).await? {
            return Ok(Err(refusal));
        }
        let labels = to_json(&new.labels);
        let inserted = sqlx::query(
            "INSERT INTO sandboxes (id, state, image, vcpus, memory_bytes, disk_bytes, timeout_ms, \
             labels, created_ms, updated_ms, node_id, node_epoch) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&new.id)
        .bind(SandboxState::Creating.as_str())
        .bind(&new.image)
        .bind(i64::from(new.vcpus))
        .bind(new.memory_bytes as i64)
        .bind(new.disk_bytes as i64)
        .bind(new.timeout_ms.map(|t| t as i64))
        .bind(labels)
        .bind(new.created_ms as i64)
        .bind(now as i64)
        .bind(&owner.node_id)
        .bind(owner.epoch)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Duplicate(new.id.clone()))
            }
            Err(e) => return Err(query("inserting a sandbox")(e)),
        }
        let event = insert_event(
            &mut tx,
            Some(&new.id),
            None,
            Some(&owner.node_id),
            event,
            now,
        )
        .await?;
        tx.commit().await.map_err(query("commit"))?;
        Ok(Ok(event))
    }

    async fn update_sandbox(
        &self,
        id: &str,
        expected: SandboxState,
        writer: Writer<'_>,
        change: &Transition,
        event: &NewEvent,
        now: u64,
    ) -> Result<Updated> {
        let mut tx = self.begin().await?;
        let (node_id, epoch, event_node) = match writer {
            Writer::Owner(lease) => {
                if let Some(refusal) = fence(&mut tx, lease).await? {
                    return Ok(Updated::Fenced(refusal));
                }
                (
                    lease.node_id.as_str(),
                    lease.epoch,
                    Some(lease.node_id.as_str()),
                )
            }
            Writer::Takeover { node_id, epoch, by } => (node_id, epoch, by),
        };
        let mut update = sql::update_sandbox::<Sqlite>(id, expected, node_id, epoch, change, now);
        let done = update
            .build()
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("updating a sandbox"))?;
        if done.is_none() {
            let current: Option<(String, String, i64)> =
                sqlx::query_as("SELECT state, node_id, node_epoch FROM sandboxes WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query("reading a sandbox"))?;
            return Ok(match current {
                None => Updated::NotFound,
                Some((_, owner, owner_epoch)) if owner != node_id || owner_epoch != epoch => {
                    Updated::NotOwner {
                        node_id: owner,
                        epoch: owner_epoch,
                    }
                }
                Some(_) => Updated::StateMoved,
            });
        }
        let event = insert_event(&mut tx, Some(id), None, event_node, event, now).await?;
        tx.commit().await.map_err(query("commit"))?;
        Ok(Updated::Done(event))
    }

    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        let row = sqlx::query("SELECT * FROM sandboxes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(query("reading a sandbox"))?;
        row.as_ref().map(rows::sandbox).transpose()
    }

    async fn list_sandboxes(
        &self,
        filter: &SandboxFilter,
        limit: u32,
    ) -> Result<Vec<SandboxRecord>> {
        let mut select = sql::list_sandboxes::<Sqlite>(filter, limit, |select, key, value| {
            select
                .push("EXISTS (SELECT 1 FROM json_each(sandboxes.labels) WHERE key = ")
                .push_bind(key.to_string())
                .push(" AND value = ")
                .push_bind(value.to_string())
                .push(")");
        });
        let found = select
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(query("listing sandboxes"))?;
        found.iter().map(rows::sandbox).collect()
    }

    async fn orphaned_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        let found = sql::orphaned_sandboxes::<Sqlite>()
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(query("finding orphaned sandboxes"))?;
        found.iter().map(rows::sandbox).collect()
    }

    async fn append_event(
        &self,
        sandbox_id: Option<&str>,
        run_id: Option<&str>,
        fence_with: Option<&Lease>,
        event: &NewEvent,
        now: u64,
    ) -> Result<std::result::Result<Event, String>> {
        let mut tx = self.begin().await?;
        if let Some(lease) = fence_with {
            if let Some(refusal) = fence(&mut tx, lease).await? {
                return Ok(Err(refusal));
            }
        }
        let node = fence_with.map(|l| l.node_id.as_str());
        let event = insert_event(&mut tx, sandbox_id, run_id, node, event, now).await?;
        tx.commit().await.map_err(query("commit"))?;
        Ok(Ok(event))
    }

    async fn events(&self, sandbox_id: Option<&str>, after: i64, limit: u32) -> Result<Vec<Event>> {
        let found = sql::events::<Sqlite>(sandbox_id, after, limit)
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(query("reading events"))?;
        found.iter().map(rows::event).collect()
    }

    async fn register_node(
        &self,
        spec: &NodeSpec,
        ttl_ms: u64,
        now: u64,
    ) -> Result<(NodeRecord, Event)> {
        let mut tx = self.begin().await?;
        let existing = node_row(&mut tx, &spec.id).await?;
        let epoch = registration(existing.as_ref(), spec, now)?;
        sqlx::query(
            "INSERT INTO nodes (id, url, hostname, home, epoch, state, started_ms, heartbeat_ms, \
             heartbeat_seq, lease_expires_ms, capacity, load) \
             VALUES (?, ?, ?, ?, ?, 'alive', ?, ?, 0, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, hostname = excluded.hostname, \
             home = excluded.home, epoch = excluded.epoch, state = 'alive', \
             started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms, \
             heartbeat_seq = 0, lease_expires_ms = excluded.lease_expires_ms, \
             capacity = excluded.capacity, load = excluded.load",
        )
        .bind(&spec.id)
        .bind(&spec.url)
        .bind(&spec.hostname)
        .bind(&spec.home)
        .bind(epoch)
        .bind(now as i64)
        .bind(now as i64)
        .bind(now.saturating_add(ttl_ms) as i64)
        .bind(to_json(&spec.capacity))
        .bind(to_json(&NodeLoad::default()))
        .execute(&mut *tx)
        .await
        .map_err(query("registering a node"))?;
        let payload = crate::event::EventPayload::NodeJoined(crate::event::NodeJoined {
            epoch,
            url: spec.url.clone(),
            hostname: spec.hostname.clone(),
            previous_epoch: existing.as_ref().map(|n| n.epoch),
            previous_state: existing.as_ref().map(|n| n.state.to_string()),
        });
        let event = insert_event(
            &mut tx,
            None,
            None,
            Some(&spec.id),
            &NewEvent::of(&payload),
            now,
        )
        .await?;
        let node = node_row(&mut tx, &spec.id)
            .await?
            .ok_or_else(|| StoreError::Invalid("a registered node vanished".into()))?;
        tx.commit().await.map_err(query("commit"))?;
        Ok((node, event))
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        ttl_ms: u64,
        load: &NodeLoad,
        now: u64,
    ) -> Result<Option<Lease>> {
        let expires = now.saturating_add(ttl_ms);
        let renewed = sqlx::query(
            "UPDATE nodes SET heartbeat_ms = ?, heartbeat_seq = heartbeat_seq + 1, \
             lease_expires_ms = ?, load = ? WHERE id = ? AND epoch = ? AND state = 'alive'",
        )
        .bind(now as i64)
        .bind(expires as i64)
        .bind(to_json(load))
        .bind(&lease.node_id)
        .bind(lease.epoch)
        .execute(&self.writer)
        .await
        .map_err(query("renewing a lease"))?;
        Ok((renewed.rows_affected() == 1).then(|| Lease {
            expires_ms: expires,
            ..lease.clone()
        }))
    }

    async fn end_lease(
        &self,
        node_id: &str,
        epoch: i64,
        seen_heartbeat: Option<i64>,
        state: NodeState,
        event: &NewEvent,
        by: &str,
        now: u64,
    ) -> Result<Option<Event>> {
        let mut tx = self.begin().await?;
        let ended = sqlx::query(
            "UPDATE nodes SET state = ? WHERE id = ? AND epoch = ? AND state = 'alive' \
             AND (? IS NULL OR heartbeat_seq = ?)",
        )
        .bind(state.as_str())
        .bind(node_id)
        .bind(epoch)
        .bind(seen_heartbeat)
        .bind(seen_heartbeat)
        .execute(&mut *tx)
        .await
        .map_err(query("ending a lease"))?;
        if ended.rows_affected() != 1 {
            return Ok(None);
        }
        let event = insert_event(&mut tx, None, None, Some(by), event, now).await?;
        tx.commit().await.map_err(query("commit"))?;
        Ok(Some(event))
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let found = sqlx::query("SELECT * FROM nodes ORDER BY id")
            .fetch_all(&self.reader)
            .await
            .map_err(query("listing nodes"))?;
        found.iter().map(rows::node).collect()
    }

    async fn node(&self, id: &str) -> Result<Option<NodeRecord>> {
        let row = sqlx::query("SELECT * FROM nodes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(query("reading a node"))?;
        row.as_ref().map(rows::node).transpose()
    }
}
