//! Loading the tool config and checking arguments: every error says where
//! and what to do.

use hearth_engine::{Effect, RetryPolicy};
use hearth_tools::{ArgsError, ParamType, ToolError, ToolRegistry};
use serde_json::json;

const CHARGE: &str = r#"
[[tool]]
name = "charge"
description = "Charge an account"
url = "http://ledger.test/charges/{account}"
headers = { Authorization = "Bearer ${LEDGER_TOKEN}" }
timeout = "10s"
[tool.params]
account = { type = "string", required = true }
amount = { type = "integer", required = true, description = "cents" }
note = { type = "string" }
[tool.retry]
max_attempts = 3
initial_backoff_ms = 200
non_retryable = ["http_400", "http_402", "http_409"]

[[tool]]
name = "balance"
method = "get"
url = "http://ledger.test/balances/{account}"
idempotent = true
[tool.params]
account = { type = "string", required = true }
"#;

fn env(name: &str) -> Option<String> {
    (name == "LEDGER_TOKEN").then(|| "tok-123".to_owned())
}

fn load(text: &str) -> Result<ToolRegistry, ToolError> {
    ToolRegistry::from_str_with_env(text, "tools.toml", &env)
}

fn load_error(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

fn assert_contains(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} should contain {needle:?}"
        );
    }
}

/// A one-tool config with `extra` lines added to the tool table.
fn tool_with(extra: &str) -> String {
    format!(
        "[[tool]]\nname = \"t\"\nurl = \"http://x.test/a/{{id}}\"\n{extra}\n[tool.params]\nid = {{ type = \"string\", required = true }}\n"
    )
}

