//! The server's sandbox state machine against the fake VM driver (the real
//! guest agent on the host, in its own PID namespace): boots in
//! milliseconds, so the awkward moments can each be tested: destroy during
//! boot, boot failures, a VM dying mid-exec, a timeout firing while an exec
//! streams, a guest channel that breaks, and a server that dies with live
//! sandboxes.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use hearth_sandbox::HearthHome;
use hearth_server::ids::SequentialIds;
use hearth_server::{Capacity, Server, ServerOptions, ServerParts};
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

fn test_home() -> (tempfile::TempDir, HearthHome) {
    // Short paths: the guest socket's path must fit a sockaddr_un.
    let dir = tempfile::Builder::new()
        .prefix("hh")
        .tempdir_in("/tmp")
        .unwrap();
    let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
    hearth_image::write_placeholder(home.images_dir(), "default").unwrap();
    (dir, home)
}

fn options(home: &HearthHome) -> ServerOptions {
    let mut options = ServerOptions::new(home.clone());
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.lease_ttl = Duration::from_secs(2);
    options.shutdown_grace = Duration::from_secs(5);
    options
}

fn driver() -> FakeDriver {
    FakeDriver::locate()
        .expect("the fake driver runs hearth-guest: build it with `cargo build -p hearth-guest`")
}

async fn start(home: &HearthHome, driver: &FakeDriver, options: ServerOptions) -> Server {
    let parts = ServerParts {
        driver: Arc::new(driver.clone()),
        clock: SystemClock::shared(),
        ids: Arc::new(SequentialIds::new("t")),
        store: None,
    };
    let _ = home;
    Server::start(options, parts).await.unwrap()
}

