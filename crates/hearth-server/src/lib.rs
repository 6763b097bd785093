//! `hearth serve`: sandboxes as a service.
//!
//! One process owns the sandboxes of one `HEARTH_HOME` and is one node of a
//! cluster (alone on embedded SQLite, or with others on PostgreSQL): it
//! holds a lease in the store, admits creates against its host's capacity,
//! boots and destroys microVMs through `hearth-sandbox`, records every
//! transition, exec and file operation in the event log (`hearth-store`)
//! under that lease, and serves a REST API with server-sent event streams,
//! Prometheus metrics and an OpenAPI document generated from the handlers.
//! A node that was killed leaves nothing running (its VMs die with it); its
//! sandboxes are recorded `lost` once its lease is found expired, by another
//! node or by itself when it restarts.

pub mod admission;
pub mod api;
pub mod buffers;
pub mod cluster;
pub mod error;
pub mod events;
pub mod execs;
pub mod forward;
pub mod home_store;
pub mod ids;
pub mod lease_watch;
pub mod listener;
mod live;
pub mod manager;
pub mod metrics;
pub mod network;
pub mod options;
pub mod replay;
pub mod runs;
mod server;
mod specs;
pub mod tls;
pub mod token;

pub use admission::Capacity;
pub use error::{ApiError, Result, ServerError};
pub use listener::HttpLimits;
pub use options::ServerOptions;
pub use server::{Server, ServerParts, SERVER_FILE};