#[test]
fn a_good_config_loads_with_its_defaults() {
    let registry = load(CHARGE).unwrap();
    assert_eq!(registry.names(), ["balance", "charge", "http"]);
    let list = registry.list();
    let charge = list.iter().find(|tool| tool.name == "charge").unwrap();
    assert_eq!(charge.description, "Charge an account");
    assert!(!charge.idempotent);
    assert_eq!(charge.params["amount"].kind, ParamType::Integer);
    assert!(charge.params["amount"].required);
    assert_eq!(
        charge.params["amount"].description.as_deref(),
        Some("cents")
    );
    assert!(!charge.params["note"].required);
    assert!(list.iter().any(|tool| tool.name == "http"));
    assert_eq!(
        registry.timeout("charge"),
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(
        registry.timeout("http"),
        Some(std::time::Duration::from_secs(30))
    );
    // The header secret is expanded on the host and never printed.
    assert!(!format!("{registry:?}").contains("tok-123"));
}

#[test]
fn placeholders_may_stand_for_a_port() {
    let registry = load(
        "[[tool]]\nname = \"t\"\nurl = \"http://ledger.test:{port}/charges/{account}\"\n[tool.params]\nport = { type = \"integer\", required = true }\naccount = { type = \"string\", required = true }\n",
    )
    .unwrap();
    assert_eq!(
        registry.check_args("t", &json!({"port": 8080, "account": "a"})),
        Ok(())
    );
}

#[test]
fn effects_and_retry_policies_follow_the_declaration_and_the_method() {
    let registry = load(CHARGE).unwrap();
    let args = json!({"account": "a", "amount": 1});
    assert_eq!(registry.effect("charge", &args), Effect::Unsafe);
    let charge_retry = registry.retry_policy("charge", &args);
    assert_eq!(charge_retry.max_attempts, 3);
    assert_eq!(charge_retry.initial_backoff_ms, 200);
    assert_eq!(
        charge_retry.non_retryable,
        ["http_400", "http_402", "http_409"]
    );
    assert_eq!(registry.effect("balance", &args), Effect::Idempotent);
    assert_eq!(
        registry.retry_policy("balance", &args),
        RetryPolicy::default()
    );

    for method in ["GET", "head", "OPTIONS", "PUT", "DELETE"] {
        let args = json!({"method": method, "url": "https://example.com/"});
        assert_eq!(
            registry.effect("http", &args),
            Effect::Idempotent,
            "{method}"
        );
        assert_eq!(registry.retry_policy("http", &args), RetryPolicy::default());
    }
    for method in ["POST", "PATCH"] {
        let args = json!({"method": method, "url": "https://example.com/"});
        assert_eq!(registry.effect("http", &args), Effect::Unsafe, "{method}");
        assert_eq!(registry.retry_policy("http", &args), RetryPolicy::never());
    }
    assert_eq!(registry.effect("nope", &args), Effect::Unsafe);
    assert_eq!(registry.retry_policy("nope", &args), RetryPolicy::never());

    let configured = load("[http]\ntimeout = \"5s\"\nretry = { max_attempts = 2 }\n").unwrap();
    let post = json!({"method": "POST", "url": "https://example.com/"});
    assert_eq!(configured.retry_policy("http", &post).max_attempts, 2);
    assert_eq!(
        configured.timeout("http"),
        Some(std::time::Duration::from_secs(5))
    );
}

#[test]
fn config_errors_name_the_file_the_tool_and_the_field() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            tool_with("urll = \"x\""),
            vec!["tools.toml", "tool \"t\"", "unknown field `urll`"],
        ),
        (
            "[[tool]]\nname = \"t\"\nurl = \"http://x.test/\"\n[[tool]]\nname = \"t\"\nurl = \"http://x.test/\"\n".into(),
            vec!["tools.toml", "tool \"t\"", "defined twice"],
        ),
        (
            "[[tool]]\nname = \"t\"\nurl = \"http://x.test/{port}/a\"\n".into(),
            vec!["tool \"t\"", "field `url`", "{port}", "not a declared param", "[tool.params]"],
        ),
        (
            "[[tool]]\nname = \"t\"\nurl = \"http://x.test/{id}\"\n[tool.params]\nid = { type = \"string\" }\n".into(),
            vec!["tool \"t\"", "field `url`", "optional param", "required = true"],
        ),
        (
            tool_with("method = \"FETCH\""),
            vec!["tool \"t\"", "field `method`", "\"FETCH\"", "GET, HEAD, POST"],
        ),
        (
            tool_with("timeout = \"10 seconds\""),
            vec!["tool \"t\"", "field `timeout`", "\"10 seconds\"", "\"500ms\""],
        ),
        (
            tool_with("retry = { max_attempts = 0 }"),
            vec!["tool \"t\"", "field `retry`", "max_attempts must be at least 1"],
        ),
        (
            tool_with("retry = { attempts = 3 }"),
            vec!["tool \"t\"", "field `retry.attempts`", "unknown field `attempts`"],
        ),
        (
            tool_with("headers = { X-Token = \"${NOT_SET_ANYWHERE}\" }"),
            vec![
                "tool \"t\"",
                "field `headers.X-Token`",
                "environment variable NOT_SET_ANYWHERE is not set",
            ],
        ),
        (
            "[[tool]]\nname = \"t\"\nurl = \"http://x.test/\"\n[tool.params]\nn = { type = \"int\" }\n".into(),
            vec!["tool \"t\"", "params.n", "unknown variant `int`", "integer"],
        ),
        (
            "[[tool]]\nname = \"http\"\nurl = \"http://x.test/\"\n".into(),
            vec!["tool \"http\"", "built-in http tool", "choose another name"],
        ),
        (
            "[[tool]]\nname = \"t\"\nurl = \"ftp://x.test/\"\n".into(),
            vec!["tool \"t\"", "field `url`", "http:// or https://"],
        ),
        (
            "[[tool]]\nurl = \"http://x.test/\"\n".into(),
            vec!["[[tool]] #1", "missing field `name`"],
        ),
        (
            "[[tools]]\nname = \"t\"\n".into(),
            vec!["tools.toml", "unknown field `tools`", "[[tool]]"],
        ),
        (
            "[http]\ntimeout = \"forever\"\n".into(),
            vec!["[http]", "field `timeout`", "\"forever\""],
        ),
    ];
    for (text, needles) in cases {
        assert_contains(&load_error(&text), &needles);
    }
}

#[test]
fn loading_a_file_names_it_and_a_missing_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tools.toml");
    std::fs::write(
        &path,
        "[[tool]]\nname = \"t\"\nurl = \"http://x.test/\"\nmethod = 1\n",
    )
    .unwrap();
    let message = ToolRegistry::load(&path).unwrap_err().to_string();
    assert_contains(
        &message,
        &[&path.display().to_string(), "tool \"t\"", "field `method`"],
    );

    std::fs::write(&path, "[[tool]]\nname = \"t\"\nurl = \"http://x.test/\"\n").unwrap();
    assert_eq!(ToolRegistry::load(&path).unwrap().names(), ["http", "t"]);

    let missing = dir.path().join("absent.toml");
    let error = ToolRegistry::load(&missing).unwrap_err();
    assert!(matches!(error, ToolError::Read { .. }));
    assert_contains(
        &error.to_string(),
        &["absent.toml", "cannot read the tool config"],
    );
}

