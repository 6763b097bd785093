//! A deterministic simulation of durable runs: the engine's own
//! [`Session`] and [`Journal`] driven through a seeded schedule of program
//! calls, crashes and failures, over a simulated host (clock, randomness,
//! store, VMs, tools, a payments ledger), checking the engine's promises
//! after every move.
//!
//! One seed is one schedule. Everything that varies (the program, which
//! faults strike and when, the time, every random value) comes from the
//! seed, so a failing seed replays exactly: [`simulate`] it again.
//!
//! Faults injected: the VM dies (between calls, or during a tool call
//! before or after its side effect), the server crashes (losing every
//! write it had queued and not committed), a store write fails, a message
//! between the program and the engine is lost, and the node's lease
//! expires (another node takes the run, and the old launch is fenced).
//!
//! Invariants checked:
//! - no step the journal holds as completed is executed again;
//! - a completed step's record never changes, and every answer the
//!   program gets for a step is the same in every launch;
//! - a call of a non-idempotent tool (or an unsafe step) is never
//!   repeated unless a person decided to retry it; an idempotent tool
//!   always carries its step's key, so the ledger charges it once;
//! - every run and step move is one the state machines allow;
//! - a run ends completed, failed or cancelled, or is still resumable
//!   (its journal loads and its state is live);
//! - a file persisted before a crash is there after the relaunch;
//! - a spawn names the same child in every launch and creates it once
//!   (a replayed spawn finds it), and an await answers only once that
//!   child has ended, with its outcome (a run waiting for a child wakes
//!   when it ends).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use serde_json::{json, Value};

use crate::digest::{bytes_digest, idempotency_key};
use crate::host::{Child, Durability, Host, HostError, LaunchEnd, NewChild, Stopped};
use crate::journal::Resolution;
use crate::protocol::{Call, EndpointError, OnFailure, ValueKind};
use crate::session::{
    after_crash, persisted_files, resume, AfterCrash, LaunchInfo, Resume, Session,
};
use crate::session::{child_run_id, workspace_chain};
use crate::{
    Effect, Journal, RetryPolicy, RunSpec, RunState, StepError, StepRecord, StepState,
    WorkspaceCheckpoint,
};

/// The run every simulation runs.
const RUN_ID: &str = "run-sim";
/// Waits up to this long keep the VM.
const HOLD_MS: u64 = 2_000;
/// How long a node's lease lasts: a crashed node's runs are taken after it.
const LEASE_MS: u64 = 10_000;
/// Moves a schedule may take before it stops (the run is then checked to
/// be resumable).
const MAX_TURNS: u32 = 2_000;

/// How a simulation is set up; everything else comes from the seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Chance of a fault at each move, 0 to 1.
    pub fault_rate: f64,
    /// Relaunches a run may take after crashes.
    pub max_restarts: u32,
    /// Most operations in the simulated program.
    pub max_ops: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            fault_rate: 0.06,
            max_restarts: 25,
            max_ops: 14,
        }
    }
}

/// What one schedule did.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Where the run ended (or stood when the schedule stopped).
    pub state: RunState,
    /// Launches (VMs) it took.
    pub launches: u32,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u32>,
    /// Decisions a person made about unknown outcomes.
    pub decisions: u32,
    /// Child runs spawned.
    pub children: u32,
    /// Times the run gave up its VM to wait for a child.
    pub child_waits: u32,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// A digest of everything that happened, to check the schedule replays
    /// exactly.
    pub trace_digest: String,
}

/// A broken promise: the seed, what broke, and the schedule's last moves.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("seed {seed}: {message}\nlast moves:\n{trace}")]
pub struct Violation {
    /// The seed, to replay it.
    pub seed: u64,
    /// What broke.
    pub message: String,
    /// The last moves before it broke.
    pub trace: String,
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// One operation of the simulated program, at one journal position.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// A step the program runs itself; `first`: run before asking (when
    /// past the journal's end), reported with the ask.
    Step { effect: Effect, first: bool },
    /// A pure step whose first `fails` attempts fail (retryable).
    Flaky { fails: u32 },
    /// The ledger's `charge` (not idempotent).
    Charge { amount: u64 },
    /// The ledger's `upsert` (idempotent by key).
    Upsert { amount: u64 },
    /// `ctx.random()` or `ctx.now()`.
    Value(ValueKind),
    /// `ctx.sleep(ms)`.
    Sleep { ms: u64 },
    /// `ctx.wait_signal(name, timeout)`.
    Signal { timeout_ms: Option<u64> },
    /// Write a file, then `ctx.persist` it.
    Persist,
    /// `ctx.restore` the persisted file, and check its content.
    Restore,
    /// `ctx.spawn("child.py", input)`.
    Spawn,
    /// `child.result()` of the child spawned at step `spawn`.
    AwaitChild { spawn: u64 },
}

impl Op {
    fn generate(rng: &mut Rng) -> Self {
        match rng.below(13) {
            11 => Op::Spawn,
            // Which child it awaits is chosen once the program is known.
            12 => Op::AwaitChild { spawn: 0 },
            0 => Op::Step {
                effect: Effect::Pure,
                first: rng.chance(0.5),
            },
            1 => Op::Step {
                effect: Effect::Idempotent,
                first: rng.chance(0.5),
            },
            2 => Op::Step {
                effect: Effect::Unsafe,
                first: false,
            },
            3 => Op::Flaky {
                fails: rng.below(4) as u32,
            },
            4 | 5 => Op::Charge {
                amount: 1 + rng.below(100),
            },
            6 => Op::Upsert {
                amount: 1 + rng.below(100),
            },
            7 => Op::Value(if rng.chance(0.5) {
                ValueKind::Random
            } else {
                ValueKind::Now
            }),
            8 => Op::Sleep {
                ms: if rng.chance(0.5) {
                    rng.below(HOLD_MS)
                } else {
                    HOLD_MS + rng.below(60_000)
                },
            },
            9 => Op::Signal {
                timeout_ms: rng.chance(0.3).then(|| rng.below(30_000)),
            },
            _ => {
                if rng.chance(0.5) {
                    Op::Persist
                } else {
                    Op::Restore
                }
            }
        }
    }
}

