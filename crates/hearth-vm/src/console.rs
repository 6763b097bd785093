//! The guest's serial console log: its last lines for error messages, and
//! what they say about why a VM died.
//!
//! Everything on the console is written by the guest, which is untrusted:
//! any process in it can print any line. So text taken from it is bounded
//! ([`guest_text`]) and reported as the guest's words, never as the host's
//! finding.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Most bytes of guest text (one console line, one message) the host keeps
/// in an end message or a console tail.
pub const MAX_GUEST_TEXT: usize = 512;

/// `text` from the guest made fit to show: control characters (terminal
/// escapes included) replaced by U+FFFD, and cut on a character boundary
/// to at most [`MAX_GUEST_TEXT`] bytes, with a marker saying how much was
/// cut.
pub fn guest_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if clean.len() <= MAX_GUEST_TEXT {
        return clean;
    }
    let mut end = MAX_GUEST_TEXT;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes cut]", &clean[..end], clean.len() - end)
}

/// The last `max_lines` non-empty lines of the console log at `path`, read
/// from at most its last 64 KiB, each made fit to show by [`guest_text`].
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
        .map(|l| l.trim_end_matches('\r').trim_end())
        .filter(|l| !l.is_empty())
        .map(guest_text)
        .collect();
    lines[lines.len().saturating_sub(max_lines)..].to_vec()
}

/// What the console says happened to the guest: the guest's own report,
/// which the host can neither check nor trust. Messages are bounded by
/// [`guest_text`].
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
        return ConsoleVerdict::AgentFatal(guest_text(message));
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
        return ConsoleVerdict::KernelPanic(guest_text(message));
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
    fn guest_text_is_bounded_on_a_char_boundary_and_loses_its_escapes() {
        assert_eq!(guest_text("short"), "short");
        assert_eq!(guest_text("a\x1b[2Jb\x07"), "a\u{FFFD}[2Jb\u{FFFD}");
        // 'é' is two bytes: a cut at 512 falls inside one.
        let long = format!("x{}", "é".repeat(1000));
        let shown = guest_text(&long);
        let (kept, marker) = shown.split_once('…').unwrap();
        assert!(kept.len() <= MAX_GUEST_TEXT && kept.len() >= MAX_GUEST_TEXT - 1);
        assert_eq!(
            marker,
            format!(" [{} more bytes cut]", long.len() - kept.len())
        );
        // A fatal line of any length yields a bounded message.
        let v = verdict(&lines(&format!(
            "hearth-guest: fatal: {}",
            "y".repeat(1 << 20)
        )));
        let ConsoleVerdict::AgentFatal(message) = v else {
            panic!("{v:?}")
        };
        assert!(message.len() < MAX_GUEST_TEXT + 64, "{}", message.len());
    }

    #[test]
    fn tail_lines_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, format!("{}\nend\n", "z".repeat(10_000))).unwrap();
        let lines = tail(&path, 5);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].len() < MAX_GUEST_TEXT + 64);
        assert_eq!(lines[1], "end");
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
