//! Sandboxes' networks through `hearth serve`, with real VMs: one sandbox
//! attacks its own network (floods of connection attempts through the
//! proxy and without it, a huge CONNECT host name, garbage on the proxy
//! port, a DNS query flood) while its neighbour `pip install`s a package
//! from a package index this test serves; the attacker stays bounded, the
//! neighbour and the server are unaffected, and every attempt is in the
//! attacker's event log and the metrics. Servers are the test's own, on
//! 127.0.0.1, reached through `--egress-hosts`; nothing here connects
//! anywhere else.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use serde_json::{json, Value};

use common::served::{temp_home, wait_no_vmms, Served};

/// The package the index serves: one module.
const PACKAGE_MODULE: &str = "GREETING = 'hello from a local index'\n";

/// Build `hearthdemo-1.0-py3-none-any.whl` in `dir` with the host's
/// Python (a wheel is a zip with a RECORD of hashes); its bytes.
fn wheel(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("hearthdemo-1.0-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
path, module = sys.argv[1], sys.argv[2]
files = {
    "hearthdemo/__init__.py": module.encode(),
    "hearthdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hearthdemo\nVersion: 1.0\n",
    "hearthdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hearth-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={digest},{len(data)}\n"
record += "hearthdemo-1.0.dist-info/RECORD,,\n"
files["hearthdemo-1.0.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
"#;
    let status = Command::new("python3")
        .args(["-c", script, path.to_str().unwrap(), PACKAGE_MODULE])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(&path).unwrap()
}

/// A PEP 503 "simple" index on 127.0.0.1 serving `wheel`, and plain `ok`
/// for any other path; its port.
fn index(wheel: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            let wheel = wheel.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                // Through the proxy the request line has the absolute URL.
                let target = head.split_whitespace().nth(1).unwrap_or("/");
                let path = target
                    .split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                    .unwrap_or(target);
                let name = "hearthdemo-1.0-py3-none-any.whl";
                let (kind, body): (&str, Vec<u8>) = match path {
                    "/simple/hearthdemo/" => (
                        "text/html",
                        format!("<html><body><a href=\"/files/{name}\">{name}</a></body></html>")
                            .into_bytes(),
                    ),
                    p if p == format!("/files/{name}") => ("application/octet-stream", wheel),
                    "/simple/" => (
                        "text/html",
                        b"<a href=\"hearthdemo/\">hearthdemo</a>".to_vec(),
                    ),
                    _ => ("text/plain", b"ok\n".to_vec()),
                };
                let _ = write!(
                    socket,
                    "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(&body);
            });
        }
    });
    port
}

/// The attacker: each attack in turn, then a normal fetch through the
/// proxy and without it; prints a summary line per attack.
const HOSTILE: &str = r#"
import concurrent.futures, os, random, socket, sys, time, urllib.request
port = int(sys.argv[1])
proxy_host, proxy_port = os.environ["HTTP_PROXY"].removeprefix("http://").rstrip("/").rsplit(":", 1)
proxy = (proxy_host, int(proxy_port))

def connect_attempt(_):
    try:
        s = socket.create_connection(proxy, timeout=30)
        s.sendall(f"CONNECT blocked.test:{port} HTTP/1.1\r\n\r\n".encode())
        status = s.recv(64).split(b" ")[1].decode()
        s.close()
        return status
    except Exception as e:
        return type(e).__name__
start = time.time()
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    outcomes = list(pool.map(connect_attempt, range(2000)))
counts = {k: outcomes.count(k) for k in set(outcomes)}
print(f"proxy-flood: {len(outcomes)} in {time.time() - start:.1f}s {sorted(counts.items())}")

def raw_attempt(_):
    try:
        socket.create_connection(("blocked.test", port), timeout=30).close()
        return "connected"
    except Exception as e:
        return type(e).__name__
start = time.time()
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    outcomes = list(pool.map(raw_attempt, range(1000)))
counts = {k: outcomes.count(k) for k in set(outcomes)}
print(f"raw-flood: {len(outcomes)} in {time.time() - start:.1f}s {sorted(counts.items())}")

s = socket.create_connection(proxy, timeout=30)
try:
    s.sendall(b"CONNECT " + b"a" * 100_000 + b":443 HTTP/1.1\r\n\r\n")
    answer = s.recv(64)
    print("huge-host:", answer.split(b"\r\n")[0].decode() or "closed")
except OSError as e:
    print("huge-host: closed", type(e).__name__)

s = socket.create_connection(proxy, timeout=30)
try:
    s.sendall(os.urandom(1 << 20))
    answer = s.recv(64)
    print("garbage:", answer.split(b"\r\n")[0].decode() or "closed")
