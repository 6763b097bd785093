//! A host cgroup of its own for each VMM process, so that a QEMU that
//! misbehaves (or a guest that drives it to) is held to its memory, process
//! and CPU limits instead of starving the host or the other sandboxes.
//!
//! Each server instance keeps its VMs' cgroups under a parent directory of
//! its own, `<this process's cgroup>/hearth/<instance>`, per controller. The
//! parent is nested under the server's own cgroup, never at a hierarchy's
//! root, so whatever limits the host (or systemd) puts on the server still
//! hold for its VMs. The instance level keeps two servers on one host (say
//! two test runs, whose own cgroup is often the same) from sweeping each
//! other's VMs.
//!
//! A VMM joins its cgroup from the forked child before exec
//! ([`join_current`]), so it never runs a single instruction outside it.

mod plan;

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plan::{CgroupVersion, Controller};

use crate::error::VmError;

/// The directory under the server's own cgroup that holds all Hearth
/// cgroups of this host's servers.
pub const PARENT_NAME: &str = "hearth";

/// How long a just-killed or just-reaped process may keep a cgroup busy.
const SETTLE_PATIENCE: Duration = Duration::from_secs(1);
const SETTLE_STEP: Duration = Duration::from_millis(10);

/// Limits on one VMM process (QEMU itself: guest RAM plus its own overhead,
/// its threads, and its CPU time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory, bytes; on v1 also memory plus swap, so it cannot swap past it.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// CPU time allowed per period, microseconds (150 000 of 100 000 is 1.5 CPUs).
    pub cpu_quota_us: u64,
    /// The period the quota applies to, microseconds (1 000 to 1 000 000).
    pub cpu_period_us: u64,
}

impl CgroupLimits {
    fn validate(&self) -> Result<(), VmError> {
        // The kernel's own bounds, checked here so the error says which.
        if self.memory_bytes == 0 || self.pids == 0 {
            return Err(VmError::InvalidSpec(
                "a VMM cgroup needs a memory and a process limit above zero".into(),
            ));
        }
        if !(1_000..=1_000_000).contains(&self.cpu_period_us) || self.cpu_quota_us < 1_000 {
            return Err(VmError::InvalidSpec(format!(
                "a VMM cgroup's CPU period must be 1000..=1000000 µs and its quota at least 1000 µs, not {}/{}",
                self.cpu_quota_us, self.cpu_period_us
            )));
        }
        Ok(())
    }
}

/// One parent directory for VM cgroups and the controllers it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parent {
    version: CgroupVersion,
    controllers: Vec<Controller>,
    /// `<own cgroup>/hearth/<instance>`.
    dir: PathBuf,
}

/// Where this host's memory, pids and cpu controllers keep this server's
/// VM cgroups: one parent directory per v1 hierarchy, or one on v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    parents: Vec<Parent>,
}

impl CgroupLayout {
    /// Find this process's cgroups in `/proc/self/cgroup` and
    /// `/proc/self/mountinfo` and create `<own>/hearth/<instance>` for each
    /// controller, enabling the controllers on the way down on v2.
    ///
    /// `instance` names this server among others on the host (e.g. a short
    /// hash of its `HEARTH_HOME`); [`sweep_stale`](Self::sweep_stale) touches
    /// only its own instance. `Err` says why not: no such controller, the
    /// directory cannot be created (not root), or on v2 the server's cgroup
    /// cannot hand controllers to children.
    pub fn detect(instance: &str) -> Result<Self, String> {
        check_name("instance", instance)?;
        let read =
            |path: &str| fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
        let placements = plan::plan(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)?;
        let mut parents: Vec<Parent> = Vec::new();
        let mut own_dirs: Vec<PathBuf> = Vec::new();
        for placement in placements {
            match own_dirs.iter().position(|d| *d == placement.own_dir) {
                Some(i) => parents[i].controllers.push(placement.controller),
                None => {
                    parents.push(Parent {
                        version: placement.version,
                        controllers: vec![placement.controller],
                        dir: placement.own_dir.join(PARENT_NAME).join(instance),
                    });
                    own_dirs.push(placement.own_dir);
                }
            }
        }
        for (parent, own) in parents.iter().zip(&own_dirs) {
            match parent.version {
                CgroupVersion::V1 => {
                    make_dir(&own.join(PARENT_NAME))?;
                    make_dir(&parent.dir)?;
                }
                CgroupVersion::V2 => prepare_v2(own, &parent.controllers, &parent.dir)?,
            }
        }
        Ok(Self { parents })
    }

