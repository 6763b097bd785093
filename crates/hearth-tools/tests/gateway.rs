//! Calls through the gateway against a real HTTP server on 127.0.0.1 that
//! acts as a payments ledger: it records every request with its
//! `Idempotency-Key` and refuses a second charge with the same key (409
//! with the original response).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_engine::StepError;
use hearth_tools::{CallRecord, EgressPolicy, ToolGateway, ToolRegistry};
use serde_json::{json, Value};

/// A request as the ledger saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    idempotency_key: Option<String>,
    authorization: Option<String>,
    body: Value,
}

#[derive(Default)]
struct LedgerState {
    seen: Vec<Seen>,
    charges: HashMap<String, Value>,
}

type Ledger = Arc<Mutex<LedgerState>>;

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
}

async fn charge(
    State(ledger): State<Ledger>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = header_text(&headers, "idempotency-key");
    let mut state = ledger.lock().unwrap();
    state.seen.push(Seen {
        path: format!("/charges/{account}"),
        idempotency_key: key.clone(),
        authorization: header_text(&headers, "authorization"),
        body: body.clone(),
    });
    let Some(key) = key else {
        return (
            StatusCode::BAD_REQUEST,
            "an Idempotency-Key header is required",
        )
            .into_response();
    };
    if let Some(original) = state.charges.get(&key) {
        return (StatusCode::CONFLICT, Json(original.clone())).into_response();
    }
    let receipt = json!({
        "id": format!("ch_{}", state.charges.len() + 1),
        "account": account,
        "amount": body["amount"],
    });
    state.charges.insert(key, receipt.clone());
    (StatusCode::CREATED, Json(receipt)).into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    let status = StatusCode::from_u16(code).unwrap();
    (status, format!("answered {code}")).into_response()
}

async fn echo(headers: HeaderMap, RawQuery(query): RawQuery) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), json!(value.to_str().unwrap_or("?"))))
        .collect();
    Json(json!({"query": query, "headers": headers}))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "too late"
}

async fn bytes() -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::from_static(&[0xff, 0xfe, 0x00, 0x80, b'a']),
    )
        .into_response()
}

async fn big(Path(size): Path<usize>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], vec![b'a'; size]).into_response()
}

/// `size` bytes in 64 KiB chunks, without a Content-Length.
async fn streamed(Path(size): Path<usize>) -> Response {
    let chunk = Bytes::from(vec![b'b'; 64 * 1024]);
    let chunks = (0..size.div_ceil(chunk.len()))
        .map(move |_| Ok::<_, Infallible>(chunk.clone()))
        .collect::<Vec<_>>();
    Body::from_stream(futures_util::stream::iter(chunks)).into_response()
}

async fn redirect() -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")],
    )
        .into_response()
}

/// Starts the ledger on 127.0.0.1:0; its address and state.
async fn start_ledger() -> (std::net::SocketAddr, Ledger) {
    let ledger: Ledger = Arc::default();
    let app = Router::new()
        .route("/charges/{account}", post(charge))
        .route("/status/{code}", get(status))
        .route("/echo", get(echo))
        .route("/slow", get(slow))
        .route("/bytes", get(bytes))
        .route("/big/{size}", get(big))
        .route("/streamed/{size}", get(streamed))
        .route("/redirect", get(redirect))
        .with_state(Arc::clone(&ledger));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, ledger)
}

fn tools_config(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[[tool]]
name = "charge"
url = "http://{addr}/charges/{{account}}"
headers = {{ Authorization = "Bearer ${{LEDGER_TOKEN}}" }}
timeout = "5s"
[tool.params]
account = {{ type = "string", required = true }}
amount = {{ type = "integer", required = true }}
note = {{ type = "string" }}
[tool.retry]
max_attempts = 3
initial_backoff_ms = 200
non_retryable = ["http_400", "http_402", "http_409"]

[[tool]]
name = "status"
method = "GET"
url = "http://{addr}/status/{{code}}"
idempotent = true
[tool.params]
code = {{ type = "integer", required = true }}

[[tool]]
name = "echo"
method = "GET"
url = "http://{addr}/echo"
headers = {{ X-Path = "${{PATH}}" }}
[tool.params]
q = {{ type = "string" }}
n = {{ type = "integer" }}

[[tool]]
name = "slow"
method = "GET"
url = "http://{addr}/slow"
timeout = "300ms"

[[tool]]
name = "moved"
method = "GET"
url = "http://{addr}/redirect"
"#
    )
}

fn env(name: &str) -> Option<String> {
    match name {
        "LEDGER_TOKEN" => Some("tok-123".into()),
        other => std::env::var(other).ok(),
    }
}

