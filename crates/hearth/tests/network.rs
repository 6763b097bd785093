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

/// Without proxy variables (transparent path): raw sockets to `svc.test`,
/// `blocked.test`, a private and the metadata address, a UDP datagram, an
/// IPv6 address and the DNS stub's answer; prints what each did and how
/// long it took.
const TRANSPARENT_PROBE: &str = r#"
import os, socket, sys, time
for key in list(os.environ):
    if key.lower().endswith("_proxy"):
        del os.environ[key]
port = int(sys.argv[1])
def get(host, p, family=socket.AF_INET):
    start = time.time()
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect((host, p))
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return "ok " + data.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip()
    except Exception as e:
        return f"failed after {time.time() - start:.1f}s: {type(e).__name__}"
print("resolved:", socket.gethostbyname("svc.test"))
print("t-svc:", get("svc.test", port))
print("t-blocked:", get("blocked.test", port))
print("t-private:", get("10.0.0.1", port))
print("t-metadata:", get("169.254.169.254", 80))
print("t-v6:", get("2001:db8::1", port, socket.AF_INET6))
try:
    socket.getaddrinfo("svc.test", port, socket.AF_INET6)
    print("aaaa: answered")
except socket.gaierror as e:
    print("aaaa: none")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"hello", ("10.0.0.1", 9999))
print("udp: sent")
"#;

/// curl by name through the proxy variables, without them, for a name not
/// on the list, and to a private address; prints what each did.
const CURL_PROBE: &str = r#"
port=$1
get() { label=$1; shift; out=$(curl -sS -m 10 -w ' %{http_code}' "$@" 2>/dev/null) && echo "$label: ${out##* } ${out% *}" || echo "$label: failed"; }
get curl-proxy "http://svc.test:$port/"
get curl-direct --noproxy '*' "http://svc.test:$port/"
code=$(curl -s -m 20 -o /dev/null -w '%{http_code}' "http://blocked.test:$port/")
echo "curl-blocked: $code"
get curl-address --noproxy '*' "http://10.0.0.1:$port/"
"#;

/// Without a network, as root: the VM's only interface is loopback, and
/// after trying to route everything out (with `ip` when the image has it)
/// a raw socket still reaches nothing.
const NONE_PROBE: &str = r#"
import os, shutil, socket, subprocess, sys
port = int(sys.argv[1])
print("uid:", os.getuid())
print("interfaces:", ",".join(sorted(name for _, name in socket.if_nameindex())))
ip = shutil.which("ip")
print("ip:", ip)
if ip:
    # Every way root might route itself out: a default route on loopback,
    # then a TUN device of its own with an address and the default route.
    for args in (
        ["link", "set", "lo", "up"],
        ["route", "add", "default", "dev", "lo"],
        ["tuntap", "add", "mode", "tun", "name", "evil0"],
        ["addr", "add", "10.9.9.9/8", "dev", "evil0"],
        ["link", "set", "evil0", "up"],
        ["route", "replace", "default", "dev", "evil0"],
    ):
        done = subprocess.run([ip] + args, capture_output=True)
        print("ip", " ".join(args), "->", done.returncode)
print("tun:", os.path.exists("/sys/class/net/hearth0"))
for host in ("10.0.0.1", "198.18.1.1", "169.254.169.254"):
    try:
        socket.create_connection((host, port), timeout=3)
        print(f"none-{host}: connected")
    except Exception as e:
        print(f"none-{host}: failed: {type(e).__name__}")
"#;

