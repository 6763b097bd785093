//! Attacks on the API (issue 11), each replayed against a server with the
//! fake VM driver (the real guest agent on the host) to show it now holds:
//! the token's scheme, methods a route does not take, oversized arguments,
//! output that is not UTF-8, a shutdown during a boot, and connections
//! that are idle, slow, or many.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use hearth_sandbox::HearthHome;
use hearth_server::ids::SequentialIds;
use hearth_server::{Server, ServerOptions, ServerParts};
use hearth_store::SystemClock;
use hearth_vm::fake::FakeDriver;

struct Harness {
    dir: tempfile::TempDir,
    home: HearthHome,
    driver: FakeDriver,
    server: Option<Server>,
    url: String,
    http: reqwest::Client,
}

fn options(home: &HearthHome) -> ServerOptions {
    let mut options = ServerOptions::new(home.clone());
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.lease_ttl = Duration::from_secs(2);
    options.shutdown_grace = Duration::from_secs(5);
    options
}

async fn start(driver: &FakeDriver, options: ServerOptions) -> Server {
    let parts = ServerParts {
        driver: Arc::new(driver.clone()),
        clock: SystemClock::shared(),
        ids: Arc::new(SequentialIds::new("t")),
        store: None,
    };
    Server::start(options, parts).await.unwrap()
}

