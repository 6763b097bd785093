//! What a create or an exec asks the manager for, once the API layer has
//! checked the request.

use std::collections::BTreeMap;

use hearth_sandbox::{ExecOptions, SandboxOptions};

/// What a create asks for, validated by the API layer.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Sandbox options.
    pub options: SandboxOptions,
    /// Default environment of its execs.
    pub env: BTreeMap<String, String>,
    /// What it may reach on the network.
    pub network: crate::network::NetworkSpec,
}

/// What an exec asks for.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The command.
    pub options: ExecOptions,
    /// Data for stdin, written and then closed unless `stdin_open`.
    pub stdin: Option<bytes::Bytes>,
    /// Keep stdin open for later writes.
    pub stdin_open: bool,
    /// Run with no client attached.
    pub background: bool,
}
