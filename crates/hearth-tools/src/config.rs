//! The tool config file, as written: TOML with one `[[tool]]` table per
//! tool and an optional `[http]` table for the built-in `http` tool.
//! [`crate::ToolRegistry`] turns it into checked tool specs.
//!
//! ```toml
//! [[tool]]
//! name = "charge"
//! description = "Charge an account"
//! method = "POST"
//! url = "https://ledger.example/charges/{account}"
//! headers = { Authorization = "Bearer ${LEDGER_TOKEN}" }
//! idempotent = false
//! timeout = "10s"
//! [tool.params]
//! account = { type = "string", required = true }
//! amount = { type = "integer", required = true, description = "cents" }
//! [tool.retry]
//! max_attempts = 3
//!
//! [http]
//! timeout = "30s"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_engine::RetryPolicy;
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Each `[[tool]]`, kept as a table so that its errors can name it.
    #[serde(default)]
    pub tool: Vec<toml::Table>,
    /// Settings of the built-in `http` tool.
    #[serde(default)]
    pub http: Option<toml::Table>,
}

/// One `[[tool]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotent: bool,
    pub timeout: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    pub retry: Option<RetryPolicy>,
}

fn default_method() -> String {
    "POST".into()
}

/// The `[http]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpConfig {
    pub timeout: Option<String>,
    /// When set, applies to every `http` call, whatever its method.
    pub retry: Option<RetryPolicy>,
}

/// A declared parameter of a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// The JSON type its value must have.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Whether a call must give it (a null counts as absent).
    #[serde(default)]
    pub required: bool,
    /// What it means, for the program's author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The JSON type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A JSON string.
    String,
    /// A JSON number without a fraction that fits 64 bits.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Any JSON value (the `http` tool's `json`).
    Any,
}

impl ParamType {
    /// Whether `value` has this type.
    pub fn accepts(self, value: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match self {
            Self::String => value.is_string(),
            Self::Integer => value.is_i64() || value.is_u64(),
            Self::Number => value.is_number(),
            Self::Boolean => value.is_boolean(),
            Self::Object => value.is_object(),
            Self::Array => value.is_array(),
            Self::Any => !matches!(value, V::Null),
        }
    }

    /// The type with an article, for messages (`an integer`).
    pub fn described(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Integer => "an integer",
            Self::Number => "a number",
            Self::Boolean => "a boolean",
            Self::Object => "an object",
            Self::Array => "an array",
            Self::Any => "any JSON value",
        }
    }
}

/// A JSON value's type and a short preview, for messages (`a string
/// ("500")`).
pub(crate) fn describe_value(value: &serde_json::Value) -> String {
    use serde_json::Value as V;
    let kind = match value {
        V::Null => return "null".into(),
        V::Bool(_) => "a boolean",
        V::Number(n) if n.is_f64() => "a number",
        V::Number(_) => "an integer",
        V::String(_) => "a string",
        V::Array(_) => return "an array".into(),
        V::Object(_) => return "an object".into(),
    };
    let mut preview = value.to_string();
    if preview.len() > 40 {
        let mut cut = 40;
        while !preview.is_char_boundary(cut) {
            cut -= 1;
        }
        preview.truncate(cut);
        preview.push('…');
    }
    format!("{kind} ({preview})")
}

/// Reads `"500ms"`, `"10s"`, `"2m"`, `"1h"`: a whole number and a unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let fix = "write a whole number with a unit: \"500ms\", \"10s\", \"2m\" or \"1h\"";
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("cannot read {text:?} as a duration; {fix}"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(format!("cannot read {text:?} as a duration; {fix}")),
    };
    if duration.is_zero() {
        return Err(format!("{text:?} is no time at all; {fix}"));
    }
    Ok(duration)
}

/// Replaces each `${NAME}` in `text` with `env(NAME)`. A missing variable
/// is an error naming it: header secrets are expanded on the host so they
/// never enter a VM, and a silently empty token would fail far from here.
pub(crate) fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed \"${{\" in {text:?}; write ${{NAME}}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "\"${{{name}}}\" is not an environment variable reference; write ${{NAME}} with letters, digits and _"
            ));
        }
        let value = env(name).ok_or_else(|| {
            format!(
                "environment variable {name} is not set; set it in the server's environment \
                 (it is expanded on the host, so the secret never enters a VM)"
            )
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A piece of a URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlPart {
    /// Copied as it is.
    Literal(String),
    /// Filled with the argument of that name, percent-encoded.
    Param(String),
}

/// Splits `url` at its `{param}` placeholders.
pub(crate) fn parse_url_template(url: &str) -> Result<Vec<UrlPart>, String> {
    let mut parts = Vec::new();
    let mut rest = url;
    while let Some(start) = rest.find(['{', '}']) {
        if rest[start..].starts_with('}') {
            return Err(format!("unmatched \"}}\" in {url:?}"));
        }
        if start > 0 {
            parts.push(UrlPart::Literal(rest[..start].to_owned()));
        }
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed \"{{\" in {url:?}; write {{param}}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{{{name}}} in {url:?} is not a placeholder; write {{param}} with letters, digits and _"
            ));
        }
        parts.push(UrlPart::Param(name.to_owned()));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(UrlPart::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so
/// that an argument fills one path segment and cannot add `/`, `?`, `#` or
/// `@` to the URL.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["10", "s", "1.5s", "10 s", "3d", "0s", "-1s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_references_expand_and_a_missing_one_is_named() {
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(
            expand_env("Bearer ${TOKEN}!", &env).unwrap(),
            "Bearer s3cret!"
        );
        assert_eq!(expand_env("plain $x {y}", &env).unwrap(), "plain $x {y}");
        let err = expand_env("Bearer ${NOPE}", &env).unwrap_err();
        assert!(
            err.contains("environment variable NOPE is not set"),
            "{err}"
        );
        assert!(expand_env("${TOKEN", &env)
            .unwrap_err()
            .contains("unclosed"));
        assert!(expand_env("${A-B}", &env).is_err());
    }

    #[test]
    fn url_templates_split_at_placeholders() {
        assert_eq!(
            parse_url_template("http://h/a/{id}/b{x}").unwrap(),
            [
                UrlPart::Literal("http://h/a/".into()),
                UrlPart::Param("id".into()),
                UrlPart::Literal("/b".into()),
                UrlPart::Param("x".into()),
            ]
        );
        assert!(parse_url_template("http://h/{a").is_err());
        assert!(parse_url_template("http://h/a}").is_err());
        assert!(parse_url_template("http://h/{a b}").is_err());
    }

    #[test]
    fn percent_encoding_keeps_an_argument_in_its_segment() {
        assert_eq!(percent_encode("acct-7_x.y~"), "acct-7_x.y~");
        assert_eq!(percent_encode("a/b?c#d@e f%"), "a%2Fb%3Fc%23d%40e%20f%25");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
