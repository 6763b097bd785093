//! Turning request bodies into what the manager runs, refusing bad input
//! with a 400 that names the field. Pure functions, so the fuzz target
//! (`fuzz/fuzz_targets/api_bodies.rs`) can drive them with arbitrary bytes.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;

use hearth_sandbox::{ExecOptions, SandboxOptions};

use hearth_net::{NetworkLimits, NetworkPolicy};

use super::model::{CreateSandboxRequest, ExecRequestBody, NetworkRequest};
use crate::error::ApiError;
use crate::manager::{CreateSpec, ExecSpec};
use crate::network::NetworkSpec;

/// Most labels per sandbox.
const MAX_LABELS: usize = 32;

/// What `POST /v1/sandboxes` asks for, checked field by field.
pub fn create_spec(
    request: CreateSandboxRequest,
    default_limits: NetworkLimits,
) -> Result<CreateSpec, ApiError> {
    let defaults = SandboxOptions::default();
    let mut options = SandboxOptions {
        image: request.image.unwrap_or(defaults.image.clone()),
        vcpus: request.vcpus.unwrap_or(defaults.vcpus),
        labels: request.labels,
        privileged: request.privileged,
        ..defaults
    };
    if let Some(memory) = &request.memory {
        options.memory = memory.parse("memory")?;
    }
    if let Some(disk) = &request.disk {
        options.disk = disk.parse("disk")?;
    }
    if let Some(timeout) = &request.timeout {
        options.timeout = Some(timeout.parse("timeout")?);
    }
    validate_labels(&options.labels)?;
    let env = env_checked("env", request.env)?;
    let network = match &request.network {
        None => NetworkSpec::none(),
        Some(network) => network_spec(network, default_limits)?,
    };
    if let Err(e) = options.validate() {
        let message = e.to_string();
        let field = ["image", "vcpus", "memory", "disk", "timeout"]
            .into_iter()
            .find(|f| message.contains(f))
            .unwrap_or("body");
        return Err(ApiError::invalid(field, message));
    }
    Ok(CreateSpec {
        options,
        env,
        network,
    })
}

/// What `network` in a create (or a run's start) asks for, checked.
pub(crate) fn network_spec(
    request: &NetworkRequest,
    default_limits: NetworkLimits,
) -> Result<NetworkSpec, ApiError> {
    let policy = NetworkPolicy::from_parts(&request.mode, &request.allow).map_err(|e| {
        let field = if request.mode == "allowlist" || !request.allow.is_empty() {
            "network.allow"
        } else {
            "network.mode"
        };
        ApiError::invalid(field, format!("{field}: {e}"))
    })?;
    let mut limits = default_limits;
    if let Some(rate) = &request.rate {
        let rate = rate.parse("network.rate")?.bytes();
        if rate == 0 {
            return Err(ApiError::invalid(
                "network.rate",
                "network.rate: 0 bytes per second would carry nothing; leave it out for no limit",
            ));
        }
        limits.rate = Some(rate);
    }
    if let Some(max_bytes) = &request.max_bytes {
        limits.max_bytes = Some(max_bytes.parse("network.max_bytes")?.bytes());
    }
    if let Some(max) = request.max_connections {
        if !(1..=MAX_CONNECTIONS).contains(&max) {
            return Err(ApiError::invalid(
                "network.max_connections",
                format!("network.max_connections: {max} is not between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        limits.max_connections = max as usize;
    }
    Ok(NetworkSpec { policy, limits })
}

/// Most connections a sandbox may be allowed at once.
const MAX_CONNECTIONS: u32 = 4096;

/// What `POST /v1/sandboxes/{id}/exec` asks for, checked field by field.
pub fn exec_spec(body: ExecRequestBody) -> Result<ExecSpec, ApiError> {
    let timeout = body.timeout.map(|t| t.parse("timeout")).transpose()?;
    let timeout_ms = timeout.map(|t| t.as_millis() as u64);
    // The check the library and the guest make too.
    hearth_proto::check_exec(&body.argv, &body.env, body.cwd.as_deref(), timeout_ms).map_err(
        |e| {
            let status = if e.too_large {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE
            } else {
                axum::http::StatusCode::BAD_REQUEST
            };
            ApiError {
                field: Some(e.field.to_string()),
                ..ApiError::new(
                    status,
                    if e.too_large {
                        "too_large"
                    } else {
                        "invalid_argument"
                    },
                    e.message,
                )
            }
        },
    )?;
    let stdin = match (body.stdin, body.stdin_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "stdin",
                "give stdin or stdin_base64, not both",
            ))
        }
        (Some(text), None) => Some(Bytes::from(text)),
        (None, Some(b64)) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    ApiError::invalid(
                        "stdin_base64",
                        format!("stdin_base64 is not valid base64: {e}"),
                    )
                })?,
        )),
        (None, None) => None,
    };
    let options = ExecOptions {
        argv: body.argv,
        env: body.env,
        cwd: body.cwd,
        timeout,
        stdin: false,
    };
    Ok(ExecSpec {
        options,
        stdin,
        stdin_open: body.stdin_open,
        background: body.background,
    })
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels, got {}", labels.len()),
        ));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(ApiError::invalid(
                "labels",
                format!("label name {key:?} is not valid: 1-63 characters of letters, digits, '-', '_', '.', '/'"),
            ));
        }
        if value.len() > 256 || value.contains('\0') {
            return Err(ApiError::invalid(
                "labels",
                format!("label {key:?}: the value must be at most 256 bytes, without NUL"),
            ));
        }
    }
    Ok(())
}

