//! One attempt of a tool call: build the request, check where it goes,
//! send it with the step's idempotency key, bound the time and the
//! response size, and turn the answer into a value or a classed error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hearth_engine::StepError;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::{Host, Url};

use crate::config::{percent_encode, UrlPart};
use crate::egress::{CheckedResolver, EgressPolicy, EgressRefusal};
use crate::error::ToolError;
use crate::registry::{Tool, ToolRegistry, ToolSpec};

/// Largest response body a call reads unless the gateway says otherwise:
/// 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// How many characters of an error response's body go into the error's
/// message.
const ERROR_BODY_PREVIEW: usize = 500;

/// What one attempt sent and got, for the journal: a summary, never the
/// headers (they may hold secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The request method (empty when no request was built).
    pub method: String,
    /// The URL requested, with its query (empty when none was built).
    pub url: String,
    /// The response status, when one came.
    pub status: Option<u16>,
    /// Bytes of request body sent.
    pub request_bytes: u64,
    /// Bytes of response body read.
    pub response_bytes: u64,
    /// How long the attempt took, ms.
    pub duration_ms: u64,
}

/// Calls tools: holds the registry, the egress policy and one HTTP client
/// (so connections are reused) that connects only to addresses the policy
/// allows, uses no proxy and follows no redirect.
#[derive(Debug, Clone)]
pub struct ToolGateway {
    registry: Arc<ToolRegistry>,
    egress: Arc<EgressPolicy>,
    client: reqwest::Client,
    max_response_bytes: u64,
}

/// A request ready to send.
struct Prepared {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    timeout: Duration,
    /// The built-in `http` tool: any status is a value, bodies are text.
    raw: bool,
}

