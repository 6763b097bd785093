//! Starting VMM processes so that they die with us, jailed where the host
//! allows (see [`crate::jail`]).
//!
//! Each VMM child gets `PR_SET_PDEATHSIG(SIGKILL)`: if the Hearth process dies,
//! even by SIGKILL, the kernel kills its VMs. The signal fires when the
//! *thread* that forked the child exits, so all VMMs are forked from one
//! dedicated thread that lives as long as the process (not from a tokio worker
//! or blocking-pool thread, which may be retired while the VM runs).
//!
//! A jailed VMM has a watcher: the forked child joins the VM's cgroup, hands
//! the VM's files to the VMM's user, then clones the VMM into new mount, PID
//! (and network) namespaces and waits for it, exiting as it exits. The
//! clone builds its root from the [`MountPlan`], drops to its user and
//! execs QEMU as PID 1 of its namespace. The watcher is what tokio reaps;
//! the VMM dies with it (parent-death signal) and it dies with us.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use tokio::process::{Child, Command};

use crate::jail::{
    MountPlan, STEP_BIND, STEP_CGROUP, STEP_CHOWN, STEP_CLONE, STEP_MKDIR, STEP_PIVOT,
    STEP_PRIVATE, STEP_ROOT, STEP_USER,
};

/// How a VMM is confined as it starts.
#[derive(Debug, Default)]
pub(crate) struct Confine {
    /// A new, empty network namespace.
    pub new_netns: bool,
    /// `cgroup.procs` files to join before exec.
    pub cgroup_procs: Vec<std::ffi::CString>,
    /// Its own user, mount and PID namespaces.
    pub mounts: Option<Arc<MountPlan>>,
    /// How the watcher removes the cgroup after the VMM.
    pub cgroup_exit: crate::cgroup::ExitPlan,
}

/// A started VMM.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The process tokio waits for (the watcher, when jailed).
    pub child: Child,
    /// The VMM's own PID on the host.
    pub pid: u32,
    /// A pidfd of the VMM, when jailed: signals reach exactly it.
    pub pidfd: Option<OwnedFd>,
    /// The uid (and gid) it runs as, when jailed.
    pub uid: Option<u32>,
}

type Reply = tokio::sync::oneshot::Sender<(std::io::Result<Child>, Vec<[u32; 3]>)>;

struct Request {
    command: Command,
    runtime: tokio::runtime::Handle,
    /// The parent's copies of the report pipe: closed after the fork, then
    /// read to the end.
    report: Option<(std::io::PipeReader, std::io::PipeWriter)>,
    reply: Reply,
}

static LAUNCHER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

/// A pipe whose write end only this process holds (watchers close their
/// copies): when this process ends, however it ends, watchers see its read
/// end hang up, kill their VMM and clean up after it. (A parent-death
/// signal would kill the watcher before it could clean up.)
static ALIVE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();

fn alive_fd() -> std::io::Result<RawFd> {
    if let Some((read, _)) = ALIVE.get() {
        return Ok(read.as_raw_fd());
    }
    let (read, write) = std::io::pipe()?;
    let pair = (OwnedFd::from(read), OwnedFd::from(write));
    Ok(ALIVE.get_or_init(|| pair).0.as_raw_fd())
}

fn launcher() -> mpsc::Sender<Request> {
    LAUNCHER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("hearth-vm-launcher".into())
                .spawn(move || {
                    for request in rx {
                        let _guard = request.runtime.enter();
                        let mut command = request.command;
                        let spawned = command.spawn();
                        let mut records = Vec::new();
                        if let Some((mut reader, writer)) = request.report {
                            drop(writer);
                            let mut bytes = Vec::new();
                            let _ = reader.read_to_end(&mut bytes);
                            records = bytes
                                .chunks_exact(12)
                                .map(|c| {
                                    let word = |i: usize| {
                                        u32::from_ne_bytes(c[i..i + 4].try_into().unwrap())
                                    };
                                    [word(0), word(4), word(8)]
                                })
                                .collect();
                        }
                        let _ = request.reply.send((spawned, records));
                    }
                })
                .expect("spawn the VM launcher thread");
            Mutex::new(tx)
        })
        .lock()
        .clone()
}