/// A child run: spawned once, it ends at `ends_ms` with its own outcome.
#[derive(Debug, Clone)]
struct SimChild {
    seq: u64,
    input: Value,
    ends_ms: u64,
}

impl SimChild {
    fn outcome(&self) -> Value {
        json!({"status": "completed", "output": {"child_of_step": self.seq}})
    }
}

/// What the simulated durable store holds.
#[derive(Debug, Clone)]
struct Stored {
    state: RunState,
    restarts: u32,
    launches: u32,
    wake_ms: Option<u64>,
    /// The lease epoch of the node that owns the run.
    epoch: u64,
    /// What the run waits on (`signal` name), when waiting.
    waiting_on: Option<String>,
    output: Option<Value>,
    steps: Vec<StepRecord>,
    blobs: BTreeMap<String, Vec<u8>>,
    signals: Vec<Value>,
}

/// The simulated world: time, randomness, the store, the ledger, the VM's
/// files, the faults armed, and the checks' bookkeeping.
struct World {
    seed: u64,
    rng: Rng,
    config: SimConfig,
    now: u64,
    stored: Stored,
    /// Writes queued without waiting and not committed yet.
    queued: Vec<Vec<StepRecord>>,
    /// The next store write fails.
    write_fails: bool,
    /// The VM's files (lost with the VM).
    files: BTreeMap<String, Vec<u8>>,
    /// The durable workspace: which steps' files the VM holds (the program
    /// writes one before each step `writes_file` picks).
    workspace: BTreeSet<u64>,
    /// Frozen workspace layers: what each held.
    layers: BTreeMap<String, BTreeSet<u64>>,
    /// Layers named so far.
    layer_count: u64,
    /// Unsafe effects (charges, unsafe steps) by seq.
    effects: BTreeMap<u64, u32>,
    /// Idempotent effects by key: (seq, times applied, result).
    keyed: BTreeMap<String, (u64, u32, Value)>,
    /// Retries people decided, by seq.
    retries: BTreeMap<u64, u32>,
    /// Results people gave (skip-with), by seq.
    skipped: BTreeMap<u64, ()>,
    /// Steps a person ended (skipped or failed).
    decided: BTreeSet<u64>,
    /// Executions of steps the program runs itself, by seq.
    runs: BTreeMap<u64, u32>,
    /// The first final answer the program got, by seq.
    answers: BTreeMap<u64, Value>,
    /// What the last persisted file held (content by seq of the persist).
    persisted: BTreeMap<u64, Vec<u8>>,
    /// Child runs by id (in the store: they outlive any launch).
    children: BTreeMap<String, SimChild>,
    /// Times the run waited (without its VM) for a child.
    child_waits: u32,
    faults: BTreeMap<&'static str, u32>,
    decisions: u32,
    error: Option<String>,
    trace: Vec<String>,
    violation: Option<String>,
}

impl World {
    fn note(&mut self, line: String) {
        self.trace.push(format!("t={} {line}", self.now));
    }

    fn violate(&mut self, message: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {message}"));
            self.violation = Some(message);
        }
    }

    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
        self.note(format!("fault {kind}"));
    }

    fn roll(&mut self) -> bool {
        let rate = self.config.fault_rate;
        self.rng.chance(rate)
    }

    /// Commit `steps` to the durable journal, checking each move.
    fn commit(&mut self, steps: Vec<StepRecord>) {
        if self.stored.state.is_final() && !steps.is_empty() {
            let message = format!(
                "steps were written after the run ended {}",
                self.stored.state
            );
            self.violate(message);
            return;
        }
        for step in steps {
            let seq = step.seq as usize;
            match self.stored.steps.get(seq) {
                Some(old) => {
                    if old.state.is_final() && *old != step {
                        let message = format!(
                            "the completed step {} ({}) was overwritten: {:?} became {:?}",
                            step.seq, step.name, old.state, step.state
                        );
                        self.violate(message);
                        return;
                    }
                    if old.state != step.state
                        && !old.state.can_become(step.state)
                        && !(old.state == StepState::Started && step.state == StepState::Started)
                    {
                        // A lost attempt passes through scheduled inside
                        // one write (started → scheduled → started).
                        let through_scheduled = old.state == StepState::Started
                            && StepState::Scheduled.can_become(step.state);
                        if !through_scheduled {
                            let message = format!(
                                "step {} moved {:?} → {:?}, which is not allowed",
                                step.seq, old.state, step.state
                            );
                            self.violate(message);
                        }
                    }
                    self.stored.steps[seq] = step;
                }
                None if seq == self.stored.steps.len() => self.stored.steps.push(step),
                None => {
                    let message = format!(
                        "step {} was written past the journal's end ({})",
                        step.seq,
                        self.stored.steps.len()
                    );
                    self.violate(message);
                }
            }
        }
    }

    fn commit_queued(&mut self) {
        for steps in std::mem::take(&mut self.queued) {
            self.commit(steps);
        }
    }

    /// Move the run, checking the move.
    fn move_run(&mut self, to: RunState) {
        let from = self.stored.state;
        if from != to && !from.can_become(to) {
            self.violate(format!("the run moved {from} → {to}, which is not allowed"));
        }
        self.note(format!("run {from} → {to}"));
        self.stored.state = to;
    }

    /// A write under lease `epoch`: fails when armed to, or when the node
    /// no longer owns the run.
    fn check_write(&mut self, epoch: u64) -> Result<(), HostError> {
        if std::mem::take(&mut self.write_fails) {
            self.queued.clear();
            return Err(HostError("simulated store write failure".into()));
        }
        if self.stored.state.is_final() {
            self.queued.clear();
            return Err(HostError(format!("the run is {}", self.stored.state)));
        }
        if epoch != self.stored.epoch {
            self.queued.clear();
            return Err(HostError(format!(
                "fenced: this node's lease (epoch {epoch}) no longer owns the run (epoch {})",
                self.stored.epoch
            )));
        }
        Ok(())
    }
}

/// The simulated host of one launch.
struct SimHost {
    world: Arc<Mutex<World>>,
    /// The lease epoch this launch writes under.
    epoch: u64,
    /// Cancelled: the launch is over.
    stopped: AtomicBool,
    /// The VM died during the current call.
    died: AtomicBool,
    /// The server crashed during the current call.
    node_crashed: AtomicBool,
    /// The workspace layers of this launch's VM.
    disk: Mutex<SimDisk>,
}

