//! The SQLite store.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::error::{query, Result, StoreError};
use crate::model::{Event, NewSandbox, SandboxFilter, SandboxRecord, SandboxState, Transition};

/// How long a statement waits for another process's lock before failing
/// with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most rows one query returns.
pub const MAX_PAGE: u32 = 1000;

/// The store: one SQLite file. Cheap to clone.
///
/// Writes go through a single connection, so this process never contends
/// with itself for SQLite's one write lock; reads use a small pool and see
/// committed data thanks to WAL.
#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Open (creating if needed) the store at `path` and bring its schema
    /// up to date.
    pub async fn open(path: &Path) -> Result<Store> {
        let display = path.display().to_string();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let open_err = |source| StoreError::Open {
            path: display.clone(),
            source,
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(|source| StoreError::Migrate {
                path: display.clone(),
                source,
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(open_err)?;
        Ok(Store { writer, reader })
    }

    /// Close both pools, waiting for queries in flight.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Record an admitted sandbox in state `creating`, with its
    /// `sandbox.creating` event.
    pub async fn insert_sandbox(&self, new: &NewSandbox, data: serde_json::Value) -> Result<Event> {
        let labels = serde_json::to_string(&new.labels).expect("labels serialize");
        let mut tx = self.writer.begin().await.map_err(query("begin"))?;
        let inserted = sqlx::query(
            "INSERT INTO sandboxes (id, state, image, vcpus, memory_bytes, disk_bytes, timeout_ms, \
             labels, created_ms, updated_ms, server_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .bind(new.created_ms as i64)
        .bind(i64::from(new.server_pid))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Duplicate(new.id.clone()))
            }
            Err(e) => return Err(query("inserting a sandbox")(e)),
        }
        let event = insert_event(&mut tx, Some(&new.id), "sandbox.creating", data).await?;
        tx.commit().await.map_err(query("commit"))?;
        Ok(event)
    }

    /// Apply `change` to sandbox `id` and record `kind` with `data`, in one
    /// transaction. Returns `None` (and changes nothing) when the state
    /// change is not allowed, e.g. the sandbox already ended.
    pub async fn transition(
        &self,
        id: &str,
        change: &Transition,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Option<Event>> {
        let mut tx = self.writer.begin().await.map_err(query("begin"))?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT state FROM sandboxes WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("reading a sandbox state"))?;
        let Some(current) = current else {
            return Err(StoreError::NotFound(id.to_string()));
        };
        let current = parse_state(&current)?;
        if let Some(next) = change.state {
            if !current.can_become(next) {
                return Ok(None);
            }
        } else if current.is_final() {
            return Ok(None);
        }
        let now = now_ms();
        let mut update: QueryBuilder<Sqlite> =
            QueryBuilder::new("UPDATE sandboxes SET updated_ms = ");
        update.push_bind(now as i64);
        if let Some(state) = change.state {
            update.push(", state = ").push_bind(state.as_str());
            if state.is_final() {
                update.push(", ended_ms = ").push_bind(now as i64);
            }
        }
        if let Some(accel) = &change.accelerator {
            update.push(", accelerator = ").push_bind(accel.clone());
        }
        if let Some(boot) = change.boot_ms {
            update.push(", boot_ms = ").push_bind(boot as i64);
        }
        if let Some(timeout) = change.timeout_ms {
            update
                .push(", timeout_ms = ")
                .push_bind(timeout.map(|t| t as i64));
        }
        if let Some(reason) = &change.end_reason {
            update.push(", end_reason = ").push_bind(reason.clone());
        }
        if let Some(message) = &change.end_message {
            update.push(", end_message = ").push_bind(message.clone());
        }
        update.push(" WHERE id = ").push_bind(id);
        update
            .build()
            .execute(&mut *tx)
            .await
            .map_err(query("updating a sandbox"))?;
        let event = insert_event(&mut tx, Some(id), kind, data).await?;
        tx.commit().await.map_err(query("commit"))?;
        Ok(Some(event))
    }

    /// Append an event. `sandbox_id` is `None` for events about the server
    /// (such as a refused create).
    pub async fn append_event(
        &self,
        sandbox_id: Option<&str>,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Event> {
        let mut tx = self.writer.begin().await.map_err(query("begin"))?;
        let event = insert_event(&mut tx, sandbox_id, kind, data).await?;
        tx.commit().await.map_err(query("commit"))?;
        Ok(event)
    }

    /// One sandbox.
    pub async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        let row = sqlx::query("SELECT * FROM sandboxes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(query("reading a sandbox"))?;
        row.map(|r| sandbox_from_row(&r)).transpose()
    }

    /// Sandboxes matching `filter`, newest first.
    pub async fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<Vec<SandboxRecord>> {
        let mut select: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT * FROM sandboxes WHERE 1 = 1");
        if !filter.states.is_empty() {
            select.push(" AND state IN (");
            let mut states = select.separated(", ");
            for state in &filter.states {
                states.push_bind(state.as_str());
            }
            select.push(")");
        }
        for (key, value) in &filter.labels {
            select
                .push(" AND EXISTS (SELECT 1 FROM json_each(sandboxes.labels) WHERE key = ")
                .push_bind(key.clone())
                .push(" AND value = ")
                .push_bind(value.clone())
                .push(")");
        }
        let limit = if filter.limit == 0 {
            MAX_PAGE
        } else {
            filter.limit.min(MAX_PAGE)
        };
        select
            .push(" ORDER BY created_ms DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = select
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(query("listing sandboxes"))?;
        rows.iter().map(sandbox_from_row).collect()
    }

    /// Sandboxes not in a final state: at server start, the ones a previous
    /// server left behind.
    pub async fn unfinished_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        let filter = SandboxFilter {
            states: SandboxState::ALL
                .into_iter()
                .filter(|s| !s.is_final())
                .collect(),
            ..SandboxFilter::default()
        };
        self.list_sandboxes(&filter).await
    }

    /// Events of one sandbox (or, with `None`, of the whole server) with a
    /// sequence number above `after`, oldest first, at most `limit`.
    pub async fn events(
        &self,
        sandbox_id: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        let rows =
            match sandbox_id {
                Some(id) => sqlx::query(
                    "SELECT * FROM events WHERE sandbox_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                )
                .bind(id)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await,
                None => {
                    sqlx::query("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.reader)
                        .await
                }
            }
            .map_err(query("reading events"))?;
        rows.iter().map(event_from_row).collect()
    }
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    sandbox_id: Option<&str>,
    kind: &str,
    data: serde_json::Value,
) -> Result<Event> {
    let at_ms = now_ms();
    let text = data.to_string();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (sandbox_id, at_ms, kind, data) VALUES (?, ?, ?, ?) RETURNING seq",
    )
    .bind(sandbox_id)
    .bind(at_ms as i64)
    .bind(kind)
    .bind(text)
    .fetch_one(&mut **tx)
    .await
    .map_err(query("appending an event"))?;
    Ok(Event {
        seq,
        sandbox_id: sandbox_id.map(str::to_string),
        at_ms,
        kind: kind.to_string(),
        data,
    })
}

fn parse_state(text: &str) -> Result<SandboxState> {
    SandboxState::from_str(text).map_err(|detail| StoreError::Corrupt {
        what: "sandbox state",
        detail,
    })
}

fn column<'r, T>(row: &'r SqliteRow, name: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(|e| StoreError::Corrupt {
        what: name,
        detail: e.to_string(),
    })
}

fn sandbox_from_row(row: &SqliteRow) -> Result<SandboxRecord> {
    let labels: String = column(row, "labels")?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt {
            what: "labels",
            detail: e.to_string(),
        })?;
    let opt_u64 = |v: Option<i64>| v.map(|v| v as u64);
    Ok(SandboxRecord {
        id: column(row, "id")?,
        state: parse_state(&column::<String>(row, "state")?)?,
        image: column(row, "image")?,
        vcpus: column::<i64>(row, "vcpus")? as u32,
        memory_bytes: column::<i64>(row, "memory_bytes")? as u64,
        disk_bytes: column::<i64>(row, "disk_bytes")? as u64,
        timeout_ms: opt_u64(column(row, "timeout_ms")?),
        labels,
        accelerator: column(row, "accelerator")?,
        boot_ms: opt_u64(column(row, "boot_ms")?),
        created_ms: column::<i64>(row, "created_ms")? as u64,
        updated_ms: column::<i64>(row, "updated_ms")? as u64,
        ended_ms: opt_u64(column(row, "ended_ms")?),
        end_reason: column(row, "end_reason")?,
        end_message: column(row, "end_message")?,
        server_pid: column::<i64>(row, "server_pid")? as u32,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<Event> {
    let data: String = column(row, "data")?;
    Ok(Event {
        seq: column(row, "seq")?,
        sandbox_id: column(row, "sandbox_id")?,
        at_ms: column::<i64>(row, "at_ms")? as u64,
        kind: column(row, "kind")?,
        data: serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
            what: "event data",
            detail: e.to_string(),
        })?,
    })
}