impl Harness {
    async fn new() -> Harness {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut ServerOptions)) -> Harness {
        // Short paths: the guest socket's path must fit a sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("hh")
            .tempdir_in("/tmp")
            .unwrap();
        let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
        hearth_image::write_placeholder(home.images_dir(), "default").unwrap();
        let driver = FakeDriver::locate().expect(
            "the fake driver runs hearth-guest: build it with `cargo build -p hearth-guest`",
        );
        let mut options = options(&home);
        tweak(&mut options);
        let server = start(&driver, options).await;
        let url = format!("http://{}", server.addr());
        Harness {
            dir,
            home,
            driver,
            server: Some(server),
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.home.root().join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token())
    }

    async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::answer(self.request(Method::POST, path).json(&body)).await
    }

    async fn create(&self) -> String {
        let (status, sandbox) = self.post("/v1/sandboxes", json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{sandbox}");
        sandbox["id"].as_str().unwrap().to_string()
    }

    async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        self.assert_clean().await;
    }

    /// No fake VM and no sandbox files are left (allowing a bounded time
    /// for a cut-short boot's cleanup).
    async fn assert_clean(&self) {
        let left = || -> Vec<_> {
            std::fs::read_dir(self.home.sandboxes_dir())
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while (!self.driver.running().is_empty() || !left().is_empty()) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            self.driver.running().is_empty(),
            "VMs left: {:?}",
            self.driver.running()
        );
        assert!(left().is_empty(), "sandbox files left: {:?}", left());
        let _ = &self.dir;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let h = Harness::new().await;
    let token = h.token();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, body) = Harness::answer(
            h.http
                .get(format!("{}/v1/sandboxes", h.url))
                .header("Authorization", format!("{scheme} {token}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
    }
    // Any case of the scheme, but still the right token only.
    let (status, body) = Harness::answer(
        h.http
            .get(format!("{}/v1/sandboxes", h.url))
            .header("Authorization", "bearer hth_wrong"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = Harness::answer(
        h.http
            .get(format!("{}/v1/sandboxes", h.url))
            .header("Authorization", format!("Basic {token}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_and_unknown_routes_need_the_token_too() {
    let h = Harness::new().await;
    let id = h.create().await;
    let paths = [
        "/v1/sandboxes".to_string(),
        format!("/v1/sandboxes/{id}"),
        format!("/v1/sandboxes/{id}/exec"),
        "/v1/openapi.json".to_string(),
        "/v1/no-such-route".to_string(),
    ];
    for path in &paths {
        for method in [Method::OPTIONS, Method::PATCH, Method::GET] {
            let response = h
                .http
                .request(method.clone(), format!("{}{path}", h.url))
                .send()
                .await
                .unwrap();
            let status = response.status();
            // Nothing about the route before the token: not its methods.
            assert!(
                !response.headers().contains_key("allow"),
                "{method} {path}: {:?}",
                response.headers()
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    // With the token, a method the route does not take is a 405.
    let (status, body) = Harness::answer(h.request(Method::OPTIONS, "/v1/sandboxes")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    // /healthz stays open.
    let health = h
        .http
        .get(format!("{}/healthz", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argument_too_large_for_execve_is_413_naming_the_limit() {
    let h = Harness::new().await;
    let id = h.create().await;
    let huge = "x".repeat(5 << 20);
    let (status, body) = h
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["echo", huge]}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    assert_eq!(body["error"]["field"], "argv");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("argv[1]") && message.contains("131071") && message.contains("stdin"),
        "{message}"
    );
    // The sandbox is untouched: the same data on stdin works.
    let data = "y".repeat(1 << 20);
    let (status, out) = h
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["wc", "-c"], "stdin": data}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "1048576");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_says_when_bytes_were_replaced() {
    let h = Harness::new().await;
    let id = h.create().await;
    let exec = format!("/v1/sandboxes/{id}/exec");
    let script = json!({"argv": ["sh", "-c", r"printf 'a\377b'; printf ok >&2"]});
    let (status, out) = h.post(&format!("{exec}?wait=true"), script.clone()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "a\u{FFFD}b");
    assert_eq!(out["stdout_lossy"], true, "{out}");
    assert!(out.get("stderr_lossy").is_none(), "{out}");
    // Clean text and base64 say nothing.
    let (_, out) = h
        .post(
            &format!("{exec}?wait=true"),
            json!({"argv": ["echo", "hi"]}),
        )
        .await;
    assert!(out.get("stdout_lossy").is_none(), "{out}");
    let (_, out) = h
        .post(&format!("{exec}?wait=true&encoding=base64"), script.clone())
        .await;
    assert_eq!(out["stdout"], "Yf9i");
    assert!(out.get("stdout_lossy").is_none(), "{out}");
    // A streamed chunk says it too.
    let response = h
        .request(Method::POST, &exec)
        .json(&script)
        .send()
        .await
        .unwrap();
    let mut events = sse_stream::SseByteStream::new(response.bytes_stream());
    let mut chunks = Vec::new();
    while let Some(Ok(event)) = events.next().await {
        let name = event.event.unwrap_or_default();
        if name == "stdout" || name == "stderr" {
            let data: Value = serde_json::from_str(&event.data.unwrap()).unwrap();
            chunks.push((name, data));
        }
    }
    assert!(
        chunks
            .iter()
            .any(|(name, d)| name == "stdout" && d["lossy"] == true),
        "{chunks:?}"
    );
    assert!(
        chunks
            .iter()
            .all(|(name, d)| name == "stdout" || d.get("lossy").is_none()),
        "{chunks:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_booting_when_the_server_shuts_down_ends_as_host_shutdown() {
    let mut h = Harness::new().await;
    h.driver.faults().hang_boot.store(true, Ordering::SeqCst);
    let create = {
        let request = h.request(Method::POST, "/v1/sandboxes").json(&json!({}));
        tokio::spawn(async move { Harness::answer(request).await })
    };
    // Wait (bounded) until the sandbox is recorded as booting.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, record) = Harness::answer(h.request(Method::GET, "/v1/sandboxes/sb-t-1")).await;
        if record["state"] == "creating" {
            break;
        }
        assert!(Instant::now() < deadline, "never booting: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.server.take().unwrap().shutdown().await.unwrap();
    let (status, body) = create.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    h.assert_clean().await;

    // The next server on the home reads what was recorded.
    h.driver.faults().hang_boot.store(false, Ordering::SeqCst);
    let server = start(&h.driver, options(&h.home)).await;
    let record = server.manager().record("sb-t-1").await.unwrap();
    assert_eq!(
        record.state,
        hearth_store::SandboxState::Stopped,
        "{record:?}"
    );
    assert_eq!(
        record.end_reason.as_deref(),
        Some("host_shutdown"),
        "{record:?}"
    );
    h.server = Some(server);
    h.shutdown().await;
}

/// How many descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's soft open-file limit.
fn open_file_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Wait (bounded) until `done` holds; whether it did.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_leaves_health_and_token_holders_served() {
    const CAP: usize = 200;
    let h = Harness::with(|o| o.http.max_connections = CAP).await;
    let addr: std::net::SocketAddr = h.url.trim_start_matches("http://").parse().unwrap();
    let before = open_fds();
    // The server runs in this process: its RSS is ours (the flood's client
    // half adds a few hundred bytes per connection).
    let baseline = rss_mib();
    // The attack: thousands of connections that never send a byte (as many
    // as this process may open, with room to spare).
    let flood = 3000.min(open_file_limit().saturating_sub(before + CAP + 200) / 2);
    assert!(
        flood > 2 * CAP,
        "the open-file limit leaves room for {flood}"
    );
    let mut idle = Vec::with_capacity(flood);
    for _ in 0..flood {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The server keeps about CAP of them (the others were closed for newer
    // ones), not one per connection.
    assert!(
        eventually(|| open_fds() < before + flood + 2 * CAP).await,
        "the server holds {} descriptors for {flood} idle connections",
        open_fds().saturating_sub(before + flood)
    );
    // Health and a token holder's requests are answered, on new connections.
    for _ in 0..3 {
        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let health = fresh
            .get(format!("{}/healthz", h.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let listed = fresh
            .get(format!("{}/v1/sandboxes", h.url))
            .bearer_auth(h.token())
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), StatusCode::OK);
    }
    // Memory stays bounded during the flood (the server keeps at most CAP
    // connections' buffers; before the cap, 20,000 idle connections left
    // it at 663 MB)...
    let during = rss_mib();
    assert!(
        during < baseline + 48,
        "RSS {during} MiB during the flood against {baseline} MiB before"
    );
    // ...and closing the flood leaves nothing behind on the server.
    drop(idle);
    assert!(
        eventually(|| open_fds() <= before + 8).await,
        "{} descriptors left after the flood closed",
        open_fds().saturating_sub(before)
    );
    let after = rss_mib();
    eprintln!("flood RSS: {baseline} MiB before, {during} MiB during, {after} MiB after");
    assert!(
        after < baseline + 48,
        "RSS {after} MiB after the flood against {baseline} MiB before"
    );
    h.shutdown().await;
}

/// This process's resident set, MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed_but_event_streams_are_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::with(|o| {
        o.http.header_timeout = Duration::from_secs(1);
        o.http.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let addr: std::net::SocketAddr = h.url.trim_start_matches("http://").parse().unwrap();
    // A head that never ends, and a connection that never speaks: both are
    // closed by the server (read gives EOF or a reset), within a bound far
    // above the timeouts.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    for stream in [&mut slow, &mut silent] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buf))
            .await
            .expect("the server closes the connection");
        assert!(read.is_err() || !String::from_utf8_lossy(&buf).contains("200 OK"));
    }
    // An exec's event stream that is quiet for longer than both timeouts
    // still gets its output and its end.
    let id = h.create().await;
    let response = h
        .request(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .json(&json!({"argv": ["sh", "-c", "sleep 3; echo done"]}))
        .send()
        .await
        .unwrap();
    let mut events = sse_stream::SseByteStream::new(response.bytes_stream());
    let mut seen = Vec::new();
    while let Some(Ok(event)) = events.next().await {
        seen.push((
            event.event.unwrap_or_default(),
            event.data.unwrap_or_default(),
        ));
    }
    assert!(
        seen.iter()
            .any(|(n, d)| n == "stdout" && d.contains("done")),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(|(n, _)| n.as_str()),
        Some("exit"),
        "{seen:?}"
    );
    h.shutdown().await;
}

/// Item 4: what requests buffer is bounded server-wide, not only per
/// request. With a small budget, collected output that does not fit is
/// refused with 503 (and its command killed), an upload that finds no room
/// is refused before its body is read, and the room comes back when the
/// requests holding it end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_output_and_uploads_share_one_server_wide_budget() {
    // 13 MiB. A collected exec printing 4 MB of text holds its output (a
    // vector grown to 4 MiB), then its text and the JSON answer (3.8 MiB
    // each): 11.6 MiB, which fits alone but not next to an upload (2 MiB).
    // One printing 6 MB (8 + 5.7 + 5.7 MiB) never fits.
    let h = Harness::with(|o| o.buffer_budget = hearth_proto::ByteSize::mib(13)).await;
    let id = h.create().await;
    let exec = |bytes: u64| json!({"argv": ["sh", "-c", format!("head -c {bytes} /dev/zero | tr '\\0' a")]});
    let path = format!("/v1/sandboxes/{id}/exec?wait=true");
    let (status, body) = h.post(&path, exec(4_000_000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"].as_str().unwrap().len(), 4_000_000);

    let (status, body) = h.post(&path, exec(6_000_000)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "server_busy", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--buffer-budget") && message.contains("stream"),
        "{body}"
    );

    // An upload whose client is slow holds its room while it lasts...
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let slow = h
        .request(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/files?path=/root/slow"),
        )
        .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)));
    let slow = tokio::spawn(Harness::answer(slow));
    tx.send(Ok(vec![1u8; 1000])).await.unwrap();
    // ...so a collected exec needing more than what is left is refused...
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = h.post(&path, exec(4_000_000)).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"]["code"], "server_busy", "{body}");
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            Instant::now() < deadline,
            "the slow upload never held its room"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...while a second upload still fits next to it (2 + 2 MiB).
    let two = h
        .request(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/files?path=/root/two"),
        )
        .body(vec![2u8; 1000]);
    let (status, body) = Harness::answer(two).await;
    assert_eq!(status, StatusCode::OK, "two uploads fit in 13 MiB: {body}");

    // The slow upload ends: all the room is back.
    tx.send(Ok(vec![1u8; 1000])).await.unwrap();
    drop(tx);
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h.post(&path, exec(4_000_000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.shutdown().await;
}

/// The items of `rx` as a stream.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