/// A launch's writable disk: the frozen layer it stands on, the writable
/// layer over it, and whether anything was written since the last
/// checkpoint.
#[derive(Debug)]
struct SimDisk {
    parent: Option<String>,
    active: String,
    last: Option<WorkspaceCheckpoint>,
    dirty: bool,
}

impl SimHost {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Host for SimHost {
    fn now_ms(&self) -> u64 {
        self.world().now
    }

    fn random(&self) -> f64 {
        self.world().rng.unit()
    }

    async fn record(
        &self,
        steps: Vec<StepRecord>,
        durability: Durability,
    ) -> Result<(), HostError> {
        let mut world = self.world();
        world.check_write(self.epoch)?;
        match durability {
            Durability::Behind => world.queued.push(steps),
            Durability::Durable => {
                world.commit_queued();
                world.commit(steps);
            }
        }
        Ok(())
    }

    async fn flush(&self) {
        let mut world = self.world();
        if world.check_write(self.epoch).is_ok() {
            world.commit_queued();
        }
    }

    async fn end(&self, end: &LaunchEnd) -> Result<bool, HostError> {
        let mut world = self.world();
        world.check_write(self.epoch)?;
        if world.stored.state != RunState::Running {
            return Ok(false);
        }
        let to = end.stopped();
        world.note(format!("launch ends: {to}"));
        match end {
            LaunchEnd::Completed { output, .. } => {
                world.stored.output = Some(output.clone());
                world.move_run(RunState::Completed);
            }
            LaunchEnd::Waiting { on, wake_ms, .. } => {
                if on
                    .as_ref()
                    .is_some_and(|on| world.children.contains_key(on))
                {
                    world.child_waits += 1;
                }
                world.stored.wake_ms = *wake_ms;
                world.stored.waiting_on = on.clone();
                world.move_run(RunState::Waiting);
            }
            LaunchEnd::NeedsAttention { .. } => world.move_run(RunState::NeedsAttention),
            LaunchEnd::Failed { code, message } => {
                world.note(format!("failed {code}: {message}"));
                world.error = Some(code.to_string());
                world.move_run(RunState::Failed);
            }
        }
        Ok(true)
    }

    fn cancel(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    async fn checkpoint(&self) -> Result<Option<WorkspaceCheckpoint>, HostError> {
        let mut world = self.world();
        let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        if world.roll() && world.rng.chance(0.3) {
            world.fault("checkpoint_failed");
            return Err(HostError("simulated checkpoint failure".into()));
        }
        if let (false, Some(last)) = (disk.dirty, &disk.last) {
            return Ok(Some(last.clone()));
        }
        let frozen = disk.active.clone();
        let state = world.workspace.clone();
        let digest = bytes_digest(format!("{state:?}").as_bytes());
        world.layers.insert(frozen.clone(), state);
        world.layer_count += 1;
        let next = format!("l{}", world.layer_count);
        let checkpoint = WorkspaceCheckpoint {
            layer: frozen.clone(),
            digest,
            parent: disk.parent.replace(frozen),
        };
        disk.active = next;
        disk.dirty = false;
        disk.last = Some(checkpoint.clone());
        Ok(Some(checkpoint))
    }

    async fn hold_until(&self, until_ms: u64) -> bool {
        let mut world = self.world();
        if world.roll() {
            world.fault("vm_died_while_holding");
            self.died.store(true, Ordering::SeqCst);
            return false;
        }
        world.now = world.now.max(until_ms);
        true
    }

    fn tool_effect(&self, name: &str, _args: &Value) -> Result<Effect, EndpointError> {
        match name {
            "charge" => Ok(Effect::Unsafe),
            "upsert" => Ok(Effect::Idempotent),
            other => Err(EndpointError::not_found(format!("no tool named {other:?}"))),
        }
    }

    fn tool_policy(&self, _name: &str, _args: &Value) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 5_000,
            multiplier: 4.0,
            jitter: 0.2,
            non_retryable: Vec::new(),
        }
    }

    async fn call_tool(
        &self,
        name: &str,
        args: &Value,
        key: &str,
    ) -> Option<Result<Value, StepError>> {
        let mut world = self.world();
        let seq = args["seq"].as_u64().unwrap_or(u64::MAX);
        if key != idempotency_key(RUN_ID, seq) {
            world.violate(format!("tool call for step {seq} carried key {key}"));
        }
        if world.roll() {
            world.fault("vm_died_before_tool_call");
            self.died.store(true, Ordering::SeqCst);
            return None;
        }
        if world.rng.chance(0.15) {
            world.note(format!("tool {name} step {seq}: refused (503)"));
            return Some(Err(StepError::retryable("http_503", "the ledger is busy")));
        }
        let result = json!({"ok": seq, "amount": args["amount"]});
        match name {
            "charge" => {
                let times = {
                    let count = world.effects.entry(seq).or_default();
                    *count += 1;
                    *count
                };
                let allowed = 1 + world.retries.get(&seq).copied().unwrap_or(0);
                world.note(format!("charge step {seq}: effect #{times}"));
                if times > allowed {
                    world.violate(format!(
                        "the non-idempotent charge of step {seq} was made {times} times with {} retries decided",
                        allowed - 1
                    ));
                }
            }
            _ => {
                let entry = world
                    .keyed
                    .entry(key.to_string())
                    .or_insert((seq, 0, result.clone()));
                entry.1 += 1;
                if entry.1 > 1 {
                    // Deduplicated by its key: the first call's answer.
                    let first = entry.2.clone();
                    world.note(format!("upsert step {seq}: deduplicated"));
                    return self.after_effect(world, first);
                }
                world.note(format!("upsert step {seq}: applied"));
            }
        }
        self.after_effect(world, result)
    }

    async fn signals(&self, _name: &str) -> Result<Vec<Value>, HostError> {
        Ok(self.world().stored.signals.clone())
    }

    async fn wake(&self, _on: &str) {
        let mut world = self.world();
        if world.stored.state == RunState::Waiting {
            world.stored.wake_ms = Some(world.now);
        }
    }

