//! A sandbox's network through the guest's proxy, against the fake VM
//! driver (the real guest agent on the host; needs `cargo build -p
//! hearth-guest` first). Every server is this test's own, on 127.0.0.1;
//! test names reach it through a hosts-file override, and loopback is
//! allowed the way an operator would allow it (`--egress-allow-cidr`).

use std::sync::Arc;
use std::time::Duration;

use hearth_net::{
    Connector, EgressPolicy, HostsOverride, NetworkLimits, NetworkPolicy, SystemResolver,
};
use hearth_sandbox::{EgressAudit, EgressConfig, ExecOptions, HearthHome, Sandbox, SandboxOptions};
use hearth_vm::fake::FakeDriver;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on 127.0.0.1 answering every request `hello from the
/// test`, closing each connection after its answer.
async fn http_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello from the test\n";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    port
}

struct Setup {
    _dir: tempfile::TempDir,
    driver: FakeDriver,
    sandbox: Sandbox,
    audit: Arc<Mutex<Vec<EgressAudit>>>,
    _egress: hearth_sandbox::Egress,
}

async fn setup(policy: &str) -> Setup {
    setup_with(policy, NetworkLimits::default()).await
}

async fn setup_with(policy: &str, limits: NetworkLimits) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("hh")
        .tempdir_in("/tmp")
        .unwrap();
    let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
    hearth_image::write_placeholder(home.images_dir(), "default").unwrap();
    let driver = FakeDriver::locate().expect("build hearth-guest first");
    let sandbox = Sandbox::create(&home, &driver, SandboxOptions::default())
        .await
        .expect("fake sandbox boots");
    let hosts = HostsOverride::parse(
        "127.0.0.1 svc.test blocked.test\n",
        Arc::new(SystemResolver),
    )
    .unwrap();
    let connector = Connector::new(
        policy.parse::<NetworkPolicy>().unwrap(),
        Arc::new(EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
        Arc::new(hosts),
    );
    let audit = Arc::new(Mutex::new(Vec::new()));
    let sink = audit.clone();
    let egress = sandbox
        .start_egress(
            // The fake driver's agent runs on this host: no transparent
            // path, which would route the host itself.
            EgressConfig {
                transparent: false,
                ..EgressConfig::new("127.0.0.1:0", limits)
            },
            connector,
            Arc::new(move |record| sink.lock().push(record)),
        )
        .await
        .expect("egress starts");
    Setup {
        _dir: dir,
        driver,
        sandbox,
        audit,
        _egress: egress,
    }
}

async fn sh(sandbox: &Sandbox, script: &str) -> (i32, String, String) {
    let (_, code, out, err) = sh_exec(sandbox, script).await;
    (code, out, err)
}

/// [`sh`], with the id of the exec that ran the script.
async fn sh_exec(sandbox: &Sandbox, script: &str) -> (String, i32, String, String) {
    let execution = sandbox
        .exec(ExecOptions::new(["sh", "-c", script]))
        .await
        .unwrap();
    let id = execution.id().to_owned();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        execution.collect(hearth_sandbox::exec::DEFAULT_COLLECT_LIMIT),
    )
    .await
    .expect("the exec ends")
    .unwrap();
    (id, out.report.code, out.stdout_text(), out.stderr_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_names_are_reached_through_the_proxy_and_others_are_refused() {
    let port = http_server().await;
    let s = setup(&format!("allow:svc.test:{port}")).await;

    // The exec's environment points at the proxy.
    let (_, env, _) = sh(&s.sandbox, "echo $HTTPS_PROXY $no_proxy").await;
    assert!(env.starts_with("http://127.0.0.1:"), "{env}");
    assert!(env.contains("localhost"), "{env}");

    // An absolute-form request, and a CONNECT tunnel (-p), both allowed.
    let (plain, code, out, err) =
        sh_exec(&s.sandbox, &format!("curl -sS http://svc.test:{port}/a")).await;
    assert_eq!((code, out.as_str()), (0, "hello from the test\n"), "{err}");
    let (tunnel, code, out, err) =
        sh_exec(&s.sandbox, &format!("curl -sS -p http://svc.test:{port}/b")).await;
    assert_eq!((code, out.as_str()), (0, "hello from the test\n"), "{err}");

    // Not on the list: refused through both, with the reason.
    let (refused_tunnel, code, _, err) = sh_exec(
        &s.sandbox,
        &format!("curl -sS -p http://blocked.test:{port}/"),
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
    let (refused_plain, code, out, _) =
        sh_exec(&s.sandbox, &format!("curl -s http://blocked.test:{port}/")).await;
    assert_eq!(code, 0);
    assert!(out.contains("not on the allowlist"), "{out}");

    // Every attempt is audited, with its verdict and bytes.
    let audit = s.audit.lock().clone();
    assert_eq!(audit.len(), 4, "{audit:#?}");
    let allowed: Vec<_> = audit.iter().filter(|a| a.allowed).collect();
    assert_eq!(allowed.len(), 2, "{audit:#?}");
    for a in &allowed {
        assert_eq!(a.host, "svc.test");
        assert_eq!(a.rule.as_deref(), Some(format!("svc.test:{port}").as_str()));
        assert_eq!(a.addr.unwrap().to_string(), format!("127.0.0.1:{port}"));
        assert!(a.bytes_up > 20 && a.bytes_down > 20, "{a:?}");
    }
    for a in audit.iter().filter(|a| !a.allowed) {
        assert_eq!(a.host, "blocked.test");
        assert!(
            a.reason
                .as_deref()
                .unwrap()
                .contains("not on the allowlist"),
            "{a:?}"
        );
        assert_eq!(a.bytes_up + a.bytes_down, 0);
    }
    // Each attempt names the exec whose curl (a child of its shell) made it.
    let mut named: Vec<_> = audit.iter().map(|a| a.exec.clone()).collect();
    named.sort();
    let mut ran = vec![plain, tunnel, refused_tunnel, refused_plain];
    ran.sort();
    assert_eq!(
        named,
        ran.into_iter().map(Some).collect::<Vec<_>>(),
        "{audit:#?}"
    );
    s.sandbox.destroy().await;
}

/// A server on 127.0.0.1 that answers every connection with `size` bytes
/// once it has read a request head, then closes.
async fn bulk_server(size: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&vec![b'x'; size]).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    port
}

/// A server on 127.0.0.1 that keeps every byte it is sent, and holds each
/// connection open until its client closes it.
async fn recording_server() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = socket.read(&mut buf).await {
                    keep.lock().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, received)
}

