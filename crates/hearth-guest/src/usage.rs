//! `GET /v1/usage` and the `/proc` parsing it (and the hello) rely on.

use std::fs;

use hearth_proto::Usage;

use crate::cgroup::{parse_keyed, parse_single, Cgroups};
use crate::sys;

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// Memory figures from `/proc/meminfo`, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`.
    pub available: u64,
}

/// Parse `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024
    };
    MemInfo {
        total: field("MemTotal"),
        available: field("MemAvailable"),
    }
}

/// Read `/proc/meminfo`.
pub fn meminfo() -> MemInfo {
    fs::read_to_string("/proc/meminfo")
        .map(|text| parse_meminfo(&text))
        .unwrap_or_default()
}

/// Non-idle CPU time of all CPUs from `/proc/stat`'s `cpu` line, in
/// microseconds (user + nice + system + irq + softirq + steal).
pub fn parse_proc_stat_busy_usec(text: &str) -> u64 {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    busy * (1_000_000 / USER_HZ)
}

/// Seconds since boot from `/proc/uptime`, as milliseconds.
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((seconds * 1000.0) as u64)
}

/// Milliseconds since the kernel started.
pub fn uptime_ms() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| parse_uptime_ms(&t))
        .unwrap_or(0)
}

/// Collect usage: the workload cgroup when there is one, `/proc` and
/// `statvfs("/")` always (on the overlay root, statfs reports the writable
/// layer).
pub fn collect(cgroups: Option<&Cgroups>, memory_limit_bytes: u64) -> Usage {
    let mem = meminfo();
    let guest_cpu_usec = fs::read_to_string("/proc/stat")
        .map(|t| parse_proc_stat_busy_usec(&t))
        .unwrap_or(0);
    let (disk_total, disk_available) = sys::statvfs("/").unwrap_or((0, 0));
    let read = |file: &str| cgroups.and_then(|c| c.read_workload(file));
    let single = |file: &str| read(file).and_then(|t| parse_single(&t));
    let keyed = |file: &str, key: &str| read(file).and_then(|t| parse_keyed(&t, key));
    let limit = single("memory.max").unwrap_or(if memory_limit_bytes > 0 {
        memory_limit_bytes
    } else {
        mem.total
    });
    if let Some(cgroups) = cgroups {
        cgroups.retry_stale();
    }
    Usage {
        workload_cpu_usec: keyed("cpu.stat", "usage_usec").unwrap_or(0),
        guest_cpu_usec,
        workload_memory_bytes: single("memory.current").unwrap_or(0),
        workload_memory_peak_bytes: single("memory.peak").unwrap_or(0),
        workload_memory_limit_bytes: limit,
        mem_total_bytes: mem.total,
        mem_available_bytes: mem.available,
        disk_used_bytes: disk_total.saturating_sub(disk_available),
        disk_total_bytes: disk_total,
        pids: single("pids.current").unwrap_or(0),
        // Kernel OOM kills plus the memory guard's, which end a command the
        // same way and are reported the same way.
        oom_kills: keyed("memory.events", "oom_kill").unwrap_or(0)
            + cgroups.map_or(0, Cgroups::guard_kills),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:         254000 kB\nMemFree:          100000 kB\nMemAvailable:     200000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            MemInfo {
                total: 254_000 * 1024,
                available: 200_000 * 1024
            }
        );
        assert_eq!(parse_meminfo("garbage"), MemInfo::default());
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  10 2 3 1000 50 1 1 1 0 0\ncpu0 10 2 3 1000 50 1 1 1 0 0\n";
        assert_eq!(parse_proc_stat_busy_usec(text), 18 * 10_000);
        assert_eq!(parse_proc_stat_busy_usec(""), 0);
    }

    #[test]
    fn parses_uptime() {
        assert_eq!(parse_uptime_ms("1.25 0.50\n"), Some(1250));
        assert_eq!(parse_uptime_ms(""), None);
    }
}
