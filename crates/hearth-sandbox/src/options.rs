//! What a sandbox is made of, as the user asks for it, validated before
//! anything is started.

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_proto::ByteSize;
use hearth_vm::AccelPreference;

use crate::error::{Result, SandboxError};

/// Most vCPUs a sandbox may have.
pub const MAX_VCPUS: u32 = 64;
/// Least memory a sandbox may have (the guest kernel and agent need it).
pub const MIN_MEMORY: ByteSize = ByteSize::mib(128);
/// Most memory a sandbox may have.
pub const MAX_MEMORY: ByteSize = ByteSize::gib(256);
/// Default sandbox lifetime.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Smallest writable layer.
pub const MIN_DISK: ByteSize = ByteSize::mib(32);
/// Largest writable layer.
pub const MAX_DISK: ByteSize = ByteSize::gib(1024);
/// Longest timeout of any kind (lifetime, boot, exec): 30 days, the HTTP
/// API's limit too. Longer ones are refused, so deadlines never overflow.
pub const MAX_TIMEOUT: Duration = hearth_proto::limits::MAX_TIMEOUT;

/// Check a timeout option: positive and at most [`MAX_TIMEOUT`]. The error
/// names `field` and the accepted range.
pub(crate) fn check_timeout(field: &str, timeout: Duration) -> Result<()> {
    if timeout.is_zero() {
        return Err(SandboxError::InvalidOption(format!(
            "{field} must be positive"
        )));
    }
    if timeout > MAX_TIMEOUT {
        return Err(SandboxError::InvalidOption(format!(
            "{field} must be at most 30 days ({}s), got {}s",
            MAX_TIMEOUT.as_secs(),
            timeout.as_secs()
        )));
    }
    Ok(())
}

/// The instant `timeout` from now, for a timeout [`check_timeout`] accepted.
pub(crate) fn deadline_after(field: &str, timeout: Duration) -> Result<tokio::time::Instant> {
    check_timeout(field, timeout)?;
    tokio::time::Instant::now()
        .checked_add(timeout)
        .ok_or_else(|| {
            SandboxError::InvalidOption(format!(
                "{field} of {}s runs past the end of this system's clock",
                timeout.as_secs()
            ))
        })
}

/// How to build one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOptions {
    /// Name of the guest image (built by `hearth image build`).
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory.
    pub memory: ByteSize,
    /// Size of the writable layer: the most the workload can write to disk.
    pub disk: ByteSize,
    /// Lifetime after which the sandbox is killed and reported as timed out,
    /// counted from when it is ready. Defaults to [`DEFAULT_TIMEOUT`] so that
    /// nothing runs unbounded by accident; `None` means no limit.
    pub timeout: Option<Duration>,
    /// KVM, TCG or automatic.
    pub accel: AccelPreference,
    /// How long the guest may take to boot and answer.
    pub boot_timeout: Duration,
    /// Most processes the workload may have at once.
    pub pids_max: u32,
    /// Memory kept back from workloads for the guest agent and kernel;
    /// automatic (an eighth of memory, 48–256 MiB) when `None`.
    pub agent_reserve: Option<ByteSize>,
    /// Labels, kept with the sandbox for callers to find it by.
    pub labels: BTreeMap<String, String>,
    /// Where the writable layer lives: fresh and deleted with the sandbox,
    /// or a layer of a durable workspace's chain, kept and checkpointed.
    pub scratch: hearth_vm::ScratchDisk,
    /// Give execs full root in the guest: no mount namespace of their own,
    /// every capability, `/sys` and the cgroup tree writable. Off by
    /// default: execs then run as root but cannot reach the guest agent or
    /// its cgroups. For the rare workload that mounts filesystems, loads
    /// modules or traces arbitrary processes.
    pub privileged: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            image: "default".into(),
            vcpus: 1,
            memory: ByteSize::mib(512),
            disk: ByteSize::gib(1),
            timeout: Some(DEFAULT_TIMEOUT),
            accel: AccelPreference::Auto,
            boot_timeout: Duration::from_secs(60),
            pids_max: 1024,
            agent_reserve: None,
            labels: BTreeMap::new(),
            scratch: hearth_vm::ScratchDisk::Ephemeral,
            privileged: false,
        }
    }
}

