//! A sandbox's network end to end: the real `hearth` binary, real VMs, and
//! an HTTP server of this test's own on 127.0.0.1, reached by a test name
//! through `--egress-hosts` with loopback opened by `--egress-allow-cidr`.
//! Nothing here connects anywhere but 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

mod common;

/// An HTTP server on 127.0.0.1 answering every request `hello from the
/// test`, one connection at a time, on a thread of its own.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = "hello from the test\n";
            let _ = write!(
                socket,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn hearth(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .env("HEARTH_HOME", home)
        .env("HEARTH_IMAGES", common::images())
        .env_remove("HEARTH_LOG")
        .stdin(Stdio::null())
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fetches `http://svc.test:PORT/`, then `http://blocked.test:PORT/`, then
/// opens a raw socket to the server, and prints what each did.
const PROBE: &str = r#"
import socket, sys, urllib.request
port = int(sys.argv[1])
for name in ("svc.test", "blocked.test"):
    try:
        body = urllib.request.urlopen(f"http://{name}:{port}/", timeout=20).read().decode().strip()
        print(f"{name}: {body}")
    except Exception as e:
        print(f"{name}: failed: {e}")
try:
    socket.create_connection(("127.0.0.1", port), timeout=5)
    print("raw: connected")
except Exception as e:
    print(f"raw: failed: {e}")
"#;

#[test]
fn an_allowlist_lets_listed_names_through_the_proxy_and_nothing_else() {
    let port = http_server();
    let home = tempfile::Builder::new()
        .prefix("hn")
        .tempdir_in("/tmp")
        .unwrap();
    let hosts = home.path().join("egress-hosts");
    // Both names point at this test's server; only one is allowed.
    std::fs::write(&hosts, "127.0.0.1 svc.test blocked.test\n").unwrap();
    let port_text = port.to_string();
    let allow = format!("allow:svc.test:{port}");
    let out = hearth(
        home.path(),
        &[
            "sandbox",
            "run",
            "--memory",
            "256M",
            "--net",
            &allow,
            "--egress-allow-cidr",
            "127.0.0.0/8",
            "--egress-hosts",
            hosts.to_str().unwrap(),
            "--",
            "python3",
            "-c",
            PROBE,
            &port_text,
        ],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("svc.test: hello from the test"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("blocked.test: failed: HTTP Error 403"),
        "{stdout}"
    );
    // Programs that ignore the proxy reach nothing: the VM has no network.
    assert!(stdout.contains("raw: failed"), "{stdout}");
    // The refusal is in the log with its reason.
    assert!(stderr.contains("egress refused"), "{stderr}");
    assert!(stderr.contains("not on the allowlist"), "{stderr}");
    assert!(common::live_vmms(home.path()).is_empty());
}

#[test]
fn without_a_network_nothing_is_reachable_and_bad_settings_are_named() {
    let port = http_server();
    let home = tempfile::Builder::new()
        .prefix("hn")
        .tempdir_in("/tmp")
        .unwrap();
    let port_text = port.to_string();
    // The default is none: no proxy, no names, no route.
    let out = hearth(
        home.path(),
        &[
            "sandbox", "run", "--memory", "256M", "--", "python3", "-c", PROBE, &port_text,
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("svc.test: failed"), "{stdout}");
    assert!(stdout.contains("raw: failed"), "{stdout}");
    assert!(!stdout.contains("hello"), "{stdout}");

    // Bad settings: one clear error naming the entry, and no VM.
    for (net, needle) in [
        ("allow:", "at least one entry"),
        ("allow:pypi.org,*foo.com", "entry 2"),
        ("allow:10.0.0.0/33", "not an address or CIDR"),
        ("wide", "none, open or allowlist"),
    ] {
        let out = hearth(home.path(), &["sandbox", "run", "--net", net, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{net}");
        assert!(
            text(&out.stderr).contains(needle),
            "{net}: {}",
            text(&out.stderr)
        );
    }
    let out = hearth(
        home.path(),
        &[
            "sandbox",
            "run",
            "--net",
            "open",
            "--egress-allow-cidr",
            "10.0.0.0/33",
            "--",
            "true",
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("--egress-allow-cidr"),
        "{}",
        text(&out.stderr)
    );
    assert!(common::live_vmms(home.path()).is_empty());
}
