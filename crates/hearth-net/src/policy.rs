//! A sandbox's network mode and allowlist, and the decisions they make.
//!
//! Written on the command line as `none`, `open` or
//! `allow:pypi.org,*.pythonhosted.org:443,203.0.113.0/24`, and in the API as
//! a mode and a list of the same entries. An entry is one of:
//!
//! - a host name, `api.example.com`, optionally with a port,
//!   `api.example.com:443`; names are compared without case and without a
//!   trailing dot;
//! - a wildcard, `*.example.com`, matching every name below `example.com`
//!   at any depth but not `example.com` itself (list both for both);
//! - an address or CIDR, `203.0.113.7`, `203.0.113.0/24`, `2001:db8::/32`,
//!   with a port as `203.0.113.0/24:443` or `[2001:db8::/32]:443`: it
//!   matches the address a destination resolves to (or is).
//!
//! A name matched by no name entry is not resolved at all unless the list
//! has address entries, so the guest cannot use lookups of arbitrary names
//! to leak data. Whatever an entry says, the [`EgressPolicy`] refuses
//! loopback, private, link-local and metadata addresses after resolution
//! unless the operator allowed the range: a sandbox's owner cannot open the
//! operator's network by listing it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::egress::EgressPolicy;

/// Most entries in one allowlist.
pub const MAX_ENTRIES: usize = 256;

/// Longest entry, in bytes (a name is at most 253, plus a port).
pub const MAX_ENTRY_LEN: usize = 300;

/// How a sandbox may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkMode {
    /// No network at all (the default).
    None,
    /// Only the destinations the entries allow.
    Allowlist,
    /// Any public destination.
    Open,
}

impl NetworkMode {
    /// The mode's name in the API (`none`, `allowlist`, `open`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Allowlist => "allowlist",
            Self::Open => "open",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bad network settings, each naming what was wrong and how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The mode is not a known one.
    #[error("network mode {0:?} is not one of none, open or allowlist (on the command line: none, open or allow:ENTRY,...)")]
    UnknownMode(String),
    /// An allowlist without entries.
    #[error("an allowlist needs at least one entry, e.g. allow:pypi.org,*.pythonhosted.org")]
    EmptyAllowlist,
    /// Entries given with a mode that takes none.
    #[error("network mode {0} takes no allow entries; use the allowlist mode for them")]
    EntriesWithoutAllowlist(NetworkMode),
    /// Too many entries.
    #[error("the allowlist has {0} entries; at most {MAX_ENTRIES} are allowed")]
    TooMany(usize),
    /// One entry is malformed.
    #[error("allowlist entry {index} ({entry:?}): {why}")]
    BadEntry {
        /// Its position, from 1.
        index: usize,
        /// The entry as given (cut to [`MAX_ENTRY_LEN`]).
        entry: String,
        /// What is wrong with it and how to write it.
        why: String,
    },
}

/// What an entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// Exactly this name (lowercase, no trailing dot).
    Host(String),
    /// Every name below this one (`*.` + it).
    Below(String),
    /// Addresses in this network.
    Net(IpNet),
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowEntry {
    target: Target,
    port: Option<u16>,
}

impl AllowEntry {
    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.port_matches(port)
            && match &self.target {
                Target::Host(host) => host == name,
                Target::Below(apex) => name
                    .strip_suffix(apex.as_str())
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
                Target::Net(_) => false,
            }
    }

    fn matches_addr(&self, addr: IpAddr, port: u16) -> bool {
        self.port_matches(port) && matches!(&self.target, Target::Net(net) if net.contains(&addr))
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.target, self.port) {
            (Target::Host(host), None) => f.write_str(host),
            (Target::Host(host), Some(port)) => write!(f, "{host}:{port}"),
            (Target::Below(apex), None) => write!(f, "*.{apex}"),
            (Target::Below(apex), Some(port)) => write!(f, "*.{apex}:{port}"),
            (Target::Net(net), None) => write!(f, "{}", NetText(net)),
            (Target::Net(IpNet::V4(net)), Some(port)) => {
                write!(f, "{}:{port}", NetText(&IpNet::V4(*net)))
            }
            (Target::Net(net), Some(port)) => write!(f, "[{}]:{port}", NetText(net)),
        }
    }
}

/// A network as written in an entry: a single address without its prefix.
struct NetText<'a>(&'a IpNet);

