//! Durable runs: the rules of the journal that lets a program resume after
//! any crash without repeating a side effect.
//!
//! This crate holds the engine's decisions as pure functions over records,
//! fed the time and randomness, so that property tests and a deterministic
//! simulation can drive them through any interleaving of progress,
//! failures, crashes and decisions:
//!
//! - [`RunState`]: a run's life (pending, running, waiting, needs
//!   attention, completed, failed, cancelled) and its allowed moves;
//! - [`StepState`], [`Effect`], [`StepRecord`]: a journaled step, what
//!   repeating it would do, its attempts;
//! - [`Journal`]: on each step a program reaches, replay the recorded
//!   outcome, run it (with a stable idempotency key), wait for a retry,
//!   stop for a person's decision when an unsafe step's outcome is
//!   unknown, or fail on non-determinism;
//! - [`RetryPolicy`]: attempts, backoff, jitter, errors never retried;
//! - [`digest`]: argument digests and idempotency keys;
//! - [`Session`]: one launch's answers to its program's calls, acting
//!   through a [`Host`] (the server's store and sandbox, or a simulation);
//! - [`sim`]: a deterministic simulation of runs over a simulated host,
//!   with injected crashes and failures, checking the engine's promises.

pub mod digest;
pub mod host;
pub mod journal;
pub mod protocol;
pub mod retry;
pub mod run;
pub mod session;
pub mod sim;
pub mod spec;
pub mod step;

pub use host::{Child, Durability, Host, HostError, LaunchEnd, NewChild, Stopped};
pub use journal::{
    AfterFailure, Decision, Journal, JournalError, NonDeterminism, Outcome, Resolution, StepIdent,
};
pub use protocol::{parse_call, Call, EndpointError, OnFailure, ValueKind};
pub use retry::RetryPolicy;
pub use run::RunState;
pub use session::{LaunchInfo, Session};
pub use spec::{Program, ProgramError, RunNetwork, RunSpec, WorkspaceMode, PROGRAM_DIR};
pub use step::{
    Attempt, AttemptOutcome, Effect, StepCall, StepError, StepRecord, StepState,
    WorkspaceCheckpoint,
};

/// Longest a program may sleep or wait for a signal in one call, ms: 30
/// days, so that no deadline arithmetic overflows.
pub const MAX_WAIT_MS: u64 = 30 * 24 * 3600 * 1000;
