//! The PostgreSQL backend: one database shared by every node of a cluster.
//!
//! Many processes write at once, so every write that depends on ownership
//! takes a share lock on the writer's node row first (`FOR SHARE`): a node
//! that is being expired (an exclusive row lock) either finishes its write
//! before the expiry commits, or sees its lease gone. Events are numbered
//! from a one-row counter whose lock each appending transaction holds until
//! it commits, so numbers become visible in order (see the migration).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use crate::backend::claim_event;
use crate::backend::RunUpdated;
use crate::backend::{fence_refusal, registration, Backend, NewEvent, Updated, Writer};
use crate::error::{query, Result, StoreError};
use crate::event::{Event, EventPayload, NodeJoined};
use crate::journal_batch::{self, RunOwnerRow};
use crate::model::{NewSandbox, SandboxFilter, SandboxRecord, SandboxState, Transition};
use crate::node::{Lease, NodeLoad, NodeRecord, NodeSpec, NodeState};
use crate::runs::{
    owner_refusal, NewRun, RunChange, RunFilter, RunRecord, RunRefusal, RunWriter, Signal,
};
use crate::runs_sql::{self, EventRow, StepRow, StepWriteRows};
use crate::url::redact;
use crate::{rows, sql};
use hearth_engine::{RunState, StepRecord};
use sqlx::Row as _;
use std::collections::HashMap;

/// How long a request waits for a connection before the database counts
/// as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per process.
const MAX_CONNECTIONS: u32 = 8;

/// A PostgreSQL database.
#[derive(Debug, Clone)]
pub(crate) struct PgBackend {
    pool: PgPool,
}

impl PgBackend {
    /// Connect to `url` and migrate the database.
    pub async fn open(url: &str) -> Result<Self> {
        let shown = redact(url);
        let options: PgConnectOptions = url.parse().map_err(|source| StoreError::Open {
            url: shown.clone(),
            source,
        })?;
        let options = options.application_name("hearth");
        // One connection first, so that a refusal says why (the pool would
        // only say it timed out).
        let first = tokio::time::timeout(ACQUIRE_TIMEOUT * 2, PgConnection::connect_with(&options))
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        match first {
            Ok(conn) => {
                let _ = conn.close().await;
            }
            Err(source) => return Err(StoreError::Open { url: shown, source }),
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection that broke while the database was down is
            // replaced instead of failing the next request.
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: shown.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { url: shown, source })?;
        Ok(Self { pool })
    }