impl SandboxOptions {
    /// Check every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(SandboxError::InvalidOption(msg));
        if self.image.is_empty()
            || !self
                .image
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || self.image.starts_with('.')
        {
            return invalid(format!(
                "image name {:?} is not valid: use letters, digits, '-', '_' and '.'",
                self.image
            ));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return invalid(format!(
                "vcpus must be between 1 and {MAX_VCPUS}, got {}",
                self.vcpus
            ));
        }
        if self.memory < MIN_MEMORY || self.memory > MAX_MEMORY {
            return invalid(format!(
                "memory must be between {MIN_MEMORY} and {MAX_MEMORY}, got {}",
                self.memory
            ));
        }
        if self.disk < MIN_DISK || self.disk > MAX_DISK {
            return invalid(format!(
                "disk must be between {MIN_DISK} and {MAX_DISK}, got {}",
                self.disk
            ));
        }
        if let Some(timeout) = self.timeout {
            check_timeout("timeout", timeout)?;
        }
        check_timeout("boot_timeout", self.boot_timeout)?;
        if self.pids_max < 16 {
            return invalid(format!(
                "pids_max must be at least 16, got {}",
                self.pids_max
            ));
        }
        if let Some(reserve) = self.agent_reserve {
            if reserve.bytes() * 2 > self.memory.bytes() {
                return invalid(format!(
                    "agent reserve {reserve} must be under half of memory {}",
                    self.memory
                ));
            }
        }
        Ok(())
    }

    /// The memory reserve for the guest agent and kernel, in MiB.
    pub fn agent_reserve_mib(&self) -> u32 {
        match self.agent_reserve {
            Some(reserve) => reserve.as_mib() as u32,
            None => (self.memory.as_mib() / 8).clamp(48, 256) as u32,
        }
    }
}

/// Parse a duration like `30s`, `5m`, `1h`, `1500ms` or a bare number of
/// seconds.
pub fn parse_duration(input: &str) -> std::result::Result<Duration, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: u64 = number.parse().map_err(|_| {
        format!("invalid duration {input:?}: expected a number with a unit, like 30s, 5m or 1h")
    })?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(value),
        "ms" => Duration::from_millis(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        other => {
            return Err(format!(
                "invalid duration {input:?}: unknown unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SandboxOptions::default().validate().unwrap();
    }

    #[test]
    fn rejects_zero_vcpus_with_range() {
        let err = SandboxOptions {
            vcpus: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("between 1 and 64"), "{err}");
    }

    #[test]
    fn huge_timeouts_are_refused_naming_the_field_and_the_limit() {
        let err = SandboxOptions {
            timeout: Some(Duration::MAX),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("timeout must be at most 30 days"), "{err}");
        let err = SandboxOptions {
            boot_timeout: Duration::MAX,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("boot_timeout must be at most 30 days"),
            "{err}"
        );
        let just_over = MAX_TIMEOUT + Duration::from_millis(1);
        assert!(SandboxOptions {
            timeout: Some(just_over),
            ..Default::default()
        }
        .validate()
        .is_err());
        SandboxOptions {
            timeout: Some(MAX_TIMEOUT),
            boot_timeout: MAX_TIMEOUT,
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(SandboxOptions {
            timeout: Some(Duration::ZERO),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string()
        .contains("timeout must be positive"));
    }

    #[test]
    fn deadlines_are_checked_not_overflowed() {
        let err = deadline_after("timeout", Duration::MAX)
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout must be at most 30 days"), "{err}");
        assert!(deadline_after("timeout", MAX_TIMEOUT).is_ok());
    }

    #[test]
    fn rejects_bad_image_names() {
        for name in ["", "../etc", "a/b", ".hidden"] {
            let opts = SandboxOptions {
                image: name.into(),
                ..Default::default()
            };
            assert!(opts.validate().is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn reserve_scales_with_memory() {
        let small = SandboxOptions {
            memory: ByteSize::mib(256),
            ..Default::default()
        };
        assert_eq!(small.agent_reserve_mib(), 48);
        let big = SandboxOptions {
            memory: ByteSize::gib(8),
            ..Default::default()
        };
        assert_eq!(big.agent_reserve_mib(), 256);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("-3s").is_err());
        assert!(parse_duration("3 days")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