    async fn spawn_child(&self, child: NewChild<'_>) -> Result<Result<(), StepError>, HostError> {
        let mut world = self.world();
        world.check_write(self.epoch)?;
        if let Some(existing) = world.children.get(child.id) {
            // Spawned again (a replay after a crash): the same child.
            if existing.seq != child.seq || &existing.input != child.input {
                let message = format!(
                    "child {} was spawned again by step {} with input {}, first by step {} with {}",
                    child.id, child.seq, child.input, existing.seq, existing.input
                );
                world.violate(message);
            }
            world.note(format!("spawn step {}: child exists", child.seq));
            return Ok(Ok(()));
        }
        let ends_ms = world.now + world.rng.below(20_000);
        world.note(format!("spawn step {}: child {}", child.seq, child.id));
        let new = SimChild {
            seq: child.seq,
            input: child.input.clone(),
            ends_ms,
        };
        world.children.insert(child.id.to_string(), new);
        Ok(Ok(()))
    }

    async fn child(&self, id: &str) -> Result<Child, HostError> {
        let world = self.world();
        Ok(match world.children.get(id) {
            None => Child::Unknown,
            Some(child) if world.now >= child.ends_ms => Child::Ended(child.outcome()),
            Some(_) => Child::Running,
        })
    }

    async fn persist(&self, path: &str) -> Result<Result<(String, u64), StepError>, HostError> {
        let mut world = self.world();
        let Some(data) = world.files.get(path).cloned() else {
            return Ok(Err(StepError::permanent(
                "persist",
                format!("no file {path}"),
            )));
        };
        let digest = bytes_digest(&data);
        world.stored.blobs.insert(digest.clone(), data.clone());
        Ok(Ok((digest, data.len() as u64)))
    }

    async fn restore(&self, path: &str, digest: &str) -> Result<Result<u64, StepError>, HostError> {
        let mut world = self.world();
        let Some(data) = world.stored.blobs.get(digest).cloned() else {
            world.violate(format!("persisted blob {digest} is missing"));
            return Ok(Err(StepError::permanent("restore", "missing blob")));
        };
        let size = data.len() as u64;
        world.files.insert(path.to_string(), data);
        Ok(Ok(size))
    }
}

impl SimHost {
    /// After a tool's effect: the VM may die before the answer is
    /// recorded.
    fn after_effect(
        &self,
        mut world: MutexGuard<'_, World>,
        result: Value,
    ) -> Option<Result<Value, StepError>> {
        if world.roll() {
            if world.rng.chance(0.5) {
                world.fault("vm_died_after_tool_effect");
                self.died.store(true, Ordering::SeqCst);
            } else {
                world.fault("server_crashed_after_tool_effect");
                self.node_crashed.store(true, Ordering::SeqCst);
            }
            self.stopped.store(true, Ordering::SeqCst);
            return None;
        }
        Some(Ok(result))
    }
}

/// Run a future whose every wait is already over: the simulated host never
/// waits, so one poll finishes it.
fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the simulated host never waits"),
    }
}

/// How a launch ended, as the simulated node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaunchOutcome {
    /// The engine ended it (the run moved, or the launch was fenced).
    Stopped,
    /// The VM or program died: the node records a crash.
    Crashed,
    /// The node itself crashed: nothing more is recorded by it.
    NodeCrashed,
}

/// Which half of a call a fault loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    Request,
    Answer,
}

/// One simulated schedule.
struct Sim {
    world: Arc<Mutex<World>>,
    program: Vec<Op>,
}

/// Whether the program writes a file into its workspace before step `seq`.
fn writes_file(seq: u64) -> bool {
    seq % 3 != 2
}

/// The file the program persists and restores.
const FILE: &str = "/work/state.bin";

impl Sim {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the run's next move; `false` once it has ended.
    fn turn(&mut self) -> bool {
        let state = self.world().stored.state;
        match state {
            RunState::Completed | RunState::Failed | RunState::Cancelled => return false,
            RunState::NeedsAttention => self.decide(),
            RunState::Waiting => {
                let mut world = self.world();
                let child_end = world
                    .stored
                    .waiting_on
                    .as_ref()
                    .and_then(|on| world.children.get(on))
                    .map(|child| child.ends_ms);
                if let Some(end) = child_end {
                    // The child's end wakes its parent (or its deadline
                    // comes first).
                    let wake = world.stored.wake_ms.map_or(end, |w| w.min(end));
                    world.stored.wake_ms = Some(wake);
                } else if world.stored.waiting_on.is_some() && world.rng.chance(0.6) {
                    let n = world.stored.signals.len();
                    world.stored.signals.push(json!({ "n": n }));
                    world.note(format!("signal #{n} sent"));
                    world.stored.wake_ms = Some(world.now);
                }
                match world.stored.wake_ms {
                    Some(wake) => {
                        world.now = world.now.max(wake);
                        world.stored.waiting_on = None;
                        world.move_run(RunState::Pending);
                    }
                    // Waits for a signal only: time passes.
                    None => world.now += 5_000,
                }
            }
            RunState::Pending => {
                {
                    let mut world = self.world();
                    if let Some(wake) = world.stored.wake_ms.take() {
                        world.now = world.now.max(wake);
                    }
                }
                self.launch();
            }
            RunState::Running => {
                // Its node crashed or lost its lease: once the lease has
                // expired, another node takes the run.
                {
                    let mut world = self.world();
                    world.now += LEASE_MS;
                    world.stored.epoch += 1;
                    let epoch = world.stored.epoch;
                    world.note(format!("another node takes the run (epoch {epoch})"));
                }
                self.launch();
            }
        }
        true
    }

