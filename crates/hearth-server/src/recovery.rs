//! What a server does at start about its predecessor: kill the VMs and
//! remove the files it left, and record its unfinished sandboxes as `lost`.

use serde_json::json;

use hearth_sandbox::{reap_orphans, HearthHome};
use hearth_store::{SandboxState, Transition};

use crate::error::Result;
use crate::events::EventLog;
use crate::metrics::Metrics;

/// Reap and record. Runs with the home lock held, so every unfinished
/// sandbox in the store belongs to a server that is gone.
pub(crate) async fn recover(
    home: &HearthHome,
    events: &EventLog,
    metrics: &Metrics,
) -> Result<usize> {
    let reaped = {
        let home = home.clone();
        tokio::task::spawn_blocking(move || reap_orphans(&home))
            .await
            .unwrap_or_default()
    };
    let unfinished = events.store().unfinished_sandboxes().await?;
    for record in &unfinished {
        let found = reaped.iter().find(|r| r.id == record.id);
        let vm = match found {
            Some(r) if r.killed_vmm => "its VM was still running and has been killed",
            Some(_) => "its VM was already gone; its files have been removed",
            None => "its VM was already gone",
        };
        let message = format!(
            "the server that ran it (pid {}) stopped without shutting it down; {vm}",
            record.server_pid
        );
        let change = Transition {
            state: Some(SandboxState::Lost),
            end_reason: Some("lost".into()),
            end_message: Some(message.clone()),
            ..Transition::default()
        };
        let data = json!({
            "reason": "lost",
            "message": message,
            "previous_state": record.state,
            "previous_server_pid": record.server_pid,
            "console_log": found.and_then(|r| r.console_log.clone()),
        });
        events
            .transition(&record.id, &change, "sandbox.lost", data)
            .await?;
        metrics.moved(None, SandboxState::Lost);
        tracing::warn!(sandbox = %record.id, "{message}");
    }
    for r in reaped
        .iter()
        .filter(|r| !unfinished.iter().any(|u| u.id == r.id))
    {
        tracing::info!(sandbox = %r.id, killed_vmm = r.killed_vmm, "removed leftovers of a sandbox not in the store");
    }
    Ok(unfinished.len())
}
