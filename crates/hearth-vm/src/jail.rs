//! What confines each QEMU process beyond the VM boundary, so that a QEMU
//! escape is not root with the host's full view: QEMU's own seccomp filter
//! (`-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,
//! resourcecontrol=deny`: no obsolete syscalls, no setuid, no fork or exec,
//! no scheduler or affinity changes) and a new, empty network namespace (a
//! VM has no network device, so QEMU needs none; its channels are Unix
//! sockets by path or inherited descriptors).
//!
//! Each part is used where this host supports it and reported, with why
//! not, by [`Jail::report`] (`hearth doctor`). Not yet: running QEMU as an
//! unprivileged user in a mount namespace that shows only its own files, a
//! PID namespace, and a cgroup of its own.

use std::path::Path;

/// QEMU's seccomp filter, as its command-line option.
pub const SECCOMP_OPTION: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Environment variable that turns the jail off (`off`), to measure what it
/// costs or to rule it out when debugging; `hearth doctor` says so.
pub const JAIL_ENV: &str = "HEARTH_VMM_JAIL";

/// Which confinements every VMM gets on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// QEMU's seccomp filter; `Err` says why not.
    pub seccomp: Result<(), String>,
    /// A new network namespace; `Err` says why not.
    pub network_namespace: Result<(), String>,
}

impl Jail {
    /// No confinement, with `why`.
    pub fn off(why: &str) -> Self {
        Self {
            seccomp: Err(why.to_string()),
            network_namespace: Err(why.to_string()),
        }
    }

    /// What `binary` and this process can do, unless `HEARTH_VMM_JAIL=off`.
    pub fn detect(binary: &Path) -> Self {
        if std::env::var(JAIL_ENV).is_ok_and(|v| v == "off") {
            return Self::off(&format!("turned off by {JAIL_ENV}=off"));
        }
        Self {
            seccomp: seccomp_supported(binary),
            network_namespace: network_namespace_allowed(),
        }
    }

    /// Whether QEMU gets its seccomp filter.
    pub fn seccomp(&self) -> bool {
        self.seccomp.is_ok()
    }

    /// Whether QEMU starts in a new network namespace.
    pub fn network_namespace(&self) -> bool {
        self.network_namespace.is_ok()
    }

    /// One line per confinement: in force, or not and why.
    pub fn report(&self) -> Vec<String> {
        let line = |name: &str, state: &Result<(), String>| match state {
            Ok(()) => format!("{name}: on"),
            Err(why) => format!("{name}: off ({why})"),
        };
        vec![
            line("seccomp filter (QEMU -sandbox)", &self.seccomp),
            line("network namespace (empty)", &self.network_namespace),
            "unprivileged user, mount namespace, PID namespace, own cgroup: not yet implemented"
                .to_string(),
        ]
    }
}

/// Whether `binary` knows the `-sandbox` option with the filter's settings
/// (a QEMU built without libseccomp refuses it while parsing its options,
/// before `-version` prints and exits).
fn seccomp_supported(binary: &Path) -> Result<(), String> {
    let output = std::process::Command::new(binary)
        .args(["-sandbox", SECCOMP_OPTION, "-version"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "this QEMU has no seccomp support: {}",
            stderr.trim().lines().next().unwrap_or("-sandbox refused")
        ))
    }
}

/// Whether this process may make network namespaces (root, or
/// `CAP_SYS_ADMIN`: checked by asking the kernel in a throwaway child).
fn network_namespace_allowed() -> Result<(), String> {
    let status = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => Err(
            "this process may not create network namespaces (needs root or CAP_SYS_ADMIN)".into(),
        ),
        Err(e) => Err(format!("cannot run unshare to check: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_is_on_and_why_the_rest_is_not() {
        let jail = Jail {
            seccomp: Ok(()),
            network_namespace: Err("needs root".into()),
        };
        let report = jail.report();
        assert_eq!(report[0], "seccomp filter (QEMU -sandbox): on");
        assert_eq!(report[1], "network namespace (empty): off (needs root)");
        assert!(report[2].contains("not yet"));
        assert!(!Jail::off("x").seccomp());
    }

    #[test]
    fn this_hosts_qemu_takes_the_filter() {
        // The suite runs as root with Debian's QEMU, built with libseccomp.
        let Some(qemu) = crate::qemu::find_on_path(crate::qemu::QEMU_BINARY) else {
            panic!("qemu-system-x86_64 is not installed: run scripts/setup.sh");
        };
        let jail = Jail::detect(&qemu);
        assert!(jail.seccomp(), "{:?}", jail.seccomp);
        assert!(jail.network_namespace(), "{:?}", jail.network_namespace);
    }
}