    /// A person decides about the step whose outcome is unknown.
    fn decide(&mut self) {
        let mut world = self.world();
        let mut journal = match Journal::from_steps(RUN_ID, world.stored.steps.clone()) {
            Ok(journal) => journal,
            Err(error) => {
                world.violate(format!("the journal does not load: {error}"));
                return;
            }
        };
        let Some(step) = journal.needs_decision().cloned() else {
            // The step was decided already (a relaunch finds none).
            world.move_run(RunState::Pending);
            return;
        };
        let resolution = match world.rng.below(3) {
            0 => Resolution::Retry,
            1 => Resolution::SkipWith {
                result: json!({"skipped": step.seq}),
            },
            _ => Resolution::Fail {
                error: StepError::permanent("decided", "a person failed it"),
            },
        };
        world.decisions += 1;
        world.note(format!("decision on step {}: {resolution:?}", step.seq));
        match &resolution {
            Resolution::Retry => *world.retries.entry(step.seq).or_default() += 1,
            Resolution::SkipWith { .. } => {
                world.skipped.insert(step.seq, ());
                world.decided.insert(step.seq);
            }
            Resolution::Fail { .. } => {
                world.decided.insert(step.seq);
            }
        }
        let now = world.now;
        if let Err(error) = journal.resolve(step.seq, resolution, now) {
            world.violate(format!(
                "a decision on step {} was refused: {error}",
                step.seq
            ));
            return;
        }
        world.stored.steps = journal.steps().to_vec();
        world.move_run(RunState::Pending);
    }

    /// One launch, as the server's `try_launch` does it: load the journal,
    /// [`resume`] it (lose the attempts in flight, stop for a decision if
    /// one is needed), then run the program in a fresh VM until it or the
    /// engine ends it; after a crash, [`after_crash`] decides.
    fn launch(&mut self) {
        let (mut journal, epoch, launch, disk) = {
            let mut world = self.world();
            let mut journal = match Journal::from_steps(RUN_ID, world.stored.steps.clone()) {
                Ok(journal) => journal,
                Err(error) => {
                    world.violate(format!("the journal does not load: {error}"));
                    return;
                }
            };
            let now = world.now;
            let (lost, next) = resume(&mut journal, None, now);
            if !lost.is_empty() {
                let epoch = world.stored.epoch;
                if world.check_write(epoch).is_err() {
                    world.fault("store_write_failed_at_launch");
                    return;
                }
                let seqs: Vec<_> = lost.iter().map(|s| s.seq).collect();
                world.note(format!("attempts lost in steps {seqs:?}"));
                world.commit(lost);
            }
            if let Resume::Stop(end) = next {
                world.note(format!("no launch: {end:?}"));
                match end {
                    LaunchEnd::NeedsAttention { .. } => world.move_run(RunState::NeedsAttention),
                    other => world.violate(format!("a launch stopped for {other:?}")),
                }
                return;
            }
            // The workspace as of the last checkpoint the journal holds:
            // exactly the files written up to that step.
            let chain = match workspace_chain(&journal, journal.next_seq()) {
                Ok(chain) => chain,
                Err(error) => {
                    world.violate(error);
                    return;
                }
            };
            let parent = chain.last().map(|c| c.layer.clone());
            world.workspace = match &parent {
                Some(layer) => world.layers.get(layer).cloned().unwrap_or_default(),
                None => BTreeSet::new(),
            };
            // Every step a launch ended carries the files as it left them;
            // only a person's decision ends one without.
            let upto = journal
                .steps()
                .iter()
                .rev()
                .find(|s| s.state.is_final() && !world.decided.contains(&s.seq))
                .map(|s| s.seq);
            let expected: BTreeSet<u64> = match upto {
                Some(upto) => (0..=upto).filter(|seq| writes_file(*seq)).collect(),
                None => BTreeSet::new(),
            };
            if world.workspace != expected {
                let message = format!(
                    "the workspace booted with the files of steps {:?}, not {expected:?} (the last step ended at {upto:?})",
                    world.workspace
                );
                world.violate(message);
            }
            world.layer_count += 1;
            let disk = SimDisk {
                parent,
                active: format!("l{}", world.layer_count),
                last: None,
                dirty: true,
            };
            world.move_run(RunState::Running);
            world.stored.launches += 1;
            // A fresh VM holds the persisted files only.
            world.files.clear();
            for (path, digest) in persisted_files(&journal) {
                let data = world.stored.blobs.get(&digest).cloned().unwrap_or_default();
                world.files.insert(path, data);
            }
            let launch = world.stored.launches;
            world.note(format!("launch {launch}"));
            (journal, world.stored.epoch, launch, disk)
        };
        let host = SimHost {
            world: self.world.clone(),
            epoch,
            stopped: AtomicBool::new(false),
            died: AtomicBool::new(false),
            node_crashed: AtomicBool::new(false),
            disk: Mutex::new(disk),
        };
        let info = LaunchInfo {
            run_id: RUN_ID.into(),
            name: None,
            input: json!({}),
            launch,
            program: "sha256:sim".into(),
            deadline_ms: None,
            hold_ms: HOLD_MS,
            max_value: 1 << 20,
        };
        let session = Session::new(host, info);
        let mut outcome = self.run_program(&session, &mut journal);
        if let (LaunchOutcome::Stopped, Some(Stopped::Fenced(_))) = (outcome, session.stopped()) {
            // The node records the launch's end as a crash (if it still
            // owns the run).
            outcome = LaunchOutcome::Crashed;
        }
        let mut world = self.world();
        match outcome {
            LaunchOutcome::Stopped => {
                if world.check_write(epoch).is_ok() {
                    world.commit_queued();
                }
            }
            LaunchOutcome::NodeCrashed => {
                world.queued.clear();
            }
            LaunchOutcome::Crashed => {
                if world.check_write(epoch).is_err() {
                    world.note("the crash could not be recorded".into());
                    return;
                }
                world.commit_queued();
                if world.stored.state != RunState::Running {
                    return;
                }
                let spec = RunSpec {
                    max_restarts: world.config.max_restarts,
                    ..RunSpec::default()
                };
                let (restarts, now) = (world.stored.restarts, world.now);
                match after_crash(&spec, restarts, now, "the VM died") {
                    AfterCrash::Exhausted { message } => {
                        world.note(message);
                        world.error = Some("restarts_exhausted".into());
                        world.move_run(RunState::Failed);
                    }
                    AfterCrash::Relaunch {
                        restart, wake_ms, ..
                    } => {
                        world.stored.restarts = restart;
                        world.stored.wake_ms = Some(wake_ms);
                        world.move_run(RunState::Pending);
                    }
                }
            }
        }
    }