impl ToolGateway {
    /// A gateway over `registry`, connecting only where `egress` allows.
    /// Redirects are not followed (a 3xx comes back as a response), so a
    /// redirect cannot lead past the egress check; proxies are not used,
    /// so a proxy cannot either.
    pub fn new(registry: ToolRegistry, egress: EgressPolicy) -> Result<Self, ToolError> {
        let egress = Arc::new(egress);
        let client = client(&egress, Vec::new())?;
        Ok(Self {
            registry: Arc::new(registry),
            egress,
            client,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    /// The same gateway, also trusting the certificate authorities in
    /// `pem` (a private CA's certificate) for `https://` tools, beside the
    /// system's.
    pub fn trusting(mut self, pem: &[u8]) -> Result<Self, ToolError> {
        let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(ToolError::Client)?;
        if roots.is_empty() {
            return Err(ToolError::Certificates(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
            ));
        }
        self.client = client(&self.egress, roots)?;
        Ok(self)
    }

    /// The same gateway, reading at most `bytes` of a response body (past
    /// it a call fails with `too_large`).
    pub fn with_max_response_bytes(mut self, bytes: u64) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The tools it calls.
    pub fn registry(&self) -> &ToolRegistry {
        &self.registry
    }

    /// The egress policy it enforces.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// Makes ONE attempt of tool `name` with `args`, sending
    /// `idempotency_key` as the `Idempotency-Key` header; the engine owns
    /// retries and journaling. Returns the outcome and a record of what
    /// was sent.
    ///
    /// A configured tool answers `{"status", "headers", "body"}` on 2xx
    /// (`body` parsed when the response is JSON, else text, or
    /// `body_base64` when not UTF-8) and fails with `http_<status>`
    /// otherwise (retryable for 408, 425, 429 and 5xx). The `http` tool
    /// answers any status as a value, with `body` as text or
    /// `body_base64`. Both fail with `timeout`, `connect` (retryable),
    /// `egress_refused`, `invalid_input` or `too_large` (not retryable).
    pub async fn call(
        &self,
        name: &str,
        args: &Value,
        idempotency_key: &str,
    ) -> (Result<Value, StepError>, CallRecord) {
        let started = Instant::now();
        let mut record = CallRecord::default();
        let result = self.attempt(name, args, idempotency_key, &mut record).await;
        record.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => tracing::debug!(
                tool = name,
                method = %record.method,
                url = %record.url,
                status = record.status,
                duration_ms = record.duration_ms,
                "tool call answered"
            ),
            Err(error) => tracing::debug!(
                tool = name,
                method = %record.method,
                url = %record.url,
                status = record.status,
                duration_ms = record.duration_ms,
                %error,
                "tool call failed"
            ),
        }
        (result, record)
    }

    async fn attempt(
        &self,
        name: &str,
        args: &Value,
        idempotency_key: &str,
        record: &mut CallRecord,
    ) -> Result<Value, StepError> {
        let invalid = |message: String| StepError::permanent("invalid_input", message);
        self.registry
            .check_args(name, args)
            .map_err(|e| invalid(e.to_string()))?;
        let tool = self
            .registry
            .get(name)
            .map_err(|e| invalid(e.to_string()))?;
        let mut prepared = match tool {
            Tool::Configured(spec) => prepare_configured(spec, args)?,
            Tool::Http(http) => prepare_http(args, http.timeout)?,
        };
        let key = HeaderValue::from_str(idempotency_key).map_err(|_| {
            invalid(format!(
                "idempotency key {idempotency_key:?} is not a valid header value"
            ))
        })?;
        prepared
            .headers
            .insert(HeaderName::from_static("idempotency-key"), key);
        record.method = prepared.method.to_string();
        record.url = prepared.url.to_string();
        record.request_bytes = prepared.body.as_ref().map_or(0, |b| b.len() as u64);
        self.check_literal_host(&prepared.url)?;

        let what = format!("{} {}", prepared.method, prepared.url);
        let timeout = prepared.timeout;
        let raw = prepared.raw;
        let exchange = self.exchange(prepared, record);
        let (status, headers, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(outcome) => outcome.map_err(|e| e.with_context(&what))?,
            Err(_) => {
                return Err(StepError::retryable(
                    "timeout",
                    format!("{what}: no complete answer within {timeout:?} (the tool's timeout)"),
                ))
            }
        };
        let headers_json: serde_json::Map<String, Value> = headers
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect();
        let mut answer = json!({"status": status.as_u16(), "headers": headers_json});
        if raw {
            put_body(&mut answer, body, false);
            return Ok(answer);
        }
        if !status.is_success() {
            return Err(status_error(status, &what, &body));
        }
        let is_json = headers_json
            .get("content-type")
            .and_then(Value::as_str)
            .is_some_and(is_json_media_type);
        put_body(&mut answer, body, is_json);
        Ok(answer)
    }

    /// Refuses an IP-literal host the policy forbids: such URLs never reach
    /// the resolver, which checks names.
    fn check_literal_host(&self, url: &Url) -> Result<(), StepError> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => ip.into(),
            Some(Host::Ipv6(ip)) => ip.into(),
            Some(Host::Domain(_)) => return Ok(()),
            None => {
                return Err(StepError::permanent(
                    "invalid_input",
                    format!("{url} has no host"),
                ))
            }
        };
        self.egress
            .check_addr(ip)
            .map_err(|refusal| StepError::permanent("egress_refused", refusal.to_string()))
    }

