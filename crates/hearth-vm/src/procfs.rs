//! Process identity from `/proc`, so a recorded PID is never confused with a
//! different process that reused it.

use std::path::Path;

/// A process identified by PID and kernel start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    /// The PID.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
}

impl ProcessId {
    /// The identity of live process `pid`, or `None` if it does not exist.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Self {
            pid,
            start_time: parse_start_time(&stat)?,
        })
    }

    /// This process.
    pub fn current() -> Self {
        Self::of(std::process::id()).expect("/proc/self/stat is readable")
    }

    /// Whether this exact process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        parse_start_time(&stat) == Some(self.start_time) && parse_state(&stat) != Some('Z')
    }

    /// Send SIGKILL to this exact process; `false` if it was already gone.
    ///
    /// Checks identity first, so a PID reused by an unrelated process is left
    /// alone (a small window remains between the check and the signal; PIDs
    /// are not reused that fast in practice).
    #[allow(unsafe_code)]
    pub fn kill(&self) -> bool {
        if !self.is_alive() {
            return false;
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the PID was
        // checked to still name the recorded process just above.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) == 0 }
    }

    /// The process's command line, NUL separators replaced by spaces.
    pub fn cmdline(&self) -> Option<String> {
        let raw = std::fs::read(
            Path::new("/proc")
                .join(self.pid.to_string())
                .join("cmdline"),
        )
        .ok()?;
        Some(String::from_utf8_lossy(&raw).replace('\0', " "))
    }
}

/// The fields after the command name, which may itself contain spaces and
/// parentheses: split after the *last* `)`.
fn fields_after_comm(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

fn parse_state(stat: &str) -> Option<char> {
    fields_after_comm(stat)?.first()?.chars().next()
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // After the comm, field 3 (state) is index 0, so field 22 is index 19.
    fields_after_comm(stat)?.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_tricky_comm() {
        let stat =
            "123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_state(stat), Some('S'));
    }

    #[test]
    fn current_process_is_alive() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }
}
