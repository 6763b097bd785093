//! The reverse tunnel against the fake VM driver (the real guest agent on
//! the host, in its own PID namespace): programs inside the sandbox make
//! plain HTTP requests to a loopback address and the test answers them.
//! Needs `cargo build -p hearth-guest` first.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use hearth_proto::ErrorCode;
use hearth_sandbox::{ExecOptions, HearthHome, Sandbox, SandboxOptions, Tunnel, TunnelCall};
use hearth_vm::fake::FakeDriver;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

struct Fake {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
}

impl Fake {
    async fn new() -> Fake {
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
        let sandbox = Sandbox::create(&home, &driver, SandboxOptions::default())
            .await
            .expect("fake sandbox boots");
        Fake { _dir: dir, sandbox }
    }

    /// Run a Python script in the sandbox with `HEARTH_RUN_URL` pointing at
    /// the tunnel; returns its stdout, failing on a non-zero exit.
    async fn python(&self, tunnel_address: std::net::SocketAddr, script: &str) -> String {
        let mut env = BTreeMap::new();
        env.insert(
            "HEARTH_RUN_URL".to_owned(),
            format!("http://{tunnel_address}/v1/runs/r1"),
        );
        let options = ExecOptions {
            env,
            timeout: Some(Duration::from_secs(120)),
            ..ExecOptions::new(["python3", "-c", script])
        };
        let out = self.sandbox.run(options, None).await.expect("exec runs");
        assert_eq!(
            out.report.code,
            0,
            "python failed: {}\n{}",
            out.stdout_text(),
            out.stderr_text()
        );
        out.stdout_text()
    }

    /// Destroy the sandbox (its fake VM and files).
    async fn destroy(self) {
        self.sandbox.destroy().await;
    }
}

/// Answer `count` calls, then hand the tunnel back.
fn answer_with(
    mut tunnel: Tunnel,
    count: usize,
    answer: impl Fn(&TunnelCall) -> (u16, Option<&'static str>, Bytes) + Send + 'static,
) -> tokio::task::JoinHandle<Tunnel> {
    tokio::spawn(async move {
        for _ in 0..count {
            let call = tunnel.next().await.expect("a call arrives");
            let (status, content_type, body) = answer(&call);
            call.respond(status, content_type, body).await;
        }
        tunnel
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_posts_json_through_the_tunnel_and_gets_the_hosts_answer() {
    let fake = Fake::new().await;
    let tunnel = fake
        .sandbox
        .open_tunnel("127.0.0.1:0", 1 << 20)
        .await
        .unwrap();
    let address = tunnel.address();
    assert!(
        address.ip().is_loopback() && address.port() != 0,
        "{address}"
    );
    let host = answer_with(tunnel, 1, |call| {
        assert_eq!(call.method(), "POST");
        assert_eq!(call.path(), "/v1/runs/r1/steps?x=1");
        assert_eq!(call.content_type(), Some("application/json"));
        let request: Value = serde_json::from_slice(call.body()).unwrap();
        let answer = json!({
            "action": "execute",
            "name": request["name"],
            "next_seq": request["seq"].as_i64().unwrap() + 1,
        });
        (
            201,
            Some("application/json"),
            Bytes::from(answer.to_string()),
        )
    });
    let script = r#"
import json, os, urllib.request
url = os.environ["HEARTH_RUN_URL"] + "/steps?x=1"
body = json.dumps({"seq": 3, "name": "summarize", "args": {"text": "hi"}}).encode()
req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req) as r:
    print(r.status, r.headers["Content-Type"], json.dumps(json.loads(r.read()), sort_keys=True))
"#;
    let out = fake.python(address, script).await;
    assert_eq!(
        out,
        "201 application/json {\"action\": \"execute\", \"name\": \"summarize\", \"next_seq\": 4}\n"
    );
    host.await.unwrap();
    fake.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_concurrent_requests_are_answered_out_of_order() {
    let fake = Fake::new().await;
    let mut tunnel = fake
        .sandbox
        .open_tunnel("127.0.0.1:0", 1 << 20)
        .await
        .unwrap();
    let address = tunnel.address();
    let host = tokio::spawn(async move {
        // All eight arrive before any is answered: they are in flight at once.
        let mut calls = Vec::new();
        for _ in 0..8 {
            calls.push(tunnel.next().await.expect("a call arrives"));
        }
        let mut answered = Vec::new();
        for (order, call) in calls.into_iter().rev().enumerate() {
            answered.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * order as u64)).await;
                let body = format!(
                    "answer {} {}",
                    call.path(),
                    String::from_utf8_lossy(call.body())
                );
                call.respond(200, Some("text/plain"), Bytes::from(body))
                    .await;
            }));
        }
        for task in answered {
            task.await.unwrap();
        }
        tunnel
    });
    let script = r#"
