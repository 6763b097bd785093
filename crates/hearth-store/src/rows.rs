//! Turning rows into records, for any backend: both store integers as
//! 64-bit, text as text and JSON as text, so one decoder serves both.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::{ColumnIndex, Database, Decode, Row, Type};

use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::model::{SandboxRecord, SandboxState};
use crate::node::{NodeRecord, NodeState};

/// A row of a backend whose integers and text decode as `i64` and `String`.
pub(crate) trait StoreRow: Row
where
    for<'a> &'a str: ColumnIndex<Self>,
{
    fn text(&self, name: &'static str) -> Result<String>;
    fn opt_text(&self, name: &'static str) -> Result<Option<String>>;
    fn int(&self, name: &'static str) -> Result<i64>;
    fn opt_int(&self, name: &'static str) -> Result<Option<i64>>;
}

impl<R> StoreRow for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    R::Database: Database,
{
    fn text(&self, name: &'static str) -> Result<String> {
        self.try_get(name).map_err(|e| corrupt(name, e))
    }
    fn opt_text(&self, name: &'static str) -> Result<Option<String>> {
        self.try_get(name).map_err(|e| corrupt(name, e))
    }
    fn int(&self, name: &'static str) -> Result<i64> {
        self.try_get(name).map_err(|e| corrupt(name, e))
    }
    fn opt_int(&self, name: &'static str) -> Result<Option<i64>> {
        self.try_get(name).map_err(|e| corrupt(name, e))
    }
}

fn corrupt(what: &'static str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: error.to_string(),
    }
}

fn json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

/// A stored sandbox state.
pub(crate) fn parse_state(text: &str) -> Result<SandboxState> {
    SandboxState::from_str(text).map_err(|detail| StoreError::Corrupt {
        what: "sandbox state",
        detail,
    })
}

/// A `sandboxes` row.
pub(crate) fn sandbox<R>(row: &R) -> Result<SandboxRecord>
where
    R: StoreRow,
    for<'a> &'a str: ColumnIndex<R>,
{
    let labels: BTreeMap<String, String> = json("labels", &row.text("labels")?)?;
    let opt_u64 = |v: Option<i64>| v.map(|v| v as u64);
    Ok(SandboxRecord {
        id: row.text("id")?,
        state: parse_state(&row.text("state")?)?,
        image: row.text("image")?,
        vcpus: row.int("vcpus")? as u32,
        memory_bytes: row.int("memory_bytes")? as u64,
        disk_bytes: row.int("disk_bytes")? as u64,
        timeout_ms: opt_u64(row.opt_int("timeout_ms")?),
        expires_ms: opt_u64(row.opt_int("expires_ms")?),
        labels,
        accelerator: row.opt_text("accelerator")?,
        boot_ms: opt_u64(row.opt_int("boot_ms")?),
        created_ms: row.int("created_ms")? as u64,
        updated_ms: row.int("updated_ms")? as u64,
        ended_ms: opt_u64(row.opt_int("ended_ms")?),
        end_reason: row.opt_text("end_reason")?,
        end_message: row.opt_text("end_message")?,
        node_id: row.text("node_id")?,
        node_epoch: row.int("node_epoch")?,
    })
}

/// An `events` row.
pub(crate) fn event<R>(row: &R) -> Result<Event>
where
    R: StoreRow,
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(Event {
        seq: row.int("seq")?,
        sandbox_id: row.opt_text("sandbox_id")?,
        run_id: row.opt_text("run_id")?,
        node_id: row.opt_text("node_id")?,
        at_ms: row.int("at_ms")? as u64,
        kind: row.text("kind")?,
        version: row.int("version")? as u32,
        data: json("event data", &row.text("data")?)?,
    })
}

/// A `nodes` row.
pub(crate) fn node<R>(row: &R) -> Result<NodeRecord>
where
    R: StoreRow,
    for<'a> &'a str: ColumnIndex<R>,
{
    let state = row.text("state")?;
    Ok(NodeRecord {
        id: row.text("id")?,
        url: row.text("url")?,
        hostname: row.text("hostname")?,
        home: row.text("home")?,
        epoch: row.int("epoch")?,
        state: NodeState::from_str(&state).map_err(|detail| StoreError::Corrupt {
            what: "node state",
            detail,
        })?,
        started_ms: row.int("started_ms")? as u64,
        heartbeat_ms: row.int("heartbeat_ms")? as u64,
        heartbeat_seq: row.int("heartbeat_seq")?,
        lease_expires_ms: row.int("lease_expires_ms")? as u64,
        capacity: json("node capacity", &row.text("capacity")?)?,
        load: json("node load", &row.text("load")?)?,
    })
}
