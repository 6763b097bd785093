//! Durable runs on this node: starting them (pinning their program),
//! claiming due runs under the node's lease, launching each in a fresh
//! sandbox, serving its run endpoint from the journal, and the decisions
//! people make about runs (signals, cancels, resolutions).
//!
//! The journal's rules are `hearth_engine`'s pure functions; the store
//! persists every change before the program hears of it, so a launch that
//! dies anywhere resumes from what was recorded.

mod group_commit;
mod launch;
mod session;
pub mod tools;
mod workspace;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use hearth_engine::journal::Resolution;
use hearth_engine::{Journal, Program, RunSpec, RunState, StepRecord};
use hearth_store::event::{RunCancelled, RunFailed};
use hearth_store::{
    Event, EventPayload, NewRun, RunChange, RunFilter, RunRecord, RunWriter, Signal, Store,
    StoreError,
};

use crate::manager::SandboxManager;
pub use launch::ProgramDir;
pub use tools::{default_tools, NoTools, ToolBox};

/// How runs behave on this node.
#[derive(Clone)]
pub struct RunOptions {
    /// Host-side tools programs may call.
    pub tools: Arc<dyn ToolBox>,
    /// A sleep, retry backoff or relaunch wait up to this long keeps the
    /// VM; a longer one releases it and the run waits as a row.
    pub hold: Duration,
    /// Most runs this node launches at once.
    pub max_active: usize,
    /// How often due runs are looked for (also on every start, signal and
    /// decision).
    pub poll: Duration,
    /// Largest request body a program may send to the run endpoint.
    pub max_request_body: u64,
    /// Output of one launch kept in its log, bytes (the rest is counted).
    pub max_log: usize,
    /// Largest value one step may record, bytes of JSON.
    pub max_value: usize,
    /// Where programs are put in their VM.
    pub program_dir: ProgramDir,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("hold", &self.hold)
            .field("max_active", &self.max_active)
            .field("program_dir", &self.program_dir)
            .finish_non_exhaustive()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            tools: tools::default_tools(),
            hold: Duration::from_secs(2),
            max_active: 16,
            poll: Duration::from_millis(500),
            max_request_body: 64 << 20,
            max_log: 1 << 20,
            max_value: 64 << 20,
            program_dir: ProgramDir::Fixed(hearth_engine::PROGRAM_DIR.into()),
        }
    }
}

/// What starting a run asks for.
#[derive(Debug, Clone)]
pub struct StartRun {
    /// The program to pin.
    pub program: Program,
    /// Its input.
    pub input: Value,
    /// A name for people.
    pub name: Option<String>,
    /// How its launches are shaped.
    pub spec: RunSpec,
    /// When it fails if not ended, ms since the epoch.
    pub deadline_ms: Option<u64>,
}

/// What went wrong with a run request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The program is not usable.
    #[error(transparent)]
    Program(#[from] hearth_engine::ProgramError),
    /// The request does not fit the run's state.
    #[error("{0}")]
    Conflict(String),
    /// The run has ended: it takes no signal, cancel or decision.
    #[error("{0}")]
    Ended(String),
    /// A request field is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// The run engine of one node. Cheap to clone.
#[derive(Clone)]
pub struct RunEngine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub manager: SandboxManager,
    pub store: Store,
    pub tools: Arc<dyn ToolBox>,
    pub options: RunOptions,
    /// Where launches' journal writes are queued and committed together.
    pub journal: group_commit::GroupCommit,
    /// Stops the scheduler and every launch.
    pub stop: CancellationToken,
    /// Launches running here, by run id.
    pub active: Mutex<HashMap<String, CancellationToken>>,
    pub wake: Notify,
}

/// Longest the check of a new program may take.
const UPGRADE_CHECK_TIMEOUT: Duration = Duration::from_secs(300);

/// A random run id.
fn new_run_id() -> String {
    format!("run-{}", hearth_sandbox::ids::random_hex(10))
}