    /// Remove VM cgroups left under this instance's parents by an earlier
    /// server that died, except those `keep` names: SIGKILL what still runs
    /// in each, then remove it. Problems are logged, not returned: a leftover
    /// cgroup costs little and must not stop the server from starting.
    ///
    /// Blocks for up to a few seconds per busy cgroup; call it off the async
    /// runtime.
    pub fn sweep_stale(&self, keep: impl Fn(&str) -> bool) {
        for parent in &self.parents {
            let entries = match fs::read_dir(&parent.dir) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(dir = %parent.dir.display(), "cannot list VM cgroups: {e}");
                    continue;
                }
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                if keep(&name.to_string_lossy()) {
                    continue;
                }
                let dir = entry.path();
                let outcome = kill_members(&dir, parent.version)
                    .and_then(|()| remove_dir_settled(&dir).map_err(|e| e.to_string()));
                match outcome {
                    Ok(()) => tracing::info!(dir = %dir.display(), "removed a stale VM cgroup"),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), "cannot remove a stale VM cgroup: {e}")
                    }
                }
            }
        }
    }

    /// Remove VM cgroups that nothing runs in and that are older than
    /// `min_age`: what servers that died left behind. Safe while other
    /// servers share this instance: a live VM's cgroup is never empty once
    /// its VMM started, and one younger than `min_age` may be about to be
    /// joined. (A VMM dies with its watcher and the watcher with its
    /// server, so a dead server's cgroups are empty.)
    pub fn sweep_abandoned(&self, min_age: Duration) {
        let parents: Vec<PathBuf> = self.parents.iter().map(|p| p.dir.clone()).collect();
        self.sweep_stale(|name| {
            parents.iter().any(|parent| {
                let dir = parent.join(name);
                let busy = fs::read_to_string(dir.join("cgroup.procs"))
                    .map(|procs| !procs.trim().is_empty())
                    .unwrap_or(false);
                // Missing here (another hierarchy may still have it): not
                // a reason to keep it; an unreadable age is.
                let young = match fs::metadata(&dir) {
                    Err(_) => false,
                    Ok(meta) => meta
                        .modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_none_or(|age| age < min_age),
                };
                busy || young
            })
        });
    }

    /// Remove this instance's parent directories, at shutdown once every VM
    /// cgroup under them is gone. The shared `hearth` directory above stays;
    /// other servers may use it.
    pub fn remove(self) -> Result<(), VmError> {
        for parent in &self.parents {
            remove_dir_settled(&parent.dir).map_err(|e| VmError::Cgroup {
                path: parent.dir.clone(),
                message: format!("cannot remove this server's cgroup parent: {e}"),
            })?;
        }
        Ok(())
    }

    /// One line for `hearth doctor`, e.g. "cgroup v1 (memory, pids, cpu)
    /// under /sys/fs/cgroup/memory/…/hearth/x, /sys/fs/cgroup/pids/hearth/x,
    /// /sys/fs/cgroup/cpu/hearth/x".
    pub fn describe(&self) -> String {
        [CgroupVersion::V1, CgroupVersion::V2]
            .into_iter()
            .filter_map(|version| {
                let parents: Vec<&Parent> = self
                    .parents
                    .iter()
                    .filter(|p| p.version == version)
                    .collect();
                if parents.is_empty() {
                    return None;
                }
                let controllers: Vec<&str> = parents
                    .iter()
                    .flat_map(|p| p.controllers.iter().map(|c| c.name()))
                    .collect();
                let dirs: Vec<String> = parents
                    .iter()
                    .map(|p| p.dir.display().to_string())
                    .collect();
                Some(format!(
                    "{version} ({}) under {}",
                    controllers.join(", "),
                    dirs.join(", ")
                ))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The cgroup of one VMM: a directory per v1 hierarchy, or one on v2.
///
/// Call [`remove`](Self::remove) once the VMM has exited. Dropping it
/// instead makes one attempt to remove the directories (which fails while
/// a process is still in them); whatever remains,
/// [`CgroupLayout::sweep_stale`] removes at the next start.
#[derive(Debug)]
pub struct VmmCgroup {
    dirs: Vec<PathBuf>,
    procs_files: Vec<CString>,
    /// The memory controller's event counts (`memory.oom_control` on v1,
    /// `memory.events` on v2), which count OOM kills.
    oom_events: Option<CString>,
}

impl VmmCgroup {
    /// Create `<parent>/<name>` for each controller and write `limits`.
    ///
    /// A leftover empty cgroup of that name is replaced; one that still
    /// holds processes is an error. Whatever was created is removed again
    /// if a later step fails.
    pub fn create(
        layout: &CgroupLayout,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, VmError> {
        check_name("VM", name).map_err(VmError::InvalidSpec)?;
        limits.validate()?;
        let mut cgroup = Self {
            dirs: Vec::new(),
            procs_files: Vec::new(),
            oom_events: None,
        };
        for parent in &layout.parents {
            let dir = parent.dir.join(name);
            let failed = |message: String| VmError::Cgroup {
                path: dir.clone(),
                message,
            };
            match fs::remove_dir(&dir) {
                Ok(()) => tracing::debug!(dir = %dir.display(), "replaced a leftover VM cgroup"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(failed(format!(
                        "a cgroup of that name exists and cannot be removed ({e}), so a VMM of an earlier server may still be running in it"
                    )))
                }
            }
            fs::create_dir(&dir).map_err(|e| failed(format!("cannot create it: {e}")))?;
            let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(|_| failed("the path holds a NUL byte".into()))?;
            cgroup.dirs.push(dir.clone());
            cgroup.procs_files.push(procs);
            if parent.controllers.contains(&Controller::Memory) {
                let events = match parent.version {
                    CgroupVersion::V1 => "memory.oom_control",
                    CgroupVersion::V2 => "memory.events",
                };
                cgroup.oom_events = CString::new(dir.join(events).as_os_str().as_bytes()).ok();
            }
            for controller in &parent.controllers {
                for (file, value, required) in settings(*controller, parent.version, limits) {
                    write_setting(&dir.join(file), &value, required)?;
                }
            }
        }
        Ok(cgroup)
    }

    /// The `cgroup.procs` files (one per directory, in the same order), for
    /// the forked child to pass to [`join_current`] before exec.
    pub fn procs_files(&self) -> &[CString] {
        &self.procs_files
    }

    /// The cgroup directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Remove the directories once the VMM has exited and been reaped. A
    /// just-reaped process can keep a cgroup busy for a moment, so this
    /// retries for up to about a second: call it off the async runtime.
    pub fn remove(mut self) -> Result<(), VmError> {
        for dir in &self.dirs {
            // On failure, Drop still tries the ones after it.
            remove_dir_settled(dir).map_err(|e| VmError::Cgroup {
                path: dir.clone(),
                message: format!("cannot remove the VMM's cgroup: {e}"),
            })?;
        }
        self.dirs.clear();
        Ok(())
    }
}

/// What a VMM's watcher needs to remove the VM's cgroup itself once it
/// has reaped the VMM, even when the server is gone: the `cgroup.procs`
/// files of the server's own cgroups (`<own>/hearth/<instance>/<name>` is
/// each directory, so `<own>` is three levels up), to step out into, and
/// the directories. Prepared before the fork, used by
/// [`leave_and_remove`] between fork and exit.
#[derive(Debug, Clone, Default)]
pub struct ExitPlan {
    /// Where the watcher moves itself first.
    pub leave: Vec<CString>,
    /// The VM's cgroup directories.
    pub dirs: Vec<CString>,
    /// Where the memory controller counts OOM kills (see [`oom_kills`]).
    pub oom_events: Option<CString>,
}

impl VmmCgroup {
    /// See [`ExitPlan`].
    pub fn exit_plan(&self) -> ExitPlan {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).ok();
        ExitPlan {
            leave: self
                .dirs
                .iter()
                .filter_map(|d| d.ancestors().nth(3))
                .filter_map(|own| c(&own.join("cgroup.procs")))
                .collect(),
            dirs: self.dirs.iter().filter_map(|d| c(d)).collect(),
            oom_events: self.oom_events.clone(),
        }
    }
}

/// How many processes the cgroup's memory limit killed, from its event
/// counts (the `oom_kill N` line of `memory.oom_control` or
/// `memory.events`); `None` when unreadable. Async-signal-safe (open,
/// read, close, no allocation): a watcher calls it after its VMM died.
#[allow(unsafe_code)]
pub fn oom_kills(events: &std::ffi::CStr) -> Option<u64> {
    let mut buf = [0u8; 1024];
    // SAFETY: open/read/close on a NUL-terminated path and a stack buffer
    // of the length passed.
    let len = unsafe {
        let fd = libc::open(events.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let len = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        len
    };
    let text = buf.get(..usize::try_from(len).ok()?)?;
    parse_oom_kills(text)
}

/// The number after `oom_kill ` at the start of a line of `text`.
fn parse_oom_kills(text: &[u8]) -> Option<u64> {
    let key = b"oom_kill ";
    let mut at = 0;
    while at < text.len() {
        let line_end = text[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| at + i);
        let line = &text[at..line_end];
        if let Some(digits) = line.strip_prefix(key) {
            let mut n: u64 = 0;
            for &d in digits {
                if !d.is_ascii_digit() {
                    return None;
                }
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
            return Some(n);
        }
        at = line_end + 1;
    }
    None
}

/// Move the calling process out of the VM's cgroup and remove it, retrying
/// for up to a second while the kernel finishes with a just-reaped
/// member. Async-signal-safe (open, write, rmdir, nanosleep): a watcher
/// calls it after fork.
#[allow(unsafe_code)]
pub fn leave_and_remove(plan: &ExitPlan) {
    let _ = join_current(&plan.leave);
    for dir in &plan.dirs {
        for _ in 0..100 {
            // SAFETY: rmdir on a NUL-terminated path that outlives the call.
            if unsafe { libc::rmdir(dir.as_ptr()) } == 0 {
                break;
            }
            // SAFETY: errno is thread-local; reading it has no preconditions.
            if unsafe { *libc::__errno_location() } != libc::EBUSY {
                break;
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            // SAFETY: nanosleep reads the timespec on our stack; the
            // remainder pointer may be null.
            unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        }
    }
}

impl Drop for VmmCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            if let Err(e) = fs::remove_dir(dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(dir = %dir.display(), "VM cgroup left for the next sweep: {e}");
                }
            }
        }
    }
}

/// Move the calling process into the cgroups whose `cgroup.procs` files are
/// given (writing `0` there moves the writer).
///
/// Meant for a forked child before exec, so it is async-signal-safe: only
/// `open`, `write` and `close`, no allocation, no locks, no panics. Call it
/// before dropping privileges or entering a user namespace, which would
/// take away the right to write those files.
#[allow(unsafe_code)]
pub fn join_current(procs_files: &[CString]) -> io::Result<()> {
    for file in procs_files {
        // SAFETY: `file` is a valid NUL-terminated path that outlives the
        // call; open has no other preconditions.
        let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened by us; the buffer is one valid,
        // static byte.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        // Taken before close, which may overwrite errno.
        let write_error = io::Error::last_os_error();
        // SAFETY: `fd` is ours and closed exactly once.
        unsafe { libc::close(fd) };
        match written {
            1 => {}
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => return Err(write_error),
        }
    }
    Ok(())
}

/// What to write for `controller`: (file, value, whether the file must exist).
fn settings(
    controller: Controller,
    version: CgroupVersion,
    limits: &CgroupLimits,
) -> Vec<(&'static str, String, bool)> {
    let memory = limits.memory_bytes.to_string();
    match (controller, version) {
        // memsw must never be below the memory limit, so it goes second; it
        // is absent where swap accounting is off.
        (Controller::Memory, CgroupVersion::V1) => vec![
            ("memory.limit_in_bytes", memory.clone(), true),
            ("memory.memsw.limit_in_bytes", memory, false),
        ],
        (Controller::Memory, CgroupVersion::V2) => vec![
            ("memory.max", memory, true),
            ("memory.swap.max", "0".into(), false),
        ],
        (Controller::Pids, _) => vec![("pids.max", limits.pids.to_string(), true)],
        // A fresh cgroup's quota is unlimited, so any period is accepted first.
        (Controller::Cpu, CgroupVersion::V1) => vec![
            ("cpu.cfs_period_us", limits.cpu_period_us.to_string(), true),
            ("cpu.cfs_quota_us", limits.cpu_quota_us.to_string(), true),
        ],
        (Controller::Cpu, CgroupVersion::V2) => vec![(
            "cpu.max",
            format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us),
            true,
        )],
    }
}

fn write_setting(file: &Path, value: &str, required: bool) -> Result<(), VmError> {
    // No `create`: a cgroup file that is missing is a missing feature.
    let result = fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    match result {
        Ok(()) => Ok(()),
        Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmError::Cgroup {
            path: file.to_path_buf(),
            message: format!("cannot write {value:?}: {e}"),
        }),
    }
}

