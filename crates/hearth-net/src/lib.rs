//! What a sandbox may reach on the network, decided on the host.
//!
//! A sandbox's VM has no network device; whatever it reaches, it reaches
//! through the Hearth process, which decides with a [`NetworkPolicy`]: the
//! sandbox's mode (`none`, `allowlist` or `open`) and, for an allowlist,
//! its entries. A destination is checked twice: by name and port before
//! anything is resolved ([`NetworkPolicy::check_destination`]), so a name
//! not on the list is never even looked up, and by address after the host
//! resolves it ([`NetworkPolicy::check_resolved`]), where the
//! [`EgressPolicy`] refuses loopback, private, link-local and metadata
//! addresses in every mode unless the operator allowed the range.
//!
//! Modules: [`egress`] (the address ranges refused after resolution, shared
//! with host-side tool calls), [`policy`] (modes, allowlist entries and the
//! decisions), [`hosts`] (resolution on the host, with a test-only hosts
//! file override), [`connect`] (opening an allowed connection), [`sni`]
//! (the server name in a TLS ClientHello, checked against the connection's
//! name), [`limits`] (rate, byte cap and connection count).

pub mod connect;
pub mod egress;
pub mod hosts;
pub mod limits;
pub mod policy;
pub mod sni;

pub use connect::{ConnectError, Connector, Opened};
pub use egress::{EgressPolicy, EgressRefusal};
pub use hosts::{HostsOverride, Resolver, SystemResolver};
pub use limits::{NetworkLimits, RateBucket};
pub use policy::{AllowEntry, NetworkMode, NetworkPolicy, PolicyError, Refusal, Rule};
