//! A sandbox's network through the guest's proxy, against the fake VM
//! driver (the real guest agent on the host; needs `cargo build -p
//! hearth-guest` first). Every server is this test's own, on 127.0.0.1;
//! test names reach it through a hosts-file override, and loopback is
//! allowed the way an operator would allow it (`--egress-allow-cidr`).

use std::sync::Arc;
use std::time::Duration;

use hearth_net::{Connector, EgressPolicy, HostsOverride, NetworkPolicy, SystemResolver};
use hearth_sandbox::{EgressAudit, ExecOptions, HearthHome, Sandbox, SandboxOptions};
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
    sandbox: Sandbox,
    audit: Arc<Mutex<Vec<EgressAudit>>>,
    _egress: hearth_sandbox::Egress,
}

async fn setup(policy: &str) -> Setup {
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
            "127.0.0.1:0",
            connector,
            Arc::new(move |record| sink.lock().push(record)),
        )
        .await
        .expect("egress starts");
    Setup {
        _dir: dir,
        sandbox,
        audit,
        _egress: egress,
    }
}

async fn sh(sandbox: &Sandbox, script: &str) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        sandbox.run(ExecOptions::new(["sh", "-c", script]), None),
    )
    .await
    .expect("the exec ends")
    .unwrap();
    (out.report.code, out.stdout_text(), out.stderr_text())
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
    let (code, out, err) = sh(&s.sandbox, &format!("curl -sS http://svc.test:{port}/a")).await;
    assert_eq!((code, out.as_str()), (0, "hello from the test\n"), "{err}");
    let (code, out, err) = sh(&s.sandbox, &format!("curl -sS -p http://svc.test:{port}/b")).await;
    assert_eq!((code, out.as_str()), (0, "hello from the test\n"), "{err}");

    // Not on the list: refused through both, with the reason.
    let (code, _, err) = sh(
        &s.sandbox,
        &format!("curl -sS -p http://blocked.test:{port}/"),
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
    let (code, out, _) = sh(&s.sandbox, &format!("curl -s http://blocked.test:{port}/")).await;
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
    s.sandbox.destroy().await;
}
