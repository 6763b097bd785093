//! `hearth serve`: sandboxes as a service.
//!
//! One process owns the sandboxes of one `HEARTH_HOME`: it admits creates
//! against the host's capacity, boots and destroys microVMs through
//! `hearth-sandbox`, records every transition, exec and file operation in
//! the event log (`hearth-store`), and serves a REST API with server-sent
//! event streams, Prometheus metrics and an OpenAPI document generated from
//! the handlers. A server that was killed leaves nothing running: the next
//! one reaps its VMs and records their sandboxes as `lost`.

pub mod admission;
pub mod api;
pub mod error;
pub mod events;
pub mod execs;
mod live;
pub mod manager;
pub mod metrics;
pub mod options;
mod recovery;
pub mod replay;
mod server;
mod specs;
pub mod token;

pub use admission::Capacity;
pub use error::{ApiError, Result, ServerError};
pub use options::ServerOptions;
pub use server::{Server, SERVER_FILE};
