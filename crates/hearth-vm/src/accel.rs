//! Which accelerator a VM runs on, and why.
//!
//! KVM only where it can run a stock kernel: `/dev/kvm` must open, the CPU
//! must advertise hardware virtualization (`vmx`/`svm`), and `/dev/kvm` must
//! not be served by `kvm_pvm` (PVM runs only PVM-patched guest kernels; a stock
//! kernel hangs in early boot there). Otherwise TCG, QEMU's software emulation.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, VmError};

/// An accelerator QEMU can run a guest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (multi-threaded TCG).
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asked for: a specific accelerator or automatic choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelPreference {
    /// KVM when usable, TCG otherwise.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG even when KVM is usable.
    Tcg,
}

impl FromStr for AccelPreference {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: use auto, kvm or tcg"
            )),
        }
    }
}

/// The accelerator chosen and the reason, for `hearth doctor` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    /// Chosen accelerator.
    pub accel: Accel,
    /// Why it was chosen (and why KVM was not, when it was not).
    pub reason: String,
}

/// Facts about the host that decide whether KVM is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// `/dev/kvm` opened read-write.
    pub dev_kvm_opens: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_has_virt: bool,
    /// The `kvm_pvm` module is loaded.
    pub pvm_loaded: bool,
}

impl KvmProbe {
    /// Read the facts from this host.
    pub fn read() -> Self {
        let dev_kvm_opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let pvm_loaded = Path::new("/sys/module/kvm_pvm").exists()
            || std::fs::read_to_string("/proc/modules")
                .map(|m| m.lines().any(|l| l.starts_with("kvm_pvm ")))
                .unwrap_or(false);
        Self {
            dev_kvm_opens,
            cpu_has_virt: cpuinfo_has_virt(&cpuinfo),
            pvm_loaded,
        }
    }

    /// Why KVM cannot run a stock kernel here, or `None` if it can.
    pub fn unusable_reason(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if !self.dev_kvm_opens {
            reasons.push("/dev/kvm cannot be opened read-write");
        }
        if !self.cpu_has_virt {
            reasons.push("the CPU flags show neither vmx nor svm");
        }
        if self.pvm_loaded {
            reasons
                .push("/dev/kvm is served by kvm_pvm, which runs only PVM-patched guest kernels");
        }
        if reasons.is_empty() {
            None
        } else {
            Some(reasons.join("; "))
        }
    }
}

fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Choose the accelerator for `preference` given the host facts in `probe`.
pub fn choose(preference: AccelPreference, probe: &KvmProbe) -> Result<AccelChoice> {
    let unusable = probe.unusable_reason();
    match (preference, unusable) {
        (AccelPreference::Tcg, _) => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: "TCG requested".into(),
        }),
        (AccelPreference::Kvm, Some(reason)) => Err(VmError::KvmUnavailable { reason }),
        (_, None) => Ok(AccelChoice {
            accel: Accel::Kvm,
            reason: "/dev/kvm is usable and the CPU supports hardware virtualization".into(),
        }),
        (AccelPreference::Auto, Some(reason)) => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: format!("KVM unusable ({reason}); using TCG software emulation"),
        }),
    }
}

/// Choose the accelerator for `preference` on this host.
pub fn detect(preference: AccelPreference) -> Result<AccelChoice> {
    choose(preference, &KvmProbe::read())
}

#[cfg(test)]
mod tests {
    use super::*;

    const USABLE: KvmProbe = KvmProbe {
        dev_kvm_opens: true,
        cpu_has_virt: true,
        pvm_loaded: false,
    };

    #[test]
    fn auto_picks_kvm_only_when_fully_usable() {
        assert_eq!(
            choose(AccelPreference::Auto, &USABLE).unwrap().accel,
            Accel::Kvm
        );
        let pvm = KvmProbe {
            pvm_loaded: true,
            ..USABLE
        };
        let choice = choose(AccelPreference::Auto, &pvm).unwrap();
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(choice.reason.contains("kvm_pvm"), "{}", choice.reason);
    }

    #[test]
    fn forced_kvm_fails_with_the_reason() {
        let no_virt = KvmProbe {
            cpu_has_virt: false,
            ..USABLE
        };
        let err = choose(AccelPreference::Kvm, &no_virt)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vmx"), "{err}");
    }

    #[test]
    fn forced_tcg_is_honoured() {
        assert_eq!(
            choose(AccelPreference::Tcg, &USABLE).unwrap().accel,
            Accel::Tcg
        );
    }

    #[test]
    fn cpuinfo_flags_are_matched_as_words() {
        assert!(cpuinfo_has_virt("flags\t\t: fpu vme vmx sse\n"));
        assert!(!cpuinfo_has_virt("flags\t\t: fpu vmxx hypervisor\n"));
        assert!(!cpuinfo_has_virt("model name : svm box\n"));
    }

    #[test]
    fn preference_parses() {
        assert_eq!("tcg".parse(), Ok(AccelPreference::Tcg));
        assert!("xen"
            .parse::<AccelPreference>()
            .unwrap_err()
            .contains("auto"));
    }
}
