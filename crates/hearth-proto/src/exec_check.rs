//! The one check of what a command may be, shared by every layer that
//! accepts one: the HTTP API (which answers 400 naming the field), the host
//! library (before it sends anything) and the guest agent (which trusts no
//! host). One function, so the three cannot drift apart.

use std::collections::BTreeMap;

use crate::limits::{MAX_ARGV, MAX_ARG_BYTES, MAX_ENV, MAX_EXEC_ARGS_BYTES, MAX_PATH, MAX_TIMEOUT};
use crate::messages::ExecRequest;

/// Longest exec id accepted.
pub const MAX_EXEC_ID: usize = 256;

/// What is wrong with a command, and in which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidExec {
    /// `argv`, `env`, `cwd`, `timeout` or `id`.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// The field is too large rather than malformed.
    pub too_large: bool,
}

impl std::fmt::Display for InvalidExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidExec {}

fn invalid(field: &'static str, message: String) -> Result<(), InvalidExec> {
    Err(InvalidExec {
        field,
        message,
        too_large: false,
    })
}

fn too_large(field: &'static str, message: String) -> Result<(), InvalidExec> {
    Err(InvalidExec {
        field,
        message,
        too_large: true,
    })
}

/// What to do with data too big for argv or env.
const BIG_DATA_HINT: &str = "pass large data on the command's stdin, or write it to a file in the sandbox and pass the file's path";

/// Bytes `text` takes as a JSON string, quotes and a separator included:
/// what it adds to the exec request.
fn encoded_len(text: &str) -> usize {
    let escaped: usize = text
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum();
    escaped + 3
}

/// Refuse an argument or environment entry that `execve` would refuse
/// (`E2BIG`), and argv plus env larger than one exec request may carry,
/// with the limit and what to do instead.
fn check_sizes(argv: &[String], env: &BTreeMap<String, String>) -> Result<(), InvalidExec> {
    let per_arg = MAX_ARG_BYTES - 1;
    if let Some((i, arg)) = argv.iter().enumerate().find(|(_, a)| a.len() > per_arg) {
        return too_large(
            "argv",
            format!(
                "argv[{i}] is {} bytes; one argument may be at most {per_arg} bytes (Linux's limit per argument); {BIG_DATA_HINT}",
                arg.len()
            ),
        );
    }
    if let Some((key, value)) = env.iter().find(|(k, v)| k.len() + 1 + v.len() > per_arg) {
        return too_large(
            "env",
            format!(
                "environment variable {key} is {} bytes with its name; one variable may be at most {per_arg} bytes (Linux's limit per entry); {BIG_DATA_HINT}",
                key.len() + 1 + value.len()
            ),
        );
    }
    let argv_bytes: usize = argv.iter().map(|a| encoded_len(a)).sum();
    let env_bytes: usize = env
        .iter()
        .map(|(k, v)| encoded_len(k) + encoded_len(v))
        .sum();
    let total = argv_bytes + env_bytes;
    if total > MAX_EXEC_ARGS_BYTES {
        // Blame the larger of the two.
        let field = if argv_bytes >= env_bytes {
            "argv"
        } else {
            "env"
        };
        return too_large(
            field,
            format!(
                "argv and env take {total} bytes together (as JSON); the limit for one command is {} ({MAX_EXEC_ARGS_BYTES} bytes); {BIG_DATA_HINT}",
                crate::ByteSize(MAX_EXEC_ARGS_BYTES as u64)
            ),
        );
    }
    Ok(())
}

/// Check a command: its program and arguments, environment, working
/// directory and timeout (milliseconds).
pub fn check_exec(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<(), InvalidExec> {
    if argv.is_empty() || argv[0].is_empty() {
        return invalid(
            "argv",
            "argv is empty: give the program to run and its arguments, e.g. [\"python3\", \"-c\", \"print(1)\"]".into(),
        );
    }
    if argv.len() > MAX_ARGV {
        return too_large(
            "argv",
            format!("argv has {} arguments, the limit is {MAX_ARGV}", argv.len()),
        );
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return invalid("argv", format!("argv[{i}] contains a NUL byte"));
    }
    if env.len() > MAX_ENV {
        return too_large(
            "env",
            format!("env has {} variables, the limit is {MAX_ENV}", env.len()),
        );
    }
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return invalid(
                "env",
                format!("environment variable name {key:?} is not valid (empty, or contains '=' or NUL)"),
            );
        }
        if value.contains('\0') {
            return invalid(
                "env",
                format!("environment variable {key} contains a NUL byte"),
            );
        }
    }
    check_sizes(argv, env)?;
    if let Some(cwd) = cwd {
        if cwd.contains('\0') {
            return invalid(
                "cwd",
                "cwd contains a NUL byte, which no path may contain".into(),
            );
        }
        if !cwd.starts_with('/') {
            return invalid(
                "cwd",
                format!("cwd {cwd:?} is relative: give an absolute path inside the sandbox, like /root/{cwd}"),
            );
        }
        if cwd.len() > MAX_PATH {
            return too_large(
                "cwd",
                format!("cwd is {} bytes long; the limit is {MAX_PATH}", cwd.len()),
            );
        }
    }
    if let Some(ms) = timeout_ms {
        if ms == 0 {
            return invalid("timeout", "timeout must be positive".into());
        }
        // A buggy or hostile peer must not make a deadline overflow.
        if u128::from(ms) > MAX_TIMEOUT.as_millis() {
            return invalid(
                "timeout",
                format!(
                    "timeout must be at most 30 days ({} ms), got {ms} ms",
                    MAX_TIMEOUT.as_millis()
                ),
            );
        }
    }
    Ok(())
}