except OSError as e:
    print("garbage: closed", type(e).__name__)

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setblocking(False)
sent = 0
start = time.time()
for i in range(20000):
    name = "".join(random.choices("abcdefghij", k=12)).encode()
    query = random.randbytes(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + bytes([len(name)]) + name + b"\x04test\x00\x00\x01\x00\x01"
    try:
        u.sendto(query, ("198.18.0.2", 53))
        sent += 1
    except BlockingIOError:
        pass
print(f"dns-flood: {sent} sent in {time.time() - start:.1f}s")

body = urllib.request.urlopen(f"http://svc.test:{port}/after", timeout=30).read().decode().strip()
print("after-proxy:", body)
for key in list(os.environ):
    if key.lower().endswith("_proxy"):
        del os.environ[key]
s = socket.create_connection(("svc.test", port), timeout=30)
s.sendall(b"GET /after HTTP/1.1\r\nHost: svc.test\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print("after-raw:", data.decode().split("\r\n\r\n", 1)[-1].strip())
"#;

/// The neighbour: pip installs the package from the test's index, then
/// imports it.
const PIP: &str =
    "pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
     --index-url http://pypi.test:$1/simple/ --trusted-host pypi.test hearthdemo \
     && python3 -c 'import hearthdemo; print(hearthdemo.GREETING)'";

fn stdout_of(result: &Value) -> String {
    result["stdout"].as_str().unwrap_or_default().to_string()
}

/// Every event of sandbox `id`, page by page.
async fn all_events(served: &Served, id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let (_, page) = served
            .get(&format!("/v1/sandboxes/{id}/events?after={after}"))
            .await;
        let batch = page["events"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            return events;
        }
        after = page["next_after"].as_i64().unwrap();
        events.extend(batch);
    }
}

/// The server's peak resident memory, KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_is_bounded_and_its_neighbour_installs_packages_meanwhile() {
    let home = temp_home();
    let port = index(wheel(home.path()));
    let hosts = home.path().join("egress-hosts");
    std::fs::write(&hosts, "127.0.0.1 svc.test blocked.test pypi.test\n").unwrap();
    let served = Served::start(
        home.path(),
        &[
            "--egress-allow-cidr",
            "127.0.0.1/32",
            "--egress-hosts",
            hosts.to_str().unwrap(),
        ],
    );
    let network = |name: &str| json!({"memory": "256M", "network": {"mode": "allowlist", "allow": [format!("{name}:{port}")]}});
    let (attacker, neighbour) = tokio::join!(
        served.create(network("svc.test")),
        served.create(network("pypi.test"))
    );
    let port_text = port.to_string();
    let attack_argv = ["python3", "-c", HOSTILE, &port_text];
    let pip_argv = ["sh", "-c", PIP, "sh", &port_text];
    let (attack, install) = tokio::join!(
        served.run(&attacker, &attack_argv),
        served.run(&neighbour, &pip_argv),
    );

    // The neighbour was not disturbed.
    assert_eq!(install["exit"]["code"], 0, "{install}");
    assert!(
        stdout_of(&install).ends_with("hello from a local index\n"),
        "{install}"
    );
    // Every attack ended (bounded), with refusals, and the attacker's own
    // network still works after it.
    let out = stdout_of(&attack);
    eprintln!("the attacker's summary:\n{out}");
    assert_eq!(attack["exit"]["code"], 0, "{attack}");
    let line = |label: &str| {
        out.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in\n{out}\n{attack}"))
            .to_string()
    };
    assert!(line("proxy-flood:").contains("'403'"), "{out}");
    assert!(!line("proxy-flood:").contains("'200'"), "{out}");
    assert!(
        line("raw-flood:").contains("ConnectionRefusedError"),
        "{out}"
    );
    assert!(!line("raw-flood:").contains("connected"), "{out}");
    assert!(!line("huge-host:").contains("200"), "{out}");
    assert!(!line("garbage:").contains("200"), "{out}");
    assert!(line("dns-flood:").starts_with("dns-flood: "), "{out}");
    assert_eq!(line("after-proxy:"), "after-proxy: ok");
    assert_eq!(line("after-raw:"), "after-raw: ok");

    // The server still answers, and stayed bounded in memory.
    let (status, _) = served.get("/healthz").await;
    assert!(status.is_success());
    let peak = peak_rss_kib(served.pid());
    eprintln!("server peak RSS: {peak} KiB");
    assert!(peak < 1024 * 1024, "the server grew to {peak} KiB");

    // Every attempt is in the attacker's events: one by one, or counted
    // in net.suppressed when they came faster than they could be written.
    // Connections are recorded as they end: wait for the last ones.
    let mut refused = 0;
    let mut allowed = 0;
    for _ in 0..100 {
        let events = all_events(&served, &attacker).await;
        refused = 0;
        allowed = 0;
        for event in &events {
            match event["kind"].as_str() {
                Some("net.connection") if event["data"]["allowed"] == true => allowed += 1,
                Some("net.connection") => refused += 1,
                Some("net.suppressed") => {
                    refused += event["data"]["refused"].as_u64().unwrap();
                    allowed += event["data"]["allowed"].as_u64().unwrap();
                }
                _ => {}
            }
        }
        if allowed >= 2 && refused >= 1000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The raw flood's 1000 all reach the host; of the proxy flood's, those
    // the proxy turned away as busy never did.
    assert!(refused >= 1000, "{refused} refusals recorded");
    assert_eq!(allowed, 2, "the two fetches after the attacks");
    let events = all_events(&served, &neighbour).await;
    let pip_connections: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "net.connection")
        .collect();
    assert!(!pip_connections.is_empty(), "{events:?}");
    for event in pip_connections {
        assert_eq!(event["data"]["allowed"], true, "{event}");
        assert_eq!(event["data"]["host"], "pypi.test", "{event}");
    }
    let metrics = served
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused_metric: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hearth_egress_connections_total{verdict=\"refused\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(refused_metric, refused, "metrics and events agree");

    for id in [&attacker, &neighbour] {
        let (status, _) = served
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                None,
            )
            .await;
        assert!(status.is_success());
    }
    drop(served);
    wait_no_vmms(home.path()).await;
}
