//! Sandboxes' networks on a server: the operator's settings, each
//! sandbox's policy and limits, and the audit trail of every connection
//! attempt, written to the sandbox's event log and counted in metrics.
//!
//! Audit records reach the log through a bounded queue per sandbox: a
//! guest that floods connection attempts cannot grow the server's memory
//! or starve other writers; what the queue cannot hold is counted and
//! recorded as one `net.suppressed` event, and the metrics count
//! everything either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use hearth_engine::RunNetwork;
use hearth_net::{EgressPolicy, NetworkLimits, NetworkPolicy, Resolver, SystemResolver};
use hearth_sandbox::{AuditSink, EgressAudit};
use hearth_store::event::{NetConnection, NetSuppressed, NetworkSettings};
use hearth_store::{EventPayload, Lease};

use crate::events::EventLog;
use crate::metrics::{EgressBytesLabel, EgressLabel, Metrics};

/// Where the guest's proxy listens inside each VM.
pub const GUEST_PROXY: &str = "127.0.0.1:3128";

/// Audit records queued per sandbox before they are counted instead.
const AUDIT_QUEUE: usize = 1024;

/// The operator's network settings, for every sandbox of this server.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// Address ranges refused by default that the operator opened
    /// (`--egress-allow-cidr`).
    pub egress: Arc<EgressPolicy>,
    /// How sandboxes' destination names are resolved (the host's resolver;
    /// a hosts-file override in tests).
    pub resolver: Arc<dyn Resolver>,
    /// Limits for sandboxes whose create does not set them.
    pub limits: NetworkLimits,
    /// Route programs that ignore the proxy variables too (off only for
    /// the fake driver, whose agent runs on the host itself).
    pub transparent: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            egress: Arc::new(EgressPolicy::default()),
            resolver: Arc::new(SystemResolver),
            limits: NetworkLimits::default(),
            transparent: true,
        }
    }
}

/// What one sandbox may reach, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Mode and allowlist.
    pub policy: NetworkPolicy,
    /// Rate, byte cap, connections.
    pub limits: NetworkLimits,
}

impl NetworkSpec {
    /// No network.
    pub fn none() -> Self {
        Self {
            policy: NetworkPolicy::none(),
            limits: NetworkLimits::default(),
        }
    }

    /// Whether the sandbox has any network.
    pub fn enabled(&self) -> bool {
        self.policy.mode() != hearth_net::NetworkMode::None
    }

    /// As recorded in `sandbox.creating`; none for no network.
    pub fn settings(&self) -> Option<NetworkSettings> {
        self.enabled().then(|| NetworkSettings {
            mode: self.policy.mode().as_str().into(),
            allow: self.policy.entries(),
            rate_bytes: self.limits.rate,
            max_bytes: self.limits.max_bytes,
            max_connections: self.limits.max_connections as u64,
        })
    }
}

impl NetworkSpec {
    /// What a run's start stores: the policy as given, and only the limits
    /// it set, so that each launch's node applies its own defaults for the
    /// rest.
    pub fn for_run(&self, asked: &NetworkLimitsAsked) -> Option<RunNetwork> {
        self.enabled().then(|| RunNetwork {
            mode: self.policy.mode().as_str().into(),
            allow: self.policy.entries(),
            rate: asked.rate.then_some(self.limits.rate).flatten(),
            max_bytes: asked.max_bytes.then_some(self.limits.max_bytes).flatten(),
            max_connections: asked
                .max_connections
                .then_some(self.limits.max_connections as u32),
        })
    }

    /// A launch's network from what its run stored, under this node's
    /// `defaults`.
    pub fn of_run(network: Option<&RunNetwork>, defaults: NetworkLimits) -> Result<Self, String> {
        let Some(network) = network else {
            return Ok(Self::none());
        };
        let policy = NetworkPolicy::from_parts(&network.mode, &network.allow)
            .map_err(|e| format!("the run's network: {e}"))?;
        let mut limits = defaults;
        if network.rate.is_some() {
            limits.rate = network.rate;
        }
        if network.max_bytes.is_some() {
            limits.max_bytes = network.max_bytes;
        }
        if let Some(max) = network.max_connections {
            limits.max_connections = max as usize;
        }
        Ok(Self { policy, limits })
    }
}

/// Which limits a request set itself (the rest are the node's defaults).
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkLimitsAsked {
    /// `rate` was given.
    pub rate: bool,
    /// `max_bytes` was given.
    pub max_bytes: bool,
    /// `max_connections` was given.
    pub max_connections: bool,
}

/// The `net.connection` event of an audit record.
pub fn connection_event(record: &EgressAudit) -> NetConnection {
    NetConnection {
        host: record.host.clone(),
        port: record.port,
        via: match record.via {
            hearth_proto::EgressVia::Proxy => "proxy",
            hearth_proto::EgressVia::Transparent => "transparent",
        }
        .into(),
        transport: match record.transport {
            hearth_proto::EgressTransport::Tcp => "tcp",
            hearth_proto::EgressTransport::Udp => "udp",
        }
        .into(),
        exec_id: record.exec.clone(),
        addr: record.addr.map(|a| a.to_string()),
        allowed: record.allowed,
        rule: record.rule.clone(),
        reason: record.reason.clone(),
        ended_by: record.ended_by.clone(),
        bytes_up: record.bytes_up,
        bytes_down: record.bytes_down,
        duration_ms: record.duration_ms,
    }
}