/// On v2, a cgroup's children get a controller only if the cgroup enables it
/// in `cgroup.subtree_control`, and only a cgroup without processes (or the
/// root) may. Enable ours from the server's own cgroup down to `parent`.
fn prepare_v2(own: &Path, controllers: &[Controller], parent: &Path) -> Result<(), String> {
    let offered = fs::read_to_string(own.join("cgroup.controllers")).map_err(|e| {
        format!(
            "cannot read {}: {e}",
            own.join("cgroup.controllers").display()
        )
    })?;
    let offered: Vec<&str> = offered.split_whitespace().collect();
    if let Some(missing) = controllers.iter().find(|c| !offered.contains(&c.name())) {
        return Err(format!(
            "no {missing} controller: cgroup v2 offers {} only {}",
            own.display(),
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(" ")
            }
        ));
    }
    let names: Vec<&str> = controllers.iter().map(|c| c.name()).collect();
    enable_controllers(own, &names).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            format!(
                "cannot enable the {} controllers for cgroups below {}: this server runs in that cgroup, and cgroup v2 lets a cgroup that holds processes (other than the root) give no controllers to child cgroups. Hearth does not move itself, so on cgroup v2 it gives VMMs cgroups of their own only when it runs in the root cgroup",
                names.join(", "),
                own.display()
            )
        } else {
            format!("cannot enable {} in {}: {e}", names.join(", "), own.join("cgroup.subtree_control").display())
        }
    })?;
    let hearth = own.join(PARENT_NAME);
    for dir in [hearth.as_path(), parent] {
        make_dir(dir)?;
        enable_controllers(dir, &names).map_err(|e| {
            format!(
                "cannot enable {} in {}: {e}",
                names.join(", "),
                dir.join("cgroup.subtree_control").display()
            )
        })?;
    }
    Ok(())
}

