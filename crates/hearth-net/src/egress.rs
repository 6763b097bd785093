//! Egress policy: which addresses host-side calls may connect to.
//!
//! A tool call runs on the host, inside the operator's network, on behalf
//! of a program that is untrusted by assumption. Without a check, a program
//! could ask the `http` tool for `http://169.254.169.254/` (cloud
//! credentials), `http://127.0.0.1:5432/` (the host's own services) or any
//! machine on the private network. So every address is checked **after**
//! the host resolves the name (a name that resolves to 127.0.0.1 is
//! refused, whatever it is called: DNS rebinding), and the HTTP client
//! connects only to checked addresses (`hearth_tools::CheckedResolver`).
//!
//! Refused by default: unspecified, loopback, private (RFC 1918), CGNAT,
//! link-local, cloud metadata, multicast, broadcast and reserved IPv4,
//! unique-local, link-local and multicast IPv6, and the IPv4-mapped,
//! IPv4-compatible and NAT64 IPv6 forms of the IPv4 ranges. An operator
//! opens a range with `--egress-allow-cidr CIDR` ([`EgressPolicy::allow_cidrs`]).
//!
//! Host-side tool calls (`hearth-tools`) and the sandbox network ([`crate::policy`])
//! share it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// The ranges refused unless allowed, with what they are. More specific
/// ranges come first so that a refusal names the most telling one.
static FORBIDDEN: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("169.254.169.254/32", "cloud metadata"),
        ("0.0.0.0/8", "unspecified (\"this network\")"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("fd00:ec2::254/128", "cloud metadata"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ]
    .into_iter()
    .map(|(net, what)| (net.parse().expect("a valid built-in CIDR"), what))
    .collect()
});

/// Which addresses host-side calls may reach: everything public, plus the
/// forbidden addresses that an operator-allowed range contains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Ranges allowed even though they are forbidden by default (a test
    /// ledger on 127.0.0.1, an internal service on 10.1.2.0/24). From
    /// `--egress-allow-cidr`.
    pub allow_cidrs: Vec<IpNet>,
}

/// Why an address was refused: the address, the range it fell in, and how
/// to allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRefusal {
    /// The refused address, as resolved.
    pub addr: IpAddr,
    /// The name it was resolved from, if any.
    pub host: Option<String>,
    /// The forbidden range it fell in (`127.0.0.0/8`).
    pub range: IpNet,
    /// What that range is (`loopback`).
    pub kind: &'static str,
}

impl fmt::Display for EgressRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "egress to {}", self.addr)?;
        if let Some(host) = &self.host {
            write!(f, " (resolved from {host})")?;
        }
        write!(
            f,
            " refused: it is in {} ({}); to allow it, start the server with \
             --egress-allow-cidr {} (or a wider CIDR)",
            self.range,
            self.kind,
            IpNet::from(self.addr)
        )
    }
}

impl std::error::Error for EgressRefusal {}

impl EgressPolicy {
    /// A policy that allows `allow_cidrs` on top of every public address.
    pub fn new(allow_cidrs: Vec<IpNet>) -> Self {
        Self { allow_cidrs }
    }

