//! The run endpoint protocol (`docs/run-endpoint.md`), as typed calls: what
//! a program asks the engine for, parsed from the bytes the guest sends and
//! checked, and each call's identity in the journal. Pure: the engine does
//! the work, this only says what was asked. The guest is untrusted, so
//! every malformed request is a clear error, never a panic.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::digest::args_digest;
use crate::retry::RetryPolicy;
use crate::step::{Effect, StepCall, StepError};

/// Longest step, tool, signal or path name, bytes.
pub const MAX_NAME: usize = 256;

/// What a recorded value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// Seconds since the Unix epoch.
    Now,
    /// Uniform in [0, 1).
    Random,
}

/// What a parent does when a child fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The parent's await fails.
    Raise,
    /// The failure comes back as a failed outcome.
    Value,
}

/// One call of a program to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `GET /`: the run's context.
    Context,
    /// `POST /steps`: reach a step the program runs itself.
    Step {
        /// Position.
        seq: u64,
        /// Name.
        name: String,
        /// Arguments (what identifies the call).
        args: Value,
        /// What repeating it does.
        effect: Effect,
        /// How failed attempts are retried.
        retry: Option<RetryPolicy>,
        /// The outcome of its first attempt, when the program ran it before
        /// asking (it was past the journal's end, and the step may be
        /// repeated): recorded in the same call.
        ran: Option<Result<Value, StepError>>,
    },
    /// `POST /steps/{seq}/result`: an attempt's outcome.
    StepResult {
        /// Position.
        seq: u64,
        /// The attempt.
        attempt: u32,
        /// Its result or error.
        outcome: Result<Value, StepError>,
    },
    /// `POST /tools/{name}`.
    Tool {
        /// Position.
        seq: u64,
        /// The tool.
        name: String,
        /// Its arguments.
        args: Value,
    },
    /// `POST /values`.
    Value {
        /// Position.
        seq: u64,
        /// Which value.
        kind: ValueKind,
    },
    /// `POST /sleep`.
    Sleep {
        /// Position.
        seq: u64,
        /// How long, ms.
        ms: u64,
    },
    /// `POST /signals/{name}`.
    Signal {
        /// Position.
        seq: u64,
        /// The signal.
        name: String,
        /// Longest wait, ms.
        timeout_ms: Option<u64>,
    },
    /// `POST /children`.
    Spawn {
        /// Position.
        seq: u64,
        /// Path of the child's entry inside this run's program.
        program: String,
        /// Its input.
        input: Value,
        /// Its name.
        name: Option<String>,
        /// What its failure does.
        on_failure: OnFailure,
    },
    /// `POST /children/{id}/result`.
    ChildResult {
        /// Position.
        seq: u64,
        /// The child.
        child_id: String,
    },
    /// `POST /persist`.
    Persist {
        /// Position.
        seq: u64,
        /// The file in the VM.
        path: String,
    },
    /// `POST /restore`.
    Restore {
        /// Position.
        seq: u64,
        /// The file in the VM.
        path: String,
    },
    /// `POST /complete`.
    Complete {
        /// The run's output.
        output: Value,
    },
}

/// A request the endpoint refuses, as its HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EndpointError {
    /// HTTP status.
    pub status: u16,
    /// Error code (`invalid_argument`, `not_found`, ...).
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
    /// The field at fault.
    pub field: Option<String>,
    /// For `run_stopped`: why.
    pub reason: Option<&'static str>,
}

