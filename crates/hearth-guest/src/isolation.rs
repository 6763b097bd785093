//! Keeping workloads away from the agent and its cgroups.
//!
//! Workloads run as root in the guest, and root could otherwise reach into
//! PID 1: take its host channel (`pidfd_getfd(pidfd_open(1), fd)`), read
//! its memory (`/proc/1/mem`), raise its own cgroup's `memory.max` or move
//! itself into the agent's cgroup, unbind the virtio console driver in
//! `/sys`, or point `kernel.core_pattern` at a program the kernel then runs
//! with every capability. So, unless the sandbox is privileged:
//!
//! - the agent is not dumpable ([`protect_agent`]): `ptrace`, `pidfd_getfd`,
//!   `process_vm_readv` and `/proc/1/{fd,mem,environ,maps}` then need
//!   `CAP_SYS_PTRACE`, which workloads lack (and their permitted set is not
//!   a superset of the agent's, which `ptrace_may_access` checks too);
//! - each exec gets its own mount namespace in which `/sys` (with
//!   `/sys/fs/cgroup`), `/proc/sys` and `/proc/sysrq-trigger` are read-only,
//!   and without `CAP_SYS_ADMIN` it cannot remount them;
//! - each exec loses [`DROPPED_CAPS`] from its bounding, permitted,
//!   effective, inheritable and ambient sets, so neither it nor anything it
//!   executes (setuid-root programs included) gets them back. It stays uid
//!   0 with every other capability, so package installs work as root
//!   (`CAP_CHOWN`, `CAP_FOWNER`, `CAP_DAC_OVERRIDE`, `CAP_SETUID`/`SETGID`
//!   for apt's `_apt` user, `CAP_SYS_CHROOT`, ...).
//!
//! `PR_SET_NO_NEW_PRIVS` is not set: with the bounding set reduced a
//! setuid-root program gains nothing a root workload does not already have,
//! and the flag would break setuid programs (`su`, `ping`) for the
//! non-root users a workload creates.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;

/// Capabilities no exec of an unprivileged sandbox has, with why.
pub const DROPPED_CAPS: [(u32, &str); 9] = [
    (CAP_SYS_MODULE, "load kernel modules"),
    (
        CAP_SYS_RAWIO,
        "raw memory and port I/O (/dev/mem, /proc/kcore)",
    ),
    (
        CAP_SYS_PTRACE,
        "trace or take file descriptors of the agent",
    ),
    (
        CAP_SYS_ADMIN,
        "remount /sys and the cgroup tree writable, setns",
    ),
    (CAP_SYS_BOOT, "reboot or kexec the guest"),
    (CAP_SYS_NICE, "real-time scheduling that starves the agent"),
    (
        CAP_SYS_RESOURCE,
        "an OOM score of -1000 like the agent's, limits past the hard ones",
    ),
    (CAP_PERFMON, "perf and tracing programs that read the agent"),
    (CAP_BPF, "BPF programs that read or change the agent"),
];

