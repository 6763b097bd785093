//! The seam between the run engine and host-side tools: what the engine
//! needs to know of a tool (is it known, do the arguments fit, what does
//! repeating it do, how is it retried) and one attempt of a call. The tool
//! gateway implements it; tests may substitute their own.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use hearth_engine::{Effect, EndpointError, RetryPolicy, StepError};
use hearth_tools::{ArgsError, EgressPolicy, ToolGateway, ToolRegistry};

/// Host-side tools, as the engine uses them.
pub trait ToolBox: Send + Sync {
    /// What repeating a call of `name` with `args` would do; an error when
    /// the tool is unknown (404) or the arguments do not fit its declared
    /// parameters (400, naming the field).
    fn check(&self, name: &str, args: &Value) -> Result<Effect, EndpointError>;

    /// How failed calls of `name` with `args` are retried.
    fn retry_policy(&self, name: &str, args: &Value) -> RetryPolicy;

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

    fn retry_policy(&self, _name: &str, _args: &Value) -> RetryPolicy {
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

/// The tool gateway: tools declared in the operator's file, and `http`.
impl ToolBox for ToolGateway {
    fn check(&self, name: &str, args: &Value) -> Result<Effect, EndpointError> {
        match self.registry().check_args(name, args) {
            Ok(()) => Ok(self.registry().effect(name, args)),
            Err(error @ ArgsError::UnknownTool { .. }) => {
                Err(EndpointError::not_found(error.to_string()))
            }
            Err(error) => Err(EndpointError::invalid(
                error.field().as_deref(),
                error.to_string(),
            )),
        }
    }

    fn retry_policy(&self, name: &str, args: &Value) -> RetryPolicy {
        self.registry().retry_policy(name, args)
    }

    fn call<'a>(
        &'a self,
        name: &'a str,
        args: &'a Value,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            let (outcome, record) = ToolGateway::call(self, name, args, idempotency_key).await;
            tracing::info!(
                tool = name,
                method = %record.method,
                url = %record.url,
                status = ?record.status,
                request_bytes = record.request_bytes,
                response_bytes = record.response_bytes,
                duration_ms = record.duration_ms,
                ok = outcome.is_ok(),
                "tool call"
            );
            outcome
        })
    }
}

/// The tools of a server started without a tools file: the built-in
/// `http` tool, under the default egress policy (no private, loopback or
/// metadata address). `NoTools` if the HTTP client cannot be built.
pub fn default_tools() -> Arc<dyn ToolBox> {
    match ToolGateway::new(ToolRegistry::default(), EgressPolicy::default()) {
        Ok(gateway) => Arc::new(gateway),
        Err(error) => {
            tracing::warn!(%error, "the tool gateway could not start; runs get no tools");
            Arc::new(NoTools)
        }
    }
}