impl RunEngine {
    /// An engine launching runs through `manager`'s sandboxes.
    pub fn new(manager: SandboxManager, options: RunOptions) -> Self {
        let store = manager.events().store().clone();
        let journal = group_commit::GroupCommit::start(store.clone());
        Self {
            inner: Arc::new(Inner {
                manager,
                store,
                tools: options.tools.clone(),
                journal,
                options,
                stop: CancellationToken::new(),
                active: Mutex::default(),
                wake: Notify::new(),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Pin the program and record the run; a node (this one, at once if it
    /// has room) launches it.
    pub async fn start(&self, start: StartRun) -> Result<RunRecord, RunError> {
        start.program.check()?;
        let bytes = start.program.to_bytes();
        let program = self.inner.store.put_blob(&bytes).await?;
        let new = NewRun {
            id: new_run_id(),
            name: start.name,
            program,
            spec: serde_json::to_value(&start.spec).unwrap_or_default(),
            input: start.input,
            parent: None,
            deadline_ms: start.deadline_ms,
        };
        self.inner.store.insert_run(&new).await?;
        self.inner.wake.notify_one();
        self.get(&new.id).await
    }

    /// Start a new run of run `id`'s program, input and spec whose journal
    /// is the first `at` steps of `id`'s: it replays them without running
    /// them, and runs step `at` and what follows afresh. Both runs then go
    /// on independently. Refused when the journal is shorter, when one of
    /// those steps has not finished, or when they spawn a child whose
    /// result they do not hold (a fork cannot await another run's child).
    pub async fn fork(
        &self,
        id: &str,
        at: u64,
        name: Option<String>,
    ) -> Result<RunRecord, RunError> {
        let source = self.get(id).await?;
        let steps = self.inner.store.steps(id).await?;
        let kept = &steps[..(at as usize).min(steps.len())];
        for spawn in kept.iter().filter(|s| s.name == "spawn") {
            let Some(child) = spawn
                .result
                .as_ref()
                .and_then(|r| r.get("child_id"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let awaited = format!("child:{child}");
            if !kept.iter().any(|s| s.name == awaited) {
                return Err(RunError::Invalid(format!(
                    "step {} of run {id} spawned child {child}, whose result is not among the first {at} steps: a fork cannot await another run's child; fork at step {} or earlier, or after the step that awaits it",
                    spawn.seq, spawn.seq
                )));
            }
        }
        let new = NewRun {
            id: new_run_id(),
            name: name.or(source.name),
            program: source.program,
            spec: source.spec,
            input: source.input,
            parent: None,
            deadline_ms: None,
        };
        self.inner
            .store
            .fork_run(&new, id, at)
            .await
            .map_err(|e| match e {
                StoreError::Invalid(message) => RunError::Invalid(message),
                other => RunError::Store(other),
            })?;
        self.inner.wake.notify_one();
        self.get(&new.id).await
    }

    /// One run.
    pub async fn get(&self, id: &str) -> Result<RunRecord, RunError> {
        self.inner
            .store
            .run(id)
            .await?
            .ok_or_else(|| RunError::Store(StoreError::RunNotFound(id.to_string())))
    }

    /// Runs matching `filter`.
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, RunError> {
        Ok(self.inner.store.list_runs(filter).await?)
    }

    /// A run's journal.
    pub async fn steps(&self, id: &str) -> Result<Vec<StepRecord>, RunError> {
        self.get(id).await?;
        Ok(self.inner.store.steps(id).await?)
    }

    /// Send a signal; a run waiting for it is relaunched.
    pub async fn signal(&self, id: &str, name: &str, data: &Value) -> Result<Signal, RunError> {
        if name.is_empty() || name.len() > hearth_engine::protocol::MAX_NAME {
            return Err(RunError::Invalid(format!(
                "a signal name must be 1 to {} bytes",
                hearth_engine::protocol::MAX_NAME
            )));
        }
        let (signal, _) = self.inner.store.send_signal(id, name, data).await?;
        self.inner.wake.notify_one();
        Ok(signal)
    }

    /// Cancel a run and its unfinished children: a launch here is killed
    /// at once.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<RunRecord, RunError> {
        let run = self.get(id).await?;
        if run.state.is_final() {
            return Err(RunError::Ended(format!(
                "run {id} has already ended ({}); there is nothing to cancel",
                run.state
            )));
        }
        self.cancel_one(&run, by).await?;
        let mut queue = vec![id.to_string()];
        while let Some(parent) = queue.pop() {
            let children = self
                .inner
                .store
                .list_runs(&RunFilter {
                    parent_id: Some(parent.clone()),
                    ..RunFilter::default()
                })
                .await?;
            for child in children {
                queue.push(child.id.clone());
                if !child.state.is_final() {
                    let by = format!("parent {parent}");
                    if let Err(error) = self.cancel_one(&child, &by).await {
                        tracing::warn!(run = %child.id, %error, "cancelling a child failed");
                    }
                }
            }
        }
        self.get(id).await
    }

    async fn cancel_one(&self, run: &RunRecord, by: &str) -> Result<(), RunError> {
        let change = RunChange {
            state: Some(RunState::Cancelled),
            release: true,
            cancelled_by: Some(by.to_string()),
            ..RunChange::default()
        };
        let payload = || EventPayload::RunCancelled(RunCancelled { by: by.to_string() });
        let lease = self.inner.manager.node().lease();
        let mut owner = run.node_id.clone();
        // A node may claim the run between the read and the write: read
        // the owner again and write as it.
        for _ in 0..8 {
            let mine = owner.as_deref() == Some(lease.node_id.as_str());
            let writer = if mine {
                RunWriter::Owner(&lease)
            } else {
                RunWriter::Unowned
            };
            match self
                .inner
                .store
                .change_run(&run.id, writer, &change, payload())
                .await
            {
                Ok(_) => break,
                Err(StoreError::RunOwned { .. }) | Err(StoreError::Fenced { .. }) => {
                    let now = self.get(&run.id).await?;
                    if now.state.is_final() {
                        break;
                    }
                    if now.node_id == owner {
                        return Err(RunError::Conflict(format!(
                            "run {} runs on node {}: cancel it there",
                            run.id,
                            owner.unwrap_or_default()
                        )));
                    }
                    owner = now.node_id;
                }
                Err(error) => return Err(error.into()),
            }
        }
        // Its launch, if here, stops now and kills the VM.
        if let Some(stop) = self.inner.active.lock().get(&run.id) {
            stop.cancel();
        }
        Ok(())
    }

    /// Apply a person's decision to the step of a run that needs
    /// attention; the run is relaunched.
    pub async fn resolve(
        &self,
        id: &str,
        seq: u64,
        resolution: Resolution,
    ) -> Result<RunRecord, RunError> {
        let run = self.get(id).await?;
        if run.state != RunState::NeedsAttention {
            return Err(RunError::Conflict(format!(
                "run {id} is {}, not needs_attention: only a run stopped on a step whose outcome is unknown takes a decision",
                run.state
            )));
        }
        let steps = self.inner.store.steps(id).await?;
        let mut journal =
            Journal::from_steps(id, steps).map_err(|e| RunError::Conflict(e.to_string()))?;
        let now = self.inner.store.clock().now_ms();
        journal
            .resolve(seq, resolution, now)
            .map_err(|e| RunError::Conflict(e.to_string()))?;
        let step = journal
            .step(seq)
            .cloned()
            .ok_or_else(|| RunError::Conflict(format!("run {id} has no step {seq}")))?;
        self.inner.store.resolve_step(id, &step).await?;
        self.inner.wake.notify_one();
        self.get(id).await
    }

    /// Move a run that is not running (waiting, needing a decision, or
    /// pending) to a new program, once a check in a fresh VM showed that
    /// the program replays every step the run recorded. Refused, naming the
    /// first diverging step, when it does not.
    pub async fn upgrade(&self, id: &str, program: Program) -> Result<RunRecord, RunError> {
        program.check()?;
        let run = self.get(id).await?;
        if run.state.is_final() {
            return Err(RunError::Ended(format!(
                "run {id} has ended ({}); there is nothing to upgrade",
                run.state
            )));
        }
        if run.node_id.is_some() {
            return Err(RunError::Conflict(format!(
                "run {id} is {} on node {}: upgrade it while it waits (or needs attention)",
                run.state,
                run.node_id.clone().unwrap_or_default()
            )));
        }
        let verdict = launch::verify(&self.inner, &run, &program, UPGRADE_CHECK_TIMEOUT)
            .await
            .map_err(|why| RunError::Conflict(format!("the upgrade check failed: {why}")))?;
        let replayed = match verdict {
            session::Verdict::Replays(steps) => steps,
            session::Verdict::Diverges(why) => {
                return Err(RunError::Conflict(format!(
                    "refused: the new program does not replay run {id}'s journal: {why}"
                )))
            }
        };
        let digest = self.inner.store.put_blob(&program.to_bytes()).await?;
        let change = RunChange {
            program: Some(digest.clone()),
            if_launches: Some(run.launches),
            ..RunChange::default()
        };
        let payload = EventPayload::RunUpgraded(hearth_store::event::RunUpgraded {
            from: run.program.clone(),
            to: digest,
            replayed,
        });
        let moved = self
            .inner
            .store
            .change_run(id, RunWriter::Unowned, &change, payload)
            .await?;
        if moved.is_none() {
            return Err(RunError::Conflict(format!(
                "run {id} moved on while its new program was checked; check again"
            )));
        }
        self.get(id).await
    }

    /// A run's events after `after`.
    pub async fn events(&self, id: &str, after: i64, limit: u32) -> Result<Vec<Event>, RunError> {
        Ok(self.inner.store.run_events(id, after, limit).await?)
    }

    /// Launch due runs until [`RunEngine::shutdown`]: claim what this node
    /// has room for, as it has room.
    pub async fn schedule(self) {
        let stop = self.inner.stop.clone();
        {
            // No launch runs yet: workspaces left here belong to launches
            // that died with an earlier process.
            let home = self.inner.manager.home().root().to_path_buf();
            let _ = tokio::task::spawn_blocking(move || workspace::remove_leftovers(&home)).await;
        }
        loop {
            if let Err(error) = self.tick().await {
                tracing::warn!(%error, "looking for runs to launch failed; retrying");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(self.inner.options.poll) => {}
            }
        }
        let stops: Vec<_> = self.inner.active.lock().values().cloned().collect();
        for stop in stops {
            stop.cancel();
        }
    }

    /// Stop launching, end every launch here (its VM is destroyed; the run
    /// stays this node's, and is resumed by whichever node takes it over
    /// once this one has left), and wait up to `grace` for them to end.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop.cancel();
        let stops: Vec<_> = self.inner.active.lock().values().cloned().collect();
        for stop in stops {
            stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.inner.active.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn tick(&self) -> Result<(), StoreError> {
        let lease = self.inner.manager.node().lease();
        // Runs this node holds but launches nowhere (a launch whose end
        // could not be recorded): take them up again.
        let mine = self
            .inner
            .store
            .list_runs(&RunFilter {
                states: vec![RunState::Pending, RunState::Running],
                node_id: Some(lease.node_id.clone()),
                ..RunFilter::default()
            })
            .await?;
        let now = self.inner.store.clock().now_ms();
        for run in mine {
            let due = run.wake_ms.is_none_or(|w| w <= now);
            if run.node_epoch != Some(lease.epoch)
                || !due
                || self.inner.active.lock().contains_key(&run.id)
            {
                continue;
            }
            if run.state == RunState::Running {
                // Its VM is gone with the launch: relaunch from the journal.
                let change = RunChange {
                    state: Some(RunState::Pending),
                    release: true,
                    ..RunChange::default()
                };
                let payload = EventPayload::RunPending(hearth_store::event::RunPending {
                    cause: "takeover".into(),
                    message: "its launch on this node ended without a record; it resumes from its journal".into(),
                    wake_ms: None,
                });
                self.inner
                    .store
                    .change_run(&run.id, RunWriter::Owner(&lease), &change, payload)
                    .await?;
            } else {
                self.spawn_launch(run);
            }
        }
        let room = self
            .inner
            .options
            .max_active
            .saturating_sub(self.inner.active.lock().len());
        if room == 0 {
            return Ok(());
        }
        let claimed = self
            .inner
            .store
            .claim_runs(&lease, room as u32, None)
            .await?;
        for (run, _) in claimed {
            self.spawn_launch(run);
        }
        Ok(())
    }

    fn spawn_launch(&self, run: RunRecord) {
        let stop = self.inner.stop.child_token();
        {
            let mut active = self.inner.active.lock();
            if active.contains_key(&run.id) {
                return;
            }
            active.insert(run.id.clone(), stop.clone());
        }
        let engine = self.clone();
        let span = tracing::info_span!("run", id = %run.id, launch = run.launches + 1);
        tokio::spawn(
            async move {
                let id = run.id.clone();
                launch::launch(&engine, run, stop).await;
                engine.inner.active.lock().remove(&id);
                engine.inner.wake.notify_one();
            }
            .instrument(span),
        );
    }

    /// Wait until run `id` has ended, or `timeout` passed; the run as it
    /// is then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<RunRecord, RunError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.get(id).await?;
            if run.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `{code, message}` for a run's error column.
pub(crate) fn run_error(code: &str, message: &str) -> Value {
    json!({"code": code, "message": message})
}

/// The event of a run failing.
pub(crate) fn failed(code: &str, message: &str) -> (RunChange, EventPayload) {
    (
        RunChange {
            state: Some(RunState::Failed),
            error: Some(run_error(code, message)),
            release: true,
            ..RunChange::default()
        },
        EventPayload::RunFailed(RunFailed {
            code: code.to_string(),
            message: message.to_string(),
        }),
    )
}
