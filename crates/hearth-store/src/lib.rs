//! Persistence for Hearth: sandboxes, the nodes that run them, and the
//! append-only event log of everything that happened.
//!
//! Two backends behind one [`Store`]: SQLite, embedded (one file in
//! `$HEARTH_HOME`, WAL, `synchronous=FULL`) so that a server needs no setup,
//! and PostgreSQL, shared by several nodes. A state change and the event
//! that records it are written in one transaction, so the log and the
//! tables never disagree; state changes are conditional updates, safe with
//! any number of writers; every write that depends on owning a sandbox
//! carries the owner's lease ([`Lease`], the fencing token) and is refused
//! once that lease was taken over.

mod backend;
pub mod clock;
mod error;
pub mod event;
mod journal_batch;
mod meta;
mod model;
mod node;
mod postgres;
mod rows;
mod runs;
mod runs_backend;
mod runs_sql;
mod sql;
mod sqlite;
mod sqlite_journal;
mod store;
mod store_blobs;
mod store_runs;
#[cfg(feature = "testing")]
pub mod testing;
mod url;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::{Result, StoreError};
pub use event::{Event, EventPayload, EVENT_VERSION};
pub use model::{NewSandbox, SandboxFilter, SandboxRecord, SandboxState, Transition};
pub use node::{Lease, NodeCapacity, NodeLoad, NodeRecord, NodeSpec, NodeState};
pub use runs::{
    NewRun, RunChange, RunFilter, RunRecord, RunWriter, Signal, StepWrite, INLINE_RESULT_MAX,
};
pub use store::{Store, MAX_PAGE};
pub use store_blobs::BLOB_CHUNK;
pub use url::{redact, DatabaseUrl};
