//! HTTPS for the API: a certificate chain and its key from PEM files
//! (`--tls-cert`, `--tls-key`), served with rustls. Without them the
//! server speaks plain HTTP, which is only safe on a loopback address: the
//! API token crosses the network with every request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::error::{Result, ServerError};

/// Where the server's certificate chain and private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn invalid(flag: &str, path: &Path, what: impl std::fmt::Display) -> ServerError {
    ServerError::InvalidOption(format!("{flag} {}: {what}", path.display()))
}

/// A TLS acceptor for `files`, offering HTTP/2 and HTTP/1.1 (ALPN).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| invalid("--tls-cert", &files.cert, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid("--tls-cert", &files.cert, e))?;
    if certs.is_empty() {
        return Err(invalid(
            "--tls-cert",
            &files.cert,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        invalid(
            "--tls-key",
            &files.key,
            format!("no PEM private key could be read ({e})"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::InvalidOption(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ServerError::InvalidOption(format!(
                "--tls-cert {} and --tls-key {}: {e}; the key must be the certificate's",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why serving plain HTTP on `addr` is dangerous, when it is (any address
/// but loopback).
pub fn plain_http_warning(addr: SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "serving plain HTTP on {addr}, which is not a loopback address: the API token and every request and answer cross the network unencrypted; pass --tls-cert and --tls-key, or listen on 127.0.0.1 behind a TLS proxy"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_loopback_plain_http_is_warned_about() {
        assert!(plain_http_warning("127.0.0.1:7070".parse().unwrap()).is_none());
        assert!(plain_http_warning("[::1]:7070".parse().unwrap()).is_none());
        let warning = plain_http_warning("0.0.0.0:7070".parse().unwrap()).unwrap();
        assert!(warning.contains("0.0.0.0:7070") && warning.contains("--tls-cert"));
        assert!(plain_http_warning("192.0.2.1:80".parse().unwrap()).is_some());
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let files = TlsFiles {
            cert: empty.clone(),
            key: empty.clone(),
        };
        let err = acceptor(&files).err().unwrap().to_string();
        assert!(
            err.contains("--tls-cert") && err.contains("no PEM certificate"),
            "{err}"
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let files = TlsFiles {
            cert: cert_path.clone(),
            key: dir.path().join("missing.pem"),
        };
        let err = acceptor(&files).err().unwrap().to_string();
        assert!(
            err.contains("--tls-key") && err.contains("missing.pem"),
            "{err}"
        );

        let other = rcgen::KeyPair::generate().unwrap();
        let other_path = dir.path().join("other.pem");
        std::fs::write(&other_path, other.serialize_pem()).unwrap();
        let files = TlsFiles {
            cert: cert_path.clone(),
            key: other_path,
        };
        let err = acceptor(&files).err().unwrap().to_string();
        assert!(err.contains("the key must be the certificate's"), "{err}");

        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        acceptor(&TlsFiles {
            cert: cert_path,
            key: key_path,
        })
        .unwrap();
    }
}
