//! The guest's serial console log: its last lines for error messages, and
//! what they say about why a VM died.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The last `max_lines` non-empty lines of the console log at `path`, read
/// from at most its last 64 KiB.
pub fn tail(path: &Path, max_lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut raw = Vec::new();
    let _ = file.take(WINDOW).read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(max_lines)..].to_vec()
}

/// What the console says happened to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleVerdict {
    /// The guest agent (PID 1) died: the kernel panicked with
    /// "Attempted to kill init".
    AgentCrashed,
    /// The guest agent hit a fatal error and powered off; the message follows.
    AgentFatal(String),
    /// The guest kernel panicked for another reason.
    KernelPanic(String),
    /// Nothing notable.
    Nothing,
}

/// Classify the console text `lines`.
pub fn verdict(lines: &[String]) -> ConsoleVerdict {
    if let Some(line) = lines.iter().find(|l| l.contains("hearth-guest: fatal:")) {
        let message = line
            .split("hearth-guest: fatal:")
            .nth(1)
            .unwrap_or("")
            .trim();
        return ConsoleVerdict::AgentFatal(message.to_string());
    }
    if lines.iter().any(|l| l.contains("Attempted to kill init")) {
        return ConsoleVerdict::AgentCrashed;
    }
    if let Some(line) = lines.iter().find(|l| l.contains("Kernel panic")) {
        let message = line
            .split("Kernel panic - not syncing:")
            .nth(1)
            .unwrap_or(line)
            .trim();
        return ConsoleVerdict::KernelPanic(message.to_string());
    }
    ConsoleVerdict::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn recognises_agent_death() {
        let v = verdict(&lines(
            "[ 1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
        ));
        assert_eq!(v, ConsoleVerdict::AgentCrashed);
    }

    #[test]
    fn recognises_other_panics() {
        let v = verdict(&lines(
            "[ 2.0] Kernel panic - not syncing: sysrq triggered crash",
        ));
        assert_eq!(
            v,
            ConsoleVerdict::KernelPanic("sysrq triggered crash".into())
        );
    }

    #[test]
    fn recognises_agent_fatal() {
        let v = verdict(&lines(
            "hearth-guest: fatal: mounting /dev/vda: no such device",
        ));
        assert_eq!(
            v,
            ConsoleVerdict::AgentFatal("mounting /dev/vda: no such device".into())
        );
    }

    #[test]
    fn tail_takes_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "a\r\nb\n\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), vec!["c", "d"]);
        assert!(tail(&dir.path().join("missing"), 3).is_empty());
    }
}