/// A gateway to the ledger at `addr`, with 127.0.0.0/8 allowed.
fn gateway(addr: std::net::SocketAddr) -> ToolGateway {
    let registry =
        ToolRegistry::from_str_with_env(&tools_config(addr), "tools.toml", &env).unwrap();
    let policy = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    ToolGateway::new(registry, policy).unwrap()
}

fn expect_error(outcome: (Result<Value, StepError>, CallRecord)) -> (StepError, CallRecord) {
    match outcome {
        (Ok(value), _) => panic!("expected an error, got {value}"),
        (Err(error), record) => (error, record),
    }
}

#[tokio::test]
async fn a_charge_round_trips_with_its_idempotency_key_and_a_repeat_is_refused() {
    let (addr, ledger) = start_ledger().await;
    let gateway = gateway(addr);
    let args = json!({"account": "acct/7", "amount": 500, "note": "tea"});

    let (result, record) = gateway.call("charge", &args, "hk_run1_4").await;
    let answer = result.unwrap();
    assert_eq!(answer["status"], 201);
    assert_eq!(
        answer["body"],
        json!({"id": "ch_1", "account": "acct/7", "amount": 500})
    );
    assert_eq!(answer["headers"]["content-type"], "application/json");
    assert_eq!(record.method, "POST");
    // The account fills one path segment, encoded; it is not in the body.
    assert_eq!(record.url, format!("http://{addr}/charges/acct%2F7"));
    assert_eq!(record.status, Some(201));
    let sent = json!({"amount": 500, "note": "tea"});
    assert_eq!(
        record.request_bytes,
        serde_json::to_vec(&sent).unwrap().len() as u64
    );
    assert!(record.response_bytes > 0);

    {
        let state = ledger.lock().unwrap();
        let seen = &state.seen[0];
        assert_eq!(seen.path, "/charges/acct/7");
        assert_eq!(seen.idempotency_key.as_deref(), Some("hk_run1_4"));
        assert_eq!(seen.authorization.as_deref(), Some("Bearer tok-123"));
        assert_eq!(seen.body, sent);
    }

    // The engine's retry of the same step sends the same key: the ledger
    // refuses to charge twice, and says what the first charge was.
    let (error, record) = expect_error(gateway.call("charge", &args, "hk_run1_4").await);
    assert_eq!(error.class, "http_409");
    assert!(!error.retryable);
    assert!(error.message.contains("ch_1"), "{}", error.message);
    assert_eq!(record.status, Some(409));
    let state = ledger.lock().unwrap();
    assert_eq!(state.seen.len(), 2);
    assert_eq!(state.charges.len(), 1);
}

#[tokio::test]
async fn server_errors_are_retryable_and_client_errors_are_not() {
    let (addr, _) = start_ledger().await;
    let gateway = gateway(addr);
    for (code, retryable) in [
        (503, true),
        (500, true),
        (429, true),
        (400, false),
        (404, false),
    ] {
        let (error, record) =
            expect_error(gateway.call("status", &json!({"code": code}), "k").await);
        assert_eq!(error.class, format!("http_{code}"));
        assert_eq!(error.retryable, retryable, "{code}");
        assert!(
            error.message.contains(&format!("answered {code}")),
            "{}",
            error.message
        );
        assert_eq!(record.status, Some(code));
    }
    let (ok, _) = gateway.call("status", &json!({"code": 200}), "k").await;
    assert_eq!(ok.unwrap()["body"], "answered 200");
}

#[tokio::test]
async fn a_slow_tool_times_out_and_may_be_retried() {
    let (addr, _) = start_ledger().await;
    let (error, record) = expect_error(gateway(addr).call("slow", &json!({}), "k").await);
    assert_eq!(error.class, "timeout");
    assert!(error.retryable);
    assert!(error.message.contains("300ms"), "{}", error.message);
    assert!(
        record.duration_ms >= 300 && record.duration_ms < 4_000,
        "{record:?}"
    );
}

#[tokio::test]
async fn get_arguments_go_to_the_query_and_env_headers_are_sent() {
    let (addr, _) = start_ledger().await;
    let (result, record) = gateway(addr)
        .call("echo", &json!({"q": "a b&c", "n": 5}), "hk_echo")
        .await;
    let answer = result.unwrap();
    assert_eq!(answer["body"]["query"], "n=5&q=a+b%26c");
    assert_eq!(record.url, format!("http://{addr}/echo?n=5&q=a+b%26c"));
    assert_eq!(record.request_bytes, 0);
    let headers = &answer["body"]["headers"];
    assert_eq!(headers["idempotency-key"], "hk_echo");
    assert_eq!(headers["x-path"], std::env::var("PATH").unwrap());
}