impl fmt::Display for NetText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.len() > MAX_ENTRY_LEN {
            return Err(format!("longer than {MAX_ENTRY_LEN} bytes"));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err("empty; remove the extra comma".into());
        }
        // `[v6 or v6/len]:port` or `[v6]`.
        if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or("an opening [ without a closing ]; write [2001:db8::/32]:443")?;
            let port = match after {
                "" => None,
                _ => {
                    Some(parse_port(after.strip_prefix(':').ok_or(
                        "after [...] comes :PORT; write [2001:db8::/32]:443",
                    )?)?)
                }
            };
            return Ok(Self {
                target: Target::Net(parse_net(inside)?),
                port,
            });
        }
        // A bare IPv6 address or network (several colons): no port.
        if text.matches(':').count() > 1 {
            return Ok(Self {
                target: Target::Net(parse_net(text)?),
                port: None,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (text, None),
        };
        if host.parse::<IpAddr>().is_ok() || host.contains('/') {
            return Ok(Self {
                target: Target::Net(parse_net(host)?),
                port,
            });
        }
        let target = match host.strip_prefix("*.") {
            Some(apex) => Target::Below(normalize_name(apex).map_err(|why| {
                format!("{why} (a wildcard is `*.` and a name, like *.example.com)")
            })?),
            None if host.contains('*') => {
                return Err(
                    "a wildcard must be the whole first label, like *.example.com (for any destination use the open mode)"
                        .into(),
                )
            }
            None => Target::Host(normalize_name(host)?),
        };
        Ok(Self { target, port })
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("port {text:?} is not a number from 1 to 65535")),
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text.parse().map_err(|_| {
        format!("{text:?} is not an address or CIDR (like 203.0.113.0/24 or 2001:db8::/32)")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set; the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A host name as compared: lowercase, no trailing dot, each label 1 to 63
/// of `a-z 0-9 - _` not starting or ending with `-`, 253 bytes at most.
/// (Names beyond ASCII are written in their `xn--` form.)
pub(crate) fn normalize_name(name: &str) -> Result<String, String> {
    let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if lower.is_empty() {
        return Err("an empty host name".into());
    }
    if lower.len() > 253 {
        return Err("a host name longer than 253 bytes".into());
    }
    for label in lower.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "{name:?} is not a host name: each dot-separated label has 1 to 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "{name:?} is not a host name: use letters, digits, - and _ (names beyond ASCII in their xn-- form)"
            ));
        }
    }
    Ok(lower)
}

/// Why a destination was allowed: the entry that matched, or the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(pub String);

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a destination was refused, for the audit log and the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A sandbox's network mode and, in allowlist mode, its entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkPolicy {
    mode: NetworkMode,
    allow: Vec<AllowEntry>,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        Self::none()
    }
}

impl NetworkPolicy {
    /// No network.
    pub fn none() -> Self {
        Self {
            mode: NetworkMode::None,
            allow: Vec::new(),
        }
    }

    /// Any public destination.
    pub fn open() -> Self {
        Self {
            mode: NetworkMode::Open,
            allow: Vec::new(),
        }
    }