impl EndpointError {
    /// 400 `invalid_argument`.
    pub fn invalid(field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: "invalid_argument",
            message: message.into(),
            field: field.map(str::to_string),
            reason: None,
        }
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            code: "not_found",
            message: message.into(),
            field: None,
            reason: None,
        }
    }

    /// 409 `run_stopped`: the launch is over; the program must stop.
    pub fn stopped(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 409,
            code: "run_stopped",
            message: message.into(),
            field: None,
            reason: Some(reason),
        }
    }

    /// An error with any status and code.
    pub fn other(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            reason: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        if let Some(reason) = self.reason {
            error["reason"] = json!(reason);
        }
        json!({ "error": error })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    seq: u64,
    name: String,
    #[serde(default)]
    args: Value,
    #[serde(default = "idempotent")]
    effect: Effect,
    #[serde(default)]
    retry: Option<RetryPolicy>,
    /// Present when the program ran the first attempt before asking.
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// `Some` whenever the field is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn idempotent() -> Effect {
    Effect::Idempotent
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultBody {
    attempt: u32,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

impl From<ErrorBody> for StepError {
    fn from(e: ErrorBody) -> Self {
        StepError {
            class: e.class,
            message: e.message,
            retryable: e.retryable,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorBody {
    #[serde(default = "program_error")]
    class: String,
    message: String,
    #[serde(default = "yes")]
    retryable: bool,
}

fn program_error() -> String {
    "error".into()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeqArgs {
    seq: u64,
    #[serde(default)]
    args: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueBody {
    seq: u64,
    kind: ValueKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepBody {
    seq: u64,
    seconds: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    seq: u64,
    #[serde(default)]
    timeout: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnBody {
    seq: u64,
    program: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "raise")]
    on_failure: OnFailure,
}

fn raise() -> OnFailure {
    OnFailure::Raise
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeqOnly {
    seq: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathBody {
    seq: u64,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    #[serde(default)]
    output: Value,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, EndpointError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        EndpointError::invalid(
            field.as_deref(),
            format!("malformed request body: {}", e.inner()),
        )
    })
}

fn check_name(what: &str, name: &str) -> Result<(), EndpointError> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(EndpointError::invalid(
            Some(what),
            format!("{what} must be 1 to {MAX_NAME} bytes without control characters"),
        ));
    }
    Ok(())
}

fn seconds_to_ms(field: &str, seconds: f64) -> Result<u64, EndpointError> {
    let max = crate::MAX_WAIT_MS as f64 / 1000.0;
    if !seconds.is_finite() || !(0.0..=max).contains(&seconds) {
        return Err(EndpointError::invalid(
            Some(field),
            format!("{field} must be between 0 and {max} seconds, got {seconds}"),
        ));
    }
    Ok((seconds * 1000.0).round() as u64)
}

/// Parse a request the program sent: `method`, `path` (with any query) and
/// `body`, for the run `run_id`. The path must be under
/// `/v1/runs/{run_id}`.
pub fn parse_call(
    run_id: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Call, EndpointError> {
    let path = path.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix("/v1/runs/") else {
        return Err(EndpointError::not_found(format!(
            "{path} is not a run endpoint route: this endpoint serves only /v1/runs/{run_id}/… (see docs/run-endpoint.md)"
        )));
    };
    let (id, route) = rest.split_once('/').unwrap_or((rest, ""));
    if id != run_id {
        return Err(EndpointError::other(
            403,
            "other_run",
            format!(
                "this endpoint belongs to run {run_id}; it serves no other run (asked for {id:?})"
            ),
        ));
    }
    let route = route.trim_end_matches('/');
    let parts: Vec<&str> = if route.is_empty() {
        Vec::new()
    } else {
        route.split('/').collect()
    };
    let call = match (method, parts.as_slice()) {
        ("GET", []) => Call::Context,
        ("POST", ["steps"]) => {
            let b: StepBody = parse(body)?;
            check_name("name", &b.name)?;
            if let Some(policy) = &b.retry {
                policy
                    .check()
                    .map_err(|e| EndpointError::invalid(Some("retry"), e))?;
            }
            let ran = match (b.attempt, b.result, b.error) {
                (None, None, None) => None,
                (None, _, _) => {
                    return Err(EndpointError::invalid(
                        Some("attempt"),
                        "a step sent with its result or error needs \"attempt\": 1",
                    ))
                }
                (Some(attempt), _, _) if attempt != 1 => {
                    return Err(EndpointError::invalid(
                        Some("attempt"),
                        format!("only a step's first attempt may be sent with the step (got attempt {attempt}); report later attempts with POST /steps/{{seq}}/result"),
                    ))
                }
                (Some(_), _, _) if b.effect == Effect::Unsafe => {
                    return Err(EndpointError::invalid(
                        Some("effect"),
                        "an unsafe step must be asked for before it runs: send POST /steps without a result, and run it on \"execute\"",
                    ))
                }
                (Some(_), Some(_), Some(_)) => {
                    return Err(EndpointError::invalid(
                        Some("result"),
                        "send either a result or an error, not both",
                    ))
                }
                (Some(_), _, Some(e)) => Some(Err(e.into())),
                (Some(_), result, None) => Some(Ok(result.unwrap_or(Value::Null))),
            };
            Call::Step {
                seq: b.seq,
                name: b.name,
                args: b.args,
                effect: b.effect,
                retry: b.retry,
                ran,
            }
        }
        ("POST", ["steps", seq, "result"]) => {
            let seq: u64 = seq.parse().map_err(|_| {
                EndpointError::invalid(Some("seq"), format!("step number {seq:?} is not a number"))
            })?;
            let b: ResultBody = parse(body)?;
            let outcome = match (b.result, b.error) {
                (_, Some(e)) => Err(e.into()),
                (Some(result), None) => Ok(result),
                (None, None) => Ok(Value::Null),
            };
            Call::StepResult {
                seq,
                attempt: b.attempt,
                outcome,
            }
        }
        ("POST", ["tools", name]) => {
            check_name("tool", name)?;
            let b: SeqArgs = parse(body)?;
            let args = if b.args.is_null() { json!({}) } else { b.args };
            if !args.is_object() {
                return Err(EndpointError::invalid(
                    Some("args"),
                    "tool arguments must be a JSON object of named arguments",
                ));
            }
            Call::Tool {
                seq: b.seq,
                name: name.to_string(),
                args,
            }
        }
        ("POST", ["values"]) => {
            let b: ValueBody = parse(body)?;
            Call::Value {
                seq: b.seq,
                kind: b.kind,
            }
        }
        ("POST", ["sleep"]) => {
            let b: SleepBody = parse(body)?;
            Call::Sleep {
                seq: b.seq,
                ms: seconds_to_ms("seconds", b.seconds)?,
            }
        }
        ("POST", ["signals", name]) => {
            check_name("signal", name)?;
            let b: SignalBody = parse(body)?;
            Call::Signal {
                seq: b.seq,
                name: name.to_string(),
                timeout_ms: b.timeout.map(|t| seconds_to_ms("timeout", t)).transpose()?,
            }
        }
        ("POST", ["children"]) => {
            let b: SpawnBody = parse(body)?;
            check_name("program", &b.program)?;
            if let Some(name) = &b.name {
                check_name("name", name)?;
            }
            Call::Spawn {
                seq: b.seq,
                program: b.program,
                input: b.input,
                name: b.name,
                on_failure: b.on_failure,
            }
        }
        ("POST", ["children", id, "result"]) => {
            check_name("child", id)?;
            let b: SeqOnly = parse(body)?;
            Call::ChildResult {
                seq: b.seq,
                child_id: id.to_string(),
            }
        }
        ("POST", ["persist"]) | ("POST", ["restore"]) => {
            let b: PathBody = parse(body)?;
            if !b.path.starts_with('/') || b.path.len() > 4096 || b.path.contains('\0') {
                return Err(EndpointError::invalid(
                    Some("path"),
                    "path must be an absolute path in the VM",
                ));
            }
            if parts[0] == "persist" {
                Call::Persist {
                    seq: b.seq,
                    path: b.path,
                }
            } else {
                Call::Restore {
                    seq: b.seq,
                    path: b.path,
                }
            }
        }
        ("POST", ["complete"]) => {
            let b: CompleteBody = parse(body)?;
            Call::Complete { output: b.output }
        }
        (_, _) => {
            return Err(EndpointError::not_found(format!(
                "no route {method} /{route} on the run endpoint (see docs/run-endpoint.md)"
            )))
        }
    };
    Ok(call)
}

impl Call {
    /// The call's position in the journal, if it is journaled.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Call::Context | Call::Complete { .. } => None,
            Call::Step { seq, .. }
            | Call::StepResult { seq, .. }
            | Call::Tool { seq, .. }
            | Call::Value { seq, .. }
            | Call::Sleep { seq, .. }
            | Call::Signal { seq, .. }
            | Call::Spawn { seq, .. }
            | Call::ChildResult { seq, .. }
            | Call::Persist { seq, .. }
            | Call::Restore { seq, .. } => Some(*seq),
        }
    }

    /// The step this call is in the journal: its name, argument digest and
    /// effect (`tool_effect` for a tool call, which the tool's declaration
    /// decides). `None` for calls that are not steps.
    pub fn step_call(&self, tool_effect: Effect) -> Option<StepCall> {
        let (seq, name, args, effect) = match self {
            Call::Context | Call::Complete { .. } | Call::StepResult { .. } => return None,
            Call::Step {
                seq,
                name,
                args,
                effect,
                ..
            } => (*seq, name.clone(), args.clone(), *effect),
            Call::Tool { seq, name, args } => {
                (*seq, format!("tool:{name}"), args.clone(), tool_effect)
            }
            Call::Value { seq, kind } => {
                let name = match kind {
                    ValueKind::Now => "now",
                    ValueKind::Random => "random",
                };
                (*seq, name.to_string(), Value::Null, Effect::Pure)
            }
            Call::Sleep { seq, ms } => (*seq, "sleep".into(), json!({ "ms": ms }), Effect::Pure),
            Call::Signal {
                seq,
                name,
                timeout_ms,
            } => (
                *seq,
                format!("signal:{name}"),
                json!({ "timeout_ms": timeout_ms }),
                Effect::Pure,
            ),
            Call::Spawn {
                seq,
                program,
                input,
                name,
                on_failure,
            } => (
                *seq,
                "spawn".into(),
                json!({"program": program, "input": input, "name": name, "on_failure": on_failure}),
                Effect::Idempotent,
            ),
            Call::ChildResult { seq, child_id } => {
                (*seq, format!("child:{child_id}"), Value::Null, Effect::Pure)
            }
            Call::Persist { seq, path } => (
                *seq,
                "persist".into(),
                json!({ "path": path }),
                Effect::Idempotent,
            ),
            Call::Restore { seq, path } => (
                *seq,
                "restore".into(),
                json!({ "path": path }),
                Effect::Pure,
            ),
        };
        Some(StepCall {
            seq,
            name,
            args_digest: args_digest(&args),
            effect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(method: &str, route: &str, body: &str) -> Result<Call, EndpointError> {
        parse_call(
            "run-1",
            method,
            &format!("/v1/runs/run-1{route}"),
            body.as_bytes(),
        )
    }

    #[test]
    fn a_step_may_carry_its_first_attempts_outcome() {
        let ran = |body: &str| match call("POST", "/steps", body) {
            Ok(Call::Step { ran, .. }) => Ok(ran),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(ran(r#"{"seq":0,"name":"a"}"#).unwrap(), None);
        assert_eq!(
            ran(r#"{"seq":0,"name":"a","attempt":1,"result":{"n":1}}"#).unwrap(),
            Some(Ok(json!({"n": 1})))
        );
        // A null result is a result.
        assert_eq!(
            ran(r#"{"seq":0,"name":"a","attempt":1,"result":null}"#).unwrap(),
            Some(Ok(Value::Null))
        );
        let failed =
            ran(r#"{"seq":0,"name":"a","effect":"pure","attempt":1,"error":{"message":"m"}}"#)
                .unwrap();
        assert!(matches!(
            failed,
            Some(Err(StepError {
                retryable: true,
                ..
            }))
        ));
        for (body, field) in [
            (r#"{"seq":0,"name":"a","result":1}"#, "attempt"),
            (r#"{"seq":0,"name":"a","attempt":2,"result":1}"#, "attempt"),
            (
                r#"{"seq":0,"name":"a","effect":"unsafe","attempt":1,"result":1}"#,
                "effect",
            ),
            (
                r#"{"seq":0,"name":"a","attempt":1,"result":1,"error":{"message":"m"}}"#,
                "result",
            ),
        ] {
            let error = ran(body).unwrap_err();
            assert_eq!(error.status, 400, "{body}");
            assert_eq!(error.field.as_deref(), Some(field), "{body}: {error:?}");
        }
    }

    #[test]
    fn every_route_parses() {
        assert_eq!(call("GET", "/", "").unwrap(), Call::Context);
        assert_eq!(call("GET", "", "").unwrap(), Call::Context);
        let step = call("POST", "/steps", r#"{"seq":0,"name":"a","args":[1]}"#).unwrap();
        assert!(matches!(
            step,
            Call::Step {
                effect: Effect::Idempotent,
                ..
            }
        ));
        let result = call(
            "POST",
            "/steps/0/result",
            r#"{"attempt":1,"error":{"class":"E","message":"m","retryable":false}}"#,
        )
        .unwrap();
        assert!(matches!(
            result,
            Call::StepResult {
                outcome: Err(StepError {
                    retryable: false,
                    ..
                }),
                ..
            }
        ));
        assert!(matches!(
            call("POST", "/tools/charge", r#"{"seq":1,"args":{"a":1}}"#).unwrap(),
            Call::Tool { .. }
        ));
        assert_eq!(
            call("POST", "/values", r#"{"seq":2,"kind":"random"}"#).unwrap(),
            Call::Value {
                seq: 2,
                kind: ValueKind::Random
            }
        );
        assert_eq!(
            call("POST", "/sleep", r#"{"seq":3,"seconds":1.5}"#).unwrap(),
            Call::Sleep { seq: 3, ms: 1500 }
        );
        assert!(matches!(
            call("POST", "/signals/approve", r#"{"seq":4,"timeout":null}"#).unwrap(),
            Call::Signal {
                timeout_ms: None,
                ..
            }
        ));
        assert!(matches!(
            call(
                "POST",
                "/children",
                r#"{"seq":5,"program":"w.py","input":1,"name":null,"on_failure":"value"}"#
            )
            .unwrap(),
            Call::Spawn {
                on_failure: OnFailure::Value,
                ..
            }
        ));
        assert!(matches!(
            call("POST", "/children/run-2/result", r#"{"seq":6}"#).unwrap(),
            Call::ChildResult { .. }
        ));
        assert!(matches!(
            call("POST", "/persist", r#"{"seq":7,"path":"/work/a"}"#).unwrap(),
            Call::Persist { .. }
        ));
        assert!(matches!(
            call("POST", "/complete", r#"{"output":{"ok":true}}"#).unwrap(),
            Call::Complete { .. }
        ));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let other = parse_call("run-1", "GET", "/v1/runs/run-2/", b"").unwrap_err();
        assert_eq!((other.status, other.code), (403, "other_run"));
        let outside = parse_call("run-1", "GET", "/v1/sandboxes", b"").unwrap_err();
        assert_eq!(outside.status, 404);
        let missing = call("POST", "/steps", r#"{"seq":0}"#).unwrap_err();
        assert!(missing.message.contains("name"), "{missing}");
        let typed = call("POST", "/values", r#"{"seq":"x","kind":"now"}"#).unwrap_err();
        assert_eq!(typed.field.as_deref(), Some("seq"));
        let unknown = call("POST", "/values", r#"{"seq":1,"kind":"now","x":1}"#).unwrap_err();
        assert!(unknown.message.contains("unknown field"), "{unknown}");
        let sleep = call("POST", "/sleep", r#"{"seq":1,"seconds":-1}"#).unwrap_err();
        assert_eq!(sleep.field.as_deref(), Some("seconds"));
        let args = call("POST", "/tools/t", r#"{"seq":1,"args":[1]}"#).unwrap_err();
        assert_eq!(args.field.as_deref(), Some("args"));
        let relative = call("POST", "/persist", r#"{"seq":1,"path":"a"}"#).unwrap_err();
        assert_eq!(relative.field.as_deref(), Some("path"));
        let body = relative.body();
        assert_eq!(body["error"]["code"], "invalid_argument");
    }

    #[test]
    fn a_step_identity_depends_on_its_arguments_not_their_order() {
        let a = call("POST", "/tools/t", r#"{"seq":1,"args":{"x":1,"y":2}}"#).unwrap();
        let b = call("POST", "/tools/t", r#"{"seq":1,"args":{"y":2,"x":1}}"#).unwrap();
        let c = call("POST", "/tools/t", r#"{"seq":1,"args":{"y":3,"x":1}}"#).unwrap();
        let id = |c: &Call| c.step_call(Effect::Unsafe).unwrap();
        assert_eq!(id(&a), id(&b));
        assert_ne!(id(&a).args_digest, id(&c).args_digest);
        assert_eq!(id(&a).name, "tool:t");
        assert_eq!(id(&a).effect, Effect::Unsafe);
    }

    proptest! {
        /// Any bytes on any path: an answer, never a panic.
        #[test]
        fn arbitrary_requests_never_panic(
            method in "(GET|POST|PUT)",
            route in "(/[a-z0-9]{0,8}){0,4}",
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = parse_call("run-1", &method, &format!("/v1/runs/run-1{route}"), &body);
        }
    }
}
