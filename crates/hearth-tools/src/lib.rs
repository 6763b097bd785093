//! The host-side tool gateway: how a run's `ctx.tool(name, args)` becomes
//! one HTTP request from the host.
//!
//! Programs run in microVMs and hold no secrets and no network of their
//! own; the tools they may call are declared by the operator in a TOML
//! file ([`ToolRegistry`]), with typed parameters, an effect (idempotent
//! or not), a timeout and a retry policy. Header secrets (`${ENV}`) are
//! expanded on the host at load, so they never enter a VM.
//!
//! [`ToolGateway::call`] makes **one** attempt: the engine
//! (`hearth-engine`) owns journaling and retries, and passes the step's
//! deterministic idempotency key, sent as the `Idempotency-Key` header so
//! that the tool can deduplicate a repeated attempt. Every address is
//! checked against the [`EgressPolicy`] after the host resolves it, so a
//! program cannot reach the host's loopback, the private network or the
//! cloud metadata service. Failures come back as
//! [`hearth_engine::StepError`]s with a class for retry policies
//! (`http_503`, `timeout`, `connect`, `egress_refused`, `invalid_input`,
//! `too_large`), alongside a [`CallRecord`] of what was sent.
//!
//! Modules: [`egress`] (the address policy from `hearth-net`, shared with
//! the sandbox network, and its `reqwest` resolver),
//! [`config`] (the file format), [`registry`] (the tools and argument
//! checks), [`call`] (one attempt).

pub mod call;
pub mod config;
pub mod egress;
pub mod error;
pub mod registry;

pub use call::{CallRecord, ToolGateway, DEFAULT_MAX_RESPONSE_BYTES};
pub use config::{ParamSpec, ParamType};
pub use egress::{CheckedResolver, EgressPolicy, EgressRefusal};
pub use error::{ArgsError, Result, ToolError};
pub use registry::{ToolInfo, ToolRegistry, HTTP_TOOL};