/// Through the proxy named in the environment: CONNECT to svc.test:PORT,
/// then a TLS handshake asking for SERVER_NAME; prints what happened.
const TLS_PROBE: &str = r#"
import os, socket, ssl, sys
port, name = int(sys.argv[1]), sys.argv[2]
proxy = os.environ["HTTPS_PROXY"].removeprefix("http://").rstrip("/")
host, pport = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(pport)), timeout=20)
s.sendall(f"CONNECT svc.test:{port} HTTP/1.1\r\nHost: svc.test:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print(head.split(b"\r\n")[0].decode())
s.settimeout(2)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    ctx.wrap_socket(s, server_hostname=name).do_handshake()
    print("handshake done")
except Exception as e:
    print("handshake failed:", type(e).__name__)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_for_another_name_never_reaches_the_destination() {
    let (port, received) = recording_server().await;
    let s = setup(&format!("allow:svc.test:{port}")).await;

    // Asking for the name the connection was opened for: the hello goes
    // through (the destination does not speak TLS, so the handshake then
    // fails, which is not the point).
    let probe = format!("python3 -c '{TLS_PROBE}' {port} svc.test");
    let (code, out, err) = sh(&s.sandbox, &probe).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = std::mem::take(&mut *received.lock());
    assert_eq!(
        got.first(),
        Some(&0x16),
        "the ClientHello reached the server"
    );

    // Asking for another: ended before a byte reaches the destination.
    let probe = format!("python3 -c '{TLS_PROBE}' {port} other.test");
    let (code, out, err) = sh(&s.sandbox, &probe).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("handshake failed"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        received.lock().is_empty(),
        "nothing reached the destination"
    );

    let audit = wait_for_audit(&s, 2).await;
    let refused = audit.iter().find(|a| !a.allowed).expect("a refusal");
    assert_eq!(refused.ended_by.as_deref(), Some("sni"), "{refused:?}");
    let reason = refused.reason.as_deref().unwrap();
    assert!(
        reason.contains("\"other.test\"") && reason.contains("\"svc.test\""),
        "{reason}"
    );
    assert_eq!(refused.bytes_up, 0, "{refused:?}");
    s.sandbox.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_cap_ends_the_connection_that_crosses_it_and_refuses_the_next() {
    let port = bulk_server(1 << 20).await;
    let limits = NetworkLimits {
        max_bytes: Some(100_000),
        ..NetworkLimits::default()
    };
    let s = setup_with(&format!("allow:svc.test:{port}"), limits).await;

    let (_, out, _) = sh(
        &s.sandbox,
        &format!("curl -s -p http://svc.test:{port}/ | wc -c"),
    )
    .await;
    let got: u64 = out.trim().parse().unwrap();
    assert!(got < 100_000, "the program got {got} bytes past the cap");
    let (code, _, err) = sh(&s.sandbox, &format!("curl -sS -p http://svc.test:{port}/")).await;
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");

    let audit = wait_for_audit(&s, 2).await;
    assert_eq!(
        audit[0].ended_by.as_deref(),
        Some("max_bytes"),
        "{audit:#?}"
    );
    assert!(audit[0].allowed);
    assert_eq!(
        audit[0].bytes_up + audit[0].bytes_down,
        100_000,
        "{audit:#?}"
    );
    assert!(!audit[1].allowed);
    assert!(
        audit[1].reason.as_deref().unwrap().contains("byte cap"),
        "{audit:#?}"
    );
    s.sandbox.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_until_one_closes() {
    let (port, _) = recording_server().await;
    let limits = NetworkLimits {
        max_connections: 1,
        ..NetworkLimits::default()
    };
    let s = setup_with(&format!("allow:svc.test:{port}"), limits).await;
    // One connection held open for two seconds, a second asked for while
    // it is, and a third after it closed.
    let script = format!(
        "curl -s -p -m 2 http://svc.test:{port}/ & sleep 1; \
         curl -sS -p http://svc.test:{port}/ 2>&1; wait; \
         curl -s -p -m 1 http://svc.test:{port}/; echo done"
    );
    let (_, out, _) = sh(&s.sandbox, &script).await;
    assert!(out.contains("403"), "{out}");
    let audit = wait_for_audit(&s, 3).await;
    let refused: Vec<_> = audit.iter().filter(|a| !a.allowed).collect();
    assert_eq!(refused.len(), 1, "{audit:#?}");
    assert!(
        refused[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("1 connections open"),
        "{audit:#?}"
    );
    s.sandbox.destroy().await;
}

/// The audit records once `n` have arrived (a connection is audited when
/// it ends, which may be just after the program saw it end).
async fn wait_for_audit(s: &Setup, n: usize) -> Vec<EgressAudit> {
    for _ in 0..100 {
        let audit = s.audit.lock().clone();
        if audit.len() >= n {
            return audit;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} audit records: {:#?}", s.audit.lock());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_comes_back_after_the_channel_reconnects() {
    let port = http_server().await;
    let s = setup(&format!("allow:svc.test:{port}")).await;
    let fetch = format!("curl -sS -p http://svc.test:{port}/");
    let (code, out, err) = sh(&s.sandbox, &fetch).await;
    assert_eq!((code, out.as_str()), (0, "hello from the test\n"), "{err}");

    assert!(s.driver.break_channel(s.sandbox.id()));
    // Calls wait for the reconnect; the network is started again on the
    // new channel soon after.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // A call sent just as the channel broke fails; the next waits.
        let outcome = s
            .sandbox
            .run(ExecOptions::new(["sh", "-c", &fetch]), None)
            .await;
        let err = match outcome {
            Ok(out) if out.report.code == 0 => {
                assert_eq!(out.stdout_text(), "hello from the test\n");
                break;
            }
            Ok(out) => out.stderr_text(),
            Err(error) => error.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "the network did not come back: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.sandbox.channel_reconnects() >= 1);
    s.sandbox.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_network_ends_its_open_connections_and_it_can_start_again() {
    let (port, received) = recording_server().await;
    let Setup {
        _dir,
        driver: _driver,
        sandbox,
        audit,
        _egress: egress,
    } = setup(&format!("allow:svc.test:{port}")).await;
    // A connection both sides hold open while the network is dropped.
    let held = sandbox
        .exec(ExecOptions::new([
            "sh",
            "-c",
            &format!("curl -s -p -m 60 http://svc.test:{port}/; echo ended $?"),
        ]))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while received.lock().is_empty() {
        assert!(std::time::Instant::now() < deadline, "curl never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = std::time::Instant::now();
    drop(egress);
    let out = held.collect(1 << 20).await.unwrap();
    // curl saw its connection end, long before its own 60 s limit.
    assert!(out.stdout_text().starts_with("ended "), "{out:?}");
    assert!(dropped.elapsed() < Duration::from_secs(30));
    let record = wait_for_audit_in(&audit, 1).await.remove(0);
    assert_eq!(record.ended_by.as_deref(), Some("stopped"), "{record:?}");
    assert!(record.allowed && record.bytes_up > 0, "{record:?}");

    // The guest ended its network too: a new one starts (once the guest
    // has seen the old stream close).
    let connector = Connector::new(
        format!("allow:svc.test:{port}")
            .parse::<NetworkPolicy>()
            .unwrap(),
        Arc::new(EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
        Arc::new(HostsOverride::parse("127.0.0.1 svc.test\n", Arc::new(SystemResolver)).unwrap()),
    );
    let config = EgressConfig {
        transparent: false,
        ..EgressConfig::new("127.0.0.1:0", NetworkLimits::default())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let _again = loop {
        match sandbox
            .start_egress(config.clone(), connector.clone(), Arc::new(|_| {}))
            .await
        {
            Ok(egress) => break egress,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the network did not start again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    sandbox.destroy().await;
}

/// The records in `audit` once `n` have arrived.
async fn wait_for_audit_in(audit: &Arc<Mutex<Vec<EgressAudit>>>, n: usize) -> Vec<EgressAudit> {
    for _ in 0..100 {
        let records = audit.lock().clone();
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} audit records: {:#?}", audit.lock());
}