fn enable_controllers(dir: &Path, names: &[&str]) -> io::Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&file)?;
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    let wanted: Vec<String> = names
        .iter()
        .filter(|n| !enabled.contains(n))
        .map(|n| format!("+{n}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&file)?
        .write_all(wanted.join(" ").as_bytes())
}

/// Create a cgroup directory if it is not there yet.
fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "cannot create {}: {e} (this needs root or a cgroup delegated to this user)",
            dir.display()
        )),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

/// A single path component, so `name` cannot climb out of its parent.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!(
            "{what} cgroup name {name:?} must be one path component"
        ));
    }
    Ok(())
}

/// Remove an empty cgroup, waiting out `EBUSY` from processes that have
/// only just left it. Gone already counts as removed.
fn remove_dir_settled(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(SETTLE_STEP)
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_members(dir: &Path) -> io::Result<Vec<libc::pid_t>> {
    Ok(fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// SIGKILL every process in the cgroup at `dir` and wait until it is empty.
fn kill_members(dir: &Path, version: CgroupVersion) -> Result<(), String> {
    let deadline = Instant::now() + 2 * SETTLE_PATIENCE;
    loop {
        let members = read_members(dir).map_err(|e| format!("cannot list its processes: {e}"))?;
        if members.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("processes {members:?} still in it after SIGKILL"));
        }
        // v2 (5.14+) kills a whole cgroup at once, with no PID to go stale.
        let killed_at_once = version == CgroupVersion::V2
            && fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.kill"))
                .and_then(|mut f| f.write_all(b"1"))
                .is_ok();
        if !killed_at_once {
            kill_listed(dir, &members);
        }
        std::thread::sleep(SETTLE_STEP);
    }
}

/// SIGKILL those of `pids` that are still in the cgroup at `dir`.
///
/// A listed PID may exit and be reused by a process elsewhere before the
/// signal. So each is pinned with a pidfd first, and signalled only if the
/// cgroup still lists it after every pidfd is open: a pinned process cannot
/// be replaced, and a PID still listed names a process that is still in it.
#[allow(unsafe_code)]
fn kill_listed(dir: &Path, pids: &[libc::pid_t]) {
    let mut pinned: Vec<(libc::pid_t, Option<OwnedFd>)> = Vec::new();
    for &pid in pids {
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us and nothing else owns it.
            pinned.push((pid, Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })));
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            // Before Linux 5.3: no way to pin it; the window is short.
            pinned.push((pid, None));
        }
    }
    let Ok(still) = read_members(dir) else {
        return;
    };
    for (pid, fd) in pinned {
        if !still.contains(&pid) {
            continue;
        }
        match fd {
            // SAFETY: pidfd_send_signal on a pidfd we own, a valid signal
            // number and no siginfo; it touches no memory of ours.
            Some(fd) => unsafe {
                use std::os::fd::AsRawFd;
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            // SAFETY: kill(2) has no memory-safety preconditions.
            None => unsafe {
                libc::kill(pid, libc::SIGKILL);
            },
        }
    }
}

#[cfg(test)]
mod tests;
