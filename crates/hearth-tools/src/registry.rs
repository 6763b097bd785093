//! The tools a run may call: the configured ones and the built-in `http`,
//! with their parameters, effects, timeouts and retry policies, and the
//! check of a call's arguments against them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hearth_engine::{Effect, RetryPolicy};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{
    describe_value, expand_env, parse_duration, parse_url_template, ConfigFile, HttpConfig,
    ParamSpec, ParamType, ToolConfig, UrlPart,
};
use crate::error::{ArgsError, ToolError};

/// The name of the built-in tool.
pub const HTTP_TOOL: &str = "http";

/// Timeout of the `http` tool unless `[http] timeout` says otherwise.
pub const HTTP_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout of a configured tool that does not set one.
pub const TOOL_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Methods a tool may use.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Methods that are idempotent by HTTP's definition (RFC 9110 §9.2.2):
/// the `http` tool is retried by default only with these.
const IDEMPOTENT_METHODS: [&str; 5] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"];

/// A configured tool, checked.
#[derive(Debug, Clone)]
pub(crate) struct ToolSpec {
    pub name: String,
    pub description: String,
    pub method: Method,
    pub url: Vec<UrlPart>,
    /// Expanded at load; values marked sensitive so `Debug` hides them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub idempotent: bool,
    pub timeout: Duration,
    pub params: BTreeMap<String, ParamSpec>,
    pub retry: RetryPolicy,
}

impl ToolSpec {
    /// The params filled into the URL.
    pub fn url_params(&self) -> impl Iterator<Item = &str> {
        self.url.iter().filter_map(|part| match part {
            UrlPart::Param(name) => Some(name.as_str()),
            UrlPart::Literal(_) => None,
        })
    }
}

/// Settings of the built-in `http` tool.
#[derive(Debug, Clone)]
pub(crate) struct HttpSpec {
    pub timeout: Duration,
    pub retry: Option<RetryPolicy>,
}

/// A tool as the gateway calls it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tool<'a> {
    Http(&'a HttpSpec),
    Configured(&'a ToolSpec),
}

/// What the API shows of a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Its name, as programs call it.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its parameters by name.
    pub params: BTreeMap<String, ParamSpec>,
    /// Whether repeating a call with the same idempotency key is safe
    /// (for `http`: false, as it depends on the method).
    pub idempotent: bool,
}

/// The tools a run may call. Built from a config file at start and
/// read-only afterwards.
#[derive(Debug, Clone)]
pub struct ToolRegistry {
    tools: BTreeMap<String, ToolSpec>,
    http: HttpSpec,
}

impl Default for ToolRegistry {
    /// Only the built-in `http` tool.
    fn default() -> Self {
        Self {
            tools: BTreeMap::new(),
            http: HttpSpec {
                timeout: HTTP_DEFAULT_TIMEOUT,
                retry: None,
            },
        }
    }
}

