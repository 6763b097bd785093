//! The seam between the run engine and host-side tools: what the engine
//! needs to know of a tool (is it known, do the arguments fit, what does
//! repeating it do, how is it retried) and one attempt of a call. The tool
//! gateway implements it; tests may substitute their own.

use futures_util::future::BoxFuture;
use serde_json::Value;

use hearth_engine::{Effect, EndpointError, RetryPolicy, StepError};

/// Host-side tools, as the engine uses them.
pub trait ToolBox: Send + Sync {
    /// What repeating a call of `name` with `args` would do; an error when
    /// the tool is unknown (404) or the arguments do not fit its declared
    /// parameters (400, naming the field).
    fn check(&self, name: &str, args: &Value) -> Result<Effect, EndpointError>;

    /// How failed calls of `name` are retried.
    fn retry_policy(&self, name: &str) -> RetryPolicy;

    /// One attempt of a call, carrying `idempotency_key`.
    fn call<'a>(
        &'a self,
        name: &'a str,
        args: &'a Value,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Value, StepError>>;
}

/// No tools at all: every tool is unknown.
#[derive(Debug, Default)]
pub struct NoTools;

impl ToolBox for NoTools {
    fn check(&self, name: &str, _args: &Value) -> Result<Effect, EndpointError> {
        Err(EndpointError::not_found(format!(
            "no tool named {name:?}: this server has no tools configured (start it with --tools FILE)"
        )))
    }

    fn retry_policy(&self, _name: &str) -> RetryPolicy {
        RetryPolicy::never()
    }

    fn call<'a>(
        &'a self,
        name: &'a str,
        _args: &'a Value,
        _idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            Err(StepError::permanent(
                "unknown_tool",
                format!("no tool named {name:?}"),
            ))
        })
    }
}
