//! Sandboxes: each one a microVM that boots from a pristine image, runs
//! commands and file operations for its caller, and dies leaving nothing
//! behind.
//!
//! ```no_run
//! # async fn demo() -> hearth_sandbox::Result<()> {
//! use hearth_sandbox::{ExecOptions, HearthHome, Sandbox, SandboxOptions};
//! let home = HearthHome::from_env();
//! let driver = hearth_vm::qemu::QemuDriver::locate()?;
//! let sandbox = Sandbox::create(&home, &driver, SandboxOptions::default()).await?;
//! let out = sandbox.run(ExecOptions::new(["python3", "-c", "print(6*7)"]), None).await?;
//! assert_eq!(out.stdout_text(), "42\n");
//! sandbox.destroy().await;
//! # Ok(()) }
//! ```

pub mod channel;
pub mod client;
pub mod egress;
pub mod end;
pub mod error;
pub mod exec;
pub mod files;
pub mod home;
pub mod ids;
pub mod lifecycle;
pub mod options;
pub mod registry;
pub mod tunnel;

pub use client::{ExecEvent, FileReader, StdinWriter};
pub use egress::{AuditSink, Egress, EgressAudit, EgressConfig};
pub use end::{EndReason, SandboxEnd};
pub use error::{Result, SandboxError};
pub use exec::{ExecOptions, ExecOutput, Execution};
pub use home::HearthHome;
pub use lifecycle::{Sandbox, SandboxInfo};
pub use options::SandboxOptions;
pub use registry::{reap_orphans, ReapedSandbox};
pub use tunnel::{Tunnel, TunnelCall};
