//! Statements written in the SQL both backends speak, built with
//! placeholders in each backend's style (`?` or `$n`). What differs (event
//! numbering, row locks, JSON label filters) stays in each backend's module.

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::backend::unfinished_states;
use crate::model::{SandboxFilter, SandboxState, Transition};

/// The conditional update of a sandbox: applies `change` only while the
/// sandbox is in `expected` and owned by (`node_id`, `epoch`); returns the
/// id when it did.
pub(crate) fn update_sandbox<DB>(
    id: &str,
    expected: SandboxState,
    node_id: &str,
    epoch: i64,
    change: &Transition,
    now: u64,
) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
{
    let mut update: QueryBuilder<DB> = QueryBuilder::new("UPDATE sandboxes SET updated_ms = ");
    update.push_bind(now as i64);
    if let Some(state) = change.state {
        update
            .push(", state = ")
            .push_bind(state.as_str().to_string());
        if state.is_final() {
            update
                .push(", ended_ms = ")
                .push_bind(now as i64)
                .push(", expires_ms = NULL");
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
    if let Some(expires) = change.expires_ms {
        update
            .push(", expires_ms = ")
            .push_bind(expires.map(|t| t as i64));
    }
    if let Some(reason) = &change.end_reason {
        update.push(", end_reason = ").push_bind(reason.clone());
    }
    if let Some(message) = &change.end_message {
        update.push(", end_message = ").push_bind(message.clone());
    }
    update.push(" WHERE id = ").push_bind(id.to_string());
    update
        .push(" AND state = ")
        .push_bind(expected.as_str().to_string());
    update
        .push(" AND node_id = ")
        .push_bind(node_id.to_string());
    update.push(" AND node_epoch = ").push_bind(epoch);
    update.push(" RETURNING id");
    update
}

/// `SELECT * FROM sandboxes` matching `filter`, newest first, at most
/// `limit`; `label` appends the backend's test that a row carries label
/// `key` = `value`.
pub(crate) fn list_sandboxes<DB>(
    filter: &SandboxFilter,
    limit: u32,
    label: impl Fn(&mut QueryBuilder<DB>, &str, &str),
) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut select: QueryBuilder<DB> = QueryBuilder::new("SELECT * FROM sandboxes WHERE 1 = 1");
    if !filter.states.is_empty() {
        select.push(" AND state IN (");
        let mut states = select.separated(", ");
        for state in &filter.states {
            states.push_bind(state.as_str().to_string());
        }
        select.push(")");
    }
    if let Some(node) = &filter.node_id {
        select.push(" AND node_id = ").push_bind(node.clone());
    }
    for (key, value) in &filter.labels {
        select.push(" AND ");
        label(&mut select, key, value);
    }
    select
        .push(" ORDER BY created_ms DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit));
    select
}

/// Unfinished sandboxes whose owner holds no live lease at their epoch.
pub(crate) fn orphaned_sandboxes<DB>() -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut select: QueryBuilder<DB> =
        QueryBuilder::new("SELECT * FROM sandboxes s WHERE s.state IN (");
    let mut states = select.separated(", ");
    for state in unfinished_states() {
        states.push_bind(state.to_string());
    }
    select.push(
        ") AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = s.node_id \
         AND n.epoch = s.node_epoch AND n.state = 'alive') ORDER BY s.created_ms, s.id",
    );
    select
}

/// Events after `after` (of one sandbox, or all), oldest first.
pub(crate) fn events<DB>(sandbox_id: Option<&str>, after: i64, limit: u32) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut select: QueryBuilder<DB> = QueryBuilder::new("SELECT * FROM events WHERE seq > ");
    select.push_bind(after);
    if let Some(id) = sandbox_id {
        select.push(" AND sandbox_id = ").push_bind(id.to_string());
    }
    select
        .push(" ORDER BY seq LIMIT ")
        .push_bind(i64::from(limit));
    select
}
