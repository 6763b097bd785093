//! Who owns which VM, on disk, so that a crashed Hearth process's VMs and
//! files are found and removed by the next one.
//!
//! Every sandbox has a state directory `$HEARTH_HOME/sandboxes/<id>/` with an
//! `owner.json` naming the owning process and the VMM process (by PID *and*
//! start time, so a reused PID is never mistaken for them). VMMs also die with
//! their owner through the parent-death signal; this registry is the second
//! line of defence and the way leftover files are found.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_vm::procfs::ProcessId;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SandboxError};
use crate::home::HearthHome;

/// File name of the ownership record inside a state directory.
pub const OWNER_FILE: &str = "owner.json";

/// The ownership record of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// Sandbox id.
    pub id: String,
    /// The Hearth process that owns the sandbox.
    pub owner: ProcessId,
    /// The VMM process, once started.
    pub vmm: Option<ProcessId>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

impl OwnerRecord {
    /// A record for sandbox `id` owned by this process.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            owner: ProcessId::current(),
            vmm: None,
            created_unix_ms: now_ms(),
        }
    }

    /// Write the record into `state_dir` atomically.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let tmp = state_dir.join(".owner.json.tmp");
        let data = serde_json::to_vec_pretty(self).expect("record serializes");
        std::fs::write(&tmp, data)
            .map_err(SandboxError::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, state_dir.join(OWNER_FILE)).map_err(SandboxError::io(format!(
            "writing the owner record in {}",
            state_dir.display()
        )))
    }

    fn load(state_dir: &Path) -> Option<Self> {
        let data = std::fs::read(state_dir.join(OWNER_FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// Whether any sandbox state directory is still owned by this process.
pub fn owns_any(home: &HearthHome) -> bool {
    let me = ProcessId::current();
    std::fs::read_dir(home.sandboxes_dir())
        .map(|entries| {
            entries
                .flatten()
                .any(|e| OwnerRecord::load(&e.path()).is_some_and(|r| r.owner == me))
        })
        .unwrap_or(false)
}

/// A sandbox whose owner was gone, and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapedSandbox {
    /// Sandbox id (the directory name).
    pub id: String,
    /// Whether a still-running VMM process was killed.
    pub killed_vmm: bool,
    /// Where its console log was kept, if it had one.
    pub console_log: Option<PathBuf>,
}

/// State directories without a recorded owner are left alone this long, in
/// case their owner is between creating the directory and writing the record.
const UNRECORDED_GRACE: Duration = Duration::from_secs(30);

/// Kill the VMs and remove the files of every sandbox whose owning process
/// is gone. Safe to run concurrently with live sandboxes of other processes.
pub fn reap_orphans(home: &HearthHome) -> Vec<ReapedSandbox> {
    let Ok(entries) = std::fs::read_dir(home.sandboxes_dir()) else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        let record = OwnerRecord::load(&dir);
        let orphaned = match &record {
            Some(record) => !record.owner.is_alive(),
            None => older_than(&dir, UNRECORDED_GRACE),
        };
        if !orphaned {
            continue;
        }
        let mut killed_vmm = false;
        if let Some(vmm) = record.as_ref().and_then(|r| r.vmm) {
            // Only kill a process that really is this sandbox's VMM.
            let is_ours = vmm
                .cmdline()
                .is_some_and(|cmdline| cmdline.contains(&dir.display().to_string()));
            if is_ours && vmm.kill() {
                killed_vmm = true;
                wait_gone(&vmm, Duration::from_secs(5));
            }
        }
        let console_log = keep_console_log(home, &id, &dir);
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), %error, "could not remove orphaned sandbox state");
                continue;
            }
        }
        tracing::info!(sandbox = %id, killed_vmm, "reaped orphaned sandbox");
        reaped.push(ReapedSandbox {
            id,
            killed_vmm,
            console_log,
        });
    }
    reaped
}

/// How a kept console log is named to clients: by its place in the home
/// (`logs/<id>.console.log`), never by a host path.
pub fn console_log_name(path: &Path) -> String {
    match path.file_name() {
        Some(name) => format!("logs/{}", name.to_string_lossy()),
        None => "logs/".into(),
    }
}

/// Copy a sandbox's console log to the logs directory (so an error can point
/// at it after the state directory is gone). Keeps the newest logs only.
pub fn keep_console_log(home: &HearthHome, id: &str, state_dir: &Path) -> Option<PathBuf> {
    const KEEP: usize = 50;
    let source = state_dir.join("console.log");
    if !source.is_file() {
        return None;
    }
    let logs = home.logs_dir();
    home.create_private_dir(&logs).ok()?;
    let target = logs.join(format!("{id}.console.log"));
    std::fs::copy(&source, &target).ok()?;
    // The copy has QEMU's mode; the log may hold anything the guest printed.
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).ok()?;
    prune_logs(&logs, KEEP);
    Some(target)
}

fn prune_logs(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if logs.len() <= keep {
        return;
    }
    logs.sort();
    for (_, path) in &logs[..logs.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

fn wait_gone(process: &ProcessId, limit: Duration) {
    let start = std::time::Instant::now();
    while process.is_alive() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_owner_is_left_alone_and_dead_owner_is_reaped() {
        let root = tempfile::tempdir().unwrap();
        let home = HearthHome::at(root.path());
        let live = home.sandboxes_dir().join("sb-live");
        let dead = home.sandboxes_dir().join("sb-dead");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&dead).unwrap();
        OwnerRecord::new("sb-live").save(&live).unwrap();
        let mut record = OwnerRecord::new("sb-dead");
        record.owner.start_time += 1; // a process that no longer exists
        record.save(&dead).unwrap();
        std::fs::write(dead.join("console.log"), "boot\n").unwrap();

        let reaped = reap_orphans(&home);
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].id, "sb-dead");
        assert!(!reaped[0].killed_vmm);
        assert!(live.exists());
        assert!(!dead.exists());
        assert!(owns_any(&home), "this process owns sb-live");
        let kept = reaped[0].console_log.as_ref().unwrap();
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "boot\n");
    }

    #[test]
    fn a_foreign_process_is_never_killed() {
        let root = tempfile::tempdir().unwrap();
        let home = HearthHome::at(root.path());
        let dir = home.sandboxes_dir().join("sb-x");
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut record = OwnerRecord::new("sb-x");
        record.owner.start_time += 1;
        record.vmm = ProcessId::of(child.id());
        record.save(&dir).unwrap();
        let reaped = reap_orphans(&home);
        assert_eq!(reaped.len(), 1);
        assert!(
            !reaped[0].killed_vmm,
            "sleep's cmdline does not name the dir"
        );
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
