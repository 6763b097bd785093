//! Cgroup v2 layout of the guest: the agent in `agent/`, workloads under
//! `workload/`, each exec in its own leaf `workload/exec-<n>`.
//!
//! The agent gets a high CPU weight and the workload a memory and pids
//! limit, so a hostile workload cannot starve the agent. A leaf per exec lets
//! the agent kill a command's whole process tree (`cgroup.kill`) and tell an
//! OOM kill from any other SIGKILL (`memory.events`).
//!
//! Without a usable cgroup root (host test mode) [`Cgroups`] is simply absent
//! and callers fall back to process groups.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{GuestError, Result};

const CONTROLLERS: &str = "+cpu +memory +pids";

/// The workload cgroup tree under a cgroup v2 root.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
    workload: PathBuf,
    next_leaf: AtomicU64,
    /// Leaves that were still busy when their exec ended; retried later.
    stale_leaves: Mutex<Vec<PathBuf>>,
    /// Leaves of running execs, with the slot where the memory guard leaves
    /// its message when it kills one.
    live_leaves: Mutex<HashMap<PathBuf, GuardMark>>,
    /// Leaves the memory guard killed (reported as OOM kills).
    guard_kills: AtomicU64,
}

/// Set by the memory guard when it kills a leaf: why it did.
type GuardMark = Arc<Mutex<Option<String>>>;

fn lock_mark(mark: &GuardMark) -> std::sync::MutexGuard<'_, Option<String>> {
    mark.lock().unwrap_or_else(|e| e.into_inner())
}

/// One exec's leaf cgroup.
#[derive(Debug)]
pub struct ExecCgroup {
    path: PathBuf,
    guard: GuardMark,
}

impl Cgroups {
    /// Set up the tree under `root`. With `move_agent`, also create `agent/`
    /// and move this process into it (PID-1 mode).
    pub fn setup(root: &Path, move_agent: bool) -> Result<Self> {
        if !root.join("cgroup.controllers").exists() {
            return Err(GuestError::InvalidArgument(format!(
                "{} is not a cgroup v2 directory (no cgroup.controllers)",
                root.display()
            )));
        }
        // The root may refuse (host mode, controllers already delegated);
        // what matters is that the workload's own files exist afterwards.
        let _ = write_file(&root.join("cgroup.subtree_control"), CONTROLLERS);
        if move_agent {
            let agent = root.join("agent");
            create_dir(&agent)?;
            write_file(&agent.join("cgroup.procs"), &std::process::id().to_string())?;
            let _ = write_file(&agent.join("cpu.weight"), "10000");
        }
        let workload = root.join("workload");
        create_dir(&workload)?;
        let _ = write_file(&workload.join("cpu.weight"), "100");
        let swap = workload.join("memory.swap.max");
        if swap.exists() {
            let _ = write_file(&swap, "0");
        }
        write_file(&workload.join("cgroup.subtree_control"), CONTROLLERS)?;
        Ok(Self {
            root: root.to_path_buf(),
            workload,
            next_leaf: AtomicU64::new(1),
            stale_leaves: Mutex::new(Vec::new()),
            live_leaves: Mutex::new(HashMap::new()),
            guard_kills: AtomicU64::new(0),
        })
    }

    /// The cgroup root this tree lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The workload cgroup's directory.
    pub fn workload(&self) -> &Path {
        &self.workload
    }

    /// Limit the workload's memory (`memory.max`) to `bytes`.
    pub fn set_memory_max(&self, bytes: u64) -> Result<()> {
        write_file(&self.workload.join("memory.max"), &bytes.to_string())
    }

    /// Limit the workload's process count; 0 means unlimited.
    pub fn set_pids_max(&self, pids: u32) -> Result<()> {
        let value = if pids == 0 {
            "max".to_owned()
        } else {
            pids.to_string()
        };
        write_file(&self.workload.join("pids.max"), &value)
    }

    /// Read a file of the workload cgroup.
    pub fn read_workload(&self, file: &str) -> Option<String> {
        fs::read_to_string(self.workload.join(file)).ok()
    }