    /// The program, from its first call, against one launch's session.
    fn run_program(&self, session: &Session<SimHost>, journal: &mut Journal) -> LaunchOutcome {
        let call = |journal: &mut Journal, call: Call| now_or_never(session.answer(journal, call));
        let context = match call(journal, Call::Context) {
            Ok(context) => context,
            Err(error) => {
                self.world().violate(format!("context refused: {error}"));
                return LaunchOutcome::Stopped;
            }
        };
        let journal_length = context["journal_length"].as_u64().unwrap_or(0);
        for (seq, op) in self.program.iter().enumerate() {
            let seq = seq as u64;
            if writes_file(seq) {
                self.world().workspace.insert(seq);
                session
                    .host()
                    .disk
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .dirty = true;
            }
            match self.op(session, journal, seq, op, journal_length) {
                Ok(()) => {}
                Err(outcome) => return outcome,
            }
        }
        if let Err(outcome) = self.between_calls() {
            return outcome;
        }
        let output = json!({"ops": self.program.len()});
        match call(journal, Call::Complete { output }) {
            Ok(_) => LaunchOutcome::Stopped,
            Err(error) => self.refused(session, error),
        }
    }

    /// A call the engine refused: the launch is over when it says so; any
    /// other refusal is a broken promise (the program is correct).
    fn refused(&self, session: &Session<SimHost>, error: EndpointError) -> LaunchOutcome {
        let host = session.host();
        if host.node_crashed.load(Ordering::SeqCst) {
            return LaunchOutcome::NodeCrashed;
        }
        if host.died.load(Ordering::SeqCst) {
            return LaunchOutcome::Crashed;
        }
        if error.code == "run_stopped" {
            return LaunchOutcome::Stopped;
        }
        self.world().violate(format!(
            "the engine refused a correct program's call: {error}"
        ));
        LaunchOutcome::Stopped
    }

    /// A final answer for `seq`: the same in every launch.
    fn answered(&self, seq: u64, answer: Value) {
        let mut world = self.world();
        match world.answers.get(&seq) {
            Some(first) if *first != answer => {
                let message = format!(
                    "step {seq} answered {answer} after answering {first} in an earlier launch"
                );
                world.violate(message);
            }
            Some(_) => {}
            None => {
                world.note(format!("step {seq} answered {answer}"));
                world.answers.insert(seq, answer);
            }
        }
    }

    /// The program runs step `seq` itself: it must not be completed in the
    /// journal, and an unsafe one runs again only on a decision.
    fn execute(&self, seq: u64, effect: Effect) {
        let mut world = self.world();
        let done = world
            .stored
            .steps
            .get(seq as usize)
            .is_some_and(|s| s.state.is_final());
        if done {
            world.violate(format!("step {seq}, completed in the journal, ran again"));
        }
        let runs = {
            let count = world.runs.entry(seq).or_default();
            *count += 1;
            *count
        };
        world.note(format!("step {seq} runs (#{runs})"));
        if effect == Effect::Unsafe {
            let allowed = 1 + world.retries.get(&seq).copied().unwrap_or(0);
            if runs > allowed {
                world.violate(format!(
                    "the unsafe step {seq} ran {runs} times with {} retries decided",
                    allowed - 1
                ));
            }
        }
    }

    /// A fault before the program's next call: its VM dies, the server
    /// crashes, the store's next write fails, a person cancels the run, or
    /// the node's lease expires.
    fn between_calls(&self) -> Result<(), LaunchOutcome> {
        let mut world = self.world();
        if !world.roll() {
            return Ok(());
        }
        match world.rng.below(5) {
            0 | 1 => {
                world.fault("vm_died");
                Err(LaunchOutcome::Crashed)
            }
            2 => {
                world.fault("server_crashed");
                Err(LaunchOutcome::NodeCrashed)
            }
            3 => {
                world.fault("store_write_fails");
                world.write_fails = true;
                Ok(())
            }
            _ if world.rng.chance(0.1) => {
                // A person cancels the run while its program runs: nothing
                // more may be recorded, and it never runs again.
                world.fault("cancelled");
                world.move_run(RunState::Cancelled);
                Ok(())
            }
            _ => {
                world.fault("lease_expired");
                world.stored.epoch += 1;
                Ok(())
            }
        }
    }

    /// Whether the next call's request or its answer is lost (the program
    /// then fails: hearth_run raises).
    fn lost(&self) -> Option<Lost> {
        let mut world = self.world();
        if !world.roll() {
            return None;
        }
        if world.rng.chance(0.5) {
            world.fault("request_lost");
            Some(Lost::Request)
        } else {
            world.fault("answer_lost");
            Some(Lost::Answer)
        }
    }

