//! Persistence for Hearth: the sandboxes a server has run and the
//! append-only event log of everything that happened to them.
//!
//! SQLite is embedded (one file in `$HEARTH_HOME`, WAL, `synchronous=FULL`)
//! so that a server needs no setup and loses nothing it acknowledged, even
//! when it is killed. A state change and the event that records it are
//! written in one transaction: the log and the table never disagree.

mod error;
mod model;
mod sqlite;

pub use error::{Result, StoreError};
pub use model::{Event, NewSandbox, SandboxFilter, SandboxRecord, SandboxState, Transition};
pub use sqlite::Store;