/// `env` if every name and value is one a process can have.
fn env_checked(
    field: &str,
    env: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    for (key, value) in &env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::invalid(
                field,
                format!("environment variable name {key:?} is not valid (empty, or contains '=' or NUL)"),
            ));
        }
        if value.contains('\0') {
            return Err(ApiError::invalid(
                field,
                format!("environment variable {key} contains a NUL byte"),
            ));
        }
    }
    Ok(env)
}

/// The limits of a guest path: absolute, no NUL, at most 4096 bytes.
pub fn validate_guest_path(field: &str, path: &str) -> Result<(), ApiError> {
    if path.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{field} is empty: give an absolute path inside the sandbox"),
        ));
    }
    if path.contains('\0') {
        return Err(ApiError::invalid(
            field,
            format!("{field} contains a NUL byte, which no path may contain"),
        ));
    }
    if !path.starts_with('/') {
        return Err(ApiError::invalid(
            field,
            format!("{field} {path:?} is relative: give an absolute path inside the sandbox, like /root/{path}"),
        ));
    }
    if path.len() > 4096 {
        return Err(ApiError::invalid(
            field,
            format!("{field} is {} bytes long; the limit is 4096", path.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_paths_are_refused() {
        assert!(validate_guest_path("path", "/root/a.txt").is_ok());
        for bad in ["", "relative/x", "/a\0b"] {
            let e = validate_guest_path("path", bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad:?}");
            assert_eq!(e.field.as_deref(), Some("path"));
        }
        assert!(validate_guest_path("path", &format!("/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn exec_bodies_name_the_bad_field() {
        let body = |json: &str| serde_json::from_str::<ExecRequestBody>(json).unwrap();
        let field = |json: &str| exec_spec(body(json)).unwrap_err().field;
        assert_eq!(field(r#"{"argv": []}"#).as_deref(), Some("argv"));
        assert_eq!(field(r#"{"argv": ["a\u0000b"]}"#).as_deref(), Some("argv"));
        assert_eq!(
            field(r#"{"argv": ["x"], "cwd": "tmp"}"#).as_deref(),
            Some("cwd")
        );
        assert_eq!(
            field(r#"{"argv": ["x"], "env": {"A=B": "1"}}"#).as_deref(),
            Some("env")
        );
        assert_eq!(
            field(r#"{"argv": ["x"], "stdin_base64": "%%%"}"#).as_deref(),
            Some("stdin_base64")
        );
        assert_eq!(
            field(r#"{"argv": ["x"], "stdin": "a", "stdin_base64": "YQ=="}"#).as_deref(),
            Some("stdin")
        );
        assert_eq!(
            field(r#"{"argv": ["x"], "timeout": -1}"#).as_deref(),
            Some("timeout")
        );
        let ok = exec_spec(body(r#"{"argv": ["cat"], "stdin_base64": "aGk="}"#)).unwrap();
        assert_eq!(ok.stdin.as_deref(), Some(&b"hi"[..]));
    }

    #[test]
    fn create_bodies_name_the_bad_field() {
        let field = |json: &str| {
            create_spec(
                serde_json::from_str::<CreateSandboxRequest>(json).unwrap(),
                NetworkLimits::default(),
            )
            .unwrap_err()
            .field
        };
        assert_eq!(field(r#"{"vcpus": 0}"#).as_deref(), Some("vcpus"));
        assert_eq!(field(r#"{"memory": "1K"}"#).as_deref(), Some("memory"));
        assert_eq!(field(r#"{"disk": "1"}"#).as_deref(), Some("disk"));
        assert_eq!(field(r#"{"image": "../x"}"#).as_deref(), Some("image"));
        assert_eq!(field(r#"{"labels": {"": "x"}}"#).as_deref(), Some("labels"));
        let spec = create_spec(
            serde_json::from_str(r#"{"memory": 268435456, "timeout": "90s"}"#).unwrap(),
            NetworkLimits::default(),
        )
        .unwrap();
        assert_eq!(spec.options.memory.as_mib(), 256);
        assert_eq!(
            spec.options.timeout,
            Some(std::time::Duration::from_secs(90))
        );
    }

    #[test]
    fn a_network_is_checked_entry_by_entry() {
        let create = |json: &str| {
            create_spec(
                serde_json::from_str::<CreateSandboxRequest>(json).unwrap(),
                NetworkLimits::default(),
            )
        };
        let error = |json: &str| create(json).unwrap_err();
        let e = error(r#"{"network": {"mode": "allowlist", "allow": ["ok.test", "*bad*"]}}"#);
        assert_eq!(e.field.as_deref(), Some("network.allow"));
        assert!(e.message.contains("*bad*"), "{}", e.message);
        let e = error(r#"{"network": {"mode": "allowlist", "allow": ["10.0.0.0/33"]}}"#);
        assert!(e.message.contains("10.0.0.0/33"), "{}", e.message);
        let e = error(r#"{"network": {"mode": "closed"}}"#);
        assert_eq!(e.field.as_deref(), Some("network.mode"));
        assert!(e.message.contains("closed"), "{}", e.message);
        let e = error(r#"{"network": {"mode": "allowlist", "allow": []}}"#);
        assert_eq!(e.field.as_deref(), Some("network.allow"));
        let e = error(r#"{"network": {"mode": "open", "rate": 0}}"#);
        assert_eq!(e.field.as_deref(), Some("network.rate"));
        let e = error(r#"{"network": {"mode": "open", "max_connections": 0}}"#);
        assert_eq!(e.field.as_deref(), Some("network.max_connections"));
        let e = error(r#"{"network": {"mode": "open", "max_bytes": "lots"}}"#);
        assert_eq!(e.field.as_deref(), Some("network.max_bytes"));

        let spec = create(
            r#"{"network": {"mode": "allowlist", "allow": ["pypi.org", "*.pythonhosted.org:443"],
                "rate": "1M", "max_bytes": 1000, "max_connections": 8}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.network.policy.entries(),
            vec!["pypi.org".to_string(), "*.pythonhosted.org:443".to_string()]
        );
        assert_eq!(spec.network.limits.rate, Some(1 << 20));
        assert_eq!(spec.network.limits.max_bytes, Some(1000));
        assert_eq!(spec.network.limits.max_connections, 8);
        assert!(!create("{}").unwrap().network.enabled());
    }
}