/// The watcher's exit code when its VMM was killed for going over its
/// cgroup's memory limit (QEMU itself exits 0 or 1).
pub(crate) const VMM_OOM_EXIT: i32 = 199;

/// Report tags written by the watcher and the jailing child.
const REPORT_PID: u32 = 1;
const REPORT_FAILED: u32 = 2;

/// Spawn `command` as a child that is SIGKILLed when this process dies, in
/// its own process group (a Ctrl-C at the terminal reaches Hearth, which
/// tears VMs down in order, not the VMM directly), with `inherit_fds`
/// passed through exec, confined as `confine` says.
pub(crate) async fn spawn_owned(
    mut command: Command,
    inherit_fds: &[RawFd],
    confine: Confine,
) -> std::io::Result<Spawned> {
    let parent = std::process::id() as libc::pid_t;
    let report = match &confine.mounts {
        Some(_) => Some(std::io::pipe()?),
        None => None,
    };
    let report_fd = report.as_ref().map(|(_, w)| w.as_raw_fd()).unwrap_or(-1);
    let alive = match &confine.mounts {
        Some(_) => alive_fd()?,
        None => -1,
    };
    let cgroup_exit = confine.cgroup_exit;
    let inherit: Vec<RawFd> = inherit_fds.to_vec();
    let mounts = confine.mounts.clone();
    let child_mounts = confine.mounts;
    let cgroup_procs = confine.cgroup_procs;
    let new_netns = confine.new_netns;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, kill, setpgid, fcntl,
    // open, write, close, chown, unshare, clone, waitpid, mount, mkdir,
    // pivot_root, setresuid, _exit) on data prepared before the fork; it
    // takes no locks and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Err(e) = crate::cgroup::join_current(&cgroup_procs) {
                fail(report_fd, STEP_CGROUP, 0, &e);
                return Err(e);
            }
            match &child_mounts {
                Some(plan) => watch_jailed(plan, &cgroup_exit, new_netns, report_fd, alive),
                None => {
                    if new_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                }
            }
        });
    }
    // A jailed VMM is killed through its pidfd, so that its watcher lives
    // to remove its cgroup; a watcher dropped unreaped is killed by that.
    command.kill_on_drop(mounts.is_none());
    let (reply, answer) = tokio::sync::oneshot::channel();
    launcher()
        .send(Request {
            command,
            runtime: tokio::runtime::Handle::current(),
            report,
            reply,
        })
        .map_err(|_| std::io::Error::other("VM launcher thread is gone"))?;
    let (result, records) = answer
        .await
        .map_err(|_| std::io::Error::other("VM launcher thread dropped the request"))?;
    let failed = records.iter().find(|r| r[0] == REPORT_FAILED);
    let child = match (result, failed, &mounts) {
        (Ok(child), None, _) => child,
        (Err(error), Some([_, step, index]), Some(plan)) => {
            return Err(std::io::Error::new(
                error.kind(),
                format!(
                    "jailing the VMM failed {}: {error}",
                    plan.describe(*step, *index)
                ),
            ))
        }
        (Err(error), _, _) => return Err(error),
        (Ok(_), Some(_), _) => {
            return Err(std::io::Error::other(
                "the VMM's jail reported a failure but the VMM started",
            ))
        }
    };
    let Some(plan) = mounts else {
        let pid = child.id().unwrap_or(0);
        return Ok(Spawned {
            child,
            pid,
            pidfd: None,
            uid: None,
        });
    };
    let Some([_, pid, _]) = records.iter().find(|r| r[0] == REPORT_PID) else {
        return Err(std::io::Error::other(
            "the VMM's watcher did not report the VMM's PID",
        ));
    };
    let watcher = child.id().unwrap_or(0);
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
    // The VMM cannot have been reaped yet: only its watcher reaps it, and
    // the watcher was just seen alive (it wrote the report).
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, *pid as libc::pid_t, 0) };
    let pidfd = if raw >= 0 {
        // SAFETY: raw is a new, open fd owned by nothing else.
        Some(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
    } else {
        None
    };
    Ok(Spawned {
        child,
        pid: *pid,
        pidfd,
        uid: Some(plan.uid_base + watcher),
    })
}