/// Seconds in a `failed after Ns` line of the transparent probe.
fn failed_within(stdout: &str, label: &str, error: &str, seconds: f64) {
    let line = stdout
        .lines()
        .find(|line| line.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in\n{stdout}"));
    assert!(line.contains(error), "{line}\n{stdout}");
    let took: f64 = line
        .split("failed after ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(took < seconds, "{line}: should fail at once, not hang");
}

/// `hearth sandbox run` of `command` in a fresh home with `--net allow`
/// for `svc.test:PORT`, loopback opened, and `hosts_file` (an
/// `/etc/hosts`-style text) mapping the test names; the home (kept for the
/// leftover check) and the output.
fn run_allowed(port: u16, hosts_file: &str, command: &[&str]) -> (tempfile::TempDir, Output) {
    let home = tempfile::Builder::new()
        .prefix("hn")
        .tempdir_in("/tmp")
        .unwrap();
    let hosts = home.path().join("egress-hosts");
    std::fs::write(&hosts, hosts_file).unwrap();
    let allow = format!("allow:svc.test:{port}");
    let mut args = vec![
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
    ];
    args.extend_from_slice(command);
    let out = hearth(home.path(), &args);
    (home, out)
}

#[test]
fn an_allowlist_lets_listed_names_through_the_proxy_and_nothing_else() {
    let port = http_server();
    let port_text = port.to_string();
    // Both names point at this test's server; only one is allowed.
    let (home, out) = run_allowed(
        port,
        "127.0.0.1 svc.test blocked.test\n",
        &[
            "sh",
            "-c",
            "python3 -c \"$1\" \"$3\" && python3 -c \"$2\" \"$3\" && sh -c \"$4\" sh \"$3\"",
            "sh",
            PROBE,
            TRANSPARENT_PROBE,
            &port_text,
            CURL_PROBE,
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
    // 127.0.0.1 in the VM is the VM's own loopback, where nothing listens.
    assert!(stdout.contains("raw: failed"), "{stdout}");
    // curl through the proxy, and without it (transparently).
    assert!(
        stdout.contains("curl-proxy: 200 hello from the test"),
        "{stdout}"
    );
    assert!(
        stdout.contains("curl-direct: 200 hello from the test"),
        "{stdout}"
    );
    assert!(stdout.contains("curl-blocked: 403"), "{stdout}");
    assert!(stdout.contains("curl-address: failed"), "{stdout}");
    // The refusal is in the log with its reason.
    assert!(stderr.contains("egress refused"), "{stderr}");
    assert!(stderr.contains("not on the allowlist"), "{stderr}");

    // Transparent: the DNS stub answers with a fake address, and a raw
    // socket to it is asked of the host by name.
    assert!(stdout.contains("resolved: 198.1"), "{stdout}");
    assert!(
        stdout.contains("t-svc: ok hello from the test"),
        "{stdout}\n{stderr}"
    );
    // Refused names and addresses fail at once ("connection refused").
    failed_within(&stdout, "t-blocked:", "ConnectionRefusedError", 10.0);
    failed_within(&stdout, "t-private:", "ConnectionRefusedError", 10.0);
    failed_within(&stdout, "t-metadata:", "ConnectionRefusedError", 10.0);
    // No IPv6 route: unreachable at once; AAAA has no answer.
    failed_within(&stdout, "t-v6:", "OSError", 5.0);
    assert!(stdout.contains("aaaa: none"), "{stdout}");
    assert!(stdout.contains("udp: sent"), "{stdout}");
    // Each refusal is audited, the UDP datagram too.
    assert!(stderr.contains("blocked.test"), "{stderr}");
    assert!(stderr.contains("10.0.0.1"), "{stderr}");
    assert!(stderr.contains("169.254.169.254"), "{stderr}");
    assert!(
        stderr.contains("UDP other than DNS is not carried"),
        "{stderr}"
    );
    // Each names the exec whose program opened it: the command's, the
    // sandbox's first exec.
    let log = without_colors(&stderr);
    for via in ["proxy", "transparent"] {
        let line = log
            .lines()
            .find(|l| {
                l.contains("egress refused")
                    && l.contains("blocked.test")
                    && l.contains(&format!("via=\"{via}\""))
            })
            .unwrap_or_else(|| panic!("no {via} refusal of blocked.test in\n{log}"));
        assert!(line.contains("exec=\"x1\""), "{line}");
    }
    assert!(common::live_vmms(home.path()).is_empty());
}

/// The log without its terminal colour codes (`ESC [ ... m`).
fn without_colors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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
            "sandbox",
            "run",
            "--memory",
            "256M",
            "--",
            "sh",
            "-c",
            "python3 -c \"$1\" \"$3\" && python3 -c \"$2\" \"$3\" && sh -c \"$4\" sh \"$3\"",
            "sh",
            PROBE,
            NONE_PROBE,
            &port_text,
            CURL_PROBE,
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("svc.test: failed"), "{stdout}");
    assert!(stdout.contains("raw: failed"), "{stdout}");
    assert!(!stdout.contains("hello"), "{stdout}");
    // No device, no route, even for root: no transparent path either.
    assert!(stdout.contains("uid: 0"), "{stdout}");
    assert!(stdout.contains("interfaces: lo\n"), "{stdout}");
    assert!(stdout.contains("tun: False"), "{stdout}");
    for host in ["10.0.0.1", "198.18.1.1", "169.254.169.254"] {
        assert!(stdout.contains(&format!("none-{host}: failed")), "{stdout}");
    }
    // The image has ip: root really routed everything into a device of
    // its own, and still reached nothing.
    assert!(stdout.contains("ip: /"), "{stdout}");
    assert!(
        stdout.contains("ip route replace default dev evil0 -> 0"),
        "{stdout}"
    );
    // curl fails too, by name and by address, with or without the proxy.
    for label in ["curl-proxy", "curl-direct", "curl-address"] {
        assert!(
            stdout.contains(&format!("{label}: failed")),
            "{label}: {stdout}"
        );
    }

    // Bad settings: one clear error naming the entry, and no VM.
    for (net, needle) in [
        ("allow:", "at least one entry"),
        ("allow:pypi.org,*foo.com", "entry 2"),
        ("allow:10.0.0.0/33", "not an address or CIDR"),
        ("wide", "none, open or allowlist"),
    ] {
        // The same for a run, a sandbox run and a created sandbox: refused
        // before anything is asked of a server.
        for command in [
            &["sandbox", "run", "--net", net, "--", "true"][..],
            &["sandbox", "create", "--net", net][..],
            &["run", "start", "--net", net, "prog.py"][..],
        ] {
            let out = hearth(home.path(), command);
            assert_eq!(out.status.code(), Some(2), "{command:?}");
            assert!(
                text(&out.stderr).contains(needle),
                "{command:?}: {}",
                text(&out.stderr)
            );
        }
    }
    for (flag, value, needle) in [
        ("--egress-rate", "0", "would carry nothing"),
        ("--egress-max-connections", "0", "0 is not in 1..=4096"),
        ("--egress-max-bytes", "lots", "lots"),
    ] {
        let out = hearth(
            home.path(),
            &["sandbox", "run", "--net", "open", flag, value, "--", "true"],
        );
        assert_ne!(out.status.code(), Some(0), "{flag} {value}");
        assert!(
            text(&out.stderr).contains(needle),
            "{flag} {value}: {}",
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

/// A server on 127.0.0.1 that speaks first: one byte at once on every
/// connection, then holds it until the client closes.
fn first_byte_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = socket.write_all(b"x");
                let mut buf = [0u8; 64];
                while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// Sequential transparent connections to a server that speaks first: how
/// many did not get its byte within 5 s.
const SEQUENTIAL_PROBE: &str = r#"
import os, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
stalls = 0
start = time.time()
for i in range(count):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("svc.test", port))
        if s.recv(1) != b"x":
            stalls += 1
    except Exception as e:
        stalls += 1
        print(f"attempt {i}: {type(e).__name__}", flush=True)
    s.close()
print(f"stalls: {stalls} of {count} in {time.time() - start:.1f}s")
"#;

#[test]
fn sequential_transparent_connections_all_get_the_first_bytes() {
    let port = first_byte_server();
    let port_text = port.to_string();
    // The race this guards against (bytes from the destination written
    // before the stack's SYN-ACK) struck about 1 connection in 100.
    let (home, out) = run_allowed(
        port,
        "127.0.0.1 svc.test\n",
        &["python3", "-c", SEQUENTIAL_PROBE, &port_text, "300"],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("stalls: 0 of 300"), "{stdout}");
    assert!(common::live_vmms(home.path()).is_empty());
}