    /// Only what `entries` allow.
    pub fn allowlist<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Self, PolicyError> {
        let mut allow = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let entry = entry.as_ref();
            if i >= MAX_ENTRIES {
                return Err(PolicyError::TooMany(i + 1));
            }
            let parsed = entry.parse().map_err(|why| PolicyError::BadEntry {
                index: i + 1,
                entry: entry.chars().take(MAX_ENTRY_LEN).collect(),
                why,
            })?;
            if !allow.contains(&parsed) {
                allow.push(parsed);
            }
        }
        if allow.is_empty() {
            return Err(PolicyError::EmptyAllowlist);
        }
        Ok(Self {
            mode: NetworkMode::Allowlist,
            allow,
        })
    }

    /// The API's form: a mode name and entries (only for `allowlist`).
    pub fn from_parts(mode: &str, allow: &[String]) -> Result<Self, PolicyError> {
        let mode = match mode {
            "none" => NetworkMode::None,
            "open" => NetworkMode::Open,
            "allowlist" => return Self::allowlist(allow),
            other => return Err(PolicyError::UnknownMode(other.to_string())),
        };
        if !allow.is_empty() {
            return Err(PolicyError::EntriesWithoutAllowlist(mode));
        }
        Ok(match mode {
            NetworkMode::Open => Self::open(),
            _ => Self::none(),
        })
    }

    /// The mode.
    pub fn mode(&self) -> NetworkMode {
        self.mode
    }

    /// The allowlist's entries, as written (normalized).
    pub fn entries(&self) -> Vec<String> {
        self.allow.iter().map(ToString::to_string).collect()
    }

    /// Whether a connection to `host` (a name or an address) on `port` may
    /// be attempted, before anything is resolved. `Ok(Some(rule))`: allowed
    /// by `rule` (the address is still checked); `Ok(None)`: allowed only
    /// if an address it resolves to is in an address entry.
    pub fn check_destination(&self, host: &str, port: u16) -> Result<Option<Rule>, Refusal> {
        if self.mode == NetworkMode::None {
            return Err(Refusal("this sandbox has no network (mode none)".into()));
        }
        if port == 0 {
            return Err(Refusal("port 0 is not a destination".into()));
        }
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>()
            .ok();
        if self.mode == NetworkMode::Open {
            if literal.is_none() {
                normalize_name(host).map_err(Refusal)?;
            }
            return Ok(Some(Rule("open".into())));
        }
        if let Some(addr) = literal {
            return match self.allow.iter().find(|e| e.matches_addr(addr, port)) {
                Some(entry) => Ok(Some(Rule(entry.to_string()))),
                None => Err(Refusal(format!(
                    "{addr} port {port} is not on the allowlist"
                ))),
            };
        }
        let name = normalize_name(host).map_err(Refusal)?;
        if let Some(entry) = self.allow.iter().find(|e| e.matches_name(&name, port)) {
            return Ok(Some(Rule(entry.to_string())));
        }
        if self
            .allow
            .iter()
            .any(|e| matches!(e.target, Target::Net(_)) && e.port_matches(port))
        {
            return Ok(None);
        }
        Err(Refusal(format!(
            "{name} port {port} is not on the allowlist"
        )))
    }

    /// Whether the connection allowed by [`Self::check_destination`] (its
    /// answer is `rule`) may go to `addr`, one of the addresses `host`
    /// resolved to: never to a range `egress` refuses, and when no name
    /// entry allowed it, only into an address entry.
    pub fn check_resolved(
        &self,
        rule: Option<&Rule>,
        host: &str,
        addr: IpAddr,
        port: u16,
        egress: &EgressPolicy,
    ) -> Result<Rule, Refusal> {
        if let Err(mut refusal) = egress.check_addr(addr) {
            refusal.host = Some(host.to_string());
            return Err(Refusal(refusal.to_string()));
        }
        if let Some(rule) = rule {
            return Ok(rule.clone());
        }
        match self.allow.iter().find(|e| e.matches_addr(addr, port)) {
            Some(entry) => Ok(Rule(entry.to_string())),
            None => Err(Refusal(format!(
                "{host} ({addr}) port {port} is not on the allowlist"
            ))),
        }
    }
}

impl fmt::Display for NetworkPolicy {
    /// The command-line form: `none`, `open` or `allow:ENTRY,...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Open => f.write_str("open"),
            NetworkMode::Allowlist => write!(f, "allow:{}", self.entries().join(",")),
        }
    }
}

impl FromStr for NetworkPolicy {
    type Err = PolicyError;