    /// Create a fresh leaf for one exec, with OOM kills applying to the
    /// whole leaf (`memory.oom.group`).
    pub fn create_exec(&self) -> Result<ExecCgroup> {
        self.retry_stale();
        loop {
            let n = self.next_leaf.fetch_add(1, Ordering::Relaxed);
            let path = self.workload.join(format!("exec-{n}"));
            match fs::create_dir(&path) {
                Ok(()) => {
                    let _ = write_file(&path.join("memory.oom.group"), "1");
                    let guard = GuardMark::default();
                    self.live().insert(path.clone(), guard.clone());
                    return Ok(ExecCgroup { path, guard });
                }
                // Left over from before a snapshot/clone: pick another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(GuestError::io("mkdir", path.display().to_string(), e)),
            }
        }
    }

    /// Remove `leaf` if it is empty, else remember it for later.
    pub fn release(&self, leaf: ExecCgroup) {
        self.live().remove(&leaf.path);
        if fs::remove_dir(&leaf.path).is_err() {
            if let Ok(mut stale) = self.stale_leaves.lock() {
                stale.push(leaf.path);
            }
        }
    }

    /// Try again to remove leaves that were busy.
    pub fn retry_stale(&self) {
        if let Ok(mut stale) = self.stale_leaves.lock() {
            stale.retain(|path| fs::remove_dir(path).is_err() && path.exists());
        }
    }

    /// Kill every workload process (shutdown).
    pub fn kill_workload(&self) {
        let _ = write_file(&self.workload.join("cgroup.kill"), "1");
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, GuardMark>> {
        self.live_leaves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exec leaves (`workload/exec-*`) that still hold processes, with
    /// their name and `memory.current`: the memory guard's candidates. This
    /// includes leaves of finished execs whose background processes linger.
    pub fn populated_leaves(&self) -> Vec<LeafUsage> {
        let Ok(entries) = fs::read_dir(&self.workload) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name().into_string().ok()?;
                if !name.starts_with("exec-") {
                    return None;
                }
                let path = entry.path();
                let events = fs::read_to_string(path.join("cgroup.events")).ok()?;
                if parse_keyed(&events, "populated") != Some(1) {
                    return None;
                }
                let memory = fs::read_to_string(path.join("memory.current"))
                    .ok()
                    .and_then(|t| parse_single(&t))?;
                Some(LeafUsage { name, memory })
            })
            .collect()
    }

    /// Memory guard: kill every process of the leaf `name` (`cgroup.kill`)
    /// and count the kill. If the leaf belongs to a running exec, `message`
    /// is recorded first so that exec reports an OOM kill with it.
    pub fn guard_kill(&self, name: &str, message: String) -> Result<()> {
        let path = self.workload.join(name);
        // Marked before the kill, so the exec cannot see its process die
        // without the reason; unmarked again if the kill did not happen.
        let mark = self.live().get(&path).cloned();
        if let Some(mark) = &mark {
            *lock_mark(mark) = Some(message);
        }
        if let Err(e) = write_file(&path.join("cgroup.kill"), "1") {
            if let Some(mark) = &mark {
                *lock_mark(mark) = None;
            }
            return Err(e);
        }
        self.guard_kills.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many leaves the memory guard killed since the agent started.
    pub fn guard_kills(&self) -> u64 {
        self.guard_kills.load(Ordering::Relaxed)
    }
}

/// One exec leaf and the memory charged to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafUsage {
    /// Directory name under the workload cgroup (`exec-<n>`).
    pub name: String,
    /// Its `memory.current`, bytes.
    pub memory: u64,
}

impl ExecCgroup {
    /// The leaf's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The leaf's name (`exec-<n>`), as [`Cgroups::guard_kill`] takes it.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("leaf names are exec-<n>")
    }

    /// Open `cgroup.procs` for writing; the child writes "0" to it between
    /// fork and exec to enter the leaf before running any workload code.
    pub fn open_procs(&self) -> Result<File> {
        let path = self.path.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| GuestError::io("open", path.display().to_string(), e))
    }

    /// Kill every process in the leaf at once (`cgroup.kill`).
    pub fn kill(&self) -> Result<()> {
        write_file(&self.path.join("cgroup.kill"), "1")
    }

    /// The memory guard's message, if it killed this leaf.
    pub fn guard_kill(&self) -> Option<String> {
        lock_mark(&self.guard).clone()
    }

    /// How many processes of this leaf the OOM killer ended.
    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.path.join("memory.events"))
            .ok()
            .and_then(|text| parse_keyed(&text, "oom_kill"))
            .unwrap_or(0)
    }
}