    fn op(
        &self,
        session: &Session<SimHost>,
        journal: &mut Journal,
        seq: u64,
        op: &Op,
        journal_length: u64,
    ) -> Result<(), LaunchOutcome> {
        let send = |journal: &mut Journal, call: Call| -> Result<Value, LaunchOutcome> {
            self.between_calls()?;
            let lost = self.lost();
            if lost == Some(Lost::Request) {
                return Err(LaunchOutcome::Crashed);
            }
            let answer = now_or_never(session.answer(journal, call));
            if lost == Some(Lost::Answer) {
                return Err(LaunchOutcome::Crashed);
            }
            match answer {
                Ok(value) => Ok(value),
                // A step's own failure is an answer like any other.
                Err(error) if error.code == "step_failed" => {
                    Ok(json!({"step_failed": error.message}))
                }
                Err(error) => Err(self.refused(session, error)),
            }
        };
        match op {
            Op::Step { effect, first } => {
                let args = json!({"seq": seq});
                let name = format!("step-{seq}");
                if *first && seq >= journal_length && *effect != Effect::Unsafe {
                    self.execute(seq, *effect);
                    let result = json!({"computed": seq});
                    let answer = send(
                        journal,
                        Call::Step {
                            seq,
                            name,
                            args,
                            effect: *effect,
                            retry: None,
                            ran: Some(Ok(result)),
                        },
                    )?;
                    self.answered(seq, answer["outcome"].clone());
                    return Ok(());
                }
                let ask = Call::Step {
                    seq,
                    name,
                    args,
                    effect: *effect,
                    retry: None,
                    ran: None,
                };
                let answer = send(journal, ask)?;
                match answer["action"].as_str() {
                    Some("replay") => self.answered(seq, answer["outcome"].clone()),
                    Some("execute") => {
                        let attempt = answer["attempt"].as_u64().unwrap_or(1) as u32;
                        self.execute(seq, *effect);
                        let done = send(
                            journal,
                            Call::StepResult {
                                seq,
                                attempt,
                                outcome: Ok(json!({"computed": seq})),
                            },
                        )?;
                        self.answered(seq, done["outcome"].clone());
                    }
                    other => {
                        let message = format!("step {seq}: unexpected action {other:?}");
                        self.world().violate(message);
                    }
                }
            }
            Op::Flaky { fails } => {
                let policy = RetryPolicy {
                    max_attempts: 3,
                    initial_backoff_ms: 300,
                    max_backoff_ms: 3_000,
                    multiplier: 3.0,
                    jitter: 0.1,
                    non_retryable: Vec::new(),
                };
                let ask = Call::Step {
                    seq,
                    name: format!("flaky-{seq}"),
                    args: json!({"seq": seq}),
                    effect: Effect::Pure,
                    retry: Some(policy),
                    ran: None,
                };
                loop {
                    let answer = send(journal, ask.clone())?;
                    match answer["action"].as_str() {
                        Some("replay") => {
                            self.answered(seq, answer["outcome"].clone());
                            break;
                        }
                        Some("wait") => {
                            let wait = answer["wait_ms"].as_u64().unwrap_or(0);
                            self.world().now += wait;
                        }
                        Some("execute") => {
                            let attempt = answer["attempt"].as_u64().unwrap_or(1) as u32;
                            self.execute(seq, Effect::Pure);
                            let outcome = if attempt <= *fails {
                                Err(StepError::retryable("flaky", format!("attempt {attempt}")))
                            } else {
                                Ok(json!({"flaky": seq}))
                            };
                            let done = send(
                                journal,
                                Call::StepResult {
                                    seq,
                                    attempt,
                                    outcome,
                                },
                            )?;
                            match done["action"].as_str() {
                                Some("done") => {
                                    self.answered(seq, done["outcome"].clone());
                                    break;
                                }
                                Some("retry") => {
                                    let wait = done["wait_ms"].as_u64().unwrap_or(0);
                                    self.world().now += wait;
                                }
                                other => {
                                    let message =
                                        format!("step {seq}: unexpected action {other:?}");
                                    self.world().violate(message);
                                    break;
                                }
                            }
                        }
                        other => {
                            let message = format!("step {seq}: unexpected action {other:?}");
                            self.world().violate(message);
                            break;
                        }
                    }
                }
            }
            Op::Charge { amount } | Op::Upsert { amount } => {
                let name = if matches!(op, Op::Charge { .. }) {
                    "charge"
                } else {
                    "upsert"
                };
                let answer = send(
                    journal,
                    Call::Tool {
                        seq,
                        name: name.into(),
                        args: json!({"seq": seq, "amount": amount}),
                    },
                )?;
                self.answered(seq, answer["outcome"].clone());
            }
            Op::Value(kind) => {
                let answer = send(journal, Call::Value { seq, kind: *kind })?;
                self.answered(seq, answer);
            }
            Op::Sleep { ms } => {
                let answer = send(journal, Call::Sleep { seq, ms: *ms })?;
                self.answered(seq, answer);
            }
            Op::Signal { timeout_ms } => {
                let answer = send(
                    journal,
                    Call::Signal {
                        seq,
                        name: "approve".into(),
                        timeout_ms: *timeout_ms,
                    },
                )?;
                self.answered(seq, answer);
            }
            Op::Persist => {
                let content = format!("state as of step {seq}").into_bytes();
                self.world().files.insert(FILE.into(), content.clone());
                let answer = send(
                    journal,
                    Call::Persist {
                        seq,
                        path: FILE.into(),
                    },
                )?;
                if answer.get("digest").is_some() {
                    // Recorded: what a later restore must bring back.
                    let mut world = self.world();
                    let recorded = world.persisted.entry(seq).or_insert(content.clone());
                    if *recorded != content {
                        world.violate(format!("persist {seq} recorded other content"));
                    }
                }
                self.answered(seq, answer);
            }
            Op::Restore => {
                let answer = send(
                    journal,
                    Call::Restore {
                        seq,
                        path: FILE.into(),
                    },
                )?;
                let mut world = self.world();
                let expected = world
                    .persisted
                    .range(..seq)
                    .next_back()
                    .map(|(_, data)| data.clone());
                let found = world.files.get(FILE).cloned();
                // A replayed restore leaves the files the launch began with
                // (the latest persisted); one run now restores as of `seq`.
                let fresh = seq >= journal_length;
                let restored = answer["restored"] == json!(true);
                if fresh && !restored && expected.is_some() {
                    let by = world
                        .persisted
                        .range(..seq)
                        .next_back()
                        .map_or(0, |(s, _)| *s);
                    world.violate(format!(
                        "restore at step {seq} found nothing, though step {by} persisted the file"
                    ));
                }
                if fresh && restored && found != expected {
                    world.violate(format!(
                        "restore at step {seq} brought back {:?}, not the last persisted {:?}",
                        found.map(|d| String::from_utf8_lossy(&d).into_owned()),
                        expected.map(|d| String::from_utf8_lossy(&d).into_owned())
                    ));
                }
                drop(world);
                self.answered(seq, answer);
            }
            Op::Spawn => {
                let answer = send(
                    journal,
                    Call::Spawn {
                        seq,
                        program: "child.py".into(),
                        input: json!({"from": seq}),
                        name: None,
                        on_failure: OnFailure::Raise,
                    },
                )?;
                let expected = child_run_id(RUN_ID, seq);
                if answer["child_id"] != json!(expected) {
                    let message = format!("spawn {seq} answered {answer}, not child {expected}");
                    self.world().violate(message);
                }
                self.answered(seq, answer);
            }
            Op::AwaitChild { spawn } => {
                let child_id = child_run_id(RUN_ID, *spawn);
                let answer = send(
                    journal,
                    Call::ChildResult {
                        seq,
                        child_id: child_id.clone(),
                    },
                )?;
                let mut world = self.world();
                match world.children.get(&child_id).cloned() {
                    None => world.violate(format!(
                        "await {seq} answered {answer} for child {child_id}, which was never spawned"
                    )),
                    Some(child) => {
                        if world.now < child.ends_ms {
                            world.violate(format!(
                                "await {seq} answered before child {child_id} ended"
                            ));
                        }
                        if answer["outcome"] != child.outcome() {
                            world.violate(format!(
                                "await {seq} answered {answer}, not child {child_id}'s outcome"
                            ));
                        }
                    }
                }
                drop(world);
                self.answered(seq, answer);
            }
        }
        Ok(())
    }