/// Report a failed step on the report pipe (one atomic write).
/// (The error itself reaches the spawner through exec's error pipe.)
fn fail(report_fd: RawFd, step: u32, index: u32, _error: &std::io::Error) {
    report(report_fd, [REPORT_FAILED, step, index]);
}

fn report(report_fd: RawFd, words: [u32; 3]) {
    if report_fd < 0 {
        return;
    }
    let mut bytes = [0u8; 12];
    for (i, word) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    // SAFETY: a write of a stack buffer to an fd; async-signal-safe.
    unsafe {
        libc::write(report_fd, bytes.as_ptr().cast(), bytes.len());
    }
}

/// The watcher's part: hand the files over, clone the VMM into its
/// namespaces, report its PID, wait for it, remove its cgroup, and exit as
/// it exited. Returns only in the VMM (to go on to exec) or on a failure
/// before the clone. `alive` hangs up when the server is gone: then the
/// watcher kills the VMM first.
fn watch_jailed(
    plan: &MountPlan,
    cgroup_exit: &crate::cgroup::ExitPlan,
    new_netns: bool,
    report_fd: RawFd,
    alive: RawFd,
) -> std::io::Result<()> {
    // SAFETY: every call below is a raw syscall or async-signal-safe libc
    // function on memory prepared before the fork.
    unsafe {
        // Not killed outright with the server (see ALIVE): it kills its VMM
        // and cleans up instead.
        libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
        let uid = plan.uid_base + libc::getpid() as u32;
        for (i, path) in plan.owned.iter().enumerate() {
            if libc::chown(path.as_ptr(), uid, uid) != 0 {
                let e = std::io::Error::last_os_error();
                fail(report_fd, STEP_CHOWN, i as u32, &e);
                return Err(e);
            }
        }
        // Tokio's SIGCHLD handler must not run here: wait plainly.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut life = [0 as RawFd; 2];
        if libc::pipe2(life.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            let e = std::io::Error::last_os_error();
            fail(report_fd, STEP_CLONE, 0, &e);
            return Err(e);
        }
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::SIGCHLD;
        if new_netns {
            flags |= libc::CLONE_NEWNET;
        }
        let pid = libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            fail(report_fd, STEP_CLONE, 0, &e);
            return Err(e);
        }
        if pid == 0 {
            // The VMM.
            libc::close(life[1]);
            enter_jail(plan, uid, report_fd)?;
            // It dies with its watcher. The parent-death signal is set
            // only now: switching users clears it. The watcher may have
            // died already, closing the life pipe's write end.
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            let mut poll = libc::pollfd {
                fd: life[0],
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut poll, 1, 0) != 0 {
                libc::_exit(1);
            }
            // (The read end closes on exec.)
            return Ok(());
        }
        let pid = pid as libc::pid_t;
        report(report_fd, [REPORT_PID, pid as u32, 0]);
        // The VMM cannot be reaped by anyone else, so its PID is stable.
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd;
        // Keep only what the watch needs: the spawner's exec-error pipe
        // must see its end when the VMM execs, and the server's own end of
        // `alive` must be the last.
        let mut keep = [life[1], alive, pidfd];
        close_all_except(&mut keep);
        let mut fds = [
            libc::pollfd {
                fd: alive,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            let n = libc::poll(fds.as_mut_ptr(), if pidfd >= 0 { 2 } else { 1 }, -1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if fds[1].revents != 0 {
                break;
            }
            if n < 0 || fds[0].revents != 0 {
                // The server is gone.
                libc::kill(pid, libc::SIGKILL);
                break;
            }
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        // Killed by its cgroup's memory limit? (Read before the cgroup goes.)
        let oom_killed = libc::WIFSIGNALED(status)
            && libc::WTERMSIG(status) == libc::SIGKILL
            && cgroup_exit
                .oom_events
                .as_deref()
                .and_then(crate::cgroup::oom_kills)
                .is_some_and(|n| n > 0);
        crate::cgroup::leave_and_remove(cgroup_exit);
        if oom_killed {
            libc::_exit(VMM_OOM_EXIT);
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// Close every fd but those in `keep` (negative entries ignored).
fn close_all_except(keep: &mut [RawFd; 3]) {
    keep.sort_unstable();
    let mut next: libc::c_uint = 0;
    for &fd in keep.iter().filter(|fd| **fd >= 0) {
        let fd = fd as libc::c_uint;
        if fd > next {
            // SAFETY: close_range on fds this process owns; no memory.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0u32) };
        }
        next = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0u32) };
}

/// The VMM's part, as PID 1 of its new namespaces: build the root from the
/// plan, move into it, and drop to the VMM's user.
fn enter_jail(plan: &MountPlan, uid: u32, report_fd: RawFd) -> std::io::Result<()> {
    macro_rules! check {
        ($call:expr, $step:expr, $index:expr) => {
            if $call != 0 {
                let e = std::io::Error::last_os_error();
                fail(report_fd, $step, $index as u32, &e);
                return Err(e);
            }
        };
    }
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: mount, mkdir, open, close, chdir, pivot_root, umount2,
    // setgroups, setresgid, setresuid and prctl on NUL-terminated strings
    // prepared before the fork; all are plain syscalls.
    unsafe {
        check!(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            STEP_PRIVATE,
            0
        );
        check!(
            libc::mount(
                c"tmpfs".as_ptr(),
                plan.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=1m".as_ptr().cast()
            ),
            STEP_ROOT,
            0
        );
        for (i, dir) in plan.dirs.iter().enumerate() {
            if libc::mkdir(dir.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                let e = std::io::Error::last_os_error();
                fail(report_fd, STEP_MKDIR, i as u32, &e);
                return Err(e);
            }
        }
        for (i, bind) in plan.binds.iter().enumerate() {
            if bind.directory {
                if libc::mkdir(bind.target.as_ptr(), 0o755) != 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    let e = std::io::Error::last_os_error();
                    fail(report_fd, STEP_BIND, i as u32, &e);
                    return Err(e);
                }
            } else {
                let fd = libc::open(
                    bind.target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o600,
                );
                if fd < 0 {
                    let e = std::io::Error::last_os_error();
                    fail(report_fd, STEP_BIND, i as u32, &e);
                    return Err(e);
                }
                libc::close(fd);
            }
            check!(
                libc::mount(
                    bind.source.as_ptr(),
                    bind.target.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null()
                ),
                STEP_BIND,
                i
            );
            check!(
                libc::mount(
                    none,
                    bind.target.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REMOUNT | bind.flags,
                    std::ptr::null()
                ),
                STEP_BIND,
                i
            );
        }
        check!(libc::chdir(plan.root.as_ptr()), STEP_PIVOT, 0);
        check!(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            STEP_PIVOT,
            0
        );
        check!(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            STEP_PIVOT,
            1
        );
        check!(libc::chdir(c"/".as_ptr()), STEP_PIVOT, 2);
        check!(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null()
            ),
            STEP_PIVOT,
            3
        );
        check!(
            libc::setgroups(plan.groups.len(), plan.groups.as_ptr()),
            STEP_USER,
            0
        );
        check!(libc::setresgid(uid, uid, uid), STEP_USER, 1);
        check!(libc::setresuid(uid, uid, uid), STEP_USER, 2);
        check!(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            STEP_USER,
            3
        );
    }
    Ok(())
}