impl ToolRegistry {
    /// Reads the TOML config at `path`, expanding `${ENV}` in headers from
    /// the server's environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ToolError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ToolError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_with_env(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Reads a TOML config from `text`, expanding `${ENV}` in headers from
    /// the server's environment. Errors name the origin `<string>`.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<Self, ToolError> {
        Self::from_str_with_env(text, "<string>", &|name| std::env::var(name).ok())
    }

    /// Reads a TOML config from `text`, taking `${ENV}` values from `env`
    /// (tests, or a server that keeps secrets elsewhere). `origin` names
    /// the config in errors.
    pub fn from_str_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ToolError> {
        let fail = |message: String| ToolError::Config {
            origin: origin.to_owned(),
            message,
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            fail(format!(
                "{}; the file holds [[tool]] tables and an optional [http] table",
                e.to_string().trim_end()
            ))
        })?;
        let mut registry = Self::default();
        if let Some(table) = file.http {
            let http: HttpConfig = deserialize(table).map_err(|e| fail(format!("[http]: {e}")))?;
            if let Some(text) = http.timeout {
                registry.http.timeout = parse_duration(&text)
                    .map_err(|e| fail(format!("[http]: field `timeout`: {e}")))?;
            }
            if let Some(retry) = http.retry {
                retry
                    .check()
                    .map_err(|e| fail(format!("[http]: field `retry`: {e}")))?;
                registry.http.retry = Some(retry);
            }
        }
        for (index, table) in file.tool.into_iter().enumerate() {
            let label = match table.get("name").and_then(|name| name.as_str()) {
                Some(name) => format!("tool {name:?}"),
                None => format!("[[tool]] #{}", index + 1),
            };
            let config: ToolConfig =
                deserialize(table).map_err(|e| fail(format!("{label}: {e}")))?;
            let spec = check_tool(config, env).map_err(|e| fail(format!("{label}: {e}")))?;
            if spec.name == HTTP_TOOL {
                return Err(fail(format!(
                    "{label}: the name \"http\" belongs to the built-in http tool; choose another name"
                )));
            }
            if registry.tools.contains_key(&spec.name) {
                return Err(fail(format!(
                    "{label}: defined twice; tool names must be unique"
                )));
            }
            registry.tools.insert(spec.name.clone(), spec);
        }
        Ok(registry)
    }

    pub(crate) fn get(&self, name: &str) -> Result<Tool<'_>, ArgsError> {
        if name == HTTP_TOOL {
            return Ok(Tool::Http(&self.http));
        }
        self.tools
            .get(name)
            .map(Tool::Configured)
            .ok_or_else(|| ArgsError::UnknownTool {
                name: name.to_owned(),
                known: self.names(),
            })
    }

    /// Every tool's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tools.keys().cloned().collect();
        names.push(HTTP_TOOL.to_owned());
        names.sort();
        names
    }

    /// Whether `args` fit tool `name`: an object whose every argument is
    /// declared, has its declared type, and whose required ones are there.
    /// A null counts as absent.
    pub fn check_args(&self, name: &str, args: &Value) -> Result<(), ArgsError> {
        let empty = serde_json::Map::new();
        let object = match args {
            Value::Object(object) => object,
            Value::Null => &empty,
            other => {
                return Err(ArgsError::NotAnObject {
                    got: describe_value(other),
                })
            }
        };
        match self.get(name)? {
            Tool::Configured(spec) => check_params(name, &spec.params, object),
            Tool::Http(_) => {
                check_params(name, &http_params(), object)?;
                check_http_args(object)
            }
        }
    }

    /// What repeating a call does: `Idempotent` for a tool declared
    /// idempotent and for `http` with an idempotent method, `Unsafe`
    /// otherwise (also for an unknown tool: when in doubt, never repeat).
    pub fn effect(&self, name: &str, args: &Value) -> Effect {
        let idempotent = match self.get(name) {
            Ok(Tool::Configured(spec)) => spec.idempotent,
            Ok(Tool::Http(_)) => http_method_is_idempotent(args),
            Err(_) => false,
        };
        if idempotent {
            Effect::Idempotent
        } else {
            Effect::Unsafe
        }
    }

    /// How failed calls of tool `name` are retried: its `[tool.retry]`,
    /// else `RetryPolicy::default()` when it is idempotent and
    /// `RetryPolicy::never()` when not. For `http`, `[http] retry` if set,
    /// else by the method in `args`. An unknown tool is never retried.
    pub fn retry_policy(&self, name: &str, args: &Value) -> RetryPolicy {
        match self.get(name) {
            Ok(Tool::Configured(spec)) => spec.retry.clone(),
            Ok(Tool::Http(http)) => match &http.retry {
                Some(retry) => retry.clone(),
                None if http_method_is_idempotent(args) => RetryPolicy::default(),
                None => RetryPolicy::never(),
            },
            Err(_) => RetryPolicy::never(),
        }
    }

    /// How long one attempt of tool `name` may take, if it exists.
    pub fn timeout(&self, name: &str) -> Option<Duration> {
        match self.get(name).ok()? {
            Tool::Configured(spec) => Some(spec.timeout),
            Tool::Http(http) => Some(http.timeout),
        }
    }

    /// Every tool, sorted by name, for the API.
    pub fn list(&self) -> Vec<ToolInfo> {
        let mut list: Vec<ToolInfo> = self
            .tools
            .values()
            .map(|spec| ToolInfo {
                name: spec.name.clone(),
                description: spec.description.clone(),
                params: spec.params.clone(),
                idempotent: spec.idempotent,
            })
            .collect();
        list.push(ToolInfo {
            name: HTTP_TOOL.into(),
            description: "An HTTP request to a public address; any status comes back as a value \
                          (idempotent, and retried, only with GET, HEAD, OPTIONS, PUT or DELETE)"
                .into(),
            params: http_params(),
            idempotent: false,
        });
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

/// Deserializes a TOML table, with the path to the offending field in the
/// error (`params.amount.type: unknown variant ...`).
fn deserialize<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // toml adds "in `key`" lines; the path already says where.
        let inner = inner.lines().next().unwrap_or_default().trim_end();
        if path == "." {
            inner.to_owned()
        } else {
            format!("field `{path}`: {inner}")
        }
    })
}

