//! Opening a sandbox's outbound connection on the host: check the name,
//! resolve it on the host, check each address, connect to the first
//! allowed one that answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::egress::EgressPolicy;
use crate::hosts::Resolver;
use crate::policy::{normalize_name, NetworkPolicy, Refusal, Rule};

/// How long a lookup, and each connection attempt, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection was not opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The policy refused it (by name or by address): an audit "refused".
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// Allowed, but the name did not resolve or no address answered.
    #[error("{0}")]
    Unreachable(String),
}

/// An open connection and why it was allowed.
#[derive(Debug)]
pub struct Opened {
    /// The connection.
    pub stream: TcpStream,
    /// The address connected to.
    pub addr: SocketAddr,
    /// The entry (or mode) that allowed it.
    pub rule: Rule,
}

/// Opens connections for one sandbox under its policy.
#[derive(Debug, Clone)]
pub struct Connector {
    policy: NetworkPolicy,
    egress: Arc<EgressPolicy>,
    resolver: Arc<dyn Resolver>,
    timeout: Duration,
}

impl Connector {
    /// A connector for a sandbox with `policy`, under the operator's
    /// `egress` ranges, resolving with `resolver`.
    pub fn new(
        policy: NetworkPolicy,
        egress: Arc<EgressPolicy>,
        resolver: Arc<dyn Resolver>,
    ) -> Self {
        Self {
            policy,
            egress,
            resolver,
            timeout: CONNECT_TIMEOUT,
        }
    }

    /// The same, with `timeout` for the lookup and for each attempt.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The sandbox's policy.
    pub fn policy(&self) -> &NetworkPolicy {
        &self.policy
    }

    /// Open a connection to `host` (a name or an address) on `port`, if
    /// the policy allows it. A name not allowed by name is not looked up
    /// unless the allowlist has address entries.
    pub async fn open(&self, host: &str, port: u16) -> Result<Opened, ConnectError> {
        let rule = self.policy.check_destination(host, port)?;
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let (name, addrs) = match bare.parse::<IpAddr>() {
            Ok(addr) => (bare.to_string(), vec![addr]),
            Err(_) => {
                let name = normalize_name(host).map_err(Refusal)?;
                let addrs = tokio::time::timeout(self.timeout, self.resolver.lookup(&name))
                    .await
                    .map_err(|_| ConnectError::Unreachable(format!("looking up {name} timed out")))?
                    .map_err(|e| {
                        ConnectError::Unreachable(format!("cannot resolve {name}: {e}"))
                    })?;
                (name, addrs)
            }
        };
        if addrs.is_empty() {
            return Err(ConnectError::Unreachable(format!(
                "{name} resolved to no address"
            )));
        }
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for addr in addrs {
            match self
                .policy
                .check_resolved(rule.as_ref(), &name, addr, port, &self.egress)
            {
                Ok(rule) => allowed.push((addr, rule)),
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        if allowed.is_empty() {
            return Err(ConnectError::Refused(first_refusal.unwrap_or_else(|| {
                Refusal(format!("no address of {name} is allowed"))
            })));
        }
        let mut last = String::new();
        for (addr, rule) in allowed {
            let addr = SocketAddr::new(addr, port);
            match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(Opened { stream, addr, rule }),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {:?}", self.timeout),
            }
        }
        Err(ConnectError::Unreachable(format!(
            "cannot connect to {name} port {port} ({last})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::{HostsOverride, Lookup};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts lookups and answers none, behind the test's hosts file.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl Resolver for Counting {
        fn lookup<'a>(&'a self, name: &'a str) -> Lookup<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let name = name.to_string();
            Box::pin(async move {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{name} is unknown to the test"),
                ))
            })
        }
    }

    async fn echo_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    fn connector(policy: &str, loopback: bool, counting: Arc<Counting>) -> Connector {
        let hosts = HostsOverride::parse(
            "127.0.0.1 svc.test other.test\n10.1.2.3 inside.test\n",
            counting,
        )
        .unwrap();
        let egress = match loopback {
            true => EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]),
            false => EgressPolicy::default(),
        };
        Connector::new(policy.parse().unwrap(), Arc::new(egress), Arc::new(hosts))
            .with_timeout(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn an_allowed_name_is_resolved_checked_and_connected() {
        let port = echo_server().await;
        let counting = Arc::new(Counting::default());
        let c = connector(&format!("allow:svc.test:{port}"), true, counting.clone());
        let mut opened = c.open("SVC.test", port).await.unwrap();
        assert_eq!(opened.addr, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(opened.rule.to_string(), format!("svc.test:{port}"));
        opened.stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        opened.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // The hosts file answered: the fallback was never asked.
        assert_eq!(counting.0.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn refusals_say_why_and_unlisted_names_are_never_looked_up() {
        let port = echo_server().await;
        let counting = Arc::new(Counting::default());
        // Listed, but loopback is not allowed by the operator.
        let c = connector(&format!("allow:svc.test:{port}"), false, counting.clone());
        let error = c.open("svc.test", port).await.unwrap_err();
        assert!(matches!(error, ConnectError::Refused(_)), "{error}");
        assert!(error.to_string().contains("--egress-allow-cidr"), "{error}");
        // A private address is refused even when its name is listed.
        let c = connector("allow:inside.test", true, counting.clone());
        let error = c.open("inside.test", 443).await.unwrap_err();
        assert!(error.to_string().contains("private"), "{error}");
        // Not listed: refused by name, no lookup made (hosts file or not).
        let c = connector("allow:svc.test", true, counting.clone());
        for name in ["other.test", "exfiltrate-this.example"] {
            let error = c.open(name, port).await.unwrap_err();
            assert!(
                error.to_string().contains("not on the allowlist"),
                "{error}"
            );
        }
        assert_eq!(counting.0.load(Ordering::SeqCst), 0);
        // Mode none: nothing.
        let c = connector("none", true, counting.clone());
        assert!(c.open("svc.test", port).await.is_err());
        // An address literal is checked as an address.
        let c = connector("open", true, counting.clone());
        assert!(c.open("127.0.0.1", port).await.is_ok());
        assert!(c
            .open("[::ffff:10.0.0.1]", port)
            .await
            .unwrap_err()
            .to_string()
            .contains("private"));
    }

    #[tokio::test]
    async fn allowed_but_unreachable_is_not_a_refusal() {
        let counting = Arc::new(Counting::default());
        let c = connector("open", true, counting.clone());
        // Nothing listens on this port (bound, then closed).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let error = c.open("svc.test", port).await.unwrap_err();
        assert!(matches!(error, ConnectError::Unreachable(_)), "{error}");
        assert!(
            error.to_string().contains("cannot connect to svc.test"),
            "{error}"
        );
        let error = c.open("unknown.test", 80).await.unwrap_err();
        assert!(
            error.to_string().contains("cannot resolve unknown.test"),
            "{error}"
        );
        assert_eq!(counting.0.load(Ordering::SeqCst), 1);
    }
}
