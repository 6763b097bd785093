//! HTTPS through the real binary: `--tls-cert`/`--tls-key` serve the API
//! over TLS (HTTP/2 by ALPN, HTTP/1.1 too), the CLI trusts a private CA
//! through `HEARTH_CA_CERT`, and plain HTTP on a non-loopback address is
//! warned about loudly. Connects only to 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use common::images;
use common::served::{temp_home, Served};

/// A CA, and a certificate for 127.0.0.1 and localhost it signed: the
/// paths of the CA's PEM, the certificate's and its key's.
fn certificates(dir: &Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hearth test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[tokio::test]
async fn the_api_is_served_over_https_with_the_given_certificate() {
    let home = temp_home();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path());
    let served = Served::start(home.path(), &["--tls-cert", &cert, "--tls-key", &key]);
    assert!(
        served.url.starts_with("https://127.0.0.1:"),
        "{}",
        served.url
    );
    let server_json = std::fs::read_to_string(home.path().join("server.json")).unwrap();
    assert!(server_json.contains(&served.url), "{server_json}");

    let ca_cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca_cert)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let health = client
        .get(format!("{}/healthz", served.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.version(), reqwest::Version::HTTP_2, "ALPN offers h2");
    let listed = client
        .get(format!("{}/v1/sandboxes", served.url))
        .bearer_auth(served.token())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);

    // A client that does not trust the certificate is refused by TLS, and
    // plain HTTP to the TLS port gets no answer.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{}/healthz", served.url))
        .send()
        .await
        .is_err());
    let plain = served.url.replacen("https://", "http://", 1);
    assert!(untrusting
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .is_err());

    // The CLI trusts a private CA through HEARTH_CA_CERT.
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["sandbox", "ls"])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_URL", &served.url)
        .env("HEARTH_CA_CERT", &ca)
        .env_remove("HEARTH_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["sandbox", "ls"])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_URL", &served.url)
        .env_remove("HEARTH_CA_CERT")
        .env_remove("HEARTH_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "an untrusted certificate is refused");
}

#[test]
fn bad_certificate_files_stop_the_start_with_what_is_wrong() {
    let home = temp_home();
    let certs = tempfile::tempdir().unwrap();
    let (_, cert, _) = certificates(certs.path());
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert", &cert])
        .args(["--tls-key", "/nonexistent/key.pem"])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_IMAGES", images())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tls-key /nonexistent/key.pem"),
        "{stderr}"
    );
    // One without the other is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert", &cert])
        .env("HEARTH_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

#[test]
fn plain_http_on_a_non_loopback_address_is_warned_about() {
    let home = temp_home();
    // Bound to every interface for the warning only: nothing connects, and
    // the server is killed at once.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_IMAGES", images())
        .env_remove("HEARTH_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("WARNING"), "{line}");
    assert!(line.contains("plain HTTP on 0.0.0.0"), "{line}");
    assert!(line.contains("--tls-cert"), "{line}");
}