/// Checks one `[[tool]]` and turns it into a spec.
fn check_tool(
    config: ToolConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ToolSpec, String> {
    if config.name.is_empty()
        || !config
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "field `name`: {:?} is not a tool name; use letters, digits, _, - and .",
            config.name
        ));
    }
    let method_name = config.method.to_ascii_uppercase();
    if !METHODS.contains(&method_name.as_str()) {
        return Err(format!(
            "field `method`: {:?} is not a method a tool may use; use one of {}",
            config.method,
            METHODS.join(", ")
        ));
    }
    let method = Method::from_bytes(method_name.as_bytes()).expect("a known method");
    let url = parse_url_template(&config.url).map_err(|e| format!("field `url`: {e}"))?;
    for part in &url {
        let UrlPart::Param(param) = part else {
            continue;
        };
        match config.params.get(param) {
            None => {
                return Err(format!(
                    "field `url`: placeholder {{{param}}} is not a declared param; \
                     declare it under [tool.params] or remove it from the URL"
                ))
            }
            Some(spec) if !spec.required => {
                return Err(format!(
                    "field `url`: placeholder {{{param}}} is filled from an optional param; \
                     mark params.{param} required = true"
                ))
            }
            Some(_) => {}
        }
    }
    let sample: String = url
        .iter()
        .map(|part| match part {
            UrlPart::Literal(text) => text.as_str(),
            // A digit fits every place a placeholder may stand: a path
            // segment, a query value, a port.
            UrlPart::Param(_) => "1",
        })
        .collect();
    match url::Url::parse(&sample) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
        Ok(_) => {
            return Err(format!(
                "field `url`: {:?} is not an http:// or https:// URL with a host",
                config.url
            ))
        }
        Err(e) => {
            return Err(format!(
                "field `url`: {:?} is not a valid URL ({e}); write e.g. \"https://api.example/v1/items/{{id}}\"",
                config.url
            ))
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &config.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("field `headers.{name}`: {name:?} is not a valid header name"))?;
        let expanded =
            expand_env(value, env).map_err(|e| format!("field `headers.{name}`: {e}"))?;
        let mut value = HeaderValue::from_str(&expanded).map_err(|_| {
            format!("field `headers.{name}`: the value (after ${{ENV}} expansion) is not a valid header value")
        })?;
        value.set_sensitive(true);
        headers.push((header, value));
    }
    let timeout = match &config.timeout {
        Some(text) => parse_duration(text).map_err(|e| format!("field `timeout`: {e}"))?,
        None => TOOL_DEFAULT_TIMEOUT,
    };
    let retry = match config.retry {
        Some(retry) => {
            retry.check().map_err(|e| format!("field `retry`: {e}"))?;
            retry
        }
        None if config.idempotent => RetryPolicy::default(),
        None => RetryPolicy::never(),
    };
    for name in config.params.keys() {
        if name.is_empty() {
            return Err("field `params`: a param needs a name".into());
        }
    }
    Ok(ToolSpec {
        name: config.name,
        description: config.description,
        method,
        url,
        headers,
        idempotent: config.idempotent,
        timeout,
        params: config.params,
        retry,
    })
}