#[test]
fn header_references_expand_from_the_process_environment() {
    // PATH is set in every test environment; the point is that load() and
    // from_str() read the real environment.
    let path = std::env::var("PATH").unwrap();
    let registry = ToolRegistry::from_str(&tool_with("headers = { X-Path = \"${PATH}\" }"));
    assert!(registry.is_ok(), "{registry:?}");
    let missing = ToolRegistry::from_str(&tool_with(
        "headers = { X-Token = \"${HEARTH_TOOLS_SURELY_UNSET_VAR}\" }",
    ))
    .unwrap_err()
    .to_string();
    assert_contains(
        &missing,
        &[
            "<string>",
            "HEARTH_TOOLS_SURELY_UNSET_VAR is not set",
            "never enters a VM",
        ],
    );
    assert!(!path.is_empty());
}

#[test]
fn arguments_are_checked_field_by_field() {
    let registry = load(CHARGE).unwrap();
    let ok = json!({"account": "acct-7", "amount": 500});
    assert_eq!(registry.check_args("charge", &ok), Ok(()));
    assert_eq!(
        registry.check_args(
            "charge",
            &json!({"account": "a", "amount": 5, "note": null})
        ),
        Ok(())
    );

    let cases = [
        (
            json!({"account": "a"}),
            "args.amount",
            vec!["args.amount: missing", "an integer"],
        ),
        (
            json!({"account": "a", "amount": null}),
            "args.amount",
            vec!["args.amount: missing"],
        ),
        (
            json!({"account": "a", "amount": "500"}),
            "args.amount",
            vec!["args.amount: expected an integer, got a string (\"500\")"],
        ),
        (
            json!({"account": "a", "amount": 5.5}),
            "args.amount",
            vec!["expected an integer, got a number (5.5)"],
        ),
        (
            json!({"account": 7, "amount": 5}),
            "args.account",
            vec!["args.account: expected a string, got an integer (7)"],
        ),
        (
            json!({"account": "a", "amount": 5, "currency": "EUR"}),
            "args.currency",
            vec!["args.currency: unknown argument", "account, amount, note"],
        ),
    ];
    for (args, field, needles) in cases {
        let error = registry.check_args("charge", &args).unwrap_err();
        assert_eq!(error.field().as_deref(), Some(field), "{error}");
        assert_contains(&error.to_string(), &needles);
    }

    let error = registry.check_args("charge", &json!([1])).unwrap_err();
    assert_contains(
        &error.to_string(),
        &["args: expected an object", "an array"],
    );

    let error = registry.check_args("refund", &ok).unwrap_err();
    assert!(matches!(error, ArgsError::UnknownTool { .. }));
    assert_contains(
        &error.to_string(),
        &["unknown tool \"refund\"", "balance, charge, http"],
    );
}

#[test]
fn http_arguments_need_a_method_a_url_and_at_most_one_body() {
    let registry = ToolRegistry::default();
    let good = json!({"method": "post", "url": "https://example.com/x", "headers": {"X-A": "1"}, "json": {"a": 1}});
    assert_eq!(registry.check_args("http", &good), Ok(()));
    let cases = [
        (
            json!({"url": "https://example.com/"}),
            vec!["args.method: missing"],
        ),
        (
            json!({"method": "BREW", "url": "https://example.com/"}),
            vec!["args.method", "\"BREW\"", "GET, HEAD"],
        ),
        (
            json!({"method": "GET", "url": "ftp://example.com/"}),
            vec!["args.url", "http:// or https://"],
        ),
        (
            json!({"method": "GET", "url": "not a url"}),
            vec!["args.url", "not a valid URL"],
        ),
        (
            json!({"method": "GET", "url": "https://example.com/", "headers": {"X-A": 1}}),
            vec!["args.headers.X-A: expected a string"],
        ),
        (
            json!({"method": "POST", "url": "https://example.com/", "body": "x", "json": {}}),
            vec!["args.json", "not both"],
        ),
        (
            json!({"method": "POST", "url": "https://example.com/", "body": {"a": 1}}),
            vec!["args.body: expected a string, got an object"],
        ),
        (
            json!({"method": "GET", "url": "https://example.com/", "query": "a"}),
            vec![
                "args.query: unknown argument",
                "body, headers, json, method, url",
            ],
        ),
    ];
    for (args, needles) in cases {
        let error = registry.check_args("http", &args).unwrap_err();
        assert_contains(&error.to_string(), &needles);
    }
}