    /// The checks that hold once the schedule is over.
    fn finish(&self) {
        let mut world = self.world();
        let state = world.stored.state;
        match Journal::from_steps(RUN_ID, world.stored.steps.clone()) {
            Err(error) => world.violate(format!("the final journal does not load: {error}")),
            Ok(journal) => {
                if state == RunState::Completed {
                    if journal.next_seq() != self.program.len() as u64 {
                        let message = format!(
                            "the run completed with {} of {} steps journaled",
                            journal.next_seq(),
                            self.program.len()
                        );
                        world.violate(message);
                    }
                    if let Some(step) = journal.steps().iter().find(|s| !s.state.is_final()) {
                        let message =
                            format!("the run completed with step {} {:?}", step.seq, step.state);
                        world.violate(message);
                    }
                    let expected = json!({"ops": self.program.len()});
                    if world.stored.output.as_ref() != Some(&expected) {
                        let message = format!("the run's output is {:?}", world.stored.output);
                        world.violate(message);
                    }
                }
                // A charge recorded as done was made (unless a person gave
                // its result instead).
                for step in journal.steps() {
                    let done = step.state == StepState::Succeeded;
                    let charge = step.name == "tool:charge";
                    if done && charge && !world.skipped.contains_key(&step.seq) {
                        let made = world.effects.get(&step.seq).copied().unwrap_or(0);
                        if made == 0 {
                            let message =
                                format!("step {} records a charge the ledger never saw", step.seq);
                            world.violate(message);
                        }
                    }
                }
            }
        }
        // Each key the ledger saw belongs to one step.
        let keys: Vec<_> = world.keyed.values().map(|(seq, _, _)| *seq).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != keys.len() {
            world.violate("two steps shared an idempotency key".into());
        }
    }
}

/// Run the schedule of `seed` with the default configuration.
pub fn simulate(seed: u64) -> Result<SimReport, Violation> {
    simulate_with(seed, SimConfig::default())
}

/// Run the schedule of `seed`: a generated program, run to its end (or for
/// [`MAX_TURNS`] moves) through the faults the seed injects.
pub fn simulate_with(seed: u64, config: SimConfig) -> Result<SimReport, Violation> {
    let mut rng = Rng(seed);
    let ops = 1 + rng.below(config.max_ops as u64) as usize;
    let mut program: Vec<Op> = (0..ops).map(|_| Op::generate(&mut rng)).collect();
    // Each await takes the latest child not awaited yet; with none, the
    // program spawns one there instead.
    let mut unawaited = Vec::new();
    for (seq, op) in program.iter_mut().enumerate() {
        match op {
            Op::Spawn => unawaited.push(seq as u64),
            Op::AwaitChild { spawn } => match unawaited.pop() {
                Some(spawned) => *spawn = spawned,
                None => {
                    *op = Op::Spawn;
                    unawaited.push(seq as u64);
                }
            },
            _ => {}
        }
    }
    let world = World {
        seed,
        rng,
        config,
        now: 1_700_000_000_000,
        stored: Stored {
            state: RunState::Pending,
            restarts: 0,
            launches: 0,
            wake_ms: None,
            epoch: 1,
            waiting_on: None,
            output: None,
            steps: Vec::new(),
            blobs: BTreeMap::new(),
            signals: Vec::new(),
        },
        queued: Vec::new(),
        write_fails: false,
        files: BTreeMap::new(),
        workspace: BTreeSet::new(),
        layers: BTreeMap::new(),
        layer_count: 0,
        effects: BTreeMap::new(),
        keyed: BTreeMap::new(),
        retries: BTreeMap::new(),
        skipped: BTreeMap::new(),
        decided: BTreeSet::new(),
        runs: BTreeMap::new(),
        answers: BTreeMap::new(),
        persisted: BTreeMap::new(),
        children: BTreeMap::new(),
        child_waits: 0,
        faults: BTreeMap::new(),
        decisions: 0,
        error: None,
        trace: Vec::new(),
        violation: None,
    };
    let mut sim = Sim {
        world: Arc::new(Mutex::new(world)),
        program,
    };
    {
        let mut world = sim.world();
        let program = format!("{:?}", sim.program);
        world.note(format!("program {program}"));
    }
    let mut turns = 0;
    while turns < MAX_TURNS && sim.turn() {
        turns += 1;
        if sim.world().violation.is_some() {
            break;
        }
    }
    sim.finish();
    let world = sim.world();
    if let Some(message) = &world.violation {
        let start = world.trace.len().saturating_sub(40);
        return Err(Violation {
            seed: world.seed,
            message: message.clone(),
            trace: world.trace[start..].join("\n"),
        });
    }
    Ok(SimReport {
        seed,
        state: world.stored.state,
        launches: world.stored.launches,
        faults: world.faults.clone(),
        decisions: world.decisions,
        children: world.children.len() as u32,
        child_waits: world.child_waits,
        error: world.error.clone(),
        trace_digest: bytes_digest(world.trace.join("\n").as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_exactly() {
        for seed in 0..50 {
            assert_eq!(simulate(seed), simulate(seed), "seed {seed}");
        }
    }

    #[test]
    fn without_faults_every_run_completes_in_one_launch_or_waits_for_time() {
        let config = SimConfig {
            fault_rate: 0.0,
            ..SimConfig::default()
        };
        for seed in 0..200 {
            let report = simulate_with(seed, config).unwrap_or_else(|v| panic!("{v}"));
            assert_eq!(report.state, RunState::Completed, "seed {seed}");
            assert!(report.faults.is_empty());
            assert_eq!(report.decisions, 0, "seed {seed}");
        }
    }

    #[test]
    fn the_rng_is_uniform_enough() {
        let mut rng = Rng(7);
        let mean = (0..10_000).map(|_| rng.unit()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