    /// Whether a call may connect to `ip`: refused when `ip` is in a
    /// forbidden range (directly, or as an IPv4 address embedded in IPv6)
    /// and no allowed range contains it.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), EgressRefusal> {
        let embedded = embedded_ipv4(ip).map(IpAddr::V4);
        let allowed = |addr: IpAddr| self.allow_cidrs.iter().any(|net| net.contains(&addr));
        if allowed(ip) || embedded.is_some_and(allowed) {
            return Ok(());
        }
        match forbidden_range(ip) {
            None => Ok(()),
            Some((range, kind)) => Err(EgressRefusal {
                addr: ip,
                host: None,
                range,
                kind,
            }),
        }
    }

    /// Keeps the addresses of `addrs` that pass [`Self::check_addr`]; when
    /// none does, the refusal of the first (named after `host`). An empty
    /// input is returned as it is.
    pub fn filter_addrs(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, EgressRefusal> {
        let mut kept = Vec::new();
        let mut first_refusal = None;
        for addr in addrs {
            match self.check_addr(addr.ip()) {
                Ok(()) => kept.push(addr),
                Err(refusal) => {
                    tracing::debug!(%refusal, "egress: address dropped");
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        match first_refusal {
            Some(mut refusal) if kept.is_empty() => {
                refusal.host = Some(host.to_owned());
                Err(refusal)
            }
            _ => Ok(kept),
        }
    }
}

/// The forbidden range that holds `ip`, if any, looking through IPv6 forms
/// of IPv4 addresses.
fn forbidden_range(ip: IpAddr) -> Option<(IpNet, &'static str)> {
    let direct = FORBIDDEN.iter().find(|(net, _)| net.contains(&ip)).copied();
    if direct.is_some() {
        return direct;
    }
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = embedded_ipv4(ip) {
            return forbidden_range(IpAddr::V4(v4));
        }
        // `::a.b.c.d` (IPv4-compatible, deprecated) and its neighbours:
        // nothing legitimate lives there.
        if v6.segments()[..6] == [0; 6] {
            return Some((
                "::/96".parse().expect("a valid CIDR"),
                "IPv4-compatible (deprecated)",
            ));
        }
    }
    None
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64
/// (`64:ff9b::a.b.c.d`) IPv6 address: both reach that IPv4 address.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_addresses_are_refused_with_their_range_and_the_fix() {
        let policy = EgressPolicy::default();
        for (addr, range, kind) in [
            ("127.0.0.1", "127.0.0.0/8", "loopback"),
            ("::1", "::1/128", "loopback"),
            ("10.1.2.3", "10.0.0.0/8", "private"),
            ("172.31.255.255", "172.16.0.0/12", "private"),
            ("192.168.1.1", "192.168.0.0/16", "private"),
            ("100.64.0.1", "100.64.0.0/10", "carrier-grade NAT"),
            ("fd12::1", "fc00::/7", "unique local"),
            ("169.254.1.1", "169.254.0.0/16", "link-local"),
            ("fe80::1", "fe80::/10", "link-local"),
            ("0.0.0.0", "0.0.0.0/8", "unspecified (\"this network\")"),
            ("::", "::/128", "unspecified"),
            ("224.0.0.1", "224.0.0.0/4", "multicast"),
            ("ff02::1", "ff00::/8", "multicast"),
            ("255.255.255.255", "255.255.255.255/32", "broadcast"),
            ("169.254.169.254", "169.254.169.254/32", "cloud metadata"),
            ("fd00:ec2::254", "fd00:ec2::254/128", "cloud metadata"),
            ("::ffff:127.0.0.1", "127.0.0.0/8", "loopback"),
            (
                "::ffff:169.254.169.254",
                "169.254.169.254/32",
                "cloud metadata",
            ),
            ("::ffff:10.0.0.1", "10.0.0.0/8", "private"),
            ("64:ff9b::7f00:1", "127.0.0.0/8", "loopback"),
            ("::127.0.0.1", "::/96", "IPv4-compatible (deprecated)"),
        ] {
            let refusal = policy.check_addr(ip(addr)).unwrap_err();
            assert_eq!(refusal.range, range.parse::<IpNet>().unwrap(), "{addr}");
            assert_eq!(refusal.kind, kind, "{addr}");
            let message = refusal.to_string();
            assert!(message.contains(&ip(addr).to_string()), "{message}");
            assert!(message.contains(range), "{message}");
            assert!(message.contains("--egress-allow-cidr"), "{message}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let policy = EgressPolicy::default();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(policy.check_addr(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn an_allowed_range_opens_exactly_itself_and_its_mapped_form() {
        let policy = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(policy.check_addr(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check_addr(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(policy.check_addr(ip("::1")).is_err());
        assert!(policy.check_addr(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn filtering_keeps_allowed_addresses_and_names_the_host_when_none_is() {
        let addrs = [
            SocketAddr::new(ip("::1"), 0),
            SocketAddr::new(ip("127.0.0.1"), 0),
        ];
        let open = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            open.filter_addrs("localhost", addrs).unwrap(),
            [SocketAddr::new(ip("127.0.0.1"), 0)]
        );
        let refusal = EgressPolicy::default()
            .filter_addrs("localhost", addrs)
            .unwrap_err();
        assert_eq!(refusal.host.as_deref(), Some("localhost"));
        assert!(refusal
            .to_string()
            .contains("::1 (resolved from localhost)"));
    }

    /// Any address inside a built-in forbidden range, as an `IpAddr`.
    fn forbidden_addr() -> impl Strategy<Value = IpAddr> {
        (0..FORBIDDEN.len(), any::<u128>()).prop_map(|(i, bits)| {
            let net = FORBIDDEN[i].0;
            match net {
                IpNet::V4(n) => {
                    let host = (bits as u32) & !u32::from(n.netmask());
                    IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
                }
                IpNet::V6(n) => {
                    let host = bits & !u128::from(n.netmask());
                    IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
                }
            }
        })
    }

    proptest! {
        /// No address in a forbidden range, nor its IPv4-mapped form, passes
        /// without an allow CIDR; with its own /32 or /128 allowed, it does.
        #[test]
        fn forbidden_addresses_never_pass_unless_allowed(addr in forbidden_addr()) {
            let policy = EgressPolicy::default();
            prop_assert!(policy.check_addr(addr).is_err());
            if let IpAddr::V4(v4) = addr {
                prop_assert!(policy.check_addr(IpAddr::V6(v4.to_ipv6_mapped())).is_err());
            }
            let open = EgressPolicy::new(vec![IpNet::from(addr)]);
            prop_assert!(open.check_addr(addr).is_ok());
        }
    }
}