    /// Sends the request and reads the whole response, up to the size cap.
    async fn exchange(
        &self,
        prepared: Prepared,
        record: &mut CallRecord,
    ) -> Result<(StatusCode, BTreeMap<String, String>, Vec<u8>), Failure> {
        let mut request = self
            .client
            .request(prepared.method, prepared.url)
            .headers(prepared.headers);
        if let Some(body) = prepared.body {
            request = request.body(body);
        }
        let mut response = request.send().await.map_err(Failure::Transport)?;
        let status = response.status();
        record.status = Some(status.as_u16());
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert(value);
        }
        let cap = self.max_response_bytes;
        // Content-Length only sizes the buffer and fails early; the cap is
        // enforced on the bytes that actually come.
        if let Some(length) = response.content_length() {
            if length > cap {
                return Err(Failure::TooLarge(length));
            }
        }
        let capacity = response.content_length().unwrap_or(0).min(cap);
        let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(Failure::Transport)? {
            record.response_bytes += chunk.len() as u64;
            if record.response_bytes > cap {
                return Err(Failure::TooLarge(record.response_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }
}

/// Why an exchange failed, before it becomes a [`StepError`].
enum Failure {
    Transport(reqwest::Error),
    TooLarge(u64),
}

impl Failure {
    fn with_context(self, what: &str) -> StepError {
        match self {
            Failure::TooLarge(bytes) => StepError::permanent(
                "too_large",
                format!(
                    "{what}: the response body is larger than the gateway's limit \
                     (at least {bytes} bytes); ask for less, or raise max_response_bytes"
                ),
            ),
            Failure::Transport(error) => transport_error(&error, what),
        }
    }
}

/// The HTTP client: TLS by rustls, verifying against the system's roots
/// plus `extra_roots`; connects only where `egress` allows, through no
/// proxy, following no redirect.
fn client(
    egress: &Arc<EgressPolicy>,
    extra_roots: Vec<reqwest::Certificate>,
) -> Result<reqwest::Client, ToolError> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(CheckedResolver::new(Arc::clone(egress)))
        .tls_certs_merge(extra_roots)
        .https_only(false)
        .user_agent(concat!("hearth-tools/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ToolError::Client)
}

/// Classes a transport failure: a refused address (found in the error's
/// chain, from [`CheckedResolver`]), a certificate the client does not
/// trust (not retried: it will not change by itself), a timeout, or a
/// connection failure.
fn transport_error(error: &reqwest::Error, what: &str) -> StepError {
    let mut chain = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refusal) = current.downcast_ref::<EgressRefusal>() {
            return StepError::permanent("egress_refused", format!("{what}: {refusal}"));
        }
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&current.to_string());
        source = current.source();
    }
    if error.is_timeout() {
        StepError::retryable("timeout", format!("{what}: {chain}"))
    } else if chain.contains("certificate") {
        StepError::permanent(
            "tls",
            format!("{what}: {chain} (a tool whose server has a private CA needs it trusted: hearth serve --tools-ca FILE)"),
        )
    } else {
        StepError::retryable("connect", format!("{what}: {chain}"))
    }
}

/// The error of a configured tool's non-2xx answer: `http_<status>`,
/// retryable for 408, 425, 429 and 5xx.
fn status_error(status: StatusCode, what: &str, body: &[u8]) -> StepError {
    let code = status.as_u16();
    let retryable = matches!(code, 408 | 425 | 429) || status.is_server_error();
    let text = String::from_utf8_lossy(body);
    let mut preview: String = text.chars().take(ERROR_BODY_PREVIEW).collect();
    if text.chars().nth(ERROR_BODY_PREVIEW).is_some() {
        preview.push('…');
    }
    StepError {
        class: format!("http_{code}"),
        message: format!("{what}: answered {status}: {preview}"),
        retryable,
    }
}

/// Whether a Content-Type is JSON (`application/json`, `…+json`).
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Puts the body into the answer: parsed JSON when `json` and it parses,
/// else text, else `body_base64`.
fn put_body(answer: &mut Value, body: Vec<u8>, json: bool) {
    if json {
        if let Ok(value) = serde_json::from_slice::<Value>(&body) {
            answer["body"] = value;
            return;
        }
    }
    match String::from_utf8(body) {
        Ok(text) => answer["body"] = Value::String(text),
        Err(e) => {
            answer["body_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))
        }
    }
}

/// A JSON value as a URL segment or query value: strings as they are,
/// anything else as JSON text.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Builds a configured tool's request: the URL template filled, the other
/// arguments as a JSON body (POST, PUT, PATCH) or as query parameters.
fn prepare_configured(spec: &ToolSpec, args: &Value) -> Result<Prepared, StepError> {
    let empty = serde_json::Map::new();
    let object = args.as_object().unwrap_or(&empty);
    let mut url_text = String::new();
    for part in &spec.url {
        match part {
            UrlPart::Literal(text) => url_text.push_str(text),
            UrlPart::Param(name) => {
                let value = object.get(name).map(as_text).unwrap_or_default();
                url_text.push_str(&percent_encode(&value));
            }
        }
    }
    let mut url = Url::parse(&url_text).map_err(|e| {
        StepError::permanent(
            "invalid_input",
            format!("the URL {url_text:?} built from the arguments is not valid: {e}"),
        )
    })?;
    let in_url: Vec<&str> = spec.url_params().collect();
    let rest: serde_json::Map<String, Value> = object
        .iter()
        .filter(|(name, value)| !value.is_null() && !in_url.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        headers.insert(name.clone(), value.clone());
    }
    let body = if matches!(spec.method, Method::POST | Method::PUT | Method::PATCH) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Some(serde_json::to_vec(&Value::Object(rest)).expect("a JSON value serializes"))
    } else {
        if !rest.is_empty() {
            let mut query = url.query_pairs_mut();
            for (name, value) in &rest {
                query.append_pair(name, &as_text(value));
            }
        }
        None
    };
    Ok(Prepared {
        method: spec.method.clone(),
        url,
        headers,
        body,
        timeout: spec.timeout,
        raw: false,
    })
}

/// Builds the `http` tool's request from its (checked) arguments.
fn prepare_http(args: &Value, timeout: Duration) -> Result<Prepared, StepError> {
    let invalid = |message: String| StepError::permanent("invalid_input", message);
    let method_text = args["method"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|_| invalid(format!("args.method: {method_text:?} is not a method")))?;
    let url_text = args["url"].as_str().unwrap_or_default();
    let url = Url::parse(url_text)
        .map_err(|e| invalid(format!("args.url: {url_text:?} is not a valid URL ({e})")))?;
    let mut headers = HeaderMap::new();
    if let Some(Value::Object(given)) = args.get("headers") {
        for (name, value) in given {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("args.headers.{name}: not a valid header name")))?;
            let value = HeaderValue::from_str(value.as_str().unwrap_or_default())
                .map_err(|_| invalid(format!("args.headers.{name}: not a valid header value")))?;
            headers.append(header, value);
        }
    }
    let body = match (args.get("body"), args.get("json")) {
        (Some(Value::String(text)), _) => Some(text.clone().into_bytes()),
        (_, Some(value)) if !value.is_null() => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(serde_json::to_vec(value).expect("a JSON value serializes"))
        }
        _ => None,
    };
    Ok(Prepared {
        method,
        url,
        headers,
        body,
        timeout,
        raw: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/problem+json"));
        assert!(!is_json_media_type("text/plain"));
    }

    #[test]
    fn status_errors_are_retryable_only_when_waiting_could_help() {
        for (code, retryable) in [
            (400, false),
            (402, false),
            (404, false),
            (408, true),
            (409, false),
            (425, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            let error = status_error(StatusCode::from_u16(code).unwrap(), "GET x", b"no");
            assert_eq!(error.class, format!("http_{code}"));
            assert_eq!(error.retryable, retryable, "{code}");
        }
    }

    #[test]
    fn bodies_are_json_text_or_base64() {
        let mut answer = json!({});
        put_body(&mut answer, br#"{"a":1}"#.to_vec(), true);
        assert_eq!(answer["body"], json!({"a": 1}));
        let mut answer = json!({});
        put_body(&mut answer, b"not json".to_vec(), true);
        assert_eq!(answer["body"], json!("not json"));
        let mut answer = json!({});
        put_body(&mut answer, vec![0xff, 0x00], false);
        assert_eq!(answer["body_base64"], json!("/wA="));
        assert!(answer.get("body").is_none());
    }
}
