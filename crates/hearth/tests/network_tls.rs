//! A sandbox's network with TLS and addresses that must stay closed, end
//! to end: the real `hearth` binary, real VMs, and servers of this test's
//! own on 127.0.0.1 (HTTPS with a certificate from a CA made here, which
//! the guest is given to trust). Test names map to 127.0.0.1 through
//! `--egress-hosts`; `meta.test` and `private.test` map to the metadata
//! and a private address, which must be refused before anything connects
//! to them. Nothing here connects anywhere but 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

mod common;

/// A CA and a certificate for `svc.test` it signed: the CA's PEM, and a
/// server config serving the certificate.
fn tls_config() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hearth network test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["svc.test".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// Reads a request head from `stream` and answers `body`.
fn answer(stream: &mut (impl Read + Write), body: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// An HTTPS server for `svc.test` on 127.0.0.1, and a plain HTTP one:
/// their ports.
fn servers(config: Arc<rustls::ServerConfig>) -> (u16, u16) {
    let tls = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = tls.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for socket in tls.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut stream = rustls::StreamOwned::new(connection, socket);
                answer(&mut stream, "hello over tls\n");
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut socket in plain.incoming().flatten() {
            answer(&mut socket, "hello from the test\n");
        }
    });
    (tls_port, plain_port)
}

/// Through the proxy and without it: HTTPS to `svc.test` verified against
/// the test's CA, then handshakes naming another server, then the
/// metadata and private names and a private address; prints what each did.
const PROBE: &str = r#"
import os, socket, ssl, sys, urllib.request
tls_port, plain_port = int(sys.argv[1]), int(sys.argv[2])
verified = ssl.create_default_context(cadata=os.environ["HEARTH_TEST_CA"])
unverified = ssl.create_default_context()
unverified.check_hostname = False
unverified.verify_mode = ssl.CERT_NONE
proxy = os.environ["HTTPS_PROXY"].removeprefix("http://").rstrip("/")
def get(sock, host):
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip()
def connect_proxy(host, port):
    h, p = proxy.rsplit(":", 1)
    s = socket.create_connection((h, int(p)), timeout=20)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    return s
def connect_direct(host, port):
    return socket.create_connection((host, port), timeout=20)
def tls(label, connect, sni, ctx):
    try:
        s = ctx.wrap_socket(connect("svc.test", tls_port), server_hostname=sni)
        print(f"{label}: ok {get(s, sni)}")
    except Exception as e:
        print(f"{label}: failed: {type(e).__name__}: {e}")
try:
    body = urllib.request.urlopen(f"https://svc.test:{tls_port}/", context=verified, timeout=20).read()
    print("p-https:", "ok", body.decode().strip())
except Exception as e:
    print("p-https: failed:", e)
tls("p-sni-same", connect_proxy, "svc.test", unverified)
tls("p-sni-other", connect_proxy, "other.test", unverified)
tls("t-https", connect_direct, "svc.test", verified)
tls("t-sni-other", connect_direct, "other.test", unverified)
for name in ("svc.test", "meta.test", "private.test"):
    try:
        body = urllib.request.urlopen(f"http://{name}:{plain_port}/", timeout=20).read()
        print(f"p-{name}: ok", body.decode().strip())
    except Exception as e:
        print(f"p-{name}: failed:", getattr(e, "code", ""), e)
for host in ("svc.test", "meta.test", "private.test", "10.0.0.1"):
    try:
        s = connect_direct(host, plain_port)
        print(f"t-{host}: ok", get(s, host))
    except Exception as e:
        print(f"t-{host}: failed: {type(e).__name__}")
"#;

/// Run the probe in a sandbox with `net`; its output.
fn probe(net: &str) -> (Output, String) {
    let (ca, config) = tls_config();
    let (tls_port, plain_port) = servers(config);
    let home = tempfile::Builder::new()
        .prefix("ht")
        .tempdir_in("/tmp")
        .unwrap();
    let hosts = home.path().join("egress-hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 svc.test other.test\n169.254.169.254 meta.test\n10.0.0.1 private.test\n",
    )
    .unwrap();
    let net = net.replace("PORTS", &format!("{tls_port}"));
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_IMAGES", common::images())
        .env_remove("HEARTH_LOG")
        .stdin(Stdio::null())
        .args([
            "sandbox",
            "run",
            "--memory",
            "256M",
            "--net",
            &net,
            // Only the test's own servers' address is opened.
            "--egress-allow-cidr",
            "127.0.0.1/32",
            "--egress-hosts",
            hosts.to_str().unwrap(),
            "--env",
            &format!("HEARTH_TEST_CA={ca}"),
            "--",
            "python3",
            "-c",
            PROBE,
            &tls_port.to_string(),
            &plain_port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(common::live_vmms(home.path()).is_empty());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

fn line<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} line in\n{stdout}"))
}

/// What holds in every mode that reaches `svc.test`: HTTPS works both
/// ways with the server's own name, a handshake naming another server is
/// cut before it reaches the server, and the metadata and private names
/// and addresses are refused.
fn assert_common(stdout: &str, stderr: &str) {
    assert_eq!(line(stdout, "p-https"), "p-https: ok hello over tls");
    assert_eq!(line(stdout, "p-sni-same"), "p-sni-same: ok hello over tls");
    assert_eq!(line(stdout, "t-https"), "t-https: ok hello over tls");
    assert!(line(stdout, "p-sni-other").contains("failed"), "{stdout}");
    assert!(line(stdout, "t-sni-other").contains("failed"), "{stdout}");
    assert!(
        stderr.contains("the TLS server name \\\"other.test\\\" is not \\\"svc.test\\\""),
        "{stderr}"
    );
    assert_eq!(
        line(stdout, "p-svc.test"),
        "p-svc.test: ok hello from the test"
    );
    assert_eq!(
        line(stdout, "t-svc.test"),
        "t-svc.test: ok hello from the test"
    );
    for name in ["meta.test", "private.test"] {
        assert!(
            line(stdout, &format!("p-{name}")).contains("failed: 403"),
            "{stdout}"
        );
        assert!(
            line(stdout, &format!("t-{name}")).contains("ConnectionRefusedError"),
            "{stdout}"
        );
    }
    assert!(
        line(stdout, "t-10.0.0.1").contains("ConnectionRefusedError"),
        "{stdout}"
    );
    // The refusals name the address the name resolved to.
    assert!(stderr.contains("169.254.169.254"), "{stderr}");
    assert!(stderr.contains("10.0.0.1"), "{stderr}");
}

#[test]
fn an_allowlist_carries_https_checks_server_names_and_refuses_listed_private_names() {
    // meta.test and private.test are listed, and still refused: they
    // resolve to ranges the operator did not open.
    let (out, stdout) = probe("allow:svc.test,meta.test,private.test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_common(&stdout, &stderr);
}

#[test]
fn open_mode_reaches_any_allowed_address_and_still_refuses_metadata_and_private() {
    let (out, stdout) = probe("open");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_common(&stdout, &stderr);
}