#[tokio::test]
async fn the_http_tool_returns_any_status_as_a_value() {
    let (addr, _) = start_ledger().await;
    let args = json!({"method": "GET", "url": format!("http://{addr}/status/404")});
    let (result, record) = gateway(addr).call("http", &args, "k").await;
    let answer = result.unwrap();
    assert_eq!(answer["status"], 404);
    assert_eq!(answer["body"], "answered 404");
    assert!(answer["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(record.status, Some(404));

    // A JSON body is sent as JSON; the answer's body stays text.
    let args = json!({
        "method": "POST",
        "url": format!("http://{addr}/charges/acct-9"),
        "json": {"amount": 7},
    });
    let (result, record) = gateway(addr).call("http", &args, "hk_http").await;
    let answer = result.unwrap();
    assert_eq!(answer["status"], 201);
    let receipt: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(receipt["amount"], 7);
    assert_eq!(record.request_bytes, br#"{"amount":7}"#.len() as u64);
}

#[tokio::test]
async fn bytes_that_are_not_utf8_come_back_as_base64() {
    let (addr, _) = start_ledger().await;
    let args = json!({"method": "GET", "url": format!("http://{addr}/bytes")});
    let (result, _) = gateway(addr).call("http", &args, "k").await;
    let answer = result.unwrap();
    assert_eq!(answer["body_base64"], "//4AgGE=");
    assert!(answer.get("body").is_none());
}

#[tokio::test]
async fn a_50_mb_response_fits_the_default_limit() {
    let (addr, _) = start_ledger().await;
    let size = 50 * 1000 * 1000;
    let args = json!({"method": "GET", "url": format!("http://{addr}/big/{size}")});
    let (result, record) = gateway(addr).call("http", &args, "k").await;
    let answer = result.unwrap();
    assert_eq!(answer["body"].as_str().unwrap().len(), size);
    assert_eq!(record.response_bytes, size as u64);
}

#[tokio::test]
async fn a_response_past_the_limit_is_too_large_with_or_without_a_length() {
    let (addr, _) = start_ledger().await;
    let gateway = gateway(addr).with_max_response_bytes(1024 * 1024);
    for path in ["big", "streamed"] {
        let args =
            json!({"method": "GET", "url": format!("http://{addr}/{path}/{}", 3 * 1024 * 1024)});
        let (error, _) = expect_error(gateway.call("http", &args, "k").await);
        assert_eq!(error.class, "too_large", "{path}");
        assert!(!error.retryable);
        assert!(
            error.message.contains("max_response_bytes"),
            "{}",
            error.message
        );
    }
    // Under the limit, the streamed body is read whole.
    let args = json!({"method": "GET", "url": format!("http://{addr}/streamed/{}", 512 * 1024)});
    let (result, record) = gateway.call("http", &args, "k").await;
    assert_eq!(result.unwrap()["body"].as_str().unwrap().len(), 512 * 1024);
    assert_eq!(record.response_bytes, 512 * 1024);
}

#[tokio::test]
async fn redirects_come_back_as_answers_and_are_not_followed() {
    let (addr, _) = start_ledger().await;
    let gateway = gateway(addr);
    let args = json!({"method": "GET", "url": format!("http://{addr}/redirect")});
    let (result, _) = gateway.call("http", &args, "k").await;
    let answer = result.unwrap();
    assert_eq!(answer["status"], 302);
    assert_eq!(
        answer["headers"]["location"],
        "http://169.254.169.254/latest/meta-data/"
    );
    // For a configured tool a 3xx is not a success.
    let (error, _) = expect_error(gateway.call("moved", &json!({}), "k").await);
    assert_eq!(error.class, "http_302");
    assert!(!error.retryable);
    // Following it by hand is refused without a connection attempt.
    let args = json!({"method": "GET", "url": "http://169.254.169.254/latest/meta-data/"});
    let (error, record) = expect_error(gateway.call("http", &args, "k").await);
    assert_eq!(error.class, "egress_refused");
    assert!(
        error.message.contains("cloud metadata"),
        "{}",
        error.message
    );
    assert_eq!(record.status, None);
}

#[tokio::test]
async fn names_are_checked_after_resolution() {
    let (addr, ledger) = start_ledger().await;
    let url = format!("http://localhost:{}/status/200", addr.port());
    let args = json!({"method": "GET", "url": url});

    // Without an allowed range, localhost resolves to loopback: refused.
    let closed = ToolGateway::new(ToolRegistry::default(), EgressPolicy::default()).unwrap();
    let (error, record) = expect_error(closed.call("http", &args, "k").await);
    assert_eq!(error.class, "egress_refused");
    assert!(!error.retryable);
    assert!(
        error.message.contains("127.0.0.1") || error.message.contains("::1"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("resolved from localhost"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("--egress-allow-cidr"),
        "{}",
        error.message
    );
    assert_eq!(record.status, None);

    // An IP literal is refused just the same.
    let literal = json!({"method": "GET", "url": format!("http://{addr}/status/200")});
    let (error, _) = expect_error(closed.call("http", &literal, "k").await);
    assert_eq!(error.class, "egress_refused");
    assert!(
        error.message.contains("127.0.0.0/8 (loopback)"),
        "{}",
        error.message
    );
    assert!(ledger.lock().unwrap().seen.is_empty());

    // With 127.0.0.0/8 allowed, the same name reaches the ledger.
    let (result, _) = gateway(addr).call("http", &args, "k").await;
    assert_eq!(result.unwrap()["status"], 200);
}

#[tokio::test]
async fn connection_failures_are_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args = json!({"method": "GET", "url": format!("http://{addr}/")});
    let (error, record) = expect_error(gateway(addr).call("http", &args, "k").await);
    assert_eq!(error.class, "connect");
    assert!(error.retryable);
    assert_eq!(record.status, None);
    assert_eq!(record.url, format!("http://{addr}/"));
}

#[tokio::test]
async fn bad_arguments_fail_before_any_request() {
    let (addr, ledger) = start_ledger().await;
    let gateway = gateway(addr);
    let (error, record) = expect_error(
        gateway
            .call("charge", &json!({"account": "a", "amount": "5"}), "k")
            .await,
    );
    assert_eq!(error.class, "invalid_input");
    assert!(!error.retryable);
    assert!(error.message.contains("args.amount"), "{}", error.message);
    assert_eq!(
        record,
        CallRecord {
            duration_ms: record.duration_ms,
            ..CallRecord::default()
        }
    );
    let (error, _) = expect_error(gateway.call("refund", &json!({}), "k").await);
    assert_eq!(error.class, "invalid_input");
    assert!(
        error.message.contains("charge, echo, http"),
        "{}",
        error.message
    );
    assert!(ledger.lock().unwrap().seen.is_empty());
}

/// A TLS server on 127.0.0.1 with a certificate for `127.0.0.1` and
/// `localhost` signed by a fresh CA: answers each request with JSON naming
/// its method, path and idempotency key. Returns its port and the CA's PEM.
async fn start_https() -> (u16, String) {
    use tokio_rustls::rustls;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hearth test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
                    if tls.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let mut lines = head.lines();
                let request_line = lines.next().unwrap_or_default().to_string();
                let key = lines
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("idempotency-key")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default();
                let body = json!({"line": request_line, "key": key}).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca_cert.pem())
}

/// https:// tools work against a server whose CA the gateway trusts, and
/// fail clearly (not retried) against one it does not.
#[tokio::test]
async fn https_tools_verify_the_server_certificate() {
    let (port, ca) = start_https().await;
    let config = format!(
        "[[tool]]\nname = \"secure\"\nurl = \"https://localhost:{port}/charges\"\nidempotent = true\n"
    );
    let egress = || EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    let registry = || ToolRegistry::from_str(&config).unwrap();

    let trusting = ToolGateway::new(registry(), egress())
        .unwrap()
        .trusting(ca.as_bytes())
        .unwrap();
    let (outcome, record) = trusting.call("secure", &json!({}), "hk_abc").await;
    let answer = outcome.unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"]["line"], "POST /charges HTTP/1.1");
    assert_eq!(answer["body"]["key"], "hk_abc");
    assert_eq!(record.status, Some(200));
    // The built-in http tool too, by address.
    let args = json!({"method": "GET", "url": format!("https://127.0.0.1:{port}/ping")});
    let (outcome, _) = trusting.call("http", &args, "k").await;
    assert_eq!(outcome.unwrap()["status"], 200);

    let untrusting = ToolGateway::new(registry(), egress()).unwrap();
    let (error, record) = expect_error(untrusting.call("secure", &json!({}), "hk_abc").await);
    assert_eq!(error.class, "tls", "{error:?}");
    assert!(!error.retryable);
    assert!(error.message.contains("--tools-ca"), "{}", error.message);
    assert_eq!(record.status, None);

    let bad = ToolGateway::new(registry(), egress())
        .unwrap()
        .trusting(b"not a certificate")
        .unwrap_err();
    assert!(bad.to_string().contains("certificates"), "{bad}");
}