    pub(crate) fn reads(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn writes(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(query("beginning a write"))
    }

    /// Write each launch's steps, with their events, in one transaction
    /// (one durable commit for the batch). Each write is checked on its
    /// own (the run running or pending, owned by its lease, on its launch;
    /// the lease current) and a refused one writes nothing. The runs are
    /// locked in id order, so concurrent batches cannot deadlock.
    pub(crate) async fn put_steps(
        &self,
        writes: &[StepWriteRows<'_>],
        now: u64,
    ) -> Result<Vec<std::result::Result<Vec<Event>, RunRefusal>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let ids = journal_batch::run_ids(writes);
        let mut select = sqlx::query_as::<_, RunOwnerRow>(sqlx::AssertSqlSafe(
            runs_sql::run_owners(ids.len(), " FOR UPDATE"),
        ));
        for id in &ids {
            select = select.bind(*id);
        }
        let owners: HashMap<String, RunOwnerRow> = select
            .fetch_all(&mut *tx)
            .await
            .map_err(query("reading runs"))?
            .into_iter()
            .map(|row| (row.0.clone(), row))
            .collect();
        let mut fences = Vec::new();
        for lease in journal_batch::leases(writes) {
            fences.push((lease, fence(&mut tx, lease).await?));
        }
        let plan = journal_batch::plan(writes, &owners, &fences);
        for (_, step) in &plan.rows {
            put_step_blob(&mut tx, step, now).await?;
        }
        if !plan.rows.is_empty() {
            let statement = runs_sql::put_step_rows(plan.rows.len());
            let mut upsert = sqlx::query(sqlx::AssertSqlSafe(statement));
            for (run_id, step) in &plan.rows {
                upsert = runs_sql::bind_step_row!(upsert, *run_id, step, now);
            }
            upsert
                .execute(&mut *tx)
                .await
                .map_err(query("writing steps"))?;
        }
        let appended = if plan.events.is_empty() {
            Vec::new()
        } else {
            insert_events(&mut tx, &plan.events, now).await?
        };
        tx.commit().await.map_err(query("commit"))?;
        Ok(journal_batch::share_events(plan.outcomes, appended))
    }
}

/// Why `lease` cannot write; takes a share lock on the node row, held until
/// the transaction ends, so the lease cannot be taken over meanwhile.
pub(crate) async fn fence(conn: &mut PgConnection, lease: &Lease) -> Result<Option<String>> {
    let stored: Option<(i64, String)> =
        sqlx::query_as("SELECT epoch, state FROM nodes WHERE id = $1 FOR SHARE")
            .bind(&lease.node_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(query("checking a lease"))?;
    Ok(fence_refusal(
        lease,
        stored.as_ref().map(|(e, s)| (*e, s.as_str())),
    ))
}

/// Append an event, numbered from the counter row (whose lock the
/// transaction then holds until it commits).
pub(crate) async fn insert_event(
    conn: &mut PgConnection,
    sandbox_id: Option<&str>,
    run_id: Option<&str>,
    node_id: Option<&str>,
    event: &NewEvent,
    now: u64,
) -> Result<Event> {
    let row = sqlx::query(
        "WITH n AS (UPDATE event_counter SET last = last + 1 WHERE id = 1 RETURNING last) \
         INSERT INTO events (seq, sandbox_id, run_id, node_id, at_ms, kind, version, data) \
         SELECT n.last, $1, $2, $3, $4, $5, $6, $7 FROM n RETURNING *",
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

/// Append `rows` events in one statement, numbered in the order given
/// from a range taken from the counter row (whose lock the transaction
/// then holds until it commits); returned in that order.
pub(crate) async fn insert_events(
    conn: &mut PgConnection,
    rows: &[EventRow<'_>],
    now: u64,
) -> Result<Vec<Event>> {
    let statement = format!(
        "WITH n AS (UPDATE event_counter SET last = last + $1 WHERE id = 1 RETURNING last), \
         v (i, sandbox_id, run_id, node_id, at_ms, kind, version, data) AS (VALUES {}) \
         INSERT INTO events (seq, sandbox_id, run_id, node_id, at_ms, kind, version, data) \
         SELECT n.last - $1 + v.i, v.sandbox_id, v.run_id, v.node_id, v.at_ms, v.kind, \
         v.version, v.data FROM n, v RETURNING *",
        (0..rows.len())
            .map(|r| {
                let first = 2 + r * 8;
                let params: Vec<String> = (first..first + 8).map(|p| format!("${p}")).collect();
                format!("({})", params.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut insert = sqlx::query(sqlx::AssertSqlSafe(statement)).bind(rows.len() as i64);
    for (i, row) in rows.iter().enumerate() {
        insert = insert
            .bind(i as i64 + 1)
            .bind(row.sandbox_id)
            .bind(row.run_id)
            .bind(row.node_id)
            .bind(now as i64)
            .bind(row.event.kind)
            .bind(i64::from(row.event.version))
            .bind(&row.event.data);
    }
    let found = insert
        .fetch_all(&mut *conn)
        .await
        .map_err(query("appending events"))?;
    let mut events = found.iter().map(rows::event).collect::<Result<Vec<_>>>()?;
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

async fn node_row(conn: &mut PgConnection, id: &str, lock: bool) -> Result<Option<NodeRecord>> {
    let statement = if lock {
        "SELECT * FROM nodes WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM nodes WHERE id = $1"
    };
    let row = sqlx::query(statement)
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
    PgBackend,
    Postgres,
    lock_row = " FOR UPDATE",
    claim_lock = " FOR UPDATE OF r SKIP LOCKED",
    size = "SELECT pg_database_size(current_database())"
);

impl Backend for PgBackend {
    async fn close(&self) {
        self.pool.close().await;
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
        let inserted = sqlx::query(
            "INSERT INTO sandboxes (id, state, image, vcpus, memory_bytes, disk_bytes, timeout_ms, \
             labels, created_ms, updated_ms, node_id, node_epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&new.id)
        .bind(SandboxState::Creating.as_str())
        .bind(&new.image)
        .bind(i64::from(new.vcpus))
        .bind(new.memory_bytes as i64)
        .bind(new.disk_bytes as i64)
        .bind(new.timeout_ms.map(|t| t as i64))
        .bind(to_json(&new.labels))
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
        let mut update = sql::update_sandbox::<Postgres>(id, expected, node_id, epoch, change, now);
        let done = update
            .build()
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("updating a sandbox"))?;
        if done.is_none() {
            let current: Option<(String, String, i64)> =
                sqlx::query_as("SELECT state, node_id, node_epoch FROM sandboxes WHERE id = $1")
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
        let row = sqlx::query("SELECT * FROM sandboxes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query("reading a sandbox"))?;
        row.as_ref().map(rows::sandbox).transpose()
    }

    async fn list_sandboxes(
        &self,
        filter: &SandboxFilter,
        limit: u32,
    ) -> Result<Vec<SandboxRecord>> {
        let mut select = sql::list_sandboxes::<Postgres>(filter, limit, |select, key, value| {
            select
                .push("(labels::jsonb ->> ")
                .push_bind(key.to_string())
                .push(") = ")
                .push_bind(value.to_string());
        });
        let found = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(query("listing sandboxes"))?;
        found.iter().map(rows::sandbox).collect()
    }

    async fn orphaned_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        let found = sql::orphaned_sandboxes::<Postgres>()
            .build()
            .fetch_all(&self.pool)
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
        let found = sql::events::<Postgres>(sandbox_id, after, limit)
            .build()
            .fetch_all(&self.pool)
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
        // Make sure a row exists to lock, so two nodes registering the same
        // new id queue up instead of racing.
        sqlx::query(
            "INSERT INTO nodes (id, url, hostname, home, epoch, state, started_ms, heartbeat_ms, \
             heartbeat_seq, lease_expires_ms, capacity, load) \
             VALUES ($1, '', '', '', 0, 'left', 0, 0, 0, 0, '{}', '{}') ON CONFLICT (id) DO NOTHING",
        )
        .bind(&spec.id)
        .execute(&mut *tx)
        .await
        .map_err(query("registering a node"))?;
        let existing = node_row(&mut tx, &spec.id, true)
            .await?
            .filter(|n| n.epoch > 0);
        let epoch = registration(existing.as_ref(), spec, now)?;
        sqlx::query(
            "UPDATE nodes SET url = $2, hostname = $3, home = $4, epoch = $5, state = 'alive', \
             started_ms = $6, heartbeat_ms = $6, heartbeat_seq = 0, lease_expires_ms = $7, \
             capacity = $8, load = $9 WHERE id = $1",
        )
        .bind(&spec.id)
        .bind(&spec.url)
        .bind(&spec.hostname)
        .bind(&spec.home)
        .bind(epoch)
        .bind(now as i64)
        .bind(now.saturating_add(ttl_ms) as i64)
        .bind(to_json(&spec.capacity))
        .bind(to_json(&NodeLoad::default()))
        .execute(&mut *tx)
        .await
        .map_err(query("registering a node"))?;
        let payload = EventPayload::NodeJoined(NodeJoined {
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
        let node = node_row(&mut tx, &spec.id, false)
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
            "UPDATE nodes SET heartbeat_ms = $1, heartbeat_seq = heartbeat_seq + 1, \
             lease_expires_ms = $2, load = $3 WHERE id = $4 AND epoch = $5 AND state = 'alive'",
        )
        .bind(now as i64)
        .bind(expires as i64)
        .bind(to_json(load))
        .bind(&lease.node_id)
        .bind(lease.epoch)
        .execute(&self.pool)
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
            "UPDATE nodes SET state = $1 WHERE id = $2 AND epoch = $3 AND state = 'alive' \
             AND ($4::BIGINT IS NULL OR heartbeat_seq = $4)",
        )
        .bind(state.as_str())
        .bind(node_id)
        .bind(epoch)
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
        let found = sqlx::query("SELECT * FROM nodes WHERE epoch > 0 ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(query("listing nodes"))?;
        found.iter().map(rows::node).collect()
    }

    async fn node(&self, id: &str) -> Result<Option<NodeRecord>> {
        let row = sqlx::query("SELECT * FROM nodes WHERE id = $1 AND epoch > 0")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query("reading a node"))?;
        row.as_ref().map(rows::node).transpose()
    }
}
