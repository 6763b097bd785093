//! Commands run through the API: each has an output buffer that clients
//! attach to, detach from and resume by event id.
//!
//! A pump task reads the command's events from the guest into the buffer.
//! An attached client that reads slowly holds the pump back (and so the
//! command, through HTTP/2 flow control) rather than losing output; with
//! no client attached, the oldest output is dropped past the replay size
//! and a client that resumes from before it gets a `gap` event. A
//! foreground command with no client for `detach_grace` is killed, so a
//! client that went away does not leave it running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use hearth_sandbox::{ExecEvent, Execution, StdinWriter};
use hearth_store::event::ExecFinished;
use hearth_store::{EventPayload, Lease};

use crate::events::EventLog;
use crate::metrics::{ExitLabel, Metrics};
pub use crate::replay::{ExecItem, ExecStatus};
use crate::replay::{NextItem, ReplayBuffer};

/// Finished execs kept per sandbox for listing and replay.
pub const KEPT_FINISHED: usize = 32;
/// Output kept for replay across a sandbox's finished execs, so that many
/// chatty commands cannot make the server hold 32 full replay buffers per
/// sandbox.
pub const KEPT_FINISHED_BYTES: usize = 16 << 20;

/// What the API shows about an exec.
#[derive(Debug, Clone)]
pub struct ExecSummary {
    /// Exec id.
    pub id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory asked for.
    pub cwd: Option<String>,
    /// Started in the background.
    pub background: bool,
    /// Start time, ms since the epoch.
    pub started_ms: u64,
    /// Where it is.
    pub status: ExecStatus,
    /// Clients attached to its output now.
    pub attached: usize,
}

/// One exec and its output buffer.
pub struct ExecEntry {
    id: String,
    sandbox_id: String,
    lease: Lease,
    argv: Vec<String>,
    cwd: Option<String>,
    background: bool,
    started_ms: u64,
    buffer: Mutex<ReplayBuffer>,
    /// Bumped whenever an item is added or the exec ends.
    appended: watch::Sender<u64>,
    /// Bumped whenever a subscriber advances or leaves.
    consumed: watch::Sender<u64>,
    stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    kill: mpsc::Sender<String>,
}

/// What a pump needs besides the exec.
#[derive(Clone)]
pub struct PumpContext {
    /// Where `exec.finished` goes.
    pub events: EventLog,
    /// Exec duration histogram.
    pub metrics: Metrics,
    /// How long a foreground exec may go without a client.
    pub detach_grace: Duration,
}

/// What the exec was started with, for the record.
#[derive(Debug, Clone)]
pub struct ExecMeta {
    /// Sandbox id.
    pub sandbox_id: String,
    /// The lease the sandbox is owned under.
    pub lease: Lease,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Runs with no client expected.
    pub background: bool,
    /// Start time, ms since the epoch.
    pub started_ms: u64,
    /// Replay buffer size, bytes.
    pub capacity: usize,
}

impl ExecEntry {
    /// Start pumping `execution` into a new entry. Returns the entry and
    /// the pump task's handle (which ends after the exec ends and is
    /// recorded).
    pub fn start(
        mut execution: Execution,
        meta: ExecMeta,
        context: PumpContext,
    ) -> (Arc<ExecEntry>, tokio::task::JoinHandle<()>) {
        let (kill_tx, kill_rx) = mpsc::channel(4);
        let stdin = execution.take_stdin();
        let entry = Arc::new(ExecEntry {
            id: execution.id().to_string(),
            sandbox_id: meta.sandbox_id,
            lease: meta.lease,
            argv: meta.argv,
            cwd: meta.cwd,
            background: meta.background,
            started_ms: meta.started_ms,
            buffer: Mutex::new(ReplayBuffer::new(meta.capacity.max(64 * 1024))),
            appended: watch::channel(0).0,
            consumed: watch::channel(0).0,
            stdin: tokio::sync::Mutex::new(stdin),
            kill: kill_tx,
        });
        let pump = Pump {
            entry: entry.clone(),
            context,
            kill_rx,
            carry_out: Vec::new(),
            carry_err: Vec::new(),
            started: Instant::now(),
        };
        let span = tracing::info_span!(parent: None, "exec_output", sandbox = %entry.sandbox_id, exec = %entry.id);
        let handle = tokio::spawn(async move { pump.run(&mut execution).await }.instrument(span));
        (entry, handle)
    }

    /// Exec id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether it ended.
    pub fn is_finished(&self) -> bool {
        !matches!(self.lock().status(), ExecStatus::Running)
    }

