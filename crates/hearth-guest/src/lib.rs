//! `hearth-guest`: the agent that runs as PID 1 inside every Hearth microVM.
//!
//! It boots the VM ([`init`]), then serves the host over HTTP/2 on a
//! virtio-serial port ([`channel`], [`server`]): commands ([`exec`]),
//! files ([`files`]), resource usage ([`usage`]) and a reverse HTTP tunnel
//! from programs in the VM to the host ([`tunnel`]), egress through the host
//! by proxy ([`egress`]) or transparently ([`netstack`], [`tun`], [`dns`]), with workloads confined
//! to cgroups ([`cgroup`]) and guarded against thrashing ([`memguard`]),
//! and every child reaped by one task ([`reaper`]).
//! The wire contract is the `hearth-proto` crate.
//!
//! For tests and host-side development, [`Agent::serve_connection`] serves
//! any byte stream and [`Agent::serve_unix`] a Unix socket, without touching
//! the machine the agent runs on.

pub mod log;

pub mod agent;
pub mod body;
pub mod capacity;
pub mod cgroup;
pub mod channel;
pub mod dns;
pub mod egress;
pub mod error;
pub mod exec;
pub mod files;
pub mod init;
pub mod isolation;
pub mod memguard;
pub mod netstack;
pub mod owner;
pub mod reaper;
pub mod server;
pub mod spawn;
pub mod sys;
pub mod tun;
pub mod tunnel;
pub mod upload;
pub mod usage;

pub use agent::{Agent, AgentOptions};
pub use error::{GuestError, Result};
