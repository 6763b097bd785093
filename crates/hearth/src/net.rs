//! The operator's network settings from the command line: which ranges are
//! reachable (`--egress-allow-cidr`) and, for tests, which names map where
//! (`--egress-hosts`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use hearth_net::{EgressPolicy, HostsOverride, Resolver, SystemResolver};

/// The ranges refused by default that `cidrs` opens (each a CIDR or an
/// address).
pub fn egress_policy(cidrs: &[String]) -> Result<EgressPolicy> {
    let mut allow = Vec::new();
    for cidr in cidrs {
        let net: ipnet::IpNet = cidr
            .parse()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                anyhow!(
                    "--egress-allow-cidr {cidr:?} is not a CIDR (e.g. 10.1.0.0/16) or an address"
                )
            })?;
        allow.push(net);
    }
    Ok(EgressPolicy::new(allow))
}

/// The host's resolver, answering first from `hosts` (an `/etc/hosts`-style
/// file, for tests and local development) when given.
pub fn resolver(hosts: Option<&Path>) -> Result<Arc<dyn Resolver>> {
    Ok(match hosts {
        Some(path) => Arc::new(
            HostsOverride::from_file(path, Arc::new(SystemResolver)).map_err(|e| anyhow!(e))?,
        ),
        None => Arc::new(SystemResolver),
    })
}
