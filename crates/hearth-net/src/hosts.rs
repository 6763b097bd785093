//! Name resolution for sandbox egress, with an operator's override.
//!
//! The host resolves every name a sandbox asks for (the guest's own DNS
//! never decides where a connection goes). [`Resolver`] is that lookup;
//! [`SystemResolver`] asks the host's resolver, and [`HostsOverride`]
//! answers some names first from a file in `/etc/hosts` form
//! (`--egress-hosts FILE`).
//!
//! **The override is for tests and local development**: it lets a test map
//! `pypi.test` to its own server on 127.0.0.1 without touching the
//! machine's DNS. Addresses it returns are still checked like any other, so
//! a loopback answer is refused unless the operator also allowed loopback
//! with `--egress-allow-cidr`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

/// Most names one override file may map.
pub const MAX_HOSTS: usize = 4096;

/// A boxed lookup, so resolvers can be shared as trait objects.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Turns a (normalized, lowercase) host name into addresses.
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// The addresses of `name`; an empty list or an error when it has none.
    fn lookup<'a>(&'a self, name: &'a str) -> Lookup<'a>;
}

/// The host's own resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, name: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((name, 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Names answered from a hosts file before `fallback` is asked.
#[derive(Debug, Clone)]
pub struct HostsOverride {
    names: HashMap<String, Vec<IpAddr>>,
    fallback: Arc<dyn Resolver>,
}

impl HostsOverride {
    /// Parse `/etc/hosts`-style text: an address, then one or more names,
    /// per line; `#` starts a comment. Errors name the line.
    pub fn parse(text: &str, fallback: Arc<dyn Resolver>) -> Result<Self, String> {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let addr = words.next().unwrap_or("");
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!(
                    "line {}: {addr:?} is not an IP address (each line is an address, then names)",
                    n + 1
                )
            })?;
            let mut any = false;
            for name in words {
                let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
                if name.is_empty() || name.len() > 253 {
                    return Err(format!("line {}: {name:?} is not a host name", n + 1));
                }
                let entry = names.entry(name).or_default();
                if !entry.contains(&addr) {
                    entry.push(addr);
                }
                any = true;
            }
            if !any {
                return Err(format!("line {}: an address without names", n + 1));
            }
            if names.len() > MAX_HOSTS {
                return Err(format!("more than {MAX_HOSTS} names"));
            }
        }
        Ok(Self { names, fallback })
    }

    /// [`Self::parse`] the file at `path`.
    pub fn from_file(path: &Path, fallback: Arc<dyn Resolver>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the egress hosts file {}: {e}", path.display()))?;
        Self::parse(&text, fallback).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// How many names the file maps.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the file maps no name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Resolver for HostsOverride {
    fn lookup<'a>(&'a self, name: &'a str) -> Lookup<'a> {
        match self.names.get(name) {
            Some(addrs) => {
                let addrs = addrs.clone();
                Box::pin(async move { Ok(addrs) })
            }
            None => self.fallback.lookup(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers nothing, so a test sees that the override answered.
    #[derive(Debug)]
    struct Nothing;

    impl Resolver for Nothing {
        fn lookup<'a>(&'a self, name: &'a str) -> Lookup<'a> {
            let name = name.to_string();
            Box::pin(async move {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{name}: no such name"),
                ))
            })
        }
    }

    #[tokio::test]
    async fn names_come_from_the_file_first() {
        let hosts = HostsOverride::parse(
            "# test names\n127.0.0.1 pypi.test Files.Pypi.Test.\n::1 pypi.test  # and v6\n\n",
            Arc::new(Nothing),
        )
        .unwrap();
        assert_eq!(hosts.len(), 2);
        let addrs = hosts.lookup("pypi.test").await.unwrap();
        assert_eq!(
            addrs,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(hosts.lookup("files.pypi.test").await.unwrap().len(), 1);
        assert!(hosts.lookup("other.test").await.is_err());
    }

    #[test]
    fn bad_lines_are_named() {
        let nothing: Arc<dyn Resolver> = Arc::new(Nothing);
        let error = HostsOverride::parse("127.0.0.1 a\nlocalhost 127.0.0.1\n", nothing.clone())
            .unwrap_err();
        assert!(
            error.starts_with("line 2:") && error.contains("not an IP address"),
            "{error}"
        );
        let error = HostsOverride::parse("10.0.0.1\n", nothing.clone()).unwrap_err();
        assert!(error.contains("without names"), "{error}");
        let error = HostsOverride::from_file(Path::new("/nonexistent/hosts"), nothing).unwrap_err();
        assert!(error.contains("/nonexistent/hosts"), "{error}");
    }
}