    /// The command-line form: `none`, `open` or `allow:ENTRY,...`.
    fn from_str(text: &str) -> Result<Self, PolicyError> {
        match text {
            "none" => Ok(Self::none()),
            "open" => Ok(Self::open()),
            _ => match text.strip_prefix("allow:") {
                Some("") => Err(PolicyError::EmptyAllowlist),
                Some(list) => Self::allowlist(list.split(',')),
                None => Err(PolicyError::UnknownMode(text.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(text: &str) -> NetworkPolicy {
        text.parse().unwrap()
    }

    fn loopback_allowed() -> EgressPolicy {
        EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])
    }

    #[test]
    fn the_three_modes_parse_and_print() {
        assert_eq!(policy("none"), NetworkPolicy::none());
        assert_eq!(policy("open").mode(), NetworkMode::Open);
        let p = policy(
            "allow:PyPI.org.,*.pythonhosted.org:443,203.0.113.0/24,[2001:db8::/32]:443,10.1.2.3",
        );
        assert_eq!(p.mode(), NetworkMode::Allowlist);
        assert_eq!(
            p.to_string(),
            "allow:pypi.org,*.pythonhosted.org:443,203.0.113.0/24,[2001:db8::/32]:443,10.1.2.3"
        );
        assert_eq!(policy(&p.to_string()), p);
        assert_eq!(
            NetworkPolicy::from_parts("allowlist", &["pypi.org".into()]).unwrap(),
            policy("allow:pypi.org")
        );
    }

    #[test]
    fn bad_settings_name_the_entry_and_the_fix() {
        let error = |text: &str| text.parse::<NetworkPolicy>().unwrap_err().to_string();
        assert!(error("allow:").contains("at least one entry"));
        assert!(error("allow:pypi.org,").contains("entry 2"));
        assert!(error("allow:pypi.org,").contains("remove the extra comma"));
        let wild = error("allow:a.com,*foo.com");
        assert!(
            wild.contains("entry 2 (\"*foo.com\")") && wild.contains("*.example.com"),
            "{wild}"
        );
        assert!(error("allow:a.*.com").contains("whole first label"));
        assert!(error("allow:*").contains("open mode"));
        let cidr = error("allow:10.0.0.0/33");
        assert!(cidr.contains("not an address or CIDR"), "{cidr}");
        assert!(error("allow:10.0.0.1/8").contains("host bits"));
        assert!(error("allow:pypi.org:0").contains("1 to 65535"));
        assert!(error("allow:pypi.org:http").contains("1 to 65535"));
        assert!(error("allow:exa mple.com").contains("not a host name"));
        assert!(error("allow:-a.com").contains("not a host name"));
        assert!(error("allow:[::1").contains("closing ]"));
        assert!(error("everything").contains("none, open or allowlist"));
        let long = format!("allow:{}", "a".repeat(400));
        assert!(error(&long).contains("longer than"));
        let many = format!("allow:{}", vec!["a.com"; 300].join(","));
        // Duplicates collapse, but the count is of entries given.
        assert!(error(&many).contains("at most 256"));
        assert_eq!(
            NetworkPolicy::from_parts("open", &["a.com".into()]).unwrap_err(),
            PolicyError::EntriesWithoutAllowlist(NetworkMode::Open)
        );
        assert!(NetworkPolicy::from_parts("wide", &[]).is_err());
    }

    #[test]
    fn names_match_exactly_or_below_a_wildcard() {
        let p = policy("allow:pypi.org,*.pythonhosted.org:443");
        assert!(p.check_destination("pypi.org", 443).unwrap().is_some());
        assert!(p.check_destination("PYPI.ORG.", 80).unwrap().is_some());
        assert!(p.check_destination("www.pypi.org", 443).is_err());
        let rule = p.check_destination("files.pythonhosted.org", 443).unwrap();
        assert_eq!(rule, Some(Rule("*.pythonhosted.org:443".into())));
        assert!(p
            .check_destination("a.b.pythonhosted.org", 443)
            .unwrap()
            .is_some());
        assert!(p.check_destination("pythonhosted.org", 443).is_err());
        assert!(p.check_destination("evilpythonhosted.org", 443).is_err());
        assert!(p.check_destination("files.pythonhosted.org", 80).is_err());
        // A name of digits only is an address, and no name entry covers it.
        assert!(policy("allow:*.5.8")
            .check_destination("8.5.5.8", 443)
            .is_err());
        let refused = p.check_destination("example.com", 443).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "example.com port 443 is not on the allowlist"
        );
    }

    #[test]
    fn addresses_match_address_entries_and_forbidden_ranges_hold_in_every_mode() {
        let egress = EgressPolicy::default();
        let p = policy("allow:203.0.113.0/24:443,api.example.com");
        // A literal in the range, on its port.
        let rule = p.check_destination("203.0.113.9", 443).unwrap();
        assert!(rule.is_some());
        assert!(p.check_destination("203.0.113.9", 80).is_err());
        // A name not listed is resolved only because address entries exist,
        // and passes only into them.
        assert_eq!(p.check_destination("cdn.example.net", 443).unwrap(), None);
        let addr = "203.0.113.20".parse().unwrap();
        assert!(p
            .check_resolved(None, "cdn.example.net", addr, 443, &egress)
            .is_ok());
        let elsewhere = "198.51.100.1".parse().unwrap();
        assert!(p
            .check_resolved(None, "cdn.example.net", elsewhere, 443, &egress)
            .is_err());
        // A listed name that resolves to metadata or a private address is
        // refused anyway, unless the operator allowed that range.
        let rule = p.check_destination("api.example.com", 443).unwrap();
        for bad in [
            "169.254.169.254",
            "10.0.0.1",
            "127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let refusal = p
                .check_resolved(
                    rule.as_ref(),
                    "api.example.com",
                    bad.parse().unwrap(),
                    443,
                    &egress,
                )
                .unwrap_err();
            assert!(
                refusal.to_string().contains("--egress-allow-cidr"),
                "{refusal}"
            );
            assert!(refusal.to_string().contains("api.example.com"), "{refusal}");
        }
        let loopback = "127.0.0.1".parse().unwrap();
        assert!(p
            .check_resolved(
                rule.as_ref(),
                "api.example.com",
                loopback,
                443,
                &loopback_allowed()
            )
            .is_ok());
        // Open mode: any name, still no private addresses.
        let open = NetworkPolicy::open();
        let rule = open.check_destination("anything.example", 8443).unwrap();
        assert!(open
            .check_resolved(
                rule.as_ref(),
                "anything.example",
                "10.9.9.9".parse().unwrap(),
                8443,
                &egress
            )
            .is_err());
        assert!(open.check_destination("not a name", 80).is_err());
        // None: nothing.
        let none = NetworkPolicy::none();
        assert!(none
            .check_destination("pypi.org", 443)
            .unwrap_err()
            .to_string()
            .contains("mode none"));
    }

    /// A label starting with a letter: a name of digit-only labels, such as
    /// `8.5.5.8`, is an address, and is checked as one.
    fn label() -> impl Strategy<Value = String> {
        "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
    }

    fn entry() -> impl Strategy<Value = String> {
        let port = prop::option::of(1u16..);
        prop_oneof![
            (name(), port.clone()).prop_map(|(n, p)| match p {
                Some(p) => format!("{n}:{p}"),
                None => n,
            }),
            (name(), port.clone()).prop_map(|(n, p)| match p {
                Some(p) => format!("*.{n}:{p}"),
                None => format!("*.{n}"),
            }),
            (any::<[u8; 4]>(), 8u8..=32, port).prop_map(|(a, len, p)| {
                let net = IpNet::new(IpAddr::from(a), len).unwrap().trunc();
                match p {
                    Some(p) => format!("{}:{p}", NetText(&net)),
                    None => NetText(&net).to_string(),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn an_allowlist_prints_as_it_parses(entries in prop::collection::vec(entry(), 1..8)) {
            let p = NetworkPolicy::allowlist(&entries).unwrap();
            prop_assert_eq!(p.to_string().parse::<NetworkPolicy>().unwrap(), p);
        }

        #[test]
        fn a_wildcard_covers_every_name_below_and_never_its_apex(
            apex in name(), sub in name(), port in 1u16..,
        ) {
            let p = NetworkPolicy::allowlist([format!("*.{apex}")]).unwrap();
            let below = format!("{sub}.{apex}");
            prop_assert!(p.check_destination(&below, port).unwrap().is_some());
            prop_assert!(p.check_destination(&below.to_uppercase(), port).unwrap().is_some());
            prop_assert!(p.check_destination(&apex, port).is_err());
            let glued = format!("{sub}{apex}");
            prop_assert!(p.check_destination(&glued, port).is_err());
        }

        #[test]
        fn no_mode_reaches_a_forbidden_address(
            octets in any::<[u8; 4]>(), which in 0usize..3, port in 1u16..,
        ) {
            let addr = IpAddr::from([10, octets[1], octets[2], octets[3]]);
            let p = match which {
                0 => NetworkPolicy::open(),
                1 => NetworkPolicy::allowlist(["10.0.0.0/8", "x.example"]).unwrap(),
                _ => NetworkPolicy::none(),
            };
            let egress = EgressPolicy::default();
            if let Ok(rule) = p.check_destination("x.example", port) {
                prop_assert!(p.check_resolved(rule.as_ref(), "x.example", addr, port, &egress).is_err());
            }
            let _ = octets[0];
        }
    }
}