fn create_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(GuestError::io("mkdir", path.display().to_string(), e)),
    }
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| GuestError::io("write", path.display().to_string(), e))
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line,
/// as in `memory.events` and `cpu.stat`).
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == key).then(|| parts.next()?.parse().ok())?
    })
}

/// A single-value cgroup file (`memory.current`, `memory.max`): `max` and
/// unparsable contents are `None`.
pub fn parse_single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyed_files() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(parse_keyed(events, "oom_kill"), Some(2));
        assert_eq!(parse_keyed(events, "oom"), Some(3));
        assert_eq!(parse_keyed(events, "missing"), None);
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(parse_keyed(stat, "usage_usec"), Some(123_456));
    }

    #[test]
    fn parses_single_values() {
        assert_eq!(parse_single("1048576\n"), Some(1_048_576));
        assert_eq!(parse_single("max\n"), None);
    }

    #[test]
    fn guard_kills_mark_running_execs_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let cgroups = Cgroups::setup(dir.path(), false).unwrap();
        let leaf = |name: &str, populated: u8, memory: u64| {
            let path = cgroups.workload().join(name);
            let _ = fs::create_dir(&path);
            fs::write(
                path.join("cgroup.events"),
                format!("populated {populated}\nfrozen 0\n"),
            )
            .unwrap();
            fs::write(path.join("memory.current"), format!("{memory}\n")).unwrap();
        };
        let running = cgroups.create_exec().unwrap();
        let running_name = running.name().to_owned();
        leaf(&running_name, 1, 150 << 20);
        leaf("exec-90", 1, 20 << 20); // a finished exec's background process
        leaf("exec-91", 0, 500 << 20); // empty: killing it frees nothing
        fs::create_dir(cgroups.workload().join("other")).unwrap();

        let mut candidates = cgroups.populated_leaves();
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            candidates,
            vec![
                LeafUsage {
                    name: running_name.clone(),
                    memory: 150 << 20
                },
                LeafUsage {
                    name: "exec-90".into(),
                    memory: 20 << 20
                },
            ]
        );

        assert_eq!(running.guard_kill(), None);
        cgroups.guard_kill(&running_name, "why".into()).unwrap();
        assert_eq!(running.guard_kill().as_deref(), Some("why"));
        let kill = fs::read_to_string(running.path().join("cgroup.kill")).unwrap();
        assert_eq!(kill, "1");
        cgroups
            .guard_kill("exec-90", "nobody reads this".into())
            .unwrap();
        assert!(cgroups.guard_kill("exec-404", "gone".into()).is_err());
        assert_eq!(cgroups.guard_kills(), 2);

        // Usage reports kernel and guard kills together.
        fs::write(
            cgroups.workload().join("memory.events"),
            "oom 3\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(crate::usage::collect(Some(&cgroups), 0).oom_kills, 5);

        cgroups.release(running);
        assert!(cgroups.live().is_empty());
    }

    #[test]
    fn a_failed_guard_kill_leaves_no_mark() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "memory\n").unwrap();
        let cgroups = Cgroups::setup(dir.path(), false).unwrap();
        let running = cgroups.create_exec().unwrap();
        let name = running.name().to_owned();
        // A directory where cgroup.kill should be makes the write fail.
        fs::create_dir(running.path().join("cgroup.kill")).unwrap();
        assert!(cgroups.guard_kill(&name, "why".into()).is_err());
        assert_eq!(running.guard_kill(), None);
        assert_eq!(cgroups.guard_kills(), 0);
    }

    #[test]
    fn missing_root_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::setup(&dir.path().join("absent"), false).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