impl Harness {
    async fn new() -> Harness {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut ServerOptions)) -> Harness {
        let (dir, home) = test_home();
        let driver = driver();
        let mut options = options(&home);
        tweak(&mut options);
        let server = start(&home, &driver, options).await;
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

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn create(&self, body: Value) -> String {
        let (status, sandbox) = self.post("/v1/sandboxes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{sandbox}");
        assert_eq!(sandbox["state"], "running");
        sandbox["id"].as_str().unwrap().to_string()
    }

    /// The kinds of a sandbox's events, in order.
    async fn kinds(&self, id: &str) -> Vec<String> {
        let (_, events) = self.get(&format!("/v1/sandboxes/{id}/events")).await;
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    }

    /// Poll the sandbox until `done` holds (bounded).
    async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, record) = self.get(&format!("/v1/sandboxes/{id}")).await;
            if done(&record) || Instant::now() > deadline {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Server-sent events of a streaming response, as (name, data).
    async fn sse(response: reqwest::Response) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        let mut stream = sse_stream::SseByteStream::new(response.bytes_stream());
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { break };
            if let Some(data) = event.data.filter(|d| !d.is_empty()) {
                let name = event.event.unwrap_or_else(|| "message".into());
                events.push((
                    name,
                    serde_json::from_str(&data).unwrap_or(Value::String(data)),
                ));
            }
        }
        events
    }

    async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        // A sandbox whose boot was cut short is cleaned up by its monitor
        // once its VM has exited: allow it a bounded time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.is_clean() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.assert_clean();
    }

    fn is_clean(&self) -> bool {
        let files = std::fs::read_dir(self.home.sandboxes_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        self.driver.running().is_empty() && files == 0
    }

    fn assert_clean(&self) {
        assert!(
            self.driver.running().is_empty(),
            "VMs left: {:?}",
            self.driver.running()
        );
        let sandboxes = self.home.sandboxes_dir();
        let left: Vec<_> = std::fs::read_dir(&sandboxes)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "sandbox files left in {}: {left:?}",
            sandboxes.display()
        );
        let _ = &self.dir;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execs_files_and_the_event_log_work_on_a_fake_vm() {
    let h = Harness::new().await;
    let id = h.create(json!({"labels": {"team": "a"}})).await;
    assert_eq!(id, "sb-t-1");
    let (status, out) = h
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["sh", "-c", "echo hi; echo err >&2; exit 3"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["exit"]["code"], 3);
    let path = format!(
        "/v1/sandboxes/{id}/files?path={}",
        h.dir.path().join("f.txt").display()
    );
    let response = h
        .request(reqwest::Method::PUT, &path)
        .body("content")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = h.request(reqwest::Method::GET, &path).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "content");
    let (status, record) = h.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["state"], "stopped");
    assert_eq!(record["end_reason"], "destroyed");
    assert_eq!(
        h.kinds(&id).await,
        [
            "sandbox.creating",
            "sandbox.running",
            "exec.started",
            "exec.finished",
            "file.written",
            "file.read",
            "sandbox.stopping",
            "sandbox.stopped"
        ]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_during_boot_stops_the_boot() {
    let h = Harness::new().await;
    h.driver
        .faults()
        .hang_boot
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let create = {
        let request = h
            .request(reqwest::Method::POST, "/v1/sandboxes")
            .json(&json!({}));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    // The sandbox is recorded as creating while its VM "boots".
    let record = h.wait_for("sb-t-1", |r| r["state"] == "creating").await;
    assert_eq!(record["state"], "creating", "{record}");
    let (status, record) = h.delete("/v1/sandboxes/sb-t-1").await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "stopped", "{record}");
    assert_eq!(record["end_reason"], "destroyed");
    assert_eq!(record["end_message"], "destroyed while booting");
    let answer = create.await.unwrap();
    assert_eq!(answer.status(), StatusCode::CONFLICT);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "sandbox_ended", "{body}");
    assert_eq!(
        h.kinds("sb-t-1").await,
        ["sandbox.creating", "sandbox.stopped"]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_failures_are_recorded_with_the_reason() {
    let h = Harness::new().await;
    // The guest crashes while booting: 502, recorded failed with the
    // console's last lines.
    h.driver
        .faults()
        .crash_boot
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = h.post("/v1/sandboxes", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "boot_failed");
    let (_, record) = h.get("/v1/sandboxes/sb-t-1").await;
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["end_reason"], "boot_failed");
    let (_, events) = h.get("/v1/sandboxes/sb-t-1/events").await;
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "sandbox.failed");
    assert!(
        last["data"]["message"].as_str().unwrap().contains("boot"),
        "{last}"
    );
    h.driver
        .faults()
        .crash_boot
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // The VMM cannot start at all: 503, recorded failed too. The client
    // is told what failed and the request's id; the OS error and the host
    // paths stay in the server's log.
    h.driver
        .faults()
        .fail_launch
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let response = h
        .request(reqwest::Method::POST, "/v1/sandboxes")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "vm_unavailable", "{body}");
    assert_eq!(body["error"]["request_id"], request_id.as_str(), "{body}");
    assert!(request_id.starts_with("req-"), "{request_id}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("could not start or reach the VM"),
        "{body}"
    );
    assert!(!message.contains("injected"), "no raw OS error: {body}");
    assert!(!body.to_string().contains('/'), "no host path: {body}");
    // A missing image names the image, not the host's image directory.
    let (status, body) = h.post("/v1/sandboxes", json!({"image": "nope"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "image", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("image 'nope' is not built"), "{body}");
    assert!(
        !body.to_string().contains(&*h.dir.path().to_string_lossy()),
        "no host path: {body}"
    );
    let (_, record) = h.get("/v1/sandboxes/sb-t-2").await;
    assert_eq!(record["state"], "failed", "{record}");
    h.driver
        .faults()
        .fail_launch
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // The admission reservations were given back: a healthy create works.
    let (_, before) = h.get("/metrics").await;
    assert!(
        before.as_str().unwrap().contains("hearth_sandboxes"),
        "{before}"
    );
    let id = h.create(json!({})).await;
    assert_eq!(id, "sb-t-3");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_dies_mid_exec_ends_the_exec_and_the_sandbox() {
    let h = Harness::new().await;
    let id = h.create(json!({})).await;
    let response = h
        .request(reqwest::Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .json(&json!({"argv": ["sh", "-c", "echo started; exec sleep 600"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = sse_stream::SseByteStream::new(response.bytes_stream());
    // Wait for the command to be running before the VM dies.
    loop {
        let event = stream.next().await.unwrap().unwrap();
        if event.event.as_deref() == Some("stdout") {
            break;
        }
    }
    assert!(h.driver.kill(&id));
    let mut last = None;
    while let Some(Ok(event)) = stream.next().await {
        if event.data.as_deref().is_some_and(|d| !d.is_empty()) {
            last = event.event;
        }
    }
    assert_eq!(
        last.as_deref(),
        Some("error"),
        "the stream ends with an error"
    );
    let record = h.wait_for(&id, |r| r["state"] == "failed").await;
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["end_reason"], "vm_crashed", "{record}");
    let kinds = h.kinds(&id).await;
    assert_eq!(
        kinds,
        [
            "sandbox.creating",
            "sandbox.running",
            "exec.started",
            "exec.finished",
            "sandbox.failed"
        ]
    );
    let (_, events) = h.get(&format!("/v1/sandboxes/{id}/events")).await;
    assert_eq!(events["events"][3]["data"]["reason"], "failed");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_channel_that_keeps_breaking_fails_the_sandbox_and_frees_its_slot() {
    let h = Harness::with(|o| {
        o.capacity = Capacity {
            max_sandboxes: 1,
            ..o.capacity
        }
    })
    .await;
    let id = h.create(json!({})).await;
    let (status, body) = h.post("/v1/sandboxes", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    // Broken once: the host reconnects, the sandbox stays running and its
    // execs work again (one sent while it reconnects may get a 502).
    assert!(h.driver.break_channel(&id));
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let (status, out) = h
            .post(
                &format!("/v1/sandboxes/{id}/exec?wait=true"),
                json!({"argv": ["echo", "after"]}),
            )
            .await;
        if status == StatusCode::OK || Instant::now() > deadline {
            break out;
        }
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(out["stdout"], "after\n", "{out}");
    let (_, record) = h.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(record["state"], "running", "{record}");

    // Breaking again and again: the sandbox ends guest_channel_lost.
    let faults = h.driver.faults();
    faults
        .break_channels
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(h.driver.break_channel(&id));
    let record = h.wait_for(&id, |r| r["state"] == "failed").await;
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["end_reason"], "guest_channel_lost", "{record}");
    let message = record["end_message"].as_str().unwrap();
    assert!(message.contains("host channel"), "{record}");
    assert_eq!(
        h.kinds(&id).await.last().map(String::as_str),
        Some("sandbox.failed")
    );
    assert!(h.driver.running().is_empty(), "{:?}", h.driver.running());
    let (_, metrics) = h.get("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"hearth_sandbox_ends_total{reason="guest_channel_lost"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"hearth_sandboxes{state="running"} 0"#),
        "{metrics}"
    );
    faults
        .break_channels
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // Its admission slot was released: the next create is admitted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = h.post("/v1/sandboxes", json!({})).await;
        if status == StatusCode::CREATED {
            assert_eq!(body["state"], "running", "{body}");
            break;
        }
        assert!(
            status == StatusCode::TOO_MANY_REQUESTS && Instant::now() < deadline,
            "{status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_that_fires_while_an_exec_streams_ends_both() {
    let h = Harness::new().await;
    let id = h.create(json!({"timeout": "2s"})).await;
    let response = h
        .request(reqwest::Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .json(&json!({"argv": ["sh", "-c", "while true; do echo tick; sleep 0.05; done"]}))
        .send()
        .await
        .unwrap();
    let events = Harness::sse(response).await;
    let ticks = events.iter().filter(|(name, _)| name == "stdout").count();
    assert!(ticks > 0, "{events:?}");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{data}");
    let record = h.wait_for(&id, |r| r["state"] == "timed_out").await;
    assert_eq!(record["state"], "timed_out", "{record}");
    assert_eq!(record["end_reason"], "timed_out");
    let kinds = h.kinds(&id).await;
    assert_eq!(kinds.last().map(String::as_str), Some("sandbox.timed_out"));
    assert!(kinds.contains(&"exec.finished".to_string()), "{kinds:?}");
    h.shutdown().await;
}

/// A child process of `a_server_killed_with_live_sandboxes_leaves_them_lost`:
/// a server on `HEARTH_TEST_HOME` with the fake driver, printing its URL.
#[test]
#[ignore = "a child process of a_server_killed_with_live_sandboxes_leaves_them_lost"]
fn server_process() {
    let root = std::env::var("HEARTH_TEST_HOME").expect("home");
    let images = std::env::var("HEARTH_TEST_IMAGES").expect("images");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let home = HearthHome::new(root, images);
        let server = start(&home, &driver(), options(&home)).await;
        println!("URL http://{}", server.addr());
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_live_sandboxes_leaves_them_lost_and_nothing_running() {
    let (dir, home) = test_home();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "server_process",
            "--ignored",
            "--nocapture",
            "--quiet",
        ])
        .env("HEARTH_TEST_HOME", home.root())
        .env("HEARTH_TEST_IMAGES", home.images_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Killed however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("URL ").map(str::to_string))
    })
    .await
    .unwrap()
    .expect("the server process printed its URL");
    let token = std::fs::read_to_string(home.root().join("token")).unwrap();
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created: Value = http
            .post(format!("{url}/v1/sandboxes"))
            .bearer_auth(token.trim())
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(created["state"], "running", "{created}");
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let agents = |home: &HearthHome| -> Vec<u32> {
        let needle = home.root().display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                        let c = String::from_utf8_lossy(&c);
                        argv0.ends_with(b"hearth-guest")
                            && c.contains("serve-unix")
                            && c.contains(&needle)
                    })
                    .unwrap_or(false)
            })
            .collect()
    };
    assert_eq!(agents(&home).len(), 2, "two fake VMs run");

    // kill -9: the VMs die with the server.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agents(&home).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(agents(&home).is_empty(), "fake VMs outlived their server");

    // The next server on this home records them lost and removes their
    // files.
    let driver = driver();
    let server = start(&home, &driver, options(&home)).await;
    for id in &ids {
        let record = server.manager().record(id).await.unwrap();
        assert_eq!(record.state, hearth_store::SandboxState::Lost, "{record:?}");
        let message = record.end_message.unwrap();
        assert!(
            message.contains("stopped without shutting it down"),
            "{message}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(home.sandboxes_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox files left: {left:?}");
    server.shutdown().await.unwrap();
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_sandbox_is_recorded_as_such_in_its_events() {
    let h = Harness::new().await;
    let creating = |events: &Value| events["events"][0].clone();
    let privileged = h.create(json!({"privileged": true})).await;
    let confined = h.create(json!({})).await;
    for (id, expected) in [(&privileged, true), (&confined, false)] {
        let (status, events) = h.get(&format!("/v1/sandboxes/{id}/events")).await;
        assert_eq!(status, StatusCode::OK, "{events}");
        let event = creating(&events);
        assert_eq!(event["kind"], "sandbox.creating", "{events}");
        assert_eq!(event["data"]["privileged"], expected, "{events}");
        // The fake VM's agent runs in host mode, which confines nothing,
        // and says so.
        let running = &events["events"][1];
        assert_eq!(running["kind"], "sandbox.running", "{events}");
        assert_eq!(running["data"]["guest"]["workload_isolation"], false);
    }
    let (status, body) = h.post("/v1/sandboxes", json!({"privileged": "yes"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "privileged", "{body}");
    for id in [privileged, confined] {
        let (status, _) = h.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    h.shutdown().await;
}

/// An HTTP server on 127.0.0.1 answering every request with `size` bytes,
/// one connection at a time.
fn http_server(size: usize) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf);
            let _ = write!(
                socket,
                "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
            );
            let _ = socket.write_all(&vec![b'x'; size]);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxs_network_is_its_policy_and_every_attempt_is_an_event() {
    let port = http_server(5000);
    let hosts = hearth_net::HostsOverride::parse(
        "127.0.0.1 svc.test blocked.test\n",
        Arc::new(hearth_net::SystemResolver),
    )
    .unwrap();
    let h = Harness::with(|options| {
        options.network.egress = Arc::new(hearth_net::EgressPolicy::new(vec!["127.0.0.0/8"
            .parse()
            .unwrap()]));
        options.network.resolver = Arc::new(hosts);
    })
    .await;

    // A bad entry is named, and nothing is created.
    let (status, body) = h
        .post(
            "/v1/sandboxes",
            json!({"network": {"mode": "allowlist", "allow": ["svc.test", "bad*name"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "network.allow", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad*name"),
        "{body}"
    );

    let id = h
        .create(json!({"network": {"mode": "allowlist", "allow": [format!("svc.test:{port}")], "max_bytes": 1_000_000}}))
        .await;
    let none = h.create(json!({})).await;
    let curl = |id: String, name: &'static str| {
        let h = &h;
        async move {
            let (status, out) = h
                .post(
                    &format!("/v1/sandboxes/{id}/exec?wait=true"),
                    json!({"argv": ["sh", "-c", format!("curl -s -o /dev/null -w '%{{http_code}} %{{size_download}}' http://{name}:{port}/")]}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{out}");
            out["stdout"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(curl(id.clone(), "svc.test").await, "200 5000");
    assert!(curl(id.clone(), "blocked.test").await.starts_with("403 "));
    // Without a network, execs get no proxy at all: the name does not
    // resolve in the fake VM's host mode, and nothing is audited.
    assert!(!curl(none.clone(), "svc.test").await.starts_with("200"));

    let (_, events) = h.get(&format!("/v1/sandboxes/{id}/events")).await;
    let events = events["events"].as_array().unwrap().clone();
    let creating = &events[0]["data"];
    assert_eq!(creating["network"]["mode"], "allowlist", "{creating}");
    assert_eq!(creating["network"]["max_bytes"], 1_000_000, "{creating}");
    // A connection is recorded as it ends, just after the exec saw it end.
    let deadline = Instant::now() + Duration::from_secs(10);
    let connections = loop {
        let (_, events) = h.get(&format!("/v1/sandboxes/{id}/events")).await;
        let connections: Vec<Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "net.connection")
            .map(|e| e["data"].clone())
            .collect();
        if connections.len() >= 2 || Instant::now() > deadline {
            break connections;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(connections.len(), 2, "{connections:#?}");
    let allowed = connections.iter().find(|c| c["allowed"] == true).unwrap();
    assert_eq!(allowed["host"], "svc.test");
    assert_eq!(allowed["via"], "proxy");
    assert_eq!(allowed["addr"], format!("127.0.0.1:{port}"));
    assert!(allowed["bytes_down"].as_u64().unwrap() > 5000, "{allowed}");
    let refused = connections.iter().find(|c| c["allowed"] == false).unwrap();
    assert_eq!(refused["host"], "blocked.test");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("not on the allowlist"),
        "{refused}"
    );
    let (_, none_events) = h.get(&format!("/v1/sandboxes/{none}/events")).await;
    assert!(none_events["events"][0]["data"].get("network").is_none());

    let metrics = h
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hearth_egress_connections_total{verdict=\"allowed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hearth_egress_connections_total{verdict=\"refused\"} 1"),
        "{metrics}"
    );
    let down: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hearth_egress_bytes_total{direction=\"down\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(down > 5000, "{metrics}");
    for id in [id, none] {
        let (status, _) = h.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    h.shutdown().await;
}
