//! Prometheus metrics, served at `GET /metrics` in the text format.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use hearth_store::SandboxState;

/// Label of a sandbox state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state name.
    pub state: String,
}

/// Label of an end reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The end reason (`destroyed`, `timed_out`, `vm_crashed`, ...).
    pub reason: String,
}

/// Label of the admission limit that refused a create.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// `sandboxes`, `memory` or `vcpus`.
    pub limit: String,
}

/// Label of how an exec ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExitLabel {
    /// `exited`, `signaled`, `oom_killed`, `timed_out`, `killed`, ...
    pub reason: String,
}

/// Label of a sandbox connection attempt's verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabel {
    /// `allowed` or `refused`.
    pub verdict: &'static str,
}

/// Label of a direction of sandbox network bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressBytesLabel {
    /// `up` (program to destination) or `down`.
    pub direction: &'static str,
}

/// Exec durations from 5 ms to about 20 minutes.
fn exec_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// Every metric the server keeps. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Live and ended sandboxes by state, since the server started.
    pub sandboxes: Family<StateLabel, Gauge>,
    /// Creates admitted.
    pub creates: Counter,
    /// Sandboxes ended, by reason.
    pub ends: Family<ReasonLabel, Counter>,
    /// Sandboxes that ended with a failure reason (VMM died, guest kernel or
    /// agent crashed, boot failed, host channel lost).
    pub vm_crashes: Counter,
    /// Creates refused by admission control, by limit.
    pub admission_refusals: Family<LimitLabel, Counter>,
    /// Seconds from create to the guest answering.
    pub boot_seconds: Histogram,
    /// Seconds an exec ran, by how it ended.
    pub exec_seconds: Family<ExitLabel, Histogram>,
    /// Sandbox connection attempts, by verdict.
    pub egress_connections: Family<EgressLabel, Counter>,
    /// Sandbox network bytes, by direction, counted when each connection
    /// ends.
    pub egress_bytes: Family<EgressBytesLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, all registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hearth");
        let sandboxes = Family::<StateLabel, Gauge>::default();
        registry.register("sandboxes", "Sandboxes by state", sandboxes.clone());
        let creates = Counter::default();
        registry.register(
            "sandbox_creates",
            "Sandbox creates admitted",
            creates.clone(),
        );
        let ends = Family::<ReasonLabel, Counter>::default();
        registry.register("sandbox_ends", "Sandboxes ended, by reason", ends.clone());
        let vm_crashes = Counter::default();
        registry.register(
            "vm_crashes",
            "Sandboxes whose VM, guest kernel or guest agent crashed",
            vm_crashes.clone(),
        );
        let admission_refusals = Family::<LimitLabel, Counter>::default();
        registry.register(
            "admission_refusals",
            "Creates refused by admission control, by the limit hit",
            admission_refusals.clone(),
        );
        let boot_seconds = Histogram::new(exponential_buckets(0.25, 1.5, 14));
        registry.register(
            "sandbox_boot_seconds",
            "Seconds from create to the guest agent answering",
            boot_seconds.clone(),
        );
        let exec_seconds: Family<ExitLabel, Histogram> =
            Family::new_with_constructor(exec_histogram as fn() -> Histogram);
        registry.register(
            "exec_duration_seconds",
            "Seconds an exec ran, by how it ended",
            exec_seconds.clone(),
        );
        let egress_connections = Family::<EgressLabel, Counter>::default();
        registry.register(
            "egress_connections",
            "Sandbox network connection attempts, by verdict",
            egress_connections.clone(),
        );
        let egress_bytes = Family::<EgressBytesLabel, Counter>::default();
        registry.register(
            "egress_bytes",
            "Sandbox network bytes, by direction (up: to the destination), counted as each connection ends",
            egress_bytes.clone(),
        );
        for verdict in ["allowed", "refused"] {
            let _ = egress_connections.get_or_create(&EgressLabel { verdict });
        }
        for direction in ["up", "down"] {
            let _ = egress_bytes.get_or_create(&EgressBytesLabel { direction });
        }
        for state in SandboxState::ALL {
            let _ = sandboxes.get_or_create(&StateLabel {
                state: state.as_str().into(),
            });
        }
        Self {
            registry: Arc::new(registry),
            sandboxes,
            creates,
            ends,
            vm_crashes,
            admission_refusals,
            boot_seconds,
            exec_seconds,
            egress_connections,
            egress_bytes,
        }
    }

    /// Move one sandbox from `from` (if any) to `to`.
    pub fn moved(&self, from: Option<SandboxState>, to: SandboxState) {
        if let Some(from) = from {
            self.sandboxes
                .get_or_create(&StateLabel {
                    state: from.as_str().into(),
                })
                .dec();
        }
        self.sandboxes
            .get_or_create(&StateLabel {
                state: to.as_str().into(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