/// What the queue could not hold since the last `net.suppressed`.
#[derive(Default)]
struct Suppressed {
    allowed: AtomicU64,
    refused: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Suppressed {
    fn add(&self, record: &EgressAudit) {
        let count = if record.allowed {
            &self.allowed
        } else {
            &self.refused
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.bytes_up.fetch_add(record.bytes_up, Ordering::Relaxed);
        self.bytes_down
            .fetch_add(record.bytes_down, Ordering::Relaxed);
    }

    /// What was counted, reset; none when nothing was.
    fn take(&self) -> Option<NetSuppressed> {
        let taken = NetSuppressed {
            allowed: self.allowed.swap(0, Ordering::Relaxed),
            refused: self.refused.swap(0, Ordering::Relaxed),
            bytes_up: self.bytes_up.swap(0, Ordering::Relaxed),
            bytes_down: self.bytes_down.swap(0, Ordering::Relaxed),
        };
        (taken.allowed + taken.refused > 0).then_some(taken)
    }
}

/// The audit sink of one sandbox: counts each record in `metrics` and
/// writes it to the sandbox's event log under `lease`. The writer ends
/// when the sink (held by the sandbox's network) is dropped.
pub fn audit_sink(sandbox_id: &str, lease: Lease, events: EventLog, metrics: Metrics) -> AuditSink {
    let (tx, mut rx) = mpsc::channel::<EgressAudit>(AUDIT_QUEUE);
    let suppressed = Arc::new(Suppressed::default());
    let counted = suppressed.clone();
    let id = sandbox_id.to_string();
    tokio::spawn(
        async move {
            while let Some(record) = rx.recv().await {
                let payload = EventPayload::NetConnection(connection_event(&record));
                events.record_or_log(Some(&id), &lease, payload).await;
                if let Some(lost) = counted.take() {
                    tracing::warn!(
                        allowed = lost.allowed,
                        refused = lost.refused,
                        "connection attempts came faster than they could be recorded; counted instead"
                    );
                    let payload = EventPayload::NetSuppressed(lost);
                    events.record_or_log(Some(&id), &lease, payload).await;
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    Arc::new(move |record: EgressAudit| {
        let verdict = if record.allowed { "allowed" } else { "refused" };
        metrics
            .egress_connections
            .get_or_create(&EgressLabel { verdict })
            .inc();
        for (direction, bytes) in [("up", record.bytes_up), ("down", record.bytes_down)] {
            metrics
                .egress_bytes
                .get_or_create(&EgressBytesLabel { direction })
                .inc_by(bytes);
        }
        if let Err(mpsc::error::TrySendError::Full(record)) = tx.try_send(record) {
            suppressed.add(&record);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(allowed: bool) -> EgressAudit {
        EgressAudit {
            host: "svc.test".into(),
            port: 443,
            via: hearth_proto::EgressVia::Transparent,
            transport: hearth_proto::EgressTransport::Tcp,
            exec: Some("x1".into()),
            addr: Some("127.0.0.1:443".parse().unwrap()),
            allowed,
            rule: Some("svc.test".into()),
            reason: None,
            ended_by: None,
            bytes_up: 10,
            bytes_down: 20,
            duration_ms: 3,
        }
    }

    #[test]
    fn an_audit_record_becomes_its_event() {
        let event = connection_event(&record(true));
        assert_eq!(event.via, "transparent");
        assert_eq!(event.transport, "tcp");
        assert_eq!(event.exec_id.as_deref(), Some("x1"));
        assert_eq!(event.addr.as_deref(), Some("127.0.0.1:443"));
        assert_eq!((event.bytes_up, event.bytes_down), (10, 20));
    }

    #[test]
    fn what_the_queue_cannot_hold_is_counted_once() {
        let suppressed = Suppressed::default();
        assert_eq!(suppressed.take(), None);
        suppressed.add(&record(true));
        suppressed.add(&record(false));
        suppressed.add(&record(false));
        assert_eq!(
            suppressed.take(),
            Some(NetSuppressed {
                allowed: 1,
                refused: 2,
                bytes_up: 30,
                bytes_down: 60
            })
        );
        assert_eq!(suppressed.take(), None);
    }

    #[test]
    fn a_runs_network_keeps_only_the_limits_it_asked_for() {
        let spec = NetworkSpec {
            policy: "allow:svc.test".parse().unwrap(),
            limits: NetworkLimits {
                rate: Some(1000),
                max_bytes: Some(5),
                max_connections: 7,
            },
        };
        let asked = NetworkLimitsAsked {
            rate: true,
            ..NetworkLimitsAsked::default()
        };
        let stored = spec.for_run(&asked).unwrap();
        assert_eq!(stored.rate, Some(1000));
        assert_eq!((stored.max_bytes, stored.max_connections), (None, None));
        let defaults = NetworkLimits {
            max_connections: 9,
            ..NetworkLimits::default()
        };
        let launch = NetworkSpec::of_run(Some(&stored), defaults).unwrap();
        assert_eq!(launch.policy, spec.policy);
        assert_eq!(launch.limits.rate, Some(1000));
        assert_eq!(launch.limits.max_connections, 9);
        assert_eq!(launch.limits.max_bytes, None);
        assert!(!NetworkSpec::of_run(None, defaults).unwrap().enabled());
        assert!(NetworkSpec::none().for_run(&asked).is_none());
    }

    #[test]
    fn a_sandbox_without_network_records_no_settings() {
        assert_eq!(NetworkSpec::none().settings(), None);
        let spec = NetworkSpec {
            policy: "allow:svc.test:443".parse().unwrap(),
            limits: NetworkLimits {
                rate: Some(1000),
                ..NetworkLimits::default()
            },
        };
        let settings = spec.settings().unwrap();
        assert_eq!(settings.mode, "allowlist");
        assert_eq!(settings.allow, vec!["svc.test:443".to_string()]);
        assert_eq!(settings.rate_bytes, Some(1000));
    }
}