    /// What the API shows.
    pub fn summary(&self) -> ExecSummary {
        let buffer = self.lock();
        ExecSummary {
            id: self.id.clone(),
            argv: self.argv.clone(),
            cwd: self.cwd.clone(),
            background: self.background,
            started_ms: self.started_ms,
            status: buffer.status().clone(),
            attached: buffer.attached(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ReplayBuffer> {
        self.buffer.lock()
    }

    /// Ask the pump to kill the command (its whole process tree).
    pub async fn kill(&self, why: &str) {
        let _ = self.kill.send(why.to_string()).await;
    }

    /// Write to the command's stdin; `close` closes it afterwards. Fails
    /// when stdin was not kept open or is already closed.
    pub async fn write_stdin(&self, data: Bytes, close: bool) -> Result<(), String> {
        if self.is_finished() {
            return Err(format!("exec {} has ended; its stdin is closed", self.id));
        }
        let mut stdin = self.stdin.lock().await;
        let Some(writer) = stdin.as_ref() else {
            return Err(format!(
                "exec {} has no open stdin: start it with \"stdin_open\": true, and don't close it before writing",
                self.id
            ));
        };
        if !data.is_empty() {
            writer
                .write(data)
                .await
                .map_err(|e| format!("writing to the stdin of exec {}: {e}", self.id))?;
        }
        if close {
            stdin.take();
        }
        Ok(())
    }

    /// Attach a client that wants every item after sequence `after`.
    pub fn subscribe(self: &Arc<Self>, after: u64) -> Subscription {
        let id = self.lock().attach(after);
        self.consumed.send_modify(|n| *n += 1);
        Subscription {
            entry: self.clone(),
            id,
            appended: self.appended.subscribe(),
        }
    }

    fn push(&self, item: ExecItem) {
        self.lock().push(item);
        self.appended.send_modify(|n| *n += 1);
    }

    fn must_wait_for_room(&self, size: usize) -> bool {
        self.lock().must_wait_for_room(size)
    }

    /// Append the last item (exit or error) and mark the exec ended.
    fn finish(&self, status: ExecStatus) {
        self.lock().finish(status);
        self.appended.send_modify(|n| *n += 1);
    }
}

/// A client attached to an exec's output. Detaches when dropped.
pub struct Subscription {
    entry: Arc<ExecEntry>,
    id: u64,
    appended: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.entry.lock().detach(self.id);
        self.entry.consumed.send_modify(|n| *n += 1);
    }
}

impl Subscription {
    /// The exec.
    pub fn entry(&self) -> &Arc<ExecEntry> {
        &self.entry
    }

    /// The next item and its sequence number; `None` after the last.
    pub async fn next(&mut self) -> Option<(u64, ExecItem)> {
        loop {
            self.appended.borrow_and_update();
            let next = self.entry.lock().next_for(self.id);
            match next {
                NextItem::Item(seq, item) => {
                    self.entry.consumed.send_modify(|n| *n += 1);
                    return Some((seq, item));
                }
                NextItem::End => return None,
                NextItem::Pending => {}
            }
            if self.appended.changed().await.is_err() {
                return None;
            }
        }
    }
}

struct Pump {
    entry: Arc<ExecEntry>,
    context: PumpContext,
    kill_rx: mpsc::Receiver<String>,
    /// Trailing bytes of an incomplete UTF-8 character, held back so that
    /// every output item of valid UTF-8 output is itself valid UTF-8.
    carry_out: Vec<u8>,
    carry_err: Vec<u8>,
    started: Instant,
}

/// Split `data` (after `carry`) at the last complete UTF-8 character,
/// keeping up to 3 trailing bytes of an unfinished one in `carry`.
fn split_utf8(carry: &mut Vec<u8>, data: &[u8]) -> Bytes {
    let mut all = std::mem::take(carry);
    all.extend_from_slice(data);
    let keep = match std::str::from_utf8(&all) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => all.len() - e.valid_up_to(),
        Err(_) => {
            // Invalid somewhere; only look at the end.
            let tail_start = all.len().saturating_sub(3);
            (tail_start..all.len())
                .find(|&i| {
                    let b = all[i];
                    b >= 0xC0
                        && std::str::from_utf8(&all[i..]).is_err_and(|e| e.error_len().is_none())
                })
                .map(|i| all.len() - i)
                .unwrap_or(0)
        }
    };
    if keep > 0 && keep <= 3 {
        *carry = all.split_off(all.len() - keep);
    }
    Bytes::from(all)
}

impl Pump {
    async fn run(mut self, execution: &mut Execution) {
        let mut consumed = self.entry.consumed.subscribe();
        let mut detached_since: Option<tokio::time::Instant> = None;
        let mut kill_reason: Option<String> = None;
        let status = loop {
            // Detach grace: a foreground exec with nobody attached.
            let attached = self.entry.lock().attached() > 0;
            if attached || self.entry.background {
                detached_since = None;
            } else if detached_since.is_none() {
                detached_since = Some(tokio::time::Instant::now());
            }
            let grace_deadline = detached_since.map(|t| t + self.context.detach_grace);
            let grace = async {
                match grace_deadline {
                    Some(deadline) if kill_reason.is_none() => {
                        tokio::time::sleep_until(deadline).await
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                event = execution.next_event() => match event {
                    Ok(Some(event)) => {
                        if let Some(status) = self.deliver(event, &mut consumed).await {
                            break status;
                        }
                    }
                    Ok(None) => {
                        self.flush_carries();
                        break ExecStatus::Failed("the exec ended without an exit report".into());
                    }
                    Err(error) => {
                        self.flush_carries();
                        break ExecStatus::Failed(error.to_string());
                    }
                },
                Some(why) = self.kill_rx.recv() => {
                    kill_reason = Some(why);
                    if let Err(error) = execution.kill().await {
                        tracing::warn!(%error, exec = %self.entry.id, "kill failed");
                    }
                }
                _ = grace => {
                    let why = format!(
                        "no client was attached to its output for {}s",
                        self.context.detach_grace.as_secs()
                    );
                    tracing::info!(exec = %self.entry.id, "{why}; killing it");
                    kill_reason = Some(why);
                    if let Err(error) = execution.kill().await {
                        tracing::warn!(%error, exec = %self.entry.id, "kill failed");
                    }
                }
                _ = consumed.changed() => {}
            }
        };
        // Say why the host killed it (the guest only knows it was asked).
        let status = match (status, &kill_reason) {
            (ExecStatus::Exited(mut report), Some(why))
                if report.reason == hearth_proto::ExitReason::Killed =>
            {
                report.message = Some(format!("killed: {why}"));
                ExecStatus::Exited(report)
            }
            (status, _) => status,
        };
        // Recorded before readers see the end, so that a client that got
        // the exit finds the exec finished in the API and the event log.
        self.record_end(&status, kill_reason).await;
        self.entry.finish(status);
    }

    /// Put one guest event into the buffer, waiting for room while an
    /// attached client is behind. Returns the final status on exit.
    async fn deliver(
        &mut self,
        event: ExecEvent,
        consumed: &mut watch::Receiver<u64>,
    ) -> Option<ExecStatus> {
        let item = match event {
            ExecEvent::Started(pid) => ExecItem::Started(pid),
            ExecEvent::Stdout(data) => ExecItem::Stdout(split_utf8(&mut self.carry_out, &data)),
            ExecEvent::Stderr(data) => ExecItem::Stderr(split_utf8(&mut self.carry_err, &data)),
            ExecEvent::Exit(report) => {
                self.flush_carries();
                return Some(ExecStatus::Exited(report));
            }
        };
        if item.is_output() && item.size() == 0 {
            return None;
        }
        while self.entry.must_wait_for_room(item.size()) {
            consumed.borrow_and_update();
            if self.entry.must_wait_for_room(item.size()) && consumed.changed().await.is_err() {
                break;
            }
        }
        self.entry.push(item);
        None
    }

    fn flush_carries(&mut self) {
        if !self.carry_out.is_empty() {
            let data = Bytes::from(std::mem::take(&mut self.carry_out));
            self.entry.push(ExecItem::Stdout(data));
        }
        if !self.carry_err.is_empty() {
            let data = Bytes::from(std::mem::take(&mut self.carry_err));
            self.entry.push(ExecItem::Stderr(data));
        }
    }

    async fn record_end(&self, status: &ExecStatus, kill_reason: Option<String>) {
        let entry = &self.entry;
        let finished = match status {
            ExecStatus::Exited(report) => {
                let reason = serde_json::to_value(report.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into());
                let label = ExitLabel {
                    reason: reason.clone(),
                };
                self.context
                    .metrics
                    .exec_seconds
                    .get_or_create(&label)
                    .observe(report.duration_ms as f64 / 1000.0);
                ExecFinished {
                    exec_id: entry.id.clone(),
                    reason,
                    code: Some(report.code),
                    signal: report.signal,
                    message: report.message.clone(),
                    duration_ms: report.duration_ms,
                    stdout_bytes: Some(report.stdout_bytes),
                    stderr_bytes: Some(report.stderr_bytes),
                    killed_because: kill_reason,
                }
            }
            ExecStatus::Failed(message) => ExecFinished {
                exec_id: entry.id.clone(),
                reason: "failed".into(),
                message: Some(message.clone()),
                duration_ms: self.started.elapsed().as_millis() as u64,
                ..ExecFinished::default()
            },
            ExecStatus::Running => return,
        };
        self.context
            .events
            .record_or_log(
                Some(&entry.sandbox_id),
                &entry.lease,
                EventPayload::ExecFinished(finished),
            )
            .await;
    }
}

/// Which finished execs to forget, given (key, buffered bytes) newest
/// first: all past the first [`KEPT_FINISHED`], and all from the one that
/// takes the total past [`KEPT_FINISHED_BYTES`].
fn to_forget(finished_newest_first: &[(u64, usize)]) -> Vec<u64> {
    let mut kept_bytes = 0;
    let mut forget = Vec::new();
    for (n, (key, bytes)) in finished_newest_first.iter().enumerate() {
        kept_bytes += bytes;
        if n >= KEPT_FINISHED || kept_bytes > KEPT_FINISHED_BYTES {
            forget.push(*key);
        }
    }
    forget
}

/// The execs of one sandbox, by id, oldest first.
#[derive(Default)]
pub struct ExecTable {
    execs: Mutex<BTreeMap<u64, Arc<ExecEntry>>>,
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    counter: std::sync::atomic::AtomicU64,
}

impl ExecTable {
    /// Add a started exec and its pump; forget the oldest finished ones
    /// beyond [`KEPT_FINISHED`] or [`KEPT_FINISHED_BYTES`].
    pub fn insert(&self, entry: Arc<ExecEntry>, pump: tokio::task::JoinHandle<()>) {
        let key = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut execs = self.execs.lock();
        execs.insert(key, entry);
        // Newest first: keep finished execs while both limits allow.
        let finished: Vec<(u64, usize)> = execs
            .iter()
            .rev()
            .filter(|(_, e)| e.is_finished())
            .map(|(k, e)| (*k, e.lock().bytes()))
            .collect();
        for key in to_forget(&finished) {
            execs.remove(&key);
        }
        let mut pumps = self.pumps.lock();
        pumps.retain(|p| !p.is_finished());
        pumps.push(pump);
    }

    /// One exec.
    pub fn get(&self, id: &str) -> Option<Arc<ExecEntry>> {
        let execs = self.execs.lock();
        execs.values().find(|e| e.id == id).cloned()
    }

    /// Every exec kept, oldest first.
    pub fn list(&self) -> Vec<Arc<ExecEntry>> {
        self.execs.lock().values().cloned().collect()
    }

    /// Wait (at most `limit`) for every pump to record its exec's end.
    pub async fn drain(&self, limit: Duration) {
        let pumps: Vec<_> = std::mem::take(&mut *self.pumps.lock());
        let all = futures_util::future::join_all(pumps);
        let _ = tokio::time::timeout(limit, all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_execs_are_kept_by_count_and_by_bytes_newest_first() {
        // Small outputs: only the count limit applies.
        let small: Vec<(u64, usize)> = (0..40u64).rev().map(|k| (k, 10)).collect();
        let forgotten = to_forget(&small);
        assert_eq!(forgotten, (0..8u64).rev().collect::<Vec<_>>());
        // Large outputs: the newest that fit in 16 MiB stay, older ones go.
        let mib = 1 << 20;
        let large = [
            (9, 4 * mib),
            (8, 4 * mib),
            (7, 4 * mib),
            (6, 4 * mib),
            (5, 1),
            (4, 4 * mib),
        ];
        assert_eq!(to_forget(&large), [5, 4]);
        assert!(to_forget(&[]).is_empty());
    }

    #[test]
    fn utf8_is_split_only_at_character_boundaries() {
        let text = "héllo wörld €uro";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut carry = Vec::new();
            let a = split_utf8(&mut carry, &bytes[..cut]);
            let b = split_utf8(&mut carry, &bytes[cut..]);
            assert!(carry.is_empty(), "cut {cut}");
            let a = std::str::from_utf8(&a).expect("first part is valid");
            let b = std::str::from_utf8(&b).expect("second part is valid");
            assert_eq!(format!("{a}{b}"), text);
        }
        // Binary output passes through unchanged.
        let mut carry = Vec::new();
        let out = split_utf8(&mut carry, &[0xff, 0x00, 0xfe]);
        assert_eq!(&out[..], &[0xff, 0x00, 0xfe]);
    }
}