import os, threading, urllib.request
base = os.environ["HEARTH_RUN_URL"]
results = {}
def call(i):
    req = urllib.request.Request(f"{base}/n/{i}", data=str(i).encode(), method="POST")
    with urllib.request.urlopen(req) as r:
        results[i] = f"{r.status} {r.read().decode()}"
threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
for i in range(8): print(i, results[i])
"#;
    let out = fake.python(address, script).await;
    let expected: String = (0..8)
        .map(|i| format!("{i} 200 answer /v1/runs/r1/n/{i} {i}\n"))
        .collect();
    assert_eq!(out, expected);
    host.await.unwrap();
    fake.destroy().await;
}

fn pattern(len: usize, mul: usize, add: usize, modulo: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * mul + add) % modulo) as u8).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn five_megabytes_travel_each_way() {
    const LEN: usize = 5 * 1024 * 1024;
    let fake = Fake::new().await;
    let tunnel = fake
        .sandbox
        .open_tunnel("127.0.0.1:0", 8 << 20)
        .await
        .unwrap();
    let address = tunnel.address();
    let answer = Bytes::from(pattern(LEN, 13, 1, 253));
    let answer_digest = hex::encode(Sha256::digest(&answer));
    let host = answer_with(tunnel, 1, move |call| {
        assert_eq!(call.body().len(), LEN);
        assert!(
            call.body()[..] == pattern(LEN, 7, 3, 251)[..],
            "the request body arrived intact"
        );
        (200, Some("application/octet-stream"), answer.clone())
    });
    let script = r#"
import hashlib, os, urllib.request
n = 5 * 1024 * 1024
data = bytes((i * 7 + 3) % 251 for i in range(n))
req = urllib.request.Request(os.environ["HEARTH_RUN_URL"] + "/persist", data=data, method="POST",
                             headers={"Content-Type": "application/octet-stream"})
with urllib.request.urlopen(req) as r:
    body = r.read()
print(r.status, len(body), hashlib.sha256(body).hexdigest())
"#;
    let out = fake.python(address, script).await;
    assert_eq!(out, format!("200 {LEN} {answer_digest}\n"));
    host.await.unwrap();
    fake.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_gets_413_and_never_reaches_the_host() {
    let fake = Fake::new().await;
    let mut tunnel = fake.sandbox.open_tunnel("127.0.0.1:0", 1000).await.unwrap();
    let address = tunnel.address();
    let script = r#"
import http.client, json, os, urllib.error, urllib.request
base = os.environ["HEARTH_RUN_URL"]
try:
    urllib.request.urlopen(urllib.request.Request(base + "/big", data=b"x" * 2000, method="POST"))
    print("accepted")
except urllib.error.HTTPError as e:
    print(e.code, json.loads(e.read())["error"]["code"])
# Chunked, so the length is only known once the body is read.
host, port = base.split("/")[2].split(":")
c = http.client.HTTPConnection(host, int(port))
c.request("POST", "/v1/runs/r1/chunked", body=iter([b"y" * 600, b"y" * 600]), encode_chunked=True)
r = c.getresponse()
print(r.status, json.loads(r.read())["error"]["code"])
with urllib.request.urlopen(urllib.request.Request(base + "/small", data=b"x" * 1000, method="POST")) as r:
    print(r.status, r.read().decode())
"#;
    let program = {
        let sandbox = fake.sandbox.clone();
        let script = script.to_owned();
        let mut env = BTreeMap::new();
        env.insert(
            "HEARTH_RUN_URL".to_owned(),
            format!("http://{address}/v1/runs/r1"),
        );
        tokio::spawn(async move {
            let options = ExecOptions {
                env,
                timeout: Some(Duration::from_secs(60)),
                ..ExecOptions::new(["python3", "-c", &script])
            };
            sandbox.run(options, None).await.unwrap()
        })
    };
    // The first request the host sees is the one within the limit.
    let call = tunnel.next().await.expect("the small request arrives");
    assert_eq!(call.path(), "/v1/runs/r1/small");
    assert_eq!(call.body().len(), 1000);
    call.respond(200, None, Bytes::from_static(b"fits")).await;
    let out = program.await.unwrap();
    assert_eq!(
        out.stdout_text(),
        "413 too_large\n413 too_large\n200 fits\n",
        "{}",
        out.stderr_text()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tunnel.next())
            .await
            .is_err(),
        "nothing else reached the host"
    );
    fake.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_tunnel_answers_a_waiting_program_502_and_closes_the_listener() {
    let fake = Fake::new().await;
    let mut tunnel = fake
        .sandbox
        .open_tunnel("127.0.0.1:0", 1 << 20)
        .await
        .unwrap();
    let address = tunnel.address();
    let script = r#"
import json, os, socket, urllib.error, urllib.request
base = os.environ["HEARTH_RUN_URL"]
try:
    urllib.request.urlopen(urllib.request.Request(base + "/tools/slow", data=b"{}", method="POST"))
    print("answered")
except urllib.error.HTTPError as e:
    error = json.loads(e.read())["error"]
    print(e.code, error["code"], error["message"])
host, port = base.split("/")[2].split(":")
try:
    socket.create_connection((host, int(port)), timeout=5)
    print("still listening")
except ConnectionRefusedError:
    print("refused")
"#;
    let program = {
        let sandbox = fake.sandbox.clone();
        let mut env = BTreeMap::new();
        env.insert(
            "HEARTH_RUN_URL".to_owned(),
            format!("http://{address}/v1/runs/r1"),
        );
        tokio::spawn(async move {
            let options = ExecOptions {
                env,
                timeout: Some(Duration::from_secs(60)),
                ..ExecOptions::new(["python3", "-c", script])
            };
            sandbox.run(options, None).await.unwrap()
        })
    };
    let call = tunnel.next().await.expect("the request arrives");
    assert_eq!(call.path(), "/v1/runs/r1/tools/slow");
    drop(tunnel);
    let out = program.await.unwrap();
    assert_eq!(
        out.stdout_text(),
        "502 engine_unavailable the Hearth engine is not reachable (the host channel closed); the run will be relaunched from its journal\nrefused\n",
        "{}",
        out.stderr_text()
    );
    // Answering after the tunnel ended does nothing, and does not panic.
    call.respond(200, None, Bytes::from_static(b"late")).await;
    // The sandbox is unharmed: a new tunnel works.
    let tunnel = fake.sandbox.open_tunnel("127.0.0.1:0", 1024).await.unwrap();
    let reopened = tunnel.address();
    let host = answer_with(tunnel, 1, |_| (204, None, Bytes::new()));
    let out = fake
        .python(
            reopened,
            "import urllib.request, os; print(urllib.request.urlopen(os.environ['HEARTH_RUN_URL']).status)",
        )
        .await;
    assert_eq!(out, "204\n");
    host.await.unwrap();
    fake.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listen_address_that_is_not_loopback_is_refused() {
    let fake = Fake::new().await;
    for (listen, says) in [
        ("0.0.0.0:0", "not a loopback address"),
        ("10.0.2.15:8080", "not a loopback address"),
        ("localhost:80", "not a socket address"),
    ] {
        let error = fake.sandbox.open_tunnel(listen, 1024).await.unwrap_err();
        assert_eq!(
            error.guest_code(),
            Some(ErrorCode::InvalidArgument),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(says), "{listen}: {message}");
        assert!(
            message.contains("127.0.0.1:0"),
            "says what to do: {message}"
        );
    }
    let error = fake
        .sandbox
        .open_tunnel("127.0.0.1:0", u64::MAX)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("max_request_body"), "{error}");
    let tunnel = fake
        .sandbox
        .open_tunnel("127.0.0.2:0", 1024)
        .await
        .expect("any address of 127.0.0.0/8 is loopback");
    assert_eq!(tunnel.address().ip().to_string(), "127.0.0.2");
    fake.destroy().await;
}
