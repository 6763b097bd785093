//! Egress for host-side calls: the address policy (in `hearth-net`, shared
//! with the sandbox network) and a resolver that enforces it for
//! `reqwest`.

use std::net::SocketAddr;
use std::sync::Arc;

pub use hearth_net::egress::{EgressPolicy, EgressRefusal};

/// A resolver for `reqwest` that resolves names on the host and hands the
/// client only the addresses the policy allows, so the client cannot
/// connect anywhere else. When every address is refused, resolution fails
/// with an [`EgressRefusal`] (found in the error's `source()` chain).
///
/// IP-literal URLs never reach a resolver: check their host with
/// [`EgressPolicy::check_addr`] before sending.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    policy: Arc<EgressPolicy>,
}

impl CheckedResolver {
    /// A resolver that enforces `policy`.
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if resolved.is_empty() {
                return Err(format!("{host} resolved to no address").into());
            }
            let kept = policy.filter_addrs(&host, resolved)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}