const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Highest capability this kernel knows when `/proc` cannot say (Linux 6.x:
/// `CAP_CHECKPOINT_RESTORE`).
const DEFAULT_LAST_CAP: u32 = 40;

/// Paths made read-only in an exec's mount namespace; `/sys` recursively,
/// which includes the cgroup tree.
const READ_ONLY: [&str; 3] = ["/sys", "/proc/sys", "/proc/sysrq-trigger"];

/// The capability mask a workload keeps: every capability up to `last_cap`
/// that `current` (the agent's permitted set) holds, minus
/// [`DROPPED_CAPS`].
pub fn workload_caps(last_cap: u32, current: u64) -> u64 {
    let all = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let dropped = DROPPED_CAPS
        .iter()
        .fold(0u64, |mask, (cap, _)| mask | 1 << cap);
    all & current & !dropped
}

/// Make the agent non-dumpable: only a process with `CAP_SYS_PTRACE` may
/// then trace it, take its descriptors or read its `/proc` files. Kept
/// across the agent's life (it never executes another program).
pub fn protect_agent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The agent's OOM score adjustment: never chosen by the OOM killer.
pub const AGENT_OOM_SCORE_ADJ: &str = "-1000";

/// How often [`keep_oom_score`] looks at the agent's OOM score.
pub const OOM_SCORE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Put the agent's `oom_score_adj` back to [`AGENT_OOM_SCORE_ADJ`] whenever
/// something changed it. Root may write `/proc/<pid>/oom_score_adj` of any
/// process (raising it needs no capability, and every thread of the agent
/// has such a file, so no mount can hide them all); this undoes it within
/// [`OOM_SCORE_CHECK`]. Only a global OOM could then pick the agent, and
/// the workload's `memory.max` keeps it below the guest's memory. Runs
/// until the runtime stops.
pub async fn keep_oom_score() {
    let mut ticks = tokio::time::interval(OOM_SCORE_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // An in-memory /proc file: microseconds, fine on this task.
        let current = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
        if current.trim() != AGENT_OOM_SCORE_ADJ {
            match std::fs::write("/proc/self/oom_score_adj", AGENT_OOM_SCORE_ADJ) {
                Ok(()) => crate::info!(
                    "the agent's oom_score_adj was changed to {}; set back to {AGENT_OOM_SCORE_ADJ}",
                    current.trim()
                ),
                Err(e) => crate::info!("cannot restore the agent's oom_score_adj: {e}"),
            }
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// What an exec's child applies to itself between fork and exec, prepared
/// in the parent so the child only makes system calls (no allocation).
#[derive(Debug, Clone)]
pub struct Isolation {
    /// Capabilities the workload keeps.
    keep: u64,
    /// Highest capability number of this kernel.
    last_cap: u32,
    read_only: Vec<CString>,
}

impl Isolation {
    /// Read this kernel's capability count and the agent's own capabilities.
    pub fn prepare() -> io::Result<Self> {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(DEFAULT_LAST_CAP)
            .min(63);
        let current = current_permitted()?;
        Ok(Self {
            keep: workload_caps(last_cap, current),
            last_cap,
            read_only: READ_ONLY
                .iter()
                .map(|p| CString::new(*p).expect("no NUL in a constant path"))
                .collect(),
        })
    }

    /// The capability mask the exec keeps.
    pub fn kept_caps(&self) -> u64 {
        self.keep
    }

    /// Apply the isolation to the calling process. Only async-signal-safe
    /// system calls: this runs in the child between fork and exec.
    pub fn apply_in_child(&self) -> io::Result<()> {
        // SAFETY: unshare takes an integer flag; the child is single-threaded.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        // Nothing done in this namespace may reach the agent's.
        // SAFETY: mount with a static NUL-terminated target and null
        // source, type and data, which MS_REC|MS_PRIVATE allows.
        check(unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        })?;
        for path in &self.read_only {
            make_read_only(path)?;
        }
        for cap in 0..=self.last_cap {
            if self.keep & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                let ret =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                // EINVAL: a capability this kernel does not have.
                if ret < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let word = |i: u32| (self.keep >> (32 * i)) as u32;
        let data = [0, 1].map(|i| CapData {
            effective: word(i),
            permitted: word(i),
            inheritable: 0,
        });
        // SAFETY: capset reads a valid header and two data structs, as
        // version 3 requires; both live on this stack frame.
        check(unsafe {
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int
        })?;
        // SAFETY: prctl with integer arguments only.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        })?;
        Ok(())
    }
}

/// Make `path` read-only in this mount namespace: bound onto itself, then
/// set read-only with every mount under it. A path that does not exist is
/// skipped (nothing to protect).
fn make_read_only(path: &CString) -> io::Result<()> {
    // SAFETY: bind-mount of a NUL-terminated path onto itself; null type and
    // data are allowed with MS_BIND.
    let bound = unsafe {
        libc::mount(
            path.as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if bound < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENOENT) => Ok(()),
            _ => Err(error),
        };
    }
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (valid, its size passed) and a
    // NUL-terminated path; AT_RECURSIVE covers the mounts below it.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) as libc::c_int
    })
    .map(drop)
}

/// The calling process's permitted capabilities.
fn current_permitted() -> io::Result<u64> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data structs (version 3) into `data`, which
    // is large enough, and reads the header.
    check(unsafe {
        libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) as libc::c_int
    })?;
    Ok(u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32)
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Capability names by number, for messages and tests.
pub fn cap_name(cap: u32) -> Option<&'static str> {
    Some(match cap {
        CAP_SYS_MODULE => "CAP_SYS_MODULE",
        CAP_SYS_RAWIO => "CAP_SYS_RAWIO",
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_SYS_BOOT => "CAP_SYS_BOOT",
        CAP_SYS_NICE => "CAP_SYS_NICE",
        CAP_SYS_RESOURCE => "CAP_SYS_RESOURCE",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP_CHOWN: u32 = 0;
    const CAP_DAC_OVERRIDE: u32 = 1;
    const CAP_FOWNER: u32 = 3;
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    const CAP_SYS_CHROOT: u32 = 18;
    const CAP_CHECKPOINT_RESTORE: u32 = 40;

    #[test]
    fn package_install_capabilities_are_kept_and_the_dangerous_ones_dropped() {
        let keep = workload_caps(40, u64::MAX);
        for cap in [
            CAP_CHOWN,
            CAP_DAC_OVERRIDE,
            CAP_FOWNER,
            CAP_SETGID,
            CAP_SETUID,
            CAP_SYS_CHROOT,
            CAP_CHECKPOINT_RESTORE,
        ] {
            assert_ne!(keep & (1 << cap), 0, "capability {cap} must be kept");
        }
        for (cap, why) in DROPPED_CAPS {
            assert_eq!(keep & (1 << cap), 0, "{:?} ({why})", cap_name(cap));
        }
        // Nothing past the kernel's last capability.
        assert_eq!(keep >> 41, 0);
        assert_eq!(keep.count_ones(), 41 - DROPPED_CAPS.len() as u32);
        // The /proc/self/status CapEff of such a process.
        assert_eq!(format!("{keep:016x}"), "0000013ffe14ffff");
    }

    #[test]
    fn only_capabilities_the_agent_has_are_kept() {
        let agent = (1 << CAP_CHOWN) | (1 << CAP_SYS_ADMIN);
        assert_eq!(workload_caps(40, agent), 1 << CAP_CHOWN);
        // An older kernel with fewer capabilities.
        assert_eq!(workload_caps(37, u64::MAX) >> 38, 0);
        assert_eq!(workload_caps(63, u64::MAX).count_ones(), 64 - 9);
    }
}