impl ExecRequest {
    /// Check the request as the guest receives it: [`check_exec`] and its id.
    pub fn check(&self) -> Result<(), InvalidExec> {
        if self.id.is_empty() || self.id.len() > MAX_EXEC_ID || self.id.contains('\0') {
            return invalid(
                "id",
                format!(
                    "exec id must be 1 to {MAX_EXEC_ID} bytes without NUL, got {:?}",
                    self.id
                ),
            );
        }
        check_exec(&self.argv, &self.env, self.cwd.as_deref(), self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_bad_field_is_named() {
        let env = BTreeMap::new();
        let field =
            |a: &[&str], env: &BTreeMap<String, String>, cwd: Option<&str>, t: Option<u64>| {
                check_exec(&argv(a), env, cwd, t).unwrap_err().field
            };
        assert_eq!(field(&[], &env, None, None), "argv");
        assert_eq!(field(&[""], &env, None, None), "argv");
        assert_eq!(field(&["a\0b"], &env, None, None), "argv");
        let bad_env: BTreeMap<_, _> = [("A=B".to_string(), "1".to_string())].into();
        assert_eq!(field(&["x"], &bad_env, None, None), "env");
        let nul_value: BTreeMap<_, _> = [("A".to_string(), "1\0".to_string())].into();
        assert_eq!(field(&["x"], &nul_value, None, None), "env");
        assert_eq!(field(&["x"], &env, Some("tmp"), None), "cwd");
        assert_eq!(field(&["x"], &env, Some("/a\0"), None), "cwd");
        assert_eq!(field(&["x"], &env, None, Some(0)), "timeout");
        assert_eq!(field(&["x"], &env, None, Some(u64::MAX)), "timeout");
        let many = vec!["x".to_string(); MAX_ARGV + 1];
        let e = check_exec(&many, &env, None, None).unwrap_err();
        assert!(e.too_large && e.field == "argv");
        assert!(check_exec(&argv(&["true"]), &env, Some("/root"), Some(1000)).is_ok());
        let request = ExecRequest {
            id: String::new(),
            argv: argv(&["true"]),
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            stdin: false,
        };
        assert_eq!(request.check().unwrap_err().field, "id");
    }

    #[test]
    fn arguments_too_big_for_execve_or_the_request_are_refused_with_the_limit() {
        let env = BTreeMap::new();
        // A 5 MiB argument: too large, naming the limit and what to do.
        let huge = vec!["echo".to_string(), "x".repeat(5 << 20)];
        let e = check_exec(&huge, &env, None, None).unwrap_err();
        assert!(e.too_large && e.field == "argv", "{e:?}");
        assert!(e.message.contains("argv[1]"), "{}", e.message);
        assert!(e.message.contains("131071"), "{}", e.message);
        assert!(e.message.contains("stdin"), "{}", e.message);
        // The largest argument Linux takes is accepted.
        let largest = vec!["echo".to_string(), "x".repeat(MAX_ARG_BYTES - 1)];
        assert!(check_exec(&largest, &env, None, None).is_ok());
        // Many arguments each under the limit, too many bytes together.
        let many = vec!["y".repeat(100 * 1024); 8];
        let e = check_exec(&many, &env, None, None).unwrap_err();
        assert!(e.too_large && e.field == "argv", "{e:?}");
        assert!(e.message.contains("768K"), "{}", e.message);
        // Escaping counts: control bytes take six bytes each in JSON.
        let escaped = vec!["\u{1}".repeat(40 * 1024); 4];
        assert!(check_exec(&escaped, &env, None, None).is_err());
        // An environment entry too large for execve.
        let big_env: BTreeMap<_, _> = [("BIG".to_string(), "v".repeat(MAX_ARG_BYTES))].into();
        let e = check_exec(&argv(&["true"]), &big_env, None, None).unwrap_err();
        assert!(e.too_large && e.field == "env", "{e:?}");
    }

    proptest! {
        /// Whatever the input, the check answers (never panics), and what
        /// it accepts can be given to execve.
        #[test]
        fn accepted_commands_are_executable(
            args in proptest::collection::vec(".{0,8}", 0..4),
            cwd in proptest::option::of(".{0,8}"),
            timeout in proptest::option::of(any::<u64>()),
        ) {
            let env = BTreeMap::new();
            if check_exec(&args, &env, cwd.as_deref(), timeout).is_ok() {
                prop_assert!(!args.is_empty() && !args[0].is_empty());
                prop_assert!(args.iter().all(|a| !a.contains('\0')));
                prop_assert!(cwd.as_deref().is_none_or(|c| c.starts_with('/') && !c.contains('\0')));
                prop_assert!(timeout.is_none_or(|t| t > 0 && u128::from(t) <= MAX_TIMEOUT.as_millis()));
            }
        }
    }
}