/// The `http` tool's parameters.
fn http_params() -> BTreeMap<String, ParamSpec> {
    let param = |kind, required, description: &str| ParamSpec {
        kind,
        required,
        description: Some(description.to_owned()),
    };
    BTreeMap::from([
        (
            "method".into(),
            param(
                ParamType::String,
                true,
                "GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS",
            ),
        ),
        (
            "url".into(),
            param(ParamType::String, true, "an http:// or https:// URL"),
        ),
        (
            "headers".into(),
            param(ParamType::Object, false, "header names to string values"),
        ),
        (
            "body".into(),
            param(
                ParamType::String,
                false,
                "the request body as text (not with json)",
            ),
        ),
        (
            "json".into(),
            param(ParamType::Any, false, "a JSON request body (not with body)"),
        ),
    ])
}

/// Checks arguments against declared params.
fn check_params(
    tool: &str,
    params: &BTreeMap<String, ParamSpec>,
    args: &serde_json::Map<String, Value>,
) -> Result<(), ArgsError> {
    for (field, spec) in params {
        match args.get(field) {
            None | Some(Value::Null) if spec.required => {
                return Err(ArgsError::Missing {
                    tool: tool.to_owned(),
                    field: field.clone(),
                    expected: spec.kind.described().to_owned(),
                })
            }
            None | Some(Value::Null) => {}
            Some(value) if !spec.kind.accepts(value) => {
                return Err(ArgsError::WrongType {
                    field: field.clone(),
                    expected: spec.kind.described().to_owned(),
                    got: describe_value(value),
                })
            }
            Some(_) => {}
        }
    }
    if let Some(field) = args.keys().find(|field| !params.contains_key(*field)) {
        return Err(ArgsError::Unknown {
            tool: tool.to_owned(),
            field: field.clone(),
            declared: params.keys().cloned().collect(),
        });
    }
    Ok(())
}

/// The `http` tool's checks past types: a usable method and URL, string
/// header values, not both bodies.
fn check_http_args(args: &serde_json::Map<String, Value>) -> Result<(), ArgsError> {
    let invalid = |field: &str, message: String| ArgsError::Invalid {
        field: field.to_owned(),
        message,
    };
    let text = |field: &str| args.get(field).and_then(Value::as_str).unwrap_or_default();
    let method = text("method");
    if !METHODS.contains(&method.to_ascii_uppercase().as_str()) {
        return Err(invalid(
            "method",
            format!(
                "{method:?} is not a method; use one of {}",
                METHODS.join(", ")
            ),
        ));
    }
    let url = text("url");
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
        Ok(_) => {
            return Err(invalid(
                "url",
                format!("{url:?} is not an http:// or https:// URL with a host"),
            ))
        }
        Err(e) => return Err(invalid("url", format!("{url:?} is not a valid URL ({e})"))),
    }
    if let Some(Value::Object(headers)) = args.get("headers") {
        for (name, value) in headers {
            let field = format!("headers.{name}");
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    &field,
                    format!("{name:?} is not a valid header name"),
                ));
            }
            match value.as_str() {
                Some(text) if HeaderValue::from_str(text).is_ok() => {}
                Some(_) => {
                    return Err(invalid(
                        &field,
                        "not a valid header value (control characters?)".into(),
                    ))
                }
                None => {
                    return Err(ArgsError::WrongType {
                        field,
                        expected: "a string".into(),
                        got: describe_value(value),
                    })
                }
            }
        }
    }
    let given = |field| args.get(field).is_some_and(|value| !value.is_null());
    if given("body") && given("json") {
        return Err(invalid(
            "json",
            "give either body (text) or json (a value), not both".into(),
        ));
    }
    Ok(())
}

/// Whether an `http` call's method is idempotent by HTTP's definition.
fn http_method_is_idempotent(args: &Value) -> bool {
    args.get("method")
        .and_then(Value::as_str)
        .is_some_and(|method| IDEMPOTENT_METHODS.contains(&method.to_ascii_uppercase().as_str()))
}
